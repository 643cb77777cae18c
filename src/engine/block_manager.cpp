// BlockManager (block_manager.h).
#include "engine/block_manager.h"

#include "minillm/core/check.h"

namespace minillm {

BlockManager::BlockManager(int num_pages) : refs_(static_cast<size_t>(num_pages), 0) {
  MINILLM_CHECK(num_pages >= 0, "block manager: num_pages = " << num_pages);
  for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

bool BlockManager::allocate(int n, std::vector<int32_t>& pages) {
  if (n < 0 || n > num_free()) return false;
  for (int i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    refs_[static_cast<size_t>(p)] = 1;
    pages.push_back(p);
  }
  return true;
}

void BlockManager::retain(int32_t page) {
  MINILLM_CHECK(page >= 0 && page < num_pages() && refs_[static_cast<size_t>(page)] > 0,
                "block manager: retain of page " << page << " that is not in use");
  ++refs_[static_cast<size_t>(page)];
}

void BlockManager::release(std::vector<int32_t>& pages) {
  for (int32_t p : pages) {
    int32_t& r = refs_.at(static_cast<size_t>(p));
    MINILLM_CHECK(r > 0, "block manager: release of free page " << p);
    if (--r == 0) free_.push_back(p);
  }
  pages.clear();
}

}  // namespace minillm
