// CPU Mixture-of-Experts: the router (softmax + top-k) and a whole MoE layer, fp32 in and out.
//
// moe_router: per token (OpenMP parallel over tokens), softmax over the E logits in double, then the
// k most probable experts in descending order of probability, ties to the lower expert index (a
// partial sort under that total order), then optionally the k weights renormalised to sum 1.
//
// moe: router logits = linear(x, router_w), then moe_router. Tokens are then grouped by expert (a
// counting sort, stable in token order): for each expert in turn, its tokens are gathered into a
// contiguous [count, H] batch and run through linear (itself OpenMP parallel), so the expert matmuls
// are GEMMs, not per-token GEMVs. The activation is OpenMP parallel over the batch rows. Each expert
// writes its outputs to the (token, slot) rows of a [T, k, H] buffer, and the combine (OpenMP
// parallel over tokens) adds the slots in the fixed order j = 0..k-1: the result is deterministic.
// Scratch is std::vector (allocation is fine on this reference path).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/ops.h"

namespace minillm::cpu {

namespace {

float silu(float x) { return x / (1.0f + std::exp(-x)); }

float gelu_erf(float x) {
  const double xd = x;
  return static_cast<float>(0.5 * xd * (1.0 + std::erf(xd * 0.70710678118654752440)));  // erf(x / sqrt(2))
}

}  // namespace

void moe_router(const float* logits, int64_t T, int64_t E, int64_t k, bool normalize, int32_t* ids, float* weights) {
  // logits: [T, E], ids: [T, k], weights: [T, k]
  if (T <= 0 || k <= 0) return;
#pragma omp parallel
  {
    std::vector<double> prob(static_cast<size_t>(E));    // [E]
    std::vector<int32_t> order(static_cast<size_t>(E));  // [E]
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const float* lt = logits + t * E;  // [E]
      double m = lt[0];
      for (int64_t e = 1; e < E; ++e) m = std::max(m, static_cast<double>(lt[e]));
      double sum = 0.0;
      for (int64_t e = 0; e < E; ++e) {
        prob[e] = std::exp(lt[e] - m);
        sum += prob[e];
      }
      for (int64_t e = 0; e < E; ++e) prob[e] /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int32_t a, int32_t b) { return prob[a] > prob[b] || (prob[a] == prob[b] && a < b); });
      double kept = 0.0;
      for (int64_t j = 0; j < k; ++j) kept += prob[order[j]];
      const double norm = normalize ? 1.0 / kept : 1.0;
      for (int64_t j = 0; j < k; ++j) {
        ids[t * k + j] = order[j];
        weights[t * k + j] = static_cast<float>(prob[order[j]] * norm);
      }
    }
  }
}

void moe(const float* x, const float* router_w, const float* w1, const float* w3, const float* w2, int64_t T, int64_t H,
         int64_t E, int64_t F, int64_t k, bool normalize, ExpertActivation act, float* y) {
  // x: [T, H], router_w: [E, H], w1, w3: [E, F, H], w2: [E, H, F], y: [T, H]
  if (T <= 0) return;
  std::vector<float> logits(static_cast<size_t>(T * E));  // [T, E]
  linear(x, router_w, nullptr, T, H, E, logits.data());
  std::vector<int32_t> ids(static_cast<size_t>(T * k));    // [T, k]
  std::vector<float> weights(static_cast<size_t>(T * k));  // [T, k]
  moe_router(logits.data(), T, E, k, normalize, ids.data(), weights.data());

  // Group the (token, slot) pairs by expert, in token order: slots of expert e are
  // slot_of[begin[e] .. begin[e + 1]), each the flat index t * k + j.
  std::vector<int64_t> begin(static_cast<size_t>(E + 1), 0);  // [E + 1]
  for (int64_t s = 0; s < T * k; ++s) ++begin[ids[s] + 1];
  for (int64_t e = 0; e < E; ++e) begin[e + 1] += begin[e];
  std::vector<int64_t> slot_of(static_cast<size_t>(T * k));   // [T * k]
  std::vector<int64_t> fill(begin.begin(), begin.end() - 1);  // [E]
  for (int64_t s = 0; s < T * k; ++s) slot_of[fill[ids[s]]++] = s;

  int64_t max_count = 0;
  for (int64_t e = 0; e < E; ++e) max_count = std::max(max_count, begin[e + 1] - begin[e]);
  std::vector<float> xe(static_cast<size_t>(max_count * H));  // [count, H] gathered tokens
  std::vector<float> h1(static_cast<size_t>(max_count * F));  // [count, F] gate (or fc1) output
  std::vector<float> h3(act == ExpertActivation::swiglu ? static_cast<size_t>(max_count * F) : 0);  // [count, F]
  std::vector<float> oe(static_cast<size_t>(max_count * H));    // [count, H] expert output
  std::vector<float> slot_out(static_cast<size_t>(T * k * H));  // [T, k, H]

  for (int64_t e = 0; e < E; ++e) {
    const int64_t count = begin[e + 1] - begin[e];
    if (count == 0) continue;
    const int64_t* slots = slot_of.data() + begin[e];  // [count]
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < count; ++r) {
      const float* src = x + (slots[r] / k) * H;
      std::copy(src, src + H, xe.data() + r * H);
    }
    linear(xe.data(), w1 + e * F * H, nullptr, count, H, F, h1.data());
    if (act == ExpertActivation::swiglu) {
      linear(xe.data(), w3 + e * F * H, nullptr, count, H, F, h3.data());
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < count; ++r) {
        for (int64_t f = 0; f < F; ++f) h1[r * F + f] = silu(h1[r * F + f]) * h3[r * F + f];
      }
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < count; ++r) {
        for (int64_t f = 0; f < F; ++f) h1[r * F + f] = gelu_erf(h1[r * F + f]);
      }
    }
    linear(h1.data(), w2 + e * H * F, nullptr, count, F, H, oe.data());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < count; ++r) {
      std::copy(oe.data() + r * H, oe.data() + (r + 1) * H, slot_out.data() + slots[r] * H);
    }
  }

#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* yt = y + t * H;  // [H]
    for (int64_t i = 0; i < H; ++i) {
      float s = 0.0f;
      for (int64_t j = 0; j < k; ++j) s += weights[t * k + j] * slot_out[(t * k + j) * H + i];
      yt[i] = s;
    }
  }
}

}  // namespace minillm::cpu
