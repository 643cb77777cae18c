// Attention over the paged KV cache (include/minillm/kv_cache.h): decode (1..8 query tokens per
// sequence) and prefill / chunked prefill (any number), varlen over sequences, in one kernel template
// plus a split-KV combine step.
//
// Work decomposition. A CTA owns one (sequence s, kv head, row block, KV split). Its query "rows" are
// the (query token, query head) pairs of that kv head, enumerated token-major: row r of the sequence
// is query token r / G, head kvh * G + r % G (G = Hq / Hkv). A row block is kRows = 16 * kMTiles
// consecutive rows, so all G heads that share a kv head sit in one tile (GQA packing) and every K/V
// page is read from memory once per row block: for decode (n_s * G <= 128 rows) once in total.
// kMTiles is chosen per launch as the smallest of 1, 2, 4, 8 that holds max_query_len * G rows;
// prefill uses 8 (128 rows; more row blocks when n_s * G > 128).
//
// Tensor cores for every group size. Each m16 tile of rows is one warp's share of mma.sync
// m16n8k16 (bf16/fp16 in, fp32 accumulate): S = Q K^T over the warp's keys, online softmax in fp32
// registers (exp2 with scale * log2(e) folded in), P re-packed from the accumulator layout as the A
// operand of O += P V. With G = 1 and one query token 15 of the 16 rows are padding, but decode moves
// 2 * 64 * D * 2 bytes per page and head for 2 * 16 * 64 * D multiply-adds of mma work: even the
// padded tile needs under a tenth of the tensor-core rate at full HBM bandwidth, so one code path
// (no CUDA-core variant) reaches the memory roofline for all group sizes.
//
// Warps: kWarps = max(4, kMTiles); warps split into kMTiles row tiles x kWarpsN key slices. With one
// m16 tile (small groups) 4 warps each take 16 of the page's 64 keys and keep their own softmax state
// (m, l, O), merged through shared memory at the end: the four warps work on one page concurrently
// without a barrier between S and P V.
//
// Memory pipeline. One K/V tile = one page = 64 keys x D of one kv head (a page row holds all kv
// heads, so the tile is 64 runs of D * 2 bytes at a stride of Hkv * D * 2). kStages = 3 stages of
// (K, V) via cp.async 16-byte copies into XOR-swizzled shared memory (chunk ^ row % 8: conflict-free
// ldmatrix), so two pages per CTA are in flight while the third is consumed; the page id of the tile
// after next is fetched from the block table one iteration ahead, off the critical path. Rows past
// the context (last page) are zero-filled, never read, so garbage in unused cache rows cannot leak in.
// D = 128: 96 KB of pipeline + Q, two CTAs per SM.
//
// Split-KV. Long contexts with few (sequence, kv head) pairs would leave most SMs idle, so the keys
// of a CTA's range are cut into num_splits equal page ranges, one CTA each; each writes its
// normalised partial O (fp32) and its log-sum-exp to the workspace, and they are merged:
// O = sum_i 2^(lse_i - M) O_i / sum_i 2^(lse_i - M). Given split counters (one per sequence, kv head and
// row block) the group's last CTA to finish does it (merge_group), else a combine kernel: the counters
// save a dependent kernel, which costs more than the merge at decode. num_splits comes from host values only
// (S, Hkv, row blocks, max_context_len and the SM count: paged_split_plan.h); the page ranges are
// derived on the device from each sequence's own length, so a CUDA graph captured
// once replays correctly when lengths change (CTAs whose range is empty write lse = -inf).
//
// Causal masking: query i of n sees keys j <= ctx - n + i; a row block's key range ends at its last
// row's limit, and the per-element mask is applied only on tiles past its first row's limit or the
// context end. A row that sees no key yields o = 0, lse = -inf.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/attention/flash_fwd_sm90.h"
#include "cuda/attention/flash_fwd_sm90_traits.cuh"
#include "cuda/attention/paged_split_plan.h"
#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"
#include "minillm/kv_cache.h"

namespace minillm::cuda {
namespace paged {

constexpr int kMaxDecodeQueries = 8;  // max_query_len up to this runs with decode-sized row tiles

struct KernelArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  void* out;
  const int32_t* block_table;   // [S, max_pages]
  const int32_t* context_lens;  // [S]
  const int32_t* cu_seqlens_q;  // [S+1] or null
  float* lse;                   // [T, Hq] natural log, or null
  float* part_o;                // [num_splits, T, Hq, D] (num_splits > 1)
  float* part_lse;              // [num_splits, T, Hq], log2 units
  int32_t* split_counters;      // [S, Hkv, row_blocks] zeroed, or null: the combine kernel merges the splits
  int num_tokens, max_pages, num_heads, num_kv_heads, group;
  int64_t q_row, out_row;
  int num_splits, row_blocks;
  float scale_log2;  // softmax scale * log2(e)
  bool causal;
};

template <int D, int kMTiles_>
struct Traits {
  static constexpr int kD = D;
  static constexpr int kMTiles = kMTiles_;
  static constexpr int kRows = 16 * kMTiles;  // query rows per CTA
  static constexpr int kWarps = kMTiles < 4 ? 4 : kMTiles;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kWarpsN = kWarps / kMTiles;          // warps per row tile, each a key slice
  static constexpr int kKeysPerWarp = kPageSize / kWarpsN;  // 16, 32 or 64
  static constexpr int kNFrag = kKeysPerWarp / 8;           // n8 fragments of S per warp
  static constexpr int kStages = 3;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kTileBytes = kPageSize * D * 2;
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kPipeBytes = kStages * 2 * kTileBytes;
  static constexpr int kReduceBytes = kWarpsN * kRows * (D + 4) * 4 + 2 * kWarpsN * kRows * 4;
  static constexpr int kSmemBytes = kQBytes + (kPipeBytes > kReduceBytes ? kPipeBytes : kReduceBytes);
  static_assert(D % 64 == 0, "swizzle: 8 or 16 chunks per row");
  static_assert(kKeysPerWarp % 16 == 0, "P V needs whole k16 steps per warp");
};

// PTX wrappers (smem_u32, ldmatrix_x4, mma_16816, pack2, fast_exp2): cuda/common.cuh.

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Byte offset of (row, 16-byte chunk) in a [rows][D] tile whose chunks are XOR-swizzled by row % 8.
template <int kChunks>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return static_cast<uint32_t>((row * kChunks + (chunk ^ (row & 7))) * 16);
}

// Copies the 64 rows of one page (kv head kvh) into a swizzled shared tile; rows at key >= kv_end
// are zero-filled. page_base: the page's first row, head kvh; row stride Hkv * D elements.
template <typename Kt, typename T>
__device__ __forceinline__ void load_page(uint32_t dst, const T* page_base, int64_t row_stride, int rows_valid,
                                          int tid) {
  constexpr int kCh = Kt::kChunks;
  constexpr int kRowStep = Kt::kThreads / kCh;
  const int chunk = tid % kCh, row0 = tid / kCh;
#pragma unroll
  for (int i = 0; i < kPageSize / kRowStep; ++i) {
    const int row = row0 + i * kRowStep;
    const bool ok = row < rows_valid;
    cuda::cp_async_16(dst + swz<kCh>(row, chunk), page_base + (ok ? row : 0) * row_stride + chunk * 8, ok);
  }
}

// The row block's Q rows -> shared memory (rows past the sequence's rows zero-filled); one cp.async
// group. Row idx = query token idx / G, head kvh * G + idx % G.
template <typename Kt, typename T>
__device__ __forceinline__ void load_q(uint32_t sq, const T* q, const KernelArgs& a, int tok0, int row0,
                                       int rows_here, int kvh, int tid) {
  constexpr int kCh = Kt::kChunks, D = Kt::kD;
  for (int i = tid; i < Kt::kRows * kCh; i += Kt::kThreads) {
    const int r = i / kCh, c = i % kCh;
    const int idx = row0 + r;
    const bool ok = r < rows_here;
    const int qi = idx / a.group, h = kvh * a.group + idx % a.group;
    const T* src = ok ? q + (tok0 + qi) * a.q_row + int64_t{h} * D + c * 8 : q;
    cuda::cp_async_16(sq + swz<kCh>(r, c), src, ok);
  }
  cuda::cp_async_commit();
}

// S = Q K^T over this warp's keys of one page: [16 rows] x [kKeysPerWarp keys] (key0: the warp's first
// key in the page), scaled to log2 units; keys at or past a row's key_limit are -inf where the tile
// reaches past the keys every row sees (need_mask). tile_key: the page's first key in the sequence.
template <typename Kt, typename T>
__device__ __forceinline__ void page_scores(float (&sc)[Kt::kNFrag][4], const uint32_t (&qf)[Kt::kD / 16][4],
                                            uint32_t sk, int key0, int lane, float scale_log2, bool need_mask,
                                            int tile_key, const int (&key_limit)[2]) {
  constexpr int kCh = Kt::kChunks, kNFrag = Kt::kNFrag;
#pragma unroll
  for (int j = 0; j < kNFrag; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < Kt::kD / 16; ++kk) {
#pragma unroll
    for (int j = 0; j < kNFrag / 2; ++j) {
      const int mi = lane / 8;
      uint32_t b[4];
      ldmatrix_x4(b, sk + swz<kCh>(key0 + j * 16 + (mi / 2) * 8 + lane % 8, kk * 2 + mi % 2));
      mma_16816<T>(sc[2 * j], qf[kk], b[0], b[1]);
      mma_16816<T>(sc[2 * j + 1], qf[kk], b[2], b[3]);
    }
  }
  const int qd = lane % 4;
#pragma unroll
  for (int j = 0; j < kNFrag; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = sc[j][e] * scale_log2;
      if (need_mask) {
        const int key = tile_key + key0 + j * 8 + qd * 2 + (e & 1);
        if (key >= key_limit[e / 2]) x = -INFINITY;
      }
      sc[j][e] = x;
    }
}

// Online softmax of this thread's two rows over one page's scores: the running max m and sum l are
// updated, O rescaled, and sc replaced by the probabilities (unnormalised, relative to the new max).
template <int kNFrag, int kDFrag>
__device__ __forceinline__ void online_softmax(float (&sc)[kNFrag][4], float (&o)[kDFrag][4], float (&m)[2],
                                               float (&l)[2]) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kNFrag; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * hr], sc[j][2 * hr + 1]));
    mx = quad_max(mx);
    const float m_new = fmaxf(m[hr], mx);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = fast_exp2(m[hr] - m_use);
    m[hr] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kNFrag; ++j) {
      sc[j][2 * hr] = fast_exp2(sc[j][2 * hr] - m_use);
      sc[j][2 * hr + 1] = fast_exp2(sc[j][2 * hr + 1] - m_use);
      sum += sc[j][2 * hr] + sc[j][2 * hr + 1];
    }
    l[hr] = l[hr] * alpha + sum;
#pragma unroll
    for (int j = 0; j < kDFrag; ++j) {
      o[j][2 * hr] *= alpha;
      o[j][2 * hr + 1] *= alpha;
    }
  }
}

// O += P V: P from the S accumulators (two n8 fragments = one k16 A operand), V by ldmatrix.trans.
template <typename Kt, typename T>
__device__ __forceinline__ void accumulate_pv(float (&o)[Kt::kD / 8][4], const float (&sc)[Kt::kNFrag][4],
                                              uint32_t sv, int key0, int lane) {
  constexpr int kCh = Kt::kChunks;
#pragma unroll
  for (int kk = 0; kk < Kt::kNFrag / 2; ++kk) {
    const uint32_t pa[4] = {pack2<T>(sc[2 * kk][0], sc[2 * kk][1]), pack2<T>(sc[2 * kk][2], sc[2 * kk][3]),
                            pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                            pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
    for (int j = 0; j < Kt::kD / 16; ++j) {
      const int mi = lane / 8;
      uint32_t b[4];
      ldmatrix_x4_trans(b, sv + swz<kCh>(key0 + kk * 16 + (mi % 2) * 8 + lane % 8, j * 2 + mi / 2));
      mma_16816<T>(o[2 * j], pa, b[0], b[1]);
      mma_16816<T>(o[2 * j + 1], pa, b[2], b[3]);
    }
  }
}

// Where a CTA's rows go: its sequence's first token, its kv head, first row, row count and split.
struct RowBlock {
  int tok0, kvh, row0, rows_here, split;
};

// The epilogue: merges the kWarpsN key slices of each row tile through shared memory (`red`, the
// pipeline's, free by now), then writes O (16-bit, and lse when asked) or, with split-KV, the fp32
// partial O and its log2-sum-exp. (wm, wn): this warp's row tile and key slice.
template <typename Kt, typename T>
__device__ __forceinline__ void merge_and_store(const KernelArgs& a, const RowBlock& rb, unsigned char* red,
                                                float (&o)[Kt::kD / 8][4], float (&m)[2], float (&l)[2], int wm,
                                                int wn, int tid) {
  constexpr int kRows = Kt::kRows, kDFrag = Kt::kD / 8, D = Kt::kD;
  const int lane = tid % 32, g = lane / 4, qd = lane % 4;
  constexpr int kOStride = D + 4;  // floats per reduction row (padding against bank conflicts)
  float* red_o = reinterpret_cast<float*>(red);           // [kWarpsN][kRows][kOStride]
  float* red_m = red_o + Kt::kWarpsN * kRows * kOStride;  // [kWarpsN][kRows]
  float* red_l = red_m + Kt::kWarpsN * kRows;             // [kWarpsN][kRows]
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    l[hr] = quad_sum(l[hr]);
    if (qd == 0) {
      red_m[wn * kRows + wm * 16 + g + hr * 8] = m[hr];
      red_l[wn * kRows + wm * 16 + g + hr * 8] = l[hr];
    }
  }
  __syncthreads();
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = wm * 16 + g + hr * 8;
    float mt = -INFINITY;
#pragma unroll
    for (int w = 0; w < Kt::kWarpsN; ++w) mt = fmaxf(mt, red_m[w * kRows + r]);
    const float m_use = mt == -INFINITY ? 0.f : mt;
    float lt = 0.f;
#pragma unroll
    for (int w = 0; w < Kt::kWarpsN; ++w) lt += red_l[w * kRows + r] * fast_exp2(red_m[w * kRows + r] - m_use);
    const float f = lt > 0.f ? fast_exp2(m[hr] - m_use) / lt : 0.f;
    float* dst = red_o + (wn * kRows + r) * kOStride + qd * 2;
#pragma unroll
    for (int j = 0; j < kDFrag; ++j)
      *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j][2 * hr] * f, o[j][2 * hr + 1] * f);
  }
  __syncthreads();
  for (int i = tid; i < rb.rows_here * (D / 4); i += Kt::kThreads) {
    const int r = i / (D / 4), c4 = i % (D / 4);
    float4 acc = *reinterpret_cast<const float4*>(red_o + r * kOStride + c4 * 4);
#pragma unroll
    for (int w = 1; w < Kt::kWarpsN; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(red_o + (w * kRows + r) * kOStride + c4 * 4);
      acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
    }
    const int idx = rb.row0 + r;
    const int tok = rb.tok0 + idx / a.group, h = rb.kvh * a.group + idx % a.group;
    float lse2 = -INFINITY;  // log2 units
    if (c4 == 0) {
      float mt = -INFINITY, lt = 0.f;
      for (int w = 0; w < Kt::kWarpsN; ++w) mt = fmaxf(mt, red_m[w * kRows + r]);
      const float m_use = mt == -INFINITY ? 0.f : mt;
      for (int w = 0; w < Kt::kWarpsN; ++w) lt += red_l[w * kRows + r] * fast_exp2(red_m[w * kRows + r] - m_use);
      if (lt > 0.f) lse2 = m_use + __log2f(lt);
    }
    if (a.num_splits == 1) {
      T* dst = static_cast<T*>(a.out) + tok * a.out_row + int64_t{h} * D + c4 * 4;
      const uint32_t lo = pack2<T>(acc.x, acc.y), hi = pack2<T>(acc.z, acc.w);
      *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
      if (c4 == 0 && a.lse) a.lse[int64_t{tok} * a.num_heads + h] = lse2 * 0.69314718055994531f;
    } else {
      const int64_t prow = (int64_t{rb.split} * a.num_tokens + tok) * a.num_heads + h;
      *reinterpret_cast<float4*>(a.part_o + prow * D + c4 * 4) = acc;
      if (c4 == 0) a.part_lse[prow] = lse2;
    }
  }
}

// The split-KV combine: O = sum_i 2^(lse_i - M) O_i / sum_i 2^(lse_i - M) per (token, head) row.
// A row's D / 4 threads (a warp for D = 128, a half warp for D = 64) each own 4 columns. Two kernels:
// with at most kCombineUnroll splits a row's partials come in one round of loads, so a CTA takes
// kCombineRows rows (many rows per step: fewer, fuller CTAs); with more, one CTA takes one row and
// its kCombineGroups thread groups read the partials of splits g, g + G, ... at once, so they arrive
// in one L2 round trip instead of one per kCombineUnroll splits (few rows: batch 1 at long contexts).
// Empty splits (lse = -inf, weight 0) are not read.
constexpr int kCombineRows = 8;
constexpr int kCombineUnroll = 8;
constexpr int kCombineGroups = 4;

struct RowWeights {
  float m, sum;  // the max lse (log2 units; 0 when no split has keys) and sum of 2^(lse_i - m)
};

// A row's split weights 2^(lse_i - M), computed by its kLanes threads together (shuffle max and sum);
// each thread stores its splits' weights to w_out[i] when w_out is given.
template <int kLanes>
__device__ __forceinline__ RowWeights split_weights(const KernelArgs& a, int64_t row, int64_t rows, bool valid, int c4,
                                                    float* w_out) {
  constexpr int kPerLane = (kMaxSplits + kLanes - 1) / kLanes;
  const int ns = a.num_splits;
  float lse[kPerLane];
  float mt = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = c4 + j * kLanes;
    lse[j] = valid && i < ns ? __ldcg(a.part_lse + i * rows + row) : -INFINITY;
    mt = fmaxf(mt, lse[j]);
  }
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
  const float m_use = mt == -INFINITY ? 0.f : mt;
  float wsum = 0.f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = c4 + j * kLanes;
    const float w = exp2f(lse[j] - m_use);  // 0 for an empty split
    if (w_out != nullptr && i < kMaxSplits) w_out[i] = w;
    wsum += w;
  }
#pragma unroll
  for (int off = kLanes / 2; off > 0; off /= 2) wsum += __shfl_xor_sync(0xffffffffu, wsum, off);
  return {m_use, wsum};
}

// acc (this thread's 4 columns of sum_i w_i O_i) / sum as T; the row's lse (natural log) when asked.
template <typename T, int D>
__device__ __forceinline__ void store_row(const KernelArgs& a, int64_t row, float4 acc, RowWeights rw, int c4) {
  const float inv = rw.sum > 0.f ? 1.f / rw.sum : 0.f;
  const int64_t tok = row / a.num_heads, h = row % a.num_heads;
  T* dst = static_cast<T*>(a.out) + tok * a.out_row + h * D + c4 * 4;
  *reinterpret_cast<uint2*>(dst) = make_uint2(pack2<T>(acc.x * inv, acc.y * inv), pack2<T>(acc.z * inv, acc.w * inv));
  if (c4 == 0 && a.lse) a.lse[row] = rw.sum > 0.f ? (rw.m + log2f(rw.sum)) * 0.69314718055994531f : -INFINITY;
}

__device__ __forceinline__ void fma4(float4& acc, float w, float4 x) {
  acc.x += w * x.x, acc.y += w * x.y, acc.z += w * x.z, acc.w += w * x.w;
}

// The group's merge in its last CTA (KernelArgs::split_counters): the rows of one (sequence, kv head,
// row block), D / 4 threads per row, kThreads / (D / 4) rows per pass, the splits' partials in rounds of
// kCombineUnroll loads (through L2: other CTAs of the grid wrote them), summed in split order as
// combine_rows_kernel does.
template <typename T, int D, int kThreads>
__device__ __forceinline__ void merge_group(const KernelArgs& a, const RowBlock& rb, int tid) {
  constexpr int kLanes = D / 4, kPass = kThreads / kLanes;
  __shared__ float s_w[kPass][kMaxSplits];
  const int64_t rows = int64_t{a.num_tokens} * a.num_heads;
  const int c4 = tid % kLanes, sub = tid / kLanes, ns = a.num_splits;
  for (int r0 = 0; r0 < rb.rows_here; r0 += kPass) {
    const int idx = r0 + sub;
    const bool valid = idx < rb.rows_here;  // no early exit: the row's threads shuffle together
    const int ridx = rb.row0 + (valid ? idx : 0);
    const int64_t row = int64_t{rb.tok0 + ridx / a.group} * a.num_heads + rb.kvh * a.group + ridx % a.group;
    const RowWeights rw = split_weights<kLanes>(a, row, rows, valid, c4, s_w[sub]);
    __syncwarp();
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int i0 = 0; i0 < ns; i0 += kCombineUnroll) {
      float w[kCombineUnroll];
      float4 x[kCombineUnroll];
#pragma unroll
      for (int j = 0; j < kCombineUnroll; ++j) {
        const int i = i0 + j;
        w[j] = valid && i < ns ? s_w[sub][i] : 0.f;
        x[j] = w[j] > 0.f ? __ldcg(reinterpret_cast<const float4*>(a.part_o + (i * rows + row) * D + c4 * 4))
                          : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int j = 0; j < kCombineUnroll; ++j) fma4(acc, w[j], x[j]);
    }
    if (valid) store_row<T, D>(a, row, acc, rw, c4);
    __syncwarp();  // s_w[sub] is rewritten by the next pass
  }
}

// grid: (row_blocks * num_splits, S, Hkv); block: Kt::kThreads; dynamic smem: Kt::kSmemBytes.
// Parts: load_q, then per page (a kStages-deep cp.async ring fed one page ahead) page_scores ->
// online_softmax -> accumulate_pv, then merge_and_store.
template <typename T, int D, int kMTiles>
__global__ void __launch_bounds__(Traits<D, kMTiles>::kThreads)
    paged_attention_kernel(const __grid_constant__ KernelArgs a) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  using Kt = Traits<D, kMTiles>;
  constexpr int kRows = Kt::kRows, kCh = Kt::kChunks, kStages = Kt::kStages;
  constexpr int kDFrag = D / 8;  // n8 fragments of O
  const int split = blockIdx.x % a.num_splits, rbi = blockIdx.x / a.num_splits;
  const int s = blockIdx.y, kvh = blockIdx.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp / Kt::kWarpsN, wn = warp % Kt::kWarpsN;  // row tile, key slice

  const int tok0 = a.cu_seqlens_q ? a.cu_seqlens_q[s] : s;
  const int n = a.cu_seqlens_q ? a.cu_seqlens_q[s + 1] - tok0 : 1;  // query tokens of this sequence
  const int ctx = a.context_lens[s];
  const int rows_total = n * a.group;
  const int row0 = rbi * kRows;
  if (row0 >= rows_total) return;  // this sequence has fewer rows: nobody reads this block's outputs
  const int rows_here = min(kRows, rows_total - row0);
  // Key ranges: row r (token i = r / G) sees keys [0, ctx - n + i + 1) when causal.
  const int first_q = row0 / a.group, last_q = (row0 + rows_here - 1) / a.group;
  const int kv_end = a.causal ? max(0, min(ctx, ctx - n + last_q + 1)) : ctx;
  const int kv_nomask = a.causal ? max(0, min(ctx, ctx - n + first_q + 1)) : ctx;  // keys all rows see
  const int num_tiles = (kv_end + kPageSize - 1) / kPageSize;
  const int tiles_per_split = (num_tiles + a.num_splits - 1) / a.num_splits;
  const int t_begin = min(num_tiles, split * tiles_per_split);
  const int t_end = min(num_tiles, t_begin + tiles_per_split);

  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* s_pipe = smem + Kt::kQBytes;  // kStages x (K [64][D], V [64][D]) swizzled
  const uint32_t sq = smem_u32(smem), spipe = smem_u32(s_pipe);  // Q: [kRows][D] swizzled
  const T* kc = static_cast<const T*>(a.k_cache);
  const T* vc = static_cast<const T*>(a.v_cache);
  const int64_t cache_row = int64_t{a.num_kv_heads} * D;  // elements per cache row (token)

  load_q<Kt>(sq, static_cast<const T*>(a.q), a, tok0, row0, rows_here, kvh, tid);
  const int32_t* bt = a.block_table + int64_t{s} * a.max_pages;
  auto issue = [&](int t, int page) {  // tile t (page id `page`) into its stage
    const uint32_t st = spipe + ((t - t_begin) % kStages) * 2 * Kt::kTileBytes;
    const int64_t base = int64_t{page} * kPageSize * cache_row + int64_t{kvh} * D;
    const int rows_valid = kv_end - t * kPageSize;
    load_page<Kt>(st, kc + base, cache_row, rows_valid, tid);
    load_page<Kt>(st + Kt::kTileBytes, vc + base, cache_row, rows_valid, tid);
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (t_begin + i < t_end) issue(t_begin + i, bt[t_begin + i]);
    cuda::cp_async_commit();
  }
  int next_page = t_begin + kStages - 1 < t_end ? bt[t_begin + kStages - 1] : 0;

  // This thread's two rows of its warp's m16 tile: g and g + 8.
  const int g = lane / 4;
  int key_limit[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = min(wm * 16 + g + hr * 8, rows_here - 1);  // padding rows copy a real row's limit
    key_limit[hr] = a.causal ? ctx - n + (row0 + r) / a.group + 1 : ctx;
  }

  uint32_t qf[D / 16][4];  // Q fragments (A operand), loaded after the first wait
  float o[kDFrag][4];
#pragma unroll
  for (int j = 0; j < kDFrag; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int key0 = wn * Kt::kKeysPerWarp;  // this warp's keys within a page

  for (int t = t_begin; t < t_end; ++t) {
    cuda::cp_async_wait<kStages - 2>();
    __syncthreads();
    {  // refill the stage consumed in the previous iteration
      const int u = t + kStages - 1;
      if (u < t_end) issue(u, next_page);
      cuda::cp_async_commit();
      if (u + 1 < t_end) next_page = bt[u + 1];
    }
    if (t == t_begin) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int mi = lane / 8;
        ldmatrix_x4(qf[kk], sq + swz<kCh>(wm * 16 + (mi % 2) * 8 + lane % 8, kk * 2 + mi / 2));
      }
    }
    const uint32_t sk = spipe + ((t - t_begin) % kStages) * 2 * Kt::kTileBytes;
    float sc[Kt::kNFrag][4];
    page_scores<Kt, T>(sc, qf, sk, key0, lane, a.scale_log2, (t + 1) * kPageSize > kv_nomask, t * kPageSize,
                       key_limit);
    online_softmax(sc, o, m, l);
    accumulate_pv<Kt, T>(o, sc, sk + Kt::kTileBytes, key0, lane);
  }

  cuda::cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory is reused by the epilogue
  const RowBlock rb{tok0, kvh, row0, rows_here, split};
  merge_and_store<Kt, T>(a, rb, s_pipe, o, m, l, wm, wn, tid);
  if (a.num_splits == 1 || a.split_counters == nullptr) return;
  // Split-KV with counters: the group's last CTA to finish merges its splits.
  if (last_block_of(a.split_counters + (int64_t{s} * a.num_kv_heads + kvh) * a.row_blocks + rbi, a.num_splits))
    merge_group<T, D, Kt::kThreads>(a, rb, tid);
}

// At most kCombineUnroll splits (launch() sends more to the kernel below): one round of loads.
// grid: ceil(T * Hq / kCombineRows); block: (D / 4, kCombineRows).
template <typename T, int D>
__global__ void __launch_bounds__(D / 4 * kCombineRows) combine_rows_kernel(const __grid_constant__ KernelArgs a) {
  __shared__ float s_w[kCombineRows][kMaxSplits];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t rows = int64_t{a.num_tokens} * a.num_heads;
  const int64_t row = int64_t{blockIdx.x} * kCombineRows + threadIdx.y;  // token * Hq + head
  const bool valid = row < rows;  // no early return: the row's threads shuffle together
  const int c4 = threadIdx.x, ns = a.num_splits;
  const RowWeights rw = split_weights<D / 4>(a, row, rows, valid, c4, s_w[threadIdx.y]);
  __syncwarp();
  if (!valid) return;
  float w[kCombineUnroll];
  float4 x[kCombineUnroll];
#pragma unroll
  for (int i = 0; i < kCombineUnroll; ++i) {
    w[i] = i < ns ? s_w[threadIdx.y][i] : 0.f;
    x[i] = w[i] > 0.f ? *reinterpret_cast<const float4*>(a.part_o + (i * rows + row) * D + c4 * 4)
                      : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int i = 0; i < kCombineUnroll; ++i) fma4(acc, w[i], x[i]);
  store_row<T, D>(a, row, acc, rw, c4);
}

// Many splits. grid: T * Hq; block: (D / 4, kCombineGroups).
template <typename T, int D>
__global__ void __launch_bounds__(D / 4 * kCombineGroups)
    combine_split_row_kernel(const __grid_constant__ KernelArgs a) {
  constexpr int kPerGroup = kMaxSplits / kCombineGroups;
  __shared__ float s_w[kMaxSplits];
  __shared__ float4 s_acc[kCombineGroups][D / 4];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t rows = int64_t{a.num_tokens} * a.num_heads;
  const int64_t row = blockIdx.x;  // token * Hq + head
  const int c4 = threadIdx.x, g = threadIdx.y, ns = a.num_splits;
  const RowWeights rw = split_weights<D / 4>(a, row, rows, true, c4, g == 0 ? s_w : nullptr);
  __syncthreads();
  float w[kPerGroup];
  float4 x[kPerGroup];
#pragma unroll
  for (int j = 0; j < kPerGroup; ++j) {
    const int i = g + j * kCombineGroups;
    w[j] = i < ns ? s_w[i] : 0.f;
    x[j] = w[j] > 0.f ? *reinterpret_cast<const float4*>(a.part_o + (i * rows + row) * D + c4 * 4)
                      : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int j = 0; j < kPerGroup; ++j) fma4(acc, w[j], x[j]);
  s_acc[g][c4] = acc;
  __syncthreads();
  if (g != 0) return;
#pragma unroll
  for (int j = 1; j < kCombineGroups; ++j) fma4(acc, 1.f, s_acc[j][c4]);
  store_row<T, D>(a, row, acc, rw, c4);
}

// ---- host side ----

// Row tiles per CTA for a launch: the smallest of 1, 2, 4, 8 m16 tiles that holds max_query_len * G
// rows (decode), 8 for prefill.
int m_tiles_for(int max_query_len, int group) {
  const int rows = max_query_len * group;
  if (max_query_len > kMaxDecodeQueries || rows > 64) return 8;
  if (rows > 32) return 4;
  if (rows > 16) return 2;
  return 1;
}

struct Plan {
  int m_tiles, row_blocks, num_splits, max_context;
};

void check_host_fields(const PagedAttentionParams& p) {
  MINILLM_CHECK(p.dtype == DType::bf16 || p.dtype == DType::f16,
                "paged_attention: dtype = " << dtype_name(p.dtype) << " must be bf16 or f16");
  MINILLM_CHECK(p.head_dim == 64 || p.head_dim == 128, "paged_attention: head_dim = " << p.head_dim << " must be 64 or 128");
  MINILLM_CHECK(p.num_kv_heads > 0 && p.num_heads > 0 && p.num_heads % p.num_kv_heads == 0,
                "paged_attention: num_kv_heads = " << p.num_kv_heads << " must divide num_heads = " << p.num_heads);
  MINILLM_CHECK(p.num_seqs >= 0 && p.num_seqs <= 65535, "paged_attention: num_seqs = " << p.num_seqs << " must be in [0, 65535]");
  MINILLM_CHECK(p.num_kv_heads <= 65535, "paged_attention: num_kv_heads = " << p.num_kv_heads << " must be <= 65535");
  MINILLM_CHECK(p.num_tokens >= 0, "paged_attention: num_tokens = " << p.num_tokens << " must be >= 0");
  MINILLM_CHECK(p.max_pages > 0, "paged_attention: max_pages = " << p.max_pages << " must be > 0");
  MINILLM_CHECK(p.max_query_len >= 0, "paged_attention: max_query_len = " << p.max_query_len << " must be >= 0");
  MINILLM_CHECK(p.max_context_len >= 0 && int64_t{p.max_context_len} <= int64_t{p.max_pages} * kPageSize,
                "paged_attention: max_context_len = " << p.max_context_len << " must be in [0, max_pages * "
                                                      << kPageSize << " = " << int64_t{p.max_pages} * kPageSize << "]");
  MINILLM_CHECK(p.num_splits >= 0 && p.num_splits <= kMaxSplits,
                "paged_attention: num_splits = " << p.num_splits << " must be in [0, " << kMaxSplits << "]");
  MINILLM_CHECK(p.softmax_scale == 0.f || (p.softmax_scale > 0.f && std::isfinite(p.softmax_scale)),
                "paged_attention: softmax_scale = " << p.softmax_scale << " must be finite and > 0 (0: default)");
  const int64_t row = int64_t{p.num_heads} * p.head_dim;
  MINILLM_CHECK(p.q_row == 0 || (p.q_row >= row && p.q_row % 8 == 0),
                "paged_attention: q_row = " << p.q_row << " must be >= Hq * D = " << row << " and a multiple of 8");
  MINILLM_CHECK(p.out_row == 0 || (p.out_row >= row && p.out_row % 8 == 0),
                "paged_attention: out_row = " << p.out_row << " must be >= Hq * D = " << row << " and a multiple of 8");
}

Plan make_plan(const PagedAttentionParams& p) {
  check_host_fields(p);
  Plan pl;
  const int group = p.num_heads / p.num_kv_heads;
  const int max_q = std::max(p.max_query_len, 1);
  pl.m_tiles = m_tiles_for(max_q, group);
  pl.row_blocks = static_cast<int>((int64_t{max_q} * group + 16 * pl.m_tiles - 1) / (16 * pl.m_tiles));
  pl.max_context = p.max_context_len > 0 ? p.max_context_len : p.max_pages * kPageSize;
  if (p.num_splits > 0) {
    pl.num_splits = p.num_splits;
    return pl;
  }
  const int64_t base = int64_t{p.num_seqs} * p.num_kv_heads * pl.row_blocks;
  pl.num_splits = split_count(base, (pl.max_context + kPageSize - 1) / kPageSize, device_sm_count());
  return pl;
}

template <typename T, int D, int MT>
void launch(const KernelArgs& args, const Plan& pl, int S, int Hkv, cudaStream_t stream) {
  using Kt = Traits<D, MT>;
  auto kernel = paged_attention_kernel<T, D, MT>;
  set_max_dynamic_smem<paged_attention_kernel<T, D, MT>>(Kt::kSmemBytes);
  const dim3 grid(static_cast<unsigned>(pl.row_blocks * pl.num_splits), static_cast<unsigned>(S),
                  static_cast<unsigned>(Hkv));
  cuda::launch(kernel, grid, Kt::kThreads, Kt::kSmemBytes, stream, args);
  if (pl.num_splits > 1 && args.num_tokens > 0 && args.split_counters == nullptr) {
    const int64_t rows = int64_t{args.num_tokens} * args.num_heads;
    if (pl.num_splits > kCombineUnroll)
      cuda::launch(combine_split_row_kernel<T, D>, static_cast<unsigned>(rows), dim3(D / 4, kCombineGroups), 0, stream,
                   args);
    else
      cuda::launch(combine_rows_kernel<T, D>, static_cast<unsigned>((rows + kCombineRows - 1) / kCombineRows),
                   dim3(D / 4, kCombineRows), 0, stream, args);
  }
}

template <typename T, int D>
void dispatch_mt(const KernelArgs& args, const Plan& pl, int S, int Hkv, cudaStream_t stream) {
  switch (pl.m_tiles) {
    case 1: return launch<T, D, 1>(args, pl, S, Hkv, stream);
    case 2: return launch<T, D, 2>(args, pl, S, Hkv, stream);
    case 4: return launch<T, D, 4>(args, pl, S, Hkv, stream);
    default: return launch<T, D, 8>(args, pl, S, Hkv, stream);
  }
}

// Prefill steps on Hopper: the Hopper FlashAttention kernel with the cache as its K/V source
// (flash_fwd_sm90_producer.cuh, Sm90PagedKVSource): TMA page loads and wgmma, the speed of the
// contiguous kernel, where this kernel's mma.sync tiles reach about FlashAttention-2's. Taken when the
// step is mostly new tokens (at least kHopperMinQueries in some sequence and 16 per sequence on
// average: a decode-heavy step keeps the GQA-packed kernel above, which reads each page once for all
// query heads), without lse or a forced split count. Returns false when it did not launch.
constexpr int kHopperMinQueries = 64;
bool hopper_prefill(const PagedAttentionParams& p, const KernelArgs& a, float scale, cudaStream_t stream) {
  if (p.lse != nullptr || p.cu_seqlens_q == nullptr || p.num_splits > 0 || p.max_query_len < kHopperMinQueries ||
      p.num_tokens < 16 * int64_t{p.num_seqs} || !device_is_sm90())
    return false;
  attn::FlashFwdArgs f{};
  FlashAttentionParams& q = f.p;
  q.q = p.q, q.k = p.k_cache, q.v = p.v_cache, q.o = p.out;
  q.dtype = p.dtype;
  q.batch = p.num_seqs, q.num_heads = p.num_heads, q.num_kv_heads = p.num_kv_heads, q.head_dim = p.head_dim;
  q.seqlen_q = p.max_query_len;
  q.seqlen_k = p.max_context_len > 0 ? p.max_context_len : p.max_pages * kPageSize;
  q.q_row_stride = a.q_row, q.o_row_stride = a.out_row;
  q.k_row_stride = q.v_row_stride = int64_t{p.num_kv_heads} * p.head_dim;
  q.q_head_stride = q.k_head_stride = q.v_head_stride = q.o_head_stride = p.head_dim;
  q.cu_seqlens_q = p.cu_seqlens_q;
  q.causal = p.causal;
  f.scale = scale;
  f.scale_log2 = a.scale_log2;
  f.kv_group = a.group;
  attn::Sm90PagedKV pk;
  pk.block_table = p.block_table, pk.context_lens = p.context_lens, pk.max_pages = p.max_pages;
  return p.head_dim == 64 ? attn::run_flash_fwd_sm90_hdim64(f, attn::Sm90Options{}, stream, &pk)
                          : attn::run_flash_fwd_sm90_hdim128(f, attn::Sm90Options{}, stream, &pk);
}

}  // namespace paged

int paged_attention_num_splits(const PagedAttentionParams& p) { return paged::make_plan(p).num_splits; }

int64_t paged_attention_split_counters(const PagedAttentionParams& p) {
  const paged::Plan pl = paged::make_plan(p);
  return pl.num_splits > 1 ? int64_t{p.num_seqs} * p.num_kv_heads * pl.row_blocks : 0;
}

size_t paged_attention_workspace_bytes(const PagedAttentionParams& p) {
  const paged::Plan pl = paged::make_plan(p);
  if (pl.num_splits <= 1) return 0;
  return static_cast<size_t>(pl.num_splits) * static_cast<size_t>(p.num_tokens) * static_cast<size_t>(p.num_heads) *
         (static_cast<size_t>(p.head_dim) + 1) * sizeof(float);
}

void paged_attention(const PagedAttentionParams& p, cudaStream_t stream) {
  const paged::Plan pl = paged::make_plan(p);
  // The launch's own checks (make_plan's are of the shape alone: the workspace query uses them too).
  MINILLM_CHECK(p.cu_seqlens_q != nullptr || p.num_tokens == p.num_seqs,
                "paged_attention: without cu_seqlens_q num_tokens = " << p.num_tokens << " must equal num_seqs = " << p.num_seqs);
  MINILLM_CHECK(p.cu_seqlens_q != nullptr || p.max_query_len <= 1,
                "paged_attention: max_query_len = " << p.max_query_len << " must be <= 1 without cu_seqlens_q");
  if (p.num_seqs == 0 || p.num_tokens == 0) return;
  for (const void* ptr : {p.q, p.k_cache, p.v_cache, static_cast<const void*>(p.out)})
    MINILLM_CHECK(ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 16 == 0,
                  "paged_attention: q, k_cache, v_cache and out must be non-null and 16-byte aligned");
  MINILLM_CHECK(p.block_table != nullptr && p.context_lens != nullptr,
                "paged_attention: block_table and context_lens must be non-null");
  paged::KernelArgs a{};
  a.q = p.q, a.k_cache = p.k_cache, a.v_cache = p.v_cache, a.out = p.out;
  a.block_table = p.block_table, a.context_lens = p.context_lens, a.cu_seqlens_q = p.cu_seqlens_q;
  a.lse = p.lse;
  a.num_tokens = p.num_tokens, a.max_pages = p.max_pages, a.num_heads = p.num_heads;
  a.num_kv_heads = p.num_kv_heads, a.group = p.num_heads / p.num_kv_heads;
  a.q_row = p.q_row > 0 ? p.q_row : int64_t{p.num_heads} * p.head_dim;
  a.out_row = p.out_row > 0 ? p.out_row : int64_t{p.num_heads} * p.head_dim;
  a.num_splits = pl.num_splits;
  const float scale = p.softmax_scale > 0.f ? p.softmax_scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * 1.4426950408889634f;
  a.causal = p.causal;
  if (pl.num_splits > 1) {
    const size_t need = paged_attention_workspace_bytes(p);
    MINILLM_CHECK(p.workspace != nullptr && p.workspace_bytes >= need &&
                      reinterpret_cast<uintptr_t>(p.workspace) % 16 == 0,
                  "paged_attention: workspace_bytes = " << p.workspace_bytes << " but " << pl.num_splits
                                                        << " splits need " << need << " (16-byte aligned)");
    a.part_o = static_cast<float*>(p.workspace);
    a.part_lse = a.part_o + static_cast<size_t>(pl.num_splits) * p.num_tokens * p.num_heads * p.head_dim;
    const int64_t counters = int64_t{p.num_seqs} * p.num_kv_heads * pl.row_blocks;
    MINILLM_CHECK(p.split_counters == nullptr || p.split_counter_count >= counters,
                  "paged_attention: split_counter_count = " << p.split_counter_count << " but the launch needs "
                                                            << counters);
    a.split_counters = p.split_counters;
  }
  a.row_blocks = pl.row_blocks;
  if (paged::hopper_prefill(p, a, scale, stream)) return;
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64) {
    bf16 ? paged::dispatch_mt<__nv_bfloat16, 64>(a, pl, p.num_seqs, p.num_kv_heads, stream)
         : paged::dispatch_mt<__half, 64>(a, pl, p.num_seqs, p.num_kv_heads, stream);
  } else {
    bf16 ? paged::dispatch_mt<__nv_bfloat16, 128>(a, pl, p.num_seqs, p.num_kv_heads, stream)
         : paged::dispatch_mt<__half, 128>(a, pl, p.num_seqs, p.num_kv_heads, stream);
  }
}

}  // namespace minillm::cuda
