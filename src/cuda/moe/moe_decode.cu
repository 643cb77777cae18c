// MoE decode path (T <= 64 tokens): expert GEMMs bound by reading each active expert's weights once.
//
// Algorithm: a skinny GEMM per active expert with the weights as the 16-row M operand of
// mma.sync.m16n8k16 and the expert's (<= 64) tokens as N (8 per MMA). Each thread streams 16 bytes of
// weight rows g and g+8 per 32 columns of K (ld.global.nc.L1::no_allocate: read once) and feeds them to
// the tensor cores WITHOUT reshuffling: the dot product does not care in which order K is summed, so the
// MMA's logical k-slots {2q, 2q+1, 2q+8, 2q+9} are mapped to the 8 consecutive columns 8q..8q+7 that
// the thread loaded, and the tokens' rows are loaded with the same mapping (16 bytes, L1-cached: every
// block of an expert reads them). Experts without tokens exit at once; no padding rows are computed.
// Tiling: block = 16 output rows of one expert (grid N/16 x E, or N/16 x the active experts), 4 warps
// split K (chunks of 32 columns, 4 consecutive chunks per warp and step: 256-byte runs per row), up to
// 16 x 16-byte loads in flight per thread; the 4 partial sums are reduced through shared memory in warp
// order (deterministic).
// swiglu: the block reads 16 gate and 16 up rows and writes silu(gate) * up; gelu / none / combine: 16 rows.
// Layouts: A [rows, K] permuted tokens (expert e: rows row_offset[e] .. + counts[e]), or x [T, K] read
// through a_pair (row r is token a_pair[r] / a_slots: the first GEMM needs no gathered copy of x);
// W [E, N, K]; D [rows, N], or with combine [pairs, N] in pair order scaled by the pair's weight
// (the second GEMM needs no combine pass). Each has its own row stride.
// The tile count is compiled into the block (decode_block): the activation loads of a step are issued
// before its MMAs, and no register is spent on absent tiles.
// Dense mode (no counts, E = 1): the engine's dense layers at decode (engine::Gemm, up to 16 rows); the
// block asks L2 for its weight rows before the PDL wait, so they stream in while the previous kernel
// ends.
// Tails (dense none or combine, a few rows): a batch-1 decode step is a chain of dependent kernels, and
// the small op after a GEMM (the residual add and next norm; the QKV row's bias, qk-norm, RoPE and cache
// store) costs a kernel boundary more than its work. With a tail the blocks count themselves in on a
// device counter after storing their part of d, and the last one runs that op over the rows
// (add_norm_row, qkv_finish_row: the standalone kernels' row functions; last_block_of, common.cuh).
// Measurements: docs/REPORT.md.
#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "cuda/engine/add_norm.cuh"
#include "cuda/engine/qkv_finish.cuh"
#include "cuda/launch.cuh"
#include "cuda/moe/moe_ops.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::moe {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;                      // output rows per block
constexpr int kMaxTiles = kDecodeMaxRows / 8;  // 8-token MMA tiles
// Blocks per SM the compiler must fit: 4 (<= 128 registers, 16 warps of loads in flight); the row maps
// had taken the one-matrix kernels to 134 registers (3 blocks per SM). 0 leaves swiglu unbounded, where
// it takes 128 on its own (a bound of 4 made it spill, a bound of 1 took it to 164).
template <Epilogue kEpi>
constexpr int kMinBlocks = kEpi == Epilogue::swiglu ? 0 : 4;

// Where the rows of a block live: A's row of permuted row r (a_pair) and D's row and scale (combine).
struct RowMaps {
  const int32_t* a_pair;
  int a_slots;
  const int32_t* src_pair;
  const float* pair_weight;
};

// One block's work with kTiles 8-token tiles (the expert's token count rounded up to 1, 2, 4 or 8 tiles;
// the extra tiles of a rounded count read clamped tokens and are not written). A compile-time tile
// count lets every activation load of a step be issued before its MMAs.
template <typename T, Epilogue kEpi, int kTiles>
__device__ __forceinline__ void decode_block(const T* __restrict__ a, int64_t lda, const T* __restrict__ w0,
                                             const T* __restrict__ w1, int64_t ldw, int64_t N, int64_t K, int e,
                                             int n_tok, int64_t row0, T* __restrict__ d, int64_t ldd,
                                             const RowMaps& maps,
                                             float (&red)[kWarps][kEpi == Epilogue::swiglu ? 2 : 1][kMaxTiles][4][32]) {
  constexpr int kMats = kEpi == Epilogue::swiglu ? 2 : 1;
  // K chunks per step: up to 16 weight loads of 16 bytes in flight per thread, fewer as the tiles' activation
  // registers grow (the kernel's register count is that of its largest instantiation).
  constexpr int kUnroll = kTiles == 1 ? 8 / kMats : kTiles == 2 ? 4 : kTiles == 4 ? 2 : 1;
  const int64_t f0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, q = lane % 4;

  const T* wrow[kMats][2];
#pragma unroll
  for (int m = 0; m < kMats; ++m) {
    const T* w = (m == 0 ? w0 : w1) + (static_cast<int64_t>(e) * N + f0) * ldw + 8 * q;
    wrow[m][0] = w + g * ldw;
    wrow[m][1] = w + (g + 8) * ldw;
  }
  const T* xrow[kTiles];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
    const int tok = min(t * 8 + g, n_tok - 1);  // clamped: the extra columns are never written
    const int64_t row = maps.a_pair ? maps.a_pair[row0 + tok] / maps.a_slots : row0 + tok;
    xrow[t] = a + row * lda + 8 * q;
  }

  float acc[kMats][kTiles][4] = {};
  const int64_t chunks = K / 32;
  for (int64_t base = static_cast<int64_t>(warp) * kUnroll; base < chunks; base += kWarps * kUnroll) {
    uint4 wv[kUnroll][kMats][2];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = (base + u) * 32;
#pragma unroll
      for (int m = 0; m < kMats; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) wv[u][m][r] = base + u < chunks ? ld_stream(wrow[m][r] + k) : make_uint4(0, 0, 0, 0);
    }
    uint4 xv[kUnroll][kTiles];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int t = 0; t < kTiles; ++t)
        xv[u][t] = base + u < chunks ? __ldg(reinterpret_cast<const uint4*>(xrow[t] + (base + u) * 32))
                                     : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u >= chunks) continue;
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
#pragma unroll
        for (int m = 0; m < kMats; ++m) {
          const uint4& lo = wv[u][m][0];
          const uint4& hi = wv[u][m][1];
          mma_16816<T>(acc[m][t], lo.x, hi.x, lo.y, hi.y, xv[u][t].x, xv[u][t].y);
          mma_16816<T>(acc[m][t], lo.z, hi.z, lo.w, hi.w, xv[u][t].z, xv[u][t].w);
        }
      }
    }
  }

#pragma unroll
  for (int m = 0; m < kMats; ++m)
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp][m][t][i][lane] = acc[m][t][i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // C fragment: i = 0, 1 -> row g, tokens 2q, 2q+1; i = 2, 3 -> row g + 8.
      const int tok = t * 8 + 2 * q + (i & 1);
      const int64_t f = f0 + g + (i >= 2 ? 8 : 0);
      float v[kMats];
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
        v[m] = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) v[m] += red[w][m][t][i][lane];
      }
      if (tok >= n_tok) continue;
      int64_t row = row0 + tok;
      float out;
      if constexpr (kEpi == Epilogue::swiglu) {
        out = silu(v[0]) * v[kMats - 1];
      } else if constexpr (kEpi == Epilogue::gelu) {
        out = gelu_erf(v[0]);
      } else if constexpr (kEpi == Epilogue::combine) {
        row = maps.src_pair[row];
        out = v[0] * maps.pair_weight[row];
      } else {
        out = v[0];
      }
      d[row * ldd + f] = from_f32<T>(out);
    }
  }
}

// A tail's arguments inside the kernel (DecodeGemmArgs: norm_tail, qkv_tail); rows == 0: none.
struct Tail {
  int rows = 0;
  int parts = 1;
  bool qkv = false;  // qkv_tail, else norm_tail
  int32_t* counter = nullptr;
  ResidualNorm norm;
  engine::QkvFinish fin;
};

// The tail over rows of d [rows (* parts), N] in the grid's last block (last_block_of). row: [N] fp32 of
// shared memory (the norm tail stages a row there).
template <typename T>
__device__ __forceinline__ void run_tail(const Tail& tl, T* d, int64_t N, float* row) {
  __shared__ float red[32];
  if (!last_block_of(tl.counter, static_cast<int>(gridDim.x * gridDim.y))) return;
  for (int r = 0; r < tl.rows; ++r) {
    if (tl.qkv) {
      engine::qkv_finish_row<T>(d + r * N, r, tl.fin, red);
      __syncthreads();  // the row's last reads (the cache store) before the next row's phase 1
    } else {
      engine::add_norm_row<T, true>(static_cast<T*>(tl.norm.x) + r * N, d + static_cast<int64_t>(r) * tl.parts * N,
                                    tl.parts, tl.norm.w, tl.norm.b, tl.norm.rmsnorm, tl.norm.eps,
                                    static_cast<T*>(tl.norm.out) + r * N, N, row, red);
    }
  }
}

template <typename T, Epilogue kEpi>
__global__ void __launch_bounds__(kThreads, kMinBlocks<kEpi>)
    decode_gemm_kernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ w0, const T* __restrict__ w1,
                       int64_t ldw, int64_t N, int64_t K, const int32_t* __restrict__ counts,
                       const int32_t* __restrict__ row_offset, const int32_t* __restrict__ active,
                       const int32_t* __restrict__ num_active, int dense_rows, T* d, int64_t ldd, RowMaps maps,
                       Tail tail) {
  __shared__ float red[kWarps][kEpi == Epilogue::swiglu ? 2 : 1][kMaxTiles][4][32];
  if (!counts && threadIdx.x < kRows * (kEpi == Epilogue::swiglu ? 2 : 1)) {
    // One dense matrix: its rows are read before the wait (no kernel of the step writes weights), so they
    // stream into L2 while the previous kernel finishes.
    const T* w = threadIdx.x < kRows ? w0 : w1;
    l2_prefetch(w + (static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x % kRows) * ldw,
                static_cast<uint32_t>(K * sizeof(T)));
  }
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  int e = blockIdx.y;
  if (active && e < *num_active) e = active[e];
  const int n_tok = active && static_cast<int>(blockIdx.y) >= *num_active ? 0 : counts ? counts[e] : dense_rows;
  const int tiles = (n_tok + 7) / 8;
  const int64_t row0 = counts && n_tok > 0 ? row_offset[e] : 0;
  if (tiles == 0) {
    // no rows: an expert slot beyond the active ones, or an expert without tokens
  } else if (tiles == 1) {
    decode_block<T, kEpi, 1>(a, lda, w0, w1, ldw, N, K, e, n_tok, row0, d, ldd, maps, red);
  } else if (tiles == 2) {
    decode_block<T, kEpi, 2>(a, lda, w0, w1, ldw, N, K, e, n_tok, row0, d, ldd, maps, red);
  } else if (tiles <= 4) {
    decode_block<T, kEpi, 4>(a, lda, w0, w1, ldw, N, K, e, n_tok, row0, d, ldd, maps, red);
  } else {
    decode_block<T, kEpi, 8>(a, lda, w0, w1, ldw, N, K, e, n_tok, row0, d, ldd, maps, red);
  }
  if constexpr (kEpi == Epilogue::none || kEpi == Epilogue::combine) {
    static_assert(sizeof(red) / sizeof(float) >= kAddNormTailMaxH, "the tail stages a row in red");
    if (tail.rows > 0) run_tail<T>(tail, d, N, &red[0][0][0][0][0]);
  }
}

template <typename T, Epilogue kEpi>
void launch(const DecodeGemmArgs& g, cudaStream_t stream) {
  Tail tail;
  if (g.norm_tail || g.qkv_tail) {
    tail.rows = g.tail_rows;
    tail.parts = g.tail_parts;
    tail.qkv = g.qkv_tail != nullptr;
    tail.counter = g.tail_counter;
    if (g.norm_tail) tail.norm = *g.norm_tail;
    if (g.qkv_tail) tail.fin = *g.qkv_tail;
  }
  const dim3 grid(static_cast<unsigned>(g.N / kRows), static_cast<unsigned>(g.active ? g.max_active : g.E));
  cuda::launch(decode_gemm_kernel<T, kEpi>, grid, kThreads, 0, stream, static_cast<const T*>(g.a), g.lda,
               static_cast<const T*>(g.w0), static_cast<const T*>(g.w1 ? g.w1 : g.w0), g.ldw, g.N, g.K, g.counts,
               g.row_offset, g.active, g.num_active, g.dense_rows, static_cast<T*>(g.d), g.ldd,
               RowMaps{g.a_pair, g.a_slots, g.src_pair, g.pair_weight}, tail);
}

template <typename T>
void launch_typed(const DecodeGemmArgs& g, cudaStream_t stream) {
  switch (g.epilogue) {
    case Epilogue::swiglu: launch<T, Epilogue::swiglu>(g, stream); break;
    case Epilogue::gelu: launch<T, Epilogue::gelu>(g, stream); break;
    case Epilogue::none: launch<T, Epilogue::none>(g, stream); break;
    case Epilogue::combine: launch<T, Epilogue::combine>(g, stream); break;
    case Epilogue::rope64:
    case Epilogue::rope128:
    case Epilogue::rope_norm64:
    case Epilogue::rope_norm128: break;  // rejected by decode_gemm
  }
}

}  // namespace

void decode_gemm(const DecodeGemmArgs& g, cudaStream_t stream) {
  MINILLM_CHECK(g.K % 32 == 0 && g.N % kRows == 0 && g.K > 0 && g.N > 0,
                "decode_gemm: K = " << g.K << " (multiple of 32), N = " << g.N << " (multiple of 16)");
  MINILLM_CHECK(g.epilogue == Epilogue::swiglu || g.epilogue == Epilogue::gelu || g.epilogue == Epilogue::none ||
                    g.epilogue == Epilogue::combine,
                "decode_gemm: epilogue " << static_cast<int>(g.epilogue) << " is not swiglu, gelu, none or combine");
  MINILLM_CHECK(g.epilogue != Epilogue::combine || (g.src_pair && g.pair_weight),
                "decode_gemm: the combine epilogue needs src_pair and pair_weight");
  MINILLM_CHECK(!g.a_pair || g.a_slots >= 1, "decode_gemm: a_slots = " << g.a_slots);
  MINILLM_CHECK(!g.active || (g.num_active && g.max_active >= 1 && g.max_active <= g.E),
                "decode_gemm: max_active = " << g.max_active << " (E = " << g.E << ") with the active list");
  MINILLM_CHECK(g.epilogue != Epilogue::swiglu || g.w1, "decode_gemm: swiglu needs the up matrix");
  MINILLM_CHECK(g.E >= 1 && g.E <= 65535, "decode_gemm: E = " << g.E);
  MINILLM_CHECK(g.counts || (g.E == 1 && !g.active && g.dense_rows >= 1 && g.dense_rows <= kDecodeMaxRows),
                "decode_gemm: without counts, E = " << g.E << " (1) and dense_rows = " << g.dense_rows << " (1.."
                                                     << kDecodeMaxRows << ")");
  MINILLM_CHECK(g.counts || !g.a_pair, "decode_gemm: a_pair needs counts");
  MINILLM_CHECK(!(g.norm_tail && g.qkv_tail), "decode_gemm: one tail at a time");
  MINILLM_CHECK(!g.norm_tail || ((g.epilogue == Epilogue::none || g.epilogue == Epilogue::combine) && g.ldd == g.N &&
                                 add_norm_tail_supported(g.tail_rows, g.N) && g.tail_parts >= 1 &&
                                 g.norm_tail->x && g.norm_tail->out && g.norm_tail->w && g.tail_counter),
                "decode_gemm: the norm tail needs epilogue none or combine, ldd = N = "
                    << g.N << " <= " << kAddNormTailMaxH << ", tail_rows = " << g.tail_rows << " in [1, "
                    << kTailMaxRows << "], tail_parts = " << g.tail_parts << " >= 1, and x, out, w, tail_counter");
  MINILLM_CHECK(!g.qkv_tail || (g.epilogue == Epilogue::none && !g.counts && g.ldd == g.N &&
                                g.tail_rows == g.dense_rows && g.tail_rows <= kTailMaxRows && g.tail_counter &&
                                g.N == int64_t{g.qkv_tail->Hq + 2 * g.qkv_tail->Hkv} * g.qkv_tail->D),
                "decode_gemm: the QKV tail needs dense rows (" << g.dense_rows << ", at most " << kTailMaxRows
                                                               << "), epilogue none, ldd = N = (Hq + 2 Hkv) D and tail_counter");
  if (g.qkv_tail) engine::qkv_finish_check(*g.qkv_tail, g.d);
  MINILLM_CHECK(g.lda >= g.K && g.ldw >= g.K && g.ldd >= g.N && g.lda % 8 == 0 && g.ldw % 8 == 0 && g.ldd % 8 == 0,
                "decode_gemm: row strides lda = " << g.lda << ", ldw = " << g.ldw << ", ldd = " << g.ldd
                                                  << " (K = " << g.K << ", N = " << g.N << ")");
  if (g.dtype == DType::bf16) {
    launch_typed<__nv_bfloat16>(g, stream);
  } else if (g.dtype == DType::f16) {
    launch_typed<__half>(g, stream);
  } else {
    MINILLM_FAIL("decode_gemm: dtype " << dtype_name(g.dtype) << " is not bf16 or f16");
  }
  MINILLM_CUDA_CHECK_LAUNCH();
}

}  // namespace minillm::cuda::moe
