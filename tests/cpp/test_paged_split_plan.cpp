// The split-KV plan of the paged decode kernel (src/cuda/attention/paged_split_plan.h), checked on the
// host: the split counts measured on an H100 (132 SMs; docs/KV_CACHE.md, decode_split_sweep.json), and
// the bounds every plan must keep (1..64 splits, never more than pages, none when the GPU is full).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

#include "cuda/attention/paged_split_plan.h"

namespace {

using minillm::cuda::paged::kMaxSplits;
using minillm::cuda::paged::split_count;

constexpr int64_t kH100Sms = 132;

TEST(PagedSplitPlan, CountsMeasuredOnH100) {
  // Batch 1 at 32k tokens (512 pages), one row block per kv head: 4 / 8 / 16 kv heads.
  EXPECT_EQ(split_count(4, 512, kH100Sms), 32);   // 0.75 of the copy floor (29 splits: 0.70)
  EXPECT_EQ(split_count(8, 512, kH100Sms), 16);   // 0.89
  EXPECT_EQ(split_count(16, 512, kH100Sms), 8);   // 0.98 (57 splits in 7 waves: 0.92); batch 4, 32/4 heads: 0.95
  // Batch 4 at 32k, 32/8 heads (32 pairs).
  EXPECT_EQ(split_count(32, 512, kH100Sms), 4);
  // Batch 16, 32/4 heads at 8k (64 pairs): two splits, one wave (43 splits: 17% slower).
  EXPECT_EQ(split_count(64, 128, kH100Sms), 2);
}

TEST(PagedSplitPlan, ShortContextsAndFullGpuDoNotSplit) {
  for (int64_t base : {1, 4, 16, 32}) {
    for (int pages : {1, 2, 3}) EXPECT_EQ(split_count(base, pages, kH100Sms), 1) << base << " " << pages;
  }
  EXPECT_EQ(split_count(116, 512, kH100Sms), 1);  // >= 7/8 of the SMs busy without splitting
  EXPECT_EQ(split_count(4096, 512, kH100Sms), 1);
  EXPECT_EQ(split_count(0, 512, kH100Sms), 1);
}

TEST(PagedSplitPlan, StaysWithinBounds) {
  for (int64_t slots : {1, 78, 132, 144}) {
    for (int64_t base = 1; base <= 300; base += 7) {
      for (int pages = 1; pages <= 1024; pages = pages * 3 / 2 + 1) {
        const int sp = split_count(base, pages, slots);
        ASSERT_GE(sp, 1) << base << " " << pages << " " << slots;
        ASSERT_LE(sp, std::min(kMaxSplits, pages)) << base << " " << pages << " " << slots;
        if (base * 8 >= slots * 7) {
          ASSERT_EQ(sp, 1) << base << " " << pages << " " << slots;
        }
      }
    }
  }
}

}  // namespace
