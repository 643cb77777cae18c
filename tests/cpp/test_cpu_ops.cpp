// Tests of the CPU reference ops (src/cpu/ops.h) against naive float64 references written here,
// with the simplest possible loops. Inputs are random with fixed seeds; the shapes cover edge cases
// (T = 1, odd sizes, K not a multiple of the linear tiles or K block, GQA/MQA, Nq != Nk with a
// causal mask, fully masked rows, router ties, E = 256 with k = 8, huge attention scores, aliasing).
// fp32 ops must match with a relative L2 error ||out - ref|| / ||ref|| <= 1e-5.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/ops.h"

namespace {

namespace cpu = minillm::cpu;

constexpr double kTol = 1e-5;

std::vector<float> random_vec(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(gen);
  return v;
}

// ||out - ref|| / ||ref|| (or ||out - ref|| when ref is all zero).
double rel_l2(const std::vector<float>& out, const std::vector<double>& ref) {
  EXPECT_EQ(out.size(), ref.size());
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double d = static_cast<double>(out[i]) - ref[i];
    err += d * d;
    norm += ref[i] * ref[i];
  }
  return norm > 0.0 ? std::sqrt(err / norm) : std::sqrt(err);
}

bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

// ---- naive float64 references ----

// y = x @ w^T + bias. x: [T, K], w: [N, K], bias: [N] or empty.
std::vector<double> ref_linear(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& bias,
                               int64_t T, int64_t K, int64_t N) {
  std::vector<double> y(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      double s = bias.empty() ? 0.0 : bias[n];
      for (int64_t kk = 0; kk < K; ++kk) s += static_cast<double>(x[t * K + kk]) * w[n * K + kk];
      y[t * N + n] = s;
    }
  }
  return y;
}

std::vector<double> ref_layernorm(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                                  double eps, int64_t T, int64_t H) {
  std::vector<double> y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double mean = 0.0;
    for (int64_t i = 0; i < H; ++i) mean += x[t * H + i];
    mean /= H;
    double var = 0.0;
    for (int64_t i = 0; i < H; ++i) var += (x[t * H + i] - mean) * (x[t * H + i] - mean);
    var /= H;
    for (int64_t i = 0; i < H; ++i) {
      y[t * H + i] = (x[t * H + i] - mean) / std::sqrt(var + eps) * w[i] + (b.empty() ? 0.0 : b[i]);
    }
  }
  return y;
}

std::vector<double> ref_rmsnorm(const std::vector<float>& x, const std::vector<float>& w, double eps, int64_t T,
                                int64_t H) {
  std::vector<double> y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0.0;
    for (int64_t i = 0; i < H; ++i) ms += static_cast<double>(x[t * H + i]) * x[t * H + i];
    ms /= H;
    for (int64_t i = 0; i < H; ++i) y[t * H + i] = x[t * H + i] / std::sqrt(ms + eps) * w[i];
  }
  return y;
}

// x: [T, row_stride], heads of D at the start of each row; elements past heads * D are kept.
std::vector<double> ref_rope(const std::vector<float>& x, int64_t T, int64_t heads, int64_t D, int64_t row_stride,
                             const std::vector<int32_t>& pos, double theta) {
  std::vector<double> y(x.begin(), x.end());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < D / 2; ++i) {
        const double angle = pos[t] * std::pow(theta, -2.0 * i / D);
        const int64_t a = t * row_stride + h * D + i, b = a + D / 2;
        y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
        y[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
      }
    }
  }
  return y;
}

struct AttnRef {
  std::vector<double> o;    // [B, Nq, Hq, D] (dense)
  std::vector<double> lse;  // [B, Hq, Nq]
};

// Full score row per query, masked keys skipped. Strided inputs as in cpu::attention.
AttnRef ref_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v, int64_t B,
                      int64_t Nq, int64_t Nk, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_row, int64_t kv_row,
                      bool causal, double scale) {
  AttnRef r;
  r.o.assign(static_cast<size_t>(B * Nq * Hq * D), 0.0);
  r.lse.assign(static_cast<size_t>(B * Hq * Nq), -std::numeric_limits<double>::infinity());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      for (int64_t i = 0; i < Nq; ++i) {
        std::vector<double> s;
        std::vector<int64_t> keys;
        for (int64_t j = 0; j < Nk; ++j) {
          if (causal && j > i + Nk - Nq) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            dot += static_cast<double>(q[(b * Nq + i) * q_row + h * D + d]) * k[(b * Nk + j) * kv_row + hk * D + d];
          }
          s.push_back(dot * scale);
          keys.push_back(j);
        }
        if (s.empty()) continue;
        const double m = *std::max_element(s.begin(), s.end());
        double sum = 0.0;
        for (double x : s) sum += std::exp(x - m);
        for (size_t n = 0; n < s.size(); ++n) {
          const double p = std::exp(s[n] - m) / sum;
          for (int64_t d = 0; d < D; ++d) {
            r.o[((b * Nq + i) * Hq + h) * D + d] += p * v[(b * Nk + keys[n]) * kv_row + hk * D + d];
          }
        }
        r.lse[(b * Hq + h) * Nq + i] = m + std::log(sum);
      }
    }
  }
  return r;
}

struct RouterRef {
  std::vector<int32_t> ids;     // [T, k]
  std::vector<double> weights;  // [T, k]
  double min_gap = 0.0;         // min over tokens of (p[k-th] - p[(k+1)-th]) / p[k-th] (inf if k == E)
};

RouterRef ref_router(const std::vector<double>& logits, int64_t T, int64_t E, int64_t k, bool normalize) {
  RouterRef r;
  r.min_gap = std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> p(static_cast<size_t>(E));
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t e = 0; e < E; ++e) m = std::max(m, logits[t * E + e]);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(logits[t * E + e] - m);
    for (int64_t e = 0; e < E; ++e) p[e] = std::exp(logits[t * E + e] - m) / sum;
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double kept = 0.0;
    for (int64_t j = 0; j < k; ++j) kept += p[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      r.ids.push_back(order[j]);
      r.weights.push_back(normalize ? p[order[j]] / kept : p[order[j]]);
    }
    if (k < E) r.min_gap = std::min(r.min_gap, (p[order[k - 1]] - p[order[k]]) / p[order[k - 1]]);
  }
  return r;
}

struct MoeCase {
  int64_t T, H, E, F, k;
  bool normalize;
  minillm::ExpertActivation act;
};

struct MoeData {
  std::vector<float> x, router_w, w1, w3, w2;
};

MoeData make_moe_data(const MoeCase& c, uint32_t seed) {
  MoeData d;
  const float a = 1.0f / std::sqrt(static_cast<float>(c.H)), f = 1.0f / std::sqrt(static_cast<float>(c.F));
  d.x = random_vec(c.T * c.H, seed, -1.0f, 1.0f);
  d.router_w = random_vec(c.E * c.H, seed + 1, -2.0f * a, 2.0f * a);
  d.w1 = random_vec(c.E * c.F * c.H, seed + 2, -2.0f * a, 2.0f * a);
  d.w3 = random_vec(c.E * c.F * c.H, seed + 3, -2.0f * a, 2.0f * a);
  d.w2 = random_vec(c.E * c.H * c.F, seed + 4, -2.0f * f, 2.0f * f);
  return d;
}

// Per token, per routed expert, the expert MLP in float64, combined in slot order.
std::vector<double> ref_moe(const MoeCase& c, const MoeData& d, double* min_gap) {
  const std::vector<double> logits = ref_linear(d.x, d.router_w, {}, c.T, c.H, c.E);
  const RouterRef route = ref_router(logits, c.T, c.E, c.k, c.normalize);
  *min_gap = route.min_gap;
  std::vector<double> y(static_cast<size_t>(c.T * c.H), 0.0);
  std::vector<double> hid(static_cast<size_t>(c.F));
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t j = 0; j < c.k; ++j) {
      const int64_t e = route.ids[t * c.k + j];
      for (int64_t f = 0; f < c.F; ++f) {
        double g = 0.0, u = 0.0;
        for (int64_t i = 0; i < c.H; ++i) {
          g += static_cast<double>(d.x[t * c.H + i]) * d.w1[(e * c.F + f) * c.H + i];
          u += static_cast<double>(d.x[t * c.H + i]) * d.w3[(e * c.F + f) * c.H + i];
        }
        hid[f] = c.act == minillm::ExpertActivation::swiglu ? g / (1.0 + std::exp(-g)) * u
                                                  : 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0)));
      }
      for (int64_t i = 0; i < c.H; ++i) {
        double s = 0.0;
        for (int64_t f = 0; f < c.F; ++f) s += hid[f] * d.w2[(e * c.H + i) * c.F + f];
        y[t * c.H + i] += route.weights[t * c.k + j] * s;
      }
    }
  }
  return y;
}

// ---- tests ----

TEST(CpuOps, EmbeddingGathersRows) {
  const int64_t V = 11, H = 13, T = 7;
  const std::vector<float> table = random_vec(V * H, 1);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7, 1, 10};
  std::vector<float> out(static_cast<size_t>(T * H));
  cpu::embedding(ids.data(), T, table.data(), H, out.data());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < H; ++i) ASSERT_EQ(out[t * H + i], table[ids[t] * H + i]) << t << " " << i;
  }
}

TEST(CpuOps, LinearMatchesFloat64) {
  struct Shape {
    int64_t T, K, N;
  };
  // Odd sizes, K not a multiple of the 4 lanes, T/N not multiples of the 3x4 tiles or the 96x64 task
  // blocks, and K = 2051 crossing the 2048 K block.
  const Shape shapes[] = {{1, 1, 1},      {1, 64, 96},    {3, 5, 7},     {7, 131, 67}, {128, 257, 130},
                          {97, 2051, 67}, {200, 33, 150}, {2, 768, 301}, {64, 768, 64}};
  uint32_t seed = 10;
  for (const Shape& s : shapes) {
    for (bool with_bias : {false, true}) {
      const std::vector<float> x = random_vec(s.T * s.K, seed++), w = random_vec(s.N * s.K, seed++);
      const std::vector<float> bias = with_bias ? random_vec(s.N, seed++) : std::vector<float>{};
      std::vector<float> y(static_cast<size_t>(s.T * s.N), std::numeric_limits<float>::quiet_NaN());
      cpu::linear(x.data(), w.data(), with_bias ? bias.data() : nullptr, s.T, s.K, s.N, y.data());
      const double err = rel_l2(y, ref_linear(x, w, bias, s.T, s.K, s.N));
      EXPECT_LE(err, kTol) << "T=" << s.T << " K=" << s.K << " N=" << s.N << " bias=" << with_bias;
    }
  }
}

TEST(CpuOps, LinearIsDeterministicAcrossThreadCounts) {
  const int64_t T = 101, K = 300, N = 203;
  const std::vector<float> x = random_vec(T * K, 20), w = random_vec(N * K, 21), b = random_vec(N, 22);
  std::vector<float> y1(static_cast<size_t>(T * N)), y2(y1.size());
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  cpu::linear(x.data(), w.data(), b.data(), T, K, N, y1.data());
  omp_set_num_threads(std::max(2, saved));
  cpu::linear(x.data(), w.data(), b.data(), T, K, N, y2.data());
  omp_set_num_threads(saved);
  EXPECT_EQ(y1, y2);
}

TEST(CpuOps, LinearEmptyIsNoop) {
  const std::vector<float> x(4, 1.0f), w(4, 1.0f);
  std::vector<float> y(4, 5.0f);
  cpu::linear(x.data(), w.data(), nullptr, 0, 4, 1, y.data());
  EXPECT_EQ(y, std::vector<float>(4, 5.0f));
  cpu::linear(x.data(), w.data(), nullptr, 0, 0, 0, y.data());
  EXPECT_EQ(y, std::vector<float>(4, 5.0f));
}

TEST(CpuOps, LayerNormMatchesFloat64) {
  struct Shape {
    int64_t T, H;
  };
  const Shape shapes[] = {{1, 1}, {1, 7}, {3, 7}, {17, 768}, {5, 4099}};
  uint32_t seed = 30;
  for (const Shape& s : shapes) {
    for (bool with_bias : {false, true}) {
      // An offset of 3 makes the mean matter.
      const std::vector<float> x = random_vec(s.T * s.H, seed++, 2.0f, 4.0f);
      const std::vector<float> w = random_vec(s.H, seed++, 0.5f, 1.5f);
      const std::vector<float> b = with_bias ? random_vec(s.H, seed++) : std::vector<float>{};
      const std::vector<double> ref = ref_layernorm(x, w, b, 1e-5, s.T, s.H);
      std::vector<float> y(x.size());
      cpu::layernorm(x.data(), w.data(), with_bias ? b.data() : nullptr, 1e-5f, s.T, s.H, y.data());
      EXPECT_LE(rel_l2(y, ref), kTol) << "T=" << s.T << " H=" << s.H << " bias=" << with_bias;
      // In place: y aliases x.
      std::vector<float> inplace = x;
      cpu::layernorm(inplace.data(), w.data(), with_bias ? b.data() : nullptr, 1e-5f, s.T, s.H, inplace.data());
      EXPECT_EQ(inplace, y) << "aliased T=" << s.T << " H=" << s.H;
    }
  }
}

TEST(CpuOps, RmsNormMatchesFloat64) {
  struct Shape {
    int64_t T, H;
  };
  const Shape shapes[] = {{1, 1}, {1, 7}, {3, 7}, {17, 768}, {5, 4099}};
  uint32_t seed = 40;
  for (const Shape& s : shapes) {
    const std::vector<float> x = random_vec(s.T * s.H, seed++, -3.0f, 3.0f);
    const std::vector<float> w = random_vec(s.H, seed++, 0.5f, 1.5f);
    const std::vector<double> ref = ref_rmsnorm(x, w, 1e-6, s.T, s.H);
    std::vector<float> y(x.size());
    cpu::rmsnorm(x.data(), w.data(), 1e-6f, s.T, s.H, y.data());
    EXPECT_LE(rel_l2(y, ref), kTol) << "T=" << s.T << " H=" << s.H;
    std::vector<float> inplace = x;
    cpu::rmsnorm(inplace.data(), w.data(), 1e-6f, s.T, s.H, inplace.data());
    EXPECT_EQ(inplace, y) << "aliased T=" << s.T << " H=" << s.H;
  }
}

TEST(CpuOps, RopeMatchesFloat64) {
  struct Case {
    int64_t T, heads, D, row_stride;
    float theta;
    int32_t pos0;
  };
  // row_stride > heads * D: the rotated heads sit inside a wider (fused QKV-like) row, whose other
  // elements must be left as they are.
  const Case cases[] = {{1, 1, 2, 2, 10000.0f, 0},
                        {5, 3, 8, 24, 10000.0f, 3},
                        {7, 4, 64, 400, 10000.0f, 100},
                        {3, 2, 128, 256, 1000000.0f, 100000},
                        {9, 12, 64, 768 * 3, 10000.0f, 4090}};
  uint32_t seed = 50;
  for (const Case& c : cases) {
    const std::vector<float> x0 = random_vec(c.T * c.row_stride, seed++);
    std::vector<int32_t> pos(static_cast<size_t>(c.T));
    for (int64_t t = 0; t < c.T; ++t) pos[t] = c.pos0 + static_cast<int32_t>(3 * t);  // not contiguous
    const std::vector<double> ref = ref_rope(x0, c.T, c.heads, c.D, c.row_stride, pos, c.theta);
    std::vector<float> x = x0;
    cpu::rope(x.data(), c.T, c.heads, c.D, c.row_stride, pos.data(), c.theta);
    EXPECT_LE(rel_l2(x, ref), kTol) << "T=" << c.T << " heads=" << c.heads << " D=" << c.D;
    for (int64_t t = 0; t < c.T; ++t) {
      for (int64_t i = c.heads * c.D; i < c.row_stride; ++i) {
        ASSERT_EQ(x[t * c.row_stride + i], x0[t * c.row_stride + i]) << "outside the heads: t=" << t << " i=" << i;
      }
    }
  }
}

struct AttnCase {
  int64_t B, Nq, Nk, Hq, Hkv, D;
  bool causal;
  bool fused;       // q, k, v inside one [tokens, (Hq + 2 Hkv) D] buffer (requires Nq == Nk)
  float magnitude;  // inputs in [-magnitude, magnitude]
  float scale;      // 0: 1/sqrt(D)
};

// Runs cpu::attention on one case and compares o and lse with the float64 reference.
// max_abs_lse (optional): the largest |lse| (~ the largest score) over rows that see a key.
void check_attention(const AttnCase& c, uint32_t seed, double* max_abs_lse = nullptr) {
  SCOPED_TRACE(::testing::Message() << "B=" << c.B << " Nq=" << c.Nq << " Nk=" << c.Nk << " Hq=" << c.Hq << " Hkv="
                                    << c.Hkv << " D=" << c.D << " causal=" << c.causal << " fused=" << c.fused);
  const float scale = c.scale > 0.0f ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.D));
  std::vector<float> q, k, v;
  int64_t q_row = c.Hq * c.D, kv_row = c.Hkv * c.D;
  std::vector<float> qkv;
  if (c.fused) {
    // One row per token: [q heads | k heads | v heads].
    q_row = kv_row = (c.Hq + 2 * c.Hkv) * c.D;
    qkv = random_vec(c.B * c.Nq * q_row, seed, -c.magnitude, c.magnitude);
    q = k = v = qkv;
  } else {
    q = random_vec(c.B * c.Nq * q_row, seed, -c.magnitude, c.magnitude);
    k = random_vec(c.B * c.Nk * kv_row, seed + 1, -c.magnitude, c.magnitude);
    v = random_vec(c.B * c.Nk * kv_row, seed + 2, -1.0f, 1.0f);
  }
  const int64_t k_off = c.fused ? c.Hq * c.D : 0, v_off = c.fused ? (c.Hq + c.Hkv) * c.D : 0;
  // The reference reads k and v at offset 0 of their rows: shift the fused copies.
  std::vector<float> k_ref(k.begin() + k_off, k.end()), v_ref(v.begin() + v_off, v.end());
  k_ref.resize(k.size());
  v_ref.resize(v.size());
  const AttnRef ref = ref_attention(q, k_ref, v_ref, c.B, c.Nq, c.Nk, c.Hq, c.Hkv, c.D, q_row, kv_row, c.causal, scale);

  // o rows padded by 5 elements, which must stay untouched.
  const int64_t o_row = c.Hq * c.D + 5;
  constexpr float kSentinel = 123.0f;
  std::vector<float> o_padded(static_cast<size_t>(c.B * c.Nq * o_row), kSentinel);
  std::vector<float> lse(static_cast<size_t>(c.B * c.Hq * c.Nq), kSentinel);
  cpu::attention(q.data(), k.data() + k_off, v.data() + v_off, o_padded.data(), c.B, c.Nq, c.Nk, c.Hq, c.Hkv, c.D,
                 q_row, kv_row, o_row, c.causal, scale, lse.data());

  std::vector<float> o(static_cast<size_t>(c.B * c.Nq * c.Hq * c.D));
  for (int64_t r = 0; r < c.B * c.Nq; ++r) {
    std::copy(o_padded.begin() + r * o_row, o_padded.begin() + r * o_row + c.Hq * c.D, o.begin() + r * c.Hq * c.D);
    for (int64_t i = c.Hq * c.D; i < o_row; ++i) ASSERT_EQ(o_padded[r * o_row + i], kSentinel);
  }
  EXPECT_TRUE(all_finite(o));
  EXPECT_LE(rel_l2(o, ref.o), kTol);

  // lse: -inf exactly where the reference has no key, finite and close elsewhere.
  std::vector<float> lse_finite;
  std::vector<double> ref_finite;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0.0f) << "lse[" << i << "] = " << lse[i];
    } else {
      ASSERT_TRUE(std::isfinite(lse[i])) << "lse[" << i << "] = " << lse[i];
      lse_finite.push_back(lse[i]);
      ref_finite.push_back(ref.lse[i]);
    }
  }
  EXPECT_LE(rel_l2(lse_finite, ref_finite), kTol);

  // Without lse the output is the same.
  std::vector<float> o2(o_padded.size(), kSentinel);
  cpu::attention(q.data(), k.data() + k_off, v.data() + v_off, o2.data(), c.B, c.Nq, c.Nk, c.Hq, c.Hkv, c.D, q_row,
                 kv_row, o_row, c.causal, scale);
  EXPECT_EQ(o2, o_padded);

  if (max_abs_lse) {
    *max_abs_lse = 0.0;
    for (double l : ref_finite) *max_abs_lse = std::max(*max_abs_lse, std::abs(l));
  }
}

TEST(CpuOps, AttentionMatchesFloat64) {
  const AttnCase cases[] = {
      // B, Nq, Nk, Hq, Hkv, D, causal, fused, magnitude, scale
      {1, 1, 1, 1, 1, 8, false, false, 1.0f, 0.0f},    {1, 1, 1, 1, 1, 8, true, false, 1.0f, 0.0f},
      {2, 17, 17, 4, 4, 32, false, false, 1.0f, 0.0f}, {2, 17, 17, 4, 4, 32, true, false, 1.0f, 0.0f},
      {1, 33, 33, 8, 2, 64, true, false, 1.0f, 0.0f},  // GQA 8/2
      {2, 19, 19, 8, 1, 16, true, false, 1.0f, 0.0f},  // MQA 8/1
      {1, 1, 40, 8, 2, 64, true, false, 1.0f, 0.0f},   // decode: one query, a cache of 40
      {2, 5, 23, 8, 2, 32, true, false, 1.0f, 0.0f},   // Nq < Nk, causal: chunked prefill
      {2, 5, 23, 4, 1, 32, false, false, 1.0f, 0.0f},  // Nq < Nk, full
      {2, 23, 5, 8, 2, 32, true, false, 1.0f, 0.0f},   // Nq > Nk, causal: 18 rows see no key
      {1, 23, 5, 4, 4, 8, false, false, 1.0f, 0.0f},   // Nq > Nk, full
      {2, 21, 21, 6, 2, 24, true, true, 1.0f, 0.0f},   // fused QKV rows
      {1, 9, 9, 3, 3, 5, true, false, 2.0f, 0.3f},     // odd D, explicit scale
  };
  uint32_t seed = 60;
  for (const AttnCase& c : cases) {
    check_attention(c, seed);
    seed += 3;
  }
}

TEST(CpuOps, AttentionFullyMaskedAndEmpty) {
  // Nk = 0: every row sees no key -> o = 0, lse = -inf.
  check_attention({2, 4, 0, 4, 2, 16, false, false, 1.0f, 0.0f}, 70);
  check_attention({2, 4, 0, 4, 2, 16, true, false, 1.0f, 0.0f}, 71);
  // Nq > Nk causal: only the last Nk rows see keys.
  check_attention({1, 12, 3, 2, 1, 8, true, false, 1.0f, 0.0f}, 72);
  // Nq = 0: nothing to do, nothing written.
  std::vector<float> q(8, 1.0f), kv(8, 1.0f), o(8, 7.0f), lse(2, 7.0f);
  cpu::attention(q.data(), kv.data(), kv.data(), o.data(), 1, 0, 1, 1, 1, 8, 8, 8, 8, true, 1.0f, lse.data());
  EXPECT_EQ(o, std::vector<float>(8, 7.0f));
  EXPECT_EQ(lse, std::vector<float>(2, 7.0f));
}

TEST(CpuOps, AttentionLargeScoresStayFinite) {
  // Inputs in [-50, 50] with scale 1 and D = 64 give scores of order 1e4 (std ~7e3): exp() without
  // the max subtraction would overflow even in double.
  double max_abs_lse = 0.0;
  check_attention({1, 16, 16, 4, 2, 64, true, false, 50.0f, 1.0f}, 80, &max_abs_lse);
  EXPECT_GE(max_abs_lse, 1e4);
  check_attention({1, 7, 16, 4, 1, 64, false, false, 50.0f, 1.0f}, 83, &max_abs_lse);
  EXPECT_GE(max_abs_lse, 1e4);
}

void check_router(const std::vector<float>& logits, int64_t T, int64_t E, int64_t k, bool normalize) {
  SCOPED_TRACE(::testing::Message() << "T=" << T << " E=" << E << " k=" << k << " normalize=" << normalize);
  const RouterRef ref = ref_router(std::vector<double>(logits.begin(), logits.end()), T, E, k, normalize);
  std::vector<int32_t> ids(static_cast<size_t>(T * k), -1);
  std::vector<float> weights(static_cast<size_t>(T * k));
  cpu::moe_router(logits.data(), T, E, k, normalize, ids.data(), weights.data());
  EXPECT_EQ(ids, ref.ids);
  EXPECT_LE(rel_l2(weights, ref.weights), kTol);
  if (normalize) {
    for (int64_t t = 0; t < T; ++t) {
      double s = 0.0;
      for (int64_t j = 0; j < k; ++j) s += weights[t * k + j];
      EXPECT_NEAR(s, 1.0, 1e-6);
    }
  }
}

TEST(CpuOps, MoeRouterMatchesFloat64) {
  struct Case {
    int64_t T, E, k;
  };
  const Case cases[] = {{1, 1, 1}, {1, 8, 2}, {13, 8, 2}, {7, 16, 1}, {5, 6, 6}, {9, 64, 4}, {11, 256, 8}};
  uint32_t seed = 90;
  for (const Case& c : cases) {
    for (bool normalize : {false, true}) {
      check_router(random_vec(c.T * c.E, seed++, -4.0f, 4.0f), c.T, c.E, c.k, normalize);
    }
  }
}

TEST(CpuOps, MoeRouterTiesGoToTheLowerIndex) {
  // All equal: experts 0..k-1, each weight 1/E (or 1/k normalised).
  {
    const int64_t E = 8, k = 3;
    const std::vector<float> logits(E, 0.5f);
    std::vector<int32_t> ids(k);
    std::vector<float> w(k);
    cpu::moe_router(logits.data(), 1, E, k, false, ids.data(), w.data());
    EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2}));
    for (float x : w) EXPECT_FLOAT_EQ(x, 1.0f / E);
    cpu::moe_router(logits.data(), 1, E, k, true, ids.data(), w.data());
    for (float x : w) EXPECT_FLOAT_EQ(x, 1.0f / k);
  }
  // Partial ties, including a tie across the top-k boundary.
  {
    const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 2.0f, 3.0f, 0.0f, 2.0f};
    std::vector<int32_t> ids(4);
    std::vector<float> w(4);
    cpu::moe_router(logits.data(), 1, 8, 4, false, ids.data(), w.data());
    EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 5, 2}));
  }
  // E = 256, k = 8 with many exact duplicates among the largest logits.
  {
    const int64_t T = 6, E = 256, k = 8;
    std::vector<float> logits = random_vec(T * E, 95, -4.0f, 4.0f);
    std::mt19937 gen(96);
    for (int64_t t = 0; t < T; ++t) {
      for (int r = 0; r < 12; ++r) {
        logits[t * E + gen() % E] = 5.0f;  // ties at the top, across the boundary
        logits[t * E + gen() % E] = 4.5f;
      }
    }
    check_router(logits, T, E, k, false);
    check_router(logits, T, E, k, true);
  }
}

void check_moe(const MoeCase& c, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "T=" << c.T << " H=" << c.H << " E=" << c.E << " F=" << c.F << " k=" << c.k
                                    << " normalize=" << c.normalize
                                    << " act=" << (c.act == minillm::ExpertActivation::swiglu ? "swiglu" : "gelu"));
  const MoeData d = make_moe_data(c, seed);
  double min_gap = 0.0;
  const std::vector<double> ref = ref_moe(c, d, &min_gap);
  // The fp32 router logits differ from the float64 ones by ~1e-7, so a near tie at the top-k
  // boundary could pick another expert. Such data would test nothing: require a clear relative
  // margin between the k-th and the (k+1)-th probability (~ their logit gap).
  ASSERT_GT(min_gap, 1e-5) << "ill-conditioned routing for this seed; pick another";
  std::vector<float> y(static_cast<size_t>(c.T * c.H), std::numeric_limits<float>::quiet_NaN());
  cpu::moe(d.x.data(), d.router_w.data(), d.w1.data(), d.w3.data(), d.w2.data(), c.T, c.H, c.E, c.F, c.k, c.normalize,
           c.act, y.data());
  EXPECT_LE(rel_l2(y, ref), kTol);
}

TEST(CpuOps, MoeMatchesFloat64) {
  using A = minillm::ExpertActivation;
  const MoeCase cases[] = {
      // T, H, E, F, k, normalize, act
      {1, 16, 4, 24, 2, true, A::swiglu},    {13, 16, 4, 24, 2, false, A::swiglu},
      {13, 16, 4, 24, 2, true, A::gelu},     {64, 64, 8, 96, 2, true, A::swiglu},
      {37, 33, 16, 45, 1, false, A::gelu},   {9, 20, 5, 12, 5, true, A::swiglu},  // k == E
      {24, 32, 256, 16, 8, true, A::swiglu}, {24, 32, 256, 16, 8, false, A::gelu},
  };
  uint32_t seed = 100;
  for (const MoeCase& c : cases) {
    check_moe(c, seed);
    seed += 5;
  }
}

TEST(CpuOps, MoeIsDeterministicAcrossThreadCounts) {
  const MoeCase c = {50, 40, 8, 72, 2, true, minillm::ExpertActivation::swiglu};
  const MoeData d = make_moe_data(c, 140);
  std::vector<float> y1(static_cast<size_t>(c.T * c.H)), y2(y1.size());
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  cpu::moe(d.x.data(), d.router_w.data(), d.w1.data(), d.w3.data(), d.w2.data(), c.T, c.H, c.E, c.F, c.k, c.normalize,
           c.act, y1.data());
  omp_set_num_threads(std::max(2, saved));
  cpu::moe(d.x.data(), d.router_w.data(), d.w1.data(), d.w3.data(), d.w2.data(), c.T, c.H, c.E, c.F, c.k, c.normalize,
           c.act, y2.data());
  omp_set_num_threads(saved);
  EXPECT_EQ(y1, y2);
}

}  // namespace
