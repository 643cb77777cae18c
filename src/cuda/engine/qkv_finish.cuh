// The per-row body of qkv_bias_norm_rope (qkv_bias_norm_rope.cu), for any block size: a block
// finishes one token's QKV row in place. The standalone kernel runs it with one block per token; the
// decode GEMM's tail (moe_decode.cu) runs it in the grid's last block over the few rows it produced.
//
// Phases over the row [(Hq + 2 Hkv) D] (12 KB for a 6144-wide row: it stays in L1 between them):
//   1. bias and qk-norm. Without qk-norm every element gets its bias. With qk-norm, q and k are
//      normalised as "groups": per head (each D-wide head, one warp per head, the warp's sum of
//      squares by shuffles; Qwen3) or whole (all of q, then all of k, the block's sum by block_sum;
//      OLMoE). v only gets its bias. y = x * rsqrt(mean(x^2) + eps) * w in fp32, rounded to 16 bits.
//   2. RoPE (when a cos/sin table is given) on the q and k heads at the row's position, HF's
//      rotate_half pairs (x[i], x[i + D/2]), as rope.cu.
//   3. With a KvStore: the row's final k and v rows into their paged-cache slot (16-byte copies,
//      paged_kv_write.cuh).
// The rounding between the phases is the one transformers' bf16 forward makes too (its q_norm
// returns 16 bits before apply_rotary_pos_emb).
#pragma once
#include "cuda/attention/paged_kv_write.cuh"
#include "cuda/common.cuh"
#include "cuda/engine/ops.h"

namespace minillm::cuda::engine {

template <typename T>
__device__ float load_biased(const T* row, const float* bias, int64_t i) {
  return to_f32(row[i]) + (bias ? bias[i] : 0.f);
}

// Phase 1 on one row: + bias, then RMSNorm of q and k (per head or whole).
template <typename T>
__device__ void bias_norm_row(T* row, const float* bias, const float* q_norm, const float* k_norm, int Hq, int Hkv,
                              int D, bool per_head, float eps, float* red) {
  const int64_t qd = static_cast<int64_t>(Hq) * D, kvd = static_cast<int64_t>(Hkv) * D, row_len = qd + 2 * kvd;
  if (!q_norm) {  // bias only
    for (int64_t i = threadIdx.x; i < row_len; i += blockDim.x) row[i] = from_f32<T>(load_biased(row, bias, i));
    return;
  }
  if (bias) {  // v: bias only
    for (int64_t i = qd + kvd + threadIdx.x; i < row_len; i += blockDim.x) row[i] = from_f32<T>(load_biased(row, bias, i));
  }
  if (per_head) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    for (int h = warp; h < Hq + Hkv; h += nwarps) {
      const int64_t base = static_cast<int64_t>(h) * D;  // q heads, then k heads
      const float* w = h < Hq ? q_norm : k_norm;         // [D]
      float ss = 0.f;
      for (int i = lane; i < D; i += 32) {
        const float v = load_biased(row, bias, base + i);
        ss += v * v;
      }
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      const float r = rsqrtf(ss / static_cast<float>(D) + eps);
      for (int i = lane; i < D; i += 32) row[base + i] = from_f32<T>(load_biased(row, bias, base + i) * r * w[i]);
    }
    return;
  }
  for (int part = 0; part < 2; ++part) {  // q over [0, qd), k over [qd, qd + kvd)
    const int64_t base = part == 0 ? 0 : qd, n = part == 0 ? qd : kvd;
    const float* w = part == 0 ? q_norm : k_norm;  // [n]
    float ss = 0.f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = load_biased(row, bias, base + i);
      ss += v * v;
    }
    ss = block_sum(ss, red);
    const float r = rsqrtf(ss / static_cast<float>(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      row[base + i] = from_f32<T>(load_biased(row, bias, base + i) * r * w[i]);
  }
}

// Row t of the QKV activation (row: its [(Hq + 2 Hkv) D] elements), phases 1-3 as f asks. red: [32]
// fp32 of shared memory. All threads of the block call it.
template <typename T>
__device__ void qkv_finish_row(T* row, int64_t t, const QkvFinish& f, float* red) {
  const int Hq = f.Hq, Hkv = f.Hkv, D = f.D;
  if (f.bias || f.q_norm) bias_norm_row(row, f.bias, f.q_norm, f.k_norm, Hq, Hkv, D, f.per_head, f.eps, red);
  if (f.cos_sin) {
    __syncthreads();  // phase 1's writes (other warps' heads) before phase 2 reads them
    const int half = D / 2;
    const int pos = f.positions ? f.positions[t] : static_cast<int>(t % f.N);
    const float2* cs = f.cos_sin + static_cast<int64_t>(pos) * half;  // [D/2]
    const int64_t pairs = static_cast<int64_t>(Hq + Hkv) * half;
    for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
      const int c = static_cast<int>(i % half);
      T* lo = row + (i / half) * D + c;
      const float a = to_f32(lo[0]), b = to_f32(lo[half]);
      const float2 r = cs[c];
      lo[0] = from_f32<T>(a * r.x - b * r.y);
      lo[half] = from_f32<T>(b * r.x + a * r.y);
    }
  }
  if (!f.store.slots) return;
  __syncthreads();  // every thread's k and v writes before the row is copied out
  const int32_t slot = f.store.slots[t];
  if (slot < 0) return;
  const int kvd = Hkv * D;
  const T* k = row + static_cast<int64_t>(Hq) * D;  // [Hkv, D]
  paged::store_kv_row(static_cast<T*>(f.store.k_cache), slot, k, kvd, threadIdx.x, blockDim.x);
  paged::store_kv_row(static_cast<T*>(f.store.v_cache), slot, k + kvd, kvd, threadIdx.x, blockDim.x);
}

}  // namespace minillm::cuda::engine
