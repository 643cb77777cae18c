// The Hopper FlashAttention forward kernel's static shape (flash_fwd_sm90.cuh): the traits of one
// instantiation (tile, pipeline depth, register split), the kernel's arguments, its shared-memory
// layout with the mbarriers of the Q and K/V pipelines, the named-barrier ids, and the pipeline
// position (stage, phase) that producer and consumers advance in step.
#pragma once
#include <cuda.h>

#include <cstdint>

#include "cuda/attention/flash_fwd_kernel.cuh"
#include "cuda/sm90.cuh"

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
  // Within a warpgroup, S_{j+1} = Q K_{j+1}^T is issued with O += P_j V_j (false: strictly in turn).
  static constexpr bool kOverlap = kOverlap_;
  // Between warpgroups, a token makes them issue their GEMMs in turn (false: no scheduling barrier).
  static constexpr bool kPingPong = kPingPong_;
  // exp2 of every kExp2Poly-th column pair of an unmasked S tile runs on the FMA pipe (exp2_poly)
  // instead of the MUFU (0: never). Head dim 64 does as many exponentials per tensor-core FLOP as the
  // MUFU (16/clk/SM) can serve at the tensor cores' peak rate; moving some to the FMA pipe unloads it.
  // The product runs 0 (the variants are dev/cuda/01_attention_sm90_ablation.cu's).
  static constexpr int kExp2Poly = kExp2Poly_;
  // Two P buffers (overlap, 2 consumers): the softmax of S_n packs P_n into one while O += P_{n+1}
  // V_{n+1} still reads the other, so that the packing leaves the warpgroup's critical chain. Needs
  // ~238 registers per consumer thread (232 granted: a few reloads from L1 per key block).
  static constexpr bool kDoubleP = kDoubleP_ && kOverlap_ && kConsumers_ == 2;
  static constexpr int kPBufs = kDoubleP ? 2 : 1;
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
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128");
  static_assert(kConsumers == 2 || kConsumers == 3, "2 or 3 consumer warpgroups");
  static_assert(kBlockN % 16 == 0 && kBlockN >= 32 && kBlockN <= 256,
                "kBlockN: k16 steps of O += P V, one TMA box, 4 partial row maxima");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA");
  static_assert(kProducerRegs + kConsumers * kConsumerRegs <= (65536 / kThreads) * (1 + kConsumers), "registers");
};

// Named barriers (id 0 is __syncthreads): consumer c (< 3) waits for its ping-pong turn on
// kPingPong + c (256 threads: its own warpgroup and the one passing the token) and syncs its epilogue's
// 128 threads on kEpilogue + c.
enum class Sm90Barrier : int { kPingPong = 1, kEpilogue = 4 };
__device__ __forceinline__ int barrier_id(Sm90Barrier b, int consumer) { return static_cast<int>(b) + consumer; }

// Kernel arguments. The tensor maps live in the kernel's parameter space (__grid_constant__).
// A paged KV cache as the K/V source (prefill over a cached prefix: minillm::cuda::paged_attention):
// args.p.k / .v are the caches [num_pages, kPageSize, Hkv, D]; key j of sequence b is row j % kPageSize
// of page block_table[b * max_pages + j / kPageSize], and sequence b has context_lens[b] keys. The
// queries are varlen (cu_seqlens_q); cu_seqlens_k is not read. block_table == nullptr: not paged.
struct Sm90PagedKV {
  const int32_t* block_table = nullptr;  // [batch, max_pages]
  const int32_t* context_lens = nullptr;  // [batch]
  int max_pages = 0;
};

struct Sm90FwdParams {
  CUtensorMap q, k, v;  // {D, rows, heads, batch}, boxes {64, kBlockM (q) or kBlockN (k, v; paged: kPageSize), 1, 1}
  FlashFwdArgs args;
  Sm90PagedKV paged;
  int num_m_blocks;  // ceil(seqlen_q / kBlockM)
  int num_bh;        // batch * num_heads
  int units_per_bh;  // work units per (batch, head): causal: pairs of m-blocks, else single m-blocks
  int group_bh;      // (batch, head) pairs per unit group
  int num_units;     // units_per_bh * num_bh
  unsigned* unit_counter;  // dynamic schedule: units taken beyond the first gridDim.x (nullptr: static)
};

// Shared memory of one CTA (base 1024-byte aligned for the 128-byte swizzle atoms):
//   Q [kQStages][kBlockM x D] | K [kStages][kBlockN x D] | V [kStages][kBlockN x D] |
//   O staging [kBlockM x D] | mbarriers: q full, q empty [kQStages], k full, k empty, v full, v empty
//   [kStages] | the work-unit ring.
// "full" completes on the producer's arrival with the TMA bytes; "empty" on lane 0 of every consumer
// warp.
template <typename Kt>
struct Sm90Smem {
  uint32_t base;
  __device__ __forceinline__ uint32_t q(int s) const { return base + s * Kt::kQBytes; }
  __device__ __forceinline__ uint32_t k(int s) const { return base + Kt::kOffK + s * Kt::kKVBytes; }
  __device__ __forceinline__ uint32_t v(int s) const { return base + Kt::kOffV + s * Kt::kKVBytes; }
  // Consumer c's 64 rows of the O staging tile.
  __device__ __forceinline__ uint32_t o(int c) const { return base + Kt::kOffO + c * 64 * Kt::kHeadDim * 2; }
  __device__ __forceinline__ uint32_t q_full(int s) const { return base + Kt::kOffBar + 8 * s; }
  __device__ __forceinline__ uint32_t q_empty(int s) const { return base + Kt::kOffBar + 8 * (Kt::kQStages + s); }
  __device__ __forceinline__ uint32_t k_full(int s) const { return kv_bar(s); }
  __device__ __forceinline__ uint32_t k_empty(int s) const { return kv_bar(Kt::kStages + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const { return kv_bar(2 * Kt::kStages + s); }
  __device__ __forceinline__ uint32_t v_empty(int s) const { return kv_bar(3 * Kt::kStages + s); }
  __device__ __forceinline__ uint32_t ring() const { return base + Kt::kOffRing; }

  // One thread, before the CTA's first barrier sync.
  __device__ __forceinline__ void init_barriers() const {
    for (int s = 0; s < Kt::kQStages; ++s) {
      sm90::mbar_init(q_full(s), 1);
      sm90::mbar_init(q_empty(s), 4 * Kt::kConsumers);
    }
    for (int s = 0; s < Kt::kStages; ++s) {
      sm90::mbar_init(k_full(s), 1);
      sm90::mbar_init(v_full(s), 1);
      sm90::mbar_init(k_empty(s), 4 * Kt::kConsumers);
      sm90::mbar_init(v_empty(s), 4 * Kt::kConsumers);
    }
    sm90::fence_barrier_init();
  }

 private:
  __device__ __forceinline__ uint32_t kv_bar(int i) const { return base + Kt::kOffBar + 16 * Kt::kQStages + 8 * i; }
};

// Position in a kStages-deep ring of mbarrier-guarded buffers: the stage, and the parity of the
// phase that the stage's "full" barrier completes next (its "empty" barrier: the other parity).
template <int kStages>
struct PipelineState {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

// The Q buffer of the count-th tile that a thread handles: buffer count % kQStages, phase parity
// (count / kQStages) % 2.
template <int kQStages>
struct QSlot {
  int slot;
  uint32_t phase;
  __device__ __forceinline__ static QSlot next(int& count) {
    const QSlot q{count % kQStages, (count / kQStages) & 1u};
    ++count;
    return q;
  }
};

}  // namespace minillm::cuda::attn
