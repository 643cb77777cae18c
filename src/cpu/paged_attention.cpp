// CPU paged KV cache ops (fp32): kv_cache_write and paged_attention, the reference of the CUDA
// kernels (src/cuda/attention/paged_*.cu) and the CPU backend's attention over the cache.
//
// paged_attention: one (query token, query head) per iteration, OpenMP-parallel over all of them.
// A row reads its visible keys through the block table (position p -> page block_table[s][p / 64],
// row p % 64), computes the scores in double into a per-thread buffer (O(context) scratch), takes
// the max m, p_j = exp(s_j - m) and o = sum_j p_j v_j / sum_j p_j in double (safe for any score
// magnitude), lse = m + log(sum_j p_j). Everything the kernels trust is validated here first.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "minillm/core/check.h"
#include "minillm/kv_cache.h"

namespace minillm::cpu {

void kv_cache_write(const float* k, const float* v, int64_t k_row, int64_t v_row, const int32_t* slot_mapping,
                    int64_t T, int64_t Hkv, int64_t D, float* k_cache, float* v_cache, int64_t num_slots) {
  const int64_t row = Hkv * D;  // elements per cache row (one token, all kv heads)
  for (int64_t t = 0; t < T; ++t) {
    const int32_t slot = slot_mapping[t];
    if (slot < 0) continue;
    MINILLM_CHECK(slot < num_slots, "slot_mapping[" << t << "] = " << slot << " must be < num_pages * "
                                                   << kPageSize << " = " << num_slots);
    std::memcpy(k_cache + slot * row, k + t * k_row, static_cast<size_t>(row) * sizeof(float));
    std::memcpy(v_cache + slot * row, v + t * v_row, static_cast<size_t>(row) * sizeof(float));
  }
}

void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_table,
                     int64_t max_pages, const int32_t* context_lens, const int32_t* cu_seqlens_q, int64_t S,
                     int64_t num_pages, int64_t Hq, int64_t Hkv, int64_t D, bool causal, float scale, float* out,
                     float* lse) {
  MINILLM_CHECK(S >= 0, "num_seqs = " << S << " must be >= 0");
  MINILLM_CHECK(Hq > 0 && Hkv > 0 && Hq % Hkv == 0,
                "num_kv_heads = " << Hkv << " must divide num_heads = " << Hq);
  MINILLM_CHECK(D > 0, "head_dim = " << D << " must be > 0");
  // Validate the whole batch before computing anything.
  std::vector<int64_t> first(static_cast<size_t>(S) + 1, 0);  // query row offsets
  for (int64_t s = 0; s < S; ++s) {
    const int64_t n = cu_seqlens_q ? int64_t{cu_seqlens_q[s + 1]} - cu_seqlens_q[s] : 1;
    if (cu_seqlens_q) {
      MINILLM_CHECK(s > 0 || cu_seqlens_q[0] == 0, "cu_seqlens_q[0] = " << cu_seqlens_q[0] << " must be 0");
      MINILLM_CHECK(n >= 0, "cu_seqlens_q must be non-decreasing: cu_seqlens_q[" << s + 1 << "] = "
                                << cu_seqlens_q[s + 1] << " < cu_seqlens_q[" << s << "] = " << cu_seqlens_q[s]);
    }
    const int64_t len = context_lens[s];
    MINILLM_CHECK(len >= n && len <= max_pages * kPageSize,
                  "context_lens[" << s << "] = " << len << " must be in [" << n << " (its query tokens), "
                                  << max_pages * kPageSize << " (max_pages * " << kPageSize << ")]");
    for (int64_t pg = 0; pg < (len + kPageSize - 1) / kPageSize; ++pg) {
      const int32_t page = block_table[s * max_pages + pg];
      MINILLM_CHECK(page >= 0 && page < num_pages, "block_table[" << s << ", " << pg << "] = " << page
                                                                  << " must be in [0, " << num_pages << ")");
    }
    first[static_cast<size_t>(s) + 1] = first[static_cast<size_t>(s)] + n;
  }
  const int64_t T = first[static_cast<size_t>(S)];
  if (T == 0) return;
  // Each query row's sequence.
  std::vector<int32_t> seq_of(static_cast<size_t>(T));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = first[static_cast<size_t>(s)]; t < first[static_cast<size_t>(s) + 1]; ++t)
      seq_of[static_cast<size_t>(t)] = static_cast<int32_t>(s);
  int64_t max_len = 1;
  for (int64_t s = 0; s < S; ++s) max_len = std::max<int64_t>(max_len, context_lens[s]);
  const double sc = scale > 0.f ? scale : 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t group = Hq / Hkv;
  const int64_t row = Hkv * D;  // cache elements per token

#pragma omp parallel
  {
    std::vector<double> scores(static_cast<size_t>(max_len));  // [context]
    std::vector<double> acc(static_cast<size_t>(D));           // [D]
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t s = seq_of[static_cast<size_t>(t)];
        const int64_t n = first[static_cast<size_t>(s) + 1] - first[static_cast<size_t>(s)];
        const int64_t len = context_lens[s];
        const int64_t i = t - first[static_cast<size_t>(s)];  // query index within the sequence
        const int64_t visible = causal ? len - n + i + 1 : len;
        const int64_t hk = h / group;
        const float* qi = q + (t * Hq + h) * D;  // [D]
        float* oi = out + (t * Hq + h) * D;      // [D]
        auto key_row = [&](const float* cache, int64_t p) {  // [D] of position p, kv head hk
          const int64_t page = block_table[s * max_pages + p / kPageSize];
          return cache + (page * kPageSize + p % kPageSize) * row + hk * D;
        };
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < visible; ++j) {
          const float* kj = key_row(k_cache, j);
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qi[d]) * kj[d];
          scores[static_cast<size_t>(j)] = dot * sc;
          m = std::max(m, scores[static_cast<size_t>(j)]);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0.0;
        for (int64_t j = 0; j < visible; ++j) {
          const double p = std::exp(scores[static_cast<size_t>(j)] - m);
          sum += p;
          const float* vj = key_row(v_cache, j);
          for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += p * vj[d];
        }
        for (int64_t d = 0; d < D; ++d)
          oi[d] = visible > 0 ? static_cast<float>(acc[static_cast<size_t>(d)] / sum) : 0.f;
        if (lse)
          lse[t * Hq + h] =
              visible > 0 ? static_cast<float>(m + std::log(sum)) : -std::numeric_limits<float>::infinity();
      }
    }
  }
}

}  // namespace minillm::cpu
