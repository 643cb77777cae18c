// L2 prefetch of a weight tensor ahead of the op that reads it (decode steps).
//
// Why: in a decode step the weight-streaming GEMMs (QKV, O projection) alternate with short,
// latency-bound kernels (RoPE + cache store, attention over a short context, add + norm) during which
// HBM idles. This kernel asks L2 for the next GEMM's weights and exits: the bytes arrive while the
// short kernels run, and the GEMM reads them from L2.
// Algorithm: after the PDL wait (so the previous kernel's reads of L2 are not competed with), each
// thread issues cp.async.bulk.prefetch.L2 for 4 KiB chunks, grid-stride; nothing waits for the data.
// Layout: any contiguous byte range (16-byte aligned start; a trailing partial 16 bytes is skipped).
#include "cuda/common.cuh"
#include "cuda/engine/ops.h"
#include "cuda/launch.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int kThreads = 128;
constexpr int kBlocks = 16;

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(const char* p, int64_t bytes) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t chunks = (bytes + kChunk - 1) / kChunk;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < chunks;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t off = i * kChunk;
    cuda::l2_prefetch(p + off, static_cast<uint32_t>(min(kChunk, bytes - off)));
  }
}

}  // namespace

void l2_prefetch(const void* p, size_t bytes, cudaStream_t stream) {
  MINILLM_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "l2_prefetch: address not 16-byte aligned");
  const int64_t n = static_cast<int64_t>(bytes / 16 * 16);
  if (n == 0) return;
  cuda::launch(l2_prefetch_kernel, kBlocks, kThreads, 0, stream, static_cast<const char*>(p), n);
}

}  // namespace minillm::cuda::engine
