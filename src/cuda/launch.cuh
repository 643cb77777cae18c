// Programmatic dependent launch (PDL, sm_90) for the kernels of a generation step.
//
// Why: a decode step runs ~12 kernels per layer, most of them a few microseconds long, one after the
// other. Launched normally, each kernel's launch and ramp-up start only when the previous kernel has
// finished. cuda::launch sets cudaLaunchAttributeProgrammaticStreamSerialization, so the kernel may
// be launched while the previous kernel in the stream is still running (also inside a CUDA graph,
// where capture turns it into a programmatic edge); its blocks then wait in pdl_wait() until that
// kernel has completed and its memory writes are visible.
//
// The contract for a kernel launched by cuda::launch: call pdl_wait() before its first global memory
// access, read or write (its inputs may still be being written, and its outputs still being read, by
// the previous kernel), and pdl_trigger() once its own dependents may start launching. Every such
// kernel waits, so "the previous kernel has completed" holds transitively along the stream. Both are
// no-ops in a kernel launched with <<<>>> and before sm_90. The one exception: memory that no kernel
// of a step writes (weights) may be read, or prefetched into L2, before the wait (moe::decode_gemm).
#pragma once
#include <cuda_runtime.h>

#include "cuda/device.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) with the PDL attribute (on sm_90: the attribute needs
// it); checks the launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = device_is_sm90() ? 1 : 0;
  MINILLM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...));
}

}  // namespace minillm::cuda
