// Entry points of the Hopper FlashAttention forward kernel (flash_fwd_sm90.cuh), for the dispatch in
// flash_fwd.cu. Head dims 64 and 128, bf16 and fp16; everything else runs the FlashAttention-2 kernel.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention/flash_fwd_kernel.cuh"

namespace minillm::cuda::attn {

// Variants for the measurements of docs/HOPPER_ATTENTION.md. Only kDefault is built unless the
// library is compiled with -DMINILLM_ATTN_ABLATION (flash_fwd_sm90_ablation.cu); selected with the
// environment variable MINILLM_SM90_VARIANT (read once).
enum class Sm90Variant {
  kDefault,
  kSerial,            // no intra-warpgroup overlap: S = Q K^T, softmax, O += P V strictly in turn
  kNoPingPong,        // no scheduling barrier between the consumer warpgroups
  kSerialNoPingPong,  // neither
  kExp2Quarter,       // one exponential in four on the FMA pipe
  kExp2Third,         // one exponential in three on the FMA pipe
  kExp2Half,          // one exponential in two on the FMA pipe
};

struct Sm90Options {
  Sm90Variant variant = Sm90Variant::kDefault;
  int block_m = 0;         // head dim 64: 128 or 192 query rows per tile (2 or 3 consumers); 0: heuristic
  bool persistent = true;  // grid = number of SMs (false: one CTA per tile)
  int head_group = 0;      // (batch, head) pairs per tile group; 0: from the L2 budget
  bool dynamic = true;     // work units from a global counter (false: static round-robin)
};

// Launch the kernel for args.p.head_dim == 64 / 128. Return false without launching when the layout
// cannot be described by TMA descriptors (the caller then runs the FlashAttention-2 kernel).
bool run_flash_fwd_sm90_hdim64(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream);
bool run_flash_fwd_sm90_hdim128(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream);
// The ablation variants (flash_fwd_sm90_ablation.cu); throws when they were not built.
bool run_flash_fwd_sm90_ablation(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream);

// Which kernel flash_attention_forward runs: by default the sm90 kernel on compute capability 9.0
// for head dims 64 and 128, else FlashAttention-2. MINILLM_ATTENTION_KERNEL=fa2 (read once) forces
// FlashAttention-2. Tests override the choice in-process with set_kernel_override.
enum class KernelOverride { kNone, kFa2, kSm90 };
void set_kernel_override(KernelOverride k);

}  // namespace minillm::cuda::attn
