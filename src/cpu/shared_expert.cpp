// CPU shared expert with a sigmoid gate (Qwen2-MoE), fp32, added onto the routed experts' output:
//   y[t] += sigmoid(x[t] . gate) * w2 @ (silu(w1 x[t]) * (w3 x[t]))
// The gate/up projection is one linear over the stacked [2 Fs, H] matrix (w1 rows, then w3 rows),
// then the SwiGLU (OpenMP parallel over tokens), the down projection, and the gated add.
#include <cmath>
#include <vector>

#include "cpu/ops.h"

namespace minillm::cpu {

void shared_expert(const float* x, const float* w13, const float* w2, const float* gate, int64_t T, int64_t H,
                   int64_t Fs, float* y) {
  // x, y: [T, H], w13: [2 Fs, H], w2: [H, Fs], gate: [H]
  if (T <= 0) return;
  std::vector<float> gu(static_cast<size_t>(T * 2 * Fs));  // [T, 2 Fs]
  linear(x, w13, nullptr, T, H, 2 * Fs, gu.data());
  std::vector<float> a(static_cast<size_t>(T * Fs));  // [T, Fs]
  std::vector<float> g(static_cast<size_t>(T));       // [T] gate logits
  linear(x, gate, nullptr, T, H, 1, g.data());
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t f = 0; f < Fs; ++f) {
      const float u = gu[t * 2 * Fs + f];
      a[t * Fs + f] = u / (1.0f + std::exp(-u)) * gu[t * 2 * Fs + Fs + f];
    }
  }
  std::vector<float> o(static_cast<size_t>(T * H));  // [T, H]
  linear(a.data(), w2, nullptr, T, Fs, H, o.data());
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float s = 1.0f / (1.0f + std::exp(-g[t]));
    for (int64_t i = 0; i < H; ++i) y[t * H + i] += s * o[t * H + i];
  }
}

}  // namespace minillm::cpu
