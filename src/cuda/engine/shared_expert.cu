// The shared expert's two elementwise steps (Qwen2-MoE), around its two cuBLASLt GEMMs:
//   gu = x @ [w1s; w3s]^T               [T, 2 Fs]   (GEMM)
//   a  = silu(gu[:, :Fs]) * gu[:, Fs:]   [T, Fs]     swiglu_rows
//   o  = a @ w2s^T                      [T, H]      (GEMM)
//   y += sigmoid(x . gate) * o          [T, H]      shared_expert_add
// swiglu_rows: a grid-stride elementwise pass in fp32, rounded once. shared_expert_add: one block per
// token: the gate's dot product over H (block_sum, fp32), then y[t] = y[t] + s * o[t] in fp32, rounded
// once. Layouts row-major, bf16 or fp16; gate [H] in the model dtype.
// Cost: memory-bound passes over [T, 3 Fs] and [T, 3 H]; not fused into the routed experts' grouped
// GEMMs yet (a first step: the shared expert runs beside them as dense GEMMs).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/engine/ops.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

template <typename T>
__global__ void swiglu_rows_kernel(const T* __restrict__ gu, T* __restrict__ a, int64_t T_, int64_t Fs) {
  const int64_t n = T_ * Fs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / Fs, f = i - t * Fs;
    const float g = to_f32(gu[t * 2 * Fs + f]), u = to_f32(gu[t * 2 * Fs + Fs + f]);
    a[i] = from_f32<T>(g / (1.f + __expf(-g)) * u);
  }
}

template <typename T>
__global__ void shared_expert_add_kernel(const T* __restrict__ x, const T* __restrict__ gate, const T* __restrict__ o,
                                         T* __restrict__ y, int64_t H) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  float d = 0.f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) d += to_f32(x[t * H + i]) * to_f32(gate[i]);
  d = block_sum(d, red);
  const float s = 1.f / (1.f + __expf(-d));
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x)
    y[t * H + i] = from_f32<T>(to_f32(y[t * H + i]) + s * to_f32(o[t * H + i]));
}

}  // namespace

void swiglu_rows(DType dtype, const void* gu, void* a, int64_t T, int64_t Fs, cudaStream_t stream) {
  if (T <= 0) return;
  const int64_t n = T * Fs;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
  if (dtype == DType::bf16) {
    swiglu_rows_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(gu), static_cast<__nv_bfloat16*>(a),
                                                   T, Fs);
  } else {
    swiglu_rows_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __half*>(gu), static_cast<__half*>(a), T, Fs);
  }
  MINILLM_CUDA_CHECK_LAUNCH();
}

void shared_expert_add(DType dtype, const void* x, const void* gate, const void* o, void* y, int64_t T, int64_t H,
                       cudaStream_t stream) {
  if (T <= 0) return;
  if (dtype == DType::bf16) {
    shared_expert_add_kernel<<<static_cast<unsigned>(T), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(gate),
        static_cast<const __nv_bfloat16*>(o), static_cast<__nv_bfloat16*>(y), H);
  } else {
    shared_expert_add_kernel<<<static_cast<unsigned>(T), 256, 0, stream>>>(
        static_cast<const __half*>(x), static_cast<const __half*>(gate), static_cast<const __half*>(o),
        static_cast<__half*>(y), H);
  }
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::engine
