// A plain Mixture-of-Experts layer for the shapes minillm::MoELayer does not take (hidden or ffn
// not a multiple of 64, e.g. the tiny_pre_gqa test config). Correctness path, not tuned: it keeps
// the engine runnable on every valid config, and matches the CPU reference's semantics.
//
// Algorithm: (1) router, one block per token: fp32 logits = x . router_e, then (thread 0) softmax
// in double, top-k in descending probability with ties to the lower expert index, optional
// renormalisation (exactly the CPU reference's order). (2) one block per (token, slot): the expert
// hidden h = act(w1 x) [* (w3 x)] in fp32 (silu for swiglu, erf-gelu). (3) one block per token:
// y = sum_j weight_j * (w2_{e_j} h_j), slots added in order j = 0..k-1, rounded once to bf16/fp16.
// Layout: x, y [T, H]; router [E, H]; w1, w3 [E, F, H]; w2 [E, H, F]; scratch: ids [T, k] i32,
// weights [T, k] f32, h [T, k, F] f32.
// Cost: T * k * 3 * H * F multiply-adds as dot products, memory-bound; only used on tiny shapes
// (tests/cuda/test_engine_gpu.cu: tiny_pre_gqa); never on the presets, not benchmarked.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/engine/ops.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

constexpr int kMaxExperts = 256;
constexpr int kThreads = 128;

size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

template <typename T>
__device__ float dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += to_f32(a[i]) * to_f32(b[i]);
  return s;
}

template <typename T>
__global__ void route_kernel(const T* __restrict__ x, const T* __restrict__ router, int64_t H, int E, int k,
                             bool normalize, int32_t* __restrict__ ids, float* __restrict__ weights) {
  __shared__ float logits[kMaxExperts];
  const int64_t t = blockIdx.x;
  for (int e = threadIdx.x; e < E; e += blockDim.x) logits[e] = dot(x + t * H, router + static_cast<int64_t>(e) * H, H);
  __syncthreads();
  if (threadIdx.x != 0) return;
  double prob[kMaxExperts];
  double m = logits[0];
  for (int e = 1; e < E; ++e) m = fmax(m, static_cast<double>(logits[e]));
  double sum = 0.0;
  for (int e = 0; e < E; ++e) {
    prob[e] = exp(static_cast<double>(logits[e]) - m);
    sum += prob[e];
  }
  double kept = 0.0;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (prob[e] < 0.0) continue;  // taken
      if (best < 0 || prob[e] > prob[best]) best = e;
    }
    ids[t * k + j] = best;
    weights[t * k + j] = static_cast<float>(prob[best] / sum);
    kept += prob[best] / sum;
    prob[best] = -1.0;
  }
  if (normalize) {
    for (int j = 0; j < k; ++j) weights[t * k + j] = static_cast<float>(static_cast<double>(weights[t * k + j]) / kept);
  }
}

template <typename T>
__global__ void hidden_kernel(const T* __restrict__ x, const T* __restrict__ w1, const T* __restrict__ w3,
                              const int32_t* __restrict__ ids, int64_t H, int64_t F, int k, float* __restrict__ h) {
  const int64_t s = blockIdx.x;  // slot t * k + j
  const int64_t t = s / k;
  const int64_t e = ids[s];
  for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
    const float g = dot(x + t * H, w1 + (e * F + f) * H, H);
    float a;
    if (w3) {
      const float u = dot(x + t * H, w3 + (e * F + f) * H, H);
      a = g / (1.f + expf(-g)) * u;
    } else {
      a = static_cast<float>(0.5 * g * (1.0 + erf(static_cast<double>(g) * 0.70710678118654752440)));
    }
    h[s * F + f] = a;
  }
}

template <typename T>
__global__ void down_kernel(const float* __restrict__ h, const T* __restrict__ w2, const int32_t* __restrict__ ids,
                            const float* __restrict__ weights, int64_t H, int64_t F, int k, T* __restrict__ y) {
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
      const int64_t s = t * k + j, e = ids[s];
      const float* hs = h + s * F;        // [F]
      const T* wr = w2 + (e * H + i) * F;  // [F]
      float d = 0.f;
      for (int64_t f = 0; f < F; ++f) d += hs[f] * to_f32(wr[f]);
      acc += weights[s] * d;
    }
    y[t * H + i] = from_f32<T>(acc);
  }
}

template <typename T>
void launch(const void* x, const void* router, const void* w1, const void* w3, const void* w2, int64_t T_tokens,
            int64_t H, int64_t E, int64_t F, int64_t k, bool normalize, void* y, void* scratch, cudaStream_t stream) {
  char* base = static_cast<char*>(scratch);
  int32_t* ids = reinterpret_cast<int32_t*>(base);
  float* weights = reinterpret_cast<float*>(base + align_up(sizeof(int32_t) * T_tokens * k));
  float* h = reinterpret_cast<float*>(base + 2 * align_up(sizeof(int32_t) * T_tokens * k));
  const auto* xt = static_cast<const T*>(x);
  route_kernel<T><<<static_cast<unsigned>(T_tokens), kThreads, 0, stream>>>(
      xt, static_cast<const T*>(router), H, static_cast<int>(E), static_cast<int>(k), normalize, ids, weights);
  MINILLM_CUDA_CHECK_LAUNCH();
  hidden_kernel<T><<<static_cast<unsigned>(T_tokens * k), kThreads, 0, stream>>>(
      xt, static_cast<const T*>(w1), static_cast<const T*>(w3), ids, H, F, static_cast<int>(k), h);
  MINILLM_CUDA_CHECK_LAUNCH();
  down_kernel<T><<<static_cast<unsigned>(T_tokens), kThreads, 0, stream>>>(h, static_cast<const T*>(w2), ids, weights, H,
                                                                           F, static_cast<int>(k), static_cast<T*>(y));
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t moe_fallback_workspace(int64_t T, int64_t F, int64_t k) {
  return 2 * align_up(sizeof(int32_t) * T * k) + align_up(sizeof(float) * T * k * F);
}

void moe_fallback(DType dtype, const void* x, const void* router, const void* w1, const void* w3, const void* w2,
                  int64_t T, int64_t H, int64_t E, int64_t F, int64_t k, bool normalize, bool swiglu, void* y,
                  void* scratch, cudaStream_t stream) {
  if (T <= 0) return;
  MINILLM_CHECK(E <= kMaxExperts, "moe: num_experts = " << E << " exceeds " << kMaxExperts);
  if (!swiglu) w3 = nullptr;
  if (dtype == DType::bf16) {
    launch<__nv_bfloat16>(x, router, w1, w3, w2, T, H, E, F, k, normalize, y, scratch, stream);
  } else {
    launch<__half>(x, router, w1, w3, w2, T, H, E, F, k, normalize, y, scratch, stream);
  }
}

}  // namespace minillm::cuda::engine
