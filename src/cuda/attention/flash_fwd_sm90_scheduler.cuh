// Tile scheduler of the Hopper FlashAttention forward kernel (flash_fwd_sm90.cuh): which tiles a
// persistent CTA computes, in which order.
//
// A work tile is one m-block (kBlockM query rows) of one (batch, head). Work units: under causal
// masking the pair of m-blocks (last - i, i), whose key counts add up to the same total for every i,
// so that units cost the same; otherwise one m-block. Units are ordered (group of group_bh (batch,
// head) pairs, i, pair in the group): the CTAs running at the same time share the K/V of one group,
// sized on the host to stay in L2. The producer takes units from a global counter (dynamic: SMs that
// run faster take more) and publishes each through sm90::TileRing; the consumers read them from the
// ring, so producer and consumers walk the same sequence of tiles.
#pragma once
#include "cuda/attention/flash_fwd_sm90_traits.cuh"

namespace minillm::cuda::attn {

// One work tile: m-block, head and batch, its sequence, and the number of K/V tiles it reads.
struct Sm90Tile {
  int m_block, head, batch;
  int seqlen_q, seqlen_k;
  int q_tok0, k_tok0;  // first token of the sequence in the varlen layout (else 0)
  int n_blocks;
};

template <int kBlockM, int kBlockN>
__device__ __forceinline__ Sm90Tile make_tile(const Sm90FwdParams& P, int bh, int m_block) {
  const FlashAttentionParams& p = P.args.p;
  Sm90Tile ti;
  ti.m_block = m_block;
  ti.batch = bh / p.num_heads;
  ti.head = bh - ti.batch * p.num_heads;
  ti.seqlen_q = p.seqlen_q;
  ti.seqlen_k = p.seqlen_k;
  ti.q_tok0 = ti.k_tok0 = 0;
  if (p.cu_seqlens_q != nullptr) {
    ti.q_tok0 = p.cu_seqlens_q[ti.batch];
    ti.seqlen_q = p.cu_seqlens_q[ti.batch + 1] - ti.q_tok0;
    if (P.paged.block_table != nullptr) {  // keys: the sequence's pages
      ti.seqlen_k = P.paged.context_lens[ti.batch];
    } else {
      ti.k_tok0 = p.cu_seqlens_k[ti.batch];
      ti.seqlen_k = p.cu_seqlens_k[ti.batch + 1] - ti.k_tok0;
    }
  }
  // Keys the tile's rows can see: all, or (causal) up to the diagonal of its last existing row.
  int n_end = ti.seqlen_k;
  if (p.causal) {
    const int last_row_end = min((m_block + 1) * kBlockM, ti.seqlen_q);
    n_end = max(0, min(ti.seqlen_k, last_row_end + ti.seqlen_k - ti.seqlen_q));
  }
  ti.n_blocks = (n_end + kBlockN - 1) / kBlockN;
  return ti;
}

// Calls f(tile) for every tile of the work units that next_unit() returns, in order, until it returns
// a unit >= P.num_units. Tiles past a varlen sequence's end are skipped.
template <int kBlockM, int kBlockN, typename N, typename F>
__device__ __forceinline__ void for_each_tile(const Sm90FwdParams& P, N&& next_unit, F&& f) {
  const FlashAttentionParams& p = P.args.p;
  for (int u = next_unit(); u < P.num_units; u = next_unit()) {
    const int group_units = P.group_bh * P.units_per_bh;
    const int group = u / group_units;
    const int r = u - group * group_units;
    const int first = group * P.group_bh;
    const int size = min(P.group_bh, P.num_bh - first);
    const int i = r / size;
    const int bh = first + (r - i * size);
    const int m_hi = P.num_m_blocks - 1 - i;
    for (int j = 0; j < (p.causal && i != m_hi ? 2 : 1); ++j) {
      const Sm90Tile ti = make_tile<kBlockM, kBlockN>(P, bh, j == 0 ? m_hi : i);
      if (ti.m_block * kBlockM < ti.seqlen_q) f(ti);
    }
  }
}

// The producer warp's source of work units: CTA b starts with unit b; lane 0 then fetches the unit
// after the one it hands out (dynamic: gridDim.x + the global counter, whose latency hides behind
// that unit's loads; static, P.unit_counter == nullptr: b, b + grid, b + 2 grid, ...) and publishes
// every unit to the consumers. Every lane gets the unit.
struct Sm90UnitSource {
  const Sm90FwdParams& P;
  sm90::TileRing& ring;
  int lane;
  int pending;  // the unit lane 0 hands out next (starts at blockIdx.x)
  __device__ __forceinline__ int operator()() {
    const int u = __shfl_sync(0xffffffffu, pending, 0);
    if (lane == 0) {
      if (u < P.num_units)
        pending = int(gridDim.x) + (P.unit_counter ? int(atomicInc(P.unit_counter, unsigned(P.num_units - 1))) : u);
      ring.publish(u);
    }
    return u;
  }
};

}  // namespace minillm::cuda::attn
