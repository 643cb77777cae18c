// Grouped GEMM for Hopper (sm_90a): TMA + wgmma, warp-specialised, persistent.
//
// One launch computes D = epilogue(A_g . W_g^T) for every group g at once, where A_g are group g's
// rows of A (a contiguous, 128-row aligned range) and W_g [N, K] its weights in HF's [out, in] layout
// (the MoE layer: a group is an expert). The tile schedule lives on the device: mblock_expert[m] names
// the group of each 128-row block (written by the MoE permutation), so the host never learns the
// routing and the launch is CUDA-graph capturable. A dense GEMM is one group over all rows.
//
// Why our own kernel and not CUTLASS's ptr-array grouped GEMM: with the rows of all groups in ONE
// buffer, a single TMA descriptor serves A for every group (no per-group descriptors in global
// memory), and owning the epilogue lets SwiGLU be fused: the gate and up halves of an n-block are
// loaded as two 128-row TMA boxes (gate rows f0..f0+127, up rows f0..f0+127), so column j and
// j + 128 of the 128x256 accumulator tile land in the SAME thread and silu(gate) * up is formed in
// registers; only the [rows, F] product is written. No re-layout of the weights is needed.
//
// Parts (data flows top to bottom):
//   tile order      grouped_gemm_raster.h: tiles in groups of at most group_m m-blocks of one group,
//                   m fastest, so that concurrent tiles share A and B in L2; handed out dynamically
//                   (a global counter; sm90::TileRing passes each tile to the consumers)
//   producer        warpgroup 0, one thread: TMA loads of A and the two B boxes of every k-step
//                   into a 4-stage shared-memory ring (full / empty mbarriers)          gemm_produce
//   mainloop        warpgroups 1, 2 (64 rows of the tile each): one m64n256k16 wgmma per 16 of K,
//                   128 fp32 accumulators per thread                                     gemm_mainloop
//   epilogue        per 64-column chunk: registers -> epilogue math (epilogue_block, with the tile's
//                   row data GemmEpilogueRows: RoPE cos / sin, combine weights) -> 16-bit -> swizzled
//                   shared chunk (double-buffered per consumer) -> TMA store (asynchronous, so the
//                   next tile's MMAs start at once), or 16-byte row scatter (combine)   gemm_epilogue
// Tiling (GemmTraits): tile 128 x 256 x 64, 4 stages (48 KB each, 128-byte swizzle), 3 warpgroups.
// Dynamic tiles: with a static round-robin the SMs that wait longer on L2 finished late while the
// others idled. Combine epilogue (the down projection of MoELayer::forward_pairs and top-1): each row
// is scaled by its routing weight and stored to its (token, slot) row of a [T, k, N] output instead
// of the permuted order, with 16-byte stores from the shared chunk (a TMA store cannot scatter rows),
// so the combine is left a plain sum over k that the engine fuses into its next residual add + norm.
// Out-of-range rows/columns: TMA zero-fills loads past K / past the tensors, and clips stores at N and
// at the row count; garbage in the alignment rows of a group is computed but never read.
// Measurements: docs/REPORT.md, bench/results/h100/moe*.json.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/gemm/grouped_gemm.h"
#include "cuda/gemm/grouped_gemm_raster.h"
#include "cuda/sm90.cuh"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::gemm {

struct GemmTraits {
  static constexpr int kBM = kGemmBlockM;  // rows per tile (the groups' row alignment)
  static constexpr int kBN = 256;  // accumulator columns per tile: wgmma's widest N, 2 B boxes of 128
  static constexpr int kBK = 64;   // 64 x 2 bytes = one 128-byte swizzle row
  static constexpr int kStages = 4;
  static constexpr int kConsumers = 2;  // warpgroups of 64 rows
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kATileBytes = kBM * kBK * 2;  // 16 KB
  static constexpr int kBBoxBytes = 128 * kBK * 2;   // 16 KB, one 128-row B box
  static constexpr int kStageBytes = kATileBytes + 2 * kBBoxBytes;
  static constexpr int kEpiCols = 64;                        // columns per TMA store
  static constexpr int kEpiBufBytes = 64 * kEpiCols * 2;     // 64 rows x 64 cols
  static constexpr int kSmemBytes =
      kStages * kStageBytes + kConsumers * 2 * kEpiBufBytes + 2 * kStages * 8 + sm90::kTileRingBytes + 1024;
  static constexpr int kGroupM = 16;  // m-blocks per raster group (default of GemmParams::group_m)
  static_assert(kBM == 128, "the consumers' 64-row halves and the B boxes assume 128-row tiles");
};

struct GemmParams {
  CUtensorMap a;   // A [rows, K], box {64, 128}
  CUtensorMap b0;  // W [E*N, K], box {64, 128}: first 128 rows of the n-block (swiglu: gate)
  CUtensorMap b1;  // W [E*N, K], box {64, 128}: second 128 rows (swiglu: up)
  CUtensorMap d;   // D [rows, N], box {64, 64}
  const int32_t* num_mblocks = nullptr;
  const int32_t* mblock_expert = nullptr;
  const int32_t* counts = nullptr;      // [E] rows of group e
  const int32_t* row_offset = nullptr;  // [E] first row of group e (a multiple of 128)
  int n_blocks = 0;           // ceil(N / output columns per tile)
  int k_iters = 0;            // ceil(K / 64)
  int b_rows_per_expert = 0;  // N
  int b_block_rows = 0;       // W rows per n-block: 128 (swiglu) or 256
  int b1_row_offset = 0;      // 0 (swiglu: b1 is the up matrix) or 128
  int group_m = 16;           // most m-blocks per raster group (tile order, see tile_coords)
  int dense_mblocks = 0;      // mblock_expert == nullptr: a dense GEMM over this many m-blocks (group 0)
  int32_t* tile_counter = nullptr;  // [1] zero at launch: tiles taken beyond the first gridDim.x
  void* d_ptr = nullptr;            // combine: D [pairs, N] in token-pair order, row stride ldd
  int64_t ldd = 0;
  const int32_t* src_pair = nullptr;  // combine: [rows] the pair of each permuted row
  const float* pair_weight = nullptr; // combine: [pairs] the routing weight of each pair
  const float2* rope = nullptr;     // rope epilogues: [positions, D / 2] (cos, sin)
  int rope_cols = 0;                // columns [0, rope_cols) are rotated
  int rope_seq = 1;                 // row r is at position r % rope_seq
  const float* bias = nullptr;      // rope_norm epilogues: [N] or null
  const float* q_norm = nullptr;    // rope_norm epilogues: [D] or null (then no norm)
  const float* k_norm = nullptr;    // rope_norm epilogues: [D]
  int q_cols = 0;                   // columns [0, q_cols) are q heads, [q_cols, rope_cols) k heads
  float norm_eps = 1e-6f;
};

__host__ __device__ constexpr int rope_dim_of(Epilogue e) {
  return e == Epilogue::rope64 || e == Epilogue::rope_norm64 ? 64 : e == Epilogue::rope128 || e == Epilogue::rope_norm128 ? 128 : 0;
}

// Shared memory: kStages x (A tile | B box 0 | B box 1) | epilogue chunks [kConsumers][2][64 x 64] |
// full[kStages], empty[kStages] mbarriers | the tile ring. Base 1024-byte aligned.
struct GemmSmem {
  uint32_t base;
  __device__ __forceinline__ uint32_t stage(int s) const { return base + s * GemmTraits::kStageBytes; }
  __device__ __forceinline__ uint32_t epi() const { return base + GemmTraits::kStages * GemmTraits::kStageBytes; }
  __device__ __forceinline__ uint32_t bars() const {
    return epi() + GemmTraits::kConsumers * 2 * GemmTraits::kEpiBufBytes;
  }
  __device__ __forceinline__ uint32_t full(int s) const { return bars() + 8u * s; }
  __device__ __forceinline__ uint32_t empty(int s) const { return bars() + 8u * (GemmTraits::kStages + s); }
  __device__ __forceinline__ uint32_t ring() const { return bars() + 16u * GemmTraits::kStages; }
};

// Tile t -> (m-block, n-block): raster groups inside one group of rows (grouped_gemm_raster.h), or
// over all m-blocks of a dense GEMM.
__device__ __forceinline__ void tile_coords(const GemmParams& p, int tile, int& mb, int& nb) {
  if (p.mblock_expert == nullptr)
    raster_run(tile, p.n_blocks, p.group_m, 0, p.dense_mblocks, mb, nb);
  else
    raster_tile(tile, p.n_blocks, p.group_m, p.mblock_expert, p.counts, p.row_offset, mb, nb);
}

// The producer thread: takes tiles (blockIdx.x first, then from the global counter, whose last fetch
// wraps it back to 0), publishes each to the consumers, and streams its k-steps into the ring.
__device__ __forceinline__ void gemm_produce(const GemmParams& p, const GemmSmem& sm, sm90::TileRing& ring) {
  using Tr = GemmTraits;
  const int total_tiles = (p.mblock_expert ? *p.num_mblocks : p.dense_mblocks) * p.n_blocks;
  sm90::prefetch_tensor_map(&p.a);
  sm90::prefetch_tensor_map(&p.b0);
  sm90::prefetch_tensor_map(&p.b1);
  int stage = 0;
  uint32_t phase = 0;
  for (int tile = blockIdx.x;;) {
    if (tile >= total_tiles) {
      ring.publish(-1, 0);
      break;
    }
    // The next tile (latency hidden by the loads below); the last fetch wraps the counter back to 0.
    const int next = int(gridDim.x) + int(atomicInc(reinterpret_cast<unsigned*>(p.tile_counter), total_tiles - 1));
    int mb, nb;
    tile_coords(p, tile, mb, nb);
    ring.publish(mb, nb);
    const int e = p.mblock_expert ? p.mblock_expert[mb] : 0;
    const int brow0 = e * p.b_rows_per_expert + nb * p.b_block_rows;
    const int brow1 = brow0 + p.b1_row_offset;
    for (int k = 0; k < p.k_iters; ++k) {
      sm90::mbar_wait(sm.empty(stage), phase ^ 1u);
      sm90::mbar_arrive_expect_tx(sm.full(stage), Tr::kStageBytes);
      const uint32_t sa = sm.stage(stage);
      const uint32_t sb = sa + Tr::kATileBytes;
      sm90::tma_load_2d(sa, &p.a, sm.full(stage), k * Tr::kBK, mb * Tr::kBM);
      sm90::tma_load_2d(sb, &p.b0, sm.full(stage), k * Tr::kBK, brow0);
      sm90::tma_load_2d(sb + Tr::kBBoxBytes, &p.b1, sm.full(stage), k * Tr::kBK, brow1);
      if (++stage == Tr::kStages) {
        stage = 0;
        phase ^= 1u;
      }
    }
    tile = next;
  }
}

// acc[64 x 256 of consumer c's rows] = A . B^T over the tile's k-steps; every stage is handed back
// to the producer once the MMAs that read it are done.
template <typename T>
__device__ __forceinline__ void gemm_mainloop(float (&acc)[128], const GemmParams& p, const GemmSmem& sm, int c,
                                              int lane, int& stage, uint32_t& phase) {
  using Tr = GemmTraits;
  int prev = 0;
  for (int k = 0; k < p.k_iters; ++k) {
    sm90::mbar_wait(sm.full(stage), phase);
    const uint32_t sa = sm.stage(stage) + c * (64 * 128);
    const uint32_t sb = sm.stage(stage) + Tr::kATileBytes;
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Tr::kBK / 16; ++kk)
      sm90::wgmma_ss<256, T>(acc, sm90::desc_k_sw128(sa + 32 * kk), sm90::desc_k_sw128(sb + 32 * kk),
                             (k > 0 || kk > 0) ? 1 : 0);
    sm90::wgmma_commit();
    if (k > 0) {
      sm90::wgmma_wait<1>();  // the previous stage's MMAs are done: hand it back to the producer
      if (lane == 0) sm90::mbar_arrive(sm.empty(prev));
    }
    prev = stage;
    if (++stage == Tr::kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
  sm90::wgmma_wait<0>();
  if (lane == 0) sm90::mbar_arrive(sm.empty(prev));
  sm90::fence_regs(acc);
}

// Per-tile row data of an epilogue, loaded before the mainloop so that its latency passes under it.
// Thread (warp w, lane l) of consumer c holds accumulator rows r0 = 16 w + l / 4 and r0 + 8 of the
// consumer's 64 rows, columns 8 j + 2 q + {0, 1} (q = l % 4) of every 8-column block j.
template <Epilogue kEpi>
struct GemmEpilogueRows {
  static constexpr int kRopeDim = rope_dim_of(kEpi);
  // RoPE: the (cos, sin) of frequencies 8 jf + 2q, 8 jf + 2q + 1 (jf < D/16) at this thread's two rows.
  float4 rope_cs[2][kRopeDim > 0 ? kRopeDim / 16 : 1];
  // Combine: the routing weights of this thread's two rows, and the pairs of the four rows it stores
  // per chunk (tid / 8 + 16 i); -1 for a group's alignment rows.
  float row_scale[2] = {1.0f, 1.0f};
  int store_pair[kEpi == Epilogue::combine ? 4 : 1];

  __device__ __forceinline__ void load(const GemmParams& p, int mb, int nb, int c, int r0, int q, int tid) {
    using Tr = GemmTraits;
    if constexpr (kRopeDim > 0) {
      if (nb * Tr::kBN < p.rope_cols) {
        const int row = mb * Tr::kBM + c * 64 + r0;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int pos = (row + 8 * h) % p.rope_seq;
          const float4* src = reinterpret_cast<const float4*>(p.rope + pos * (kRopeDim / 2) + 2 * q);
#pragma unroll
          for (int jf = 0; jf < kRopeDim / 16; ++jf) rope_cs[h][jf] = src[4 * jf];
        }
      }
    }
    if constexpr (kEpi == Epilogue::combine) {
      const int e = p.mblock_expert[mb];
      const int limit = p.row_offset[e] + p.counts[e];
      const int row0 = mb * Tr::kBM + c * 64;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row0 + r0 + 8 * h;
        row_scale[h] = r < limit ? p.pair_weight[p.src_pair[r]] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = row0 + tid / 8 + 16 * i;
        store_pair[i] = r < limit ? p.src_pair[r] : -1;
      }
    }
  }
};

// rope_norm epilogues, before the chunks: + bias, then RMSNorm of each q / k head, in place on the
// accumulators (rows r0 and r0 + 8: acc[4 j + 2 h + b] is column col0 + 8 j + 2 q + b of row r0 + 8 h).
// A head of kD columns is kD / 8 blocks j of this thread and of the three other lanes of its row (lane
// ^ 1, ^ 2): the sum of squares is theirs together. The tile's 256 columns hold whole heads (256 % kD
// == 0 and q_cols, rope_cols are multiples of kD), so a norm never needs another tile.
template <int kD>
__device__ __forceinline__ void bias_norm_acc(float (&acc)[128], const GemmParams& p, int col0, int q) {
  if (p.bias) {
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int col = col0 + 8 * j + 2 * q;
      if (col < p.b_rows_per_expert) {  // N % 8 == 0: col + 1 < N too
        const float2 bb = *reinterpret_cast<const float2*>(p.bias + col);
        acc[4 * j] += bb.x;
        acc[4 * j + 1] += bb.y;
        acc[4 * j + 2] += bb.x;
        acc[4 * j + 3] += bb.y;
      }
    }
  }
  if (!p.q_norm) return;
  constexpr int kBlocks = kD / 8;  // blocks j per head
#pragma unroll
  for (int hd = 0; hd < 32 / kBlocks; ++hd) {
    const int hcol = col0 + hd * kD;
    if (hcol >= p.rope_cols) continue;  // v heads: bias only (uniform over the warp)
    const float* w = (hcol < p.q_cols ? p.q_norm : p.k_norm) + 2 * q;  // [kD], this thread's pairs
    float ss[2] = {0.f, 0.f};
#pragma unroll
    for (int j = hd * kBlocks; j < (hd + 1) * kBlocks; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) ss[h] += acc[4 * j + 2 * h] * acc[4 * j + 2 * h] + acc[4 * j + 2 * h + 1] * acc[4 * j + 2 * h + 1];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      ss[h] += __shfl_xor_sync(0xffffffffu, ss[h], 1);
      ss[h] += __shfl_xor_sync(0xffffffffu, ss[h], 2);
      ss[h] = rsqrtf(ss[h] / static_cast<float>(kD) + p.norm_eps);
    }
#pragma unroll
    for (int j = hd * kBlocks; j < (hd + 1) * kBlocks; ++j) {
      const float2 ww = *reinterpret_cast<const float2*>(w + 8 * (j - hd * kBlocks));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        acc[4 * j + 2 * h] *= ss[h] * ww.x;
        acc[4 * j + 2 * h + 1] *= ss[h] * ww.y;
      }
    }
  }
}

// The epilogue's math for output block j (8 columns) of this thread's two rows: v[2 h + b] is row
// r0 + 8 h, column 8 j + 2 q + b, from the fp32 accumulators. `col0`: the tile's first output column.
template <Epilogue kEpi>
__device__ __forceinline__ void epilogue_block(const float (&acc)[128], int j, int col0, const GemmParams& p,
                                               const GemmEpilogueRows<kEpi>& rows, float (&v)[4]) {
  constexpr int kRopeDim = GemmEpilogueRows<kEpi>::kRopeDim;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kEpi == Epilogue::swiglu) {
      v[i] = silu(acc[4 * j + i]) * acc[4 * j + 64 + i];  // up is 128 columns (16 blocks) later
    } else if constexpr (kEpi == Epilogue::gelu) {
      v[i] = gelu_erf(acc[4 * j + i]);
    } else if constexpr (kEpi == Epilogue::combine) {
      v[i] = acc[4 * j + i] * rows.row_scale[i / 2];
    } else {
      v[i] = acc[4 * j + i];
    }
  }
  if constexpr (kRopeDim > 0) {
    // Column pair (2q, 2q + 1) of block j is the head's frequency pair f, f + 1; its rotate_half
    // partner is D/2 columns (D/16 blocks) away, in the same thread.
    const bool first_half = (8 * j) % kRopeDim < kRopeDim / 2;
    const int pj = first_half ? j + kRopeDim / 16 : j - kRopeDim / 16;
    if (col0 + 8 * j < p.rope_cols) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float4 cs = rows.rope_cs[h][(j % (kRopeDim / 8)) % (kRopeDim / 16)];
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const float co = b ? cs.z : cs.x, si = b ? cs.w : cs.y;
          const float x = acc[4 * j + 2 * h + b], y = acc[4 * pj + 2 * h + b];
          v[2 * h + b] = first_half ? x * co - y * si : x * co + y * si;
        }
      }
    }
  }
}

// Consumer c's 64 rows of the tile (mb, nb) out of the accumulators: 64-column chunks through its two
// shared buffers, then a TMA store (or, combine, a scatter of whole rows to their pairs).
template <typename T, Epilogue kEpi>
__device__ __forceinline__ void gemm_epilogue(const float (&acc)[128], const GemmParams& p, const GemmSmem& sm,
                                              const GemmEpilogueRows<kEpi>& rows, int mb, int nb, int c, int tid,
                                              int r0, int q) {
  using Tr = GemmTraits;
  constexpr int kOutCols = kEpi == Epilogue::swiglu ? Tr::kBN / 2 : Tr::kBN;
  constexpr int kChunks = kOutCols / Tr::kEpiCols;
  static_assert(kChunks % 2 == 0, "the epilogue buffers alternate");
#pragma unroll
  for (int ch = 0; ch < kChunks; ++ch) {
    const uint32_t buf = sm.epi() + (c * 2 + (ch & 1)) * Tr::kEpiBufBytes;
    // TMA stores: the store that last read `buf` is done reading. Combine: every thread's reads of
    // `buf` (two chunks ago) precede its arrival at the previous chunk's second barrier.
    if (kEpi != Epilogue::combine && tid == 0) sm90::bulk_wait_read<1>();
    sm90::named_bar_sync(1 + c, 128);
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      float v[4];
      epilogue_block<kEpi>(acc, ch * 8 + jj, nb * Tr::kBN, p, rows, v);
      const uint32_t swz = static_cast<uint32_t>((jj ^ (r0 & 7)) << 4) + 4u * q;  // 128-byte swizzle
      st_shared_u32(buf + r0 * 128 + swz, pack2<T>(v[0], v[1]));
      st_shared_u32(buf + (r0 + 8) * 128 + swz, pack2<T>(v[2], v[3]));
    }
    if constexpr (kEpi == Epilogue::combine) {
      // Scatter: 16-byte pieces, a warp stores 4 whole 128-byte row segments per instruction.
      sm90::named_bar_sync(1 + c, 128);
      const int piece = tid % 8;
      const int col = nb * kOutCols + ch * Tr::kEpiCols + piece * 8;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = tid / 8 + 16 * i;
        if (rows.store_pair[i] < 0 || col >= p.b_rows_per_expert) continue;  // N
        const uint4 val = ld_shared_v4(buf + row * 128 + ((piece ^ (row & 7)) << 4));
        *reinterpret_cast<uint4*>(static_cast<T*>(p.d_ptr) + static_cast<int64_t>(rows.store_pair[i]) * p.ldd + col) =
            val;
      }
      continue;
    }
    sm90::fence_proxy_async();
    sm90::named_bar_sync(1 + c, 128);
    if (tid == 0) {
      sm90::tma_store_2d(&p.d, buf, nb * kOutCols + ch * Tr::kEpiCols, mb * Tr::kBM + c * 64);
      sm90::bulk_commit();
    }
  }
}

template <typename T, Epilogue kEpi>
__global__ void __launch_bounds__(GemmTraits::kThreads, 1) grouped_gemm_kernel(const __grid_constant__ GemmParams p) {
  using Tr = GemmTraits;
  extern __shared__ uint8_t smem_raw[];
  const GemmSmem sm{(smem_u32(smem_raw) + 1023u) & ~1023u};
  sm90::TileRing ring{sm.ring()};
  const int wg = threadIdx.x / 128;
  const int tid = threadIdx.x % 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < Tr::kStages; ++s) {
      sm90::mbar_init(sm.full(s), 1);
      sm90::mbar_init(sm.empty(s), Tr::kConsumers * 4);  // lane 0 of every consumer warp
    }
    ring.init(Tr::kConsumers * 128);
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer ----
    sm90::setmaxnreg_dec<40>();
    if (tid == 0) gemm_produce(p, sm, ring);
    return;
  }

  // ---- consumers: warpgroup c owns rows [64c, 64c + 64) of the tile ----
  sm90::setmaxnreg_inc<232>();
  const int c = wg - 1;
  const int warp = tid / 32, lane = tid % 32;
  const int r0 = warp * 16 + lane / 4;  // accumulator rows r0 and r0 + 8 of the 64-row slab
  const int q = lane % 4;               // column pair 2q, 2q + 1 of every 8-column block
  float acc[128];
  int stage = 0;
  uint32_t phase = 0;
  for (int2 t = ring.next(); t.x >= 0; t = ring.next()) {
    const int mb = t.x, nb = t.y;  // the tile's m-block and n-block (tile_coords, by the producer)
    GemmEpilogueRows<kEpi> rows;
    rows.load(p, mb, nb, c, r0, q, tid);
    gemm_mainloop<T>(acc, p, sm, c, lane, stage, phase);
    if constexpr (kEpi == Epilogue::rope_norm64 || kEpi == Epilogue::rope_norm128)
      bias_norm_acc<GemmEpilogueRows<kEpi>::kRopeDim>(acc, p, nb * Tr::kBN, q);
    gemm_epilogue<T, kEpi>(acc, p, sm, rows, mb, nb, c, tid, r0, q);
  }
  if (tid == 0) sm90::bulk_wait_all();
}

// Launchers of the instantiations, one per .cu file so that they compile in parallel:
// grouped_gemm_swiglu.cu, grouped_gemm_gelu.cu, grouped_gemm.cu (none, combine), grouped_gemm_rope.cu
// (rope64 and rope128), grouped_gemm_rope_norm.cu (rope_norm64 and rope_norm128).
void launch_grouped_gemm_swiglu(DType dtype, const GemmParams& p, int grid, cudaStream_t stream);
void launch_grouped_gemm_gelu(DType dtype, const GemmParams& p, int grid, cudaStream_t stream);
void launch_grouped_gemm_none(DType dtype, const GemmParams& p, int grid, cudaStream_t stream);
void launch_grouped_gemm_combine(DType dtype, const GemmParams& p, int grid, cudaStream_t stream);
void launch_grouped_gemm_rope(DType dtype, const GemmParams& p, int head_dim, int grid, cudaStream_t stream);
void launch_grouped_gemm_rope_norm(DType dtype, const GemmParams& p, int head_dim, int grid, cudaStream_t stream);

// The body of those launchers: grouped_gemm_kernel<T, kEpi> on `grid` persistent CTAs.
template <Epilogue kEpi>
void launch_grouped_gemm_impl(DType dtype, const GemmParams& p, int grid, cudaStream_t stream) {
  auto kernel = dtype == DType::bf16 ? grouped_gemm_kernel<__nv_bfloat16, kEpi> : grouped_gemm_kernel<__half, kEpi>;
  if (dtype == DType::bf16) {
    set_max_dynamic_smem<grouped_gemm_kernel<__nv_bfloat16, kEpi>>(GemmTraits::kSmemBytes);
  } else {
    set_max_dynamic_smem<grouped_gemm_kernel<__half, kEpi>>(GemmTraits::kSmemBytes);
  }
  kernel<<<grid, GemmTraits::kThreads, GemmTraits::kSmemBytes, stream>>>(p);
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::gemm
