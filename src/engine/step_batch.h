// The one data structure every forward pass runs on (../DESIGN.md "a step batch"): T new tokens
// of S sequences, where they go in the paged KV cache, and which rows need logits. A seed-style
// forward(ids) is S = B sequences of N tokens with no prefix and logits for all rows; a decode
// step is T = S; a prefill chunk is one sequence with many tokens; a step may mix them.
//
// The i32 arrays live in one device buffer (one upload per step); the scalars beside them are
// host values that size kernel grids and pick the attention path.
#pragma once
#include <cstdint>
#include <vector>

#include "minillm/core/tensor.h"

#include "minillm/kv_cache.h"  // kPageSize and the paged KV ops

namespace minillm {

// The paged KV cache (minillm/kv_cache.h): per layer, K and V each [num_pages, kPageSize,
// num_kv_heads, head_dim] in the backend's activation dtype. A token at position p of sequence s
// lives in page block_table[s][p / kPageSize], row p % kPageSize; slot_mapping[t] = page *
// kPageSize + row.
struct KVCache {
  int num_pages = 0;
  std::vector<Tensor> k, v;  // [num_layers] of [num_pages, kPageSize, Hkv, D]
};

struct StepBatch {
  int T = 0;  // new tokens
  int S = 0;  // sequences
  int R = 0;  // logits rows
  int max_pages = 0;    // row length of block_table
  int max_q_len = 0;    // most new tokens of one sequence
  int max_context = 0;  // largest context_lens entry
  // N > 0: the padded layout of forward(ids): every sequence has N new tokens at positions 0..N-1,
  // there is no cache, and the logits rows are all T rows in order.
  int uniform_len = 0;
  bool no_prefix = false;  // every sequence starts at position 0 (context_lens[s] == its new tokens)
  bool all_rows = false;   // logits_rows is 0..T-1 (R == T)

  // i32 tensors on the backend's device.
  Tensor token_ids;     // [T]
  Tensor positions;     // [T] position of each new token in its sequence
  Tensor cu_seqlens_q;  // [S + 1] where each sequence's new tokens start
  Tensor context_lens;  // [S] tokens in the cache after this step (prefix + new)
  Tensor block_table;   // [S, max_pages] pages of each sequence (unused entries 0)
  Tensor slot_mapping;  // [T] page * kPageSize + row where each new token's K/V goes
  Tensor logits_rows;   // [R] rows of the T tokens whose logits are computed
};

// Builds a StepBatch's arrays on the host, sequence after sequence, and lays them out in one
// contiguous i32 block (the order of the StepBatch fields) for one upload.
class StepBatchBuilder {
 public:
  // Starts an empty batch whose block_table rows hold max_pages entries (page_size: kPageSize; the
  // host-side tests use others).
  void reset(int max_pages, int page_size);
  // Appends n >= 1 new tokens of a sequence that has `start` tokens cached already; its pages
  // (at least ceil((start + n) / page_size) of them) and whether its last new token needs logits.
  // tokens may be null (ids uploaded separately: zeros are packed).
  void add(const int32_t* tokens, int n, int start, const int32_t* pages, int num_pages, bool logits);
  // Marks the batch as forward()'s padded layout (call after adding S sequences of N tokens each).
  void set_uniform(int N) { uniform_len_ = N; }

  int num_tokens() const { return static_cast<int>(ids_.size()); }
  int num_seqs() const { return static_cast<int>(ctx_.size()); }
  // i32 elements of the packed block.
  size_t packed_size() const;
  // Writes the packed block to `dst` (packed_size() elements).
  void pack(int32_t* dst) const;
  // The StepBatch whose arrays sit at `device_base` (a device copy of the packed block).
  StepBatch view(void* device_base, Device device) const;

 private:
  int max_pages_ = 0, page_size_ = kPageSize, uniform_len_ = 0, max_q_ = 0, max_ctx_ = 0;
  bool no_prefix_ = true;
  std::vector<int32_t> ids_, pos_, cu_{0}, ctx_, table_, slots_, rows_;
};

}  // namespace minillm
