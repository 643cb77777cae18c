// Hopper FlashAttention forward, head dim 128 (bf16 and fp16). Kernel and design: flash_fwd_sm90.cuh.
// Tiling: 2 consumer warpgroups = 128 query rows x 128 keys per tile, 2-stage K/V ring, intra-warpgroup
// overlap and ping-pong between the consumers. H100, bf16, B16 H16 N2048: 591 TFLOP/s full, 527
// causal (SDPA cuDNN 623 / 529); measured with PYTHONPATH=python python3 bench/bench_attention.py
// (more in docs/HOPPER_ATTENTION.md).
#include "cuda/attention/flash_fwd_sm90.cuh"

namespace minillm::cuda::attn {

using Sm90Hdim128 = Sm90FwdTraits<128, 2, 128, 2, true, true>;

bool run_flash_fwd_sm90_hdim128(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream) {
  if (opt.variant != Sm90Variant::kDefault) return run_flash_fwd_sm90_ablation(args, opt, stream);
  return args.p.dtype == DType::bf16 ? launch_flash_fwd_sm90<Sm90Hdim128, __nv_bfloat16>(args, opt, stream)
                                     : launch_flash_fwd_sm90<Sm90Hdim128, __half>(args, opt, stream);
}

}  // namespace minillm::cuda::attn
