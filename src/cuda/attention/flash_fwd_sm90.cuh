// FlashAttention forward for Hopper (sm_90a): TMA + wgmma + warp specialisation, persistent.
//
// Algorithm (FlashAttention-3 style; Shah et al. 2024): one CTA owns kBlockM = 64 * kConsumers query
// rows of one (batch, head) at a time and streams the K/V tiles of kBlockN keys, last tile first
// (the masked tiles, sequence tail and causal diagonal, come first):
//   producer warpgroup (setmaxnreg.dec): one warp; lane 0 issues the TMA loads: the Q tile once per
//     work tile (two Q buffers when they fit), then K_j and V_j into a kStages-deep shared-memory
//     ring, with full/empty mbarriers (K and V apart, so that S = Q K^T starts before V lands).
//   consumer warpgroups (setmaxnreg.inc), 64 query rows each:
//     S = Q K_j^T           wgmma m64n{kBlockN}k16, A = Q and B = K from shared memory (K-major)
//     online softmax        fp32 registers, exp2 with scale * log2(e) folded in, row max / sum over
//                           the 4 threads of a quad (the accumulator layout is FlashAttention-2's)
//     O += P_j V_j          wgmma m64n{D}k16 with A = P from registers (bf16/fp16, converted from the
//                           S accumulators in place) and B = V from shared memory, MN-major (tnspB)
//   Overlap: within a warpgroup, S_{j+1} = Q K_{j+1}^T and O += P_j V_j are issued back to back and
//   the softmax of S_{j+1} runs while O += P_j V_j is still on the tensor cores (kOverlap); between
//   warpgroups, a named-barrier token makes them issue their GEMMs in turn, so one warpgroup's
//   softmax runs under the other's GEMMs (kPingPong). Head dim 128 from 2048 keys: two P buffers
//   (kDoubleP), so the softmax packs P_{j+1} while O += P_j V_j still reads the other one. The row
//   maximum in use moves only when it grows by more than 2^8 (conditional rescaling: O is rarely
//   rescaled). Causal: a warpgroup skips the key blocks that none of its rows sees (it still
//   releases their stages and passes the token).
// Tiling (the traits in flash_fwd_sm90_hdim*.cu): D128: 128 x 128, 2 consumers, 2 stages; D64: 192 x
// 128 (3 consumers) or 128 x 128 (2) by the number of tiles, 3 stages.
// Epilogue: O / l -> 16-bit -> shared memory (16-byte chunks XOR-swizzled by row) -> 16-byte stores of
// the rows that exist; lse = m * scale + ln(l). A row that sees no key has m = -inf, l = 0: o = 0 and
// lse = -inf (the FlashAttention-2 kernel's semantics, flash_fwd_kernel.cuh).
//
// Layouts (include/minillm/attention.h): one 4-D TMA tensor per input, {D, rows, heads, batch}
// (innermost first) with the caller's strides in bytes, boxes {64, tile rows, 1, 1} with 128-byte
// swizzle; D = 128 is two boxes side by side. Padded layout: rows = N and TMA zero-fills rows past N.
// Varlen: batch = 1 and a sequence's rows start at cu_seqlens[b]; rows past a sequence's end are
// other sequences' tokens: keys are masked, query rows are not stored. The total row count is only
// known on the device (cu_seqlens[B]), so the tensor maps are declared with 2^31 - 1 rows and the
// one tile that would cross the end of the tensor is copied by the producer warp with plain loads.
// Shared memory: Q [kBlockM x D] | K ring | V ring | O staging [kBlockM x D] | mbarriers.
//
// Schedule (for_each_tile): grid = number of SMs; the producer takes work units from a global counter
// (dynamic: SMs that run faster take more units; sm90::TileRing hands each unit to the consumers), in
// the order (group of (batch, head) pairs, unit, pair). Groups are sized so that their K/V stay in L2.
// Causal units are the pairs of m-blocks (last - i, i), whose key counts add up to the same total, so
// that the units cost the same. MINILLM_SM90_SCHEDULE=static: CTA b takes units b, b + grid, ...
//
// Measured on H100 80GB HBM3, bf16, B16 H16 N2048 (TFLOP/s; torch 2.11 SDPA cuDNN in the same process):
//   D64 full 486 (cuDNN 464, 1.05x), D64 causal 412 (392, 1.05x), D128 full 622 (633, 0.98x),
//   D128 causal 525 (506, 1.04x); over the 288-case grid: median 1.66x SDPA FLASH, 1.08x cuDNN.
// Command: PYTHONPATH=python python3 bench/bench_attention.py (bench/results/h100/attention.json);
// ablations of each technique: docs/HOPPER_ATTENTION.md.
#pragma once
#include <cuda.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cuda/attention/flash_fwd_kernel.cuh"
#include "cuda/attention/flash_fwd_sm90.h"
#include "cuda/device.h"
#include "cuda/sm90.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::attn {

// Tile shape and pipeline of one kernel instantiation.
template <int kHeadDim_, int kConsumers_, int kBlockN_, int kStages_, bool kOverlap_, bool kPingPong_,
          int kExp2Poly_ = 0, bool kDoubleP_ = false>
struct Sm90FwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = kConsumers_;  // consumer warpgroups of 64 query rows
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr bool kOverlap = kOverlap_;
  static constexpr bool kPingPong = kPingPong_;
  // exp2 of every kExp2Poly-th column pair of an unmasked S tile runs on the FMA pipe (exp2_poly)
  // instead of the MUFU (0: never). Head dim 64 does as many exponentials per tensor-core FLOP as the
  // MUFU (16/clk/SM) can serve at the tensor cores' peak rate; moving some to the FMA pipe unloads it.
  static constexpr int kExp2Poly = kExp2Poly_;
  // Two P buffers (overlap, 2 consumers): the softmax of S_n packs P_n into one while O += P_{n+1}
  // V_{n+1} still reads the other, so that the packing leaves the warpgroup's critical chain. Needs
  // ~238 registers per consumer thread (232 granted: a few reloads from L1 per key block).
  static constexpr bool kDoubleP = kDoubleP_ && kOverlap_ && kConsumers_ == 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kBoxes = kHeadDim / 64;  // 64-column (128-byte) TMA boxes per row
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;  // one K (or V) stage
  // Two Q buffers when they fit: the next tile's Q loads while this one runs.
  static constexpr int kQStages =
      3 * kQBytes + 2 * kStages * kKVBytes + 8 * (4 + 4 * kStages) + sm90::kTileRingBytes + 1024 <= 227 * 1024 ? 2 : 1;
  static constexpr int kOffK = kQStages * kQBytes;
  static constexpr int kOffV = kOffK + kStages * kKVBytes;
  static constexpr int kOffO = kOffV + kStages * kKVBytes;
  static constexpr int kOffBar = kOffO + kQBytes;
  static constexpr int kNumBars = 2 * kQStages + 4 * kStages;  // q full/empty, k full/empty, v full/empty
  static constexpr int kOffRing = kOffBar + 8 * kNumBars;  // the work-unit ring (sm90::TileRing)
  static constexpr int kSmemBytes = kOffRing + sm90::kTileRingBytes + 1024;  // + slack to align the base to 1024
  // The CTA's 64K registers: the producer gives back what the consumers take (setmaxnreg), with the
  // launch cap (65536 / kThreads, rounded down to 8) in between: 56 + 2 x 224 = 40 + 2 x 232 = 3 x 168,
  // 32 + 3 x 160 = 4 x 128. The producer spills a little at 40.
  static constexpr int kProducerRegs = kConsumers == 2 ? (kDoubleP ? 40 : 56) : 32;
  static constexpr int kConsumerRegs = kConsumers == 2 ? (kDoubleP ? 232 : 224) : 160;
  // Named barriers (0 is __syncthreads): the ping-pong tokens, then one per consumer for the epilogue.
  static constexpr int kSchedBar = 1;
  static constexpr int kEpiBar = 1 + kConsumers;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128");
  static_assert(kConsumers == 2 || kConsumers == 3, "2 or 3 consumer warpgroups");
  static_assert(kBlockN % 16 == 0 && kBlockN >= 32 && kBlockN <= 256,
                "kBlockN: k16 steps of O += P V, one TMA box, 4 partial row maxima");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA");
  static_assert(kProducerRegs + kConsumers * kConsumerRegs <= (65536 / kThreads) * (1 + kConsumers), "registers");
};

// Kernel arguments. The tensor maps live in the kernel's parameter space (__grid_constant__).
struct Sm90FwdParams {
  CUtensorMap q, k, v;  // {D, rows, heads, batch}, boxes {64, kBlockM (q) or kBlockN (k, v), 1, 1}
  FlashFwdArgs args;
  int num_m_blocks;  // ceil(seqlen_q / kBlockM)
  int num_bh;        // batch * num_heads
  int units_per_bh;  // work units per (batch, head): causal: pairs of m-blocks, else single m-blocks
  int group_bh;      // (batch, head) pairs per unit group
  int num_units;     // units_per_bh * num_bh
  unsigned* unit_counter;  // dynamic schedule: units taken beyond the first gridDim.x (nullptr: static)
};

// The dynamic schedule's counters, one per launch in turn (so that launches on different streams do
// not share one). atomicInc wraps a counter back to 0 on the launch's last fetch: zero between launches.
constexpr int kUnitCounters = 64;
__device__ unsigned g_unit_counters[kUnitCounters];

namespace sm90_detail {

// One work tile: m-block, head and batch, its sequence, and the number of K/V tiles it reads.
struct Tile {
  int m_block, head, batch;
  int seqlen_q, seqlen_k;
  int q_tok0, k_tok0;  // first token of the sequence in the varlen layout (else 0)
  int n_blocks;
};

template <int kBlockM, int kBlockN>
__device__ __forceinline__ Tile make_tile(const FlashAttentionParams& p, int bh, int m_block) {
  Tile ti;
  ti.m_block = m_block;
  ti.batch = bh / p.num_heads;
  ti.head = bh - ti.batch * p.num_heads;
  ti.seqlen_q = p.seqlen_q;
  ti.seqlen_k = p.seqlen_k;
  ti.q_tok0 = ti.k_tok0 = 0;
  if (p.cu_seqlens_q != nullptr) {
    ti.q_tok0 = p.cu_seqlens_q[ti.batch];
    ti.seqlen_q = p.cu_seqlens_q[ti.batch + 1] - ti.q_tok0;
    ti.k_tok0 = p.cu_seqlens_k[ti.batch];
    ti.seqlen_k = p.cu_seqlens_k[ti.batch + 1] - ti.k_tok0;
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

// 2^x for finite x <= 0 on the FMA pipe (no MUFU): x = j + f with j = round(x) and f in [-0.5, 0.5];
// 2^f by a degree-3 polynomial (max relative error 7.5e-5, below half an fp16 ulp), 2^j added to the
// exponent bits. x is clamped at -126 (2^-126 instead of ~0: only for unmasked scores, never -inf).
__device__ __forceinline__ float exp2_poly(float x) {
  x = fmaxf(x, -126.f);
  const float t = x + 12582912.f;  // 1.5 * 2^23: round(x) lands in the low mantissa bits of t
  const float f = x - (t - 12582912.f);
  float p = fmaf(0.05517100170254707f, f, 0.24260950088500977f);
  p = fmaf(p, f, 0.6932609677314758f);
  p = fmaf(p, f, 0.9999281764030457f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));  // t's high bits shift out
}

// Calls f(tile) for every tile of the work units that next_unit() returns, in order, until it returns
// a unit >= P.num_units (the producer and the consumers walk the same sequence). Work units: under
// causal masking the pair of m-blocks (last - i, i), whose key counts add up to the same total for
// every i, so that units cost the same; otherwise one m-block. Units are ordered (group of group_bh
// (batch, head) pairs, i, pair in the group): the CTAs running at the same time share the K/V of one
// group, sized to stay in L2. Tiles past a varlen sequence's end are skipped.
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
      const Tile ti = make_tile<kBlockM, kBlockN>(p, bh, j == 0 ? m_hi : i);
      if (ti.m_block * kBlockM < ti.seqlen_q) f(ti);
    }
  }
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
  constexpr int kChunks = kBoxes * 8;  // 16-byte chunks per row
  for (int i = lane; i < kRows * kChunks; i += 32) {
    const int r = i / kChunks, c = i % kChunks;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r < rows_total) val = *reinterpret_cast<const uint4*>(src + int64_t(row0 + r) * row_stride + c * 8);
    const uint32_t addr = dst + (c / 8) * kRows * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4);
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(val.x), "r"(val.y), "r"(val.z),
                 "r"(val.w)
                 : "memory");
  }
  fence_proxy_async();  // the wgmma reads of these rows go through the async proxy
  __syncwarp();
  if (lane == 0) mbar_arrive(bar);
}

}  // namespace sm90_detail

// grid: persistent CTAs (or one per work unit); block: Kt::kThreads; dynamic smem: Kt::kSmemBytes.
template <typename Kt, typename T>
__global__ void __launch_bounds__(Kt::kThreads, 1) flash_fwd_sm90_kernel(const __grid_constant__ Sm90FwdParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90;
  using namespace sm90_detail;
  constexpr int D = Kt::kHeadDim, BM = Kt::kBlockM, BN = Kt::kBlockN, kStages = Kt::kStages;
  constexpr int kConsumers = Kt::kConsumers;
  const FlashAttentionParams& p = P.args.p;
  const bool varlen = p.cu_seqlens_q != nullptr;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;  // 128-byte swizzle atoms: 1024-aligned
  auto sQ = [&](int s) { return base + s * Kt::kQBytes; };
  const uint32_t sO = base + Kt::kOffO;
  auto sK = [&](int s) { return base + Kt::kOffK + s * Kt::kKVBytes; };
  auto sV = [&](int s) { return base + Kt::kOffV + s * Kt::kKVBytes; };
  const uint32_t bars = base + Kt::kOffBar;
  constexpr int kQStages = Kt::kQStages;
  auto q_full = [&](int s) { return bars + 8 * s; };
  auto q_empty = [&](int s) { return bars + 8 * (kQStages + s); };
  const uint32_t kv_bars = bars + 16 * kQStages;
  auto k_full = [&](int s) { return kv_bars + 8 * s; };
  auto k_empty = [&](int s) { return kv_bars + 8 * (kStages + s); };
  auto v_full = [&](int s) { return kv_bars + 8 * (2 * kStages + s); };
  auto v_empty = [&](int s) { return kv_bars + 8 * (3 * kStages + s); };

  const int wg = threadIdx.x / 128;
  const int tid = threadIdx.x % 128;
#ifdef MINILLM_SM90_WATCHDOG
  if (blockIdx.x == 0 && threadIdx.x == 0)
    printf("sm90 kernel: grid %d smem base 0x%x barriers at 0x%x (q full/empty %d stages, then k full, k empty, "
           "v full, v empty x %d)\n", int(gridDim.x), base, base + Kt::kOffBar, kQStages, kStages);
#endif
  if (threadIdx.x == 0) {
    // "full": the producer's arrive (with the TMA bytes); "empty": lane 0 of every consumer warp.
    for (int s = 0; s < kQStages; ++s) {
      mbar_init(q_full(s), 1);
      mbar_init(q_empty(s), 4 * kConsumers);
    }
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(k_empty(s), 4 * kConsumers);
      mbar_init(v_empty(s), 4 * kConsumers);
    }
    fence_barrier_init();
  }
  TileRing ring{base + Kt::kOffRing};
  if (threadIdx.x == 0) ring.init(128 * kConsumers);
  __syncthreads();

  if (wg == 0) {
    // ---------------- producer: warp 0 (lane 0 issues the TMA loads) ----------------
    setmaxnreg_dec<Kt::kProducerRegs>();
    if (tid >= 32) return;
    const int lane = tid;
    if (lane == 0) {
      prefetch_tensor_map(&P.q);
      if (varlen || p.seqlen_k > 0) {  // else the K/V maps were not encoded (no key is ever loaded)
        prefetch_tensor_map(&P.k);
        prefetch_tensor_map(&P.v);
      }
    }
    const int total_q = varlen ? p.cu_seqlens_q[p.batch] : INT_MAX;
    const int total_k = varlen ? p.cu_seqlens_k[p.batch] : INT_MAX;
    const int kv_group = P.args.kv_group;
    // Work units: dynamic, lane 0 fetches the unit after the one it hands out (the atomic's latency
    // hides behind that unit's loads); static (P.unit_counter == nullptr, for comparison): CTA b takes
    // units b, b + grid, b + 2 grid, ...
    int pending = int(blockIdx.x);
    auto next_unit = [&] {
      const int u = __shfl_sync(0xffffffffu, pending, 0);
      if (lane == 0) {
        if (u < P.num_units)
          pending = int(gridDim.x) + (P.unit_counter ? int(atomicInc(P.unit_counter, unsigned(P.num_units - 1))) : u);
        ring.publish(u);
      }
      return u;
    };
    int stage = 0, q_count = 0;
    uint32_t phase = 0;
    for_each_tile<BM, BN>(P, next_unit, [&](const Tile& ti) {
      const int m0 = ti.m_block * BM;
      const int kv_head = ti.head / kv_group;
      const int tma_batch = varlen ? 0 : ti.batch;
      const int qs = q_count % kQStages;
      const uint32_t q_phase = (q_count / kQStages) & 1u;
      ++q_count;
      mbar_wait(q_empty(qs), q_phase ^ 1u, 1);  // the consumers are done with the Q this buffer held
      load_rows<BM, Kt::kBoxes>(sQ(qs), &P.q, q_full(qs), ti.q_tok0 + m0, ti.head, tma_batch, total_q,
                                static_cast<const T*>(p.q) + ti.head * p.q_head_stride, p.q_row_stride, lane);
      const T* k_src = static_cast<const T*>(p.k) + kv_head * p.k_head_stride;
      const T* v_src = static_cast<const T*>(p.v) + kv_head * p.v_head_stride;
      for (int n = ti.n_blocks - 1; n >= 0; --n) {
        const int row = ti.k_tok0 + n * BN;
        mbar_wait(k_empty(stage), phase ^ 1u, 2);
        load_rows<BN, Kt::kBoxes>(sK(stage), &P.k, k_full(stage), row, kv_head, tma_batch, total_k, k_src,
                                  p.k_row_stride, lane);
        mbar_wait(v_empty(stage), phase ^ 1u, 3);
        load_rows<BN, Kt::kBoxes>(sV(stage), &P.v, v_full(stage), row, kv_head, tma_batch, total_k, v_src,
                                  p.v_row_stride, lane);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1u;
        }
      }
    });
  } else {
    // ---------------- consumers: warpgroup c owns rows [64 c, 64 c + 64) of the tile ----------------
    setmaxnreg_inc<Kt::kConsumerRegs>();
    const int c = wg - 1;
    const int warp = tid / 32, lane = tid % 32;
    const int quad_row = lane / 4, quad_col = lane % 4;  // accumulator rows 16 warp + quad_row (+ 8)
    const float scale_log2 = P.args.scale_log2;
    constexpr float kRescaleLog2 = 8.f;  // conditional rescaling's threshold (see softmax)

    // Ping-pong token: consumer c issues its GEMMs after consumer c - 1 (mod kConsumers) issued its own.
    auto sched_wait = [&] {
      if constexpr (Kt::kPingPong) named_bar_sync(Kt::kSchedBar + c, 256);
    };
    auto sched_pass = [&] {
      if constexpr (Kt::kPingPong) named_bar_arrive(Kt::kSchedBar + (c + 1) % kConsumers, 256);
    };
    if constexpr (Kt::kPingPong) {
      if (c == kConsumers - 1) named_bar_arrive(Kt::kSchedBar, 256);  // consumer 0 goes first
    }

    float s[BN / 2];         // S tile (64 x BN per warpgroup), then P in fp32
    float o[D / 2];          // O accumulator (64 x D per warpgroup)
    // P as the A operand of the k16 steps of O += P V (Kt::kDoubleP: two buffers).
    constexpr int kPBufs = Kt::kDoubleP ? 2 : 1;
    uint32_t pa[kPBufs][BN / 16][4];
    float row_max[2], row_sum[2];

    uint64_t desc_q0 = 0;  // this warpgroup's rows of the current Q buffer
    auto issue_qk = [&](int st) {
      const uint64_t desc_k0 = desc_k_sw128(sK(st));
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t q_off = (kk / 4) * BM * 128 + (kk % 4) * 32;
        const uint32_t k_off = (kk / 4) * BN * 128 + (kk % 4) * 32;
        wgmma_ss<BN, T>(s, desc_add(desc_q0, q_off), desc_add(desc_k0, k_off), kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    auto issue_pv = [&](int st, auto buf) {  // buf: std::integral_constant, P's buffer
      const uint64_t desc_v0 = desc_mn_sw128(sV(st), BN * 128);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) wgmma_rs<D, T>(o, pa[buf][kk], desc_add(desc_v0, kk * 16 * 128), 1);
      wgmma_commit();
    };
    auto convert_p = [&] {  // P (fp32, in s) -> pa[0]
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        pa[0][kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
        pa[0][kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
        pa[0][kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
        pa[0][kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
      }
    };
    auto rescale_o = [&](const float (&corr)[2]) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * j + e] *= corr[e >> 1];
    };

    int stage = 0, q_count = 0;
    uint32_t phase = 0;
    for_each_tile<BM, BN>(P, [&] { return ring.next().x; }, [&](const Tile& ti) {
      const int m0 = ti.m_block * BM;
      const int qs = q_count % kQStages;
      const uint32_t q_phase = (q_count / kQStages) & 1u;
      ++q_count;
      desc_q0 = desc_k_sw128(sQ(qs) + c * 64 * 128);
      const int row0 = m0 + 64 * c;  // this warpgroup's first row (within the sequence)
      const int diag = ti.seqlen_k - ti.seqlen_q;  // query i sees keys j <= i + diag (causal)
      // Keys visible to every row of this warpgroup: tiles ending beyond need the mask.
      const int n_unmasked_end = p.causal ? min(ti.seqlen_k, row0 + diag + 1) : ti.seqlen_k;
      int key_limit[2];  // keys < key_limit[h] are visible to this thread's row h
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + 16 * warp + quad_row + 8 * h;
        key_limit[h] = p.causal ? min(ti.seqlen_k, row + diag + 1) : ti.seqlen_k;
      }

#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        row_max[h] = -INFINITY;
        row_sum[h] = 0.f;
      }

      // Masks (kMask) and exponentiates the S tile of block n, updates the row statistics and returns
      // the factor by which O must be rescaled. P goes to pa[buf] as it is computed (kPack: the
      // conversions fill the MUFU's issue gaps), else back into s for convert_p. kFuse (no GEMM in
      // flight): also rescales O here, in the same basic block. Row maxima and sums are trees (4 and
      // 2 partials per row), both rows interleaved: a serial chain of 32 dependent max/add per row
      // left the warp waiting on latency.
      auto softmax = [&](auto mask_tag, auto fuse_tag, int n, float (&corr)[2], auto buf, auto pack_tag) {
        constexpr bool kMask = decltype(mask_tag)::value;
        constexpr bool kFuse = decltype(fuse_tag)::value;
        constexpr bool kPack = decltype(pack_tag)::value;
        if constexpr (kMask) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int limit = key_limit[h] - n * BN - 2 * quad_col;  // column 8 j + e visible iff < limit
#pragma unroll
            for (int j = 0; j < BN / 8; ++j)
#pragma unroll
              for (int e = 0; e < 2; ++e)
                if (8 * j + e >= limit) s[4 * j + 2 * h + e] = -INFINITY;
          }
        }
        float part[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int t = 0; t < 4; ++t) part[h][t] = fmaxf(s[4 * t + 2 * h], s[4 * t + 2 * h + 1]);
#pragma unroll
        for (int j = 4; j < BN / 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            part[h][j % 4] = fmaxf(part[h][j % 4], fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
        float mx[2], mx_scaled[2];
#pragma unroll
        for (int h = 0; h < 2; ++h)
          mx[h] = fmaxf(fmaxf(fmaxf(part[h][0], part[h][1]), fmaxf(part[h][2], part[h][3])), row_max[h]);
        detail::quad_max2(mx[0], mx[1]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // Conditional rescaling (FlashAttention-4's): the maximum in use moves only when the row's
          // maximum passes it by more than 2^kRescaleLog2; until then the exponentials are taken
          // against the stale maximum (P <= 2^8: same relative precision, no overflow) and O keeps its
          // scale. A row's first key moves it from -inf (grow = +inf, corr = 0).
          const float grow = (mx[h] - row_max[h]) * scale_log2;  // NaN while both are -inf: no move
          corr[h] = 1.f;
          if (grow > kRescaleLog2) {
            corr[h] = fast_exp2(-grow);
            row_max[h] = mx[h];
          }
          // A row that has seen no key yet keeps -inf: subtract 0 so that exp2 gives 0, not NaN.
          mx_scaled[h] = (kMask && row_max[h] == -INFINITY) ? 0.f : row_max[h] * scale_log2;
        }
        float sum[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float pe[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float x = fmaf(s[4 * j + 2 * h + e], scale_log2, -mx_scaled[h]);
              const bool poly = !kMask && Kt::kExp2Poly > 0 && j % max(Kt::kExp2Poly, 1) == Kt::kExp2Poly - 1;
              pe[e] = poly ? exp2_poly(x) : fast_exp2(x);  // (j is unrolled: folded)
              sum[h][j % 2] += pe[e];
              if constexpr (!kPack) s[4 * j + 2 * h + e] = pe[e];
            }
            // (row h, columns 8 j + 2 quad_col + {0, 1}): A-fragment register 2 (j % 2) + h of k16 step j / 2
            if constexpr (kPack) pa[buf][j / 2][2 * (j % 2) + h] = pack2<T>(pe[0], pe[1]);
          }
#pragma unroll
        for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * corr[h] + (sum[h][0] + sum[h][1]);
        if constexpr (kFuse) rescale_o(corr);
      };
      auto softmax_block = [&](auto fuse_tag, int n, float (&corr)[2], auto buf, auto pack_tag) {
        if ((n + 1) * BN > n_unmasked_end) {
          softmax(std::true_type{}, fuse_tag, n, corr, buf, pack_tag);
        } else {
          softmax(std::false_type{}, fuse_tag, n, corr, buf, pack_tag);
        }
      };
      auto advance = [&] {
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1u;
        }
      };
      // S = Q K^T of the block in `stage` with nothing else in flight: wait for K, take the ping-pong
      // turn for the GEMM (turn_tag true; the serial loop takes its turn around the softmax instead),
      // wait for it and give K's stage back.
      auto qk_alone = [&](int tag, auto turn_tag) {
        mbar_wait(k_full(stage), phase, tag);
        if constexpr (decltype(turn_tag)::value) sched_wait();
        issue_qk(stage);
        if constexpr (decltype(turn_tag)::value) sched_pass();
        wgmma_wait<0>();
        fence_regs(s);
        if (lane == 0) mbar_arrive(k_empty(stage));
      };
      // O += P V of the block in stage st with nothing else in flight: wait for V, run the GEMM, give
      // V's stage back.
      auto pv_alone = [&](int st, uint32_t ph, int tag, auto buf) {
        mbar_wait(v_full(st), ph, tag);
        issue_pv(st, buf);
        wgmma_wait<0>();
        fence_regs(o);
        if (lane == 0) mbar_arrive(v_empty(st));
      };

      mbar_wait(q_full(qs), q_phase, 11);
      // Causal: the first blocks (highest keys) may be beyond every row of this warpgroup (192-row
      // tiles, or rows past the sequence's end): release them without computing. n_top: the highest
      // block this warpgroup computes.
      int n_top = ti.n_blocks - 1;
      if (p.causal) {
        const int last_row = min(row0 + 63, ti.seqlen_q - 1);
        const int key_end = last_row < row0 ? 0 : min(ti.seqlen_k, last_row + diag + 1);
        n_top = min(n_top, key_end > 0 ? (key_end + BN - 1) / BN - 1 : -1);  // (no negative division)
      }
      for (int n = ti.n_blocks - 1; n > n_top; --n) {
        mbar_wait(k_full(stage), phase, 16);
        if (lane == 0) mbar_arrive(k_empty(stage));
        mbar_wait(v_full(stage), phase, 17);
        if (lane == 0) mbar_arrive(v_empty(stage));
        sched_wait();  // pass the ping-pong token as a computed block would
        sched_pass();
        advance();
      }
      if (n_top >= 0) {
        float corr[2];
        if constexpr (Kt::kOverlap) {
          using B0 = std::integral_constant<int, 0>;
          using B1 = std::integral_constant<int, kPBufs - 1>;
          // Block n_top alone: S, softmax, P into buffer 0.
          qk_alone(12, std::true_type{});
          softmax_block(std::false_type{}, n_top, corr, B0{}, std::true_type{});
          int v_stage = stage;
          uint32_t v_phase = phase;
          advance();
          // Then S_n = Q K_n^T and O += P_{n+1} V_{n+1} (P in buffer `cur`) in flight together; the
          // softmax of S_n runs under the PV GEMM and writes P_n into the other buffer (one buffer:
          // into s, converted once the PV GEMM is done).
          auto step = [&](int n, auto cur) {
            constexpr int kNext = (decltype(cur)::value + 1) % kPBufs;
            mbar_wait(k_full(stage), phase, 13);
            sched_wait();
            issue_qk(stage);
            mbar_wait(v_full(v_stage), v_phase, 14);
            issue_pv(v_stage, cur);
            sched_pass();
            wgmma_wait<1>();  // S done (O += P V may still run)
            fence_regs(s);
            if (lane == 0) mbar_arrive(k_empty(stage));
            softmax_block(std::false_type{}, n, corr, std::integral_constant<int, kNext>{},
                          std::bool_constant<kPBufs == 2>{});
            wgmma_wait<0>();  // O += P V done: its P buffer and V's stage are free
            fence_regs(o);
            if (lane == 0) mbar_arrive(v_empty(v_stage));
            if (__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) rescale_o(corr);  // rarely
            if constexpr (kPBufs == 1) convert_p();
            v_stage = stage;
            v_phase = phase;
            advance();
          };
          if constexpr (kPBufs == 2) {
            int n = n_top - 1;
            for (; n >= 1; n -= 2) {  // two blocks per trip: the buffers trade places
              step(n, B0{});
              step(n - 1, B1{});
            }
            const bool last = n == 0;  // one block left: its P ends in buffer 1
            if (last) step(0, B0{});
            if (lane == 0) mbar_arrive(q_empty(qs));  // the last S GEMM of this tile is complete
            if (last) {
              pv_alone(v_stage, v_phase, 15, B1{});
            } else {
              pv_alone(v_stage, v_phase, 15, B0{});
            }
          } else {
            for (int n = n_top - 1; n >= 0; --n) step(n, B0{});
            if (lane == 0) mbar_arrive(q_empty(qs));  // the last S GEMM of this tile is complete
            pv_alone(v_stage, v_phase, 15, B0{});
          }
        } else {
          // Without overlap the ping-pong token guards the softmax instead of the GEMMs: one
          // warpgroup exponentiates (the MUFU-bound phase) while the other's GEMMs run.
          for (int n = n_top; n >= 0; --n) {
            qk_alone(0, std::false_type{});
            sched_wait();
            softmax_block(std::true_type{}, n, corr, std::integral_constant<int, 0>{}, std::true_type{});
            sched_pass();
            pv_alone(stage, phase, 0, std::integral_constant<int, 0>{});
            advance();
          }
          if (lane == 0) mbar_arrive(q_empty(qs));
        }
      } else {
        if (lane == 0) mbar_arrive(q_empty(qs));  // no key: o = 0, lse = -inf
      }

      // ---- epilogue: o / l through this warpgroup's staging tile sO_c [64][D] (chunks ^ row % 8) ----
      const uint32_t sOc = sO + c * 64 * D * 2;
      named_bar_sync(Kt::kEpiBar + c, 128);  // the previous tile's reads of sO_c are done
      const int64_t lse_off = varlen ? int64_t(ti.q_tok0) : int64_t(ti.batch) * p.lse_batch_stride;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float l = detail::quad_sum(row_sum[h]);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int r = 16 * warp + quad_row + 8 * h;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          const uint32_t addr = sOc + r * D * 2 + ((j ^ (r & 7)) << 4) + quad_col * 4;
          const uint32_t v2 = pack2<T>(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
          asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(v2) : "memory");
        }
        if (p.lse != nullptr && quad_col == 0 && row0 + r < ti.seqlen_q) {
          const float lse = l > 0.f ? row_max[h] * P.args.scale + logf(l) : -INFINITY;
          p.lse[lse_off + int64_t(ti.head) * p.lse_head_stride + row0 + r] = lse;
        }
      }
      named_bar_sync(Kt::kEpiBar + c, 128);
      const int rows_valid = ti.seqlen_q - row0;
      const int64_t o_batch = varlen ? 0 : int64_t(ti.batch) * p.o_batch_stride;
      T* out = static_cast<T*>(p.o) + o_batch + (int64_t(ti.q_tok0) + row0) * p.o_row_stride +
               int64_t(ti.head) * p.o_head_stride;
      constexpr int kChunks = D / 8;
#pragma unroll
      for (int i = 0; i < 64 * kChunks / 128; ++i) {
        const int idx = i * 128 + tid;
        const int r = idx / kChunks, ch = idx % kChunks;
        if (r < rows_valid) {
          uint4 val;
          const uint32_t addr = sOc + r * D * 2 + ((ch ^ (r & 7)) << 4);
          asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                       : "=r"(val.x), "=r"(val.y), "=r"(val.z), "=r"(val.w)
                       : "r"(addr));
          *reinterpret_cast<uint4*>(out + int64_t(r) * p.o_row_stride + ch * 8) = val;
        }
      }
    });
    if constexpr (Kt::kPingPong) {
      if (c == 0) named_bar_sync(Kt::kSchedBar, 256);  // the last token passed to consumer 0
    }
  }
#else
  (void)P;
  __trap();  // built without sm_90a: flash_attention_forward never selects this kernel there
#endif
}

// ---- host side ----

namespace sm90_detail {

// One of q, k, v as a 4-D tensor {D, rows, heads, batch} (strides in elements) with 128-byte-swizzled
// boxes {64, box_rows, 1, 1}. Returns false when the driver rejects the layout.
inline bool encode_map(CUtensorMap* map, DType dtype, const void* ptr, int head_dim, int64_t rows,
                       int64_t row_stride, int heads, int64_t head_stride, int batch, int64_t batch_stride,
                       int box_rows) {
  const uint64_t dims[4] = {uint64_t(head_dim), uint64_t(rows), uint64_t(heads), uint64_t(batch)};
  uint64_t strides[3] = {uint64_t(row_stride) * 2, uint64_t(head_stride) * 2, uint64_t(batch_stride) * 2};
  for (int i = 0; i < 3; ++i)  // a dim of extent 1 is never stepped: any legal stride will do
    if (dims[i + 1] == 1 && strides[i] == 0) strides[i] = 16;
  const uint32_t box[4] = {64, uint32_t(box_rows), 1, 1};
  return encode_tensor_map(map, dtype, ptr, 4, dims, strides, box) == CUDA_SUCCESS;
}

}  // namespace sm90_detail

// Encodes the tensor maps and launches flash_fwd_sm90_kernel<Kt, T>. Returns false, launching nothing,
// when a map cannot be encoded (e.g. a zero stride of a dim longer than 1).
template <typename Kt, typename T>
bool launch_flash_fwd_sm90(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream) {
  using namespace sm90_detail;
  const FlashAttentionParams& p = args.p;
  const bool varlen = p.cu_seqlens_q != nullptr;
  Sm90FwdParams P{};
  P.args = args;
  // Varlen: the maps cannot know the total row count (see the header); 2^31 - 1 rows.
  const int64_t q_rows = varlen ? INT_MAX : p.seqlen_q;
  const int64_t k_rows = varlen ? INT_MAX : p.seqlen_k;
  const int tma_batch = varlen ? 1 : p.batch;
  if (!encode_map(&P.q, p.dtype, p.q, Kt::kHeadDim, q_rows, p.q_row_stride, p.num_heads, p.q_head_stride, tma_batch,
                  p.q_batch_stride, Kt::kBlockM))
    return false;
  if (varlen || p.seqlen_k > 0) {  // otherwise no K/V tile is ever loaded (and k, v may be null)
    if (p.k == nullptr || p.v == nullptr) return false;
    if (!encode_map(&P.k, p.dtype, p.k, Kt::kHeadDim, k_rows, p.k_row_stride, p.num_kv_heads, p.k_head_stride,
                    tma_batch, p.k_batch_stride, Kt::kBlockN) ||
        !encode_map(&P.v, p.dtype, p.v, Kt::kHeadDim, k_rows, p.v_row_stride, p.num_kv_heads, p.v_head_stride,
                    tma_batch, p.v_batch_stride, Kt::kBlockN))
      return false;
  }
  const int64_t num_m_blocks = (int64_t(p.seqlen_q) + Kt::kBlockM - 1) / Kt::kBlockM;
  const int64_t num_bh = int64_t(p.batch) * p.num_heads;
  const int64_t units_per_bh = p.causal ? (num_m_blocks + 1) / 2 : num_m_blocks;
  if (num_m_blocks * num_bh >= INT_MAX) return false;
  P.num_m_blocks = static_cast<int>(num_m_blocks);
  P.num_bh = static_cast<int>(num_bh);
  P.units_per_bh = static_cast<int>(units_per_bh);
  P.num_units = static_cast<int>(units_per_bh * num_bh);
  // Unit groups: as many (batch, head) pairs as keep their K/V within 8 MB of the 50 MB L2, in groups
  // of equal size (a small last group would leave its long causal rows to the end). 24 MB groups read
  // 2.3x the DRAM bytes (B16 H16 N2048 D128: 1.01 vs 0.44 GB), which costs clock speed under the
  // power limit and time at N <= 1024. Head dim 64 causal keeps 24 MB: B16 H16 N2048 ran 2.5-3%
  // faster with 48 pairs per group than with 16 (three rounds; B4 H16 N8192 1% slower).
  const int64_t kv_bytes = std::max<int64_t>(1, 4 * int64_t(std::max(p.seqlen_k, 1)) * Kt::kHeadDim / args.kv_group);
  const int64_t budget = (Kt::kHeadDim == 64 && p.causal ? int64_t{24} : int64_t{8}) << 20;
  const int64_t max_group = opt.head_group > 0 ? opt.head_group : std::max<int64_t>(1, budget / kv_bytes);
  const int64_t num_groups = (num_bh + max_group - 1) / max_group;
  P.group_bh = static_cast<int>((num_bh + num_groups - 1) / num_groups);

  const int sms = device_sm_count();
  auto kernel = flash_fwd_sm90_kernel<Kt, T>;
  set_max_dynamic_smem<flash_fwd_sm90_kernel<Kt, T>>(Kt::kSmemBytes);
  const int grid = opt.persistent ? std::min(P.num_units, sms) : P.num_units;
  P.unit_counter = nullptr;
  if (opt.dynamic) {
    static std::atomic<unsigned> launches{0};
    unsigned* counters = nullptr;
    MINILLM_CUDA_CHECK(cudaGetSymbolAddress(reinterpret_cast<void**>(&counters), g_unit_counters));
    P.unit_counter = counters + launches.fetch_add(1, std::memory_order_relaxed) % kUnitCounters;
  }
  kernel<<<grid, Kt::kThreads, Kt::kSmemBytes, stream>>>(P);
  MINILLM_CUDA_CHECK_LAUNCH();
  return true;
}

// launch_flash_fwd_sm90<Kt, T> with T picked from the arguments' dtype (bf16 or fp16).
template <typename Kt>
bool launch_flash_fwd_sm90_any(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream) {
  return args.p.dtype == DType::bf16 ? launch_flash_fwd_sm90<Kt, __nv_bfloat16>(args, opt, stream)
                                     : launch_flash_fwd_sm90<Kt, __half>(args, opt, stream);
}

}  // namespace minillm::cuda::attn
