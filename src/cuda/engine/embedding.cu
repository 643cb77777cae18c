// Token embedding gather: out[t, :] = table[ids[t], :].
//
// Algorithm: a pure copy, one block row per token; 16-byte vectors when the row size allows
// (H * 2 bytes a multiple of 16), 2-byte elements otherwise. Layouts: table [V, H], out [T, H],
// row-major, bf16 or fp16 (the copy is bitwise, so one kernel serves both). ids were range-checked
// on the host before the launch.
// Cost: T * H * 2 bytes read + written (bandwidth-bound; measurements: docs/REPORT.md).
#include "cuda/engine/ops.h"
#include "cuda/launch.cuh"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

template <typename V>
__global__ void embedding_kernel(const int32_t* __restrict__ ids, const V* __restrict__ table, V* __restrict__ out,
                                 int64_t T, int64_t row_vecs) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t t = blockIdx.x;
  if (t >= T) return;
  const V* src = table + static_cast<int64_t>(ids[t]) * row_vecs;  // [row_vecs]
  V* dst = out + t * row_vecs;                                      // [row_vecs]
  for (int64_t i = threadIdx.x; i < row_vecs; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

void embedding(DType dtype, const int32_t* ids, const void* table, void* out, int64_t T, int64_t H,
               cudaStream_t stream) {
  (void)dtype;  // a bitwise copy: bf16 and fp16 alike
  if (T <= 0 || H <= 0) return;
  const bool vec = (H * 2) % 16 == 0;
  const int64_t row_vecs = vec ? H * 2 / 16 : H;
  const int threads = row_vecs >= 256 ? 256 : static_cast<int>((row_vecs + 31) / 32 * 32);
  if (vec) {
    cuda::launch(embedding_kernel<uint4>, static_cast<unsigned>(T), threads, 0, stream, ids,
                 static_cast<const uint4*>(table), static_cast<uint4*>(out), T, row_vecs);
  } else {
    cuda::launch(embedding_kernel<uint16_t>, static_cast<unsigned>(T), threads, 0, stream, ids,
                 static_cast<const uint16_t*>(table), static_cast<uint16_t*>(out), T, row_vecs);
  }
}

}  // namespace minillm::cuda::engine
