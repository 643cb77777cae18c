// kv_cache_write launcher: one block per new token, 16-byte copies of its k and v rows into their
// cache slots (paged_kv_write.cuh has the reusable device function and the layout).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/attention/paged_kv_write.cuh"
#include "cuda/launch.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda {

void kv_cache_write(const void* k, const void* v, int64_t k_row, int64_t v_row, const int32_t* slot_mapping,
                    int64_t T, int Hkv, int D, void* k_cache, void* v_cache, DType dtype, cudaStream_t stream) {
  MINILLM_CHECK(dtype == DType::bf16 || dtype == DType::f16,
                "kv_cache_write: dtype = " << dtype_name(dtype) << " must be bf16 or f16");
  MINILLM_CHECK(Hkv > 0 && D > 0 && D % 8 == 0, "kv_cache_write: num_kv_heads = " << Hkv << ", head_dim = " << D
                                                 << ": both > 0 and head_dim a multiple of 8");
  MINILLM_CHECK(k_row % 8 == 0 && v_row % 8 == 0,
                "kv_cache_write: row strides " << k_row << ", " << v_row << " must be multiples of 8 elements");
  MINILLM_CHECK(T >= 0 && T < (int64_t{1} << 31), "kv_cache_write: num_tokens = " << T << " out of range");
  for (const void* ptr : {k, v, static_cast<const void*>(k_cache), static_cast<const void*>(v_cache)})
    MINILLM_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, "kv_cache_write: pointers must be 16-byte aligned");
  if (T == 0) return;
  const int row_elems = Hkv * D;
  const int threads = std::clamp((row_elems / 8 + 31) / 32 * 32, 32, 256);
  const dim3 grid(static_cast<unsigned>(T));
  if (dtype == DType::bf16) {
    using E = __nv_bfloat16;
    cuda::launch(paged::kv_cache_write_kernel<E>, grid, threads, 0, stream, static_cast<const E*>(k),
                 static_cast<const E*>(v), k_row, v_row, slot_mapping, row_elems, static_cast<E*>(k_cache),
                 static_cast<E*>(v_cache));
  } else {
    using E = __half;
    cuda::launch(paged::kv_cache_write_kernel<E>, grid, threads, 0, stream, static_cast<const E*>(k),
                 static_cast<const E*>(v), k_row, v_row, slot_mapping, row_elems, static_cast<E*>(k_cache),
                 static_cast<E*>(v_cache));
  }
}

}  // namespace minillm::cuda
