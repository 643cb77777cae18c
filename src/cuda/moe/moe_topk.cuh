// The MoE router's top-k of one token, by one warp (router_topk_kernel, decode_route_kernel,
// decode_router_kernel).
//
// The E <= 256 logits of a row are held 8 per lane (lane l holds experts l, l+32, ...; coalesced loads),
// summed over the router GEMM's split-K partials in split order. Softmax in fp32 (warp max, exp, warp
// sum by a fixed butterfly: bitwise reproducible). Top-k selects on the LOGITS (softmax is monotone, and
// the exact logits cannot tie where rounded probabilities might): k rounds of a warp arg-max over
// (value, expert) with ties to the lower expert index. Renormalisation divides the k probabilities by
// their fp32 sum taken in slot order.
#pragma once
#include <cfloat>
#include <cstdint>

namespace minillm::cuda::moe {

constexpr int kTopkMaxPerLane = 8;  // E <= 256

// logits: [splits, T, E] fp32 -> ids[t * ld + j], weights[t * ld + j] for j < k. All 32 lanes call it.
__device__ __forceinline__ void topk_warp(const float* __restrict__ logits, int splits, int64_t T, int E, int k,
                                          int ld, bool normalize, int64_t t, int lane, int32_t* __restrict__ ids,
                                          float* __restrict__ weights) {
  constexpr int kMaxPerLane = kTopkMaxPerLane;
  const float* row = logits + t * E;
  const int64_t split_stride = T * E;

  float v[kMaxPerLane];
  float mx = -FLT_MAX;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = i * 32 + lane;
    v[i] = -FLT_MAX;
    if (e < E) {
      // Through L2 (ld.global.cg): decode_router_kernel's last block reads logits other blocks of its grid wrote.
      v[i] = __ldcg(row + e);
      for (int s = 1; s < splits; ++s) v[i] += __ldcg(row + s * split_stride + e);  // split order
    }
    mx = fmaxf(mx, v[i]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float p[kMaxPerLane];
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    p[i] = i * 32 + lane < E ? __expf(v[i] - mx) : 0.0f;
    sum += p[i];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float inv = 1.0f / sum;

  uint32_t taken = 0;  // bit i: expert i*32+lane already selected
  float sel_p = 0.0f;  // lane j keeps slot j's probability
  int sel_e = 0;
  for (int j = 0; j < k; ++j) {
    float best = -INFINITY;
    int best_e = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = i * 32 + lane;
      // Ascending e: the strict > keeps the lower index on ties.
      if (e < E && !(taken >> i & 1u) && (best_e == 0x7fffffff || v[i] > best)) {
        best = v[i];
        best_e = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
      if (ob > best || (ob == best && oe < best_e)) {
        best = ob;
        best_e = oe;
      }
    }
    if ((best_e & 31) == lane) taken |= 1u << (best_e >> 5);
    // The winner's probability, broadcast from its lane.
    float pw = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i)
      if (i == (best_e >> 5)) pw = p[i];
    pw = __shfl_sync(0xffffffffu, pw, best_e & 31) * inv;
    if (lane == j) {
      sel_p = pw;
      sel_e = best_e;
    }
  }
  float scale = 1.0f;
  if (normalize) {
    float s = 0.0f;
    for (int j = 0; j < k; ++j) s += __shfl_sync(0xffffffffu, sel_p, j);  // slot order
    scale = 1.0f / s;
  }
  if (lane < k) {
    ids[t * ld + lane] = sel_e;
    weights[t * ld + lane] = sel_p * scale;
  }
}

}  // namespace minillm::cuda::moe
