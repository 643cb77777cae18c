// Sweep of the grouped expert GEMM's raster group (GroupedGemmArgs::group_m: the most m-blocks per
// group of the tile order, cuda/gemm/grouped_gemm_raster.h) on the MoE headline shapes and the engine presets' MoE
// layers: the gate/up (swiglu) and down (none) GEMMs of one layer, uniform random routing.
//
// Timing: CUDA events around each GEMM after warm-up, median of 10. The activations are random, the
// routing is a real counting sort of uniform random expert ids (moe::permute), weights at the padded
// row stride the layer uses (fast_row_stride).
//
//   build:  cmake -B build -DMINILLM_DEV=ON && cmake --build build --target dev_02_moe_grouped_gemm_raster
//   run:    build/dev/02_moe_grouped_gemm_raster [group_m ...]    (default: 16 8 4 2 32 64)
// Prints, per group_m, one line per shape: gate/up and down milliseconds.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cuda/moe/moe_ops.h"
#include "dev_util.cuh"
#include "minillm/core/cuda_check.h"

namespace {

namespace km = minillm::cuda::moe;
using T = __nv_bfloat16;

struct Shape {
  int64_t T, H, E, k, F;
};

using dev::device_alloc;
using dev::random_tensor;

// Median milliseconds of `run` over 10 timed calls after 2 warm-up calls.
template <typename F>
float median_ms(F run) {
  run(), run();
  constexpr int kReps = 10;
  std::vector<cudaEvent_t> ev(2 * kReps);
  for (auto& e : ev) MINILLM_CUDA_CHECK(cudaEventCreate(&e));
  for (int r = 0; r < kReps; ++r) {
    MINILLM_CUDA_CHECK(cudaEventRecord(ev[2 * r]));
    run();
    MINILLM_CUDA_CHECK(cudaEventRecord(ev[2 * r + 1]));
  }
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms(kReps);
  for (int r = 0; r < kReps; ++r) MINILLM_CUDA_CHECK(cudaEventElapsedTime(&ms[r], ev[2 * r], ev[2 * r + 1]));
  for (auto& e : ev) MINILLM_CUDA_CHECK(cudaEventDestroy(e));
  std::nth_element(ms.begin(), ms.begin() + kReps / 2, ms.end());
  return ms[kReps / 2];
}

void run_shape(const Shape& s, const std::vector<int>& groups) {
  const int64_t pairs = s.T * s.k;
  const int64_t rows = km::permuted_rows(pairs, s.E, km::kGemmBlockM);
  const int64_t mblocks = (rows + km::kGemmBlockM - 1) / km::kGemmBlockM;
  const int64_t ld_h = km::fast_row_stride(s.H), ld_f = km::fast_row_stride(s.F);

  // Routing: k distinct uniform random experts per token, sorted by expert on the device.
  std::vector<int32_t> ids(pairs);
  std::mt19937 rng(7);
  for (int64_t t = 0; t < s.T; ++t) {
    std::vector<int32_t> e(s.E);
    for (int64_t i = 0; i < s.E; ++i) e[i] = int32_t(i);
    std::shuffle(e.begin(), e.end(), rng);
    std::copy(e.begin(), e.begin() + s.k, ids.begin() + t * s.k);
  }
  int32_t* d_ids = device_alloc<int32_t>(pairs);
  MINILLM_CUDA_CHECK(cudaMemcpy(d_ids, ids.data(), pairs * sizeof(int32_t), cudaMemcpyHostToDevice));
  km::Routing r;
  r.chunk_counts = device_alloc<int32_t>(s.E * km::permute_num_chunks(pairs));
  r.counts = device_alloc<int32_t>(s.E);
  r.row_offset = device_alloc<int32_t>(s.E);
  r.num_mblocks = device_alloc<int32_t>(1);
  r.mblock_expert = device_alloc<int32_t>(mblocks);
  r.dest = device_alloc<int32_t>(pairs);
  r.src_pair = device_alloc<int32_t>(rows);
  r.tile_counter = device_alloc<int32_t>(1);
  km::permute(d_ids, s.T, int(s.k), int(s.E), km::kGemmBlockM, r, nullptr);

  T* x = random_tensor(rows * s.H, 1);
  T* w_gate = random_tensor(s.E * s.F * ld_h, 2);
  T* w_up = random_tensor(s.E * s.F * ld_h, 3);
  T* w_down = random_tensor(s.E * s.H * ld_f, 4);
  T* h = device_alloc<T>(rows * s.F);
  T* y = device_alloc<T>(rows * s.H);

  minillm::cuda::gemm::GroupedGemmArgs g;
  g.dtype = minillm::DType::bf16;
  g.rows = rows;
  g.E = int(s.E);
  g.num_mblocks = r.num_mblocks;
  g.mblock_expert = r.mblock_expert;
  g.counts = r.counts;
  g.row_offset = r.row_offset;
  g.max_mblocks = mblocks;
  g.tile_counter = r.tile_counter;
  minillm::cuda::gemm::GroupedGemmArgs up = g, down = g;
  up.epilogue = km::Epilogue::swiglu;
  up.a = x, up.lda = s.H, up.K = s.H, up.w0 = w_gate, up.w1 = w_up, up.ldw = ld_h, up.N = s.F, up.d = h, up.ldd = s.F;
  down.epilogue = km::Epilogue::none;
  down.a = h, down.lda = s.F, down.K = s.F, down.w0 = w_down, down.ldw = ld_f, down.N = s.H, down.d = y, down.ldd = s.H;
  for (int gm : groups) {
    up.group_m = down.group_m = gm;
    const float ms_up = median_ms([&] { minillm::cuda::gemm::grouped_gemm(up, nullptr); });
    const float ms_down = median_ms([&] { minillm::cuda::gemm::grouped_gemm(down, nullptr); });
    std::printf("group_m %3d  T%lld H%lld E%lld k%lld F%lld: gate/up %7.3f ms  down %7.3f ms\n", gm, (long long)s.T,
                (long long)s.H, (long long)s.E, (long long)s.k, (long long)s.F, ms_up, ms_down);
  }
  std::fflush(stdout);
  for (void* p : {(void*)d_ids, (void*)r.chunk_counts, (void*)r.counts, (void*)r.row_offset, (void*)r.num_mblocks,
                  (void*)r.mblock_expert, (void*)r.dest, (void*)r.src_pair, (void*)r.tile_counter, (void*)x,
                  (void*)w_gate, (void*)w_up, (void*)w_down, (void*)h, (void*)y})
    cudaFree(p);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<int> groups;
    for (int i = 1; i < argc; ++i) groups.push_back(std::atoi(argv[i]));
    if (groups.empty()) groups = {16, 8, 4, 2, 32, 64};
    // The seed's headline, OLMoE, a grid case, and the MoE layers of the small / medium / large engine
    // presets at batch 8 x 2048 tokens.
    const Shape shapes[] = {{32768, 4096, 32, 2, 14336}, {32768, 2048, 64, 8, 1024}, {32768, 2048, 16, 4, 7168},
                            {16384, 768, 8, 2, 3072},    {16384, 1024, 8, 2, 4096},  {16384, 4096, 8, 2, 3584}};
    for (const Shape& s : shapes) run_shape(s, groups);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
