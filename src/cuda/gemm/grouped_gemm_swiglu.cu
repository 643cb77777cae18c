// Grouped GEMM with the fused swiglu epilogue (the MoE gate/up projection): one instantiation per file so that the heavy kernels compile in
// parallel. Kernel and design: grouped_gemm.cuh.
#include "cuda/gemm/grouped_gemm.cuh"

namespace minillm::cuda::gemm {

void launch_grouped_gemm_swiglu(DType dtype, const GemmParams& p, int grid, cudaStream_t stream) {
  launch_grouped_gemm_impl<Epilogue::swiglu>(dtype, p, grid, stream);
}

}  // namespace minillm::cuda::gemm
