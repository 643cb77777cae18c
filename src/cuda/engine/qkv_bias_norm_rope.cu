// q/k/v bias, qk-norm and RoPE in one pass, in place on the QKV activation, after a QKV GEMM that
// could not do them in its epilogue (cuBLASLt for generation steps; OLMoE's norm over the whole
// projection, whose sum of squares spans more columns than one GEMM tile holds).
//
// Algorithm: one block of 256 threads per token row, two phases over the row (12 KB for a 6144-wide
// row: it stays in L1 between them).
//   1. bias and qk-norm. Without qk-norm every element gets its bias. With qk-norm, q and k are
//      normalised as "groups": per head (each D-wide head, one warp per head, the warp's sum of
//      squares by shuffles; Qwen3) or whole (all of q, then all of k, the block's sum by block_sum;
//      OLMoE). v only gets its bias. y = x * rsqrt(mean(x^2) + eps) * w in fp32, rounded to 16 bits.
//   2. RoPE (when a cos/sin table is given) on the q and k heads at the row's position, HF's
//      rotate_half pairs (x[i], x[i + D/2]), as rope.cu.
//   3. With a KvStore: the row's final k and v rows into their paged-cache slot (16-byte copies,
//      paged_kv_write.cuh), so that a generation step needs no separate cache-write launch.
// The rounding between the phases is the one transformers' bf16 forward makes too (its q_norm
// returns 16 bits before apply_rotary_pos_emb).
// Layout: qkv [T, (Hq + 2 Hkv) * D] row-major bf16/fp16; bias [(Hq + 2 Hkv) * D] fp32 or null;
// q_norm, k_norm fp32 [D] (per head) or [Hq * D] / [Hkv * D] (whole), or null; cos_sin [max_pos, D/2].
// Cost: one read and one write of q and k (and v when biased), instead of one per phase.
#include "cuda/attention/paged_kv_write.cuh"
#include "cuda/common.cuh"
#include "cuda/engine/ops.h"
#include "cuda/launch.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

constexpr int kThreads = 256;

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

template <typename T>
__global__ void qkv_bias_norm_rope_kernel(T* __restrict__ qkv, const float* __restrict__ bias,
                                          const float* __restrict__ q_norm, const float* __restrict__ k_norm, int Hq,
                                          int Hkv, int D, bool per_head, float eps, const float2* __restrict__ cos_sin,
                                          int N, const int32_t* __restrict__ positions,
                                          const int32_t* __restrict__ slots, T* k_cache, T* v_cache) {
  __shared__ float red[32];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t t = blockIdx.x;
  T* row = qkv + t * (static_cast<int64_t>(Hq + 2 * Hkv) * D);  // [(Hq + 2 Hkv) D]
  if (bias || q_norm) bias_norm_row(row, bias, q_norm, k_norm, Hq, Hkv, D, per_head, eps, red);
  if (cos_sin) {
    __syncthreads();  // phase 1's writes (other warps' heads) before phase 2 reads them
    const int half = D / 2;
    const int pos = positions ? positions[t] : static_cast<int>(t % N);
    const float2* cs = cos_sin + static_cast<int64_t>(pos) * half;  // [D/2]
    const int64_t pairs = static_cast<int64_t>(Hq + Hkv) * half;
    for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
      const int f = static_cast<int>(i % half);
      T* lo = row + (i / half) * D + f;
      const float a = to_f32(lo[0]), b = to_f32(lo[half]);
      const float2 r = cs[f];
      lo[0] = from_f32<T>(a * r.x - b * r.y);
      lo[half] = from_f32<T>(b * r.x + a * r.y);
    }
  }
  if (!slots) return;
  __syncthreads();  // every thread's k and v writes before the row is copied out
  const int32_t slot = slots[t];
  if (slot < 0) return;
  const int kvd = Hkv * D;
  const T* k = row + static_cast<int64_t>(Hq) * D;  // [Hkv, D]
  paged::store_kv_row(k_cache, slot, k, kvd, threadIdx.x, blockDim.x);
  paged::store_kv_row(v_cache, slot, k + kvd, kvd, threadIdx.x, blockDim.x);
}

}  // namespace

void qkv_bias_norm_rope(DType dtype, void* qkv, const float* bias, const float* q_norm, const float* k_norm, int64_t T,
                        int Hq, int Hkv, int D, bool per_head, float eps, const float2* cos_sin, int N,
                        const int32_t* positions, cudaStream_t stream, const KvStore& store) {
  if (store.slots) {
    MINILLM_CHECK(D % 8 == 0,
                  "qkv_bias_norm_rope: head_dim = " << D << " must be a multiple of 8 to store into the cache");
    for (const void* p : {static_cast<const void*>(qkv), static_cast<const void*>(store.k_cache),
                          static_cast<const void*>(store.v_cache)})
      MINILLM_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0,
                    "qkv_bias_norm_rope: qkv and the caches must be 16-byte aligned");
  }
  if (T <= 0 || (!bias && !q_norm && !cos_sin && !store.slots)) return;
  const dim3 grid(static_cast<unsigned>(T));
  if (dtype == DType::bf16) {
    using E = __nv_bfloat16;
    cuda::launch(qkv_bias_norm_rope_kernel<E>, grid, kThreads, 0, stream, static_cast<E*>(qkv), bias, q_norm, k_norm,
                 Hq, Hkv, D, per_head, eps, cos_sin, N, positions, store.slots, static_cast<E*>(store.k_cache),
                 static_cast<E*>(store.v_cache));
  } else {
    using E = __half;
    cuda::launch(qkv_bias_norm_rope_kernel<E>, grid, kThreads, 0, stream, static_cast<E*>(qkv), bias, q_norm, k_norm,
                 Hq, Hkv, D, per_head, eps, cos_sin, N, positions, store.slots, static_cast<E*>(store.k_cache),
                 static_cast<E*>(store.v_cache));
  }
}

}  // namespace minillm::cuda::engine
