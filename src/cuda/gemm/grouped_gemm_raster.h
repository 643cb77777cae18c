// The tile order of the grouped GEMM (grouped_gemm.cuh): tile t -> (m-block, n-block). Plain C++
// callable from the host too (no CUDA headers), so that the CPU tests check it.
//
// Raster groups never straddle two groups of rows (two experts): each expert's 128-row m-blocks are split into
// ceil(n / group_m) groups of balanced size, and the tiles of a group run m fastest, so that the CTAs
// in flight together share the same few weight tiles (B) and the group's rows of A in L2. A group of
// `rows` m-blocks starting at m-block `first` owns tiles [first * n_blocks, (first + rows) * n_blocks),
// so q = t / n_blocks is one of its m-blocks: its expert gives the group without a table. (Groups of
// consecutive m-blocks that spanned two experts read both experts' weights: docs/REPORT.md.)
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MINILLM_GEMM_HD __host__ __device__ __forceinline__
#else
#define MINILLM_GEMM_HD inline
#endif

namespace minillm::cuda::gemm {

// Rows per m-block (the grouped GEMM's tile height), and the alignment of every group's first row
// (row_offset[e] is a multiple of it: the MoE permutation pads each expert's rows to it).
constexpr int kGemmBlockM = 128;

// The tile order inside one run of n consecutive m-blocks starting at m-block `e_first` (one expert's,
// or all of a dense GEMM's): ceil(n / group_m) groups of balanced size, m fastest inside a group.
// tile's m-block q = tile / n_blocks lies in the run.
MINILLM_GEMM_HD void raster_run(int tile, int n_blocks, int group_m, int e_first, int n, int& mb, int& nb) {
  const int q = tile / n_blocks;
  const int groups = (n + group_m - 1) / group_m;
  const int base = n / groups, extra = n % groups;  // `extra` groups of base + 1 m-blocks, then groups of base
  const int j = q - e_first;
  int first, rows;
  if (j < extra * (base + 1)) {
    rows = base + 1;
    first = j / rows * rows;
  } else {
    rows = base;
    first = extra * (base + 1) + (j - extra * (base + 1)) / base * base;
  }
  first += e_first;
  const int r = tile - first * n_blocks;
  mb = first + r % rows;
  nb = r / rows;
}

// mblock_expert: [m-blocks] expert of each m-block; counts / row_offset: [E] rows and first row of each
// expert (experts in order, row_offset[e] a multiple of 128). tile < (total m-blocks) * n_blocks.
MINILLM_GEMM_HD void raster_tile(int tile, int n_blocks, int group_m, const int32_t* mblock_expert,
                                const int32_t* counts, const int32_t* row_offset, int& mb, int& nb) {
  const int e = mblock_expert[tile / n_blocks];
  const int n = (counts[e] + kGemmBlockM - 1) / kGemmBlockM;  // m-blocks of expert e
  raster_run(tile, n_blocks, group_m, row_offset[e] / kGemmBlockM, n, mb, nb);
}

}  // namespace minillm::cuda::gemm

#undef MINILLM_GEMM_HD
