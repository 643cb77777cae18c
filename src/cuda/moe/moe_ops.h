// Launchers of the CUDA MoE kernels (src/cuda/moe/*.cu): raw device pointers, explicit sizes, a
// stream. MoELayer (moe_layer.cpp) strings them together:
//
//   router_logits -> router_topk (or router_fused) -> permute (histogram, offsets, stable scatter) -> gather_rows
//   -> grouped_gemm(swiglu | gelu) -> grouped_gemm(none)   (T > 64; decode_gemm for T <= 64)
//   -> combine
//
// The permuted layout: the (token, slot) pairs sorted by expert (stable: by pair index t*k+j within an
// expert); expert e owns rows [row_offset[e], row_offset[e] + counts[e]) of x_perm / h / y_perm, and
// row_offset[e] is a multiple of `row_align` (128 for the grouped GEMM, so that no 128-row tile
// straddles two experts; 1 for the decode path). Row counts stay < 2^31; byte offsets are 64-bit.
// The GEMM operands have row strides `ld*` in elements (>= their columns, multiples of 8).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "minillm/core/dtype.h"
#include "minillm/moe.h"

namespace minillm::cuda::moe {

// ---- moe_router.cu ----
// Router GEMM: logits_part[s, t, e] = sum over the s-th slice of H of x[t, :] . router[e, :], fp32
// accumulation. x: [T, H], router: [E, H] (2-byte floats, H % 64 == 0), out: [splits, T, E] fp32.
// `splits` slices of H (split-K, so that few tokens still fill the GPU) are summed, in order, by
// router_topk: no atomics.
int router_splits(int64_t T, int64_t E, int64_t H);
void router_logits(DType dtype, const void* x, const void* router, int64_t T, int E, int64_t H, int splits,
                   float* out, cudaStream_t stream);
// logits: [splits, T, E] fp32 -> ids [T, k] int32 (descending weight; ties to the lower expert index),
// weights [T, k] fp32: sum of the splits, softmax over E in fp32, top-k, then w / sum(w) when
// `normalize`. E <= 256, k <= min(8, E).
void router_topk(const float* logits, int splits, int64_t T, int E, int k, bool normalize, int32_t* ids,
                 float* weights, cudaStream_t stream);
// Both in one kernel (router_fused_kernel): the same ids and weights up to the logits' fp32 summation
// order. For E <= 32 and T >= kRouterFusedMinTokens (enough 64-token blocks without split-K).
constexpr int64_t kRouterFusedMinTokens = 1024;
bool router_fused_supported(int64_t T, int E);
void router_fused(DType dtype, const void* x, const void* router, int64_t T, int E, int64_t H, int k, bool normalize,
                  int32_t* ids, float* weights, cudaStream_t stream);

// ---- moe_permute.cu ----
constexpr int kPermuteChunk = 2048;  // pairs per block of the histogram and scatter kernels
constexpr int kGemmBlockM = 128;     // rows per tile of the grouped GEMM (and its row alignment)

inline int64_t permute_num_chunks(int64_t pairs) { return (pairs + kPermuteChunk - 1) / kPermuteChunk; }
// Rows of the permuted buffers for `pairs` pairs over E experts aligned to row_align.
inline int64_t permuted_rows(int64_t pairs, int64_t E, int64_t row_align) { return pairs + E * (row_align - 1); }

// The row stride (elements of 2 bytes) for a matrix of `cols` columns (a multiple of 64) that the grouped
// GEMM reads fastest: an odd multiple of 128 bytes. With a power-of-two stride the 128-byte rows of a TMA
// box fall into few L2 sets and evict each other. Measured (ncu, H100) at T=32768 H4096 E32 top-2 F14336,
// the gate/up GEMM: weights with 8 KB rows 134 GB read from DRAM, 47.0 ms; with 8320-byte rows 93-98 GB,
// 34-36 ms (the layer: 56.5 -> 49.5 ms). A 16-byte pad does not help (rows must stay 128-byte aligned);
// padding the activations' rows (x_perm, h) changed nothing measurable, so they stay dense.
inline int64_t fast_row_stride(int64_t cols) {
  int64_t units = (cols + 63) / 64;
  if (units % 2 == 0) ++units;
  return units * 64;
}

struct Routing {
  int32_t* chunk_counts = nullptr;   // [E, nchunks] scratch: pairs of expert e in chunk c, then their base
  int32_t* counts = nullptr;         // [E] pairs routed to expert e
  int32_t* row_offset = nullptr;     // [E] first permuted row of expert e
  int32_t* num_mblocks = nullptr;    // [1] 128-row blocks of the permuted rows (row_align 128)
  int32_t* mblock_expert = nullptr;  // [permuted_rows / 128] expert of each 128-row block
  int32_t* dest = nullptr;           // [T * k] permuted row of pair (t, j)
  int32_t* src_pair = nullptr;       // [permuted rows] the pair t*k + j of each row (alignment rows: unset)
  int32_t* tile_counter = nullptr;   // [1] zeroed by permute (row_align 128): the grouped GEMMs' tile counter
};

// Counting sort of the pairs by expert: fills every field of `r` from ids [T, k].
void permute(const int32_t* ids, int64_t T, int k, int E, int row_align, const Routing& r, cudaStream_t stream);

// x_perm[dest[t*k + j]] = x[t] for all pairs. x: [T, H], x_perm: [rows, H]; 2-byte elements.
void gather_rows(const void* x, int64_t T, int k, int64_t H, const int32_t* dest, void* x_perm,
                 cudaStream_t stream);

// ---- moe_combine.cu ----
// y[t] = sum_j weights[t, j] * y_perm[dest[t*k + j]] in fp32, slot order j = 0..k-1. y_perm: [rows, H].
// With T*k tokens and k = 1 it is the weighted un-permutation y[p] = weights[p] * y_perm[dest[p]].
void combine(DType dtype, const void* y_perm, const int32_t* dest, const float* weights, int64_t T, int k,
             int64_t H, void* y, cudaStream_t stream);

// ---- moe_grouped_gemm*.cu ----
enum class Epilogue { swiglu, gelu, none, combine, rope64, rope128 };

// For every 128-row block m of A (expert e = mblock_expert[m]):
//   swiglu: D[m rows, f] = silu(A . w0[e, f]) * (A . w1[e, f])   (w0 = gate, w1 = up: [E, N, K]; D: [rows, N])
//   gelu:   D[m rows, n] = gelu(A . w0[e, n])                     (w0: [E, N, K])
//   none:   D[m rows, n] = A . w0[e, n]                           (w0: [E, N, K]; e.g. the down projection)
//   combine: none, each row r scaled by pair_weight[src_pair[r]] and stored to row src_pair[r] of D
//           [pairs, N] (token-pair order t*k + j: the combine's sum over j is left to the caller);
//           an expert's alignment rows are not stored
//   rope64 / rope128: none, then RoPE (HF rotate_half, head dim 64 / 128) on columns [0, rope_cols) of
//           row r at position r % rope_seq: the fused QKV projection of the engine (dense, E = 1).
// Dense GEMM: mblock_expert == nullptr and E == 1; every row of A is expert 0's (num_mblocks, counts
// and row_offset are not read).
struct GroupedGemmArgs {
  DType dtype = DType::bf16;
  Epilogue epilogue = Epilogue::none;
  const void* a = nullptr;  // [rows, K], row stride lda
  int64_t lda = 0;
  int64_t rows = 0;         // rows of A and D (multiple of 128 not required)
  int64_t K = 0;            // multiple of 8
  const void* w0 = nullptr;  // [E, N, K], row stride ldw (expert e's rows start at e * N)
  const void* w1 = nullptr;
  int64_t ldw = 0;
  int64_t N = 0;  // output columns = rows per expert of w0 / w1; multiple of 8
  int E = 0;
  void* d = nullptr;                        // [rows, N], row stride ldd
  int64_t ldd = 0;
  const int32_t* num_mblocks = nullptr;     // [1] (device)
  const int32_t* mblock_expert = nullptr;   // [max_mblocks] (device)
  const int32_t* counts = nullptr;          // [E] rows per expert (device)
  const int32_t* row_offset = nullptr;      // [E] first row per expert, multiples of 128 (device)
  int64_t max_mblocks = 0;                  // host bound on *num_mblocks
  int32_t* tile_counter = nullptr;          // [1] (device) zero at launch; the GEMM leaves it zero
  const void* rope_table = nullptr;         // rope*: [positions, head dim / 2] float2 (cos, sin)
  int64_t rope_cols = 0;                    // rope*: rotated columns (q and k heads; a multiple of the head dim)
  int rope_seq = 1;                         // rope*: row r is at position r % rope_seq (< positions)
  const int32_t* src_pair = nullptr;        // combine: [rows] (Routing::src_pair)
  const float* pair_weight = nullptr;       // combine: [pairs] routing weights
  int group_m = 0;                          // most m-blocks per raster group; 0: the default (GemmTraits::kGroupM)
};
void grouped_gemm(const GroupedGemmArgs& args, cudaStream_t stream);

// ---- moe_decode.cu ----
// The same three products for few tokens per expert (counts[e] <= 64): every active expert's weights
// are streamed once. A rows of expert e: [row_offset[e], row_offset[e] + counts[e]).
struct DecodeGemmArgs {
  DType dtype = DType::bf16;
  Epilogue epilogue = Epilogue::none;
  const void* a = nullptr;  // [rows, K], row stride lda
  int64_t lda = 0;
  int64_t K = 0;            // multiple of 32
  const void* w0 = nullptr;  // [E, N, K], row stride ldw
  const void* w1 = nullptr;
  int64_t ldw = 0;
  int64_t N = 0;  // multiple of 16
  int E = 0;
  const int32_t* counts = nullptr;
  const int32_t* row_offset = nullptr;
  void* d = nullptr;  // [rows, N], row stride ldd
  int64_t ldd = 0;
};
// Rows per expert on the decode path: at most one per token (an expert appears once in a token's top-k),
// and the decode path takes up to MoELayer::kDecodeMaxTokens tokens.
constexpr int kDecodeMaxRows = static_cast<int>(MoELayer::kDecodeMaxTokens);
void decode_gemm(const DecodeGemmArgs& args, cudaStream_t stream);

}  // namespace minillm::cuda::moe
