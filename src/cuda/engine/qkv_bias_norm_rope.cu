// q/k/v bias, qk-norm and RoPE in one pass, in place on the QKV activation, after a QKV GEMM that
// could not do them in its epilogue (cuBLASLt for generation steps; OLMoE's norm over the whole
// projection, whose sum of squares spans more columns than one GEMM tile holds).
//
// Algorithm: one block of 256 threads per token row runs qkv_finish_row (qkv_finish.cuh): bias and
// qk-norm, RoPE, then (with a KvStore) the row's k and v into the paged cache, so that a generation
// step needs no separate cache-write launch.
// Layout: qkv [T, (Hq + 2 Hkv) * D] row-major bf16/fp16; bias [(Hq + 2 Hkv) * D] fp32 or null;
// q_norm, k_norm fp32 [D] (per head) or [Hq * D] / [Hkv * D] (whole), or null; cos_sin [max_pos, D/2].
// Cost: one read and one write of q and k (and v when biased), instead of one per phase.
#include "cuda/engine/ops.h"
#include "cuda/engine/qkv_finish.cuh"
#include "cuda/launch.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void qkv_bias_norm_rope_kernel(T* __restrict__ qkv, const QkvFinish f) {
  __shared__ float red[32];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t t = blockIdx.x;
  qkv_finish_row(qkv + t * (static_cast<int64_t>(f.Hq + 2 * f.Hkv) * f.D), t, f, red);
}

}  // namespace

void qkv_finish_check(const QkvFinish& f, const void* qkv) {
  if (!f.store.slots) return;
  MINILLM_CHECK(f.D % 8 == 0, "qkv_bias_norm_rope: head_dim = " << f.D << " must be a multiple of 8 to store into the cache");
  for (const void* p : {qkv, static_cast<const void*>(f.store.k_cache), static_cast<const void*>(f.store.v_cache)})
    MINILLM_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "qkv_bias_norm_rope: qkv and the caches must be 16-byte aligned");
}

void qkv_bias_norm_rope(DType dtype, void* qkv, int64_t T, const QkvFinish& f, cudaStream_t stream) {
  qkv_finish_check(f, qkv);
  if (T <= 0 || (!f.bias && !f.q_norm && !f.cos_sin && !f.store.slots)) return;
  const dim3 grid(static_cast<unsigned>(T));
  if (dtype == DType::bf16) {
    cuda::launch(qkv_bias_norm_rope_kernel<__nv_bfloat16>, grid, kThreads, 0, stream, static_cast<__nv_bfloat16*>(qkv), f);
  } else {
    cuda::launch(qkv_bias_norm_rope_kernel<__half>, grid, kThreads, 0, stream, static_cast<__half*>(qkv), f);
  }
}

}  // namespace minillm::cuda::engine
