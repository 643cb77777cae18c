// Writing new tokens' keys and values into the paged KV cache (include/minillm/kv_cache.h).
//
// store_kv_row is the reusable body: it copies one token's row of Hkv * D elements (all kv heads,
// contiguous) into cache row `slot` of [num_pages * kPageSize, Hkv, D] with 16-byte stores, the
// threads of a group striding over the row's 16-byte chunks. A fused QKV (+RoPE) kernel calls it
// once for k and once for v with the row it has just produced (in registers or shared memory is
// the caller's business: the source is any 16-byte-aligned pointer).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launch.cuh"
#include "minillm/kv_cache.h"

namespace minillm::cuda::paged {

// cache[slot, :] = src[0, row_elems) with `threads` cooperating threads (`lane` in [0, threads)).
// row_elems is Hkv * D, a multiple of 8 (16-byte chunks); src and cache 16-byte aligned.
template <typename T>
__device__ __forceinline__ void store_kv_row(T* cache, int64_t slot, const T* src, int row_elems, int lane,
                                             int threads) {
  const int4* s = reinterpret_cast<const int4*>(src);
  int4* d = reinterpret_cast<int4*>(cache + slot * row_elems);
  for (int c = lane; c < row_elems / 8; c += threads) d[c] = s[c];
}

// One block per token: k and v rows of token t go to slot_mapping[t] (skipped when negative).
// k, v: [T, Hkv, D] with row strides k_row / v_row elements.
template <typename T>
__global__ void kv_cache_write_kernel(const T* __restrict__ k, const T* __restrict__ v, int64_t k_row, int64_t v_row,
                                      const int32_t* __restrict__ slot_mapping, int row_elems, T* k_cache,
                                      T* v_cache) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t t = blockIdx.x;
  const int32_t slot = slot_mapping[t];
  if (slot < 0) return;
  store_kv_row(k_cache, slot, k + t * k_row, row_elems, threadIdx.x, blockDim.x);
  store_kv_row(v_cache, slot, v + t * v_row, row_elems, threadIdx.x, blockDim.x);
}

}  // namespace minillm::cuda::paged
