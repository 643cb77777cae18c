// FlashAttention-2 forward kernel: mma.sync m16n8k16 tensor cores (bf16/fp16 in, fp32 accumulate).
//
// Algorithm (Dao 2023, FlashAttention-2): one thread block owns kBlockM query rows of one (batch, head)
// and streams the K/V tiles of kBlockN keys through shared memory, from the last tile to the first (so
// that the masked tiles, the sequence tail and the causal diagonal, come first). Per tile and per warp:
//   S = Q K^T                       (mma.sync; Q fragments from registers or shared memory, K by ldmatrix)
//   m_new = max(m, rowmax(S)); P = exp2(S * scale*log2(e) - m_new * scale*log2(e))  (online softmax, fp32)
//   l = l * exp2(..(m - m_new)) + rowsum(P); O = O * exp2(..(m - m_new)) + P V  (P stays in registers:
//   the accumulator layout of two n8 tiles is the A-operand layout of one k16 step; V by ldmatrix.trans)
// O is normalised by l once at the end, staged through shared memory and written with 16-byte stores;
// lse = m * scale + ln(l). Memory is O(N): nothing of size N x N exists.
//
// Layouts: see include/minillm/attention.h (padded [B, N, H, D] with strides, or varlen [total, H, D]
// with cu_seqlens). Shared memory tiles are [rows][kHeadDim] with the 16-byte chunks of each row
// XOR-swizzled by (row % 8), so that cp.async writes and ldmatrix reads of 8 rows hit 8 different
// bank groups without padding. K/V are double-buffered: the cp.async loads of tile j-1 are issued
// right after the barrier of tile j and have the whole of tile j's math to land (one barrier per tile).
//
// Tails: loads are predicated (zero-filled) by row and by column (head_dim smaller than the kernel's
// kHeadDim runs zero-padded); scores of keys beyond Nk or above the causal diagonal are set to -inf in
// the masked tiles only; a row with no visible key keeps m = -inf, l = 0 and yields o = 0, lse = -inf.
//
// Measurements: docs/REPORT.md, bench/results/h100/attention.json.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "minillm/attention.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::attn {

// Resolved arguments of one launch (params validated by flash_attention_forward).
struct FlashFwdArgs {
  FlashAttentionParams p;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e): scores go through exp2
  int kv_group;      // num_heads / num_kv_heads
};

// Validates p (throws minillm::Error naming the field and its value) and resolves the arguments of a
// launch; false when there is nothing to compute (no query). Defined in flash_fwd.cu.
bool make_flash_fwd_args(const FlashAttentionParams& p, FlashFwdArgs& args);

// One instantiation per (kernel head dim, element type); defined in flash_fwd_hdim*.cu.
template <int kHeadDim, typename T>
void run_flash_fwd(const FlashFwdArgs& args, cudaStream_t stream);

// Tile sizes of one kernel. Per warp: kWarpM = kBlockM / kNWarps query rows (kMTiles m16 tiles).
// Why these shapes (H100, 64K registers and 228 KB shared memory per SM):
//  - 32 rows per warp (kMTiles = 2): every K/V fragment read from shared memory by ldmatrix feeds two
//    mma.sync, halving shared-memory traffic per FLOP; with 16 rows per warp the kernel becomes bound
//    by shared-memory bandwidth (128 B/clk/SM) before the tensor cores.
//  - 4 warps, 128 rows: two blocks per SM (<= 255 registers per thread), so one block's softmax
//    overlaps the other's mma; kBlockN as large as the registers allow (S is kWarpM x kBlockN fp32
//    per warp: 128 registers per thread at 32 x 128) to amortise the per-tile softmax bookkeeping.
//  - kQInRegs: Q fragments live in registers for the whole kernel when there is room (small head
//    dims); otherwise they are re-read from shared memory at every tile.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, bool kQInRegs_, int kMinBlocks_,
          bool kLazyRescale_ = true>
struct FlashFwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr bool kQInRegs = kQInRegs_;
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr bool kLazyRescale = kLazyRescale_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kWarpM = kBlockM / kNWarps;
  static constexpr int kMTiles = kWarpM / 16;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per shared-memory row
  static constexpr int kSmemQ = kBlockM * kHeadDim * 2;
  static constexpr int kSmemKV = kBlockN * kHeadDim * 2;  // one K (or V) tile
  static constexpr int kSmemBytes = kSmemQ + 2 * 2 * kSmemKV;  // Q + 2 stages x (K, V)
  static_assert(kWarpM % 16 == 0 && kBlockN % 16 == 0 && kHeadDim % 16 == 0, "mma tile multiples");
  static_assert(kChunks == 4 || kChunks % 8 == 0, "swizzle needs 4 or a multiple of 8 chunks per row");
  static_assert(kNThreads % kChunks == 0, "tile loader: whole rows per pass");
  static_assert((kBlockM * kChunks) % kNThreads == 0 && (kBlockN * kChunks) % kNThreads == 0, "tile loader");
};

// The configuration each head dim runs (measured on H100 against the alternatives with
// build-time variants of these traits: rows x keys per tile, warps, Q in registers, blocks per SM).
//  32: 128 x 128, Q in registers (16 registers per thread), 2 blocks/SM.
//  64: 128 x 64, Q in registers (32 registers); 128 x 128 with Q re-read from shared memory was
//      slower (the 128 x 128 S tile spills); the O rescale runs every tile (the vote costs more here).
// 128: 128 x 64, Q from shared memory (Q fragments would need 64 registers), lazy O rescale: it
//      cuts 128 multiplies per tile and the register pressure that made this tile spill.
// 256: 128 x 64 with 8 warps of 16 rows (O alone is 128 registers per thread), 1 block/SM.
template <int kHeadDim> struct FlashFwdConfig;
template <> struct FlashFwdConfig<32> { using Traits = FlashFwdTraits<32, 128, 128, 4, true, 2>; };
template <> struct FlashFwdConfig<64> { using Traits = FlashFwdTraits<64, 128, 64, 4, true, 2, false>; };
template <> struct FlashFwdConfig<128> { using Traits = FlashFwdTraits<128, 128, 64, 4, false, 2>; };
template <> struct FlashFwdConfig<256> { using Traits = FlashFwdTraits<256, 128, 64, 8, false, 1>; };

namespace detail {

// Element offset of (row, 16-byte chunk) in a swizzled [rows][kChunks * 8] tile.
template <int kChunks>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  if constexpr (kChunks == 4) {
    return row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3);  // 64-byte rows: two rows per 128 bytes
  } else {
    return row * (kChunks * 8) + ((chunk ^ (row & 7)) << 3);
  }
}

// Copies rows [0, kRows) of a [rows][head_dim] global tile (row stride in elements) into a swizzled
// shared tile; rows >= rows_valid and columns >= head_dim are zero-filled.
template <int kRows, int kChunks, int kNThreads, typename T>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* src, int64_t row_stride, int rows_valid,
                                          int head_dim, int tid) {
  constexpr int kRowStep = kNThreads / kChunks;
  const int chunk = tid % kChunks;
  const int row0 = tid / kChunks;
  // Rows row0 + i * kRowStep: compare i * kRowStep (an immediate) against one per-thread bound.
  const int rows_left = chunk * 8 < head_dim ? rows_valid - row0 : 0;
  const T* p = src + row0 * row_stride + chunk * 8;
  const uint32_t d = dst + 2 * swizzle<kChunks>(row0, chunk);
#pragma unroll
  for (int i = 0; i < kRows / kRowStep; ++i) {
    const bool ok = i * kRowStep < rows_left;
    // When kRowStep is a multiple of the swizzle period (8 rows) the offset is an immediate.
    const uint32_t di = kRowStep % 8 == 0 ? d + i * kRowStep * kChunks * 16
                                          : dst + 2 * swizzle<kChunks>(row0 + i * kRowStep, chunk);
    cp_async_16(di, ok ? p : src, ok);
    p += kRowStep * row_stride;
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
// quad_max of two values, their shuffles issued together.
__device__ __forceinline__ void quad_max2(float& a, float& b) {
  a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 1));
  b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, 1));
  a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 2));
  b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace detail

// The steps of the FlashAttention-2 kernel. Per warp: kMTiles m16 tiles of query rows; thread (warp,
// lane) holds rows lane / 4 and lane / 4 + 8 (h = 0, 1) of each m16 tile, columns 2 (lane % 4) + {0, 1}
// of each n8 tile: c[mt][nt][2 h + e]. Shared-memory tiles are [rows][D] with swizzled 16-byte chunks.
//
// ldmatrix addresses (q_off, k_off, v_off, kernel): each thread's byte offset is computed once for the
// first fragment; the others follow without recomputing the swizzle: +16 rows is + 16 * row bytes (the
// swizzle has a period of 8 rows) and chunk c ^ m is offset ^ (m << 4), so chunk 2 kk + c is
// offset ^ (kk << 5).
template <typename Kt>
using Fa2S = float[Kt::kMTiles][Kt::kBlockN / 8][4];  // S (then P) of one K/V tile
template <typename Kt>
using Fa2O = float[Kt::kMTiles][Kt::kHeadDim / 8][4];  // the O accumulators
template <typename Kt>
using Fa2Rows = float[Kt::kMTiles][2];  // one value per row of the thread
template <typename Kt>
using Fa2QFrag = uint32_t[Kt::kQInRegs ? Kt::kMTiles : 1][Kt::kQInRegs ? Kt::kHeadDim / 16 : 1][4];

// Q fragment (A operand) of m16 tile mt, k16 step kk.
template <typename Kt>
__device__ __forceinline__ void fa2_load_q_frag(uint32_t (&a)[4], uint32_t sQ, uint32_t q_off, int mt, int kk) {
  ldmatrix_x4(a, sQ + (q_off ^ (kk << 5)) + mt * 16 * (Kt::kHeadDim * 2));
}

// O = 0, row maxima -inf (no key seen yet), row sums 0.
template <typename Kt>
__device__ __forceinline__ void fa2_init(Fa2O<Kt>& acc_o, Fa2Rows<Kt>& row_max, Fa2Rows<Kt>& row_sum) {
#pragma unroll
  for (int mt = 0; mt < Kt::kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < Kt::kHeadDim / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[mt][h] = -INFINITY;
      row_sum[mt][h] = 0.f;
    }
  }
}

// S = Q K^T. K fragments: ldmatrix.x4 of keys 16 np + {0..15}: registers {b0, b1} of n8 tile 2 np
// and {b0, b1} of n8 tile 2 np + 1. Q from q_frag (kQInRegs) or re-read from sQ.
template <typename Kt, typename T>
__device__ __forceinline__ void fa2_qk(Fa2S<Kt>& s, const Fa2QFrag<Kt>& q_frag, uint32_t sQ, uint32_t sK,
                                       uint32_t q_off, uint32_t k_off) {
  using namespace detail;
  constexpr int kMT = Kt::kMTiles, kNTiles = Kt::kBlockN / 8, kKStepsQK = Kt::kHeadDim / 16, BN = Kt::kBlockN;
  constexpr int kRowBytes = Kt::kHeadDim * 2;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kKStepsQK; ++kk) {
    uint32_t qa[Kt::kQInRegs ? 1 : kMT][4];
    if constexpr (!Kt::kQInRegs) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) fa2_load_q_frag<Kt>(qa[mt], sQ, q_off, mt, kk);
    } else {
      (void)qa;
    }
#pragma unroll
    for (int np = 0; np < BN / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, sK + (k_off ^ (kk << 5)) + np * 16 * kRowBytes);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (Kt::kQInRegs) {
          mma_16816<T>(s[mt][2 * np], q_frag[mt][kk], b[0], b[1]);
          mma_16816<T>(s[mt][2 * np + 1], q_frag[mt][kk], b[2], b[3]);
        } else {
          mma_16816<T>(s[mt][2 * np], qa[mt], b[0], b[1]);
          mma_16816<T>(s[mt][2 * np + 1], qa[mt], b[2], b[3]);
        }
      }
    }
  }
}

// Scores of keys >= seqlen_k or above the causal diagonal (query i sees keys j <= i + diag) -> -inf;
// n0: the tile's first key, row0: the warp's first row.
template <typename Kt>
__device__ __forceinline__ void fa2_mask(Fa2S<Kt>& s, int n0, int row0, int lane, bool causal, int seqlen_k, int diag) {
  constexpr int kMT = Kt::kMTiles, kNTiles = Kt::kBlockN / 8;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + mt * 16 + (lane >> 2) + 8 * h;
      const int limit = (causal ? min(seqlen_k, row + diag + 1) : seqlen_k) - n0;  // keys < limit visible
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (nt * 8 + (lane & 3) * 2 + e >= limit) s[mt][nt][2 * h + e] = -INFINITY;
    }
}

// Online softmax: the new row maxima, O and the row sums rescaled, S -> P = exp2(S scale_log2 - m
// scale_log2) in place.
template <typename Kt, bool kMask>
__device__ __forceinline__ void fa2_softmax(Fa2S<Kt>& s, Fa2Rows<Kt>& row_max, Fa2Rows<Kt>& row_sum, Fa2O<Kt>& acc_o,
                                            float scale_log2) {
  using namespace detail;
  constexpr int kMT = Kt::kMTiles, kNTiles = Kt::kBlockN / 8, kDTiles = Kt::kHeadDim / 8;
  float mx_scaled[kMT][2], corr[kMT][2];
  bool max_unchanged = true;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = row_max[mt][h];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
      mx = quad_max(mx);
      // A row that has seen no key yet has mx = -inf: subtract 0 instead so exp2 gives 0, not NaN.
      mx_scaled[mt][h] = (kMask && mx == -INFINITY) ? 0.f : mx * scale_log2;
      const float correction = fast_exp2(row_max[mt][h] * scale_log2 - mx_scaled[mt][h]);  // 0 while m was -inf
      max_unchanged &= mx == row_max[mt][h];
      row_max[mt][h] = mx;
      row_sum[mt][h] *= correction;
      corr[mt][h] = correction;
    }
  // Rescale O only when some row max of the warp moved (then correction != 1); after the first
  // tiles of a long row this is rare, and skipping saves kMT * kDTiles * 4 multiplies per tile.
  if (!Kt::kLazyRescale || !__all_sync(0xffffffffu, max_unchanged)) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] *= corr[mt][e >> 1];
  }
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = row_sum[mt][h];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = fast_exp2(fmaf(s[mt][nt][2 * h + e], scale_log2, -mx_scaled[mt][h]));
          s[mt][nt][2 * h + e] = pe;
          sum += pe;
        }
      row_sum[mt][h] = sum;
    }
}

// O += P V. P (A operand) of k16 step kk = accumulators of n8 tiles 2 kk and 2 kk + 1.
// V fragments: ldmatrix.x4.trans of keys 16 kk + {0..15}, dims 16 dp + {0..15}.
template <typename Kt, typename T>
__device__ __forceinline__ void fa2_pv(const Fa2S<Kt>& s, Fa2O<Kt>& acc_o, uint32_t sV, uint32_t v_off) {
  using namespace detail;
  constexpr int kMT = Kt::kMTiles, kKStepsPV = Kt::kBlockN / 16, D = Kt::kHeadDim;
  constexpr int kRowBytes = D * 2;
#pragma unroll
  for (int kk = 0; kk < kKStepsPV; ++kk) {
    uint32_t pa[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, sV + (v_off ^ (dp << 5)) + kk * 16 * kRowBytes);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<T>(acc_o[mt][2 * dp], pa[mt], b[0], b[1]);
        mma_16816<T>(acc_o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
      }
    }
  }
}

// Epilogue: O / l of this warp's rows, rounded to 16 bits, through the Q tile's shared memory (free
// once the main loop is done), then 16-byte row stores of the block's rows_valid rows to o (row stride
// o_row); lse (natural log, row 0 of the block; null: none) = max * scale + log(l), -inf for a row
// without keys.
template <typename Kt, typename T>
__device__ __forceinline__ void fa2_store_o(const Fa2O<Kt>& acc_o, const Fa2Rows<Kt>& row_max, const Fa2Rows<Kt>& row_sum,
                                            uint32_t sQ, T* o, int64_t o_row, float* lse, float scale, int rows_valid,
                                            int head_dim, int warp_m0, int lane) {
  using namespace detail;
  constexpr int kCh = Kt::kChunks;
#pragma unroll
  for (int mt = 0; mt < Kt::kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(row_sum[mt][h]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = warp_m0 + mt * 16 + (lane >> 2) + 8 * h;
#pragma unroll
      for (int dt = 0; dt < Kt::kHeadDim / 8; ++dt) {
        const uint32_t v2 = pack2<T>(acc_o[mt][dt][2 * h] * inv, acc_o[mt][dt][2 * h + 1] * inv);
        const uint32_t addr = sQ + 2 * (swizzle<kCh>(row, dt) + (lane & 3) * 2);
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v2));
      }
      if (lse != nullptr && (lane & 3) == 0 && row < rows_valid)
        lse[row] = l > 0.f ? row_max[mt][h] * scale + logf(l) : -INFINITY;
    }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < Kt::kWarpM * kCh / 32; ++i) {
    const int idx = i * 32 + lane;
    const int row = warp_m0 + idx / kCh;
    const int chunk = idx % kCh;
    if (row < rows_valid && chunk * 8 < head_dim) {
      uint4 val;
      const uint32_t addr = sQ + 2 * swizzle<kCh>(row, chunk);
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(val.x), "=r"(val.y), "=r"(val.z), "=r"(val.w)
                   : "r"(addr));
      *reinterpret_cast<uint4*>(o + row * o_row + chunk * 8) = val;
    }
  }
}

// This block's work: its query rows and its (batch, head)'s sequences, from the grid position
// (x: query block, heaviest first; y: head; z: batch) and, for varlen, cu_seqlens.
template <typename T>
struct Fa2Block {
  int m0 = 0;                    // first query row of the block within its sequence
  int seqlen_q = 0, seqlen_k = 0;
  int diag = 0;                  // query i sees keys j <= i + diag (causal)
  int n_blocks = 0;              // K/V tiles the block visits: all keys, or (causal) up to its last row's diagonal
  int64_t lse_off = 0;           // the sequence's first lse element (before head and row)
  const T *q, *k, *v;            // q: the block's first row; k, v: the first key of the (batch, kv head)
  T* o;                          // the block's first output row
};

template <typename Kt, typename T>
__device__ __forceinline__ Fa2Block<T> fa2_block(const FlashAttentionParams& p, int kv_group) {
  Fa2Block<T> b;
  // Heavy blocks first: with causal masking the last query blocks see the most keys.
  const int m_block = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int head = blockIdx.y, batch = blockIdx.z, kv_head = head / kv_group;
  b.seqlen_q = p.seqlen_q;
  b.seqlen_k = p.seqlen_k;
  int64_t q_tok0 = 0, k_tok0 = 0;
  int64_t q_bs = p.q_batch_stride, k_bs = p.k_batch_stride, v_bs = p.v_batch_stride, o_bs = p.o_batch_stride;
  b.lse_off = batch * p.lse_batch_stride;
  if (p.cu_seqlens_q != nullptr) {
    q_tok0 = p.cu_seqlens_q[batch];
    b.seqlen_q = p.cu_seqlens_q[batch + 1] - static_cast<int>(q_tok0);
    k_tok0 = p.cu_seqlens_k[batch];
    b.seqlen_k = p.cu_seqlens_k[batch + 1] - static_cast<int>(k_tok0);
    q_bs = k_bs = v_bs = o_bs = 0;
    b.lse_off = q_tok0;
  }
  b.m0 = m_block * Kt::kBlockM;
  b.q = static_cast<const T*>(p.q) + batch * q_bs + (q_tok0 + b.m0) * p.q_row_stride + head * p.q_head_stride;
  b.k = static_cast<const T*>(p.k) + batch * k_bs + k_tok0 * p.k_row_stride + kv_head * p.k_head_stride;
  b.v = static_cast<const T*>(p.v) + batch * v_bs + k_tok0 * p.v_row_stride + kv_head * p.v_head_stride;
  b.o = static_cast<T*>(p.o) + batch * o_bs + (q_tok0 + b.m0) * p.o_row_stride + head * p.o_head_stride;
  b.diag = b.seqlen_k - b.seqlen_q;
  const int n_end = p.causal ? max(0, min(b.seqlen_k, b.m0 + Kt::kBlockM + b.diag)) : b.seqlen_k;
  b.n_blocks = (n_end + Kt::kBlockN - 1) / Kt::kBlockN;
  return b;
}

// grid: (ceil(seqlen_q / kBlockM), num_heads, batch); block: kNThreads; dynamic smem: kSmemBytes.
template <typename Kt, typename T>
__global__ void __launch_bounds__(Kt::kNThreads, Kt::kMinBlocks) flash_fwd_kernel(const __grid_constant__ FlashFwdArgs args) {
  using namespace detail;
  constexpr int D = Kt::kHeadDim, BM = Kt::kBlockM, BN = Kt::kBlockN, kNThreads = Kt::kNThreads;
  constexpr int kMT = Kt::kMTiles;      // m16 tiles per warp
  constexpr int kNTiles = BN / 8;       // n8 tiles of S per warp row block
  constexpr int kDTiles = D / 8;        // n8 tiles of O
  constexpr int kKStepsQK = D / 16;     // k16 steps of Q K^T
  constexpr int kCh = Kt::kChunks;
  const FlashAttentionParams& p = args.p;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_u32(smem);                // [BM][D]; reused for O at the end
  const uint32_t sKV = sQ + Kt::kSmemQ;               // stage s: K at + 2 s kSmemKV, V at + (2 s + 1) kSmemKV

  const Fa2Block<T> b = fa2_block<Kt, T>(p, args.kv_group);
  if (b.m0 >= b.seqlen_q) return;
  const int m0 = b.m0, seqlen_q = b.seqlen_q, seqlen_k = b.seqlen_k, diag = b.diag, n_blocks = b.n_blocks;
  const int head = blockIdx.y;
  const T *q = b.q, *k = b.k, *v = b.v;
  T* o = b.o;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_m0 = warp * Kt::kWarpM;  // first row of this warp within the block

  auto load_kv = [&](int n_block, int stage) {
    const int n0 = n_block * BN;
    const uint32_t sK = sKV + (2 * stage) * Kt::kSmemKV;
    load_tile<BN, kCh, kNThreads>(sK, k + n0 * p.k_row_stride, p.k_row_stride, seqlen_k - n0, p.head_dim, tid);
    load_tile<BN, kCh, kNThreads>(sK + Kt::kSmemKV, v + n0 * p.v_row_stride, p.v_row_stride, seqlen_k - n0,
                                  p.head_dim, tid);
  };

  load_tile<BM, kCh, kNThreads>(sQ, q, p.q_row_stride, seqlen_q - m0, p.head_dim, tid);
  cp_async_commit();
  if (n_blocks > 0) load_kv(n_blocks - 1, 0);
  cp_async_commit();

  // ldmatrix addresses (see fa2_qk).
  // Q (A operand, rows 16 mt + lane % 16 of this warp, chunk 2 kk + lane / 16).
  const uint32_t q_off = 2 * swizzle<kCh>(warp_m0 + (lane & 15), lane >> 4);
  // K (B operand of S = Q K^T): keys 16 np + (lane % 8) + 8 (lane / 16), chunk 2 kk + (lane / 8) % 2.
  const uint32_t k_off = 2 * swizzle<kCh>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  // V (B operand of O = P V, transposed): keys 16 kk + (lane % 8) + 8 ((lane / 8) % 2), chunk 2 dp + lane / 16.
  const uint32_t v_off = 2 * swizzle<kCh>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);
  uint32_t q_frag[Kt::kQInRegs ? kMT : 1][Kt::kQInRegs ? kKStepsQK : 1][4];
  if constexpr (Kt::kQInRegs) {
    cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int kk = 0; kk < kKStepsQK; ++kk) fa2_load_q_frag<Kt>(q_frag[mt][kk], sQ, q_off, mt, kk);
  }

  float acc_o[kMT][kDTiles][4];
  float row_max[kMT][2];  // running max of the raw (unscaled) scores; -inf before any visible key
  float row_sum[kMT][2];  // this thread's partial sum of exp2 terms (summed over the quad at the end)
  fa2_init<Kt>(acc_o, row_max, row_sum);

  const float scale_log2 = args.scale_log2;

  // One K/V tile. kMask: the tile holds keys >= seqlen_k or above the causal diagonal.
  auto tile = [&](auto mask_tag, int n_block, int stage) {
    constexpr bool kMask = decltype(mask_tag)::value;
    const uint32_t sK = sKV + (2 * stage) * Kt::kSmemKV;
    const uint32_t sV = sK + Kt::kSmemKV;

    // S = Q K^T.
    float s[kMT][kNTiles][4];
    fa2_qk<Kt, T>(s, q_frag, sQ, sK, q_off, k_off);

    if constexpr (kMask) fa2_mask<Kt>(s, n_block * BN, m0 + warp_m0, lane, p.causal, seqlen_k, diag);

    fa2_softmax<Kt, kMask>(s, row_max, row_sum, acc_o, scale_log2);

    fa2_pv<Kt, T>(s, acc_o, sV, v_off);
  };

  // Main loop, last tile first. The barrier at the top of iteration `it` (a) publishes tile n_block,
  // whose loads were issued one iteration earlier, and (b) proves every warp is done with the other
  // stage, which is then refilled with tile n_block - 1.
  const int n_unmasked_end = p.causal ? min(seqlen_k, m0 + diag + 1) : seqlen_k;  // keys all rows see
  for (int n_block = n_blocks - 1, it = 0; n_block >= 0; --n_block, ++it) {
    const int stage = it & 1;
    cp_async_wait<0>();
    __syncthreads();
    if (n_block > 0) load_kv(n_block - 1, stage ^ 1);
    cp_async_commit();
    if ((n_block + 1) * BN > n_unmasked_end) {
      tile(std::true_type{}, n_block, stage);
    } else {
      tile(std::false_type{}, n_block, stage);
    }
  }

  // Epilogue. The barrier covers a block without keys, whose Q copies (issued by all threads) may still
  // be landing.
  cp_async_wait<0>();
  __syncthreads();
  float* lse = p.lse ? p.lse + b.lse_off + head * p.lse_head_stride + m0 : nullptr;
  fa2_store_o<Kt, T>(acc_o, row_max, row_sum, sQ, o, p.o_row_stride, lse, args.scale, seqlen_q - m0, p.head_dim,
                     warp_m0, lane);
}

// Launches one kernel; raises the dynamic shared-memory limit first (once per device).
template <typename Kt, typename T>
void launch_flash_fwd(const FlashFwdArgs& args, cudaStream_t stream) {
  constexpr int kSmem = Kt::kSmemBytes;
  auto kernel = flash_fwd_kernel<Kt, T>;
  if constexpr (kSmem > 48 * 1024) set_max_dynamic_smem<flash_fwd_kernel<Kt, T>>(kSmem);
  const FlashAttentionParams& p = args.p;
  const dim3 grid((p.seqlen_q + Kt::kBlockM - 1) / Kt::kBlockM, p.num_heads, p.batch);
  kernel<<<grid, Kt::kNThreads, kSmem, stream>>>(args);
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::attn
