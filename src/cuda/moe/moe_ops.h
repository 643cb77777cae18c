// Launchers of the CUDA MoE kernels (src/cuda/moe/*.cu): raw device pointers, explicit sizes, a
// stream. MoELayer (moe_layer.cpp) strings them together:
//
//   router_logits -> router_topk (or router_fused) -> permute (histogram, offsets, stable scatter) -> gather_rows
//   -> gemm::grouped_gemm(swiglu | gelu) -> gemm::grouped_gemm(none) -> combine                  (T > 64)
//   router_logits -> decode_route (top-k + the sort) -> decode_gemm(swiglu | gelu, x's rows through
//   src_pair) -> decode_gemm(combine, or none -> combine)                                          (T <= 64)
//
// The permuted layout: the (token, slot) pairs sorted by expert (stable: by pair index t*k+j within an
// expert); expert e owns rows [row_offset[e], row_offset[e] + counts[e]) of x_perm / h / y_perm, and
// row_offset[e] is a multiple of `row_align` (128 for the grouped GEMM, so that no 128-row tile
// straddles two experts; 1 for the decode path). Row counts stay < 2^31; byte offsets are 64-bit.
// The GEMM operands have row strides `ld*` in elements (>= their columns, multiples of 8).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/engine/ops.h"
#include "cuda/gemm/grouped_gemm.h"
#include "minillm/core/dtype.h"
#include "minillm/moe.h"

namespace minillm::cuda::moe {

// The expert GEMMs are the grouped GEMM's (cuda/gemm/grouped_gemm.h): its epilogues, and its tile
// height, which is the row alignment of each expert in the permuted layout (row_align 128).
using gemm::Epilogue;
using gemm::kGemmBlockM;

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
// `normalize`. E <= 256, k <= min(8, E). ids and weights have row stride ld >= k.
void router_topk(const float* logits, int splits, int64_t T, int E, int k, int ld, bool normalize, int32_t* ids,
                 float* weights, cudaStream_t stream);
// Both in one kernel (router_fused_kernel): the same ids and weights up to the logits' fp32 summation
// order. For E <= 32 and T >= kRouterFusedMinTokens (enough 64-token blocks without split-K).
constexpr int64_t kRouterFusedMinTokens = 1024;
bool router_fused_supported(int64_t T, int E);
void router_fused(DType dtype, const void* x, const void* router, int64_t T, int E, int64_t H, int k, int ld,
                  bool normalize, int32_t* ids, float* weights, cudaStream_t stream);
// A shared expert's slots: for every token t, ids[t, k + j] = E + j and weights[t, k + j] =
// sigmoid(x[t] . gate) (fp32) for j < S. x: [T, H], gate: [H] (2-byte floats, H % 8 == 0); row stride ld.
void shared_slots(DType dtype, const void* x, const void* gate, int64_t T, int64_t H, int E, int k, int S, int ld,
                  int32_t* ids, float* weights, cudaStream_t stream);

// ---- moe_permute.cu ----
constexpr int kPermuteChunk = 2048;  // pairs per block of the histogram and scatter kernels

inline int64_t permute_num_chunks(int64_t pairs) { return (pairs + kPermuteChunk - 1) / kPermuteChunk; }
// Rows of the permuted buffers for `pairs` pairs over E experts aligned to row_align.
inline int64_t permuted_rows(int64_t pairs, int64_t E, int64_t row_align) { return pairs + E * (row_align - 1); }

// The row stride (elements of 2 bytes) for a matrix of `cols` columns (a multiple of 64) that the grouped
// GEMM reads fastest: an odd multiple of 128 bytes. With a power-of-two stride the 128-byte rows of a TMA
// box fall into few L2 sets and evict each other (docs/REPORT.md). A 16-byte pad does not help (rows
// must stay 128-byte aligned); padding the activations' rows (x_perm, h) changed nothing measurable,
// so they stay dense.
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
  int32_t* active = nullptr;         // [E] decode_route only: the experts with pairs, ascending
  int32_t* num_active = nullptr;     // [1] decode_route only: how many
};

// Counting sort of the pairs by expert: fills every field of `r` from ids [T, k].
void permute(const int32_t* ids, int64_t T, int k, int E, int row_align, const Routing& r, cudaStream_t stream);

// Decode path (T * ld <= kDecodeRoutePairs): router_topk over the routed E_routed experts (ids and weights
// rows of stride ld; slots k .. ld-1 already hold the shared experts' ids), then permute of the T * ld
// pairs over E stored experts with row_align 1, in one single-block launch. Fills counts, row_offset,
// dest, src_pair, active and num_active of `r`. The shared slots must hold ids in [E_routed, E): the
// kernel counts every slot's id into a shared-memory histogram of E bins without checking it.
constexpr int64_t kDecodeRoutePairs = 512;
static_assert(kDecodeRoutePairs >= MoELayer::kDecodeMaxTokens * 8, "a decode step's pairs fit one decode_route block");
void decode_route(const float* logits, int splits, int64_t T, int E_routed, int k, int ld, int E, bool normalize,
                  int32_t* ids, float* weights, const Routing& r, cudaStream_t stream);
// The router GEMM and decode_route in one launch for up to kDecodeRouterMaxTokens tokens (x [T, H] in
// dtype, router [E_routed, H]; logits [T, E_routed] fp32 scratch; counter: one device int32, zero before,
// left zero). decode_router_supported: T, E_routed <= 256, H % 8 == 0.
constexpr int kDecodeRouterMaxTokens = 8;
bool decode_router_supported(int64_t T, int E_routed, int64_t H);
void decode_router(DType dtype, const void* x, const void* router, int64_t T, int E_routed, int64_t H, float* logits,
                   int k, int ld, int E, bool normalize, int32_t* ids, float* weights, const Routing& r,
                   int32_t* counter, cudaStream_t stream);

// x_perm[dest[t*k + j]] = x[t] for all pairs. x: [T, H], x_perm: [rows, H]; 2-byte elements.
void gather_rows(const void* x, int64_t T, int k, int64_t H, const int32_t* dest, void* x_perm,
                 cudaStream_t stream);

// ---- moe_combine.cu ----
// y[t] = sum_j weights[t, j] * y_perm[dest[t*k + j]] in fp32, slot order j = 0..k-1. y_perm: [rows, H].
// With T*k tokens and k = 1 it is the weighted un-permutation y[p] = weights[p] * y_perm[dest[p]].
void combine(DType dtype, const void* y_perm, const int32_t* dest, const float* weights, int64_t T, int k,
             int64_t H, void* y, cudaStream_t stream);

// ---- moe_decode.cu ----
// The same three products for few tokens per expert (counts[e] <= 64): every active expert's weights
// are streamed once. A rows of expert e: [row_offset[e], row_offset[e] + counts[e]).
struct DecodeGemmArgs {
  DType dtype = DType::bf16;
  Epilogue epilogue = Epilogue::none;
  const void* a = nullptr;  // [rows, K], row stride lda
  int64_t lda = 0;
  // When set, permuted row r reads row a_pair[r] / a_slots of a (x [T, K] in token order: no gather).
  const int32_t* a_pair = nullptr;
  int a_slots = 1;
  int64_t K = 0;            // multiple of 32
  const void* w0 = nullptr;  // [E, N, K], row stride ldw
  const void* w1 = nullptr;
  int64_t ldw = 0;
  int64_t N = 0;  // multiple of 16
  int E = 0;
  const int32_t* counts = nullptr;
  const int32_t* row_offset = nullptr;
  // Without counts: a dense y = a W^T, E = 1, rows 0 .. dense_rows - 1 of a (1 .. kDecodeMaxRows); the
  // weights are prefetched into L2 before the kernel waits for the previous one (launch.cuh).
  int dense_rows = 0;
  // When set, the grid has max_active expert slots (not E): slot i < *num_active is expert active[i]
  // (Routing::active), so the experts without tokens cost no blocks.
  const int32_t* active = nullptr;
  const int32_t* num_active = nullptr;
  int max_active = 0;
  void* d = nullptr;  // [rows, N], row stride ldd
  int64_t ldd = 0;
  // Epilogue::combine: permuted row r is scaled by pair_weight[src_pair[r]] and stored at row src_pair[r]
  // of d (token-pair order), as the grouped GEMM's combine epilogue does.
  const int32_t* src_pair = nullptr;
  const float* pair_weight = nullptr;
  // A tail (at most one): once every block has stored its part of d, the grid's last block to finish runs
  // a small op over rows 0 .. tail_rows - 1 of d, so that the op needs no kernel of its own:
  //   norm_tail: the engine's residual add and next norm, norm_tail->x[t] += sum_p d[t * tail_parts + p]
  //     (p in order); norm_tail->out[t] = norm(norm_tail->x[t]). Epilogue none (dense rows) or combine
  //     (token-pair order, tail_parts = the slots); N = ldd = H.
  //   qkv_tail: the QKV row's bias, qk-norm, RoPE and cache store (engine::qkv_finish_row). Dense rows,
  //     epilogue none, N = ldd = the QKV width.
  // tail_counter: one device int32, zero before the launch; the tail leaves it zero. The rows must be few
  // (add_norm_tail_supported).
  const ResidualNorm* norm_tail = nullptr;
  int tail_parts = 1;
  const engine::QkvFinish* qkv_tail = nullptr;
  int tail_rows = 0;
  int32_t* tail_counter = nullptr;
};
// A tail runs in one block (of 128 threads), which reads and writes rows x (a few) x H elements: it
// replaces a kernel launch only for a few rows. H: the norm tail stages a row in the kernel's 16 KB
// reduction buffer.
constexpr int kTailMaxRows = 4;
constexpr int64_t kAddNormTailMaxH = 4096;
inline bool add_norm_tail_supported(int64_t rows, int64_t H) {
  return rows >= 1 && rows <= kTailMaxRows && H % 8 == 0 && H <= kAddNormTailMaxH;
}
// Rows per expert on the decode path: at most one per token (an expert appears once in a token's top-k),
// and the decode path takes up to MoELayer::kDecodeMaxTokens tokens.
constexpr int kDecodeMaxRows = static_cast<int>(MoELayer::kDecodeMaxTokens);
void decode_gemm(const DecodeGemmArgs& args, cudaStream_t stream);

}  // namespace minillm::cuda::moe
