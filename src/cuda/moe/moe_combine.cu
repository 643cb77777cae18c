// MoE combine: y[t] = sum_j weights[t, j] * y_perm[dest[t*k + j]], fp32, slot order j = 0..k-1.
// With T*k tokens and k = 1 it is the weighted un-permutation (MoELayer::forward_pairs on the grouped path;
// the decode path does it in the down projection's epilogue).
//
// Algorithm: one block per token; each thread owns 8 columns (a 16-byte vector) and keeps 8 fp32
// sums; the k expert rows are read with independent 16-byte loads. No atomics: every output is
// written once by one thread, so the result is bitwise identical from run to run.
// Layout: y_perm [rows, H] (the down projection's output in permuted order), y [T, H].
// Memory-bound: reads T*k*H*2 bytes, writes T*H*2.
// Measurements (the routing kernels' share of the layer): docs/REPORT.md.
#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "cuda/launch.cuh"
#include "cuda/moe/moe_ops.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::moe {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const uint4* __restrict__ y_perm, const int32_t* __restrict__ dest,
                   const float* __restrict__ weights, int k, int64_t vecs_per_row, uint4* __restrict__ y) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t t = blockIdx.x;
  int64_t rows[8];
  float w[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    rows[j] = j < k ? static_cast<int64_t>(dest[t * k + j]) * vecs_per_row : 0;
    w[j] = j < k ? weights[t * k + j] : 0.0f;
  }
  for (int64_t i = threadIdx.x; i < vecs_per_row; i += kThreads) {
    uint4 v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < k) v[j] = y_perm[rows[j] + i];
    float acc[8] = {};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j < k) {
        float f[8];
        unpack8<T>(v[j], f);
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[c] = fmaf(w[j], f[c], acc[c]);
      }
    }
    y[t * vecs_per_row + i] = pack8<T>(acc);
  }
}

}  // namespace

void combine(DType dtype, const void* y_perm, const int32_t* dest, const float* weights, int64_t T, int k,
             int64_t H, void* y, cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(H % 8 == 0 && k >= 1 && k <= 8, "combine: H = " << H << ", k = " << k);
  MINILLM_CHECK(T < (int64_t{1} << 31), "combine: T = " << T);
  const auto* in = static_cast<const uint4*>(y_perm);
  auto* out = static_cast<uint4*>(y);
  const unsigned blocks = static_cast<unsigned>(T);
  if (dtype == DType::bf16) {
    cuda::launch(combine_kernel<__nv_bfloat16>, blocks, kThreads, 0, stream, in, dest, weights, k, H / 8, out);
  } else if (dtype == DType::f16) {
    cuda::launch(combine_kernel<__half>, blocks, kThreads, 0, stream, in, dest, weights, k, H / 8, out);
  } else {
    MINILLM_FAIL("combine: dtype " << dtype_name(dtype) << " is not bf16 or f16");
  }
}

}  // namespace minillm::cuda::moe
