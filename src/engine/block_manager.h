// The KV page pool: page ids [0, num_pages) with reference counts and a free list. Plain host
// bookkeeping (the pages themselves are the KVCache's memory). A page returns to the free list when
// its last reference is dropped; reference counts > 1 are for pages shared between sequences (a
// common prompt prefix).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace minillm {

class BlockManager {
 public:
  explicit BlockManager(int num_pages);
  int num_pages() const { return static_cast<int>(refs_.size()); }
  int num_free() const { return static_cast<int>(free_.size()); }
  // Appends n fresh pages (reference count 1) to `pages`; false (and nothing taken) when fewer
  // than n are free.
  bool allocate(int n, std::vector<int32_t>& pages);
  // Adds a reference to a page in use.
  void retain(int32_t page);
  // Drops one reference to each page and clears `pages`.
  void release(std::vector<int32_t>& pages);
  int ref_count(int32_t page) const { return refs_.at(static_cast<size_t>(page)); }

 private:
  std::vector<int32_t> refs_;  // [num_pages]
  std::vector<int32_t> free_;  // stack of free page ids (lowest id on top)
};

}  // namespace minillm
