// The FlashAttention forward's internal entry point: minillm::flash_attention_forward (the public API,
// include/minillm/attention.h) with explicit options. The product always runs the defaults; tests and
// the experiments under dev/ pass other options to force a kernel or change the Hopper schedule.
#pragma once
#include <cuda_runtime.h>

#include "minillm/attention.h"

namespace minillm::cuda::attn {

// Which kernel runs: kAuto takes the Hopper kernel on compute capability 9.0 for head dims 64 and 128
// and FlashAttention-2 otherwise; kFa2 always FlashAttention-2; kSm90 the Hopper kernel (an error when
// it cannot take the case).
enum class Kernel { kAuto, kFa2, kSm90 };

// Schedule of the Hopper kernel (flash_fwd_sm90.cuh); the defaults are what the product runs.
struct Sm90Options {
  int block_m = 0;         // head dim 64: 128 or 192 query rows per tile (2 or 3 consumers); 0: heuristic
  bool persistent = true;  // grid = number of SMs (false: one CTA per work unit)
  int head_group = 0;      // (batch, head) pairs per unit group; 0: from the L2 budget
  bool dynamic = true;     // work units from a global counter (false: static round-robin)
};

struct FlashFwdOptions {
  Kernel kernel = Kernel::kAuto;
  Sm90Options sm90;
};

// Validates `p` (throws minillm::Error naming the field and its value) and enqueues the kernel that
// `opt` selects on `stream`. Returns without launching when there is no query.
void flash_attention_forward(const FlashAttentionParams& p, const FlashFwdOptions& opt, cudaStream_t stream);

}  // namespace minillm::cuda::attn
