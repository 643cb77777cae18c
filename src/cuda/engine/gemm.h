// Dense linear layers: y[M, N] = x[M, K] @ w[N, K]^T, row-major, bf16/fp16 in,
// fp32 accumulate, bf16/fp16 or fp32 out; decode shapes through the MoE decode kernel, the rest through
// cuBLASLt. One handle and one workspace per Gemm object, and the
// matmul descriptors + heuristic algorithm cached per (M, N, K, dtypes), so a call after the first
// of a shape is one cublasLtMatmul (CUDA-graph capturable: nothing is allocated or synchronised).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "minillm/core/dtype.h"
#include "cuda/engine/ops.h"
#include "minillm/moe.h"

namespace minillm::cuda::engine {

class Gemm {
 public:
  explicit Gemm(size_t workspace_bytes = size_t{32} << 20);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // x: [M, K] row stride K; w: [N, K] row stride K (HF Linear layout); y: [M, N] row stride N.
  // Decode shapes (decode_path) run the skinny decode kernel instead of cuBLASLt.
  void linear(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType in, DType out,
              cudaStream_t stream);
  // The cuBLASLt path alone (any M).
  void cublas(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType in, DType out,
              cudaStream_t stream);
  // M <= kDecodePathMaxRows tokens, 16-bit in and out, N % 16 == 0, K % 32 == 0, x and w 16-byte aligned: the
  // weights are streamed once by moe::decode_gemm (one expert), prefetched into L2 while the previous
  // kernel of the stream finishes (PDL); cuBLASLt has no such overlap. Beyond 16 rows the decode kernel's
  // 8-token tiles lose to cuBLASLt (dev/cuda/03_decode_gemm_bandwidth.cu, docs/REPORT.md).
  static constexpr int64_t kDecodePathMaxRows = 16;  // <= moe::kDecodeMaxRows, the kernel's own limit
  static bool decode_path(const void* x, const void* w, int64_t M, int64_t N, int64_t K, DType in, DType out);
  // linear() on the decode path whose last block then runs a small op over y's rows (a tail,
  // moe::DecodeGemmArgs), for the few rows where that beats a kernel of its own: `then`'s residual
  // add of y and norm, or the QKV row's bias, qk-norm, RoPE and cache store (counter: one zeroed device
  // int32, left zero).
  static bool fuses_residual_norm(const void* x, const void* w, int64_t M, int64_t N, int64_t K, DType in, DType out);
  static bool fuses_qkv_finish(const void* x, const void* w, int64_t M, int64_t N, int64_t K, DType in, DType out);
  void linear_residual_norm(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType dtype,
                            const ResidualNorm& then, cudaStream_t stream);
  void linear_qkv_finish(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType dtype,
                         const QkvFinish& finish, int32_t* counter, cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minillm::cuda::engine
