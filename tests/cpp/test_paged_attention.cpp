// CPU paged KV cache ops against a dense reference: the cache is filled through kv_cache_write with
// shuffled (non-contiguous) pages, then paged_attention is compared with cpu::attention (double math)
// on the gathered, contiguous K/V of each sequence. Unused cache rows hold NaN, so a read outside a
// sequence's context shows up as NaN in the output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/ops.h"
#include "minillm/core/check.h"
#include "minillm/kv_cache.h"

namespace {

using minillm::kPageSize;

struct Batch {
  int64_t Hq, Hkv, D, num_pages, max_pages;
  std::vector<int32_t> ctx, nq, cu, block_table;
  std::vector<float> q, k_cache, v_cache;
  std::vector<std::vector<float>> k_seq, v_seq;  // per sequence [ctx, Hkv, D], contiguous
};

// Sequences with context lengths `ctx` and `nq` new query tokens each; pages assigned in a shuffled
// order; the whole context of each sequence is written through kv_cache_write (in two calls: the
// prefix and the new tokens, as an engine would).
Batch make_batch(std::vector<int32_t> ctx, std::vector<int32_t> nq, int64_t Hq, int64_t Hkv, int64_t D,
                 uint32_t seed, float amp = 1.f) {
  Batch b;
  b.Hq = Hq, b.Hkv = Hkv, b.D = D, b.ctx = ctx, b.nq = nq;
  const int64_t S = static_cast<int64_t>(ctx.size());
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-amp, amp);
  b.max_pages = 1;
  int64_t total_pages = 0;
  for (int32_t c : ctx) {
    b.max_pages = std::max<int64_t>(b.max_pages, (c + kPageSize - 1) / kPageSize);
    total_pages += (c + kPageSize - 1) / kPageSize;
  }
  b.num_pages = total_pages + 3;  // a few pages nobody owns
  std::vector<int32_t> perm(static_cast<size_t>(b.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), gen);
  b.block_table.assign(static_cast<size_t>(S * b.max_pages), -1);
  const size_t cache_elems = static_cast<size_t>(b.num_pages * kPageSize * Hkv * D);
  b.k_cache.assign(cache_elems, std::numeric_limits<float>::quiet_NaN());
  b.v_cache.assign(cache_elems, std::numeric_limits<float>::quiet_NaN());
  size_t next = 0;
  b.cu.assign(1, 0);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t c = ctx[static_cast<size_t>(s)];
    for (int64_t p = 0; p < (c + kPageSize - 1) / kPageSize; ++p) b.block_table[s * b.max_pages + p] = perm[next++];
    std::vector<float> k(static_cast<size_t>(c * Hkv * D)), v(k.size());
    for (auto& x : k) x = dist(gen);
    for (auto& x : v) x = dist(gen);
    std::vector<int32_t> slots(static_cast<size_t>(c));
    for (int64_t p = 0; p < c; ++p)
      slots[static_cast<size_t>(p)] = b.block_table[s * b.max_pages + p / kPageSize] * kPageSize + p % kPageSize;
    const int64_t split = c / 2;  // prefix, then the rest
    minillm::cpu::kv_cache_write(k.data(), v.data(), Hkv * D, Hkv * D, slots.data(), split, Hkv, D,
                                 b.k_cache.data(), b.v_cache.data(), b.num_pages * kPageSize);
    minillm::cpu::kv_cache_write(k.data() + split * Hkv * D, v.data() + split * Hkv * D, Hkv * D, Hkv * D,
                                 slots.data() + split, c - split, Hkv, D, b.k_cache.data(), b.v_cache.data(),
                                 b.num_pages * kPageSize);
    b.k_seq.push_back(std::move(k));
    b.v_seq.push_back(std::move(v));
    b.cu.push_back(b.cu.back() + nq[static_cast<size_t>(s)]);
  }
  b.q.resize(static_cast<size_t>(b.cu.back() * Hq * D));
  for (auto& x : b.q) x = dist(gen);
  return b;
}

// Dense reference per sequence; returns max |paged - dense| over out and lse.
double max_error(const Batch& b, bool causal) {
  const int64_t S = static_cast<int64_t>(b.ctx.size()), T = b.cu.back();
  std::vector<float> out(static_cast<size_t>(T * b.Hq * b.D), -7.f), lse(static_cast<size_t>(T * b.Hq));
  minillm::cpu::paged_attention(b.q.data(), b.k_cache.data(), b.v_cache.data(), b.block_table.data(), b.max_pages,
                                b.ctx.data(), b.cu.data(), S, b.num_pages, b.Hq, b.Hkv, b.D, causal, 0.f,
                                out.data(), lse.data());
  double err = 0.0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t n = b.nq[static_cast<size_t>(s)], c = b.ctx[static_cast<size_t>(s)];
    if (n == 0) continue;
    std::vector<float> o(static_cast<size_t>(n * b.Hq * b.D)), l(static_cast<size_t>(b.Hq * n));
    const float* qs = b.q.data() + b.cu[static_cast<size_t>(s)] * b.Hq * b.D;
    minillm::cpu::attention(qs, b.k_seq[static_cast<size_t>(s)].data(), b.v_seq[static_cast<size_t>(s)].data(),
                            o.data(), 1, n, c, b.Hq, b.Hkv, b.D, b.Hq * b.D, b.Hkv * b.D, b.Hq * b.D, causal,
                            1.f / std::sqrt(static_cast<float>(b.D)), l.data());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < b.Hq; ++h) {
        const int64_t t = b.cu[static_cast<size_t>(s)] + i;
        for (int64_t d = 0; d < b.D; ++d) {
          const float got = out[static_cast<size_t>((t * b.Hq + h) * b.D + d)];
          if (!std::isfinite(got)) return std::numeric_limits<double>::infinity();
          err = std::max(err, std::abs(double{got} - o[static_cast<size_t>((i * b.Hq + h) * b.D + d)]));
        }
        const float lg = lse[static_cast<size_t>(t * b.Hq + h)];
        if (!std::isfinite(lg)) return std::numeric_limits<double>::infinity();
        err = std::max(err, std::abs(double{lg} - l[static_cast<size_t>(h * n + i)]));
      }
  }
  return err;
}

TEST(PagedAttentionCpu, DecodeMixedLengthsGqa) {
  for (int64_t group : {1, 4, 8, 16}) {
    const Batch b = make_batch({1, 63, 64, 65, 200, 7}, {1, 1, 1, 1, 1, 1}, 2 * group, 2, 64, 1 + group);
    EXPECT_LT(max_error(b, true), 1e-5) << "group " << group;
  }
}

TEST(PagedAttentionCpu, ChunkedPrefillAndEmptySequences) {
  // New chunks after cached prefixes, a whole prompt (n = context), sequences with no new tokens.
  const Batch b = make_batch({130, 5, 64, 1, 300, 40}, {70, 5, 0, 1, 8, 0}, 8, 2, 32, 7);
  EXPECT_LT(max_error(b, true), 1e-5);
  EXPECT_LT(max_error(b, false), 1e-5);
}

TEST(PagedAttentionCpu, LargeScoresStayFinite) {
  const Batch b = make_batch({100, 3}, {4, 2}, 4, 1, 64, 11, 30.f);  // |scores| up to ~ 30*30*64/8
  EXPECT_LT(max_error(b, true), 1e-4);
}

TEST(PagedAttentionCpu, NullCuSeqlensIsOneQueryPerSequence) {
  const Batch b = make_batch({10, 70}, {1, 1}, 4, 2, 16, 3);
  std::vector<float> a(b.q.size()), c(b.q.size());
  minillm::cpu::paged_attention(b.q.data(), b.k_cache.data(), b.v_cache.data(), b.block_table.data(), b.max_pages,
                                b.ctx.data(), nullptr, 2, b.num_pages, 4, 2, 16, true, 0.f, a.data());
  minillm::cpu::paged_attention(b.q.data(), b.k_cache.data(), b.v_cache.data(), b.block_table.data(), b.max_pages,
                                b.ctx.data(), b.cu.data(), 2, b.num_pages, 4, 2, 16, true, 0.f, c.data());
  EXPECT_EQ(a, c);
}

TEST(PagedAttentionCpu, Validation) {
  Batch b = make_batch({10, 70}, {1, 2}, 4, 2, 16, 3);
  std::vector<float> out(b.q.size());
  auto run = [&] {
    minillm::cpu::paged_attention(b.q.data(), b.k_cache.data(), b.v_cache.data(), b.block_table.data(),
                                  b.max_pages, b.ctx.data(), b.cu.data(), 2, b.num_pages, 4, 2, 16, true, 0.f,
                                  out.data());
  };
  auto expect_error = [&](const char* what) {
    try {
      run();
      ADD_FAILURE() << "no error for " << what;
    } catch (const minillm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  b.block_table[1 * b.max_pages + 1] = static_cast<int32_t>(b.num_pages);
  expect_error("block_table[1, 1]");
  b.block_table[1 * b.max_pages + 1] = 0;
  b.ctx[0] = 0;  // fewer cached tokens than query tokens
  expect_error("context_lens[0]");
  b.ctx[0] = 10;
  b.ctx[1] = static_cast<int32_t>(b.max_pages * kPageSize + 1);
  expect_error("context_lens[1]");
  b.ctx[1] = 70;
  b.cu[1] = 3, b.cu[2] = 2;
  expect_error("cu_seqlens_q");
  std::vector<int32_t> slots = {0, static_cast<int32_t>(b.num_pages * kPageSize)};
  try {
    minillm::cpu::kv_cache_write(b.q.data(), b.q.data(), 32, 32, slots.data(), 2, 2, 16, b.k_cache.data(),
                                 b.v_cache.data(), b.num_pages * kPageSize);
    ADD_FAILURE() << "no error for an out-of-range slot";
  } catch (const minillm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot_mapping[1]"), std::string::npos) << e.what();
  }
}

TEST(PagedAttentionCpu, NegativeSlotSkipsToken) {
  std::vector<float> k = {1, 2, 3, 4}, v = {5, 6, 7, 8}, kc(kPageSize * 2, 0.f), vc(kPageSize * 2, 0.f);
  std::vector<int32_t> slots = {-1, 3};
  minillm::cpu::kv_cache_write(k.data(), v.data(), 2, 2, slots.data(), 2, 1, 2, kc.data(), vc.data(), kPageSize);
  EXPECT_EQ(kc[6], 3.f);
  EXPECT_EQ(kc[7], 4.f);
  EXPECT_EQ(vc[7], 8.f);
  EXPECT_EQ(std::count(kc.begin(), kc.end(), 0.f), kPageSize * 2 - 2);
}

}  // namespace
