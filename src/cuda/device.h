// Host-side helpers shared by the CUDA launchers: device queries cached once per device, the
// dynamic shared-memory limit raised once per kernel instantiation and device, and TMA descriptors.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "minillm/core/cuda_check.h"
#include "minillm/core/dtype.h"

namespace minillm::cuda {

int current_device();
// Multiprocessor count of the current device (queried once per device).
int device_sm_count();
// Whether the current device has compute capability 9.0, the target of the sm_90a kernels (queried
// once per device).
bool device_is_sm90();

// Raises the dynamic shared-memory limit of kKernel on the current device to at least `bytes`: the
// attribute is set once per (kernel instantiation, device), again only when a launch needs more.
template <auto kKernel>
void set_max_dynamic_smem(int bytes) {
  static std::atomic<int> limit[64] = {};  // per device: the limit set so far (devices >= 64: every call)
  const int dev = current_device();
  if (dev < 64 && limit[dev].load(std::memory_order_relaxed) >= bytes) return;
  MINILLM_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (dev < 64) limit[dev].store(bytes, std::memory_order_relaxed);
}

// A TMA descriptor of a `rank`-D tensor of 16-bit floats (bf16 or fp16) at `ptr`: dims[i] elements
// along dim i (innermost first), strides_bytes[i] bytes between consecutive indices of dim i + 1, boxes
// of box[i] elements, 128-byte swizzle, 256-byte L2 promotion, no out-of-bounds fill (zeros).
// Returns the driver's result (CUDA_SUCCESS or why the layout was rejected).
CUresult encode_tensor_map(CUtensorMap* map, DType dtype, const void* ptr, int rank, const uint64_t* dims,
                           const uint64_t* strides_bytes, const uint32_t* box);

}  // namespace minillm::cuda
