// cuda::launch (src/cuda/launch.cuh): a kernel started with programmatic dependent launch sees every
// write of the kernel before it, directly on a stream and replayed from a CUDA graph. The writer
// triggers its dependents at once and then spins, so the reader's blocks are resident long before the
// writes land: only pdl_wait() keeps it from reading zeros.
#include <gtest/gtest.h>

#include <vector>

#include "cuda/launch.cuh"
#include "minillm/core/cuda_check.h"
#include "minillm/core/tensor.h"

namespace minillm {
namespace {

#define REQUIRE_GPU() \
  if (!minillm::cuda_available()) GTEST_SKIP() << "no CUDA device"

__global__ void slow_writer(int* data, int n, long long spin_cycles) {
  cuda::pdl_wait();
  cuda::pdl_trigger();
  const long long t0 = clock64();
  while (clock64() - t0 < spin_cycles) {
  }
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) data[i] = i + 1;
}

__global__ void reader(const int* data, int* out, int n) {
  cuda::pdl_wait();
  cuda::pdl_trigger();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = data[i];
}

int count_wrong(const Buffer& out, int n) {
  std::vector<int> h(n);
  copy_bytes(h.data(), Device::cpu, out.data(), Device::cuda, n * sizeof(int));
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += h[i] != i + 1;
  return wrong;
}

TEST(CudaLaunch, DependentKernelSeesThePreviousKernelsWrites) {
  REQUIRE_GPU();
  constexpr int n = 1 << 16;
  constexpr long long kSpin = 200000;  // ~0.1 ms at 1.7 GHz
  Buffer data(n * sizeof(int), Device::cuda), out(n * sizeof(int), Device::cuda);
  cudaStream_t s;
  MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto enqueue = [&] {
    MINILLM_CUDA_CHECK(cudaMemsetAsync(data.data(), 0, data.bytes(), s));
    MINILLM_CUDA_CHECK(cudaMemsetAsync(out.data(), 0, out.bytes(), s));
    cuda::launch(slow_writer, 8, 256, 0, s, static_cast<int*>(data.data()), n, kSpin);
    cuda::launch(reader, 64, 256, 0, s, static_cast<const int*>(data.data()), static_cast<int*>(out.data()), n);
  };
  for (int it = 0; it < 20; ++it) {
    enqueue();
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(s));
    ASSERT_EQ(count_wrong(out, n), 0) << "stream launch " << it;
  }
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MINILLM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  enqueue();
  MINILLM_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  MINILLM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int it = 0; it < 20; ++it) {
    MINILLM_CUDA_CHECK(cudaGraphLaunch(exec, s));
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(s));
    ASSERT_EQ(count_wrong(out, n), 0) << "graph replay " << it;
  }
  MINILLM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MINILLM_CUDA_CHECK(cudaGraphDestroy(graph));
  MINILLM_CUDA_CHECK(cudaStreamDestroy(s));
}

}  // namespace
}  // namespace minillm
