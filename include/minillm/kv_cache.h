// The paged KV cache and the two ops that use it: kv_cache_write (new tokens' k, v into their slots)
// and paged_attention (queries of many sequences against their cached keys and values).
//
// Layout, per layer: k_cache and v_cache are each [num_pages, kPageSize, Hkv, D] in the model dtype
// (bf16/fp16 on CUDA, fp32 on the CPU backend), contiguous. A page holds kPageSize consecutive
// positions of one sequence, all kv heads. Pages are owned by sequences through a block table:
//   block_table [S, max_pages] i32: the token at position p of sequence s lives in page
//     block_table[s * max_pages + p / kPageSize], row p % kPageSize. Entries past a sequence's
//     last page are never read (they may hold anything, e.g. -1).
//   slot_mapping [T] i32: where new token t is written: slot = page * kPageSize + row, i.e. the
//     flat row index into [num_pages * kPageSize, Hkv, D]. A negative slot skips the token (padding
//     rows of a batch captured in a CUDA graph).
//   context_lens [S] i32: tokens in the cache of sequence s after this step (prefix + new).
//   cu_seqlens_q [S+1] i32: the query tokens of sequence s are rows [cu[s], cu[s+1]) of q; they are
//     its LAST cu[s+1]-cu[s] positions (positions context_lens[s] - n_s .. context_lens[s] - 1), so
//     causal attention lets query i (0-based within the sequence) see keys j <= context_lens[s] - n_s + i.
//     A sequence with no new tokens (n_s = 0) is allowed and costs nothing.
//
// kPageSize = 64: one page is exactly one key/value tile of the attention kernels (64 keys x D):
// the decode kernel streams a sequence page by page (one block-table lookup per tile, each row a
// contiguous D*2-byte run, so 16-byte loads stay fully coalesced), and the flash prefill kernel's
// key tile is 64 rows too, so a TMA box or cp.async tile never straddles two pages. Smaller pages
// (16) would need several lookups per tile and shorter bursts; larger (128+) waste more memory at
// the end of each sequence (on average half a page: 32 tokens here) and coarsen split-KV.
#pragma once
#include <cstdint>

#include "minillm/core/dtype.h"

#ifdef MINILLM_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace minillm {

inline constexpr int kPageSize = 64;  // tokens per page

// ---- CPU backend (fp32; the reference of the CUDA kernels) ----
namespace cpu {

// k_cache[slot_mapping[t]] = k[t], v_cache[slot_mapping[t]] = v[t] for every t with slot >= 0.
// k, v: [T, Hkv, D] with row strides k_row / v_row (elements between consecutive tokens);
// k_cache, v_cache: [num_slots, Hkv, D] (num_slots = num_pages * kPageSize). Throws minillm::Error
// when a slot is >= num_slots.
void kv_cache_write(const float* k, const float* v, int64_t k_row, int64_t v_row, const int32_t* slot_mapping,
                    int64_t T, int64_t Hkv, int64_t D, float* k_cache, float* v_cache, int64_t num_slots);

// Attention of q against the paged cache. q, out: [T, Hq, D] (T = cu_seqlens_q[S]); k_cache, v_cache:
// [num_pages, kPageSize, Hkv, D]; block_table [S, max_pages]; context_lens [S]; cu_seqlens_q [S+1]
// (null: one query per sequence, T = S). Query head h reads kv head h / (Hq / Hkv). causal as in the
// header comment (without it every query sees the whole context). scale 0 selects 1/sqrt(D). Scores,
// softmax and the weighted sum in double. lse (optional): [T, Hq], natural log of the sum of exp of
// the scaled scores. Validates everything (pages in [0, num_pages), 0 <= n_s <= context_lens[s] <=
// max_pages * kPageSize) and throws minillm::Error naming the field.
void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_table,
                     int64_t max_pages, const int32_t* context_lens, const int32_t* cu_seqlens_q, int64_t S,
                     int64_t num_pages, int64_t Hq, int64_t Hkv, int64_t D, bool causal, float scale, float* out,
                     float* lse = nullptr);

}  // namespace cpu

#ifdef MINILLM_WITH_CUDA
namespace cuda {

// kv_cache_write on the device (same semantics as cpu::kv_cache_write; slots are not range-checked
// on the device: the caller guarantees slot < num_pages * kPageSize). k, v: [T, Hkv, D] with row
// strides k_row / v_row elements (multiples of 8); caches [num_pages, kPageSize, Hkv, D]; dtype bf16
// or f16; all pointers 16-byte aligned; D a multiple of 8.
void kv_cache_write(const void* k, const void* v, int64_t k_row, int64_t v_row, const int32_t* slot_mapping,
                    int64_t T, int Hkv, int D, void* k_cache, void* v_cache, DType dtype, cudaStream_t stream);

struct PagedAttentionParams {
  const void* q = nullptr;        // [T, Hq, D], row stride q_row elements, heads contiguous
  const void* k_cache = nullptr;  // [num_pages, kPageSize, Hkv, D], contiguous
  const void* v_cache = nullptr;  // same
  void* out = nullptr;            // [T, Hq, D], row stride out_row elements
  const int32_t* block_table = nullptr;   // [S, max_pages] (device)
  const int32_t* context_lens = nullptr;  // [S] (device)
  const int32_t* cu_seqlens_q = nullptr;  // [S+1] (device); null: one query per sequence (T = S)
  float* lse = nullptr;                   // optional [T, Hq] fp32, natural log (-inf: no visible key)
  void* workspace = nullptr;              // split-KV partials: paged_attention_workspace_bytes(p)
  size_t workspace_bytes = 0;
  // Optional, for split-KV: zeroed device int32 counters, one per (sequence, kv head, row block) of the
  // launch (paged_attention_split_counters(p) of them; split_counter_count given), which the kernel
  // leaves zero. With them the last CTA of each group merges the group's splits: no combine kernel.
  int32_t* split_counters = nullptr;
  int64_t split_counter_count = 0;

  DType dtype = DType::bf16;  // of q, the caches and out: bf16 or f16
  int num_seqs = 0;           // S
  int num_tokens = 0;         // T, query rows (= cu_seqlens_q[S])
  int max_pages = 0;          // columns of block_table
  int num_heads = 0;          // Hq
  int num_kv_heads = 0;       // Hkv, divides Hq
  int head_dim = 0;           // D: 64 or 128
  int64_t q_row = 0, out_row = 0;  // 0 selects Hq * D

  // Host-side bounds that size the launch (not the data: lengths are read on the device, so a CUDA
  // graph captured with these bounds replays correctly for any lengths within them):
  int max_query_len = 0;    // >= every n_s; <= 8 runs the decode kernel, more the prefill kernel
  int max_context_len = 0;  // >= every context_lens[s]; 0 selects max_pages * kPageSize
  int num_splits = 0;       // split-KV CTAs per (sequence, kv head); 0: chosen from the shape and SM count

  bool causal = true;
  float softmax_scale = 0.f;  // 0 selects 1/sqrt(D)
};

// The split count that paged_attention will use for `p` (depends on the host fields only).
int paged_attention_num_splits(const PagedAttentionParams& p);
// Bytes of workspace that `p` needs (0 when it runs without split-KV). Reads the shape fields only
// (no pointers), so a memory plan can ask before any step exists.
size_t paged_attention_workspace_bytes(const PagedAttentionParams& p);
// Split counters the launch would use (0 without split-KV).
int64_t paged_attention_split_counters(const PagedAttentionParams& p);

// Validates the host fields (throws minillm::Error naming the field and value) and enqueues the
// kernels on `stream`. No host synchronisation, no allocation: capturable in a CUDA graph.
void paged_attention(const PagedAttentionParams& p, cudaStream_t stream);

}  // namespace cuda
#endif

}  // namespace minillm
