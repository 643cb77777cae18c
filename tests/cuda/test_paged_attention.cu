// GPU tests of the paged KV cache ops (minillm::cuda::kv_cache_write, paged_attention) against the
// CPU reference minillm::cpu::paged_attention (double math on fp32 copies of the rounded inputs:
// the gathered K/V of each sequence, read through the same block table).
//
// Every cache row that no sequence owns, and every row past a sequence's context in its last page,
// holds NaN (0xFFFF in bf16 and fp16); outputs are poisoned with NaN before the call; every output
// element must come back finite, so a read outside the context or an unwritten element fails.
// Pages are assigned in a shuffled order (non-contiguous sequences).
//
// Tolerances (relative L2 error ||o - ref|| / ||ref||), as tests/cuda/test_attention.cu argues:
// fp16 1e-3, bf16 1e-2 (P rounded to 16 bits before P V, O rounded at the end); lse |err| <= 1e-3
// * max(1, |ref|). tests/python/test_paged_torch.py applies "<= 2x torch's own bf16 error".
// Names with "Small" run under compute-sanitizer (scripts/gpu_check.sh SAN_FILTER and RACE_FILTER).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"
#include "minillm/core/dtype.h"
#include "minillm/core/tensor.h"
#include "minillm/kv_cache.h"

namespace {

using minillm::DType;
using minillm::kPageSize;
using minillm::cuda::PagedAttentionParams;

constexpr uint16_t kPoison = 0xFFFF;  // NaN as bf16 and as fp16

#define REQUIRE_GPU() \
  if (!minillm::cuda_available()) GTEST_SKIP() << "no CUDA device"

uint16_t to_bits(DType t, float x) { return t == DType::bf16 ? minillm::f32_to_bf16(x) : minillm::f32_to_f16(x); }
float from_bits(DType t, uint16_t h) { return t == DType::bf16 ? minillm::bf16_to_f32(h) : minillm::f16_to_f32(h); }

template <typename E>
struct Dev {
  std::vector<E> host;
  minillm::Buffer buf;
  Dev(size_t n, E fill) : host(n, fill), buf(std::max<size_t>(n, 16) * sizeof(E), minillm::Device::cuda) {}
  void upload() {
    minillm::copy_bytes(buf.data(), minillm::Device::cuda, host.data(), minillm::Device::cpu, host.size() * sizeof(E));
  }
  void download() {
    minillm::copy_bytes(host.data(), minillm::Device::cpu, buf.data(), minillm::Device::cuda, host.size() * sizeof(E));
  }
  E* ptr() const { return static_cast<E*>(buf.data()); }
};

struct Case {
  DType dtype = DType::bf16;
  std::vector<int32_t> ctx, nq;  // per sequence: tokens in the cache, new query tokens
  int Hq = 8, Hkv = 2, D = 128;
  bool causal = true;
  float amp = 1.f;     // q and k uniform in [-amp, amp]; v in [-1, 1]
  int num_splits = 0;  // 0: planned
  bool lse = true;     // ask for the lse (prefill steps without it run the Hopper kernel on sm90)
  bool split_counters = false;  // the last CTA of each group merges the splits (no combine kernel)
  uint32_t seed = 1;
};

std::string describe(const Case& c) {
  std::string s = std::string(minillm::dtype_name(c.dtype)) + " H" + std::to_string(c.Hq) + "/" +
                  std::to_string(c.Hkv) + " D" + std::to_string(c.D) + (c.causal ? " causal" : " full") + " ctx/nq";
  for (size_t i = 0; i < c.ctx.size() && i < 8; ++i) {
    s += ' ';
    s += std::to_string(c.ctx[i]);
    s += '/';
    s += std::to_string(c.nq[i]);
  }
  if (c.ctx.size() > 8) s.append(" ... (").append(std::to_string(c.ctx.size())).append(" seqs)");
  if (c.num_splits) s.append(" splits ").append(std::to_string(c.num_splits));
  if (c.amp != 1.f) s.append(" amp ").append(std::to_string(c.amp));
  if (!c.lse) s.append(" no lse");
  if (c.split_counters) s.append(" merged in-kernel");
  return s;
}

// A batch on the host (fp32 images of the rounded 16-bit values) and on the device.
struct Batch {
  Case c;
  int S = 0, T = 0, max_pages = 1, num_pages = 0, max_q = 0, max_ctx = 0;
  std::vector<int32_t> cu, block_table;
  std::vector<float> q, k_cache, v_cache;  // fp32 images; NaN in unused rows
  Dev<uint16_t> dq{1, 0}, dk{1, 0}, dv{1, 0};
  Dev<int32_t> dbt{1, 0}, dctx{1, 0}, dcu{1, 0};

  explicit Batch(const Case& cs) : c(cs) {
    S = static_cast<int>(c.ctx.size());
    std::mt19937 gen(c.seed);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    int total_pages = 0;
    cu.assign(1, 0);
    for (int s = 0; s < S; ++s) {
      const int pages = (c.ctx[s] + kPageSize - 1) / kPageSize;
      max_pages = std::max(max_pages, pages);
      total_pages += pages;
      cu.push_back(cu.back() + c.nq[s]);
      max_q = std::max(max_q, c.nq[s]);
      max_ctx = std::max(max_ctx, c.ctx[s]);
    }
    T = cu.back();
    num_pages = total_pages + 2;
    std::vector<int32_t> perm(static_cast<size_t>(num_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    block_table.assign(static_cast<size_t>(S) * max_pages, -1);
    const size_t row = static_cast<size_t>(c.Hkv) * c.D;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    k_cache.assign(static_cast<size_t>(num_pages) * kPageSize * row, nan);
    v_cache.assign(k_cache.size(), nan);
    size_t next = 0;
    for (int s = 0; s < S; ++s) {
      for (int pg = 0; pg < (c.ctx[s] + kPageSize - 1) / kPageSize; ++pg)
        block_table[static_cast<size_t>(s) * max_pages + pg] = perm[next++];
      for (int p = 0; p < c.ctx[s]; ++p) {
        const size_t slot = static_cast<size_t>(block_table[static_cast<size_t>(s) * max_pages + p / kPageSize]) *
                                kPageSize + p % kPageSize;
        for (size_t i = 0; i < row; ++i) {
          k_cache[slot * row + i] = minillm::round_to(c.dtype, c.amp * dist(gen));
          v_cache[slot * row + i] = minillm::round_to(c.dtype, dist(gen));
        }
      }
    }
    q.resize(static_cast<size_t>(T) * c.Hq * c.D);
    for (auto& x : q) x = minillm::round_to(c.dtype, c.amp * dist(gen));
    dq = Dev<uint16_t>(q.size(), 0);
    dk = Dev<uint16_t>(k_cache.size(), 0);
    dv = Dev<uint16_t>(v_cache.size(), 0);
    for (size_t i = 0; i < q.size(); ++i) dq.host[i] = to_bits(c.dtype, q[i]);
    for (size_t i = 0; i < k_cache.size(); ++i) {
      dk.host[i] = std::isnan(k_cache[i]) ? kPoison : to_bits(c.dtype, k_cache[i]);
      dv.host[i] = std::isnan(v_cache[i]) ? kPoison : to_bits(c.dtype, v_cache[i]);
    }
    dq.upload(), dk.upload(), dv.upload();
    dbt = Dev<int32_t>(block_table.size(), 0);
    dbt.host = block_table;
    dctx = Dev<int32_t>(c.ctx.size(), 0);
    dctx.host = c.ctx;
    dcu = Dev<int32_t>(cu.size(), 0);
    dcu.host = cu;
    dbt.upload(), dctx.upload(), dcu.upload();
  }

  PagedAttentionParams params(void* out, float* lse) const {
    PagedAttentionParams p;
    p.q = dq.ptr(), p.k_cache = dk.ptr(), p.v_cache = dv.ptr(), p.out = out, p.lse = lse;
    p.block_table = dbt.ptr(), p.context_lens = dctx.ptr(), p.cu_seqlens_q = dcu.ptr();
    p.dtype = c.dtype;
    p.num_seqs = S, p.num_tokens = T, p.max_pages = max_pages;
    p.num_heads = c.Hq, p.num_kv_heads = c.Hkv, p.head_dim = c.D;
    p.max_query_len = max_q, p.max_context_len = max_ctx;
    p.num_splits = c.num_splits;
    p.causal = c.causal;
    return p;
  }

  void reference(std::vector<float>& out, std::vector<float>& lse) const {
    out.assign(q.size(), 0.f);
    lse.assign(static_cast<size_t>(T) * c.Hq, 0.f);
    minillm::cpu::paged_attention(q.data(), k_cache.data(), v_cache.data(), block_table.data(), max_pages,
                                  c.ctx.data(), cu.data(), S, num_pages, c.Hq, c.Hkv, c.D, c.causal, 0.f, out.data(),
                                  lse.data());
  }
};

struct Result {
  std::vector<uint16_t> out;
  std::vector<float> lse;
};

Result run_gpu(const Batch& b, cudaStream_t stream = nullptr) {
  Dev<uint16_t> out(b.q.size(), kPoison);
  Dev<float> lse(static_cast<size_t>(b.T) * b.c.Hq, std::numeric_limits<float>::quiet_NaN());
  out.upload(), lse.upload();
  PagedAttentionParams p = b.params(out.ptr(), b.c.lse ? lse.ptr() : nullptr);
  const size_t ws_bytes = minillm::cuda::paged_attention_workspace_bytes(p);
  minillm::Buffer ws(std::max<size_t>(ws_bytes, 16), minillm::Device::cuda);
  p.workspace = ws.data(), p.workspace_bytes = ws_bytes;
  const int64_t counters = minillm::cuda::paged_attention_split_counters(p);
  Dev<int32_t> cnt(static_cast<size_t>(std::max<int64_t>(counters, 1)), 0);
  cnt.upload();
  if (b.c.split_counters) p.split_counters = cnt.ptr(), p.split_counter_count = counters;
  minillm::cuda::paged_attention(p, stream);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  out.download(), lse.download(), cnt.download();
  // Each group's last CTA rearms its counter: the next launch (or graph replay) starts from zero.
  for (size_t i = 0; i < cnt.host.size(); ++i) EXPECT_EQ(cnt.host[i], 0) << describe(b.c) << ": counter " << i;
  return {out.host, lse.host};
}

double tolerance(DType t) { return t == DType::f16 ? 1e-3 : 1e-2; }

void check(const Case& c) {
  const Batch b(c);
  std::vector<float> ref, ref_lse;
  b.reference(ref, ref_lse);
  const Result r = run_gpu(b);
  int64_t bad = 0;
  double err2 = 0, ref2 = 0, lse_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float x = from_bits(c.dtype, r.out[i]);
    if (!std::isfinite(x)) {
      ++bad;
      continue;
    }
    err2 += (double(x) - ref[i]) * (double(x) - ref[i]);
    ref2 += double(ref[i]) * ref[i];
  }
  for (size_t i = 0; c.lse && i < ref_lse.size(); ++i) {
    if (!std::isfinite(r.lse[i])) {
      ++bad;
      continue;
    }
    lse_err = std::max(lse_err, std::abs(double(r.lse[i]) - ref_lse[i]) / std::max(1.0, std::abs(double(ref_lse[i]))));
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  EXPECT_EQ(bad, 0) << describe(c) << ": non-finite or unwritten outputs";
  EXPECT_LE(rel, tolerance(c.dtype)) << describe(c);
  EXPECT_LE(lse_err, 1e-3) << describe(c);
}

std::vector<int32_t> ones(size_t n) { return std::vector<int32_t>(n, 1); }

TEST(PagedAttention, SmallDecodeGqaAndHeadDims) {
  REQUIRE_GPU();
  for (DType t : {DType::bf16, DType::f16})
    for (int D : {64, 128})
      for (int group : {1, 4, 8, 16}) {
        Case c;
        c.dtype = t, c.D = D, c.Hkv = 2, c.Hq = 2 * group;
        c.ctx = {1, 63, 64, 65, 300, 129, 7};
        c.nq = ones(c.ctx.size());
        c.seed = 10 + group + D;
        check(c);
      }
}

TEST(PagedAttention, SmallMultiQueryDecode) {  // 1..8 new tokens per sequence, some with none
  REQUIRE_GPU();
  for (int group : {1, 4, 8, 16})
    for (int D : {64, 128}) {
      Case c;
      c.D = D, c.Hkv = 2, c.Hq = 2 * group;
      c.ctx = {8, 70, 200, 5, 64, 33};
      c.nq = {8, 3, 0, 5, 1, 2};
      c.seed = 20 + group;
      check(c);
      c.causal = false;
      check(c);
    }
}

TEST(PagedAttention, SmallPrefillChunks) {  // prefix pages + a new chunk, causal within the chunk
  REQUIRE_GPU();
  for (int group : {1, 4, 8})
    for (DType t : {DType::bf16, DType::f16}) {
      Case c;
      c.dtype = t, c.D = group == 4 ? 64 : 128, c.Hkv = 2, c.Hq = 2 * group;
      c.ctx = {300, 77, 64, 10, 500};
      c.nq = {100, 77, 0, 9, 30};  // a whole prompt, a chunk after a prefix, none, ...
      c.seed = 30 + group;
      check(c);
    }
}

// Prefill steps without the lse (the engine's): on Hopper the TMA + wgmma kernel reads the pages
// (whole key blocks by TMA, the block holding the context's end by plain loads with the rows past it
// zero-filled: the cache's unused rows hold NaN here). Contexts that end inside a page, on a page
// boundary and on a key-block boundary, sequences without new tokens, both masks, both head dims.
TEST(PagedAttention, SmallHopperPrefill) {
  REQUIRE_GPU();
  for (int group : {1, 4, 8})
    for (int D : {64, 128})
      for (bool causal : {true, false}) {
        Case c;
        c.dtype = group == 4 ? DType::f16 : DType::bf16, c.D = D, c.Hkv = 2, c.Hq = 2 * group, c.causal = causal;
        c.ctx = {300, 77, 64, 700, 256, 1000, 128};
        c.nq = {100, 77, 0, 128, 256, 200, 1};
        c.lse = false;
        c.seed = 60 + group + D;
        check(c);
      }
}

TEST(PagedAttention, SmallForcedSplits) {  // split-KV + combine, including empty splits
  REQUIRE_GPU();
  for (int D : {64, 128})
    for (int splits : {1, 2, 3, 7, 9, 64}) {
      Case c;
      c.Hq = 8, c.Hkv = 1, c.D = D;
      c.ctx = {1, 200, 1000, 64};
      c.nq = {1, 2, 1, 0};
      c.num_splits = splits;
      c.seed = 40 + splits + D;
      check(c);
    }
}

// The splits merged by each group's last CTA (split counters) instead of the combine kernel: against
// the reference, and bit for bit against the combine kernel up to 8 splits (the same weights, summed in
// the same order; more splits take the kernel that sums in four groups).
TEST(PagedAttention, SmallForcedSplitsMergedInKernel) {
  REQUIRE_GPU();
  for (int D : {64, 128})
    for (int Hkv : {1, 4})
      for (int splits : {2, 3, 7, 8, 9, 64}) {
        Case c;
        c.Hq = 8, c.Hkv = Hkv, c.D = D;
        c.ctx = {1, 200, 1000, 64, 5000};
        c.nq = {1, 2, 1, 0, 8};
        c.num_splits = splits;
        c.seed = 90 + splits + D + Hkv;
        c.split_counters = true;
        check(c);
        if (splits <= 8) {
          Case k = c;
          k.split_counters = false;
          const Batch b(c);
          EXPECT_EQ(run_gpu(b).out, run_gpu(Batch(k)).out) << describe(c);
        }
      }
}

TEST(PagedAttention, SmallLargeScores) {  // |scores| in the thousands: no overflow, no NaN
  REQUIRE_GPU();
  for (int nq : {1, 40}) {
    Case c;
    c.Hq = 8, c.Hkv = 2, c.D = 64, c.amp = 20.f;
    c.ctx = {150, 90};
    c.nq = {nq, 1};
    c.num_splits = 3;
    check(c);
  }
}

TEST(PagedAttention, MixedBatch) {
  REQUIRE_GPU();
  std::mt19937 gen(5);
  for (int group : {1, 4, 8, 16}) {
    Case c;
    c.Hkv = 4, c.Hq = 4 * group, c.D = group == 16 ? 64 : 128;
    for (int s = 0; s < 24; ++s) {
      c.ctx.push_back(1 + static_cast<int>(gen() % 3000));
      c.nq.push_back(s % 5 == 0 ? 0 : 1);
    }
    c.seed = 50 + group;
    check(c);
  }
}

TEST(PagedAttention, LongContexts) {  // 16k and 32k: many splits for one sequence
  REQUIRE_GPU();
  for (int len : {16384, 32768})
    for (int group : {4, 8}) {
      Case c;
      c.Hkv = 2, c.Hq = 2 * group, c.D = 128;
      c.ctx = {len, 1000};
      c.nq = {1, 1};
      c.seed = 60 + group;
      check(c);
    }
  Case p;  // chunked prefill after a long prefix
  p.Hkv = 2, p.Hq = 16, p.D = 128;
  p.ctx = {32768};
  p.nq = {512};
  check(p);
}

TEST(PagedAttention, SmallKvCacheWrite) {
  REQUIRE_GPU();
  for (DType t : {DType::bf16, DType::f16}) {
    const int T = 70, Hkv = 2, D = 64, num_pages = 4, row = Hkv * D, kv_row = row + 8;  // strided k, v rows
    std::mt19937 gen(3);
    std::vector<int32_t> slots(T);
    std::vector<int32_t> all(num_pages * kPageSize);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), gen);
    for (int i = 0; i < T; ++i) slots[i] = i % 9 == 4 ? -1 : all[i];  // some padding tokens
    Dev<uint16_t> k(static_cast<size_t>(T) * kv_row, 0), v(k.host.size(), 0);
    for (auto& x : k.host) x = to_bits(t, std::uniform_real_distribution<float>(-1, 1)(gen));
    for (auto& x : v.host) x = to_bits(t, std::uniform_real_distribution<float>(-1, 1)(gen));
    Dev<uint16_t> kc(static_cast<size_t>(num_pages) * kPageSize * row, kPoison), vc(kc.host.size(), kPoison);
    Dev<int32_t> ds(slots.size(), 0);
    ds.host = slots;
    k.upload(), v.upload(), kc.upload(), vc.upload(), ds.upload();
    minillm::cuda::kv_cache_write(k.ptr(), v.ptr(), kv_row, kv_row, ds.ptr(), T, Hkv, D, kc.ptr(), vc.ptr(), t, nullptr);
    MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
    kc.download(), vc.download();
    std::vector<uint16_t> ek(kc.host.size(), kPoison), ev(ek.size(), kPoison);
    for (int i = 0; i < T; ++i)
      if (slots[i] >= 0)
        for (int j = 0; j < row; ++j) {
          ek[static_cast<size_t>(slots[i]) * row + j] = k.host[static_cast<size_t>(i) * kv_row + j];
          ev[static_cast<size_t>(slots[i]) * row + j] = v.host[static_cast<size_t>(i) * kv_row + j];
        }
    EXPECT_EQ(kc.host, ek);
    EXPECT_EQ(vc.host, ev);
  }
}

// A graph captured once replays with new context lengths, block tables and query counts (within the
// captured bounds) and gives bit-for-bit what a direct launch with the same bounds gives.
TEST(PagedAttention, SmallGraphReplayWithNewLengths) {
  REQUIRE_GPU();
  Case c1;
  c1.Hq = 16, c1.Hkv = 2, c1.D = 128;
  c1.ctx = {40, 700, 3000, 1};
  c1.nq = {1, 2, 1, 1};
  Case c2 = c1;  // same shapes of the arrays, other lengths and pages
  c2.ctx = {2900, 3, 128, 65};
  c2.nq = {2, 1, 1, 0};
  c2.seed = 77;
  Batch b1(c1), b2(c2), b1_again(c1);  // b1's buffers get b2's data; b1_again restores them
  // Common bounds: both batches fit into the first batch's buffers.
  const int max_pages = std::max(b1.max_pages, b2.max_pages);
  ASSERT_EQ(b1.max_pages, max_pages);
  ASSERT_GE(b1.num_pages, b2.num_pages);
  Dev<uint16_t> out(static_cast<size_t>(b1.T) * c1.Hq * c1.D, kPoison);
  out.upload();
  PagedAttentionParams p = b1.params(out.ptr(), nullptr);
  p.max_context_len = max_pages * kPageSize;
  p.max_query_len = 2;
  const size_t ws_bytes = minillm::cuda::paged_attention_workspace_bytes(p);
  minillm::Buffer ws(std::max<size_t>(ws_bytes, 16), minillm::Device::cuda);
  p.workspace = ws.data(), p.workspace_bytes = ws_bytes;
  cudaStream_t stream;
  MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MINILLM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  minillm::cuda::paged_attention(p, stream);
  MINILLM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MINILLM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));

  // Replay on batch 2's data copied into batch 1's buffers (b2's block table padded to max_pages).
  auto load = [&](const Batch& b) {
    std::vector<int32_t> bt(static_cast<size_t>(b1.S) * max_pages, -1);
    for (int s = 0; s < b.S; ++s)
      for (int j = 0; j < b.max_pages; ++j) bt[static_cast<size_t>(s) * max_pages + j] = b.block_table[s * b.max_pages + j];
    b1.dbt.host = bt, b1.dctx.host = b.c.ctx, b1.dcu.host = b.cu;
    std::copy(b.dq.host.begin(), b.dq.host.end(), b1.dq.host.begin());
    std::fill(b1.dk.host.begin(), b1.dk.host.end(), kPoison);
    std::fill(b1.dv.host.begin(), b1.dv.host.end(), kPoison);
    std::copy(b.dk.host.begin(), b.dk.host.end(), b1.dk.host.begin());
    std::copy(b.dv.host.begin(), b.dv.host.end(), b1.dv.host.begin());
    b1.dbt.upload(), b1.dctx.upload(), b1.dcu.upload(), b1.dq.upload(), b1.dk.upload(), b1.dv.upload();
  };
  for (const Batch* b : {&b2, &b1_again}) {
    load(*b);
    const int T = b->T;
    std::fill(out.host.begin(), out.host.end(), kPoison);
    out.upload();
    MINILLM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    out.download();
    const std::vector<uint16_t> replayed(out.host.begin(), out.host.begin() + static_cast<size_t>(T) * c1.Hq * c1.D);
    PagedAttentionParams d = p;
    d.num_tokens = T;
    std::fill(out.host.begin(), out.host.end(), kPoison);
    out.upload();
    minillm::cuda::paged_attention(d, stream);
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    out.download();
    const std::vector<uint16_t> direct(out.host.begin(), out.host.begin() + static_cast<size_t>(T) * c1.Hq * c1.D);
    EXPECT_EQ(replayed, direct) << "graph replay differs from a direct launch";
    // And both match the reference.
    std::vector<float> ref, ref_lse;
    b->reference(ref, ref_lse);
    double err2 = 0, ref2 = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double x = from_bits(c1.dtype, direct[i]);
      err2 += (x - ref[i]) * (x - ref[i]);
      ref2 += double(ref[i]) * ref[i];
    }
    EXPECT_LE(std::sqrt(err2 / ref2), 1e-2);
  }
  MINILLM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MINILLM_CUDA_CHECK(cudaGraphDestroy(graph));
  MINILLM_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(PagedAttention, SmallValidation) {
  REQUIRE_GPU();
  Case c;
  c.ctx = {10};
  c.nq = {1};
  const Batch b(c);
  Dev<uint16_t> out(b.q.size(), kPoison);
  auto expect_error = [&](PagedAttentionParams p, const char* what) {
    try {
      minillm::cuda::paged_attention(p, nullptr);
      ADD_FAILURE() << "no error for " << what;
    } catch (const minillm::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  PagedAttentionParams p = b.params(out.ptr(), nullptr);
  p.head_dim = 96;
  expect_error(p, "head_dim");
  p = b.params(out.ptr(), nullptr);
  p.num_kv_heads = 3;
  expect_error(p, "num_kv_heads");
  p = b.params(out.ptr(), nullptr);
  p.dtype = DType::f32;
  expect_error(p, "dtype");
  p = b.params(out.ptr(), nullptr);
  p.max_context_len = p.max_pages * kPageSize + 1;
  expect_error(p, "max_context_len");
  p = b.params(out.ptr(), nullptr);
  p.num_splits = 4;  // needs a workspace
  expect_error(p, "workspace");
}

}  // namespace

namespace {

// Not a correctness test: bandwidth of the decode kernel on a few shapes next to a device-to-device
// copy (run with --gtest_also_run_disabled_tests --gtest_filter='*PagedAttentionPerf*'). The real
// benchmark is bench/bench_decode_attention.py.
TEST(PagedAttentionPerf, DISABLED_DecodeBandwidth) {
  REQUIRE_GPU();
  cudaEvent_t e0, e1;
  MINILLM_CUDA_CHECK(cudaEventCreate(&e0));
  MINILLM_CUDA_CHECK(cudaEventCreate(&e1));
  const size_t copy_bytes = size_t{1} << 30;
  minillm::Buffer src(copy_bytes, minillm::Device::cuda), dst(copy_bytes, minillm::Device::cuda);
  MINILLM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, nullptr));
  MINILLM_CUDA_CHECK(cudaEventRecord(e0));
  for (int i = 0; i < 5; ++i)
    MINILLM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, nullptr));
  MINILLM_CUDA_CHECK(cudaEventRecord(e1));
  MINILLM_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  MINILLM_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  const double copy_gbs = 5.0 * copy_bytes / (ms * 1e-3) / 1e9;  // bytes read per second
  std::printf("copy: %.0f GB/s read (%.0f GB/s read + written)\n", copy_gbs, 2 * copy_gbs);
  struct Shape { int B, ctx, Hq, Hkv; };
  for (const Shape sh : {Shape{1, 32768, 32, 8}, Shape{1, 32768, 16, 16}, Shape{32, 4096, 32, 8}, Shape{64, 8192, 32, 8},
                         Shape{128, 2048, 32, 4}, Shape{128, 1024, 16, 16}, Shape{256, 512, 32, 8}}) {
    const int pages = sh.ctx / kPageSize, num_pages = sh.B * pages;
    const size_t cache = size_t(num_pages) * kPageSize * sh.Hkv * 128;
    minillm::Buffer kc(cache * 2, minillm::Device::cuda), vc(cache * 2, minillm::Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(kc.data(), 0, cache * 2));
    MINILLM_CUDA_CHECK(cudaMemset(vc.data(), 0, cache * 2));
    Dev<int32_t> bt(size_t(num_pages), 0), ctx(size_t(sh.B), sh.ctx);
    std::iota(bt.host.begin(), bt.host.end(), 0);
    std::shuffle(bt.host.begin(), bt.host.end(), std::mt19937(1));
    bt.upload(), ctx.upload();
    Dev<uint16_t> q(size_t(sh.B) * sh.Hq * 128, 0), out(q.host.size(), 0);
    q.upload();
    PagedAttentionParams p;
    p.q = q.ptr(), p.k_cache = kc.data(), p.v_cache = vc.data(), p.out = out.ptr();
    p.block_table = bt.ptr(), p.context_lens = ctx.ptr();
    p.num_seqs = sh.B, p.num_tokens = sh.B, p.max_pages = pages, p.num_heads = sh.Hq, p.num_kv_heads = sh.Hkv;
    p.head_dim = 128, p.max_query_len = 1, p.max_context_len = sh.ctx;
    const size_t ws_bytes = minillm::cuda::paged_attention_workspace_bytes(p);
    minillm::Buffer ws(std::max<size_t>(ws_bytes, 16), minillm::Device::cuda);
    p.workspace = ws.data(), p.workspace_bytes = ws_bytes;
    for (int i = 0; i < 3; ++i) minillm::cuda::paged_attention(p, nullptr);
    const int iters = 20;
    MINILLM_CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < iters; ++i) minillm::cuda::paged_attention(p, nullptr);
    MINILLM_CUDA_CHECK(cudaEventRecord(e1));
    MINILLM_CUDA_CHECK(cudaEventSynchronize(e1));
    MINILLM_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = ms * 1e3 / iters, bytes = 2.0 * cache * 2;
    std::printf("B%d ctx%d H%d/%d D128 splits %d: %.1f us, %.0f GB/s, %.2f of copy\n", sh.B, sh.ctx, sh.Hq, sh.Hkv,
                minillm::cuda::paged_attention_num_splits(p), us, bytes / us / 1e3, bytes / us / 1e3 / copy_gbs);
  }
  MINILLM_CUDA_CHECK(cudaEventDestroy(e0));
  MINILLM_CUDA_CHECK(cudaEventDestroy(e1));
}

}  // namespace
