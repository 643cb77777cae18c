// Grouped expert GEMM with the fused gelu epilogue (the gate projection): one instantiation per
// file so that the heavy kernels compile in parallel. Kernel and design: moe_grouped_gemm.cuh.
#include "cuda/moe/moe_grouped_gemm.cuh"

namespace minillm::cuda::moe {

void launch_grouped_gemm_gelu(DType dtype, const GemmParams& p, int grid, cudaStream_t stream) {
  launch_grouped_gemm_impl<Epilogue::gelu>(dtype, p, grid, stream);
}

}  // namespace minillm::cuda::moe
