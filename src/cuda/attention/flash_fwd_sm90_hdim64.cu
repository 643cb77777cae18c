// Hopper FlashAttention forward, head dim 64 (bf16 and fp16). Kernel and design: flash_fwd_sm90.cuh.
// Tiling: 2 or 3 consumer warpgroups = 128 or 192 query rows x 128 keys per tile (see pick_block_m),
// 3-stage K/V ring, intra-warpgroup overlap and ping-pong between the consumers.
// Measurements: docs/REPORT.md, docs/HOPPER_ATTENTION.md.
#include "cuda/attention/flash_fwd_sm90.cuh"

namespace minillm::cuda::attn {

// 3 K/V stages: a 128-key block of head dim 64 is consumed in less time than a load's latency.
// All exponentials on the MUFU: moving a part of them to the FMA pipe (kExp2Poly) measured slower
// (dev/cuda/01_attention_sm90_ablation.cu, docs/HOPPER_ATTENTION.md).
using Sm90Hdim64M128 = Sm90FwdTraits<64, 2, 128, 3, true, true>;
using Sm90Hdim64M192 = Sm90FwdTraits<64, 3, 128, 3, true, true>;

namespace {

// 192 rows per tile (3 consumers: more softmax in flight under the other warpgroups' GEMMs) when
// there are tiles for several waves; 128 for fewer tiles (wave quantization) and for short causal
// sequences (192-row tiles cover more masked keys).
int pick_block_m(const FlashAttentionParams& p) {
  const int64_t tiles = (int64_t(p.seqlen_q) + 191) / 192 * p.batch * p.num_heads;
  return tiles >= 4 * int64_t(device_sm_count()) && (!p.causal || p.seqlen_q >= 1024) ? 192 : 128;
}

}  // namespace

bool run_flash_fwd_sm90_hdim64(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream,
                               const Sm90PagedKV* paged) {
  const int block_m = opt.block_m > 0 ? opt.block_m : pick_block_m(args.p);
  return block_m == 192 ? launch_flash_fwd_sm90_any<Sm90Hdim64M192>(args, opt, stream, paged)
                        : launch_flash_fwd_sm90_any<Sm90Hdim64M128>(args, opt, stream, paged);
}

}  // namespace minillm::cuda::attn
