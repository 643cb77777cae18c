// Producer of the Hopper FlashAttention forward kernel (flash_fwd_sm90.cuh): one warp of the first
// warpgroup; lane 0 issues the TMA loads. Per work tile: the Q tile into its Q buffer, then key
// blocks n_blocks - 1 .. 0 (last first, as the consumers read them), K_n and V_n into the stages of
// the K/V ring, each behind its "empty" barrier and completing its "full" barrier.
//
// Where the K/V rows come from is one seam, the K/V tile source: Sm90ContiguousKV reads the rows of
// one (batch, kv head) of k and v (padded or varlen layout); Sm90PagedKVSource reads a sequence's keys
// from the pages of a KV cache, kBlockN / kPageSize pages per key block.
#pragma once
#include <climits>

#include "cuda/attention/flash_fwd_sm90_scheduler.cuh"
#include "cuda/attention/flash_fwd_sm90_traits.cuh"
#include "minillm/kv_cache.h"

namespace minillm::cuda::attn {

// Copies kRows rows of kBoxes x 64 columns into kBoxes 128-byte-swizzled boxes at dst (the layout a TMA
// load gives) with 16-byte loads by the warp, then arrives on `bar`. row_src(r): the first element of
// tile row r, or nullptr for a row of zeros. Called by all 32 lanes of the producer warp.
template <int kRows, int kBoxes, typename T, typename RowSrc>
__device__ __forceinline__ void copy_rows(uint32_t dst, uint32_t bar, const RowSrc& row_src, int lane) {
  constexpr int kChunks = kBoxes * 8;  // 16-byte chunks per row
  for (int i = lane; i < kRows * kChunks; i += 32) {
    const int r = i / kChunks, c = i % kChunks;
    const T* row = row_src(r);
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (row != nullptr) val = *reinterpret_cast<const uint4*>(row + c * 8);
    const uint32_t addr = dst + (c / 8) * kRows * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4);
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(val.x), "r"(val.y), "r"(val.z),
                 "r"(val.w)
                 : "memory");
  }
  sm90::fence_proxy_async();  // the wgmma reads of these rows go through the async proxy
  __syncwarp();
  if (lane == 0) sm90::mbar_arrive(bar);
}

// Loads rows [row0, row0 + kRows) of one head, all kBoxes x 64 columns, into kBoxes 128-byte-swizzled
// boxes at dst, completing on `bar` (expected arrivals: 1). TMA zero-fills rows past the tensor map's
// extent. rows_total < INT_MAX (varlen) is the real row count: a tile crossing it is copied by the
// warp with 16-byte loads instead (rows past it zero-filled), since the map does not know the end.
// `src` points at row 0 of this head. Called by all 32 lanes of the producer warp.
template <int kRows, int kBoxes, typename T>
__device__ __forceinline__ void load_rows(uint32_t dst, const CUtensorMap* map, uint32_t bar, int row0, int head,
                                          int batch, int rows_total, const T* src, int64_t row_stride, int lane) {
  using namespace sm90;
  if (row0 + kRows <= rows_total) {
    if (lane == 0) {
      mbar_arrive_expect_tx(bar, kRows * kBoxes * 128);
#pragma unroll
      for (int b = 0; b < kBoxes; ++b) tma_load_4d(dst + b * kRows * 128, map, bar, b * 64, row0, head, batch);
    }
    return;
  }
  copy_rows<kRows, kBoxes, T>(
      dst, bar, [&](int r) { return row0 + r < rows_total ? src + int64_t(row0 + r) * row_stride : nullptr; }, lane);
}

// The K/V tile source of one work tile: key block n is rows [k_tok0 + n kBlockN, + kBlockN) of the
// tile's (batch, kv head) in k and v, as 128-byte-swizzled boxes {64, kBlockN}.
template <typename Kt, typename T>
struct Sm90ContiguousKV {
  const Sm90FwdParams& P;
  int kv_head, tma_batch, k_tok0, total_k;
  const T* k_src;  // row 0 of this kv head in k (and v): the copy path of load_rows
  const T* v_src;

  __device__ __forceinline__ void load_k(uint32_t dst, uint32_t bar, int n, int lane) const {
    load_rows<Kt::kBlockN, Kt::kBoxes>(dst, &P.k, bar, k_tok0 + n * Kt::kBlockN, kv_head, tma_batch, total_k, k_src,
                                       P.args.p.k_row_stride, lane);
  }
  __device__ __forceinline__ void load_v(uint32_t dst, uint32_t bar, int n, int lane) const {
    load_rows<Kt::kBlockN, Kt::kBoxes>(dst, &P.v, bar, k_tok0 + n * Kt::kBlockN, kv_head, tma_batch, total_k, v_src,
                                       P.args.p.v_row_stride, lane);
  }
};

// The K/V tile source of one work tile over a paged cache: key block n is the pages holding keys
// [n kBlockN, (n + 1) kBlockN) of sequence `seq`, each page one TMA box of kPageSize rows per 64 columns
// (the cache maps' boxes), stacked in the tile's rows as one kBlockN-row box would be (the 128-byte
// swizzle repeats every 8 rows). The block holding the context's end is copied by the warp with 16-byte
// loads and its rows past the end zero-filled: cache rows past a sequence's length may hold anything,
// and a masked key's V row still enters O = P V (as 0 * v).
template <typename Kt, typename T>
struct Sm90PagedKVSource {
  static_assert(Kt::kBlockN % kPageSize == 0, "a key block is whole pages");
  const Sm90FwdParams& P;
  int kv_head, context;
  const int32_t* pages;  // the sequence's block-table row

  __device__ __forceinline__ void load(const CUtensorMap* map, const T* cache, uint32_t dst, uint32_t bar, int n,
                                       int lane) const {
    using namespace sm90;
    constexpr int kRows = Kt::kBlockN, kBoxes = Kt::kBoxes;
    const int key0 = n * kRows;
    if (key0 + kRows <= context) {
      if (lane == 0) {
        mbar_arrive_expect_tx(bar, kRows * kBoxes * 128);
#pragma unroll
        for (int i = 0; i < kRows / kPageSize; ++i) {
          const int row = pages[key0 / kPageSize + i] * kPageSize;
#pragma unroll
          for (int b = 0; b < kBoxes; ++b)
            tma_load_4d(dst + b * kRows * 128 + i * kPageSize * 128, map, bar, b * 64, row, kv_head, 0);
        }
      }
      return;
    }
    const int64_t row_stride = int64_t(P.args.p.num_kv_heads) * Kt::kHeadDim;  // elements per cache row
    const T* head = cache + int64_t(kv_head) * Kt::kHeadDim;
    copy_rows<kRows, kBoxes, T>(
        dst, bar,
        [&](int r) -> const T* {
          const int key = key0 + r;
          if (key >= context) return nullptr;
          return head + (int64_t(pages[key / kPageSize]) * kPageSize + key % kPageSize) * row_stride;
        },
        lane);
  }
  __device__ __forceinline__ void load_k(uint32_t dst, uint32_t bar, int n, int lane) const {
    load(&P.k, static_cast<const T*>(P.args.p.k), dst, bar, n, lane);
  }
  __device__ __forceinline__ void load_v(uint32_t dst, uint32_t bar, int n, int lane) const {
    load(&P.v, static_cast<const T*>(P.args.p.v), dst, bar, n, lane);
  }
};

template <typename Kt, typename T>
struct Sm90Producer {
  const Sm90FwdParams& P;
  const Sm90Smem<Kt>& smem;
  int lane;
  int total_q = INT_MAX, total_k = INT_MAX;  // varlen: rows of q and k (the copy path's bound)
  PipelineState<Kt::kStages> kv;
  int q_count = 0;

  // Key blocks n_blocks - 1 .. 0 of one tile from `src` into the K/V ring.
  template <typename KVSource>
  __device__ __forceinline__ void load_kv(const KVSource& src, int n_blocks) {
    for (int n = n_blocks - 1; n >= 0; --n) {
      sm90::mbar_wait(smem.k_empty(kv.stage), kv.phase ^ 1u, 2);
      src.load_k(smem.k(kv.stage), smem.k_full(kv.stage), n, lane);
      sm90::mbar_wait(smem.v_empty(kv.stage), kv.phase ^ 1u, 3);
      src.load_v(smem.v(kv.stage), smem.v_full(kv.stage), n, lane);
      kv.advance();
    }
  }

  // Q, then K and V of one work tile.
  __device__ __forceinline__ void load_tile(const Sm90Tile& ti) {
    const FlashAttentionParams& p = P.args.p;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const int m0 = ti.m_block * Kt::kBlockM;
    const int kv_head = ti.head / P.args.kv_group;
    const int tma_batch = varlen ? 0 : ti.batch;
    const QSlot<Kt::kQStages> q = QSlot<Kt::kQStages>::next(q_count);
    sm90::mbar_wait(smem.q_empty(q.slot), q.phase ^ 1u, 1);  // the consumers are done with its previous Q
    load_rows<Kt::kBlockM, Kt::kBoxes>(smem.q(q.slot), &P.q, smem.q_full(q.slot), ti.q_tok0 + m0, ti.head, tma_batch,
                                       total_q, static_cast<const T*>(p.q) + ti.head * p.q_head_stride,
                                       p.q_row_stride, lane);
    if (P.paged.block_table != nullptr) {
      const Sm90PagedKVSource<Kt, T> src{P, kv_head, ti.seqlen_k,
                                         P.paged.block_table + int64_t(ti.batch) * P.paged.max_pages};
      load_kv(src, ti.n_blocks);
      return;
    }
    const Sm90ContiguousKV<Kt, T> src{P,
                                      kv_head,
                                      tma_batch,
                                      ti.k_tok0,
                                      total_k,
                                      static_cast<const T*>(p.k) + kv_head * p.k_head_stride,
                                      static_cast<const T*>(p.v) + kv_head * p.v_head_stride};
    load_kv(src, ti.n_blocks);
  }

  // The producer warp's whole life: every tile of the units it takes.
  __device__ __forceinline__ void run(sm90::TileRing& ring) {
    const FlashAttentionParams& p = P.args.p;
    if (lane == 0) {
      sm90::prefetch_tensor_map(&P.q);
      if (p.cu_seqlens_q != nullptr || p.seqlen_k > 0) {  // else the K/V maps were not encoded (no key is loaded)
        sm90::prefetch_tensor_map(&P.k);
        sm90::prefetch_tensor_map(&P.v);
      }
    }
    const bool varlen = p.cu_seqlens_q != nullptr;
    total_q = varlen ? p.cu_seqlens_q[p.batch] : INT_MAX;
    total_k = varlen && P.paged.block_table == nullptr ? p.cu_seqlens_k[p.batch] : INT_MAX;
    Sm90UnitSource units{P, ring, lane, int(blockIdx.x)};
    for_each_tile<Kt::kBlockM, Kt::kBlockN>(P, units, [&](const Sm90Tile& ti) { load_tile(ti); });
  }
};

}  // namespace minillm::cuda::attn
