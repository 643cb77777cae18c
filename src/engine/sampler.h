// Sampling on the device: what one step's sampling op reads, and the math both backends share.
//
// Per logits row r (one per sequence that draws a token this step), in this order:
//   1. logprobs: log_softmax of the model's raw logits (before penalties and temperature): the
//      chosen token's and, on request, the top n (largest first, ties to the lower id);
//   2. penalties on the tokens the sequence has seen (PenaltyEntry list of the row): repetition
//      (HF: l > 0 ? l / r : l * r, prompt and output tokens), presence (l -= p if the token was
//      generated), frequency (l -= f * times generated);
//   3. temperature 0: greedy, argmax (ties to the lower id). Otherwise z = l / temperature and
//   4. top-k keeps z >= the k-th largest z (ties at the boundary are kept);
//   5. top-p keeps the smallest set of largest z whose softmax mass (renormalised over what top-k
//      kept) reaches top_p (ties at the boundary kept);
//   6. min-p keeps z >= max z + log(min_p) (probability at least min_p times the largest);
//   7. the draw is the Gumbel-max trick over what is kept: argmax z_i + g_i, with
//      g_i = -log(-log(u_i)) and u_i = Philox4x32-10(key = seed, counter = (i, step, 0, 0)): a
//      sample of softmax(z) restricted to the kept set. u depends only on (seed, step, token id),
//      so a seeded request draws the same tokens whatever else shares its batch, and after a
//      preemption (step = the index of the output token being drawn).
// Thresholds (steps 4, 5) are found by a bitwise search over order-preserving 32-bit keys of z
// (32 passes, each a fixed-order reduction), so results are deterministic run to run.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MINILLM_HD __host__ __device__ __forceinline__
#else
#define MINILLM_HD inline
#endif

namespace minillm {

// One row's parameters as the sampling op reads them (an array of R in device memory).
struct SampleRowParams {
  float temperature = 1.f;  // 0: greedy
  float top_p = 1.f;        // (0, 1]
  float min_p = 0.f;        // [0, 1]
  float repetition_penalty = 1.f;
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  int32_t top_k = 0;  // 0: off
  int32_t pen_begin = 0, pen_end = 0;  // this row's entries in the PenaltyEntry array
  int32_t step = 0;                    // index of the output token being drawn
  uint32_t seed_lo = 0, seed_hi = 0;
};

// A token the sequence has seen: output_count = times generated (0: only in the prompt). `raw`
// is scratch for the sampling op (it keeps the unpenalised logit there).
struct PenaltyEntry {
  int32_t token;
  int32_t output_count;
  float raw;
};

// The sampling op's arguments beyond the logits (device pointers).
struct SampleArgs {
  const SampleRowParams* params = nullptr;  // [R]
  PenaltyEntry* penalties = nullptr;        // [P] (read, and `raw` written)
  int n_top = 0;                            // top logprobs per row (0: none)
  int32_t* tokens = nullptr;                // [R] the drawn tokens
  float* logprobs = nullptr;                // [R] their logprobs
  int32_t* top_ids = nullptr;               // [R, n_top]
  float* top_logprobs = nullptr;            // [R, n_top]
};

// Philox4x32-10 (Salmon et al., SC'11): counter (c0..c3), key (k0, k1) -> 4 random words.
MINILLM_HD void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The Gumbel noise of token `i` at output index `step` of a request seeded `seed`: a float in
// (about -2.8, 17) from u in (0, 1) with 24 random bits.
MINILLM_HD float gumbel_noise(uint32_t seed_lo, uint32_t seed_hi, int32_t step, int32_t i) {
  uint32_t c[4] = {static_cast<uint32_t>(i), static_cast<uint32_t>(step), 0u, 0u};
  philox4x32_10(c, seed_lo, seed_hi);
  const float u = (static_cast<float>(c[0] >> 8) + 0.5f) * (1.0f / 16777216.0f);
  return -logf(-logf(u));
}

// A float's order-preserving unsigned key: a < b  <=>  key(a) < key(b) (for non-NaN floats).
MINILLM_HD uint32_t order_key(float f) {
#if defined(__CUDA_ARCH__)
  const uint32_t b = __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, 4);
#endif
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The penalised logit of a token the sequence has seen.
MINILLM_HD float apply_penalties(float l, const SampleRowParams& p, int32_t output_count) {
  if (p.repetition_penalty != 1.f) l = l > 0.f ? l / p.repetition_penalty : l * p.repetition_penalty;
  if (output_count > 0) l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(output_count);
  return l;
}

}  // namespace minillm
