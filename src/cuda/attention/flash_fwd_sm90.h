// Entry points of the Hopper FlashAttention forward kernel (flash_fwd_sm90.cuh), for the dispatch in
// flash_fwd.cu. Head dims 64 and 128, bf16 and fp16; everything else runs the FlashAttention-2 kernel.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention/flash_fwd.h"
#include "cuda/attention/flash_fwd_kernel.cuh"

namespace minillm::cuda::attn {

// Launch the kernel for args.p.head_dim == 64 / 128. Return false without launching when the layout
// cannot be described by TMA descriptors (the caller then runs another kernel). `paged`: the keys and
// values come from a paged KV cache (flash_fwd_sm90_traits.cuh, Sm90PagedKV).
struct Sm90PagedKV;
bool run_flash_fwd_sm90_hdim64(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream,
                               const Sm90PagedKV* paged = nullptr);
bool run_flash_fwd_sm90_hdim128(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream,
                                const Sm90PagedKV* paged = nullptr);

}  // namespace minillm::cuda::attn
