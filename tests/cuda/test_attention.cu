// GPU tests of minillm::flash_attention_forward against the CPU reference minillm::cpu::attention
// (fp32 inputs equal to the rounded bf16/fp16 inputs; softmax in double).
//
// Every output is poisoned (0xFFFF: NaN in both bf16 and fp16; lse NaN) before the call and every
// element is checked to be finite, so an element the kernel forgot to write fails. Strided layouts
// put NaN in the gaps of q/k/v (the kernel must not read them) and check that the gaps of o stay
// poisoned (it must not write them).
//
// Tolerances (relative L2 error ||o - ref|| / ||ref||):
//  - fp16: 1e-3. Unit roundoff u = 2^-11; the kernel rounds P to fp16 before P V and o to fp16 at the
//    end, each contributing about u / sqrt(3) = 2.8e-4 (RMS of a uniform relative rounding error).
//  - bf16: 1e-2. Same argument with u = 2^-8: about sqrt(2) * u / sqrt(3) = 3.2e-3 expected, a 3x margin.
//    (tests/python/test_attention_torch.py applies the stricter "<= 2x torch's own bf16 error" rule.)
//  - lse: |lse - ref| <= 1e-3 * max(1, |ref|) (fp32 math on exact products of the rounded inputs).
// Test names with "Small" are the ones scripts/gpu_check.sh runs under compute-sanitizer.
// On an H100 (sm_90) head dims 64 and 128 run the Hopper kernel (flash_fwd_sm90.cuh) and the others
// FlashAttention-2; the FlashAttentionSm90 tests check the wgmma descriptors of that kernel on one tile
// and run FlashAttention-2 on 64 / 128 as well (forced in-process).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "cuda/attention/flash_fwd.h"
#include "cuda/sm90.cuh"
#include "minillm/attention.h"
#include "minillm/core/cuda_check.h"
#include "minillm/core/dtype.h"
#include "minillm/core/tensor.h"

namespace {

using minillm::DType;
using minillm::FlashAttentionParams;
using minillm::cuda::attn::FlashFwdOptions;

constexpr uint16_t kPoison = 0xFFFF;  // NaN as bf16 and as fp16

bool have_gpu() { return minillm::cuda_available(); }
#define REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

uint16_t to_bits(DType t, float x) { return t == DType::bf16 ? minillm::f32_to_bf16(x) : minillm::f32_to_f16(x); }
float from_bits(DType t, uint16_t h) { return t == DType::bf16 ? minillm::bf16_to_f32(h) : minillm::f16_to_f32(h); }

// Random values in [-amp, amp], rounded to `t` (so the CPU reference sees exactly the kernel's inputs).
std::vector<float> random_rounded(DType t, size_t n, uint32_t seed, float amp) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-amp, amp);
  std::vector<float> v(n);
  for (auto& x : v) x = minillm::round_to(t, dist(gen));
  return v;
}

// A device buffer of 16-bit elements with a host image.
struct Dev16 {
  std::vector<uint16_t> host;
  minillm::Buffer buf;
  explicit Dev16(size_t n, uint16_t fill) : host(n, fill), buf(std::max<size_t>(n, 8) * 2, minillm::Device::cuda) {}
  void upload() { minillm::copy_bytes(buf.data(), minillm::Device::cuda, host.data(), minillm::Device::cpu, host.size() * 2); }
  void download() { minillm::copy_bytes(host.data(), minillm::Device::cpu, buf.data(), minillm::Device::cuda, host.size() * 2); }
  void* ptr() const { return buf.data(); }
};

struct DevF32 {
  std::vector<float> host;
  minillm::Buffer buf;
  explicit DevF32(size_t n, float fill) : host(n, fill), buf(std::max<size_t>(n, 4) * 4, minillm::Device::cuda) {}
  void upload() { minillm::copy_bytes(buf.data(), minillm::Device::cuda, host.data(), minillm::Device::cpu, host.size() * 4); }
  void download() { minillm::copy_bytes(host.data(), minillm::Device::cpu, buf.data(), minillm::Device::cuda, host.size() * 4); }
  float* ptr() const { return static_cast<float*>(buf.data()); }
};

struct Errors {
  double rel_l2 = 0.0;
  double max_abs = 0.0;
  double lse_err = 0.0;  // max |lse - ref| / max(1, |ref|)
  int64_t bad = 0;       // non-finite outputs (unwritten or NaN/Inf), or lse mismatching in -inf-ness
  int64_t gaps_written = 0;
};

void accumulate(Errors& e, double& err2, double& ref2, float out, double ref) {
  if (!std::isfinite(out)) {
    ++e.bad;
    return;
  }
  const double d = out - ref;
  err2 += d * d;
  ref2 += ref * ref;
  e.max_abs = std::max(e.max_abs, std::abs(d));
}

void check_lse(Errors& e, float out, float ref) {
  if (std::isinf(ref)) {
    if (!(std::isinf(out) && out < 0)) ++e.bad;
    return;
  }
  if (!std::isfinite(out)) {
    ++e.bad;
    return;
  }
  e.lse_err = std::max(e.lse_err, std::abs(double(out) - ref) / std::max(1.0, std::abs(double(ref))));
}

double tolerance(DType t) { return t == DType::f16 ? 1e-3 : 1e-2; }

struct Case {
  DType dtype = DType::bf16;
  int B = 1, Nq = 1, Nk = 1, H = 1, Hkv = 1, D = 64;
  bool causal = false;
  float scale = 0.f;  // 0: default 1/sqrt(D)
  float amp = 1.f;    // inputs uniform in [-amp, amp]
  bool strided = false;
  uint32_t seed = 1;
};

std::string describe(const Case& c) {
  return std::string(minillm::dtype_name(c.dtype)) + " B" + std::to_string(c.B) + " Nq" + std::to_string(c.Nq) +
         " Nk" + std::to_string(c.Nk) + " H" + std::to_string(c.H) + "/" + std::to_string(c.Hkv) + " D" +
         std::to_string(c.D) + (c.causal ? " causal" : " full") + (c.strided ? " strided" : "") +
         (c.amp != 1.f ? " amp" + std::to_string(c.amp) : "");
}

// Strides of one padded tensor [B, N, heads, D]; strided adds gaps after each head, row and batch.
struct Layout {
  int64_t head, row, batch, size;
  Layout(int B, int N, int heads, int D, bool strided) {
    head = D + (strided ? 8 : 0);
    row = heads * head + (strided ? 16 : 0);
    batch = N * row + (strided ? 24 : 0);
    size = B * batch;
  }
  int64_t at(int b, int n, int h, int d) const { return b * batch + n * row + h * head + d; }
};

// Runs one padded-layout case and compares it with the CPU reference.
Errors run_padded(const Case& c, const FlashFwdOptions& opt = {}) {
  const DType t = c.dtype;
  const size_t nq = size_t(c.B) * c.Nq * c.H * c.D, nk = size_t(c.B) * c.Nk * c.Hkv * c.D;
  const std::vector<float> q = random_rounded(t, nq, c.seed * 3 + 0, c.amp);
  const std::vector<float> k = random_rounded(t, nk, c.seed * 3 + 1, c.amp);
  const std::vector<float> v = random_rounded(t, nk, c.seed * 3 + 2, 1.f);
  const float scale = c.scale > 0.f ? c.scale : 1.f / std::sqrt(float(c.D));
  std::vector<float> ref(nq), ref_lse(size_t(c.B) * c.H * c.Nq);
  minillm::cpu::attention(q.data(), k.data(), v.data(), ref.data(), c.B, c.Nq, c.Nk, c.H, c.Hkv, c.D, c.H * c.D,
                          c.Hkv * c.D, c.H * c.D, c.causal, scale, ref_lse.data());

  const Layout lq(c.B, c.Nq, c.H, c.D, c.strided), lk(c.B, c.Nk, c.Hkv, c.D, c.strided);
  Dev16 dq(lq.size, kPoison), dk(lk.size, kPoison), dv(lk.size, kPoison), dout(lq.size, kPoison);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h)
      for (int n = 0; n < c.Nq; ++n)
        for (int d = 0; d < c.D; ++d)
          dq.host[lq.at(b, n, h, d)] = to_bits(t, q[((size_t(b) * c.Nq + n) * c.H + h) * c.D + d]);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hkv; ++h)
      for (int n = 0; n < c.Nk; ++n)
        for (int d = 0; d < c.D; ++d) {
          const size_t i = ((size_t(b) * c.Nk + n) * c.Hkv + h) * c.D + d;
          dk.host[lk.at(b, n, h, d)] = to_bits(t, k[i]);
          dv.host[lk.at(b, n, h, d)] = to_bits(t, v[i]);
        }
  dq.upload(), dk.upload(), dv.upload(), dout.upload();
  DevF32 dlse(ref_lse.size(), std::numeric_limits<float>::quiet_NaN());
  dlse.upload();

  FlashAttentionParams p;
  p.q = dq.ptr(), p.k = dk.ptr(), p.v = dv.ptr(), p.o = dout.ptr(), p.lse = dlse.ptr();
  p.dtype = t;
  p.batch = c.B, p.seqlen_q = c.Nq, p.seqlen_k = c.Nk, p.num_heads = c.H, p.num_kv_heads = c.Hkv, p.head_dim = c.D;
  p.q_batch_stride = lq.batch, p.q_row_stride = lq.row, p.q_head_stride = lq.head;
  p.o_batch_stride = lq.batch, p.o_row_stride = lq.row, p.o_head_stride = lq.head;
  p.k_batch_stride = p.v_batch_stride = lk.batch;
  p.k_row_stride = p.v_row_stride = lk.row;
  p.k_head_stride = p.v_head_stride = lk.head;
  p.lse_batch_stride = int64_t(c.H) * c.Nq, p.lse_head_stride = c.Nq;
  p.causal = c.causal;
  p.softmax_scale = c.scale;
  minillm::cuda::attn::flash_attention_forward(p, opt, nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  dout.download(), dlse.download();

  Errors e;
  double err2 = 0.0, ref2 = 0.0;
  std::vector<char> valid(lq.size, 0);
  for (int b = 0; b < c.B; ++b)
    for (int n = 0; n < c.Nq; ++n)
      for (int h = 0; h < c.H; ++h)
        for (int d = 0; d < c.D; ++d) {
          const int64_t at = lq.at(b, n, h, d);
          valid[at] = 1;
          accumulate(e, err2, ref2, from_bits(t, dout.host[at]), ref[((size_t(b) * c.Nq + n) * c.H + h) * c.D + d]);
        }
  for (int64_t i = 0; i < lq.size; ++i)
    if (!valid[i] && dout.host[i] != kPoison) ++e.gaps_written;
  for (size_t i = 0; i < ref_lse.size(); ++i) check_lse(e, dlse.host[i], ref_lse[i]);
  e.rel_l2 = ref2 > 0.0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  return e;
}

void expect_ok(const Case& c, const Errors& e, double tol) {
  EXPECT_EQ(e.bad, 0) << describe(c) << ": non-finite or unwritten outputs";
  EXPECT_EQ(e.gaps_written, 0) << describe(c) << ": wrote outside the output rows";
  EXPECT_LE(e.rel_l2, tol) << describe(c) << " (max abs " << e.max_abs << ")";
  EXPECT_LE(e.lse_err, 1e-3) << describe(c);
}

void check_cases(const std::vector<Case>& cases, const FlashFwdOptions& opt = {}) {
  for (const Case& c : cases) {
    const Errors e = run_padded(c, opt);
    expect_ok(c, e, tolerance(c.dtype));
  }
}

// ---- padded layout ----

TEST(FlashAttention, SmallShapes) {
  REQUIRE_GPU();
  std::vector<Case> cases;
  uint32_t seed = 10;
  for (DType t : {DType::bf16, DType::f16})
    for (int D : {32, 64, 96, 128, 256})
      for (int N : {1, 17, 127})
        for (bool causal : {false, true}) cases.push_back({t, 2, N, N, 2, 2, D, causal, 0.f, 1.f, false, seed++});
  check_cases(cases);
}

TEST(FlashAttention, SmallUnequalLengthsAndGqa) {
  REQUIRE_GPU();
  std::vector<Case> cases;
  uint32_t seed = 100;
  for (DType t : {DType::bf16, DType::f16})
    for (int D : {64, 128})
      for (bool causal : {false, true}) {
        cases.push_back({t, 1, 17, 300, 4, 1, D, causal, 0.f, 1.f, false, seed++});   // Nq < Nk, MQA
        cases.push_back({t, 2, 300, 17, 4, 2, D, causal, 0.f, 1.f, false, seed++});   // Nq > Nk: rows with no key
        cases.push_back({t, 1, 129, 255, 8, 2, D, causal, 0.f, 1.f, false, seed++});  // GQA 4
        cases.push_back({t, 1, 1, 200, 4, 4, D, causal, 0.f, 1.f, false, seed++});    // decode-like
      }
  check_cases(cases);
}

TEST(FlashAttention, SmallStridedLayout) {
  REQUIRE_GPU();
  std::vector<Case> cases;
  uint32_t seed = 200;
  for (DType t : {DType::bf16, DType::f16})
    for (int D : {40, 64, 128})
      for (bool causal : {false, true}) {
        cases.push_back({t, 2, 65, 65, 3, 1, D, causal, 0.f, 1.f, true, seed++});
        cases.push_back({t, 1, 33, 140, 4, 2, D, causal, 0.5f, 1.f, true, seed++});
      }
  check_cases(cases);
}

TEST(FlashAttention, SmallEmptyAndKeyless) {
  REQUIRE_GPU();
  // Nk = 0: every query sees no key: o = 0, lse = -inf (the CPU reference agrees).
  for (DType t : {DType::bf16, DType::f16}) {
    const Case c{t, 2, 5, 0, 2, 1, 64, false, 0.f, 1.f, false, 7};
    const Errors e = run_padded(c);
    expect_ok(c, e, tolerance(t));
  }
  // Nq = 0 or B = 0: nothing launched, o untouched, no error even with null pointers.
  FlashAttentionParams p;
  p.batch = 2, p.seqlen_q = 0, p.seqlen_k = 10, p.num_heads = 2, p.num_kv_heads = 2, p.head_dim = 64;
  EXPECT_NO_THROW(minillm::flash_attention_forward(p, nullptr));
  p.batch = 0, p.seqlen_q = 10;
  EXPECT_NO_THROW(minillm::flash_attention_forward(p, nullptr));
  Dev16 out(64, kPoison);
  out.upload();
  p.batch = 1, p.seqlen_q = 0, p.o = out.ptr();
  minillm::flash_attention_forward(p, nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  out.download();
  EXPECT_TRUE(std::all_of(out.host.begin(), out.host.end(), [](uint16_t x) { return x == kPoison; }));
}

TEST(FlashAttention, LargeMagnitudeScores) {
  REQUIRE_GPU();
  // |scores| up to ~1e4 (scale 1, |q|, |k| <= 60): no NaN/Inf, same answer as the double reference.
  std::vector<Case> cases;
  for (DType t : {DType::bf16, DType::f16})
    for (bool causal : {false, true}) {
      cases.push_back({t, 1, 300, 300, 2, 1, 64, causal, 1.f, 60.f, false, 300u + causal});
      cases.push_back({t, 1, 129, 257, 2, 2, 128, causal, 1.f, 40.f, false, 310u + causal});
      cases.push_back({t, 1, 129, 2100, 2, 2, 128, causal, 1.f, 40.f, false, 320u + causal});  // >= 2048 keys
    }
  check_cases(cases);
}

TEST(FlashAttention, MediumLengths) {
  REQUIRE_GPU();
  std::vector<Case> cases;
  uint32_t seed = 400;
  for (DType t : {DType::bf16, DType::f16})
    for (bool causal : {false, true}) {
      cases.push_back({t, 1, 1000, 1000, 4, 2, 64, causal, 0.f, 1.f, false, seed++});
      cases.push_back({t, 1, 2049, 2049, 2, 1, 128, causal, 0.f, 1.f, false, seed++});
      cases.push_back({t, 2, 1000, 2049, 2, 2, 64, causal, 0.f, 1.f, false, seed++});
      cases.push_back({t, 1, 2049, 1000, 2, 2, 32, causal, 0.f, 1.f, false, seed++});
    }
  cases.push_back({DType::bf16, 1, 8191, 8191, 1, 1, 64, true, 0.f, 1.f, false, 499});
  check_cases(cases);
}

TEST(FlashAttention, RandomShapes) {
  REQUIRE_GPU();
  std::mt19937 gen(2024);
  const int dims[] = {32, 64, 80, 96, 128, 256};
  std::vector<Case> cases;
  for (int i = 0; i < 24; ++i) {
    Case c;
    c.dtype = gen() % 2 ? DType::bf16 : DType::f16;
    c.B = 1 + gen() % 3;
    c.Nq = 1 + gen() % 600;
    c.Nk = gen() % 4 == 0 ? c.Nq : 1 + gen() % 600;
    const int groups[] = {1, 2, 4};
    c.Hkv = 1 + gen() % 2;
    c.H = c.Hkv * groups[gen() % 3];
    c.D = dims[gen() % 6];
    c.causal = gen() % 2;
    c.strided = gen() % 3 == 0;
    c.seed = 500 + i;
    cases.push_back(c);
  }
  check_cases(cases);
}

// ---- long sequences: finite everywhere, sampled rows against a double reference ----

TEST(FlashAttention, Long16kAnd32k) {
  REQUIRE_GPU();
  for (int N : {16384, 32768}) {
    const DType t = DType::bf16;
    const int H = 2, D = 64;
    const size_t n = size_t(N) * H * D;
    const std::vector<float> q = random_rounded(t, n, 900 + N, 1.f), k = random_rounded(t, n, 901 + N, 1.f),
                             v = random_rounded(t, n, 902 + N, 1.f);
    Dev16 dq(n, 0), dk(n, 0), dv(n, 0), dout(n, kPoison);
    for (size_t i = 0; i < n; ++i) dq.host[i] = to_bits(t, q[i]), dk.host[i] = to_bits(t, k[i]), dv.host[i] = to_bits(t, v[i]);
    dq.upload(), dk.upload(), dv.upload(), dout.upload();
    for (bool causal : {false, true}) {
      FlashAttentionParams p;
      p.q = dq.ptr(), p.k = dk.ptr(), p.v = dv.ptr(), p.o = dout.ptr(), p.dtype = t;
      p.batch = 1, p.seqlen_q = N, p.seqlen_k = N, p.num_heads = H, p.num_kv_heads = H, p.head_dim = D;
      p.causal = causal;
      minillm::set_packed_strides(p);
      minillm::flash_attention_forward(p, nullptr);
      MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
      dout.download();
      int64_t bad = 0;
      for (uint16_t x : dout.host) bad += !std::isfinite(from_bits(t, x));
      EXPECT_EQ(bad, 0) << "N=" << N << " causal=" << causal;
      // 32 sampled rows per head against a double-precision softmax.
      double err2 = 0.0, ref2 = 0.0;
      const double scale = 1.0 / std::sqrt(double(D));
      std::vector<double> s(N), acc(D);
      for (int h = 0; h < H; ++h)
        for (int r = 0; r < 32; ++r) {
          const int i = r == 0 ? 0 : (r == 31 ? N - 1 : int((uint64_t(r) * 2654435761u) % N));
          const int visible = causal ? i + 1 : N;
          double m = -1e300;
          for (int j = 0; j < visible; ++j) {
            double dot = 0.0;
            for (int d = 0; d < D; ++d) dot += double(q[(size_t(i) * H + h) * D + d]) * k[(size_t(j) * H + h) * D + d];
            s[j] = dot * scale;
            m = std::max(m, s[j]);
          }
          double sum = 0.0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int j = 0; j < visible; ++j) {
            const double pj = std::exp(s[j] - m);
            sum += pj;
            for (int d = 0; d < D; ++d) acc[d] += pj * v[(size_t(j) * H + h) * D + d];
          }
          for (int d = 0; d < D; ++d) {
            const double ref = acc[d] / sum, out = from_bits(t, dout.host[(size_t(i) * H + h) * D + d]);
            err2 += (out - ref) * (out - ref);
            ref2 += ref * ref;
          }
        }
      EXPECT_LE(std::sqrt(err2 / ref2), tolerance(t)) << "N=" << N << " causal=" << causal;
    }
  }
}

// ---- varlen layout ----

Errors run_varlen(DType t, const std::vector<int>& lq, const std::vector<int>& lk, int H, int Hkv, int D, bool causal,
                  uint32_t seed, const FlashFwdOptions& opt = {}) {
  const int B = static_cast<int>(lq.size());
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0);
  for (int b = 0; b < B; ++b) cu_q[b + 1] = cu_q[b] + lq[b], cu_k[b + 1] = cu_k[b] + lk[b];
  const int total_q = cu_q[B], total_k = cu_k[B];
  const std::vector<float> q = random_rounded(t, size_t(total_q) * H * D, seed, 1.f);
  const std::vector<float> k = random_rounded(t, size_t(total_k) * Hkv * D, seed + 1, 1.f);
  const std::vector<float> v = random_rounded(t, size_t(total_k) * Hkv * D, seed + 2, 1.f);
  const float scale = 1.f / std::sqrt(float(D));
  std::vector<float> ref(q.size()), ref_lse(size_t(H) * total_q);  // lse: [H, total_q]
  for (int b = 0; b < B; ++b) {
    if (lq[b] == 0) continue;
    std::vector<float> lse_b(size_t(H) * lq[b]);
    minillm::cpu::attention(q.data() + size_t(cu_q[b]) * H * D, k.data() + size_t(cu_k[b]) * Hkv * D,
                            v.data() + size_t(cu_k[b]) * Hkv * D, ref.data() + size_t(cu_q[b]) * H * D, 1, lq[b], lk[b],
                            H, Hkv, D, H * D, Hkv * D, H * D, causal, scale, lse_b.data());
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < lq[b]; ++i) ref_lse[size_t(h) * total_q + cu_q[b] + i] = lse_b[size_t(h) * lq[b] + i];
  }
  Dev16 dq(q.size(), 0), dk(k.size(), 0), dv(v.size(), 0), dout(q.size(), kPoison);
  for (size_t i = 0; i < q.size(); ++i) dq.host[i] = to_bits(t, q[i]);
  for (size_t i = 0; i < k.size(); ++i) dk.host[i] = to_bits(t, k[i]), dv.host[i] = to_bits(t, v[i]);
  dq.upload(), dk.upload(), dv.upload(), dout.upload();
  DevF32 dlse(ref_lse.size(), std::numeric_limits<float>::quiet_NaN());
  dlse.upload();
  minillm::Buffer dcu_q((B + 1) * 4, minillm::Device::cuda), dcu_k((B + 1) * 4, minillm::Device::cuda);
  minillm::copy_bytes(dcu_q.data(), minillm::Device::cuda, cu_q.data(), minillm::Device::cpu, (B + 1) * 4);
  minillm::copy_bytes(dcu_k.data(), minillm::Device::cuda, cu_k.data(), minillm::Device::cpu, (B + 1) * 4);

  FlashAttentionParams p;
  p.q = dq.ptr(), p.k = dk.ptr(), p.v = dv.ptr(), p.o = dout.ptr(), p.lse = dlse.ptr(), p.dtype = t;
  p.batch = B;
  p.seqlen_q = *std::max_element(lq.begin(), lq.end());
  p.seqlen_k = *std::max_element(lk.begin(), lk.end());
  p.num_heads = H, p.num_kv_heads = Hkv, p.head_dim = D, p.causal = causal;
  p.cu_seqlens_q = static_cast<const int32_t*>(dcu_q.data());
  p.cu_seqlens_k = static_cast<const int32_t*>(dcu_k.data());
  minillm::set_packed_strides(p, total_q);
  minillm::cuda::attn::flash_attention_forward(p, opt, nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  dout.download(), dlse.download();

  Errors e;
  double err2 = 0.0, ref2 = 0.0;
  for (size_t i = 0; i < q.size(); ++i) accumulate(e, err2, ref2, from_bits(t, dout.host[i]), ref[i]);
  for (size_t i = 0; i < ref_lse.size(); ++i) check_lse(e, dlse.host[i], ref_lse[i]);
  e.rel_l2 = ref2 > 0.0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  return e;
}

TEST(FlashAttention, SmallVarlen) {
  REQUIRE_GPU();
  uint32_t seed = 700;
  for (DType t : {DType::bf16, DType::f16})
    for (int D : {64, 128})
      for (bool causal : {false, true}) {
        const std::vector<int> lq = {0, 1, 17, 130, 5, 0, 64};
        const std::vector<int> lk = {3, 1, 17, 100, 0, 9, 200};
        const Errors e = run_varlen(t, lq, lk, 4, 2, D, causal, seed++);
        EXPECT_EQ(e.bad, 0) << "varlen D" << D << " causal " << causal;
        EXPECT_LE(e.rel_l2, tolerance(t)) << "varlen D" << D << " causal " << causal;
        EXPECT_LE(e.lse_err, 1e-3);
      }
}

TEST(FlashAttention, VarlenRandom) {
  REQUIRE_GPU();
  std::mt19937 gen(77);
  for (int i = 0; i < 6; ++i) {
    const int B = 1 + gen() % 8;
    std::vector<int> lq(B), lk(B);
    const bool same = i % 2 == 0;
    for (int b = 0; b < B; ++b) {
      lq[b] = gen() % 700;
      lk[b] = same ? lq[b] : int(gen() % 700);
    }
    const DType t = i % 3 ? DType::bf16 : DType::f16;
    const int D = i % 2 ? 128 : 64;
    const Errors e = run_varlen(t, lq, lk, 4, 1, D, i % 4 < 2, 800 + i);
    EXPECT_EQ(e.bad, 0) << "case " << i;
    EXPECT_LE(e.rel_l2, tolerance(t)) << "case " << i;
    EXPECT_LE(e.lse_err, 1e-3) << "case " << i;
  }
}

// ---- Hopper kernel: wgmma shared-memory descriptors on one tile, FlashAttention-2 forced ----

bool is_sm90() {
  if (!have_gpu()) return false;
  cudaDeviceProp prop{};
  MINILLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop.major == 9 && prop.minor == 0;
}

// One warpgroup: S = Q K^T (wgmma, A and B K-major) and O = P V (wgmma, A = P from registers, B = V
// MN-major), Q [64][128], K, V [128][128], P [64][128] bf16 row-major in global memory; the tiles are
// written into shared memory in the layout a 128-byte-swizzled TMA load of boxes {64, rows} produces.
__global__ void wgmma_tile_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* pm,
                                  const __nv_bfloat16* v, float* s_out, float* o_out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace minillm::cuda::sm90;
  using minillm::cuda::smem_u32;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base, sk = base + 64 * 256, sv = sk + 128 * 256;
  const int tid = threadIdx.x;
  auto put = [&](uint32_t tile, int rows, const __nv_bfloat16* src) {  // src [rows][128]
    for (int i = tid; i < rows * 128; i += 128) {
      const int r = i / 128, col = i % 128;
      const uint32_t addr = tile + (col / 64) * rows * 128 + r * 128 + ((((col % 64) / 8) ^ (r % 8)) << 4) + (col % 8) * 2;
      const uint16_t bits = *reinterpret_cast<const uint16_t*>(src + i);
      asm volatile("st.shared.u16 [%0], %1;" ::"r"(addr), "h"(bits) : "memory");
    }
  };
  put(sq, 64, q);
  put(sk, 128, k);
  put(sv, 128, v);
  fence_proxy_async();
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32, r0 = 16 * warp + lane / 4, c0 = 2 * (lane % 4);
  float s[64], o[64];
  wgmma_fence();
  for (int kk = 0; kk < 8; ++kk)
    wgmma_ss<128, __nv_bfloat16>(s, desc_k_sw128(sq + (kk / 4) * 64 * 128 + (kk % 4) * 32),
                                 desc_k_sw128(sk + (kk / 4) * 128 * 128 + (kk % 4) * 32), kk > 0);
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(s);
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  auto pw = [&](int r, int col) {  // two bf16 of P at (r, col), (r, col + 1)
    return *reinterpret_cast<const uint32_t*>(pm + r * 128 + col);
  };
  wgmma_fence();
  for (int kk = 0; kk < 8; ++kk) {
    const uint32_t a[4] = {pw(r0, 16 * kk + c0), pw(r0 + 8, 16 * kk + c0), pw(r0, 16 * kk + 8 + c0),
                           pw(r0 + 8, 16 * kk + 8 + c0)};
    wgmma_rs<128, __nv_bfloat16>(o, a, desc_mn_sw128(sv + kk * 16 * 128, 128 * 128), 1);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(o);
  for (int j = 0; j < 16; ++j)
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + 8 * (e / 2), col = 8 * j + c0 + e % 2;
      s_out[r * 128 + col] = s[4 * j + e];
      o_out[r * 128 + col] = o[4 * j + e];
    }
#endif
}

TEST(FlashAttentionSm90, SmallWgmmaTiles) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  const DType t = DType::bf16;
  const std::vector<float> q = random_rounded(t, 64 * 128, 11, 1.f), k = random_rounded(t, 128 * 128, 12, 1.f),
                           pm = random_rounded(t, 64 * 128, 13, 1.f), v = random_rounded(t, 128 * 128, 14, 1.f);
  Dev16 dq(q.size(), 0), dk(k.size(), 0), dp(pm.size(), 0), dv(v.size(), 0);
  for (size_t i = 0; i < q.size(); ++i) dq.host[i] = to_bits(t, q[i]), dp.host[i] = to_bits(t, pm[i]);
  for (size_t i = 0; i < k.size(); ++i) dk.host[i] = to_bits(t, k[i]), dv.host[i] = to_bits(t, v[i]);
  dq.upload(), dk.upload(), dp.upload(), dv.upload();
  DevF32 ds(64 * 128, std::numeric_limits<float>::quiet_NaN()), dout(64 * 128, std::numeric_limits<float>::quiet_NaN());
  ds.upload(), dout.upload();
  const int smem = 64 * 256 + 2 * 128 * 256 + 1024;
  MINILLM_CUDA_CHECK(cudaFuncSetAttribute(wgmma_tile_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  wgmma_tile_kernel<<<1, 128, smem>>>(static_cast<const __nv_bfloat16*>(dq.ptr()),
                                      static_cast<const __nv_bfloat16*>(dk.ptr()),
                                      static_cast<const __nv_bfloat16*>(dp.ptr()),
                                      static_cast<const __nv_bfloat16*>(dv.ptr()), ds.ptr(), dout.ptr());
  MINILLM_CUDA_CHECK(cudaGetLastError());
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  ds.download(), dout.download();
  double s_err = 0.0, o_err = 0.0;
  for (int r = 0; r < 64; ++r)
    for (int col = 0; col < 128; ++col) {
      double sref = 0.0, oref = 0.0;
      for (int i = 0; i < 128; ++i) {
        sref += double(q[r * 128 + i]) * k[col * 128 + i];
        oref += double(pm[r * 128 + i]) * v[i * 128 + col];
      }
      s_err = std::max(s_err, std::abs(ds.host[r * 128 + col] - sref));
      o_err = std::max(o_err, std::abs(dout.host[r * 128 + col] - oref));
      if (!std::isfinite(ds.host[r * 128 + col]) || !std::isfinite(dout.host[r * 128 + col])) s_err = 1e9;
    }
  EXPECT_LE(s_err, 1e-3) << "S = Q K^T (K-major descriptors)";
  EXPECT_LE(o_err, 1e-3) << "O = P V (MN-major descriptor of V)";
}

// The FlashAttention-2 kernel on the head dims that the Hopper kernel takes over on sm_90, and the
// Hopper kernel on cases the other tests do not reach (several tiles per CTA, long causal rows), under
// its default schedule and each schedule option (tile height, one CTA per unit, static order, one
// (batch, head) pair per group).
TEST(FlashAttentionSm90, SmallBothKernels) {
  REQUIRE_GPU();
  using minillm::cuda::attn::Kernel;
  std::vector<FlashFwdOptions> options(6);
  options[0].kernel = Kernel::kFa2;
  for (size_t i = 1; i < options.size(); ++i) options[i].kernel = Kernel::kSm90;
  options[2].sm90.block_m = 128;
  options[3].sm90.block_m = 192;
  options[4].sm90.persistent = false;
  options[4].sm90.dynamic = false;
  options[5].sm90.head_group = 1;
  for (const FlashFwdOptions& opt : options) {
    SCOPED_TRACE("kernel " + std::to_string(int(opt.kernel)) + " block_m " + std::to_string(opt.sm90.block_m) +
                 " persistent " + std::to_string(opt.sm90.persistent) + " dynamic " + std::to_string(opt.sm90.dynamic) +
                 " head_group " + std::to_string(opt.sm90.head_group));
    std::vector<Case> cases;
    uint32_t seed = 1000;
    for (DType t : {DType::bf16, DType::f16})
      for (int D : {64, 128})
        for (bool causal : {false, true}) {
          cases.push_back({t, 2, 257, 257, 4, 2, D, causal, 0.f, 1.f, false, seed++});
          cases.push_back({t, 1, 100, 700, 3, 1, D, causal, 0.f, 1.f, true, seed++});
          cases.push_back({t, 1, 700, 100, 2, 2, D, causal, 0.f, 1.f, false, seed++});
        }
    check_cases(cases, opt);
    for (bool causal : {false, true}) {
      const Errors e = run_varlen(DType::bf16, {5, 300, 1, 190}, {7, 290, 0, 400}, 4, 2, 128, causal, seed++, opt);
      EXPECT_EQ(e.bad, 0);
      EXPECT_LE(e.rel_l2, tolerance(DType::bf16));
      EXPECT_LE(e.lse_err, 1e-3);
    }
  }
}

// Forcing the Hopper kernel on a head dim it does not take is an error naming the head dim.
TEST(FlashAttentionSm90, SmallForcedKernelRejectsHeadDim) {
  REQUIRE_GPU();
  Dev16 buf(4096, 0);
  FlashAttentionParams p;
  p.q = p.k = p.v = buf.ptr();
  p.o = static_cast<uint16_t*>(buf.ptr()) + 2048;
  p.batch = 1, p.seqlen_q = 4, p.seqlen_k = 4, p.num_heads = 2, p.num_kv_heads = 2, p.head_dim = 32;
  minillm::set_packed_strides(p);
  FlashFwdOptions opt;
  opt.kernel = minillm::cuda::attn::Kernel::kSm90;
  try {
    minillm::cuda::attn::flash_attention_forward(p, opt, nullptr);
    ADD_FAILURE() << "expected an error naming head_dim";
  } catch (const minillm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim = 32"), std::string::npos) << e.what();
  }
}

// ---- parameter validation ----

void expect_error(const FlashAttentionParams& p, const std::string& needle) {
  try {
    minillm::flash_attention_forward(p, nullptr);
    ADD_FAILURE() << "expected an error naming '" << needle << "'";
  } catch (const minillm::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(FlashAttention, SmallValidation) {
  REQUIRE_GPU();
  Dev16 buf(4096, 0);
  auto good = [&] {
    FlashAttentionParams p;
    p.q = p.k = p.v = buf.ptr();
    p.o = static_cast<uint16_t*>(buf.ptr()) + 2048;
    p.batch = 1, p.seqlen_q = 4, p.seqlen_k = 4, p.num_heads = 2, p.num_kv_heads = 2, p.head_dim = 64;
    minillm::set_packed_strides(p);
    return p;
  };
  FlashAttentionParams p = good();
  p.dtype = DType::f32;
  expect_error(p, "dtype");
  p = good(), p.head_dim = 12;
  expect_error(p, "head_dim = 12");
  p = good(), p.head_dim = 512;
  expect_error(p, "head_dim = 512");
  p = good(), p.num_kv_heads = 3;
  expect_error(p, "num_kv_heads = 3");
  p = good(), p.softmax_scale = -1.f;
  expect_error(p, "softmax_scale");
  p = good(), p.seqlen_k = -1;
  expect_error(p, "seqlen_k = -1");
  p = good(), p.q = static_cast<char*>(buf.ptr()) + 2;
  expect_error(p, "q = ");
  p = good(), p.k = nullptr;
  expect_error(p, "k is null");
  p = good(), p.q_row_stride = 100;
  expect_error(p, "q_row_stride = 100");
  p = good(), p.o = const_cast<void*>(p.q);
  expect_error(p, "alias");
  p = good();
  p.cu_seqlens_q = static_cast<const int32_t*>(buf.ptr());
  expect_error(p, "cu_seqlens");
}

}  // namespace
