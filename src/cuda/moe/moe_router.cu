// MoE router: softmax -> top-k -> optional renormalisation, fused in one kernel.
//
// Algorithm: one warp per token. The E <= 256 logits of a row are held 8 per lane (lane l holds
// experts l, l+32, ...; coalesced loads). Softmax in fp32 (warp max, exp, warp sum by a fixed
// butterfly, so the result is bitwise reproducible). Top-k selects on the LOGITS (softmax is
// monotone, and the exact logits cannot tie where the rounded probabilities might): k rounds of a
// warp arg-max over (value, expert) with ties to the lower expert index; the winner's lane marks it
// taken. Renormalisation divides the k probabilities by their fp32 sum taken in slot order.
// Layout: logits [T, E] fp32 row-major (the cuBLAS router GEMM's output), ids/weights [T, k].
// Cost: ~E*4 bytes read per token, memory-bound and negligible next to the router GEMM; measured
// inside the layer's routing share by bench/bench_moe.py (see bench/results/h100/moe.json).
#include <cuda_runtime.h>

#include <cfloat>

#include "cuda/moe/moe_ops.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::moe {
namespace {

constexpr int kMaxPerLane = 8;  // E <= 256
constexpr int kWarpsPerBlock = 8;

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    router_topk_kernel(const float* __restrict__ logits, int64_t T, int E, int k, bool normalize,
                       int32_t* __restrict__ ids, float* __restrict__ weights) {
  const int lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t >= T) return;
  const float* row = logits + t * E;

  float v[kMaxPerLane];
  float mx = -FLT_MAX;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = i * 32 + lane;
    v[i] = e < E ? row[e] : -FLT_MAX;
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
    ids[t * k + lane] = sel_e;
    weights[t * k + lane] = sel_p * scale;
  }
}

}  // namespace

void router_topk(const float* logits, int64_t T, int E, int k, bool normalize, int32_t* ids, float* weights,
                 cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(E >= 1 && E <= 32 * kMaxPerLane && k >= 1 && k <= 8 && k <= E,
                "router_topk: E = " << E << ", k = " << k);
  const int64_t blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  router_topk_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(logits, T, E, k, normalize,
                                                                                        ids, weights);
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::moe
