// CPU embedding lookup and linear layer (y = x @ w^T + bias), fp32.
//
// linear: x [T, K] and w [N, K] are both row-major along K, so each output y[t, n] is a dot product
// of two contiguous rows. The work is cut into tasks of kBlockRows x kBlockCols outputs (OpenMP
// parallel over tasks); inside a task, K is walked in slices of kBlockK (cache blocking: the x slice
// of the task stays in L2, a register tile's w rows in L1), and each slice is computed by register
// tiles of kTileRows rows of x times kTileCols rows of w. A tile keeps kTileRows * kTileCols
// accumulators of kLanes floats (one SSE register each); the lane loop is `omp simd`, so the compiler
// vectorizes it with the baseline x86-64 flags, and the r/c loops are unrolled so the accumulators
// stay in registers (at -O2 too). Lane l sums the products k = l (mod kLanes) and the lanes are then
// added in a fixed order, so results do not depend on the thread count or the scheduling.
//
// embedding: a row copy per token, OpenMP parallel over tokens.
#include <algorithm>
#include <cstring>

#include "cpu/ops.h"

namespace minillm::cpu {

namespace {

constexpr int64_t kLanes = 4;       // partial sums per dot product (one 128-bit register)
constexpr int64_t kTileRows = 3;    // rows of x per register tile
constexpr int64_t kTileCols = 4;    // rows of w (output columns) per register tile
constexpr int64_t kBlockRows = 96;  // rows of x per task (a multiple of kTileRows)
constexpr int64_t kBlockCols = 64;  // rows of w per task (a multiple of kTileCols)
constexpr int64_t kBlockK = 2048;   // K slice per pass (a multiple of kLanes)

static_assert(kBlockRows % kTileRows == 0 && kBlockCols % kTileCols == 0 && kBlockK % kLanes == 0);

// y[r, c] += sum_k x[r, k] * w[c, k] for r < R, c < C, k < K.
// x: [R, K] with row stride ldx, w: [C, K] with row stride ldw, y: [R, C] with row stride ldy.
template <int R, int C>
void tile_dot(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* y, int64_t ldy) {
  float acc[R][C][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[r][c][l] += x[r * ldx + k + l] * w[c * ldw + k + l];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      static_assert(kLanes == 4, "the lane reduction below assumes 4 lanes");
      float s = (acc[r][c][0] + acc[r][c][1]) + (acc[r][c][2] + acc[r][c][3]);
      for (int64_t kt = k; kt < K; ++kt) s += x[r * ldx + kt] * w[c * ldw + kt];
      y[r * ldy + c] += s;
    }
  }
}

// Runtime (rows, cols) -> the tile_dot instance; rows in [1, kTileRows], cols in [1, kTileCols].
template <int R>
void tile_dot_cols(int64_t cols, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* y,
                   int64_t ldy) {
  switch (cols) {
    case 4: tile_dot<R, 4>(x, ldx, w, ldw, K, y, ldy); break;
    case 3: tile_dot<R, 3>(x, ldx, w, ldw, K, y, ldy); break;
    case 2: tile_dot<R, 2>(x, ldx, w, ldw, K, y, ldy); break;
    default: tile_dot<R, 1>(x, ldx, w, ldw, K, y, ldy); break;
  }
}

void tile_dot_any(int64_t rows, int64_t cols, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K,
                  float* y, int64_t ldy) {
  static_assert(kTileRows == 3 && kTileCols == 4, "update the dispatch when changing the tile shape");
  switch (rows) {
    case 3: tile_dot_cols<3>(cols, x, ldx, w, ldw, K, y, ldy); break;
    case 2: tile_dot_cols<2>(cols, x, ldx, w, ldw, K, y, ldy); break;
    default: tile_dot_cols<1>(cols, x, ldx, w, ldw, K, y, ldy); break;
  }
}

}  // namespace

void embedding(const int32_t* ids, int64_t T, const float* table, int64_t H, float* out) {
  // ids: [T], table: [V, H], out: [T, H]
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(out + t * H, table + static_cast<int64_t>(ids[t]) * H, static_cast<size_t>(H) * sizeof(float));
  }
}

void linear(const float* x, const float* w, const float* bias, int64_t T, int64_t K, int64_t N, float* y) {
  // x: [T, K], w: [N, K], bias: [N] or null, y: [T, N]
  if (T <= 0 || N <= 0) return;
  const int64_t row_blocks = (T + kBlockRows - 1) / kBlockRows;
  const int64_t col_blocks = (N + kBlockCols - 1) / kBlockCols;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t cb = 0; cb < col_blocks; ++cb) {
      const int64_t t0 = rb * kBlockRows, t1 = std::min(T, t0 + kBlockRows);
      const int64_t n0 = cb * kBlockCols, n1 = std::min(N, n0 + kBlockCols);
      for (int64_t t = t0; t < t1; ++t) {
        float* yt = y + t * N;  // [N]
        if (bias) {
          std::copy(bias + n0, bias + n1, yt + n0);
        } else {
          std::fill(yt + n0, yt + n1, 0.0f);
        }
      }
      for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
        const int64_t kl = std::min(kBlockK, K - k0);
        for (int64_t t = t0; t < t1; t += kTileRows) {
          const int64_t rows = std::min(kTileRows, t1 - t);
          for (int64_t n = n0; n < n1; n += kTileCols) {
            const int64_t cols = std::min(kTileCols, n1 - n);
            tile_dot_any(rows, cols, x + t * K + k0, K, w + n * K + k0, K, kl, y + t * N + n, N);
          }
        }
      }
    }
  }
}

}  // namespace minillm::cpu
