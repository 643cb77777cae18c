// Device helpers shared by all CUDA code: 16-bit float (bf16, fp16) <-> fp32 conversions.
// to_f32 deduces its argument type (to_f32(v)) or takes it explicitly (to_f32<T>(v)).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace minillm::cuda {

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

}  // namespace minillm::cuda
