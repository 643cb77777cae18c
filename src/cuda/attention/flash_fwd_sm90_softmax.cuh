// Online softmax of the Hopper FlashAttention forward kernel's consumers (flash_fwd_sm90.cuh).
//
// A consumer warpgroup holds a 64 x kBlockN score tile S in wgmma's accumulator layout: thread
// (warp w, lane l) has rows 16 w + l / 4 + 8 h (h = 0, 1) and columns 8 j + 2 (l % 4) + e (e = 0, 1),
// at s[4 j + 2 h + e]; a row's values are spread over the 4 threads of a quad. Per key block:
//   mask        scores of keys past the sequence or above the causal diagonal -> -inf (masked blocks)
//   row max     a tree of 4 partial maxima per row, both rows interleaved, then over the quad
//   rescale     conditional (FlashAttention-4's): the maximum in use moves only when the row's maximum
//               passes it by more than 2^kRescaleLog2; O and the row sum are rescaled by corr then
//   exp2        P = exp2(S * scale * log2(e) - m * scale * log2(e)), one FFMA + ex2 per score; P
//               written back into S or packed into the A fragments of O += P V as it is computed
//   row sum     2 partial sums per row (the quad's sum is taken once, at the end: finish)
#pragma once
#include <cmath>

#include "cuda/attention/flash_fwd_sm90_traits.cuh"

namespace minillm::cuda::attn {

// 2^x for finite x <= 0 on the FMA pipe (no MUFU): x = j + f with j = round(x) and f in [-0.5, 0.5];
// 2^f by a degree-3 polynomial (max relative error 7.5e-5, below half an fp16 ulp), 2^j added to the
// exponent bits. x is clamped at -126 (2^-126 instead of ~0: only for unmasked scores, never -inf).
__device__ __forceinline__ float exp2_poly(float x) {
  x = fmaxf(x, -126.f);
  const float t = x + 12582912.f;  // 1.5 * 2^23: round(x) lands in the low mantissa bits of t
  const float f = x - (t - 12582912.f);
  float p = fmaf(0.05517100170254707f, f, 0.24260950088500977f);
  p = fmaf(p, f, 0.6932609677314758f);
  p = fmaf(p, f, 0.9999281764030457f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));  // t's high bits shift out
}

template <typename Kt, typename T>
struct Sm90Softmax {
  static constexpr int BN = Kt::kBlockN;
  static constexpr float kRescaleLog2 = 8.f;  // conditional rescaling's threshold
  float scale_log2;  // softmax scale * log2(e)
  float row_max[2];  // the maximum in use of this thread's rows h (raw scores; -inf before any key)
  float row_sum[2];  // this thread's partial sum of P over its columns (quad sum: finish)

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[h] = -INFINITY;
      row_sum[h] = 0.f;
    }
  }

  // Scores of block n at or past key_limit[h] (keys < key_limit[h] are visible to row h) -> -inf.
  __device__ __forceinline__ static void mask(float (&s)[BN / 2], int n, const int (&key_limit)[2], int quad_col) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int limit = key_limit[h] - n * BN - 2 * quad_col;  // column 8 j + e visible iff < limit
#pragma unroll
      for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (8 * j + e >= limit) s[4 * j + 2 * h + e] = -INFINITY;
    }
  }

  // Row maxima of S and the maximum in use: corr[h] is the factor by which row h's O and sum must be
  // scaled (1 when the maximum in use stays), mx_scaled[h] the maximum in use times scale_log2.
  template <bool kMask>
  __device__ __forceinline__ void update_max(const float (&s)[BN / 2], float (&corr)[2], float (&mx_scaled)[2]) {
    float part[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int t = 0; t < 4; ++t) part[h][t] = fmaxf(s[4 * t + 2 * h], s[4 * t + 2 * h + 1]);
#pragma unroll
    for (int j = 4; j < BN / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        part[h][j % 4] = fmaxf(part[h][j % 4], fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
    float mx[2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
      mx[h] = fmaxf(fmaxf(fmaxf(part[h][0], part[h][1]), fmaxf(part[h][2], part[h][3])), row_max[h]);
    detail::quad_max2(mx[0], mx[1]);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // Until the maximum moves, the exponentials are taken against the stale maximum (P <= 2^8: same
      // relative precision, no overflow) and O keeps its scale. A row's first key moves it from -inf
      // (grow = +inf, corr = 0).
      const float grow = (mx[h] - row_max[h]) * scale_log2;  // NaN while both are -inf: no move
      corr[h] = 1.f;
      if (grow > kRescaleLog2) {
        corr[h] = fast_exp2(-grow);
        row_max[h] = mx[h];
      }
      // A row that has seen no key yet keeps -inf: subtract 0 so that exp2 gives 0, not NaN.
      mx_scaled[h] = (kMask && row_max[h] == -INFINITY) ? 0.f : row_max[h] * scale_log2;
    }
  }

  // P = exp2(S scale_log2 - mx_scaled), into s (kPack false) or packed into pa (the A fragments of the
  // k16 steps of O += P V: the conversions fill the MUFU's issue gaps); the row sums, rescaled by corr.
  template <bool kMask, bool kPack>
  __device__ __forceinline__ void exponentiate(float (&s)[BN / 2], uint32_t (&pa)[BN / 16][4],
                                               const float (&mx_scaled)[2], const float (&corr)[2]) {
    float sum[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float pe[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = fmaf(s[4 * j + 2 * h + e], scale_log2, -mx_scaled[h]);
          const bool poly = !kMask && Kt::kExp2Poly > 0 && j % max(Kt::kExp2Poly, 1) == Kt::kExp2Poly - 1;
          pe[e] = poly ? exp2_poly(x) : fast_exp2(x);  // (j is unrolled: folded)
          sum[h][j % 2] += pe[e];
          if constexpr (!kPack) s[4 * j + 2 * h + e] = pe[e];
        }
        // (row h, columns 8 j + 2 quad_col + {0, 1}): A-fragment register 2 (j % 2) + h of k16 step j / 2
        if constexpr (kPack) pa[j / 2][2 * (j % 2) + h] = pack2<T>(pe[0], pe[1]);
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * corr[h] + (sum[h][0] + sum[h][1]);
  }

  // One key block: mask (kMask), row maxima, exponentials and sums; corr: O's rescale factors.
  template <bool kMask, bool kPack>
  __device__ __forceinline__ void online(float (&s)[BN / 2], uint32_t (&pa)[BN / 16][4], int n,
                                         const int (&key_limit)[2], int quad_col, float (&corr)[2]) {
    if constexpr (kMask) mask(s, n, key_limit, quad_col);
    float mx_scaled[2];
    update_max<kMask>(s, corr, mx_scaled);
    exponentiate<kMask, kPack>(s, pa, mx_scaled, corr);
  }

  // Row h's sum over the quad (l), and its log-sum-exp of the scaled scores (-inf without keys).
  __device__ __forceinline__ float row_total(int h) const { return detail::quad_sum(row_sum[h]); }
  __device__ __forceinline__ float lse(int h, float l, float scale) const {
    return l > 0.f ? row_max[h] * scale + logf(l) : -INFINITY;
  }
};

}  // namespace minillm::cuda::attn
