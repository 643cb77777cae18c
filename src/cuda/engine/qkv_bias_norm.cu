// q/k/v bias and qk-norm in place on the fused QKV activation (Qwen2-MoE biases, Qwen3-MoE per-head
// qk-norm, OLMoE qk-norm over the whole projection), between the QKV GEMM and RoPE.
//
// Algorithm: one block of 256 threads per token row. Without qk-norm every element gets its bias.
// With qk-norm, q and k are normalised as "groups": per head (each D-wide head, one warp per head,
// the warp's sum of squares by shuffles) or whole (all of q, then all of k, the block's sum by
// block_sum). A group is read once into registers-or-L1 for the sum of squares (bias added in fp32)
// and again for the write; v only gets its bias. Norm math in fp32: y = x * rsqrt(mean(x^2) + eps) * w,
// rounded once to bf16/fp16.
// Layout: qkv [T, (Hq + 2 Hkv) * D] row-major bf16/fp16; bias [(Hq + 2 Hkv) * D] fp32 or null;
// q_norm, k_norm fp32 [D] (per head) or [Hq * D] / [Hkv * D] (whole), or null.
// Cost: a read and a write of q and k (and v when biased): a memory-bound pass, separate from the
// QKV GEMM for now (the fused QKV+RoPE epilogue is used only for models without bias and qk-norm).
#include "cuda/common.cuh"
#include "cuda/engine/ops.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ float load_biased(const T* row, const float* bias, int64_t i) {
  return to_f32(row[i]) + (bias ? bias[i] : 0.f);
}

template <typename T>
__global__ void qkv_bias_norm_kernel(T* __restrict__ qkv, const float* __restrict__ bias,
                                     const float* __restrict__ q_norm, const float* __restrict__ k_norm, int Hq, int Hkv,
                                     int D, bool per_head, float eps) {
  __shared__ float red[32];
  const int64_t qd = static_cast<int64_t>(Hq) * D, kvd = static_cast<int64_t>(Hkv) * D, row_len = qd + 2 * kvd;
  T* row = qkv + static_cast<int64_t>(blockIdx.x) * row_len;  // [row_len]
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

}  // namespace

void qkv_bias_norm(DType dtype, void* qkv, const float* bias, const float* q_norm, const float* k_norm, int64_t T,
                   int Hq, int Hkv, int D, bool per_head, float eps, cudaStream_t stream) {
  if (T <= 0 || (!bias && !q_norm)) return;
  const dim3 grid(static_cast<unsigned>(T));
  if (dtype == DType::bf16) {
    qkv_bias_norm_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(qkv), bias, q_norm, k_norm, Hq, Hkv,
                                                        D, per_head, eps);
  } else {
    qkv_bias_norm_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__half*>(qkv), bias, q_norm, k_norm, Hq, Hkv, D,
                                                        per_head, eps);
  }
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::engine
