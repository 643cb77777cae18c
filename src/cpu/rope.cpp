// CPU rotary position embedding, in place, NeoX/HF "rotate_half" convention.
//
// For each token t, head h and i in [0, D/2): angle = pos[t] * theta^(-2i/D), and the pair
// (x[i], x[i + D/2]) becomes (x[i] cos - x[i + D/2] sin, x[i + D/2] cos + x[i] sin). The inverse
// frequencies, the angles, their cos/sin and the rotation are computed in double; the cos/sin of a
// token are computed once and shared by its heads. OpenMP parallel over tokens (per-thread scratch
// of D/2 cos/sin pairs). D is expected even (an odd D leaves the last element of each head as is).
#include <cmath>
#include <vector>

#include "cpu/ops.h"

namespace minillm::cpu {

void rope(float* x, int64_t T, int64_t heads, int64_t D, int64_t row_stride, const int32_t* pos, float theta) {
  // x: [T, heads, D] with row stride row_stride, pos: [T]
  const int64_t half = D / 2;
  if (T <= 0 || half <= 0) return;
  std::vector<double> inv_freq(static_cast<size_t>(half));  // [D/2]
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(D));
  }
#pragma omp parallel
  {
    std::vector<double> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));  // [D/2] each
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos[t]) * inv_freq[i];
        cos_t[i] = std::cos(angle);
        sin_t[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* xh = x + t * row_stride + h * D;  // [D]
        for (int64_t i = 0; i < half; ++i) {
          const double x0 = xh[i], x1 = xh[i + half];
          xh[i] = static_cast<float>(x0 * cos_t[i] - x1 * sin_t[i]);
          xh[i + half] = static_cast<float>(x1 * cos_t[i] + x0 * sin_t[i]);
        }
      }
    }
  }
}

}  // namespace minillm::cpu
