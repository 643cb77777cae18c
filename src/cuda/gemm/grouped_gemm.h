// The grouped GEMM (grouped_gemm.cuh, Hopper sm_90a): D = epilogue(A_g . W_g^T) for every group g of
// rows of A at once, in one persistent launch. The MoE layer runs it over the experts (a group = an
// expert's rows of the permuted activations, W_g = the expert's weights); the engine's QKV projection
// runs it as a dense GEMM (one group, every row) with the RoPE epilogue (cuda/engine/qkv_rope.cu).
// Raw device pointers, explicit sizes, a stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/gemm/grouped_gemm_raster.h"
#include "minillm/core/dtype.h"

namespace minillm::cuda::gemm {

// What happens to the fp32 accumulators of a 128-row block m of A (group e = mblock_expert[m]) before
// the one rounding to 16 bits:
//   swiglu: D[m rows, f] = silu(A . w0[e, f]) * (A . w1[e, f])   (w0 = gate, w1 = up: [E, N, K]; D: [rows, N])
//   gelu:   D[m rows, n] = gelu(A . w0[e, n])                     (w0: [E, N, K])
//   none:   D[m rows, n] = A . w0[e, n]                           (w0: [E, N, K]; e.g. the down projection)
//   combine: none, each row r scaled by pair_weight[src_pair[r]] and stored to row src_pair[r] of D
//           [pairs, N] (token-pair order t*k + j: the combine's sum over j is left to the caller);
//           a group's alignment rows are not stored
//   rope64 / rope128: none, then RoPE (HF rotate_half, head dim 64 / 128) on columns [0, rope_cols) of
//           row r at position r % rope_seq (the QKV projection: q and k heads rotated, v not).
//   rope_norm64 / rope_norm128: + bias[n] (when given), then RMSNorm of each head of columns
//           [0, rope_cols) over its 64 / 128 values with weights q_norm (columns < q_cols) or k_norm
//           (when given: Qwen3's per-head qk-norm), then the RoPE above (Qwen2-MoE, Qwen3-MoE QKV).
// A new epilogue: an enumerator here, its per-tile row data and per-element math in grouped_gemm.cuh
// (GemmEpilogueRows, epilogue_block), an instantiation file, a case in grouped_gemm.cu's dispatch.
enum class Epilogue { swiglu, gelu, none, combine, rope64, rope128, rope_norm64, rope_norm128 };

// Dense GEMM: mblock_expert == nullptr and E == 1; every row of A is group 0's (num_mblocks, counts
// and row_offset are not read).
struct GroupedGemmArgs {
  DType dtype = DType::bf16;
  Epilogue epilogue = Epilogue::none;
  const void* a = nullptr;  // [rows, K], row stride lda
  int64_t lda = 0;
  int64_t rows = 0;         // rows of A and D (multiple of 128 not required)
  int64_t K = 0;            // multiple of 8
  const void* w0 = nullptr;  // [E, N, K], row stride ldw (group e's rows start at e * N)
  const void* w1 = nullptr;
  int64_t ldw = 0;
  int64_t N = 0;  // output columns = rows per group of w0 / w1; multiple of 8
  int E = 0;
  void* d = nullptr;                        // [rows, N], row stride ldd
  int64_t ldd = 0;
  const int32_t* num_mblocks = nullptr;     // [1] (device)
  const int32_t* mblock_expert = nullptr;   // [max_mblocks] (device) the group of each 128-row block
  const int32_t* counts = nullptr;          // [E] rows per group (device)
  const int32_t* row_offset = nullptr;      // [E] first row per group, multiples of kGemmBlockM (device)
  int64_t max_mblocks = 0;                  // host bound on *num_mblocks
  int32_t* tile_counter = nullptr;          // [1] (device) zero at launch; the GEMM leaves it zero
  const void* rope_table = nullptr;         // rope*: [positions, head dim / 2] float2 (cos, sin)
  int64_t rope_cols = 0;                    // rope*: rotated columns (q and k heads; a multiple of the head dim)
  int rope_seq = 1;                         // rope*: row r is at position r % rope_seq (< positions)
  const float* bias = nullptr;              // rope_norm*: [N] fp32, or null
  const float* q_norm = nullptr;            // rope_norm*: [head dim] fp32 RMSNorm weights of q heads, or null
  const float* k_norm = nullptr;            // rope_norm*: [head dim] of k heads (with q_norm)
  int64_t q_cols = 0;                       // rope_norm*: columns [0, q_cols) are q heads, then k up to rope_cols
  float norm_eps = 1e-6f;                   // rope_norm*: RMSNorm epsilon
  const int32_t* src_pair = nullptr;        // combine: [rows] (moe::Routing::src_pair)
  const float* pair_weight = nullptr;       // combine: [pairs] routing weights
  int group_m = 0;                          // most m-blocks per raster group; 0: the default (GemmTraits::kGroupM)
};
void grouped_gemm(const GroupedGemmArgs& args, cudaStream_t stream);

}  // namespace minillm::cuda::gemm
