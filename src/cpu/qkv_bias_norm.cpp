// CPU q/k/v bias and qk-norm, in place on a fused QKV activation, fp32.
//
// Per token row (OpenMP parallel over rows): q, k, v += their biases; then RMSNorm of q and of k,
// either per head (each head_dim slice normalised alone, one weight vector [D] shared by all heads:
// Qwen3-MoE) or over the whole projection (q [Hq * D] and k [Hkv * D] each as one vector: OLMoE).
// The statistics are reduced in double, as cpu::rmsnorm does (it does the normalisation here).
#include "cpu/ops.h"

namespace minillm::cpu {

void qkv_bias_norm(float* qkv, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, const float* bias, const float* q_norm,
                   const float* k_norm, bool per_head, float eps) {
  // qkv: [T, (Hq + 2 Hkv) * D]; bias: [(Hq + 2 Hkv) * D] or null; q_norm, k_norm: [D] (per_head) or
  // [Hq * D] / [Hkv * D], or null (no qk-norm)
  const int64_t qd = Hq * D, kvd = Hkv * D, row = qd + 2 * kvd;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* r = qkv + t * row;  // [row]
    if (bias) {
      for (int64_t i = 0; i < row; ++i) r[i] += bias[i];
    }
    if (!q_norm) continue;
    if (per_head) {
      rmsnorm(r, q_norm, eps, Hq, D, r);             // q: [Hq, D]
      rmsnorm(r + qd, k_norm, eps, Hkv, D, r + qd);  // k: [Hkv, D]
    } else {
      rmsnorm(r, q_norm, eps, 1, qd, r);
      rmsnorm(r + qd, k_norm, eps, 1, kvd, r + qd);
    }
  }
}

}  // namespace minillm::cpu
