// FlashAttention-2 forward, kernels for head_dim <= 128 (bf16 and fp16). One file per head dim so that
// the instantiations compile in parallel. Algorithm, tiling and measured numbers: flash_fwd_kernel.cuh
// and flash_fwd.cu.
#include "cuda/attention/flash_fwd_kernel.cuh"

namespace minillm::cuda::attn {

template <>
void run_flash_fwd<128, __nv_bfloat16>(const FlashFwdArgs& args, cudaStream_t stream) {
  launch_flash_fwd<FlashFwdConfig<128>::Traits, __nv_bfloat16>(args, stream);
}

template <>
void run_flash_fwd<128, __half>(const FlashFwdArgs& args, cudaStream_t stream) {
  launch_flash_fwd<FlashFwdConfig<128>::Traits, __half>(args, stream);
}

}  // namespace minillm::cuda::attn
