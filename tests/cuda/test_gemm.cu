// engine::Gemm (src/cuda/engine/gemm.h): the dense linear on decode shapes (moe::decode_gemm with one
// expert, weights prefetched before the PDL wait) against an fp64 reference and against cuBLASLt on the
// same operands, right after a kernel that writes x (the prefetch must not read x early); shapes off
// the decode path take cuBLASLt. The tails: linear_residual_norm against linear + add_norm,
// linear_qkv_finish against linear + qkv_bias_norm_rope.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cuda/engine/gemm.h"
#include "cuda/engine/ops.h"
#include "cuda/launch.cuh"
#include "minillm/core/cuda_check.h"
#include "minillm/core/tensor.h"

namespace minillm {
namespace {

#define REQUIRE_GPU() \
  if (!minillm::cuda_available()) GTEST_SKIP() << "no CUDA device"

using cuda::engine::Gemm;

// Writes x after spinning, launched with PDL: a reader that ignored pdl_wait() would see stale x.
__global__ void slow_copy(const __nv_bfloat16* src, __nv_bfloat16* dst, int n, long long spin_cycles) {
  cuda::pdl_wait();
  cuda::pdl_trigger();
  const long long t0 = clock64();
  while (clock64() - t0 < spin_cycles) {
  }
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[i] = src[i];
}

std::vector<__nv_bfloat16> random_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<__nv_bfloat16> v(n);
  for (auto& e : v) e = __float2bfloat16_rn(u(rng));
  return v;
}

Buffer upload(const std::vector<__nv_bfloat16>& h) {
  Buffer b(h.size() * 2, Device::cuda);
  copy_bytes(b.data(), Device::cuda, h.data(), Device::cpu, h.size() * 2);
  return b;
}

std::vector<float> download(const Buffer& b, size_t n) {
  std::vector<__nv_bfloat16> h(n);
  copy_bytes(h.data(), Device::cpu, b.data(), Device::cuda, n * 2);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __bfloat162float(h[i]);
  return f;
}

TEST(GemmCuda, DecodePathMatchesReferenceAndCublas) {
  REQUIRE_GPU();
  struct Shape {
    int64_t M, N, K;
  };
  // Token counts that fill 1 and 2 MMA tiles (partly and fully), a wide and a deep matrix.
  for (const Shape s : {Shape{1, 48, 64}, Shape{3, 256, 2048}, Shape{9, 1024, 96}, Shape{16, 160, 512},
                        Shape{8, 96, 1024}, Shape{13, 4096, 256}}) {
    ASSERT_TRUE(Gemm::decode_path(reinterpret_cast<void*>(256), reinterpret_cast<void*>(256), s.M, s.N, s.K,
                                  DType::bf16, DType::bf16));
    const auto hx = random_bf16(s.M * s.K, 1), hw = random_bf16(s.N * s.K, 2);
    Buffer src = upload(hx), x(hx.size() * 2, Device::cuda), w = upload(hw);
    Buffer y(s.M * s.N * 2, Device::cuda), y_ref(s.M * s.N * 2, Device::cuda);
    cudaStream_t st;
    MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    Gemm gemm;
    MINILLM_CUDA_CHECK(cudaMemsetAsync(x.data(), 0, x.bytes(), st));
    cuda::launch(slow_copy, 4, 256, 0, st, static_cast<const __nv_bfloat16*>(src.data()),
                 static_cast<__nv_bfloat16*>(x.data()), static_cast<int>(s.M * s.K), 200000LL);
    gemm.linear(x.data(), w.data(), y.data(), s.M, s.N, s.K, DType::bf16, DType::bf16, st);
    gemm.cublas(x.data(), w.data(), y_ref.data(), s.M, s.N, s.K, DType::bf16, DType::bf16, st);
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(st));
    cudaStreamDestroy(st);
    const auto got = download(y, s.M * s.N), cub = download(y_ref, s.M * s.N);
    double err = 0, err_cub = 0, ref_norm = 0;
    for (int64_t m = 0; m < s.M; ++m) {
      for (int64_t n = 0; n < s.N; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < s.K; ++k)
          ref += double(__bfloat162float(hx[m * s.K + k])) * double(__bfloat162float(hw[n * s.K + k]));
        const size_t i = m * s.N + n;
        ASSERT_TRUE(std::isfinite(got[i]));
        err += (got[i] - ref) * (got[i] - ref);
        err_cub += (cub[i] - ref) * (cub[i] - ref);
        ref_norm += ref * ref;
      }
    }
    const double rel = std::sqrt(err / ref_norm), rel_cub = std::sqrt(err_cub / ref_norm);
    // Both round the fp32 result to bf16 once: the decode path within 2x cuBLASLt's error (and bf16's).
    EXPECT_LE(rel, std::max(2 * rel_cub, 4e-3)) << "M " << s.M << " N " << s.N << " K " << s.K;
  }
}

Buffer upload_f32(const std::vector<float>& h) {
  Buffer b(h.size() * 4, Device::cuda);
  copy_bytes(b.data(), Device::cuda, h.data(), Device::cpu, h.size() * 4);
  return b;
}

// The o_proj with the residual add and norm in its last block gives what the GEMM and then the add_norm
// kernel give: the same delta and x bit for bit (the same fp32 sum, rounded once), out within one
// rounding (the norm's sums are reduced in another order). Each case runs the tail twice on fresh
// copies: the counter must be zero again after a launch, or the second launch's tail never runs.
TEST(GemmCuda, ResidualNormTailMatchesLinearThenAddNorm) {
  REQUIRE_GPU();
  struct Case {
    int64_t M, H, K;
    bool rms, alias;  // alias: out is x (post-norm)
  };
  for (const Case cs : {Case{1, 2048, 2048, true, false}, Case{2, 256, 512, true, false}, Case{4, 4096, 128, false, false},
                        Case{3, 64, 64, true, true}, Case{1, 1024, 96, false, true}}) {
    ASSERT_TRUE(Gemm::fuses_residual_norm(reinterpret_cast<void*>(256), reinterpret_cast<void*>(256), cs.M, cs.H, cs.K,
                                          DType::bf16, DType::bf16));
    const auto ha = random_bf16(cs.M * cs.K, 3), hw = random_bf16(cs.H * cs.K, 4), hx = random_bf16(cs.M * cs.H, 5);
    std::vector<float> nw(cs.H), nb(cs.H);
    std::mt19937 rng(6);
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    for (int64_t i = 0; i < cs.H; ++i) nw[i] = u(rng), nb[i] = u(rng) - 1.f;
    Buffer a = upload(ha), w = upload(hw), dnw = upload_f32(nw), dnb = upload_f32(nb);
    const float* bias = cs.rms ? nullptr : static_cast<const float*>(dnb.data());
    const size_t n = cs.M * cs.H;
    cudaStream_t st;
    MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    Gemm gemm;
    Buffer x_ref = upload(hx), d_ref(n * 2, Device::cuda), out_ref(n * 2, Device::cuda);
    gemm.linear(a.data(), w.data(), d_ref.data(), cs.M, cs.H, cs.K, DType::bf16, DType::bf16, st);
    cuda::engine::add_norm(DType::bf16, x_ref.data(), d_ref.data(), 1, static_cast<const float*>(dnw.data()), bias,
                           cs.rms, 1e-5f, cs.alias ? x_ref.data() : out_ref.data(), cs.M, cs.H, st);
    Buffer counter(4, Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemsetAsync(counter.data(), 0, 4, st));
    for (int run = 0; run < 2; ++run) {
      Buffer x = upload(hx), d(n * 2, Device::cuda), out(n * 2, Device::cuda);
      ResidualNorm then;
      then.x = x.data();
      then.out = cs.alias ? x.data() : out.data();
      then.w = static_cast<const float*>(dnw.data());
      then.b = bias;
      then.rmsnorm = cs.rms;
      then.eps = 1e-5f;
      then.counter = static_cast<int32_t*>(counter.data());
      gemm.linear_residual_norm(a.data(), w.data(), d.data(), cs.M, cs.H, cs.K, DType::bf16, then, st);
      MINILLM_CUDA_CHECK(cudaStreamSynchronize(st));
      int32_t left = -1;
      copy_bytes(&left, Device::cpu, counter.data(), Device::cuda, 4);
      EXPECT_EQ(left, 0) << "the tail left its counter at " << left;
      EXPECT_EQ(download(d, n), download(d_ref, n)) << "M " << cs.M << " H " << cs.H;
      const auto got_x = download(x, n), ref_x = download(x_ref, n);
      const auto got = cs.alias ? got_x : download(out, n), ref = cs.alias ? ref_x : download(out_ref, n);
      if (!cs.alias) EXPECT_EQ(got_x, ref_x) << "M " << cs.M << " H " << cs.H;
      for (size_t i = 0; i < n; ++i) {
        ASSERT_TRUE(std::isfinite(got[i]));
        ASSERT_LE(std::fabs(got[i] - ref[i]), std::fabs(ref[i]) * 0x1p-7f + 1e-6f)
            << "M " << cs.M << " H " << cs.H << " at " << i << " run " << run;
      }
    }
    cudaStreamDestroy(st);
  }
}

// The QKV projection with the row finish (bias, qk-norm, RoPE, cache store) in its last block against
// the GEMM and then qkv_bias_norm_rope's kernel: the same row function (qkv_finish_row) with 128
// threads instead of 256, so the rows and the cache rows agree within one rounding (a whole-q norm sums
// its squares in another order; all else is bit for bit). Twice per case: the counter is rearmed.
TEST(GemmCuda, QkvFinishTailMatchesLinearThenFinishKernel) {
  REQUIRE_GPU();
  struct Case {
    int64_t T;
    int Hq, Hkv, D;
    bool bias, norm, per_head, rope, store;
  };
  for (const Case cs : {Case{1, 16, 16, 128, false, true, false, true, true},   // OLMoE: whole-q norm
                        Case{4, 8, 2, 128, false, true, true, true, true},      // Qwen3: per-head norm
                        Case{3, 4, 2, 64, true, false, false, true, true},      // Qwen2: bias
                        Case{2, 8, 2, 64, false, false, false, true, true},     // Mixtral: RoPE only
                        Case{1, 4, 4, 32, false, false, false, false, true}}) {  // the cache store alone
    const int64_t H = 256, N = int64_t{cs.Hq + 2 * cs.Hkv} * cs.D, kvd = int64_t{cs.Hkv} * cs.D;
    ASSERT_TRUE(Gemm::fuses_qkv_finish(reinterpret_cast<void*>(256), reinterpret_cast<void*>(256), cs.T, N, H,
                                       DType::bf16, DType::bf16));
    const auto hx = random_bf16(cs.T * H, 7), hw = random_bf16(N * H, 8);
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    std::vector<float> bias(N), qn(cs.per_head ? cs.D : cs.Hq * cs.D), kn(cs.per_head ? cs.D : kvd);
    for (auto* v : {&bias, &qn, &kn})
      for (float& e : *v) e = u(rng);
    const int max_pos = 64;
    std::vector<float2> table(max_pos * cs.D / 2);
    cuda::engine::rope_table(table.data(), max_pos, cs.D, 10000.f);
    std::vector<int32_t> pos(cs.T), slots(cs.T);
    for (int64_t t = 0; t < cs.T; ++t) pos[t] = static_cast<int32_t>(5 + 17 * t), slots[t] = static_cast<int32_t>(3 * t + 1);
    const int64_t cache_rows = 16;
    Buffer x = upload(hx), w = upload(hw), dbias = upload_f32(bias), dqn = upload_f32(qn), dkn = upload_f32(kn);
    Buffer dtable(table.size() * sizeof(float2), Device::cuda), dpos(cs.T * 4, Device::cuda), dslots(cs.T * 4, Device::cuda);
    copy_bytes(dtable.data(), Device::cuda, table.data(), Device::cpu, dtable.bytes());
    copy_bytes(dpos.data(), Device::cuda, pos.data(), Device::cpu, cs.T * 4);
    copy_bytes(dslots.data(), Device::cuda, slots.data(), Device::cpu, cs.T * 4);
    auto finish = [&](Buffer& kc, Buffer& vc) {
      cuda::engine::QkvFinish f;
      f.bias = cs.bias ? static_cast<const float*>(dbias.data()) : nullptr;
      f.q_norm = cs.norm ? static_cast<const float*>(dqn.data()) : nullptr;
      f.k_norm = cs.norm ? static_cast<const float*>(dkn.data()) : nullptr;
      f.Hq = cs.Hq, f.Hkv = cs.Hkv, f.D = cs.D;
      f.per_head = cs.per_head;
      f.eps = 1e-6f;
      f.cos_sin = cs.rope ? static_cast<const float2*>(dtable.data()) : nullptr;
      f.positions = static_cast<const int32_t*>(dpos.data());
      if (cs.store) f.store = {static_cast<const int32_t*>(dslots.data()), kc.data(), vc.data()};
      return f;
    };
    cudaStream_t st;
    MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    Gemm gemm;
    const size_t cache_n = cache_rows * kvd;
    Buffer y_ref(cs.T * N * 2, Device::cuda), kc_ref(cache_n * 2, Device::cuda), vc_ref(cache_n * 2, Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemsetAsync(kc_ref.data(), 0, kc_ref.bytes(), st));
    MINILLM_CUDA_CHECK(cudaMemsetAsync(vc_ref.data(), 0, vc_ref.bytes(), st));
    gemm.linear(x.data(), w.data(), y_ref.data(), cs.T, N, H, DType::bf16, DType::bf16, st);
    cuda::engine::qkv_bias_norm_rope(DType::bf16, y_ref.data(), cs.T, finish(kc_ref, vc_ref), st);
    Buffer counter(4, Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemsetAsync(counter.data(), 0, 4, st));
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(st));
    const auto ref = download(y_ref, cs.T * N), kref = download(kc_ref, cache_n), vref = download(vc_ref, cache_n);
    for (int run = 0; run < 2; ++run) {
      Buffer y(cs.T * N * 2, Device::cuda), kc(cache_n * 2, Device::cuda), vc(cache_n * 2, Device::cuda);
      MINILLM_CUDA_CHECK(cudaMemsetAsync(kc.data(), 0, kc.bytes(), st));
      MINILLM_CUDA_CHECK(cudaMemsetAsync(vc.data(), 0, vc.bytes(), st));
      const cuda::engine::QkvFinish f = finish(kc, vc);
      gemm.linear_qkv_finish(x.data(), w.data(), y.data(), cs.T, N, H, DType::bf16, f,
                             static_cast<int32_t*>(counter.data()), st);
      MINILLM_CUDA_CHECK(cudaStreamSynchronize(st));
      int32_t left = -1;
      copy_bytes(&left, Device::cpu, counter.data(), Device::cuda, 4);
      EXPECT_EQ(left, 0);
      const auto got = download(y, cs.T * N), kgot = download(kc, cache_n), vgot = download(vc, cache_n);
      auto near = [](const std::vector<float>& a, const std::vector<float>& b, const char* what, int64_t hq) {
        ASSERT_EQ(a.size(), b.size());
        for (size_t i = 0; i < a.size(); ++i) {
          ASSERT_TRUE(std::isfinite(a[i])) << what << " at " << i;
          ASSERT_LE(std::fabs(a[i] - b[i]), std::fabs(b[i]) * 0x1p-7f + 1e-6f) << what << " at " << i << " (Hq " << hq << ")";
        }
      };
      near(got, ref, "qkv rows", cs.Hq);
      near(kgot, kref, "k cache", cs.Hq);
      near(vgot, vref, "v cache", cs.Hq);
      if (!cs.norm || cs.per_head) {
        EXPECT_EQ(got, ref);
        EXPECT_EQ(kgot, kref);
      }
      EXPECT_EQ(vgot, vref);  // v is never normalised
    }
    cudaStreamDestroy(st);
  }
}

TEST(GemmCuda, OtherShapesTakeCublas) {
  const void* p = reinterpret_cast<void*>(256);
  EXPECT_FALSE(Gemm::decode_path(p, p, Gemm::kDecodePathMaxRows + 1, 64, 64, DType::bf16, DType::bf16));  // tokens
  EXPECT_FALSE(Gemm::decode_path(p, p, 1, 50, 64, DType::bf16, DType::bf16));   // N % 16
  EXPECT_FALSE(Gemm::decode_path(p, p, 1, 64, 48, DType::bf16, DType::bf16));   // K % 32
  EXPECT_FALSE(Gemm::decode_path(p, p, 1, 64, 64, DType::bf16, DType::f32));    // fp32 logits
  EXPECT_FALSE(Gemm::decode_path(reinterpret_cast<void*>(264), p, 1, 64, 64, DType::bf16, DType::bf16));  // alignment
  EXPECT_TRUE(Gemm::decode_path(p, p, Gemm::kDecodePathMaxRows, 64, 64, DType::f16, DType::f16));
  // The residual-norm tail: a few rows, H up to its staging buffer.
  EXPECT_TRUE(Gemm::fuses_residual_norm(p, p, 4, 4096, 64, DType::bf16, DType::bf16));
  EXPECT_FALSE(Gemm::fuses_residual_norm(p, p, 5, 64, 64, DType::bf16, DType::bf16));
  EXPECT_FALSE(Gemm::fuses_residual_norm(p, p, 1, 4112, 64, DType::bf16, DType::bf16));
}

}  // namespace
}  // namespace minillm
