// FlashAttention-2 forward, the kernels for head_dim <= 256 (bf16 and fp16); smaller head dims run
// zero-padded in them. One file per head dim so that the instantiations compile in parallel.
// Algorithm and layouts: flash_fwd_kernel.cuh. Tiling: 128 query rows x 64 keys per tile, 8 warps
// of 16 rows, Q from shared memory, 1 block/SM (FlashFwdConfig says why; measurements: docs/REPORT.md).
#include "cuda/attention/flash_fwd_kernel.cuh"

namespace minillm::cuda::attn {

template <>
void run_flash_fwd<256, __nv_bfloat16>(const FlashFwdArgs& args, cudaStream_t stream) {
  launch_flash_fwd<FlashFwdConfig<256>::Traits, __nv_bfloat16>(args, stream);
}

template <>
void run_flash_fwd<256, __half>(const FlashFwdArgs& args, cudaStream_t stream) {
  launch_flash_fwd<FlashFwdConfig<256>::Traits, __half>(args, stream);
}

}  // namespace minillm::cuda::attn
