// The engine's dense layers (QKV, O projection, LM head, shared expert); see gemm.h. Decode shapes run
// moe::decode_gemm with one expert; everything else cuBLASLt:
// Row-major y[M, N] = x[M, K] w[N, K]^T is column-major y^T[N, M] = w^T x^T: cuBLASLt's A = w
// (K x N column-major, transposed), B = x (K x M column-major), D = y^T (N x M, ld N). Compute
// CUBLAS_COMPUTE_32F (fp32 accumulation), scale fp32; D is bf16/fp16 or fp32 (the LM head's fp32
// logits come straight out of the GEMM, no extra pass).
// Algorithm choice: the first time a shape is seen outside of a stream capture, up to 8 of the
// heuristic's candidates are timed on the call's own operands (CUDA events, 1 warm-up + 3 runs
// each) and the fastest is kept; during a capture (or if timing fails) the heuristic's first one.
// 32 MiB workspace (what cuBLAS recommends on Hopper). Measurements: docs/REPORT.md.
#include "cuda/engine/gemm.h"

#include "cuda/moe/moe_ops.h"

#include <cublasLt.h>

#include <limits>
#include <map>
#include <tuple>

#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"
#include "minillm/core/tensor.h"

namespace minillm::cuda::engine {
namespace {

#define LT_CHECK(expr)                                                                                  \
  do {                                                                                                  \
    const cublasStatus_t s_ = (expr);                                                                   \
    MINILLM_CHECK(s_ == CUBLAS_STATUS_SUCCESS, "cuBLASLt error " << static_cast<int>(s_) << " ("       \
                                                                 << cublasLtGetStatusString(s_) << ")"); \
  } while (0)

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    case DType::f32: return CUDA_R_32F;
    default: MINILLM_FAIL("gemm: dtype " << dtype_name(t) << " is not supported");
  }
}

constexpr int kCandidates = 8;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  Buffer workspace;
  std::map<std::tuple<int64_t, int64_t, int64_t, DType, DType>, Plan> plans;

  ~Impl() {
    for (auto& [key, p] : plans) {
      if (p.a) cublasLtMatrixLayoutDestroy(p.a);
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.d) cublasLtMatrixLayoutDestroy(p.d);
      if (p.op) cublasLtMatmulDescDestroy(p.op);
    }
    if (handle) cublasLtDestroy(handle);
  }

  // Times `algo` on the call's operands: milliseconds per run (infinity when it fails).
  float time_algo(const Plan& p, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* y,
                  cudaStream_t stream) {
    const float alpha = 1.f, beta = 0.f;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    float ms = std::numeric_limits<float>::infinity();
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
      (void)cudaGetLastError();
    } else {
      bool ok = true;
      for (int i = 0; i < 4 && ok; ++i) {
        if (i == 1) ok = cudaEventRecord(e0, stream) == cudaSuccess;
        ok = ok && cublasLtMatmul(handle, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &algo, workspace.data(),
                                  workspace.bytes(), stream) == CUBLAS_STATUS_SUCCESS;
      }
      ok = ok && cudaEventRecord(e1, stream) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
           cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
      if (!ok) {
        ms = std::numeric_limits<float>::infinity();
        (void)cudaGetLastError();
      } else {
        ms /= 3;
      }
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    return ms;
  }

  const Plan& plan(int64_t M, int64_t N, int64_t K, DType in, DType out, const void* x, const void* w, void* y,
                   cudaStream_t stream) {
    const auto key = std::make_tuple(M, N, K, in, out);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan p;
    try {
      LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(in), K, N, K));   // w: K x N col-major
      LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(in), K, M, K));   // x: K x M col-major
      LT_CHECK(cublasLtMatrixLayoutCreate(&p.d, cuda_type(out), N, M, N));  // y^T: N x M col-major
      cublasLtMatmulPreference_t pref = nullptr;
      LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      const size_t ws = workspace.bytes();
      cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
      int found = 0;
      cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                               sizeof(ws));
      if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.d, p.d, pref, kCandidates, results, &found);
      cublasLtMatmulPreferenceDestroy(pref);
      LT_CHECK(st);
      MINILLM_CHECK(found > 0, "gemm: cuBLASLt has no algorithm for M = " << M << ", N = " << N << ", K = " << K
                                                                           << " (" << dtype_name(in) << " -> "
                                                                           << dtype_name(out) << ")");
      p.algo = results[0].algo;
      cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
      MINILLM_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
      if (found > 1 && capturing == cudaStreamCaptureStatusNone) {
        float best = std::numeric_limits<float>::infinity();
        for (int i = 0; i < found; ++i) {
          const float ms = time_algo(p, results[i].algo, x, w, y, stream);
          if (ms < best) best = ms, p.algo = results[i].algo;
        }
      }
    } catch (...) {
      if (p.a) cublasLtMatrixLayoutDestroy(p.a);
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.d) cublasLtMatrixLayoutDestroy(p.d);
      if (p.op) cublasLtMatmulDescDestroy(p.op);
      throw;
    }
    return plans.emplace(key, p).first->second;
  }
};

Gemm::Gemm(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  LT_CHECK(cublasLtCreate(&impl_->handle));
  impl_->workspace = Buffer(workspace_bytes, Device::cuda);
}

Gemm::~Gemm() = default;

static_assert(Gemm::kDecodePathMaxRows <= moe::kDecodeMaxRows, "the decode path's rows must fit the decode kernel");

bool Gemm::decode_path(const void* x, const void* w, int64_t M, int64_t N, int64_t K, DType in, DType out) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return M <= kDecodePathMaxRows && in == out && (in == DType::bf16 || in == DType::f16) && N % 16 == 0 &&
         K % 32 == 0 && aligned(x) && aligned(w);
}

bool Gemm::fuses_residual_norm(const void* x, const void* w, int64_t M, int64_t N, int64_t K, DType in, DType out) {
  return decode_path(x, w, M, N, K, in, out) && moe::add_norm_tail_supported(M, N);
}

bool Gemm::fuses_qkv_finish(const void* x, const void* w, int64_t M, int64_t N, int64_t K, DType in, DType out) {
  return decode_path(x, w, M, N, K, in, out) && M <= moe::kTailMaxRows;
}

namespace {

moe::DecodeGemmArgs dense_decode_args(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K,
                                      DType dtype) {
  moe::DecodeGemmArgs g;
  g.dtype = dtype;
  g.a = x;
  g.lda = K;
  g.K = K;
  g.w0 = w;
  g.ldw = K;
  g.N = N;
  g.E = 1;
  g.dense_rows = static_cast<int>(M);
  g.d = y;
  g.ldd = N;
  return g;
}

}  // namespace

void Gemm::linear(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType in, DType out,
                  cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  if (decode_path(x, w, M, N, K, in, out)) {
    moe::decode_gemm(dense_decode_args(x, w, y, M, N, K, in), stream);
  } else {
    cublas(x, w, y, M, N, K, in, out, stream);
  }
}

void Gemm::linear_residual_norm(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType dtype,
                                const ResidualNorm& then, cudaStream_t stream) {
  MINILLM_CHECK(fuses_residual_norm(x, w, M, N, K, dtype, dtype),
                "gemm: no residual-norm tail for M = " << M << ", N = " << N << ", K = " << K);
  moe::DecodeGemmArgs g = dense_decode_args(x, w, y, M, N, K, dtype);
  g.norm_tail = &then;
  g.tail_rows = static_cast<int>(M);
  g.tail_counter = then.counter;
  moe::decode_gemm(g, stream);
}

void Gemm::linear_qkv_finish(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType dtype,
                             const QkvFinish& finish, int32_t* counter, cudaStream_t stream) {
  MINILLM_CHECK(fuses_qkv_finish(x, w, M, N, K, dtype, dtype),
                "gemm: no QKV tail for M = " << M << ", N = " << N << ", K = " << K);
  moe::DecodeGemmArgs g = dense_decode_args(x, w, y, M, N, K, dtype);
  g.qkv_tail = &finish;
  g.tail_rows = static_cast<int>(M);
  g.tail_counter = counter;
  moe::decode_gemm(g, stream);
}

void Gemm::cublas(const void* x, const void* w, void* y, int64_t M, int64_t N, int64_t K, DType in, DType out,
                  cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const Plan& p = impl_->plan(M, N, K, in, out, x, w, y, stream);
  const float alpha = 1.f, beta = 0.f;
  LT_CHECK(cublasLtMatmul(impl_->handle, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &p.algo,
                          impl_->workspace.data(), impl_->workspace.bytes(), stream));
}

}  // namespace minillm::cuda::engine
