// MoELayer (CUDA) vs the CPU reference cpu::moe / cpu::moe_router on the same bf16-rounded inputs.
// Criterion: the GPU keeps h and the expert outputs in bf16 (the reference keeps fp32), so per element
// |y - y_ref| <= 0.02 * max|y_ref| + 0.02 * |y_ref| and the relative RMS error <= 1e-2, over the tokens
// whose top-k is not a near-tie in the reference's logits (a tie may legitimately pick another expert).
// Also: T = 0, extreme imbalance, experts without tokens, determinism, CUDA-graph capture, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "cuda/moe/moe_ops.h"
#include "minillm/core/cuda_check.h"
#include "minillm/moe.h"

namespace minillm {
namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

struct Case {
  int64_t T, H, E, k, F;
  ExpertActivation act = ExpertActivation::swiglu;
  bool normalize = true;
  DType dtype = DType::bf16;
};

std::string name(const Case& c) {
  return "T" + std::to_string(c.T) + " H" + std::to_string(c.H) + " E" + std::to_string(c.E) + " k" +
         std::to_string(c.k) + " F" + std::to_string(c.F) + (c.act == ExpertActivation::gelu ? " gelu" : " swiglu") +
         (c.normalize ? " norm" : " nonorm") + " " + dtype_name(c.dtype);
}

// Host values rounded to the 16-bit type (fp32 copies for the reference) and their 16-bit bits.
struct HostArray {
  std::vector<float> f;
  std::vector<uint16_t> bits;
};

HostArray make_array(size_t n, float scale, DType dt, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  HostArray a;
  a.f.resize(n);
  a.bits.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float v = dist(rng) * scale;
    a.bits[i] = dt == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
    a.f[i] = dt == DType::bf16 ? bf16_to_f32(a.bits[i]) : f16_to_f32(a.bits[i]);
  }
  return a;
}

void set_array(HostArray& a, size_t i, float v, DType dt) {
  a.bits[i] = dt == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
  a.f[i] = dt == DType::bf16 ? bf16_to_f32(a.bits[i]) : f16_to_f32(a.bits[i]);
}

Buffer upload(const HostArray& a) {
  Buffer b(a.bits.size() * 2, Device::cuda);
  copy_bytes(b.data(), Device::cuda, a.bits.data(), Device::cpu, a.bits.size() * 2);
  return b;
}

std::vector<float> download(const Buffer& b, size_t n, DType dt) {
  std::vector<uint16_t> bits(n);
  copy_bytes(bits.data(), Device::cpu, b.data(), Device::cuda, n * 2);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = dt == DType::bf16 ? bf16_to_f32(bits[i]) : f16_to_f32(bits[i]);
  return f;
}

struct Problem {
  Case c;
  HostArray x, router, w1, w3, w2;
  Buffer dx, drouter, dw1, dw3, dw2;
};

Problem make_problem(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.c = c;
  p.x = make_array(c.T * c.H, 1.0f, c.dtype, rng);
  p.router = make_array(c.E * c.H, 1.0f / std::sqrt(static_cast<float>(c.H)), c.dtype, rng);
  p.w1 = make_array(c.E * c.F * c.H, 1.0f / std::sqrt(static_cast<float>(c.H)), c.dtype, rng);
  if (c.act == ExpertActivation::swiglu) p.w3 = make_array(c.E * c.F * c.H, 1.0f / std::sqrt(static_cast<float>(c.H)), c.dtype, rng);
  p.w2 = make_array(c.E * c.H * c.F, 1.0f / std::sqrt(static_cast<float>(c.F)), c.dtype, rng);
  return p;
}

void upload_problem(Problem& p) {
  p.dx = upload(p.x);
  p.drouter = upload(p.router);
  p.dw1 = upload(p.w1);
  if (!p.w3.bits.empty()) p.dw3 = upload(p.w3);
  p.dw2 = upload(p.w2);
}

MoEConfig config_of(const Case& c) {
  MoEConfig cfg;
  cfg.hidden = c.H;
  cfg.num_experts = c.E;
  cfg.top_k = c.k;
  cfg.ffn = c.F;
  cfg.activation = c.act;
  cfg.normalize_topk = c.normalize;
  cfg.dtype = c.dtype;
  return cfg;
}

void set_weights(MoELayer& layer, const Problem& p) {
  layer.set_weights(p.drouter.data(), p.dw1.data(), p.c.act == ExpertActivation::swiglu ? p.dw3.data() : nullptr,
                    p.dw2.data());
}

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Runs the layer on p.x; returns y (as float).
std::vector<float> run_gpu(MoELayer& layer, const Problem& p) {
  const Case& c = p.c;
  Buffer y(std::max<size_t>(c.T * c.H * 2, 2), Device::cuda);
  MINILLM_CUDA_CHECK(cudaMemset(y.data(), 0xff, y.bytes()));  // poison
  Tensor tx(p.dx.data(), c.dtype, Device::cuda, {c.T, c.H});
  Tensor ty(y.data(), c.dtype, Device::cuda, {c.T, c.H});
  layer.forward(tx, ty, nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  return download(y, c.T * c.H, c.dtype);
}

// Reference logits in double, and for each token whether its top-k is clear of near-ties:
// `boundary` checks only the k-th vs (k+1)-th gap (what changes the output), else all adjacent gaps.
std::vector<char> clear_tokens(const Problem& p, bool boundary_only, double eps) {
  const Case& c = p.c;
  std::vector<char> ok(c.T, 1);
  std::vector<double> l(c.E);
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t e = 0; e < c.E; ++e) {
      double s = 0;
      for (int64_t i = 0; i < c.H; ++i) s += static_cast<double>(p.x.f[t * c.H + i]) * p.router.f[e * c.H + i];
      l[e] = s;
    }
    std::sort(l.begin(), l.end(), std::greater<double>());
    for (int64_t j = boundary_only ? c.k - 1 : 0; j < c.k && j + 1 < c.E; ++j)
      if (l[j] - l[j + 1] < eps) ok[t] = 0;
  }
  return ok;
}

void expect_close_to_reference(const Problem& p, const std::vector<float>& y) {
  const Case& c = p.c;
  std::vector<float> ref(c.T * c.H);
  cpu::moe(p.x.f.data(), p.router.f.data(), p.w1.f.data(), p.w3.f.empty() ? nullptr : p.w3.f.data(), p.w2.f.data(),
           c.T, c.H, c.E, c.F, c.k, c.normalize, c.act,
           ref.data());
  const std::vector<char> clear = clear_tokens(p, /*boundary_only=*/true, 1e-3);
  double max_ref = 0, err2 = 0, ref2 = 0;
  for (float v : ref) max_ref = std::max(max_ref, static_cast<double>(std::fabs(v)));
  int64_t bad = 0, used = 0;
  for (int64_t t = 0; t < c.T; ++t) {
    if (!clear[t]) continue;
    ++used;
    for (int64_t i = 0; i < c.H; ++i) {
      const double r = ref[t * c.H + i], g = y[t * c.H + i];
      const double d = std::fabs(g - r);
      err2 += d * d;
      ref2 += r * r;
      if (!(d <= 0.02 * max_ref + 0.02 * std::fabs(r))) {
        if (bad < 5) ADD_FAILURE() << name(c) << ": y[" << t << ", " << i << "] = " << g << ", reference " << r;
        ++bad;
      }
    }
  }
  EXPECT_EQ(bad, 0) << name(c);
  EXPECT_GT(used, c.T / 2) << name(c) << ": too many near-ties";
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
  EXPECT_LE(rel, 1e-2) << name(c) << ": relative RMS error";
}

void check_cases(std::initializer_list<Case> cases, uint32_t seed) {
  for (const Case& c : cases) {
    SCOPED_TRACE(name(c));
    Problem p = make_problem(c, seed++);
    upload_problem(p);
    MoELayer layer(config_of(c), c.T);
    set_weights(layer, p);
    expect_close_to_reference(p, run_gpu(layer, p));
  }
}

// Small shapes (also the compute-sanitizer run): both paths, both activations, both dtypes.
TEST(MoECuda, SmallShapesMatchCpuReference) {
  REQUIRE_GPU();
  check_cases({
                  {1, 1024, 8, 2, 512},                                  // decode, T = 1
                  {17, 1024, 16, 4, 1024, ExpertActivation::gelu, false},   // decode, gelu
                  {65, 1024, 8, 2, 512},                                 // grouped GEMM, smallest T
                  {200, 1024, 8, 1, 576, ExpertActivation::gelu, true},     // top-1, gelu, F % 128 != 0
                  {130, 1024, 16, 2, 1088, ExpertActivation::swiglu, true}, // F not a multiple of 128
                  {129, 1024, 16, 2, 1024, ExpertActivation::swiglu, true, DType::f16},
                  {9, 1024, 16, 2, 1024, ExpertActivation::swiglu, true, DType::f16},
              },
              1);
}

TEST(MoECuda, MatchesCpuReference) {
  REQUIRE_GPU();
  check_cases({
                  {64, 2048, 8, 2, 1536},                                 // decode, largest T
                  {300, 1024, 32, 4, 768, ExpertActivation::swiglu, false},  // partial tiles, no renorm
                  {513, 1024, 128, 8, 512, ExpertActivation::swiglu, true},  // E = 128, k = 8 (many empty experts)
                  {40, 1024, 128, 8, 512, ExpertActivation::swiglu, false},  // E = 128, k = 8, decode
                  {700, 2048, 64, 8, 1024, ExpertActivation::swiglu, false}, // OLMoE-like
                  {300, 1088, 8, 2, 512, ExpertActivation::gelu, true},      // H not a multiple of 256
                  {1500, 4096, 8, 2, 1024, ExpertActivation::swiglu, true},  // long K
              },
              100);
}

TEST(MoECuda, EmptyInput) {
  REQUIRE_GPU();
  Case c{0, 1024, 8, 2, 512};
  Problem p = make_problem({1, 1024, 8, 2, 512}, 3);
  upload_problem(p);
  MoELayer layer(config_of(c), 16);
  set_weights(layer, p);
  Tensor tx(p.dx.data(), c.dtype, Device::cuda, {0, c.H});
  Tensor ty(p.dx.data(), c.dtype, Device::cuda, {0, c.H});
  EXPECT_NO_THROW(layer.forward(tx, ty, nullptr));
  EXPECT_EQ(MoELayer::workspace_bytes(config_of(c), 0), 0u);
  EXPECT_NO_THROW(layer.forward(nullptr, nullptr, 0, nullptr, 0, nullptr));
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
}

// Router rows are zero except one expert's, and x > 0: every token picks that expert first, and the
// rest of its top-k are exact ties (logit 0) resolved to the lowest indices.
TEST(MoECuda, AllTokensToOneExpert) {
  REQUIRE_GPU();
  for (int64_t T : {40, 3000}) {
    for (int64_t k : {1, 2}) {
      Case c{T, 1024, 16, k, 512};
      SCOPED_TRACE(name(c));
      Problem p = make_problem(c, 11);
      for (size_t i = 0; i < p.x.f.size(); ++i) set_array(p.x, i, 0.1f + std::fabs(p.x.f[i]), c.dtype);
      for (int64_t e = 0; e < c.E; ++e)
        for (int64_t i = 0; i < c.H; ++i) set_array(p.router, e * c.H + i, e == 5 ? 0.01f : 0.0f, c.dtype);
      upload_problem(p);
      MoELayer layer(config_of(c), T);
      set_weights(layer, p);
      std::vector<int32_t> ids(T * k);
      Buffer dids(T * k * 4, Device::cuda), dw(T * k * 4, Device::cuda), scratch(layer.workspace_bytes(T), Device::cuda);
      layer.route(p.dx.data(), T, static_cast<int32_t*>(dids.data()), static_cast<float*>(dw.data()), scratch.data(),
                  scratch.bytes(), nullptr);
      copy_bytes(ids.data(), Device::cpu, dids.data(), Device::cuda, ids.size() * 4);
      for (int64_t t = 0; t < T; ++t) {
        ASSERT_EQ(ids[t * k], 5);
        if (k == 2) ASSERT_EQ(ids[t * k + 1], 0);
      }
      const std::vector<float> y = run_gpu(layer, p);
      // Near-ties are fine here: the ties are exact and resolved identically by both.
      std::vector<float> ref(T * c.H);
      cpu::moe(p.x.f.data(), p.router.f.data(), p.w1.f.data(), p.w3.f.data(), p.w2.f.data(), T, c.H, c.E, c.F, k,
               c.normalize, ExpertActivation::swiglu, ref.data());
      double max_ref = 0;
      for (float v : ref) max_ref = std::max(max_ref, static_cast<double>(std::fabs(v)));
      int64_t bad = 0;
      for (size_t i = 0; i < ref.size(); ++i)
        if (!(std::fabs(y[i] - ref[i]) <= 0.02 * max_ref + 0.02 * std::fabs(ref[i]))) ++bad;
      EXPECT_EQ(bad, 0);
    }
  }
}

TEST(MoECuda, RouterMatchesReference) {
  REQUIRE_GPU();
  // T >= 1024 with E <= 32 takes the fused router kernel (E padded to 8, 16 or 32 columns).
  for (Case c : {Case{1000, 2048, 64, 8, 64}, Case{257, 1024, 128, 8, 64}, Case{100, 4096, 8, 2, 64},
                 Case{3000, 1024, 8, 2, 64}, Case{2100, 2048, 32, 8, 64}, Case{1100, 1088, 20, 3, 64},
                 Case{1500, 1024, 16, 4, 64, ExpertActivation::swiglu, true, DType::f16}}) {
    SCOPED_TRACE(name(c));
    for (bool normalize : {true, false}) {
      c.normalize = normalize;
      Problem p = make_problem(c, 21);
      upload_problem(p);
      MoELayer layer(config_of(c));
      set_weights(layer, p);
      const int64_t n = c.T * c.k;
      Buffer dids(n * 4, Device::cuda), dw(n * 4, Device::cuda), scratch(layer.workspace_bytes(c.T), Device::cuda);
      layer.route(p.dx.data(), c.T, static_cast<int32_t*>(dids.data()), static_cast<float*>(dw.data()), scratch.data(),
                  scratch.bytes(), nullptr);
      std::vector<int32_t> ids(n), ref_ids(n);
      std::vector<float> w(n), ref_w(n), logits(c.T * c.E);
      copy_bytes(ids.data(), Device::cpu, dids.data(), Device::cuda, n * 4);
      copy_bytes(w.data(), Device::cpu, dw.data(), Device::cuda, n * 4);
      cpu::linear(p.x.f.data(), p.router.f.data(), nullptr, c.T, c.H, c.E, logits.data());
      cpu::moe_router(logits.data(), c.T, c.E, c.k, normalize, ref_ids.data(), ref_w.data());
      const std::vector<char> clear = clear_tokens(p, /*boundary_only=*/false, 1e-3);
      int64_t used = 0;
      for (int64_t t = 0; t < c.T; ++t) {
        if (!clear[t]) continue;
        ++used;
        for (int64_t j = 0; j < c.k; ++j) {
          ASSERT_EQ(ids[t * c.k + j], ref_ids[t * c.k + j]) << "token " << t << " slot " << j;
          ASSERT_NEAR(w[t * c.k + j], ref_w[t * c.k + j], 1e-5) << "token " << t << " slot " << j;
        }
      }
      EXPECT_GT(used, c.T / 4);
    }
  }
}

// forward_pairs: y_pairs [T, k, H] whose sum over k is forward's y. With k = 1 both write the same
// weighted rows (bitwise equal); with k > 1 forward keeps the fp32 sum of the weighted rows where
// forward_pairs rounds each row, so they match to that rounding (relative to the pairs' magnitudes,
// which may cancel). Every slot is written (the output is poisoned first).
TEST(MoECuda, ForwardPairsSumToForward) {
  REQUIRE_GPU();
  for (Case c : {Case{700, 1024, 8, 2, 512}, Case{300, 1024, 32, 4, 768, ExpertActivation::gelu, false},
                 Case{200, 1024, 8, 1, 512}, Case{40, 1024, 16, 4, 512}, Case{20, 1024, 8, 1, 512}}) {
    SCOPED_TRACE(name(c));
    Problem p = make_problem(c, 31);
    upload_problem(p);
    MoELayer layer(config_of(c), c.T);
    set_weights(layer, p);
    const std::vector<float> y = run_gpu(layer, p);
    Buffer scratch(layer.workspace_bytes(c.T), Device::cuda), pairs(c.T * c.k * c.H * 2, Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(pairs.data(), 0xff, pairs.bytes()));  // poison: NaN in bf16 and fp16
    layer.forward_pairs(p.dx.data(), pairs.data(), c.T, scratch.data(), scratch.bytes(), nullptr);
    MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> yp = download(pairs, c.T * c.k * c.H, c.dtype);
    int64_t bad = 0;
    for (int64_t t = 0; t < c.T; ++t) {
      for (int64_t i = 0; i < c.H; ++i) {
        float s = 0.0f, mag = 0.0f;
        for (int64_t j = 0; j < c.k; ++j) {
          s += yp[(t * c.k + j) * c.H + i];
          mag += std::fabs(yp[(t * c.k + j) * c.H + i]);
        }
        const float ref = y[t * c.H + i];
        const float sum = bf16_to_f32(f32_to_bf16(s));
        // k > 1: each pair is rounded once here, and once (unweighted) plus the sum in forward: bf16
        // rounds to <= 2^-8 relative, so |s - ref| <= 2^-8 (2 sum |pair| + |ref|).
        const bool ok = c.k == 1 ? sum == ref : std::fabs(s - ref) <= 8e-3f * (mag + std::fabs(ref));
        if (!ok && bad++ < 5) ADD_FAILURE() << "t " << t << " i " << i << ": sum of pairs " << s << ", forward " << ref;
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

// forward_pairs with a ResidualNorm: the down GEMM's last block adds the sum of each token's pairs to the
// residual and normalises it (RMSNorm, and LayerNorm with a bias), against those pairs summed in slot
// order and normalised on the host: x bit for bit (the same fp32 sum, rounded once), out within a
// rounding. Two runs per case: the counter must be zero again after each.
TEST(MoECuda, ForwardPairsRunsTheResidualNorm) {
  REQUIRE_GPU();
  for (Case c : {Case{1, 2048, 16, 8, 256, ExpertActivation::swiglu, false}, Case{4, 1024, 8, 2, 512},
                 Case{3, 512, 16, 4, 256, ExpertActivation::gelu, false, DType::f16}}) {
    SCOPED_TRACE(name(c));
    Problem p = make_problem(c, 41);
    upload_problem(p);
    MoELayer layer(config_of(c), c.T);
    set_weights(layer, p);
    ASSERT_TRUE(layer.fuses_residual_norm(c.T));
    const int64_t n = c.T * c.H, np = c.T * c.k * c.H;
    Buffer scratch(layer.workspace_bytes(c.T), Device::cuda), pairs(np * 2, Device::cuda);
    layer.forward_pairs(p.dx.data(), pairs.data(), c.T, scratch.data(), scratch.bytes(), nullptr);
    MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> yp = download(pairs, np, c.dtype);
    std::mt19937 rng(43);
    const HostArray res = make_array(n, 1.0f, c.dtype, rng);
    std::vector<float> nw(c.H), nb(c.H);
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    for (int64_t i = 0; i < c.H; ++i) nw[i] = u(rng), nb[i] = u(rng) - 1.0f;
    Buffer dnw(c.H * 4, Device::cuda), dnb(c.H * 4, Device::cuda), counter(4, Device::cuda);
    copy_bytes(dnw.data(), Device::cuda, nw.data(), Device::cpu, c.H * 4);
    copy_bytes(dnb.data(), Device::cuda, nb.data(), Device::cpu, c.H * 4);
    MINILLM_CUDA_CHECK(cudaMemset(counter.data(), 0, 4));
    for (const bool rms : {true, false}) {
      std::vector<float> x_ref(n), out_ref(n);
      for (int64_t t = 0; t < c.T; ++t) {
        std::vector<float> v(c.H);
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < c.H; ++i) {
          float d = 0.0f;
          for (int64_t j = 0; j < c.k; ++j) d += yp[(t * c.k + j) * c.H + i];
          v[i] = res.f[t * c.H + i] + d;
          x_ref[t * c.H + i] = c.dtype == DType::bf16 ? bf16_to_f32(f32_to_bf16(v[i])) : f16_to_f32(f32_to_f16(v[i]));
          sum += v[i];
        }
        const double mean = rms ? 0.0 : sum / c.H;
        for (int64_t i = 0; i < c.H; ++i) sq += (v[i] - mean) * (v[i] - mean);
        const double rstd = 1.0 / std::sqrt(sq / c.H + 1e-6);
        for (int64_t i = 0; i < c.H; ++i) out_ref[t * c.H + i] = static_cast<float>((v[i] - mean) * rstd * nw[i] + (rms ? 0.0 : nb[i]));
      }
      for (int run = 0; run < 2; ++run) {
        Buffer x = upload(res), out(n * 2, Device::cuda), pairs2(np * 2, Device::cuda);
        ResidualNorm then;
        then.x = x.data();
        then.out = out.data();
        then.w = static_cast<const float*>(dnw.data());
        then.b = rms ? nullptr : static_cast<const float*>(dnb.data());
        then.rmsnorm = rms;
        then.eps = 1e-6f;
        then.counter = static_cast<int32_t*>(counter.data());
        layer.forward_pairs(p.dx.data(), pairs2.data(), c.T, scratch.data(), scratch.bytes(), nullptr, &then);
        MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
        int32_t left = -1;
        copy_bytes(&left, Device::cpu, counter.data(), Device::cuda, 4);
        EXPECT_EQ(left, 0);
        EXPECT_EQ(download(pairs2, np, c.dtype), yp);
        EXPECT_EQ(download(x, n, c.dtype), x_ref) << (rms ? "rms" : "layernorm") << " run " << run;
        const std::vector<float> got = download(out, n, c.dtype);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_LE(std::fabs(got[i] - out_ref[i]), std::fabs(out_ref[i]) * 0x1p-7f + 1e-5f)
              << (rms ? "rms" : "layernorm") << " at " << i << " run " << run;
      }
    }
    // More tokens than the tail takes: refused with the reason.
    EXPECT_FALSE(layer.fuses_residual_norm(cuda::moe::kTailMaxRows + 1));
  }
}

// A shared expert (Qwen2-MoE) of width S * F inside the layer as S more experts, against cpu::moe plus
// cpu::shared_expert: forward and the sum of forward_pairs' k + S rows, on the decode and grouped
// paths (with the two-kernel and the fused router), and route()'s shared slots.
TEST(MoECuda, SharedExpertsMatchCpuReference) {
  REQUIRE_GPU();
  struct SharedCase {
    Case c;
    int64_t S;
  };
  uint32_t seed = 200;
  for (const SharedCase& sc : {SharedCase{{5, 1024, 8, 2, 512}, 2}, SharedCase{{37, 2048, 60, 4, 512, ExpertActivation::swiglu, false}, 4},
                               SharedCase{{700, 2048, 60, 4, 512, ExpertActivation::swiglu, false}, 4},
                               SharedCase{{1100, 1024, 8, 2, 256}, 3}}) {
    const Case& c = sc.c;
    const int64_t S = sc.S, Es = c.E + S, Fs = S * c.F, k2 = c.k + S;
    SCOPED_TRACE(name(c) + " S" + std::to_string(S));
    Problem p = make_problem(c, seed++);
    std::mt19937 rng(seed++);
    const float sh = 1.0f / std::sqrt(static_cast<float>(c.H));
    HostArray ws1 = make_array(Fs * c.H, sh, c.dtype, rng), ws3 = make_array(Fs * c.H, sh, c.dtype, rng);
    HostArray ws2 = make_array(c.H * Fs, 1.0f / std::sqrt(static_cast<float>(Fs)), c.dtype, rng);
    HostArray gate = make_array(c.H, sh, c.dtype, rng);
    // The stored experts: the routed ones, then chunk j of the shared expert (gate/up rows [jF, (j+1)F),
    // down_proj columns [jF, (j+1)F)).
    HostArray w1{p.w1.f, p.w1.bits}, w3{p.w3.f, p.w3.bits}, w2{p.w2.f, p.w2.bits};
    w1.bits.insert(w1.bits.end(), ws1.bits.begin(), ws1.bits.end());
    w3.bits.insert(w3.bits.end(), ws3.bits.begin(), ws3.bits.end());
    for (int64_t j = 0; j < S; ++j)
      for (int64_t h = 0; h < c.H; ++h)
        for (int64_t f = 0; f < c.F; ++f) w2.bits.push_back(ws2.bits[h * Fs + j * c.F + f]);
    upload_problem(p);
    Buffer dw1 = upload(w1), dw3 = upload(w3), dw2 = upload(w2), dgate = upload(gate);
    MoEConfig cfg = config_of(c);
    cfg.shared_experts = S;
    MoELayer layer(cfg, c.T);
    Tensor router(p.drouter.data(), c.dtype, Device::cuda, {c.E, c.H});
    Tensor tw1(dw1.data(), c.dtype, Device::cuda, {Es, c.F, c.H}), tw3(dw3.data(), c.dtype, Device::cuda, {Es, c.F, c.H});
    Tensor tw2(dw2.data(), c.dtype, Device::cuda, {Es, c.H, c.F}), tg(dgate.data(), c.dtype, Device::cuda, {1, c.H});
    expect_error([&] { layer.set_weights(router, tw1, tw3, tw2); }, "MoELayer.set_weights: shared_gate: expected");
    layer.set_weights(router, tw1, tw3, tw2, tg);

    // Reference: routed experts, then the gated shared expert added on.
    std::vector<float> ref(c.T * c.H), w13(ws1.f);
    w13.insert(w13.end(), ws3.f.begin(), ws3.f.end());
    cpu::moe(p.x.f.data(), p.router.f.data(), p.w1.f.data(), p.w3.f.data(), p.w2.f.data(), c.T, c.H, c.E, c.F, c.k,
             c.normalize, c.act, ref.data());
    cpu::shared_expert(p.x.f.data(), w13.data(), ws2.f.data(), gate.f.data(), c.T, c.H, Fs, ref.data());

    Buffer y(c.T * c.H * 2, Device::cuda), pairs(c.T * k2 * c.H * 2, Device::cuda);
    Buffer scratch(layer.workspace_bytes(c.T), Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(pairs.data(), 0xff, pairs.bytes()));  // poison
    layer.forward(p.dx.data(), y.data(), c.T, scratch.data(), scratch.bytes(), nullptr);
    const std::vector<float> yf = download(y, c.T * c.H, c.dtype);
    layer.forward_pairs(p.dx.data(), pairs.data(), c.T, scratch.data(), scratch.bytes(), nullptr);
    std::vector<int32_t> ids(c.T * k2);
    std::vector<float> rw(c.T * k2);
    Buffer dids(ids.size() * 4, Device::cuda), dw(rw.size() * 4, Device::cuda);
    layer.route(p.dx.data(), c.T, static_cast<int32_t*>(dids.data()), static_cast<float*>(dw.data()), scratch.data(),
                scratch.bytes(), nullptr);
    MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
    copy_bytes(ids.data(), Device::cpu, dids.data(), Device::cuda, ids.size() * 4);
    copy_bytes(rw.data(), Device::cpu, dw.data(), Device::cuda, rw.size() * 4);
    const std::vector<float> yp = download(pairs, c.T * k2 * c.H, c.dtype);
    std::vector<float> ysum(c.T * c.H, 0.0f);
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t j = 0; j < k2; ++j)
        for (int64_t i = 0; i < c.H; ++i) ysum[t * c.H + i] += yp[(t * k2 + j) * c.H + i];

    const std::vector<char> clear = clear_tokens(p, /*boundary_only=*/true, 1e-3);
    double max_ref = 0;
    for (float v : ref) max_ref = std::max(max_ref, static_cast<double>(std::fabs(v)));
    for (const std::vector<float>* out : std::initializer_list<const std::vector<float>*>{&yf, &ysum}) {
      double err2 = 0, ref2 = 0;
      int64_t bad = 0, used = 0;
      for (int64_t t = 0; t < c.T; ++t) {
        if (!clear[t]) continue;
        ++used;
        for (int64_t i = 0; i < c.H; ++i) {
          const double r = ref[t * c.H + i], d = std::fabs((*out)[t * c.H + i] - r);
          err2 += d * d;
          ref2 += r * r;
          if (!(d <= 0.02 * max_ref + 0.02 * std::fabs(r)) && bad++ < 5)
            ADD_FAILURE() << (out == &yf ? "forward" : "forward_pairs") << " y[" << t << ", " << i << "] = " << (*out)[t * c.H + i]
                          << ", reference " << r;
        }
      }
      EXPECT_EQ(bad, 0);
      EXPECT_GT(used, c.T / 2);
      EXPECT_LE(std::sqrt(err2 / std::max(ref2, 1e-30)), 1e-2) << "relative RMS error";
    }
    for (int64_t t = 0; t < c.T; ++t) {
      double dot = 0;
      for (int64_t i = 0; i < c.H; ++i) dot += double(p.x.f[t * c.H + i]) * gate.f[i];
      for (int64_t j = 0; j < S; ++j) {
        ASSERT_EQ(ids[t * k2 + c.k + j], c.E + j) << "token " << t;
        ASSERT_NEAR(rw[t * k2 + c.k + j], 1.0 / (1.0 + std::exp(-dot)), 1e-5) << "token " << t;
      }
    }
  }
}

// The decode path's one-launch routing (decode_route: top-k, then the sort with row_align 1) against
// router_topk followed by permute: the same ids, weights, counts, offsets and permutation, bit for bit;
// and its list of the experts with pairs.
// S shared-expert slots per token are filled beforehand, as shared_slots does.
TEST(MoECuda, DecodeRouteMatchesTopkAndPermute) {
  REQUIRE_GPU();
  namespace km = cuda::moe;
  struct R {
    int T, E, k, S, splits;
    bool normalize;
  };
  for (const R& c : {R{1, 64, 8, 0, 3, false}, R{17, 16, 4, 0, 1, true}, R{64, 128, 8, 0, 2, true},
                     R{64, 254, 6, 2, 4, false}, R{5, 60, 4, 4, 1, false}, R{40, 8, 1, 0, 2, true}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " E" << c.E << " k" << c.k << " S" << c.S << " splits " << c.splits);
    const int ld = c.k + c.S, Es = c.E + c.S;
    const int64_t pairs = static_cast<int64_t>(c.T) * ld;
    std::mt19937 rng(static_cast<uint32_t>(c.T * 1000 + c.E));
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> logits(static_cast<size_t>(c.splits) * c.T * c.E);
    for (float& v : logits) v = dist(rng);
    if (c.T > 1) logits[c.E + 3] = logits[c.E + 5];  // an exact tie in token 1 (split 0)
    std::vector<int32_t> ids0(pairs, -1);
    std::vector<float> w0(pairs, 0.0f);
    for (int t = 0; t < c.T; ++t)
      for (int j = 0; j < c.S; ++j) {
        ids0[t * ld + c.k + j] = c.E + j;
        w0[t * ld + c.k + j] = 0.25f + 0.125f * j;
      }
    Buffer dlogits(logits.size() * 4, Device::cuda);
    copy_bytes(dlogits.data(), Device::cuda, logits.data(), Device::cpu, logits.size() * 4);
    const int64_t nchunks = km::permute_num_chunks(pairs);
    struct Out {
      Buffer ids, w, counts, offs, dest, src, chunk, nmb, mbe, tile, act, nact;
      km::Routing r;
    };
    auto make = [&]() {
      Out o{Buffer(pairs * 4, Device::cuda), Buffer(pairs * 4, Device::cuda), Buffer(Es * 4, Device::cuda),
            Buffer(Es * 4, Device::cuda),    Buffer(pairs * 4, Device::cuda), Buffer(pairs * 4, Device::cuda),
            Buffer(Es * nchunks * 4, Device::cuda), Buffer(4, Device::cuda), Buffer((pairs / 128 + 2) * 4, Device::cuda),
            Buffer(4, Device::cuda), Buffer(Es * 4, Device::cuda), Buffer(4, Device::cuda), {}};
      copy_bytes(o.ids.data(), Device::cuda, ids0.data(), Device::cpu, pairs * 4);
      copy_bytes(o.w.data(), Device::cuda, w0.data(), Device::cpu, pairs * 4);
      o.r.counts = static_cast<int32_t*>(o.counts.data());
      o.r.row_offset = static_cast<int32_t*>(o.offs.data());
      o.r.dest = static_cast<int32_t*>(o.dest.data());
      o.r.src_pair = static_cast<int32_t*>(o.src.data());
      o.r.chunk_counts = static_cast<int32_t*>(o.chunk.data());
      o.r.num_mblocks = static_cast<int32_t*>(o.nmb.data());
      o.r.mblock_expert = static_cast<int32_t*>(o.mbe.data());
      o.r.tile_counter = static_cast<int32_t*>(o.tile.data());
      o.r.active = static_cast<int32_t*>(o.act.data());
      o.r.num_active = static_cast<int32_t*>(o.nact.data());
      return o;
    };
    Out a = make(), b = make();
    const float* lg = static_cast<const float*>(dlogits.data());
    km::router_topk(lg, c.splits, c.T, c.E, c.k, ld, c.normalize, static_cast<int32_t*>(a.ids.data()),
                    static_cast<float*>(a.w.data()), nullptr);
    km::permute(static_cast<int32_t*>(a.ids.data()), c.T, ld, Es, 1, a.r, nullptr);
    km::decode_route(lg, c.splits, c.T, c.E, c.k, ld, Es, c.normalize, static_cast<int32_t*>(b.ids.data()),
                     static_cast<float*>(b.w.data()), b.r, nullptr);
    MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
    auto host = [](const Buffer& d, int64_t n) {
      std::vector<int32_t> h(n);
      copy_bytes(h.data(), Device::cpu, d.data(), Device::cuda, n * 4);
      return h;
    };
    EXPECT_EQ(host(a.ids, pairs), host(b.ids, pairs)) << "ids";
    EXPECT_EQ(host(a.w, pairs), host(b.w, pairs)) << "weights (bits)";
    EXPECT_EQ(host(a.counts, Es), host(b.counts, Es)) << "counts";
    EXPECT_EQ(host(a.offs, Es), host(b.offs, Es)) << "row_offset";
    EXPECT_EQ(host(a.dest, pairs), host(b.dest, pairs)) << "dest";
    EXPECT_EQ(host(a.src, pairs), host(b.src, pairs)) << "src_pair";
    const std::vector<int32_t> src = host(b.src, pairs), ids = host(b.ids, pairs), offs = host(b.offs, Es);
    const std::vector<int32_t> counts = host(b.counts, Es), nact = host(b.nact, 1);
    std::vector<int32_t> active;  // the experts with pairs, ascending
    for (int e = 0; e < Es; ++e)
      if (counts[e] > 0) active.push_back(e);
    ASSERT_EQ(nact[0], static_cast<int32_t>(active.size()));
    EXPECT_EQ(host(b.act, nact[0]), active) << "active";
    for (int64_t row = 0; row < pairs; ++row) {  // rows in expert order, pairs ascending within an expert
      const int e = ids[src[row]];
      ASSERT_GE(row, offs[e]);
      if (row > offs[e]) ASSERT_LT(src[row - 1], src[row]);
    }
  }
}

// Bitwise identical outputs: twice on one layer, on a second layer, and replayed from a CUDA graph.
// decode_router (the router GEMM and decode_route in one launch, the routing in the grid's last block)
// against an fp64 router GEMM on the host (logits) and against decode_route run on those same logits
// (every routing output bit for bit: the same block function). With shared slots (S > 0) as a previous
// kernel leaves them. Twice per case: the counter must be zero again after a launch.
TEST(MoECuda, DecodeRouterMatchesGemmThenRoute) {
  REQUIRE_GPU();
  namespace km = cuda::moe;
  struct R {
    int T, E, k, S;
    int64_t H;
    bool normalize;
  };
  for (const R& c : {R{1, 64, 8, 0, 2048, false}, R{8, 128, 8, 0, 512, true}, R{3, 60, 4, 4, 1024, false},
                     R{2, 8, 2, 0, 4096, true}, R{5, 254, 6, 2, 256, false}}) {
    SCOPED_TRACE(testing::Message() << "T" << c.T << " E" << c.E << " k" << c.k << " S" << c.S << " H" << c.H);
    ASSERT_TRUE(km::decode_router_supported(c.T, c.E, c.H));
    const int ld = c.k + c.S, Es = c.E + c.S;
    const int64_t pairs = static_cast<int64_t>(c.T) * ld;
    std::mt19937 rng(static_cast<uint32_t>(c.T * 7 + c.E));
    const HostArray x = make_array(c.T * c.H, 1.0f, DType::bf16, rng);
    const HostArray router = make_array(c.E * c.H, 1.0f / std::sqrt(static_cast<float>(c.H)), DType::bf16, rng);
    std::vector<int32_t> ids0(pairs, -1);
    std::vector<float> w0(pairs, 0.0f);
    for (int t = 0; t < c.T; ++t)
      for (int j = 0; j < c.S; ++j) ids0[t * ld + c.k + j] = c.E + j, w0[t * ld + c.k + j] = 0.25f + 0.125f * j;
    Buffer dx = upload(x), drouter = upload(router), counter(4, Device::cuda), logits(c.T * c.E * 4, Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(counter.data(), 0, 4));
    struct Out {
      Buffer ids, w, counts, offs, dest, src, act, nact;
      km::Routing r;
    };
    auto make = [&]() {
      Out o{Buffer(pairs * 4, Device::cuda), Buffer(pairs * 4, Device::cuda), Buffer(Es * 4, Device::cuda),
            Buffer(Es * 4, Device::cuda),    Buffer(pairs * 4, Device::cuda), Buffer(pairs * 4, Device::cuda),
            Buffer(Es * 4, Device::cuda),    Buffer(4, Device::cuda),         {}};
      copy_bytes(o.ids.data(), Device::cuda, ids0.data(), Device::cpu, pairs * 4);
      copy_bytes(o.w.data(), Device::cuda, w0.data(), Device::cpu, pairs * 4);
      o.r.counts = static_cast<int32_t*>(o.counts.data());
      o.r.row_offset = static_cast<int32_t*>(o.offs.data());
      o.r.dest = static_cast<int32_t*>(o.dest.data());
      o.r.src_pair = static_cast<int32_t*>(o.src.data());
      o.r.active = static_cast<int32_t*>(o.act.data());
      o.r.num_active = static_cast<int32_t*>(o.nact.data());
      return o;
    };
    auto host = [](const Buffer& d, int64_t n) {
      std::vector<int32_t> h(n);
      copy_bytes(h.data(), Device::cpu, d.data(), Device::cuda, n * 4);
      return h;
    };
    for (int run = 0; run < 2; ++run) {
      Out a = make(), b = make();
      km::decode_router(DType::bf16, dx.data(), drouter.data(), c.T, c.E, c.H, static_cast<float*>(logits.data()), c.k,
                        ld, Es, c.normalize, static_cast<int32_t*>(a.ids.data()), static_cast<float*>(a.w.data()), a.r,
                        static_cast<int32_t*>(counter.data()), nullptr);
      km::decode_route(static_cast<const float*>(logits.data()), 1, c.T, c.E, c.k, ld, Es, c.normalize,
                       static_cast<int32_t*>(b.ids.data()), static_cast<float*>(b.w.data()), b.r, nullptr);
      MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(host(counter, 1)[0], 0) << "run " << run;
      std::vector<float> lg(c.T * c.E);
      copy_bytes(lg.data(), Device::cpu, logits.data(), Device::cuda, lg.size() * 4);
      for (int t = 0; t < c.T; ++t)
        for (int e = 0; e < c.E; ++e) {
          double ref = 0, mag = 0;
          for (int64_t h = 0; h < c.H; ++h) {
            const double p = double(x.f[t * c.H + h]) * router.f[e * c.H + h];
            ref += p, mag += std::fabs(p);
          }
          ASSERT_NEAR(lg[t * c.E + e], ref, 1e-5 * mag + 1e-6) << "logit t " << t << " e " << e;
        }
      EXPECT_EQ(host(a.ids, pairs), host(b.ids, pairs)) << "ids";
      EXPECT_EQ(host(a.w, pairs), host(b.w, pairs)) << "weights (bits)";
      EXPECT_EQ(host(a.counts, Es), host(b.counts, Es)) << "counts";
      EXPECT_EQ(host(a.offs, Es), host(b.offs, Es)) << "row_offset";
      EXPECT_EQ(host(a.dest, pairs), host(b.dest, pairs)) << "dest";
      EXPECT_EQ(host(a.src, pairs), host(b.src, pairs)) << "src_pair";
      EXPECT_EQ(host(a.nact, 1), host(b.nact, 1)) << "num_active";
      EXPECT_EQ(host(a.act, host(b.nact, 1)[0]), host(b.act, host(b.nact, 1)[0])) << "active";
    }
  }
  EXPECT_FALSE(km::decode_router_supported(km::kDecodeRouterMaxTokens + 1, 64, 2048));
}

TEST(MoECuda, DeterministicAndGraphCapturable) {
  REQUIRE_GPU();
  for (Case c : {Case{2048, 1024, 32, 4, 1024}, Case{48, 1024, 8, 2, 1024}}) {
    SCOPED_TRACE(name(c));
    Problem p = make_problem(c, 5);
    upload_problem(p);
    MoELayer a(config_of(c), c.T), b(config_of(c), c.T);
    set_weights(a, p);
    set_weights(b, p);
    const std::vector<float> y1 = run_gpu(a, p), y2 = run_gpu(a, p), y3 = run_gpu(b, p);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4));
    EXPECT_EQ(0, std::memcmp(y1.data(), y3.data(), y1.size() * 4));

    // External scratch + capture.
    Buffer scratch(a.workspace_bytes(c.T), Device::cuda), y(c.T * c.H * 2, Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(y.data(), 0, y.bytes()));
    cudaStream_t s;
    MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    MINILLM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    a.forward(p.dx.data(), y.data(), c.T, scratch.data(), scratch.bytes(), s);
    MINILLM_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    MINILLM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    MINILLM_CUDA_CHECK(cudaGraphLaunch(exec, s));
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(s));
    const std::vector<float> y4 = download(y, c.T * c.H, c.dtype);
    EXPECT_EQ(0, std::memcmp(y1.data(), y4.data(), y1.size() * 4));
    MINILLM_CUDA_CHECK(cudaGraphExecDestroy(exec));
    MINILLM_CUDA_CHECK(cudaGraphDestroy(graph));
    MINILLM_CUDA_CHECK(cudaStreamDestroy(s));

    // Caller-provided Workspace arena.
    Workspace ws(a.workspace_bytes(c.T) + 1024, Device::cuda);
    Tensor tx(p.dx.data(), c.dtype, Device::cuda, {c.T, c.H}), ty(y.data(), c.dtype, Device::cuda, {c.T, c.H});
    a.forward(tx, ty, ws, nullptr);
    MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> y5 = download(y, c.T * c.H, c.dtype);
    EXPECT_EQ(0, std::memcmp(y1.data(), y5.data(), y1.size() * 4));
  }
}

TEST(MoECuda, BadConfig) {
  // Validation happens before any CUDA call: runs (and must pass) without a GPU too.
  auto cfg = [](auto edit) {
    MoEConfig c;
    c.hidden = 1024;
    c.num_experts = 8;
    c.top_k = 2;
    c.ffn = 512;
    edit(c);
    return c;
  };
  expect_error([&] { cfg([](MoEConfig& c) { c.hidden = 1000; }).validate(); }, "MoEConfig.hidden = 1000");
  expect_error([&] { cfg([](MoEConfig& c) { c.num_experts = 0; }).validate(); }, "MoEConfig.num_experts = 0");
  expect_error([&] { cfg([](MoEConfig& c) { c.num_experts = 300; }).validate(); }, "MoEConfig.num_experts = 300");
  expect_error([&] { cfg([](MoEConfig& c) { c.top_k = 9; }).validate(); }, "MoEConfig.top_k = 9");
  expect_error([&] { cfg([](MoEConfig& c) { c.top_k = 0; }).validate(); }, "MoEConfig.top_k = 0");
  expect_error([&] { cfg([](MoEConfig& c) { c.num_experts = 2, c.top_k = 4; }).validate(); }, "MoEConfig.top_k = 4");
  expect_error([&] { cfg([](MoEConfig& c) { c.ffn = -64; }).validate(); }, "MoEConfig.ffn = -64");
  expect_error([&] { cfg([](MoEConfig& c) { c.dtype = DType::f32; }).validate(); }, "MoEConfig.dtype = f32");
  expect_error([&] { MoELayer l(cfg([](MoEConfig& c) { c.ffn = 100; })); }, "MoEConfig.ffn = 100");
  expect_error([&] { cfg([](MoEConfig& c) { c.shared_experts = 7; }).validate(); }, "MoEConfig.shared_experts = 7");
  expect_error([&] { cfg([](MoEConfig& c) { c.shared_experts = -1; }).validate(); }, "MoEConfig.shared_experts = -1");
}

TEST(MoECuda, BadInputs) {
  REQUIRE_GPU();
  Case c{8, 1024, 8, 2, 512};
  Problem p = make_problem(c, 9);
  upload_problem(p);
  MoELayer layer(config_of(c), 8);
  Tensor tx(p.dx.data(), c.dtype, Device::cuda, {c.T, c.H});
  expect_error([&] { layer.forward(tx, tx, nullptr); }, "set_weights() must be called");
  Tensor router(p.drouter.data(), c.dtype, Device::cuda, {c.E, c.H});
  Tensor w1(p.dw1.data(), c.dtype, Device::cuda, {c.E, c.F, c.H});
  Tensor w3(p.dw3.data(), c.dtype, Device::cuda, {c.E, c.F, c.H});
  Tensor w2(p.dw2.data(), c.dtype, Device::cuda, {c.E, c.H, c.F});
  Tensor bad_shape(p.dw2.data(), c.dtype, Device::cuda, {c.E, c.F, c.H});
  Tensor bad_dtype(p.dw1.data(), DType::f16, Device::cuda, {c.E, c.F, c.H});
  Tensor host(p.x.f.data(), c.dtype, Device::cpu, {c.E, c.H});
  expect_error([&] { layer.set_weights(router, w1, w3, bad_shape); }, "w_down: expected bf16 [8, 1024, 512]");
  expect_error([&] { layer.set_weights(router, bad_dtype, w3, w2); }, "w_gate: expected bf16");
  expect_error([&] { layer.set_weights(host, w1, w3, w2); }, "router: expected a cuda tensor");
  expect_error([&] { layer.set_weights(router, w1, Tensor(), w2); }, "w_up");
  layer.set_weights(router, w1, w3, w2);
  Buffer big(16 * c.H * 2, Device::cuda);
  Tensor t16(big.data(), c.dtype, Device::cuda, {16, c.H});
  expect_error([&] { layer.forward(t16, t16, nullptr); }, "exceeds the reserved workspace");
  Tensor wrong_h(big.data(), c.dtype, Device::cuda, {4, 512});
  expect_error([&] { layer.forward(wrong_h, wrong_h, nullptr); }, "x: expected bf16 [");
  Tensor wrong_dt(big.data(), DType::f16, Device::cuda, {4, c.H});
  expect_error([&] { layer.forward(wrong_dt, wrong_dt, nullptr); }, "x: expected bf16");
  expect_error([&] { layer.forward(p.dx.data(), big.data(), 8, big.data(), 64, nullptr); }, "scratch of 64 bytes");
}

}  // namespace
}  // namespace minillm
