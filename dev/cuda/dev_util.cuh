// Helpers shared by the dev/ programs: device allocation and seeded uniform bf16 tensors.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "minillm/core/cuda_check.h"

namespace dev {

// x[i] uniform in [-0.05, 0.05), a hash of (i, seed).
__global__ void fill_uniform(__nv_bfloat16* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
    x[i] = __float2bfloat16_rn((float(h) * (1.0f / 4294967296.0f) - 0.5f) * 0.1f);
  }
}

template <typename U>
U* device_alloc(size_t n) {
  U* p = nullptr;
  MINILLM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(U)));
  return p;
}

inline __nv_bfloat16* random_tensor(size_t n, uint32_t seed) {
  __nv_bfloat16* p = device_alloc<__nv_bfloat16>(n);
  fill_uniform<<<1024, 256>>>(p, n, seed);
  MINILLM_CUDA_CHECK(cudaGetLastError());
  return p;
}

}  // namespace dev
