// Decode-step GEMMs (few tokens, weights read once) against the HBM copy bandwidth: the dense layers
// through cuBLASLt (what the engine runs for QKV, O projection and LM head) and through the MoE decode
// kernel with one "expert" (moe::decode_gemm), and one MoE layer's expert GEMMs of a batch-1 step
// (top-8 of 64 experts, OLMoE-1B-7B shape) through the decode kernel.
//
// Timing: each case rotates over enough copies of its weights to exceed L2 (>= 256 MiB), 64 calls
// between two CUDA events after warm-up, median of 7 such runs; GB/s counts the weight bytes only.
// The copy reference is cudaMemcpyAsync device-to-device of 256 MiB (read + write bytes).
//
//   build:  cmake -B build -DMINILLM_DEV=ON && cmake --build build --target dev_03_decode_gemm_bandwidth
//   run:    build/dev/03_decode_gemm_bandwidth
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "cuda/engine/gemm.h"
#include "cuda/moe/moe_ops.h"
#include "dev_util.cuh"
#include "minillm/core/cuda_check.h"

namespace {

namespace km = minillm::cuda::moe;
using T = __nv_bfloat16;
constexpr size_t kRotateBytes = size_t{256} << 20;

using dev::device_alloc;
using dev::random_tensor;

// Median over 7 runs of the milliseconds per call of run(i) for i = 0..63.
float ms_per_call(const std::function<void(int)>& run) {
  constexpr int kCalls = 64, kRuns = 7;
  for (int i = 0; i < kCalls; ++i) run(i);
  cudaEvent_t e0, e1;
  MINILLM_CUDA_CHECK(cudaEventCreate(&e0));
  MINILLM_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms(kRuns);
  for (float& m : ms) {
    MINILLM_CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < kCalls; ++i) run(i);
    MINILLM_CUDA_CHECK(cudaEventRecord(e1));
    MINILLM_CUDA_CHECK(cudaEventSynchronize(e1));
    MINILLM_CUDA_CHECK(cudaEventElapsedTime(&m, e0, e1));
    m /= kCalls;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::nth_element(ms.begin(), ms.begin() + kRuns / 2, ms.end());
  return ms[kRuns / 2];
}

void report(const char* what, int64_t T, double bytes, float ms, double copy_gbs) {
  const double gbs = bytes / (ms * 1e6);
  std::printf("%-26s T%-3lld %8.2f MB %9.2f us %8.0f GB/s %5.1f%% of copy\n", what, (long long)T, bytes / 1e6,
              ms * 1e3, gbs, 100 * gbs / copy_gbs);
}

// y[T, N] = x[T, K] w[N, K]^T: cuBLASLt and the decode kernel with E = 1.
void dense(const char* name, int64_t N, int64_t K, double copy_gbs, minillm::cuda::engine::Gemm& gemm) {
  const size_t wn = size_t(N) * K;
  const int copies = int(std::max<size_t>(2, (kRotateBytes + wn * 2 - 1) / (wn * 2)));
  T* w = random_tensor(wn * copies, 1);
  T* x = random_tensor(64 * K, 2);
  T* y = device_alloc<T>(64 * N);
  int32_t* counts = device_alloc<int32_t>(1);
  int32_t* offset = device_alloc<int32_t>(1);
  MINILLM_CUDA_CHECK(cudaMemset(offset, 0, sizeof(int32_t)));
  for (int64_t t : {1, 2, 4, 8, 16, 64}) {
    const int32_t tc = int32_t(t);
    MINILLM_CUDA_CHECK(cudaMemcpy(counts, &tc, sizeof(tc), cudaMemcpyHostToDevice));
    const float cublas = ms_per_call([&](int i) {
      gemm.cublas(x, w + (i % copies) * wn, y, t, N, K, minillm::DType::bf16, minillm::DType::bf16, nullptr);
    });
    km::DecodeGemmArgs g;
    g.a = x, g.lda = K, g.K = K, g.ldw = K, g.N = N, g.E = 1, g.counts = counts, g.row_offset = offset;
    g.d = y, g.ldd = N;
    const float dec = ms_per_call([&](int i) {
      g.w0 = w + (i % copies) * wn;
      km::decode_gemm(g, nullptr);
    });
    char label[64];
    std::snprintf(label, sizeof label, "%s cublasLt", name);
    report(label, t, double(wn) * 2, cublas, copy_gbs);
    std::snprintf(label, sizeof label, "%s decode_gemm", name);
    report(label, t, double(wn) * 2, dec, copy_gbs);
  }
  std::fflush(stdout);
  for (void* p : {(void*)w, (void*)x, (void*)y, (void*)counts, (void*)offset}) cudaFree(p);
}

// One batch-1 MoE layer's expert GEMMs: 8 experts with one token each (E = 64 stored, ldw padded as the
// layer pads it), gate/up with the swiglu epilogue, then down.
void moe_b1(double copy_gbs) {
  const int64_t H = 2048, F = 1024, E = 64, k = 8;
  const int64_t ld_h = km::fast_row_stride(H), ld_f = km::fast_row_stride(F);
  const size_t layer = size_t(E) * F * ld_h * 2 + size_t(E) * H * ld_f;
  const int copies = int(std::max<size_t>(2, (kRotateBytes + layer * 2 - 1) / (layer * 2)));
  std::vector<T*> gate(copies), up(copies), down(copies);
  for (int c = 0; c < copies; ++c) {
    gate[c] = random_tensor(size_t(E) * F * ld_h, 3 + c);
    up[c] = random_tensor(size_t(E) * F * ld_h, 100 + c);
    down[c] = random_tensor(size_t(E) * H * ld_f, 200 + c);
  }
  T* x = random_tensor(k * H, 4);
  T* h = device_alloc<T>(k * F);
  T* y = device_alloc<T>(k * H);
  std::vector<int32_t> counts(E, 0), offset(E, 0), active(E, 0);
  for (int j = 0; j < k; ++j) {
    const int e = j * 7 + 3;  // spread over the stored experts
    counts[e] = 1, offset[e] = j, active[j] = e;
  }
  int32_t* d_counts = device_alloc<int32_t>(E);
  int32_t* d_offset = device_alloc<int32_t>(E);
  int32_t* d_active = device_alloc<int32_t>(E);
  int32_t* d_num = device_alloc<int32_t>(1);
  const int32_t num = int32_t(k);
  MINILLM_CUDA_CHECK(cudaMemcpy(d_counts, counts.data(), E * 4, cudaMemcpyHostToDevice));
  MINILLM_CUDA_CHECK(cudaMemcpy(d_offset, offset.data(), E * 4, cudaMemcpyHostToDevice));
  MINILLM_CUDA_CHECK(cudaMemcpy(d_active, active.data(), E * 4, cudaMemcpyHostToDevice));
  MINILLM_CUDA_CHECK(cudaMemcpy(d_num, &num, 4, cudaMemcpyHostToDevice));
  km::DecodeGemmArgs g;
  g.E = int(E), g.counts = d_counts, g.row_offset = d_offset, g.active = d_active, g.num_active = d_num;
  g.max_active = int(k);
  km::DecodeGemmArgs gu = g, dn = g;
  gu.epilogue = km::Epilogue::swiglu, gu.a = x, gu.lda = H, gu.K = H, gu.ldw = ld_h, gu.N = F, gu.d = h, gu.ldd = F;
  dn.a = h, dn.lda = F, dn.K = F, dn.ldw = ld_f, dn.N = H, dn.d = y, dn.ldd = H;
  const float ms_up = ms_per_call([&](int i) {
    gu.w0 = gate[i % copies], gu.w1 = up[i % copies];
    km::decode_gemm(gu, nullptr);
  });
  const float ms_down = ms_per_call([&](int i) {
    dn.w0 = down[i % copies];
    km::decode_gemm(dn, nullptr);
  });
  const float ms_both = ms_per_call([&](int i) {
    gu.w0 = gate[i % copies], gu.w1 = up[i % copies], dn.w0 = down[i % copies];
    km::decode_gemm(gu, nullptr);
    km::decode_gemm(dn, nullptr);
  });
  report("moe B1 gate/up (swiglu)", 1, double(k) * 2 * F * H * 2, ms_up, copy_gbs);
  report("moe B1 down", 1, double(k) * H * F * 2, ms_down, copy_gbs);
  report("moe B1 both", 1, double(k) * 3 * F * H * 2, ms_both, copy_gbs);
  std::fflush(stdout);
  for (int c = 0; c < copies; ++c) cudaFree(gate[c]), cudaFree(up[c]), cudaFree(down[c]);
  for (void* p : {(void*)x, (void*)h, (void*)y, (void*)d_counts, (void*)d_offset, (void*)d_active, (void*)d_num})
    cudaFree(p);
}

double copy_bandwidth() {
  char* a = device_alloc<char>(kRotateBytes);
  char* b = device_alloc<char>(kRotateBytes);
  const float ms = ms_per_call([&](int) { MINILLM_CUDA_CHECK(cudaMemcpyAsync(b, a, kRotateBytes, cudaMemcpyDeviceToDevice)); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * kRotateBytes / (ms * 1e6);
}

}  // namespace

int main() {
  try {
    const double copy_gbs = copy_bandwidth();
    std::printf("copy (read + write) %.0f GB/s\n", copy_gbs);
    minillm::cuda::engine::Gemm gemm;
    // The OLMoE-1B-7B shape's dense layers: QKV, O projection, LM head.
    dense("qkv 6144x2048", 6144, 2048, copy_gbs, gemm);
    dense("o_proj 2048x2048", 2048, 2048, copy_gbs, gemm);
    dense("lm_head 50304x2048", 50304, 2048, copy_gbs, gemm);
    moe_b1(copy_gbs);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
