// The CUDA ops of the Hugging Face architectures against their CPU references on the same 16-bit
// inputs: qkv_bias_norm_rope (q/k/v bias, qk-norm per head and over the whole projection, RoPE at
// per-token positions) against cpu::qkv_bias_norm + cpu::rope, the paged-cache store of it and of rope
// (bitwise the op's own k and v), and the shared expert's elementwise kernels (swiglu_rows, shared_expert_add)
// against host loops in fp32. Criterion: the output rounded to 16 bits (twice with both norm and
// RoPE), so per element |y - y_ref| <= 2^-7 * |y_ref| + 1e-3 (bf16) and the relative RMS error <= 5e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "cpu/ops.h"
#include "cuda/engine/ops.h"
#include "minillm/core/cuda_check.h"
#include "minillm/core/dtype.h"
#include "minillm/core/tensor.h"

namespace minillm {
namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

struct Host16 {  // values rounded to bf16, kept both as bits and as fp32
  std::vector<uint16_t> bits;
  std::vector<float> f;
  Host16(size_t n, std::mt19937& rng, float scale = 1.f) : bits(n), f(n) {
    std::normal_distribution<float> d(0.f, scale);
    for (size_t i = 0; i < n; ++i) {
      bits[i] = f32_to_bf16(d(rng));
      f[i] = bf16_to_f32(bits[i]);
    }
  }
};

template <typename T>
Buffer upload(const std::vector<T>& v) {
  Buffer b(v.size() * sizeof(T), Device::cuda);
  copy_bytes(b.data(), Device::cuda, v.data(), Device::cpu, v.size() * sizeof(T));
  return b;
}

std::vector<uint16_t> download_bits(const Buffer& b, size_t n) {
  std::vector<uint16_t> h(n);
  copy_bytes(h.data(), Device::cpu, b.data(), Device::cuda, n * 2);
  return h;
}

std::vector<float> download_bf16(const Buffer& b, size_t n) {
  const std::vector<uint16_t> h = download_bits(b, n);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = bf16_to_f32(h[i]);
  return f;
}

// abs_tol: the per-element absolute slack (1e-3 for one rounding; more where an intermediate
// rounding of a RoPE input can flip by one unit of its last place).
void expect_close(const std::vector<float>& y, const std::vector<float>& ref, double abs_tol = 1e-3) {
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_LE(std::fabs(y[i] - ref[i]), std::ldexp(1.0, -7) * std::fabs(ref[i]) + abs_tol) << "element " << i;
    err2 += double(y[i] - ref[i]) * (y[i] - ref[i]);
    ref2 += double(ref[i]) * ref[i];
  }
  EXPECT_LE(std::sqrt(err2 / ref2), 5e-3);
}

struct QkvCase {
  int64_t T;
  int Hq, Hkv, D;
  bool bias, norm, per_head, rope;
};

// What qkv_bias_norm_rope does for case c, with the device arrays of its bias, norms, table and positions.
cuda::engine::QkvFinish finish_of(const QkvCase& c, const Buffer& db, const Buffer& dq, const Buffer& dk,
                                  const Buffer& dt, const Buffer& dp, float eps,
                                  const cuda::engine::KvStore& store = {}) {
  cuda::engine::QkvFinish f;
  f.bias = c.bias ? static_cast<const float*>(db.data()) : nullptr;
  f.q_norm = c.norm ? static_cast<const float*>(dq.data()) : nullptr;
  f.k_norm = c.norm ? static_cast<const float*>(dk.data()) : nullptr;
  f.Hq = c.Hq, f.Hkv = c.Hkv, f.D = c.D;
  f.per_head = c.per_head;
  f.eps = eps;
  f.cos_sin = c.rope ? static_cast<const float2*>(dt.data()) : nullptr;
  f.positions = static_cast<const int32_t*>(dp.data());
  f.store = store;
  return f;
}

void run_qkv(const QkvCase& c) {
  SCOPED_TRACE(testing::Message() << "T" << c.T << " Hq" << c.Hq << " Hkv" << c.Hkv << " D" << c.D << " bias "
                                  << c.bias << " norm " << c.norm << " per_head " << c.per_head << " rope " << c.rope);
  std::mt19937 rng(7);
  const int64_t row = int64_t(c.Hq + 2 * c.Hkv) * c.D, qd = int64_t(c.Hq) * c.D, kvd = int64_t(c.Hkv) * c.D;
  Host16 qkv(size_t(c.T * row), rng, 2.f);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<float> bias(static_cast<size_t>(row));
  std::vector<float> qn(static_cast<size_t>(c.per_head ? c.D : qd)), kn(static_cast<size_t>(c.per_head ? c.D : kvd));
  for (auto& v : bias) v = u(rng);
  for (auto& v : qn) v = 1.f + u(rng);
  for (auto& v : kn) v = 1.f + u(rng);
  const float eps = 1e-6f;
  std::vector<float> ref = qkv.f;  // [T, row]
  cpu::qkv_bias_norm(ref.data(), c.T, c.Hq, c.Hkv, c.D, c.bias ? bias.data() : nullptr, c.norm ? qn.data() : nullptr,
                     c.norm ? kn.data() : nullptr, c.per_head, eps);
  const int max_pos = 50;
  const float theta = 10000.f;
  std::vector<int32_t> pos(static_cast<size_t>(c.T));
  for (auto& p : pos) p = static_cast<int32_t>(rng() % max_pos);
  const bool two_roundings = c.rope && (c.bias || c.norm);
  if (two_roundings)  // the kernel rounds to bf16 between the norm and RoPE, as transformers' bf16 does
    for (auto& v : ref) v = bf16_to_f32(f32_to_bf16(v));
  if (c.rope) cpu::rope(ref.data(), c.T, c.Hq + c.Hkv, c.D, row, pos.data(), theta);
  double ref_max = 0;
  for (float v : ref) ref_max = std::max(ref_max, double(std::fabs(v)));
  std::vector<float2> table(static_cast<size_t>(max_pos * c.D / 2));
  cuda::engine::rope_table(table.data(), max_pos, c.D, theta);
  Buffer d = upload(qkv.bits), db = upload(bias), dq = upload(qn), dk = upload(kn), dt = upload(table), dp = upload(pos);
  cuda::engine::qkv_bias_norm_rope(DType::bf16, d.data(), c.T, finish_of(c, db, dq, dk, dt, dp, eps), nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  expect_close(download_bf16(d, ref.size()), ref, two_roundings ? std::ldexp(ref_max, -6) : 1e-3);
}

TEST(CheckpointOpsCuda, QkvBiasNormRope) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  for (bool rope : {false, true}) {
    run_qkv({5, 4, 2, 16, true, false, false, rope});     // Qwen2-MoE: bias only
    run_qkv({37, 32, 4, 128, false, true, true, rope});   // Qwen3-30B-A3B: per-head qk-norm
    run_qkv({19, 16, 16, 128, false, true, false, rope});  // OLMoE-1B-7B: qk-norm over q (2048) and k (2048)
    run_qkv({3, 4, 2, 32, true, true, true, rope});       // bias then per-head norm
    run_qkv({3, 6, 3, 24, true, true, false, rope});      // bias then whole-projection norm, odd sizes
  }
  run_qkv({7, 8, 2, 64, false, false, false, true});  // RoPE alone
}

// Runs op(qkv, store) on two copies of qkv [T, (Hq + 2 Hkv) D], without and with a KvStore, and checks
// that the qkv outputs are bitwise equal, that each token's final k and v rows land bitwise at its
// cache slot, and that no other cache row is written (the rows of a token with slot -1 included).
template <typename Op>
void check_store(const Host16& qkv, int64_t T, int Hq, int Hkv, int D, Op op) {
  const int64_t row = int64_t(Hq + 2 * Hkv) * D, qd = int64_t(Hq) * D, kvd = int64_t(Hkv) * D, rows = T + 5;
  std::vector<int32_t> perm(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) perm[r] = static_cast<int32_t>(r);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(3));
  std::vector<int32_t> slots(perm.begin(), perm.begin() + T);  // distinct rows, shuffled
  if (T > 1) slots[1] = -1;                                     // a padding token: not stored
  const std::vector<uint16_t> sentinel(static_cast<size_t>(rows * kvd), 0x7fc1);  // a NaN no op writes
  Buffer plain = upload(qkv.bits), stored = upload(qkv.bits), ds = upload(slots), kc = upload(sentinel),
         vc = upload(sentinel);
  op(plain.data(), cuda::engine::KvStore{});
  op(stored.data(), cuda::engine::KvStore{static_cast<const int32_t*>(ds.data()), kc.data(), vc.data()});
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> out = download_bits(stored, qkv.bits.size());
  ASSERT_EQ(download_bits(plain, qkv.bits.size()), out) << "the store changed the qkv output";
  std::vector<uint16_t> k_ref = sentinel, v_ref = sentinel;
  for (int64_t t = 0; t < T; ++t) {
    if (slots[t] < 0) continue;
    std::copy_n(out.begin() + t * row + qd, kvd, k_ref.begin() + slots[t] * kvd);
    std::copy_n(out.begin() + t * row + qd + kvd, kvd, v_ref.begin() + slots[t] * kvd);
  }
  EXPECT_EQ(download_bits(kc, sentinel.size()), k_ref) << "k cache";
  EXPECT_EQ(download_bits(vc, sentinel.size()), v_ref) << "v cache";
}

// A generation step's QKV ops store k and v into the paged cache themselves (no kv_cache_write launch):
// qkv_bias_norm_rope for the checkpoints with bias or qk-norm, rope for the others.
TEST(CheckpointOpsCuda, QkvOpsStoreKvIntoTheCache) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const int max_pos = 50;
  for (const QkvCase& c : {QkvCase{9, 4, 2, 32, true, true, true, true}, QkvCase{5, 16, 16, 128, false, true, false, true},
                           QkvCase{3, 6, 3, 24, true, false, false, false}}) {
    SCOPED_TRACE(testing::Message() << "qkv_bias_norm_rope Hq" << c.Hq << " Hkv" << c.Hkv << " D" << c.D);
    std::mt19937 rng(5);
    const int64_t row = int64_t(c.Hq + 2 * c.Hkv) * c.D;
    Host16 qkv(size_t(c.T * row), rng, 2.f);
    std::vector<float> bias(static_cast<size_t>(row), 0.25f), qn(size_t(c.per_head ? c.D : c.Hq * c.D), 1.1f),
        kn(size_t(c.per_head ? c.D : c.Hkv * c.D), 0.9f);
    std::vector<float2> table(static_cast<size_t>(max_pos * c.D / 2));
    cuda::engine::rope_table(table.data(), max_pos, c.D, 10000.f);
    std::vector<int32_t> pos(static_cast<size_t>(c.T));
    for (auto& p : pos) p = static_cast<int32_t>(rng() % max_pos);
    Buffer db = upload(bias), dq = upload(qn), dk = upload(kn), dt = upload(table), dp = upload(pos);
    check_store(qkv, c.T, c.Hq, c.Hkv, c.D, [&](void* x, const cuda::engine::KvStore& st) {
      cuda::engine::qkv_bias_norm_rope(DType::bf16, x, c.T, finish_of(c, db, dq, dk, dt, dp, 1e-6f, st), nullptr);
    });
  }
  // rope: 4-, 2- and 1-element vectors per thread (D/2 = 64, 6, 3).
  for (const auto& [T, Hq, Hkv, D] : std::vector<std::array<int, 4>>{{11, 8, 2, 128}, {4, 3, 1, 12}, {6, 2, 2, 6}}) {
    SCOPED_TRACE(testing::Message() << "rope Hq" << Hq << " Hkv" << Hkv << " D" << D);
    std::mt19937 rng(9);
    const int64_t row = int64_t(Hq + 2 * Hkv) * D;
    Host16 qkv(size_t(T * row), rng, 2.f);
    std::vector<float2> table(static_cast<size_t>(max_pos * D / 2));
    cuda::engine::rope_table(table.data(), max_pos, D, 10000.f);
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (auto& p : pos) p = static_cast<int32_t>(rng() % max_pos);
    Buffer dt = upload(table), dp = upload(pos);
    check_store(qkv, T, Hq, Hkv, D, [&](void* x, const cuda::engine::KvStore& st) {
      cuda::engine::rope(DType::bf16, x, T, 1, Hq + Hkv, D, row, static_cast<const float2*>(dt.data()), nullptr,
                         static_cast<const int32_t*>(dp.data()), st, Hkv);
    });
  }
}

TEST(CheckpointOpsCuda, SharedExpertElementwise) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  const int64_t T = 13, H = 96, Fs = 80;
  Host16 gu(size_t(T * 2 * Fs), rng), x(size_t(T * H), rng), gate(size_t(H), rng, 0.2f), o(size_t(T * H), rng),
      y(size_t(T * H), rng);
  // swiglu_rows: a[t, f] = silu(gu[t, f]) * gu[t, Fs + f]
  std::vector<float> a_ref(size_t(T * Fs));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < Fs; ++f) {
      const float g = gu.f[t * 2 * Fs + f];
      a_ref[t * Fs + f] = g / (1.f + std::exp(-g)) * gu.f[t * 2 * Fs + Fs + f];
    }
  Buffer dgu = upload(gu.bits), da(size_t(T * Fs) * 2, Device::cuda);
  cuda::engine::swiglu_rows(DType::bf16, dgu.data(), da.data(), T, Fs, nullptr);
  // shared_expert_add: y[t] += sigmoid(x[t] . gate) * o[t]
  std::vector<float> y_ref = y.f;
  for (int64_t t = 0; t < T; ++t) {
    double dot = 0;
    for (int64_t i = 0; i < H; ++i) dot += double(x.f[t * H + i]) * gate.f[i];
    const double s = 1.0 / (1.0 + std::exp(-dot));
    for (int64_t i = 0; i < H; ++i) y_ref[t * H + i] = float(y.f[t * H + i] + s * o.f[t * H + i]);
  }
  Buffer dx = upload(x.bits), dg = upload(gate.bits), dout = upload(o.bits), dy = upload(y.bits);
  cuda::engine::shared_expert_add(DType::bf16, dx.data(), dg.data(), dout.data(), dy.data(), T, H, nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  expect_close(download_bf16(da, a_ref.size()), a_ref);
  expect_close(download_bf16(dy, y_ref.size()), y_ref);
}

}  // namespace
}  // namespace minillm
