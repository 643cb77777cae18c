// Grouped GEMM with the fused gelu epilogue (the MoE gate projection of a GELU expert): one instantiation per file so that the heavy kernels compile in
// parallel. Kernel and design: grouped_gemm.cuh.
#include "cuda/gemm/grouped_gemm.cuh"

namespace minillm::cuda::gemm {

void launch_grouped_gemm_gelu(DType dtype, const GemmParams& p, int grid, cudaStream_t stream) {
  launch_grouped_gemm_impl<Epilogue::gelu>(dtype, p, grid, stream);
}

}  // namespace minillm::cuda::gemm
