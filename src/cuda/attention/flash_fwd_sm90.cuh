// FlashAttention forward for Hopper (sm_90a): TMA + wgmma + warp specialisation, persistent.
//
// Algorithm (FlashAttention-3 style; Shah et al. 2024): one CTA owns kBlockM = 64 * kConsumers query
// rows of one (batch, head) at a time and streams the K/V tiles of kBlockN keys, last tile first
// (the masked tiles, sequence tail and causal diagonal, come first). The kernel body only sequences
// its parts, one header each:
//   flash_fwd_sm90_traits.cuh     tile shape, pipeline depth and register split (Sm90FwdTraits), the
//                                 shared-memory layout and mbarriers (Sm90Smem), named barriers
//   flash_fwd_sm90_scheduler.cuh  work tiles and their order; the producer's unit source
//   flash_fwd_sm90_producer.cuh   warp 0 of warpgroup 0 (setmaxnreg.dec): TMA loads of Q and of the
//                                 K/V blocks (a K/V tile source: the seam for other K/V layouts)
//   flash_fwd_sm90_consumer.cuh   warpgroups 1.. (setmaxnreg.inc), 64 query rows each: the mainloop
//                                 (S = Q K^T and O += P V on wgmma, overlapped and ping-ponged) and
//                                 the epilogue
//   flash_fwd_sm90_softmax.cuh    the online softmax in fp32 registers (row max / sum, conditional
//                                 rescaling, exp2 with scale * log2(e) folded in)
// Data flow: producer --TMA--> Q, K/V ring (shared memory, full/empty mbarriers) --wgmma--> S, O in
// the consumers' registers --> O staging (shared memory) --> 16-byte stores of o; lse from the
// softmax's row statistics. Work units go from the producer to the consumers through sm90::TileRing.
//
// Why this shape: the TMA loads and the producer's few registers free the consumers for the math;
// K and V have separate barriers so that S = Q K^T starts before V lands; two consumer warpgroups
// alternating their GEMMs (ping-pong) keep the tensor cores busy during each other's softmax, and
// within a warpgroup the softmax of block n runs under the PV GEMM of block n + 1. The row maximum in
// use moves only when it grows by more than 2^8 (O is rarely rescaled). Head dim 128 from 2048 keys:
// two P buffers (kDoubleP), so the softmax packs P_n while O += P_{n+1} V_{n+1} still reads the
// other. Causal: a warpgroup skips the key blocks that none of its rows sees (it still releases
// their stages and passes the token).
// Tiling (the traits in flash_fwd_sm90_hdim*.cu): D128: 128 x 128, 2 consumers, 2 stages; D64: 192 x
// 128 (3 consumers) or 128 x 128 (2) by the number of tiles, 3 stages.
// A row that sees no key has m = -inf, l = 0: o = 0 and lse = -inf (the FlashAttention-2 kernel's
// semantics, flash_fwd_kernel.cuh).
//
// Layouts (include/minillm/attention.h): one 4-D TMA tensor per input, {D, rows, heads, batch}
// (innermost first) with the caller's strides in bytes, boxes {64, tile rows, 1, 1} with 128-byte
// swizzle; D = 128 is two boxes side by side. Padded layout: rows = N and TMA zero-fills rows past N.
// Varlen: batch = 1 and a sequence's rows start at cu_seqlens[b]; rows past a sequence's end are
// other sequences' tokens: keys are masked, query rows are not stored. The total row count is only
// known on the device (cu_seqlens[B]), so the tensor maps are declared with 2^31 - 1 rows and the
// one tile that would cross the end of the tensor is copied by the producer warp with plain loads.
//
// Schedule (flash_fwd_sm90_scheduler.cuh): grid = number of SMs; the producer takes work units from
// a global counter, in the order (group of (batch, head) pairs, unit, pair); groups are sized so that
// their K/V stay in L2; causal units pair m-blocks (last - i, i) so that units cost the same.
// Measurements: docs/REPORT.md, docs/HOPPER_ATTENTION.md (ablations), bench/results/h100/attention.json.
#pragma once
#include <cuda.h>

#include <atomic>
#include <climits>
#include <cstdint>

#include "cuda/attention/flash_fwd_kernel.cuh"
#include "cuda/attention/flash_fwd_sm90.h"
#include "cuda/attention/flash_fwd_sm90_consumer.cuh"
#include "cuda/attention/flash_fwd_sm90_producer.cuh"
#include "cuda/attention/flash_fwd_sm90_scheduler.cuh"
#include "cuda/attention/flash_fwd_sm90_traits.cuh"
#include "cuda/device.h"
#include "cuda/sm90.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::attn {

// The dynamic schedule's counters, one per launch in turn (so that launches on different streams do
// not share one). atomicInc wraps a counter back to 0 on the launch's last fetch: zero between launches.
constexpr int kUnitCounters = 64;
__device__ unsigned g_unit_counters[kUnitCounters];

// grid: persistent CTAs (or one per work unit); block: Kt::kThreads; dynamic smem: Kt::kSmemBytes.
template <typename Kt, typename T>
__global__ void __launch_bounds__(Kt::kThreads, 1) flash_fwd_sm90_kernel(const __grid_constant__ Sm90FwdParams P) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const Sm90Smem<Kt> smem{(smem_u32(smem_raw) + 1023u) & ~1023u};  // 128-byte swizzle atoms: 1024-aligned
  const int wg = threadIdx.x / 128;
  const int tid = threadIdx.x % 128;
#ifdef MINILLM_SM90_WATCHDOG
  if (blockIdx.x == 0 && threadIdx.x == 0)
    printf("sm90 kernel: grid %d smem base 0x%x barriers at 0x%x (q full/empty %d stages, then k full, k empty, "
           "v full, v empty x %d)\n", int(gridDim.x), smem.base, smem.q_full(0), Kt::kQStages, Kt::kStages);
#endif
  if (threadIdx.x == 0) smem.init_barriers();
  sm90::TileRing ring{smem.ring()};
  if (threadIdx.x == 0) ring.init(128 * Kt::kConsumers);
  __syncthreads();

  if (wg == 0) {
    sm90::setmaxnreg_dec<Kt::kProducerRegs>();
    if (tid >= 32) return;
    Sm90Producer<Kt, T>{P, smem, tid}.run(ring);
  } else {
    sm90::setmaxnreg_inc<Kt::kConsumerRegs>();
    Sm90Consumer<Kt, T>(P, smem, wg - 1, tid).run(ring);
  }
#else
  (void)P;
  __trap();  // built without sm_90a: flash_attention_forward never selects this kernel there
#endif
}

// ---- host side ----

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

// Encodes the tensor maps and launches flash_fwd_sm90_kernel<Kt, T>. Returns false, launching nothing,
// when a map cannot be encoded (e.g. a zero stride of a dim longer than 1). `paged`: the keys come from a
// paged cache (Sm90PagedKV; args.p varlen over the queries, seqlen_k the longest context).
template <typename Kt, typename T>
bool launch_flash_fwd_sm90(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream,
                           const Sm90PagedKV* paged = nullptr) {
  const FlashAttentionParams& p = args.p;
  const bool varlen = p.cu_seqlens_q != nullptr;
  Sm90FwdParams P{};
  P.args = args;
  if (paged != nullptr) P.paged = *paged;
  // Varlen: the maps cannot know the total row count (see the header); 2^31 - 1 rows.
  const int64_t q_rows = varlen ? INT_MAX : p.seqlen_q;
  const int64_t k_rows = varlen ? INT_MAX : p.seqlen_k;
  const int tma_batch = varlen ? 1 : p.batch;
  if (!encode_map(&P.q, p.dtype, p.q, Kt::kHeadDim, q_rows, p.q_row_stride, p.num_heads, p.q_head_stride, tma_batch,
                  p.q_batch_stride, Kt::kBlockM))
    return false;
  if (paged != nullptr) {  // the caches {D, rows, Hkv, 1}, one page per box; only the block tables' pages are read
    const int64_t rows = INT_MAX, row_stride = int64_t(p.num_kv_heads) * Kt::kHeadDim;
    if (!varlen || p.k == nullptr || p.v == nullptr ||
        !encode_map(&P.k, p.dtype, p.k, Kt::kHeadDim, rows, row_stride, p.num_kv_heads, Kt::kHeadDim, 1, 0, kPageSize) ||
        !encode_map(&P.v, p.dtype, p.v, Kt::kHeadDim, rows, row_stride, p.num_kv_heads, Kt::kHeadDim, 1, 0, kPageSize))
      return false;
  } else if (varlen || p.seqlen_k > 0) {  // otherwise no K/V tile is ever loaded (and k, v may be null)
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
  // of equal size (a small last group would leave its long causal rows to the end). Larger groups read
  // more DRAM bytes, which costs clock speed under the power limit; head dim 64 causal measured faster
  // with 24 MB groups (docs/HOPPER_ATTENTION.md).
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
bool launch_flash_fwd_sm90_any(const FlashFwdArgs& args, const Sm90Options& opt, cudaStream_t stream,
                               const Sm90PagedKV* paged = nullptr) {
  return args.p.dtype == DType::bf16 ? launch_flash_fwd_sm90<Kt, __nv_bfloat16>(args, opt, stream, paged)
                                     : launch_flash_fwd_sm90<Kt, __half>(args, opt, stream, paged);
}

}  // namespace minillm::cuda::attn
