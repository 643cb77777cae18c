// CPU sampling: one row at a time (OpenMP over rows), in the order and with the math of
// src/engine/sampler.h. Sums over the vocabulary run in index order in double, so a row's result
// depends only on its logits and parameters. The thresholds of top-k / top-p are searched bit by
// bit over the order keys of z exactly as the CUDA kernel does (src/cuda/sampling/sample.cu).
#include "cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace minillm::cpu {
namespace {

// The largest key K with count(z >= K) >= k: the key of the k-th largest z.
uint32_t top_k_key(const std::vector<uint32_t>& keys, int64_t k) {
  uint32_t K = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = K | (1u << bit);
    int64_t count = 0;
    for (uint32_t x : keys) count += x >= cand;
    if (count >= k) K = cand;
  }
  return K;
}

// The largest key K >= floor such that the mass of {z >= K} (exp(z - m), over keys >= floor)
// reaches p * total.
uint32_t top_p_key(const std::vector<uint32_t>& keys, const std::vector<float>& z, float m, uint32_t floor,
                   double target) {
  uint32_t K = floor;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = K | (1u << bit);
    if (cand <= K) continue;
    double mass = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] >= cand) mass += std::exp(static_cast<double>(z[i]) - m);
    if (mass >= target) K = cand;
  }
  return K;
}

}  // namespace

void sample(const float* logits, int64_t R, int64_t V, const SampleRowParams* params, const PenaltyEntry* penalties,
            int n_top, int32_t* tokens, float* logprobs, int32_t* top_ids, float* top_logprobs) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < R; ++r) {
    const float* raw = logits + r * V;  // [V]
    const SampleRowParams& p = params[r];
    // 1. logprobs of the raw logits.
    float raw_max = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < V; ++i) raw_max = std::max(raw_max, raw[i]);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(raw[i]) - raw_max);
    const double lse = raw_max + std::log(sum);
    for (int j = 0; j < n_top; ++j) {  // the j-th largest: below the previous (value, id) in order
      int32_t best = -1;
      for (int64_t i = 0; i < V; ++i) {
        if (j > 0) {
          const float pv = raw[top_ids[r * n_top + j - 1]];
          const int32_t pi = top_ids[r * n_top + j - 1];
          if (raw[i] > pv || (raw[i] == pv && i <= pi)) continue;
        }
        if (best < 0 || raw[i] > raw[best]) best = static_cast<int32_t>(i);
      }
      top_ids[r * n_top + j] = best;
      top_logprobs[r * n_top + j] = static_cast<float>(raw[best] - lse);
    }
    // 2. penalties.
    std::vector<float> l(raw, raw + V);
    for (int32_t e = p.pen_begin; e < p.pen_end; ++e)
      l[penalties[e].token] = apply_penalties(l[penalties[e].token], p, penalties[e].output_count);
    int32_t chosen = 0;
    if (p.temperature == 0.f) {  // 3. greedy
      for (int64_t i = 1; i < V; ++i)
        if (l[i] > l[chosen]) chosen = static_cast<int32_t>(i);
    } else {
      std::vector<float> z(static_cast<size_t>(V));
      std::vector<uint32_t> keys(static_cast<size_t>(V));
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < V; ++i) {
        z[i] = l[i] / p.temperature;
        keys[i] = order_key(z[i]);
        m = std::max(m, z[i]);
      }
      uint32_t floor = 0;  // 4. top-k
      if (p.top_k > 0 && p.top_k < V) floor = top_k_key(keys, p.top_k);
      if (p.top_p < 1.f) {  // 5. top-p over what top-k kept
        double total = 0;
        for (int64_t i = 0; i < V; ++i)
          if (keys[i] >= floor) total += std::exp(static_cast<double>(z[i]) - m);
        floor = top_p_key(keys, z, m, floor, static_cast<double>(p.top_p) * total);
      }
      float min_z = -std::numeric_limits<float>::infinity();  // 6. min-p
      if (p.min_p > 0.f) min_z = m + std::log(p.min_p);
      // 7. Gumbel-max over the kept tokens.
      float best = -std::numeric_limits<float>::infinity();
      chosen = -1;
      for (int64_t i = 0; i < V; ++i) {
        if (keys[i] < floor || z[i] < min_z) continue;
        const float s = z[i] + gumbel_noise(p.seed_lo, p.seed_hi, p.step, static_cast<int32_t>(i));
        if (chosen < 0 || s > best) {
          best = s;
          chosen = static_cast<int32_t>(i);
        }
      }
      if (chosen < 0) chosen = static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin());
    }
    tokens[r] = chosen;
    logprobs[r] = static_cast<float>(raw[chosen] - lse);
  }
}

}  // namespace minillm::cpu
