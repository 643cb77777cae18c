// FlashAttention forward on CUDA (FlashAttention-2 algorithm): O = softmax(scale * Q K^T + mask) V,
// computed tile by tile with an online softmax, so that memory stays O(N) (no N x N buffer).
//
// Two layouts, chosen by cu_seqlens_q:
//   padded (cu_seqlens_q == nullptr): q, o: [B, Nq, H, D], k, v: [B, Nk, Hkv, D] with arbitrary
//     batch / row (token) / head strides; the last dim (D) is contiguous.
//   varlen (cu_seqlens_q != nullptr): q, o: [total_q, H, D], k, v: [total_k, Hkv, D]; sequence b
//     owns query tokens [cu_seqlens_q[b], cu_seqlens_q[b+1]) and keys [cu_seqlens_k[b], cu_seqlens_k[b+1]).
// Causal masking is aligned to the bottom-right corner: query i sees keys j <= i + Nk - Nq (per
// sequence). A query that sees no key gets o = 0 and lse = -inf.
// GQA/MQA: query head h reads kv head h / (H / Hkv).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "minillm/core/dtype.h"

namespace minillm {

struct FlashAttentionParams {
  // Device pointers, 16-byte aligned. q/o: [B, Nq, H, D] or [total_q, H, D]; k/v: [B, Nk, Hkv, D] or
  // [total_k, Hkv, D]. o may not alias q, k or v.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  // Optional log-sum-exp of the scaled scores, fp32, natural log (-inf for a query that sees no key).
  // padded: element (b, h, i) at lse[b * lse_batch_stride + h * lse_head_stride + i];
  // varlen: element (h, token t) at lse[h * lse_head_stride + t] (lse_batch_stride unused).
  float* lse = nullptr;

  DType dtype = DType::bf16;  // element type of q, k, v and o: DType::bf16 or DType::f16

  int batch = 0;         // B (padded), or the number of sequences (varlen: cu_seqlens have batch + 1 entries)
  int seqlen_q = 0;      // padded: Nq; varlen: max_seqlen_q (>= every query length, sizes the grid)
  int seqlen_k = 0;      // padded: Nk; varlen: max_seqlen_k (informational)
  int num_heads = 0;     // H, query heads
  int num_kv_heads = 0;  // Hkv, key/value heads; must divide num_heads
  int head_dim = 0;      // D: a multiple of 8, at most 256 (kernels exist for 32, 64, 128 and 256;
                         // other sizes run zero-padded in the next larger one)

  // Strides in elements (not bytes). Each must be a multiple of 8 (16-byte aligned rows).
  // *_batch_stride is ignored in the varlen layout.
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;  // in floats; the token stride of lse is 1

  // Varlen layout: device int32 arrays of batch + 1 non-decreasing offsets starting at 0; both or neither.
  // They are not validated on the device: lengths beyond max_seqlen_q are not computed.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;

  bool causal = false;        // bottom-right aligned causal mask
  float softmax_scale = 0.f;  // 0 selects 1/sqrt(head_dim); otherwise finite and > 0
};

// Fills the strides of a densely packed layout: padded q/o [B, Nq, H, D], k/v [B, Nk, Hkv, D],
// lse [B, H, Nq]; or, when p.cu_seqlens_q is set, q/o [total_q, H, D], k/v [total_k, Hkv, D] and
// lse [H, total_q]. Needs batch, seqlen_q, seqlen_k, num_heads, num_kv_heads and head_dim (and, for
// varlen, total_q: the number of query tokens).
void set_packed_strides(FlashAttentionParams& p, int64_t total_q = 0);

// Validates `p` (throws minillm::Error naming the field and its value) and enqueues the kernel on
// `stream`. Returns without launching when there is no query (batch or seqlen_q is 0).
void flash_attention_forward(const FlashAttentionParams& p, cudaStream_t stream);

}  // namespace minillm
