// Grouped GEMM with the RoPE epilogue (head dims 64 and 128), for the engine's QKV projection
// (cuda/engine/qkv_rope.cu): q and k rotated in registers before the one rounding to 16 bits. One file
// for the two instantiations so that they compile in parallel with the others. Kernel: grouped_gemm.cuh.
#include "cuda/gemm/grouped_gemm.cuh"

namespace minillm::cuda::gemm {

void launch_grouped_gemm_rope(DType dtype, const GemmParams& p, int head_dim, int grid, cudaStream_t stream) {
  if (head_dim == 64)
    launch_grouped_gemm_impl<Epilogue::rope64>(dtype, p, grid, stream);
  else
    launch_grouped_gemm_impl<Epilogue::rope128>(dtype, p, grid, stream);
}

}  // namespace minillm::cuda::gemm
