// Device helpers shared by the engine's glue kernels: a block-wide fp32 sum (and the 16-bit <-> fp32
// conversions of cuda/common.cuh).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/common.cuh"

namespace minillm::cuda::engine {

using minillm::cuda::from_f32;
using minillm::cuda::to_f32;

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `red` is 32 floats of shared memory; the call ends with a barrier, so it can be reused at once.
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nwarps ? red[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

}  // namespace minillm::cuda::engine
