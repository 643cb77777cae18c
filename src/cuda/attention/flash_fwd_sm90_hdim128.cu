// Hopper FlashAttention forward, head dim 128 (bf16 and fp16). Kernel and design: flash_fwd_sm90.cuh.
// Tiling: 2 consumer warpgroups = 128 query rows x 128 keys per tile, 2-stage K/V ring, intra-warpgroup
// overlap and ping-pong between the consumers (measurements: docs/REPORT.md, docs/HOPPER_ATTENTION.md).
#include "cuda/attention/flash_fwd_sm90.cuh"

namespace minillm::cuda::attn {

using Sm90Hdim128 = Sm90FwdTraits<128, 2, 128, 2, true, true>;
using Sm90Hdim128DoubleP = Sm90FwdTraits<128, 2, 128, 2, true, true, 0, true>;

// Two P buffers from 2048 keys on: they pay off on long rows and cost time at N = 512-1024, where a
// tile's few key blocks do not amortise the longer code (docs/HOPPER_ATTENTION.md).
bool run_flash_fwd_sm90_hdim128(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream,
                                const Sm90PagedKV* paged) {
  const bool long_keys = args.p.seqlen_k >= 2048;  // (varlen: the longest sequence)
  return long_keys ? launch_flash_fwd_sm90_any<Sm90Hdim128DoubleP>(args, opt, stream, paged)
                   : launch_flash_fwd_sm90_any<Sm90Hdim128>(args, opt, stream, paged);
}

}  // namespace minillm::cuda::attn
