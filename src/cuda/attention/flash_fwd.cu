// FlashAttention forward: parameter validation and dispatch. On compute capability 9.0, head dims 64
// and 128 run the Hopper kernel (TMA + wgmma + warp specialisation, flash_fwd_sm90.cuh); everything
// else runs the FlashAttention-2 kernels of flash_fwd_kernel.cuh (instantiated in
// flash_fwd_hdim{32,64,128,256}.cu). Tests and dev/ experiments force a kernel through
// cuda::attn::flash_attention_forward's options (flash_fwd.h).
//
// Layouts: padded q/o [B, Nq, H, D], k/v [B, Nk, Hkv, D] with strides in elements, or varlen
// [total, H, D] with cu_seqlens (include/minillm/attention.h). FlashAttention-2: head_dim runs in the
// smallest kernel of 32, 64, 128 or 256 that holds it (zero-padded columns when smaller); tiling per
// head dim (rows per block x keys per tile): 32: 128x128 and 64: 128x64, Q in registers; 128: 128x64;
// 256: 128x64 with 8 warps (FlashFwdConfig in flash_fwd_kernel.cuh says why). Measurements:
// docs/REPORT.md and bench/results/h100/attention.json (bench/bench_attention.py).
#include <cmath>
#include <utility>

#include "cuda/attention/flash_fwd.h"
#include "cuda/attention/flash_fwd_kernel.cuh"
#include "cuda/attention/flash_fwd_sm90.h"
#include "cuda/device.h"
#include "minillm/core/check.h"

namespace minillm {

void set_packed_strides(FlashAttentionParams& p, int64_t total_q) {
  const int64_t H = p.num_heads, Hkv = p.num_kv_heads, D = p.head_dim;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = D;
  p.q_row_stride = p.o_row_stride = H * D;
  p.k_row_stride = p.v_row_stride = Hkv * D;
  if (p.cu_seqlens_q != nullptr) {
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = 0;
    p.lse_batch_stride = 0;
    p.lse_head_stride = total_q;
  } else {
    p.q_batch_stride = p.o_batch_stride = p.seqlen_q * H * D;
    p.k_batch_stride = p.v_batch_stride = p.seqlen_k * Hkv * D;
    p.lse_batch_stride = H * p.seqlen_q;
    p.lse_head_stride = p.seqlen_q;
  }
}

namespace {

void check_pointer(const void* ptr, const char* name) {
  MINILLM_CHECK(ptr != nullptr, "flash_attention_forward: " << name << " is null");
  MINILLM_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0,
                "flash_attention_forward: " << name << " = " << ptr << " must be 16-byte aligned");
}

void check_stride(int64_t stride, const char* name) {
  MINILLM_CHECK(stride % 8 == 0, "flash_attention_forward: " << name << " = " << stride
                                                             << " must be a multiple of 8 elements (16 bytes)");
}

// The Hopper kernel for head dims 64 and 128 on sm_90; false when it did not run.
bool try_sm90(const cuda::attn::FlashFwdArgs& args, const cuda::attn::FlashFwdOptions& opt, cudaStream_t stream) {
  using cuda::attn::Kernel;
  if (opt.kernel == Kernel::kFa2) return false;
  const bool takes = (args.p.head_dim == 64 || args.p.head_dim == 128) && cuda::device_is_sm90();
  MINILLM_CHECK(takes || opt.kernel != Kernel::kSm90,
                "flash_attention_forward: the sm90 kernel needs head_dim 64 or 128 on compute capability 9.0, got "
                "head_dim = " << args.p.head_dim);
  if (!takes) return false;
  const bool ran = args.p.head_dim == 64 ? cuda::attn::run_flash_fwd_sm90_hdim64(args, opt.sm90, stream)
                                         : cuda::attn::run_flash_fwd_sm90_hdim128(args, opt.sm90, stream);
  MINILLM_CHECK(ran || opt.kernel != Kernel::kSm90,
                "flash_attention_forward: the sm90 kernel cannot describe this layout with TMA descriptors");
  return ran;
}

template <typename T>
void dispatch_head_dim(const cuda::attn::FlashFwdArgs& args, cudaStream_t stream) {
  const int d = args.p.head_dim;
  if (d <= 32) {
    cuda::attn::run_flash_fwd<32, T>(args, stream);
  } else if (d <= 64) {
    cuda::attn::run_flash_fwd<64, T>(args, stream);
  } else if (d <= 128) {
    cuda::attn::run_flash_fwd<128, T>(args, stream);
  } else {
    cuda::attn::run_flash_fwd<256, T>(args, stream);
  }
}

}  // namespace

namespace cuda::attn {

bool make_flash_fwd_args(const FlashAttentionParams& p, FlashFwdArgs& args) {
  MINILLM_CHECK(p.dtype == DType::bf16 || p.dtype == DType::f16,
                "flash_attention_forward: dtype = " << dtype_name(p.dtype) << " must be bf16 or f16");
  MINILLM_CHECK(p.batch >= 0, "flash_attention_forward: batch = " << p.batch << " must be >= 0");
  MINILLM_CHECK(p.batch <= 65535, "flash_attention_forward: batch = " << p.batch << " must be <= 65535");
  MINILLM_CHECK(p.seqlen_q >= 0, "flash_attention_forward: seqlen_q = " << p.seqlen_q << " must be >= 0");
  MINILLM_CHECK(p.seqlen_k >= 0, "flash_attention_forward: seqlen_k = " << p.seqlen_k << " must be >= 0");
  MINILLM_CHECK(p.num_heads >= 1 && p.num_heads <= 65535,
                "flash_attention_forward: num_heads = " << p.num_heads << " must be in [1, 65535]");
  MINILLM_CHECK(p.num_kv_heads >= 1, "flash_attention_forward: num_kv_heads = " << p.num_kv_heads << " must be >= 1");
  MINILLM_CHECK(p.num_heads % p.num_kv_heads == 0, "flash_attention_forward: num_kv_heads = "
                                                       << p.num_kv_heads << " must divide num_heads = " << p.num_heads);
  MINILLM_CHECK(p.head_dim >= 8 && p.head_dim <= 256 && p.head_dim % 8 == 0,
                "flash_attention_forward: head_dim = " << p.head_dim << " must be a multiple of 8 in [8, 256]");
  MINILLM_CHECK(std::isfinite(p.softmax_scale) && p.softmax_scale >= 0.f,
                "flash_attention_forward: softmax_scale = " << p.softmax_scale
                                                            << " must be finite and > 0 (or 0 for 1/sqrt(head_dim))");
  MINILLM_CHECK((p.cu_seqlens_q == nullptr) == (p.cu_seqlens_k == nullptr),
                "flash_attention_forward: cu_seqlens_q and cu_seqlens_k must be both set (varlen) or both null");
  if (p.batch == 0 || p.seqlen_q == 0) return false;  // no query: nothing to compute

  check_pointer(p.q, "q");
  check_pointer(p.o, "o");
  if (p.seqlen_k > 0) {
    check_pointer(p.k, "k");
    check_pointer(p.v, "v");
  }
  MINILLM_CHECK(p.o != p.q && p.o != p.k && p.o != p.v, "flash_attention_forward: o must not alias q, k or v");
  const bool varlen = p.cu_seqlens_q != nullptr;  // (the batch strides are not read then)
  const std::pair<int64_t, const char*> strides[] = {
      {varlen ? 0 : p.q_batch_stride, "q_batch_stride"}, {varlen ? 0 : p.k_batch_stride, "k_batch_stride"},
      {varlen ? 0 : p.v_batch_stride, "v_batch_stride"}, {varlen ? 0 : p.o_batch_stride, "o_batch_stride"},
      {p.q_row_stride, "q_row_stride"},                   {p.k_row_stride, "k_row_stride"},
      {p.v_row_stride, "v_row_stride"},                   {p.o_row_stride, "o_row_stride"},
      {p.q_head_stride, "q_head_stride"},                 {p.k_head_stride, "k_head_stride"},
      {p.v_head_stride, "v_head_stride"},                 {p.o_head_stride, "o_head_stride"}};
  for (const auto& [stride, name] : strides) check_stride(stride, name);

  args = FlashFwdArgs{};
  args.p = p;
  args.scale = p.softmax_scale > 0.f ? p.softmax_scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  args.scale_log2 = args.scale * 1.4426950408889634f;
  args.kv_group = p.num_heads / p.num_kv_heads;
  return true;
}

void flash_attention_forward(const FlashAttentionParams& p, const FlashFwdOptions& opt, cudaStream_t stream) {
  FlashFwdArgs args;
  if (!make_flash_fwd_args(p, args)) return;
  if (try_sm90(args, opt, stream)) return;
  if (p.dtype == DType::bf16) {
    dispatch_head_dim<__nv_bfloat16>(args, stream);
  } else {
    dispatch_head_dim<__half>(args, stream);
  }
}

}  // namespace cuda::attn

void flash_attention_forward(const FlashAttentionParams& p, cudaStream_t stream) {
  cuda::attn::flash_attention_forward(p, cuda::attn::FlashFwdOptions{}, stream);
}

}  // namespace minillm
