// Device helpers shared by the MoE kernels: 16-bit float <-> fp32, 16-byte vectors, activations.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace minillm::cuda::moe {

using minillm::cuda::from_f32;
using minillm::cuda::to_f32;

// Two fp32 -> one 32-bit word of two 16-bit floats (lo = a).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  T lo = from_f32<T>(a), hi = from_f32<T>(b);
  return static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&lo)) |
         (static_cast<uint32_t>(*reinterpret_cast<uint16_t*>(&hi)) << 16);
}

// Eight 16-bit floats in one 16-byte vector <-> fp32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_f32<T>(h[i]);
}
template <typename T>
__device__ __forceinline__ uint4 pack8(const float* f) {
  return make_uint4(pack2<T>(f[0], f[1]), pack2<T>(f[2], f[3]), pack2<T>(f[4], f[5]), pack2<T>(f[6], f[7]));
}

// x * sigmoid(x) with the approximate division (2 ulp; exp(-x) = inf gives -0): the IEEE division's
// instruction sequence was a large part of the gate/up GEMM's epilogue.
__device__ __forceinline__ float silu(float x) { return __fdividef(x, 1.0f + __expf(-x)); }
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Streaming 16-byte load that does not allocate in L1 (weights: read once).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

}  // namespace minillm::cuda::moe
