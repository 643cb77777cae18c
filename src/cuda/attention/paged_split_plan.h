// How many CTAs split one (sequence, kv head, row block)'s keys in the paged decode kernel
// (paged_decode.cu, make_plan). Plain C++ with no CUDA headers, so that the CPU tests check it.
//
// A CTA streams its pages at a roughly fixed rate, so a launch takes about waves x (the pages of the
// longest split + a CTA's fixed cost: prologue and pipeline fill, about kSplitCtaCostPages pages),
// plus the combine kernel when split (a second dependent kernel, about as much again). The count
// with the shortest such path wins, the fewest splits among equals. Measured reasons
// (docs/KV_CACHE.md): without the per-CTA cost, many short splits in several waves win on paper and
// lose on the GPU; one CTA per SM beats two for one long sequence; a context of a few pages is
// faster without the second kernel.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

namespace minillm::cuda::paged {

constexpr int kMaxSplits = 64;
constexpr int kSplitCtaCostPages = 2;

// base: (sequences x kv heads x row blocks) CTAs without splitting; max_pages: the longest context in
// pages; slots: CTAs resident at once (the SM count). Returns 1..min(kMaxSplits, max_pages).
inline int split_count(int64_t base, int max_pages, int64_t slots) {
  const int cap = std::min(kMaxSplits, std::max(1, max_pages));
  if (base <= 0 || slots <= 0 || base * 8 >= slots * 7) return 1;  // the GPU is (nearly) full already
  int best_sp = 1;
  int64_t best = std::numeric_limits<int64_t>::max();
  for (int sp = 1; sp <= cap; ++sp) {
    const int64_t waves = (base * sp + slots - 1) / slots;
    const int64_t path =
        waves * ((max_pages + sp - 1) / sp + kSplitCtaCostPages) + (sp > 1 ? kSplitCtaCostPages : 0);
    if (path < best) best = path, best_sp = sp;
  }
  return best_sp;
}

}  // namespace minillm::cuda::paged
