// CPU scaled dot-product attention (GQA, optional bottom-right causal mask), fp32 in and out.
//
// One (batch, query head, query row) per iteration, OpenMP parallel over all of them (dynamic
// schedule: causal rows differ in cost). A row computes its visible scores s_j = scale * q . k_j in
// double into a per-thread buffer of Nk doubles (O(Nk) scratch per thread, never Nq x Nk), takes the
// max m, p_j = exp(s_j - m) (safe for scores of any magnitude), o = sum_j p_j v_j / sum_j p_j in
// double, and lse = m + log(sum_j p_j). Query i sees keys j <= i + Nk - Nq when causal; a row that
// sees no key gets o = 0 and lse = -inf. Query head h reads kv head h / (Hq / Hkv).
// Layout: token n of batch b starts at q + (b * Nq + n) * q_row (k, v: kv_row; o: o_row), head h at
// + h * D within the row; lse is [B, Hq, Nq] contiguous.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/ops.h"

namespace minillm::cpu {

void attention(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t Nq, int64_t Nk, int64_t Hq,
               int64_t Hkv, int64_t D, int64_t q_row, int64_t kv_row, int64_t o_row, bool causal, float scale,
               float* lse) {
  if (B <= 0 || Nq <= 0 || Hq <= 0) return;
  const int64_t group = Hq / Hkv;  // query heads per kv head
#pragma omp parallel
  {
    std::vector<double> scores(static_cast<size_t>(std::max<int64_t>(Nk, 1)));  // [Nk]
    std::vector<double> acc(static_cast<size_t>(std::max<int64_t>(D, 1)));      // [D]
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < Hq; ++h) {
        for (int64_t i = 0; i < Nq; ++i) {
          const int64_t hk = h / group;
          const float* qi = q + (b * Nq + i) * q_row + h * D;  // [D]
          float* oi = o + (b * Nq + i) * o_row + h * D;        // [D]
          // Keys [0, visible) are seen by this query.
          const int64_t visible = causal ? std::clamp<int64_t>(i + Nk - Nq + 1, 0, Nk) : Nk;
          if (visible == 0) {
            std::fill(oi, oi + D, 0.0f);
            if (lse) lse[(b * Hq + h) * Nq + i] = -std::numeric_limits<float>::infinity();
            continue;
          }
          double m = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < visible; ++j) {
            const float* kj = k + (b * Nk + j) * kv_row + hk * D;  // [D]
            double dot = 0.0;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qi[d]) * kj[d];
            scores[j] = dot * scale;
            m = std::max(m, scores[j]);
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          double sum = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
            const double p = std::exp(scores[j] - m);
            sum += p;
            const float* vj = v + (b * Nk + j) * kv_row + hk * D;  // [D]
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] += p * vj[d];
          }
          const double inv = 1.0 / sum;
          for (int64_t d = 0; d < D; ++d) oi[d] = static_cast<float>(acc[d] * inv);
          if (lse) lse[(b * Hq + h) * Nq + i] = static_cast<float>(m + std::log(sum));
        }
      }
    }
  }
}

}  // namespace minillm::cpu
