// Grouped GEMM, host side: TMA descriptors, tile counts, dispatch on the epilogue; and the plain and
// combine instantiations (the MoE down projection). The kernel and its design: grouped_gemm.cuh.
#include "cuda/device.h"
#include "cuda/gemm/grouped_gemm.cuh"

namespace minillm::cuda::gemm {

namespace {

// A 2-D [outer, inner] tensor of 16-bit elements with row stride ld, 128-byte swizzled boxes {box_inner, box_outer}.
CUtensorMap make_map(DType dtype, const void* ptr, int64_t inner, int64_t outer, int64_t ld, uint32_t box_inner,
                     uint32_t box_outer) {
  CUtensorMap m{};
  const uint64_t dims[2] = {static_cast<uint64_t>(inner), static_cast<uint64_t>(outer)};
  const uint64_t strides[1] = {static_cast<uint64_t>(ld) * 2};
  const uint32_t box[2] = {box_inner, box_outer};
  const CUresult r = encode_tensor_map(&m, dtype, ptr, 2, dims, strides, box);
  MINILLM_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (" << static_cast<int>(r) << ") for a [" << outer
                                                                     << ", " << inner << "] tensor at " << ptr);
  return m;
}

}  // namespace

void launch_grouped_gemm_none(DType dtype, const GemmParams& p, int grid, cudaStream_t stream) {
  launch_grouped_gemm_impl<Epilogue::none>(dtype, p, grid, stream);
}
void launch_grouped_gemm_combine(DType dtype, const GemmParams& p, int grid, cudaStream_t stream) {
  launch_grouped_gemm_impl<Epilogue::combine>(dtype, p, grid, stream);
}

void grouped_gemm(const GroupedGemmArgs& g, cudaStream_t stream) {
  const bool dense = g.mblock_expert == nullptr;
  if (g.rows == 0 || (!dense && g.max_mblocks == 0)) return;
  MINILLM_CHECK(g.dtype == DType::bf16 || g.dtype == DType::f16, "grouped_gemm: dtype " << dtype_name(g.dtype));
  MINILLM_CHECK(g.K % 8 == 0 && g.N % 8 == 0 && g.K > 0 && g.N > 0, "grouped_gemm: K = " << g.K << ", N = " << g.N);
  MINILLM_CHECK(g.epilogue != Epilogue::swiglu || g.w1, "grouped_gemm: swiglu needs the up matrix");
  MINILLM_CHECK(g.E * g.N < (int64_t{1} << 31) && g.rows < (int64_t{1} << 31), "grouped_gemm: sizes exceed int32");
  MINILLM_CHECK(!dense || g.E == 1, "grouped_gemm: a dense GEMM (no mblock_expert) has E = 1, got " << g.E);
  const bool combine = g.epilogue == Epilogue::combine;
  MINILLM_CHECK(!combine || (!dense && g.src_pair && g.pair_weight), "grouped_gemm: combine needs the routing");
  const int rope_dim = rope_dim_of(g.epilogue);
  const bool rope = rope_dim > 0, rope_norm = g.epilogue == Epilogue::rope_norm64 || g.epilogue == Epilogue::rope_norm128;
  MINILLM_CHECK(!rope || (g.rope_table && g.rope_seq >= 1 && g.rope_cols >= 0 && g.rope_cols % rope_dim == 0 &&
                          g.rope_cols <= g.N),
                "grouped_gemm: rope_cols = " << g.rope_cols << " (head dim " << rope_dim << ", N = " << g.N
                                             << "), rope_seq = " << g.rope_seq);
  MINILLM_CHECK(!rope_norm || (!g.q_norm == !g.k_norm && g.q_cols >= 0 && g.q_cols % rope_dim == 0 &&
                               g.q_cols <= g.rope_cols && g.norm_eps > 0.f),
                "grouped_gemm: rope_norm with q_norm " << (g.q_norm ? "set" : "null") << ", k_norm "
                                                        << (g.k_norm ? "set" : "null") << ", q_cols = " << g.q_cols
                                                        << " (rope_cols " << g.rope_cols << "), eps " << g.norm_eps);
  MINILLM_CHECK(g.lda >= g.K && g.ldw >= g.K && g.ldd >= g.N && g.lda % 8 == 0 && g.ldw % 8 == 0 && g.ldd % 8 == 0,
                "grouped_gemm: row strides lda = " << g.lda << ", ldw = " << g.ldw << ", ldd = " << g.ldd
                                                   << " (K = " << g.K << ", N = " << g.N << ")");
  using Tr = GemmTraits;
  const bool swiglu = g.epilogue == Epilogue::swiglu;
  const int out_cols = swiglu ? Tr::kBN / 2 : Tr::kBN;

  GemmParams p;
  p.a = make_map(g.dtype, g.a, g.K, g.rows, g.lda, Tr::kBK, 128);
  p.b0 = make_map(g.dtype, g.w0, g.K, g.E * g.N, g.ldw, Tr::kBK, 128);
  p.b1 = make_map(g.dtype, swiglu ? g.w1 : g.w0, g.K, g.E * g.N, g.ldw, Tr::kBK, 128);
  if (!combine) p.d = make_map(g.dtype, g.d, g.N, g.rows, g.ldd, Tr::kEpiCols, 64);
  p.d_ptr = g.d;
  p.ldd = g.ldd;
  p.src_pair = g.src_pair;
  p.pair_weight = g.pair_weight;
  p.num_mblocks = g.num_mblocks;
  p.mblock_expert = g.mblock_expert;
  p.counts = g.counts;
  p.row_offset = g.row_offset;
  p.n_blocks = static_cast<int>((g.N + out_cols - 1) / out_cols);
  p.k_iters = static_cast<int>((g.K + Tr::kBK - 1) / Tr::kBK);
  p.b_rows_per_expert = static_cast<int>(g.N);
  p.b_block_rows = out_cols;
  p.b1_row_offset = swiglu ? 0 : 128;
  MINILLM_CHECK(g.group_m >= 0 && g.group_m <= 1024, "grouped_gemm: group_m = " << g.group_m << " must be in [0, 1024]");
  p.group_m = g.group_m > 0 ? g.group_m : Tr::kGroupM;
  p.dense_mblocks = dense ? static_cast<int>((g.rows + Tr::kBM - 1) / Tr::kBM) : 0;
  p.rope = static_cast<const float2*>(g.rope_table);
  p.rope_cols = static_cast<int>(g.rope_cols);
  p.rope_seq = g.rope_seq;
  p.bias = g.bias;
  p.q_norm = g.q_norm;
  p.k_norm = g.k_norm;
  p.q_cols = static_cast<int>(g.q_cols);
  p.norm_eps = g.norm_eps;
  MINILLM_CHECK(g.tile_counter, "grouped_gemm: no tile counter");
  p.tile_counter = g.tile_counter;

  const int sms = device_sm_count();
  const int64_t max_tiles = (dense ? p.dense_mblocks : g.max_mblocks) * p.n_blocks;
  const int grid = static_cast<int>(std::min<int64_t>(sms, max_tiles));
  switch (g.epilogue) {
    case Epilogue::swiglu: launch_grouped_gemm_swiglu(g.dtype, p, grid, stream); break;
    case Epilogue::gelu: launch_grouped_gemm_gelu(g.dtype, p, grid, stream); break;
    case Epilogue::none: launch_grouped_gemm_none(g.dtype, p, grid, stream); break;
    case Epilogue::combine: launch_grouped_gemm_combine(g.dtype, p, grid, stream); break;
    case Epilogue::rope64:
    case Epilogue::rope128: launch_grouped_gemm_rope(g.dtype, p, rope_dim, grid, stream); break;
    case Epilogue::rope_norm64:
    case Epilogue::rope_norm128: launch_grouped_gemm_rope_norm(g.dtype, p, rope_dim, grid, stream); break;
  }
}

}  // namespace minillm::cuda::gemm
