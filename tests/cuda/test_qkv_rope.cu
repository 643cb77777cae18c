// The engine's fused QKV projection (cuda::engine::qkv_rope: the grouped GEMM as a dense GEMM with the RoPE epilogue),
// against the CPU reference cpu::linear then cpu::rope (fp32/double) on the same 16-bit inputs.
// With a q/k/v bias and per-head qk-norm (the rope_norm epilogues) the reference is cpu::linear, then
// cpu::qkv_bias_norm, then cpu::rope. Criterion: one rounding of the output to 16 bits, so per element
// |y - y_ref| <= 0.01 * max|y_ref| + 0.01 * |y_ref| and the relative RMS error <= 5e-3. Row counts
// that are not multiples of the tile (128), positions that wrap (T = B * N), head dims 64 and 128,
// the v columns left unrotated.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/ops.h"
#include "cuda/engine/ops.h"
#include "minillm/core/tensor.h"
#include "minillm/core/cuda_check.h"
#include "minillm/core/dtype.h"

namespace minillm {
namespace {

bool have_sm90() {
  int n = 0, major = 0, minor = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return major == 9 && minor == 0;
}

struct Case {
  int B, N, H, heads, kv_heads, D;
  DType dtype = DType::bf16;
  bool bias = false, norm = false;
};

void run_case(const Case& c) {
  char trace[128];
  std::snprintf(trace, sizeof trace, "B%d N%d H%d heads %d/%d D%d %s bias %d norm %d", c.B, c.N, c.H, c.heads,
                c.kv_heads, c.D, dtype_name(c.dtype), c.bias, c.norm);
  SCOPED_TRACE(trace);
  const int64_t T = int64_t(c.B) * c.N, H = c.H, cols = int64_t(c.heads + 2 * c.kv_heads) * c.D;
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto round16 = [&](float v, uint16_t& bits) {
    bits = c.dtype == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
    return c.dtype == DType::bf16 ? bf16_to_f32(bits) : f16_to_f32(bits);
  };
  std::vector<float> x(T * H), w(cols * H);
  std::vector<uint16_t> xb(x.size()), wb(w.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = round16(dist(rng), xb[i]);
  for (size_t i = 0; i < w.size(); ++i) w[i] = round16(dist(rng) / std::sqrt(float(H)), wb[i]);

  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<float> bias(cols), qn(c.D), kn(c.D);
  for (auto& v : bias) v = u(rng);
  for (auto& v : qn) v = 1.f + u(rng);
  for (auto& v : kn) v = 1.f + u(rng);
  const float eps = 1e-6f;

  // Reference: y = x w^T (+ bias, per-head RMSNorm of q and k), then RoPE on the q and k heads at
  // position t % N.
  std::vector<float> ref(T * cols);
  cpu::linear(x.data(), w.data(), nullptr, T, H, cols, ref.data());
  if (c.bias || c.norm)
    cpu::qkv_bias_norm(ref.data(), T, c.heads, c.kv_heads, c.D, c.bias ? bias.data() : nullptr,
                       c.norm ? qn.data() : nullptr, c.norm ? kn.data() : nullptr, true, eps);
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t % c.N);
  const float theta = 10000.0f;
  cpu::rope(ref.data(), T, c.heads + c.kv_heads, c.D, cols, pos.data(), theta);

  std::vector<float2> table(size_t(c.N) * c.D / 2);
  cuda::engine::rope_table(table.data(), c.N, c.D, theta);
  Buffer dx(xb.size() * 2, Device::cuda), dw(wb.size() * 2, Device::cuda), dy(T * cols * 2, Device::cuda);
  Buffer dtab(table.size() * sizeof(float2), Device::cuda), counter(sizeof(int32_t), Device::cuda);
  copy_bytes(dx.data(), Device::cuda, xb.data(), Device::cpu, xb.size() * 2);
  copy_bytes(dw.data(), Device::cuda, wb.data(), Device::cpu, wb.size() * 2);
  copy_bytes(dtab.data(), Device::cuda, table.data(), Device::cpu, table.size() * sizeof(float2));
  MINILLM_CUDA_CHECK(cudaMemset(counter.data(), 0, sizeof(int32_t)));
  Buffer dbias(bias.size() * 4, Device::cuda), dqn(qn.size() * 4, Device::cuda), dkn(kn.size() * 4, Device::cuda);
  copy_bytes(dbias.data(), Device::cuda, bias.data(), Device::cpu, bias.size() * 4);
  copy_bytes(dqn.data(), Device::cuda, qn.data(), Device::cpu, qn.size() * 4);
  copy_bytes(dkn.data(), Device::cuda, kn.data(), Device::cpu, kn.size() * 4);
  cuda::engine::QkvExtras ex;
  ex.bias = c.bias ? static_cast<const float*>(dbias.data()) : nullptr;
  ex.q_norm = c.norm ? static_cast<const float*>(dqn.data()) : nullptr;
  ex.k_norm = c.norm ? static_cast<const float*>(dkn.data()) : nullptr;
  ex.q_heads = c.heads;
  ex.eps = eps;

  for (int rep = 0; rep < 2; ++rep)  // twice: the counter is back at 0
    cuda::engine::qkv_rope(c.dtype, dx.data(), dw.data(), dy.data(), T, H, cols, c.N, c.heads + c.kv_heads, c.D,
                           static_cast<const float2*>(dtab.data()), static_cast<int32_t*>(counter.data()), nullptr, ex);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  int32_t left = -1;
  copy_bytes(&left, Device::cpu, counter.data(), Device::cuda, sizeof(int32_t));
  EXPECT_EQ(left, 0) << "the tile counter is not reset";

  std::vector<uint16_t> yb(T * cols);
  copy_bytes(yb.data(), Device::cpu, dy.data(), Device::cuda, yb.size() * 2);
  double max_ref = 0, err2 = 0, ref2 = 0;
  for (float v : ref) max_ref = std::max(max_ref, double(std::fabs(v)));
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float y = c.dtype == DType::bf16 ? bf16_to_f32(yb[i]) : f16_to_f32(yb[i]);
    ASSERT_TRUE(std::isfinite(y)) << "element " << i;
    const double d = double(y) - ref[i];
    err2 += d * d;
    ref2 += double(ref[i]) * ref[i];
    if (std::fabs(d) > 0.01 * max_ref + 0.01 * std::fabs(ref[i]) && bad++ < 5)
      ADD_FAILURE() << "row " << i / cols << " col " << i % cols << ": " << y << " vs " << ref[i];
  }
  EXPECT_EQ(bad, 0);
  EXPECT_LE(std::sqrt(err2 / ref2), 5e-3);
}

TEST(QkvRopeCuda, MatchesCpuLinearThenRope) {
  if (!have_sm90()) GTEST_SKIP() << "needs a compute capability 9.0 GPU";
  run_case({3, 100, 256, 4, 2, 64});                 // T = 300: a partial last tile; q, k, v in one 512-col tile
  run_case({2, 77, 192, 2, 1, 128});                 // head dim 128, K not a multiple of 64
  run_case({1, 640, 512, 8, 4, 64, DType::f16});     // fp16, several n-blocks, 5 m-blocks
  run_case({4, 96, 128, 6, 2, 128, DType::bf16});    // head dim 128, rope columns end inside a tile
}

TEST(QkvRopeCuda, BiasAndPerHeadNormInTheEpilogue) {
  if (!have_sm90()) GTEST_SKIP() << "needs a compute capability 9.0 GPU";
  run_case({3, 100, 256, 4, 2, 64, DType::bf16, true, false});    // Qwen2-MoE: bias only
  run_case({2, 77, 192, 8, 2, 128, DType::bf16, false, true});    // Qwen3-MoE: per-head norm, GQA 4
  run_case({1, 300, 256, 6, 2, 128, DType::f16, true, true});     // both, k heads end inside a tile
  run_case({2, 130, 128, 12, 4, 64, DType::bf16, false, true});   // head dim 64: four heads per tile
}

}  // namespace
}  // namespace minillm
