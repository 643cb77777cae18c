// The engine's QKV projection with RoPE fused into its epilogue (ops.h: qkv_rope): the grouped GEMM
// (cuda/gemm/grouped_gemm.cuh) as a dense GEMM, one group over all T rows, with the rope64 / rope128
// epilogue: y = x w^T, then the q and k heads of every row rotated at its position in fp32, before
// the one rounding to 16 bits; with a q/k/v bias or per-head qk-norm (Qwen2-MoE, Qwen3-MoE) the
// rope_norm64 / rope_norm128 epilogue adds the bias and normalises each head first, in the same
// registers. Saves the separate passes over q and k (a read and a write of [T, (Hq + Hkv) D] each).
// Hopper only (TMA + wgmma); elsewhere the backend runs cuBLASLt and ops.h's qkv_bias_norm_rope / rope.
#include "cuda/device.h"
#include "cuda/engine/ops.h"
#include "cuda/gemm/grouped_gemm.h"
#include "minillm/core/check.h"

namespace minillm::cuda::engine {

bool qkv_rope_supported(int head_dim, int64_t H, int64_t qkv_dim) {
  return (head_dim == 64 || head_dim == 128) && H % 8 == 0 && qkv_dim % 8 == 0 && device_is_sm90();
}

void qkv_rope(DType dtype, const void* x, const void* w, void* y, int64_t T, int64_t H, int64_t qkv_dim, int N,
              int rope_heads, int head_dim, const float2* cos_sin, int32_t* tile_counter, cudaStream_t stream,
              const QkvExtras& extras) {
  MINILLM_CHECK(head_dim == 64 || head_dim == 128, "qkv_rope: head_dim = " << head_dim << " must be 64 or 128");
  gemm::GroupedGemmArgs g;
  g.dtype = dtype;
  const bool norm = extras.bias || extras.q_norm;
  g.epilogue = head_dim == 64 ? (norm ? gemm::Epilogue::rope_norm64 : gemm::Epilogue::rope64)
                              : (norm ? gemm::Epilogue::rope_norm128 : gemm::Epilogue::rope128);
  g.a = x;
  g.lda = H;
  g.rows = T;
  g.K = H;
  g.w0 = w;
  g.ldw = H;
  g.N = qkv_dim;
  g.E = 1;
  g.d = y;
  g.ldd = qkv_dim;
  g.tile_counter = tile_counter;
  g.rope_table = cos_sin;
  g.rope_cols = static_cast<int64_t>(rope_heads) * head_dim;
  g.rope_seq = N;
  g.bias = extras.bias;
  g.q_norm = extras.q_norm;
  g.k_norm = extras.k_norm;
  g.q_cols = static_cast<int64_t>(extras.q_heads) * head_dim;
  g.norm_eps = extras.eps;
  gemm::grouped_gemm(g, stream);
}

}  // namespace minillm::cuda::engine
