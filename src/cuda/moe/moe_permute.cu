// MoE permutation: a deterministic, stable counting sort of the (token, slot) pairs by expert, and
// the gather of the tokens' rows into that order. No host synchronisation: every size that depends
// on the routing stays on the device (counts, offsets, the number of 128-row GEMM blocks).
//
// Algorithm (pairs p = t*k + j, key ids[p]; chunks of kPermuteChunk = 2048 pairs):
//   1. histogram_kernel  (one block per chunk): per-chunk expert counts via shared-memory atomics
//      (a count is order-free, so the result is deterministic) -> chunk_counts [E, nchunks].
//   2. offsets_kernel    (one block): per expert, an exclusive warp scan over the chunks turns
//      chunk_counts into each chunk's base within the expert; a scan over the experts of the counts
//      rounded up to row_align gives row_offset[e]; then num_mblocks and mblock_expert[] for the
//      grouped GEMM's tile order, and its tile counter zeroed.
//   3. scatter_kernel    (one block per chunk): stable ranks. Rounds of 256 pairs in order; in a
//      warp, __match_any_sync groups equal experts and the rank is the popcount of the lower lanes;
//      warps are ordered through a [8][E] shared table. dest[p] = row_offset + chunk base + rank,
//      and its inverse src_pair[dest[p]] = p (for the down GEMM's combine epilogue).
//   4. gather_kernel     (one block per token): x[t] is read once with 16-byte loads and written to
//      its k permuted rows.
// Decode (T * k <= 512 pairs, row_align 1): decode_route_kernel, one block, does the router's top-k
// and steps 1-3 in one launch (a decode step's routing was five launches of a few microseconds each);
// the decode GEMM reads x's rows through src_pair, so there is no gather.
// Indexing: pair and row counts < 2^31 (T <= 2^28 / k); byte offsets are computed in 64 bits.
// Cost: the gather moves T*k*H*2 bytes; the sort kernels are small.
// Measurements (the routing kernels' share of the layer): docs/REPORT.md.
#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "cuda/launch.cuh"
#include "cuda/moe/moe_ops.h"
#include "cuda/moe/moe_topk.cuh"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::moe {
namespace {

constexpr int kThreads = 256;  // histogram / scatter blocks; also the largest E
constexpr int kRounds = kPermuteChunk / kThreads;

__global__ void __launch_bounds__(kThreads)
    histogram_kernel(const int32_t* __restrict__ ids, int64_t pairs, int E, int nchunks,
                     int32_t* __restrict__ chunk_counts) {
  __shared__ int counts[kThreads];
  for (int e = threadIdx.x; e < E; e += kThreads) counts[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kPermuteChunk;
  for (int i = threadIdx.x; i < kPermuteChunk; i += kThreads) {
    const int64_t p = begin + i;
    if (p < pairs) atomicAdd(&counts[ids[p]], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kThreads) chunk_counts[static_cast<int64_t>(e) * nchunks + blockIdx.x] = counts[e];
}

constexpr int kOffsetThreads = 1024;

__device__ __forceinline__ int warp_inclusive_scan(int v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  return v;
}

// One warp: offset[e] = the exclusive scan of count[e] rounded up to row_align; returns the total.
__device__ __forceinline__ int expert_offsets(const int* count, int E, int row_align, int* offset, int lane) {
  int running = 0;
  for (int e0 = 0; e0 < E; e0 += 32) {
    const int e = e0 + lane;
    const int v = e < E ? (count[e] + row_align - 1) / row_align * row_align : 0;
    const int incl = warp_inclusive_scan(v, lane);
    if (e < E) offset[e] = running + incl - v;
    running += __shfl_sync(0xffffffffu, incl, 31);
  }
  return running;
}

__global__ void __launch_bounds__(kOffsetThreads)
    offsets_kernel(int32_t* __restrict__ chunk_counts, int E, int nchunks, int row_align,
                   int32_t* __restrict__ counts, int32_t* __restrict__ row_offset,
                   int32_t* __restrict__ num_mblocks, int32_t* __restrict__ mblock_expert,
                   int32_t* __restrict__ tile_counter) {
  __shared__ int s_count[kThreads];
  __shared__ int s_offset[kThreads + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // 1. Each chunk's base within its expert (in place), and the expert's total.
  for (int e = warp; e < E; e += kOffsetThreads / 32) {
    int32_t* row = chunk_counts + static_cast<int64_t>(e) * nchunks;
    int running = 0;
    for (int c0 = 0; c0 < nchunks; c0 += 32) {
      const int c = c0 + lane;
      const int v = c < nchunks ? row[c] : 0;
      const int incl = warp_inclusive_scan(v, lane);
      if (c < nchunks) row[c] = running + incl - v;
      running += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) s_count[e] = running;
  }
  __syncthreads();
  // 2. Expert offsets: exclusive scan of the counts rounded up to row_align (warp 0).
  if (warp == 0) {
    const int running = expert_offsets(s_count, E, row_align, s_offset, lane);
    if (lane == 0) {
      s_offset[E] = running;
      *num_mblocks = (running + kGemmBlockM - 1) / kGemmBlockM;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kOffsetThreads) {
    counts[e] = s_count[e];
    row_offset[e] = s_offset[e];
  }
  // 3. The expert of each 128-row block and the zeroed GEMM tile counter (only with row_align == 128).
  if (row_align == kGemmBlockM) {
    if (threadIdx.x == 0) *tile_counter = 0;
    for (int e = warp; e < E; e += kOffsetThreads / 32) {
      const int b0 = s_offset[e] / kGemmBlockM, b1 = s_offset[e + 1] / kGemmBlockM;
      for (int b = b0 + lane; b < b1; b += 32) mblock_expert[b] = e;
    }
  }
}

constexpr int kWarps = kThreads / 32;

// Stable ranks of pairs begin .. begin + rounds * 256 (< pairs) in rounds of 256: in a warp,
// __match_any_sync groups equal experts and the rank is the popcount of the lower lanes; warps are
// ordered through warp_count [8][E] (zero on entry, left zero). base[e]: expert e's next row, advanced.
// (ids is not __restrict__: decode_route_kernel writes it in the same launch, so no read-only-cache loads.)
__device__ __forceinline__ void scatter_rounds(const int32_t* ids, int64_t pairs, int E, int64_t begin,
                                               int rounds, int* base, int (*warp_count)[kThreads],
                                               int32_t* __restrict__ dest, int32_t* __restrict__ src_pair) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int e_own = threadIdx.x;  // this thread keeps expert e_own's running base
  for (int r = 0; r < rounds; ++r) {
    const int64_t p = begin + r * kThreads + threadIdx.x;
    const bool valid = p < pairs;
    const int e = valid ? ids[p] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid && rank == 0) warp_count[warp][e] = __popc(peers);
    __syncthreads();
    if (valid) {
      int off = base[e] + rank;
      for (int w = 0; w < warp; ++w) off += warp_count[w][e];
      dest[p] = off;
      src_pair[off] = static_cast<int32_t>(p);
    }
    __syncthreads();
    if (e_own < E) {
      int add = 0;
      for (int w = 0; w < kWarps; ++w) {
        add += warp_count[w][e_own];
        warp_count[w][e_own] = 0;
      }
      base[e_own] += add;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const int32_t* __restrict__ ids, int64_t pairs, int E, int nchunks,
                   const int32_t* __restrict__ chunk_base, const int32_t* __restrict__ row_offset,
                   int32_t* __restrict__ dest, int32_t* __restrict__ src_pair) {
  __shared__ int base[kThreads];
  __shared__ int warp_count[kWarps][kThreads];
  const int e_own = threadIdx.x;
  if (e_own < E) {
    base[e_own] = row_offset[e_own] + chunk_base[static_cast<int64_t>(e_own) * nchunks + blockIdx.x];
    for (int w = 0; w < kWarps; ++w) warp_count[w][e_own] = 0;
  }
  __syncthreads();
  scatter_rounds(ids, pairs, E, static_cast<int64_t>(blockIdx.x) * kPermuteChunk, kRounds, base, warp_count, dest,
                 src_pair);
}

// The decode path's routing by one block of kThreads (decode_route_kernel; the last block of
// decode_router_kernel). Warp w takes the top-k of tokens w, w + 8, ... (topk_warp); then the counting
// sort with row_align 1: a shared-memory histogram, warp 0's exclusive scan over the experts (warp 1
// meanwhile lists the experts with pairs for the decode GEMMs' grid), and scatter_rounds.
__device__ __forceinline__ void decode_route_block(const float* logits, int splits, int T, int E_routed, int k, int ld,
                                                   int E, bool normalize, int32_t* ids, float* weights,
                                                   const Routing& r) {
  __shared__ int count[kThreads];
  __shared__ int base[kThreads];
  __shared__ int warp_count[kWarps][kThreads];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int t = warp; t < T; t += kWarps)
    topk_warp(logits, splits, T, E_routed, k, ld, normalize, t, lane, ids, weights);
  if (threadIdx.x < E) {
    count[threadIdx.x] = 0;
    for (int w = 0; w < kWarps; ++w) warp_count[w][threadIdx.x] = 0;
  }
  __syncthreads();  // ids (and the shared slots a previous kernel wrote) visible to the block
  const int pairs = T * ld;
  for (int p = threadIdx.x; p < pairs; p += kThreads) atomicAdd(&count[ids[p]], 1);
  __syncthreads();
  if (warp == 0) expert_offsets(count, E, 1, base, lane);
  if (warp == 1) {  // the experts with pairs, compacted in ascending order
    int n = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const bool has = e0 + lane < E && count[e0 + lane] > 0;
      const unsigned m = __ballot_sync(0xffffffffu, has);
      if (has) r.active[n + __popc(m & ((1u << lane) - 1u))] = e0 + lane;
      n += __popc(m);
    }
    if (lane == 0) *r.num_active = n;
  }
  __syncthreads();
  if (threadIdx.x < E) {
    r.counts[threadIdx.x] = count[threadIdx.x];
    r.row_offset[threadIdx.x] = base[threadIdx.x];
  }
  scatter_rounds(ids, pairs, E, 0, (pairs + kThreads - 1) / kThreads, base, warp_count, r.dest, r.src_pair);
}

// decode_route_kernel (one block, T * ld <= 512 pairs): the decode path's routing in one launch.
__global__ void __launch_bounds__(kThreads)
    decode_route_kernel(const float* __restrict__ logits, int splits, int T, int E_routed, int k, int ld, int E,
                        bool normalize, int32_t* ids, float* __restrict__ weights, Routing r) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  decode_route_block(logits, splits, T, E_routed, k, ld, E, normalize, ids, weights, r);
}

// decode_router_kernel (T <= kDecodeRouterMaxTokens): the router GEMM and the routing in one launch.
// Warp w of block b computes expert e = b * kWarps + w's logits for all T tokens: its lanes stride over
// the expert's router row in 16-byte vectors (8 bf16/fp16 per lane and step, fp32 products; the x rows
// are 16-byte loads through L1, shared by the block's warps), then a fixed butterfly per token
// (bitwise reproducible). The router rows are asked of L2 before the PDL wait (weights: no kernel of
// the step writes them). Every block then counts itself in on `counter` (last_block_of, as the decode
// GEMM's tails); the last one runs decode_route_block on the logits [T, E]. This replaces the split-K MMA router (router_gemm_kernel) and decode_route_kernel:
// one kernel boundary less per layer.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    decode_router_kernel(const T* __restrict__ x, const T* __restrict__ router, int T_tokens, int E_routed, int64_t H,
                         float* logits, int k, int ld, int E, bool normalize, int32_t* ids, float* weights,
                         Routing r, int32_t* counter) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int e = blockIdx.x * kWarps + warp;
  const T* wrow = router + static_cast<int64_t>(e) * H;  // [H]
  if (e < E_routed && lane == 0) l2_prefetch(wrow, static_cast<uint32_t>(H * sizeof(T)));
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  if (e < E_routed) {
    float acc[kDecodeRouterMaxTokens] = {};
#pragma unroll 4
    for (int64_t i = lane * 8; i < H; i += 32 * 8) {
      float wv[8];
      unpack8<T>(__ldg(reinterpret_cast<const uint4*>(wrow + i)), wv);
#pragma unroll
      for (int t = 0; t < kDecodeRouterMaxTokens; ++t) {
        if (t >= T_tokens) break;
        float xv[8];
        unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + t * H + i)), xv);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[t] = fmaf(xv[j], wv[j], acc[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kDecodeRouterMaxTokens; ++t) {
      if (t >= T_tokens) break;
      float v = acc[t];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) logits[static_cast<int64_t>(t) * E_routed + e] = v;
    }
  }
  if (last_block_of(counter, static_cast<int>(gridDim.x)))
    decode_route_block(logits, 1, T_tokens, E_routed, k, ld, E, normalize, ids, weights, r);
}

constexpr int kGatherThreads = 128;

__global__ void __launch_bounds__(kGatherThreads)
    gather_kernel(const uint4* __restrict__ x, int k, int64_t vecs_per_row, const int32_t* __restrict__ dest,
                  uint4* __restrict__ x_perm) {
  const int64_t t = blockIdx.x;
  int64_t rows[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) rows[j] = j < k ? static_cast<int64_t>(dest[t * k + j]) * vecs_per_row : 0;
  const uint4* src = x + t * vecs_per_row;
  for (int64_t i = threadIdx.x; i < vecs_per_row; i += kGatherThreads) {
    const uint4 v = src[i];
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < k) x_perm[rows[j] + i] = v;
  }
}

}  // namespace

void permute(const int32_t* ids, int64_t T, int k, int E, int row_align, const Routing& r, cudaStream_t stream) {
  if (T == 0) return;
  const int64_t pairs = T * k;
  MINILLM_CHECK(E >= 1 && E <= kThreads, "permute: E = " << E);
  MINILLM_CHECK(pairs < (int64_t{1} << 30), "permute: " << pairs << " pairs exceed 2^30");
  MINILLM_CHECK(row_align == 1 || row_align == kGemmBlockM, "permute: row_align = " << row_align);
  const int nchunks = static_cast<int>(permute_num_chunks(pairs));
  histogram_kernel<<<nchunks, kThreads, 0, stream>>>(ids, pairs, E, nchunks, r.chunk_counts);
  MINILLM_CUDA_CHECK_LAUNCH();
  offsets_kernel<<<1, kOffsetThreads, 0, stream>>>(r.chunk_counts, E, nchunks, row_align, r.counts, r.row_offset,
                                                   r.num_mblocks, r.mblock_expert, r.tile_counter);
  MINILLM_CUDA_CHECK_LAUNCH();
  scatter_kernel<<<nchunks, kThreads, 0, stream>>>(ids, pairs, E, nchunks, r.chunk_counts, r.row_offset, r.dest,
                                                   r.src_pair);
  MINILLM_CUDA_CHECK_LAUNCH();
}

void decode_route(const float* logits, int splits, int64_t T, int E_routed, int k, int ld, int E, bool normalize,
                  int32_t* ids, float* weights, const Routing& r, cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(T * ld <= kDecodeRoutePairs && E >= E_routed && E <= kThreads &&
                    E_routed <= 32 * kTopkMaxPerLane && k >= 1 && k <= 8 && k <= E_routed && ld >= k,
                "decode_route: T = " << T << ", E = " << E_routed << " (" << E << " stored), k = " << k
                                     << ", ld = " << ld);
  cuda::launch(decode_route_kernel, 1, kThreads, 0, stream, logits, splits, static_cast<int>(T), E_routed, k, ld, E,
               normalize, ids, weights, r);
}

bool decode_router_supported(int64_t T, int E_routed, int64_t H) {
  return T >= 1 && T <= kDecodeRouterMaxTokens && E_routed <= kThreads && H % 8 == 0;
}

void decode_router(DType dtype, const void* x, const void* router, int64_t T, int E_routed, int64_t H, float* logits,
                   int k, int ld, int E, bool normalize, int32_t* ids, float* weights, const Routing& r,
                   int32_t* counter, cudaStream_t stream) {
  MINILLM_CHECK(decode_router_supported(T, E_routed, H) && counter && T * ld <= kDecodeRoutePairs && E >= E_routed &&
                    E <= kThreads && k >= 1 && k <= 8 && k <= E_routed && ld >= k,
                "decode_router: T = " << T << " (at most " << kDecodeRouterMaxTokens << "), E = " << E_routed << " ("
                                      << E << " stored), H = " << H << ", k = " << k << ", ld = " << ld);
  const unsigned blocks = static_cast<unsigned>((E_routed + kWarps - 1) / kWarps);
  if (dtype == DType::bf16) {
    cuda::launch(decode_router_kernel<__nv_bfloat16>, blocks, kThreads, 0, stream,
                 static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(router), static_cast<int>(T),
                 E_routed, H, logits, k, ld, E, normalize, ids, weights, r, counter);
  } else {
    cuda::launch(decode_router_kernel<__half>, blocks, kThreads, 0, stream, static_cast<const __half*>(x),
                 static_cast<const __half*>(router), static_cast<int>(T), E_routed, H, logits, k, ld, E, normalize,
                 ids, weights, r, counter);
  }
}

void gather_rows(const void* x, int64_t T, int k, int64_t H, const int32_t* dest, void* x_perm,
                 cudaStream_t stream) {
  if (T == 0) return;
  MINILLM_CHECK(H % 8 == 0 && k >= 1 && k <= 8, "gather_rows: H = " << H << ", k = " << k);
  MINILLM_CHECK(T < (int64_t{1} << 31), "gather_rows: T = " << T);
  gather_kernel<<<static_cast<unsigned>(T), kGatherThreads, 0, stream>>>(static_cast<const uint4*>(x), k, H / 8, dest,
                                                                         static_cast<uint4*>(x_perm));
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::moe
