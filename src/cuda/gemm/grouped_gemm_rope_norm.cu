// Grouped GEMM with the bias + per-head qk-norm + RoPE epilogue (head dims 64 and 128), for the QKV
// projection of Qwen2-MoE (q/k/v bias) and Qwen3-MoE (per-head qk-norm) in cuda/engine/qkv_rope.cu.
// A file of its own so that these instantiations compile in parallel with the others. Kernel and
// epilogue: grouped_gemm.cuh (bias_norm_acc, then epilogue_block's rotation).
#include "cuda/gemm/grouped_gemm.cuh"

namespace minillm::cuda::gemm {

void launch_grouped_gemm_rope_norm(DType dtype, const GemmParams& p, int head_dim, int grid, cudaStream_t stream) {
  if (head_dim == 64)
    launch_grouped_gemm_impl<Epilogue::rope_norm64>(dtype, p, grid, stream);
  else
    launch_grouped_gemm_impl<Epilogue::rope_norm128>(dtype, p, grid, stream);
}

}  // namespace minillm::cuda::gemm
