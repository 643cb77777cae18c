// CPU LayerNorm and RMSNorm over the last dim, fp32 in and out.
//
// One row per iteration, OpenMP parallel over rows. The row statistics are reduced in double
// (LayerNorm: mean, then the variance as the mean of (x - mean)^2, a stable two-pass form; RMSNorm:
// the mean of x^2) and the normalisation is applied in double before rounding to float. Every pass
// reads the whole row before the write pass, and the write pass reads x[i] before writing y[i], so
// x and y may alias.
#include <cmath>

#include "cpu/ops.h"

namespace minillm::cpu {

void layernorm(const float* x, const float* w, const float* b, float eps, int64_t T, int64_t H, float* y) {
  // x, y: [T, H], w: [H], b: [H] or null
  if (H <= 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * H;  // [H]
    float* yt = y + t * H;        // [H]
    double sum = 0.0;
    for (int64_t i = 0; i < H; ++i) sum += xt[i];
    const double mean = sum / static_cast<double>(H);
    double sq = 0.0;
    for (int64_t i = 0; i < H; ++i) {
      const double d = xt[i] - mean;
      sq += d * d;
    }
    const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(H) + static_cast<double>(eps));
    for (int64_t i = 0; i < H; ++i) {
      const double v = (xt[i] - mean) * rstd * w[i] + (b ? static_cast<double>(b[i]) : 0.0);
      yt[i] = static_cast<float>(v);
    }
  }
}

void rmsnorm(const float* x, const float* w, float eps, int64_t T, int64_t H, float* y) {
  // x, y: [T, H], w: [H]
  if (H <= 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * H;  // [H]
    float* yt = y + t * H;        // [H]
    double sq = 0.0;
    for (int64_t i = 0; i < H; ++i) sq += static_cast<double>(xt[i]) * xt[i];
    const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(H) + static_cast<double>(eps));
    for (int64_t i = 0; i < H; ++i) yt[i] = static_cast<float>(xt[i] * rstd * w[i]);
  }
}

}  // namespace minillm::cpu
