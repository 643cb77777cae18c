// MoE router: the router GEMM, then softmax -> top-k -> optional renormalisation fused in one kernel.
//
// router_gemm_kernel: logits [T, E] fp32 = x [T, H] . router [E, H]^T with mma.sync m16n8k16 (fp32
// accumulation). Tile 64 tokens x 64 experts x 64 of H, 4 warps of 16 tokens x 64 experts, tiles
// staged in padded shared memory (row stride 72 elements: conflict-free fragment loads) with the next
// tile's 16-byte global loads in flight during the MMAs. Blocks of the same tokens are adjacent in
// the grid (expert tiles fastest), so x is read from DRAM once. When tokens are few the H axis is
// split (split-K) so that ~2 blocks per SM still stream x and the router weights; the partial sums
// go to [splits, T, E] and are added in split order by the top-k kernel (deterministic, no atomics).
//
// router_topk_kernel: one warp per token (topk_warp, moe_topk.cuh): the splits summed in order,
// softmax in fp32, top-k on the logits with ties to the lower expert index, optional renormalisation.
//
// router_fused_kernel (E <= 32, T >= 1024): both in one pass, see its comment below.
// ids / weights rows have a stride ld >= k: a shared expert's S slots follow the k routed ones
// (shared_slots_kernel fills them: sigmoid of the gate's dot product, one warp per token).
// Cost: the GEMM reads x once (T*H*2 bytes), bandwidth-bound. Measurements (the fused kernel against
// the two, the routing kernels' share of the layer): docs/REPORT.md.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "cuda/moe/moe_ops.h"
#include "cuda/moe/moe_topk.cuh"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::moe {
namespace {

constexpr int kGemmTile = 64;  // tokens, experts and H per block step
constexpr int kGemmThreads = 128;
constexpr int kGemmLd = kGemmTile + 8;  // padded shared row (elements)

// One 64-wide K step of a warp's 16 x (kNT * 8) tile of logits: tokens warp*16.. of xs [64][kGemmLd]
// against experts 0..kNT*8 of rs [kNT*8][kGemmLd], both in shared memory.
template <typename T, int kNT>
__device__ __forceinline__ void mma_k_step(const T* xs, const T* rs, int warp, int lane, float (&acc)[kNT][4]) {
  const int g = lane / 4, q = lane % 4, r = warp * 16 + g;
#pragma unroll
  for (int kk = 0; kk < kGemmTile; kk += 16) {
    const uint32_t a0 = *reinterpret_cast<const uint32_t*>(&xs[r * kGemmLd + kk + 2 * q]);
    const uint32_t a1 = *reinterpret_cast<const uint32_t*>(&xs[(r + 8) * kGemmLd + kk + 2 * q]);
    const uint32_t a2 = *reinterpret_cast<const uint32_t*>(&xs[r * kGemmLd + kk + 2 * q + 8]);
    const uint32_t a3 = *reinterpret_cast<const uint32_t*>(&xs[(r + 8) * kGemmLd + kk + 2 * q + 8]);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&rs[(nt * 8 + g) * kGemmLd + kk + 2 * q]);
      const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&rs[(nt * 8 + g) * kGemmLd + kk + 2 * q + 8]);
      mma_16816<T>(acc[nt], a0, a1, a2, a3, b0, b1);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    router_gemm_kernel(const T* __restrict__ x, const T* __restrict__ router, int64_t T_tokens, int E, int64_t H,
                       int64_t k_per_split, float* __restrict__ out) {
  __shared__ __align__(16) T xs[kGemmTile][kGemmLd];
  __shared__ __align__(16) T rs[kGemmTile][kGemmLd];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int n0 = blockIdx.x * kGemmTile;                                 // experts
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kGemmTile;       // tokens
  const int64_t k_begin = blockIdx.z * k_per_split;
  const int64_t k_end = min(H, k_begin + k_per_split);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;

  // Each thread moves 4 + 4 of the 512 + 512 16-byte chunks of a step.
  uint4 xv[4], rv[4];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = tid + kGemmThreads * j, row = c / 8, col = (c % 8) * 8;
      xv[j] = m0 + row < T_tokens ? *reinterpret_cast<const uint4*>(x + (m0 + row) * H + k0 + col) : make_uint4(0, 0, 0, 0);
      rv[j] = n0 + row < E ? *reinterpret_cast<const uint4*>(router + static_cast<int64_t>(n0 + row) * H + k0 + col)
                           : make_uint4(0, 0, 0, 0);
    }
  };
  float acc[8][4] = {};
  if (k_begin < k_end) load(k_begin);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kGemmTile) {
    __syncthreads();  // the previous step's MMAs are done with the tiles
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = tid + kGemmThreads * j, row = c / 8, col = (c % 8) * 8;
      *reinterpret_cast<uint4*>(&xs[row][col]) = xv[j];
      *reinterpret_cast<uint4*>(&rs[row][col]) = rv[j];
    }
    __syncthreads();
    if (k0 + kGemmTile < k_end) load(k0 + kGemmTile);  // in flight during the MMAs
    mma_k_step<T, 8>(&xs[0][0], &rs[0][0], warp, lane, acc);
  }
  float* o = out + static_cast<int64_t>(blockIdx.z) * T_tokens * E;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t t = m0 + warp * 16 + g + (i >= 2 ? 8 : 0);
      const int e = n0 + nt * 8 + 2 * q + (i & 1);
      if (t < T_tokens && e < E) o[t * E + e] = acc[nt][i];
    }
  }
}


constexpr int kWarpsPerBlock = 8;

// router_topk_kernel: one warp per token (topk_warp, moe_topk.cuh).
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    router_topk_kernel(const float* __restrict__ logits, int splits, int64_t T, int E, int k, int ld, bool normalize,
                       int32_t* __restrict__ ids, float* __restrict__ weights) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t < T) topk_warp(logits, splits, T, E, k, ld, normalize, t, threadIdx.x & 31, ids, weights);
}


// router_fused_kernel: logits and top-k in one pass for E <= 32, when there are enough tokens to fill
// the GPU without split-K. Block of 128 threads = 64 tokens (4 warps x 16, mma.sync as above) x the E
// experts padded to kNT * 8; x and the router rows stream through a kStages-deep cp.async pipeline
// (the two-kernel path above keeps one load in flight and was latency-bound at T=16384 H1024 E8). The [64, E] logit tile then goes through shared memory and one thread per token does
// the softmax (fp32, experts in ascending order) and the top-k selection (k passes of an arg-max,
// ties to the lower expert index), as router_topk_kernel does.
constexpr int kFusedStages = 4;
constexpr int kFusedMaxE = 32;  // at E64 the fused kernel measured slower than the two (docs/REPORT.md)

template <int kNT>
constexpr int fused_smem_bytes() {
  return kFusedStages * (kGemmTile + kNT * 8) * kGemmLd * 2;
}

template <typename T, int kNT>
__global__ void __launch_bounds__(kGemmThreads)
    router_fused_kernel(const T* __restrict__ x, const T* __restrict__ router, int64_t T_tokens, int E, int64_t H,
                        int k, int ld, bool normalize, int32_t* __restrict__ ids, float* __restrict__ weights) {
  constexpr int kRows = kGemmTile + kNT * 8;  // x rows, then router rows, of one stage
  extern __shared__ __align__(16) uint8_t fused_smem[];
  T* tiles = reinterpret_cast<T*>(fused_smem);  // [kStages][kRows][kGemmLd]
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kGemmTile;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int steps = static_cast<int>(H / kGemmTile);

  auto load = [&](int step) {
    T* st = tiles + (step % kFusedStages) * kRows * kGemmLd;
    const int64_t k0 = static_cast<int64_t>(step) * kGemmTile;
    for (int c = tid; c < kRows * 8; c += kGemmThreads) {
      const int row = c / 8, col = (c % 8) * 8;
      const bool is_x = row < kGemmTile;
      const int64_t src_row = is_x ? m0 + row : row - kGemmTile;
      const bool ok = is_x ? src_row < T_tokens : src_row < E;
      const T* src = (is_x ? x : router) + (ok ? src_row : 0) * H + k0 + col;
      cp_async_16(static_cast<uint32_t>(__cvta_generic_to_shared(st + row * kGemmLd + col)), src, ok);
    }
  };
#pragma unroll
  for (int s = 0; s < kFusedStages - 1; ++s) {
    if (s < steps) load(s);
    cp_async_commit();
  }
  float acc[kNT][4] = {};
  for (int step = 0; step < steps; ++step) {
    cp_async_wait<kFusedStages - 2>();
    __syncthreads();  // stage `step` has landed for all threads; stage step - 1 is free again
    if (step + kFusedStages - 1 < steps) load(step + kFusedStages - 1);
    cp_async_commit();
    const T* xs = tiles + (step % kFusedStages) * kRows * kGemmLd;
    mma_k_step<T, kNT>(xs, xs + kGemmTile * kGemmLd, warp, lane, acc);
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the tiles: reuse them for the logits
  constexpr int kLd = kNT * 8 + 1;
  float* lg = reinterpret_cast<float*>(fused_smem);  // [64][kLd]
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) lg[(warp * 16 + g + (i >= 2 ? 8 : 0)) * kLd + nt * 8 + 2 * q + (i & 1)] = acc[nt][i];
  __syncthreads();
  const int64_t t = m0 + tid;
  if (tid >= kGemmTile || t >= T_tokens) return;
  const float* v = lg + tid * kLd;
  float mx = -FLT_MAX;
  for (int e = 0; e < E; ++e) mx = fmaxf(mx, v[e]);
  float sum = 0.0f;
  for (int e = 0; e < E; ++e) sum += __expf(v[e] - mx);
  const float inv = 1.0f / sum;
  uint64_t taken = 0;
  float sel[8];
  int sel_e[8];
  float total = 0.0f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e)
      if (!(taken >> e & 1u) && (best < 0 || v[e] > v[best])) best = e;  // strict >: ties to the lower index
    taken |= uint64_t{1} << best;
    sel_e[j] = best;
    sel[j] = __expf(v[best] - mx) * inv;
    total += sel[j];
  }
  const float scale = normalize ? 1.0f / total : 1.0f;
  for (int j = 0; j < k; ++j) {
    ids[t * ld + j] = sel_e[j];
    weights[t * ld + j] = sel[j] * scale;
  }
}

template <typename T, int kNT>
void launch_fused(const void* x, const void* router, int64_t T_tokens, int E, int64_t H, int k, int ld, bool normalize,
                  int32_t* ids, float* weights, cudaStream_t stream) {
  constexpr int smem = fused_smem_bytes<kNT>();
  static_assert(smem >= kGemmTile * (kNT * 8 + 1) * 4, "the logit tile reuses the pipeline's memory");
  auto kernel = router_fused_kernel<T, kNT>;
  if constexpr (smem > 48 * 1024) set_max_dynamic_smem<router_fused_kernel<T, kNT>>(smem);
  const unsigned blocks = static_cast<unsigned>((T_tokens + kGemmTile - 1) / kGemmTile);
  kernel<<<blocks, kGemmThreads, smem, stream>>>(static_cast<const T*>(x), static_cast<const T*>(router), T_tokens, E,
                                                 H, k, ld, normalize, ids, weights);
  MINILLM_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_fused_nt(const void* x, const void* router, int64_t T_tokens, int E, int64_t H, int k, int ld,
                     bool normalize, int32_t* ids, float* weights, cudaStream_t stream) {
  if (E <= 8) return launch_fused<T, 1>(x, router, T_tokens, E, H, k, ld, normalize, ids, weights, stream);
  if (E <= 16) return launch_fused<T, 2>(x, router, T_tokens, E, H, k, ld, normalize, ids, weights, stream);
  return launch_fused<T, 4>(x, router, T_tokens, E, H, k, ld, normalize, ids, weights, stream);
}

// shared_slots_kernel: one warp per token; the dot product x[t] . gate over H in fp32 (16-byte loads,
// a fixed butterfly: reproducible), then slots k .. k+S-1 of the token's row get experts E .. E+S-1
// with weight sigmoid(dot).
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    shared_slots_kernel(const uint4* __restrict__ x, const uint4* __restrict__ gate, int64_t T_tokens,
                        int64_t vecs, int E, int k, int S, int ld, int32_t* __restrict__ ids,
                        float* __restrict__ weights) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t >= T_tokens) return;
  float dot = 0.0f;
  for (int64_t i = lane; i < vecs; i += 32) {
    float a[8], b[8];
    unpack8<T>(x[t * vecs + i], a);
    unpack8<T>(gate[i], b);
#pragma unroll
    for (int c = 0; c < 8; ++c) dot = fmaf(a[c], b[c], dot);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  if (lane < S) {
    ids[t * ld + k + lane] = E + lane;
    weights[t * ld + k + lane] = 1.0f / (1.0f + __expf(-dot));
  }
}
}  // namespace

int router_splits(int64_t T, int64_t E, int64_t H) {
  const int64_t blocks = ((T + kGemmTile - 1) / kGemmTile) * ((E + kGemmTile - 1) / kGemmTile);
  const int64_t steps = H / kGemmTile;
  const int64_t want = (264 + blocks - 1) / blocks;  // ~2 blocks per SM on an H100
  return static_cast<int>(std::max<int64_t>(1, std::min(want, steps / 4)));
}

void router_logits(DType dtype, const void* x, const void* router, int64_t T, int E, int64_t H, int splits,
                   float* out, cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(H % kGemmTile == 0 && splits >= 1 && E >= 1, "router_logits: H = " << H << ", splits = " << splits);
  MINILLM_CHECK((T + kGemmTile - 1) / kGemmTile <= 65535, "router_logits: T = " << T << " is too large");
  const int64_t steps = H / kGemmTile;
  const int64_t k_per_split = (steps + splits - 1) / splits * kGemmTile;
  const dim3 grid((E + kGemmTile - 1) / kGemmTile, static_cast<unsigned>((T + kGemmTile - 1) / kGemmTile), splits);
  if (dtype == DType::bf16) {
    cuda::launch(router_gemm_kernel<__nv_bfloat16>, grid, kGemmThreads, 0, stream, static_cast<const __nv_bfloat16*>(x),
                 static_cast<const __nv_bfloat16*>(router), T, E, H, k_per_split, out);
  } else {
    cuda::launch(router_gemm_kernel<__half>, grid, kGemmThreads, 0, stream, static_cast<const __half*>(x),
                 static_cast<const __half*>(router), T, E, H, k_per_split, out);
  }
}

void router_topk(const float* logits, int splits, int64_t T, int E, int k, int ld, bool normalize, int32_t* ids,
                 float* weights, cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(E >= 1 && E <= 32 * kTopkMaxPerLane && k >= 1 && k <= 8 && k <= E && ld >= k,
                "router_topk: E = " << E << ", k = " << k << ", ld = " << ld);
  const int64_t blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  router_topk_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(logits, splits, T, E, k, ld,
                                                                                        normalize, ids, weights);
  MINILLM_CUDA_CHECK_LAUNCH();
}

bool router_fused_supported(int64_t T, int E) { return E <= kFusedMaxE && T >= kRouterFusedMinTokens; }

void router_fused(DType dtype, const void* x, const void* router, int64_t T, int E, int64_t H, int k, int ld,
                  bool normalize, int32_t* ids, float* weights, cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(H % kGemmTile == 0 && E >= 1 && E <= kFusedMaxE && k >= 1 && k <= 8 && k <= E && ld >= k,
                "router_fused: H = " << H << ", E = " << E << ", k = " << k << ", ld = " << ld);
  MINILLM_CHECK((T + kGemmTile - 1) / kGemmTile < (int64_t{1} << 31), "router_fused: T = " << T << " is too large");
  if (dtype == DType::bf16) {
    launch_fused_nt<__nv_bfloat16>(x, router, T, E, H, k, ld, normalize, ids, weights, stream);
  } else {
    launch_fused_nt<__half>(x, router, T, E, H, k, ld, normalize, ids, weights, stream);
  }
}

void shared_slots(DType dtype, const void* x, const void* gate, int64_t T, int64_t H, int E, int k, int S, int ld,
                  int32_t* ids, float* weights, cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(H % 8 == 0 && S >= 1 && S <= 32 && k + S <= ld, "shared_slots: H = " << H << ", S = " << S
                                                                                      << ", k = " << k << ", ld = " << ld);
  const auto* xv = static_cast<const uint4*>(x);
  const auto* gv = static_cast<const uint4*>(gate);
  const unsigned blocks = static_cast<unsigned>((T + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (dtype == DType::bf16) {
    cuda::launch(shared_slots_kernel<__nv_bfloat16>, blocks, kWarpsPerBlock * 32, 0, stream, xv, gv, T, H / 8, E, k,
                 S, ld, ids, weights);
  } else {
    cuda::launch(shared_slots_kernel<__half>, blocks, kWarpsPerBlock * 32, 0, stream, xv, gv, T, H / 8, E, k, S, ld,
                 ids, weights);
  }
}

}  // namespace minillm::cuda::moe
