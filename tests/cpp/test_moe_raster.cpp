// The grouped GEMM's tile order (src/cuda/gemm/grouped_gemm_raster.h), checked on the host: every (m-block,
// n-block) tile is produced exactly once, and each raster group (a run of tiles with the same set of
// m-blocks) lies inside one expert and holds at most group_m m-blocks of balanced size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda/gemm/grouped_gemm_raster.h"

namespace {

using minillm::cuda::gemm::kGemmBlockM;
using minillm::cuda::gemm::raster_tile;

struct Routing {
  std::vector<int32_t> counts, row_offset, mblock_expert;
};

// The permutation's layout: expert e's rows start at a multiple of 128, m-blocks of expert e in order.
Routing make_routing(const std::vector<int32_t>& counts) {
  Routing r;
  r.counts = counts;
  int32_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    r.row_offset.push_back(row);
    const int32_t blocks = (counts[e] + kGemmBlockM - 1) / kGemmBlockM;
    for (int32_t b = 0; b < blocks; ++b) r.mblock_expert.push_back(static_cast<int32_t>(e));
    row += blocks * kGemmBlockM;
  }
  return r;
}

void check_order(const Routing& r, int n_blocks, int group_m) {
  const int mblocks = static_cast<int>(r.mblock_expert.size());
  const int tiles = mblocks * n_blocks;
  auto tile = [&](int t, int& mb, int& nb) {
    raster_tile(t, n_blocks, group_m, r.mblock_expert.data(), r.counts.data(), r.row_offset.data(), mb, nb);
  };
  auto expert = [&](int mb) { return r.mblock_expert[static_cast<size_t>(mb)]; };
  std::vector<int> seen(static_cast<size_t>(tiles), 0);
  std::vector<std::vector<int>> group_sizes(r.counts.size());  // per expert
  int t0 = 0;
  while (t0 < tiles) {
    // A group starts with its first n-column: its m-blocks first, first + 1, ... in order.
    int first = 0, nb = 0;
    tile(t0, first, nb);
    ASSERT_EQ(nb, 0) << "tile " << t0;
    ASSERT_EQ(t0, first * n_blocks) << "a group of m-block " << first << " starts at tile " << t0;
    int rows = 1;
    for (int mb = 0, n = 0; t0 + rows < tiles; ++rows) {
      tile(t0 + rows, mb, n);
      if (n != 0) break;
      ASSERT_EQ(mb, first + rows);
    }
    ASSERT_LE(rows, group_m);
    for (int t = t0; t < t0 + rows * n_blocks; ++t) {
      int mb = 0, n = 0;
      tile(t, mb, n);
      ASSERT_TRUE(mb >= first && mb < first + rows && n >= 0 && n < n_blocks) << "tile " << t;
      ASSERT_EQ(expert(mb), expert(first)) << "group at m-block " << first << " straddles two experts";
      ++seen[static_cast<size_t>(mb * n_blocks + n)];
    }
    group_sizes[static_cast<size_t>(expert(first))].push_back(rows);
    t0 += rows * n_blocks;
  }
  for (int i = 0; i < tiles; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)], 1) << "tile (m, n) " << i / n_blocks << ", " << i % n_blocks;
  for (size_t e = 0; e < r.counts.size(); ++e) {  // balanced: the fewest groups of <= group_m, sizes within 1
    const int blocks = (r.counts[e] + kGemmBlockM - 1) / kGemmBlockM;
    const auto& g = group_sizes[e];
    ASSERT_EQ(static_cast<int>(g.size()), (blocks + group_m - 1) / group_m) << "expert " << e;
    if (g.empty()) continue;
    const auto [lo, hi] = std::minmax_element(g.begin(), g.end());
    EXPECT_LE(*hi - *lo, 1) << "expert " << e;
  }
}

}  // namespace

TEST(MoERaster, EveryTileOnceGroupsInsideOneExpert) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int E = 1 + static_cast<int>(rng() % 64);
    std::vector<int32_t> counts(static_cast<size_t>(E));
    const int skew = static_cast<int>(rng() % 3);  // 0: balanced, 1: random, 2: a few heavy experts, many empty
    for (auto& c : counts) {
      const uint32_t u = rng();
      c = skew == 0 ? static_cast<int32_t>(2000 + u % 200)
          : skew == 1 ? static_cast<int32_t>(u % 5000)
                      : static_cast<int32_t>(u % 4 == 0 ? u % 20000 : 0);
    }
    const Routing r = make_routing(counts);
    if (r.mblock_expert.empty()) continue;
    const int n_blocks = 1 + static_cast<int>(rng() % 120);
    const int group_m = 1 + static_cast<int>(rng() % 32);
    check_order(r, n_blocks, group_m);
    if (HasFatalFailure()) FAIL() << "trial " << trial << ": E = " << E << ", n_blocks = " << n_blocks << ", group_m = " << group_m;
  }
}

TEST(MoERaster, HeadlineShapeGroupsOfSixteen) {
  // T=32768 top-2 over 32 experts: ~2048 rows (16-17 m-blocks) each; gate/up: 112 n-blocks.
  std::vector<int32_t> counts(32, 2048);
  counts[3] = 2049;  // 17 m-blocks: two groups of 9 and 8
  counts[7] = 0;     // an expert without tokens
  counts[8] = 4096;
  check_order(make_routing(counts), 112, 16);
  const Routing r = make_routing(counts);
  int mb = 0, nb = 0;
  // Expert 3 starts at m-block 48; its first group has 9 m-blocks: tile 48 * 112 + 9 is (48, 1).
  raster_tile(48 * 112 + 9, 112, 16, r.mblock_expert.data(), r.counts.data(), r.row_offset.data(), mb, nb);
  EXPECT_EQ(mb, 48);
  EXPECT_EQ(nb, 1);
}
