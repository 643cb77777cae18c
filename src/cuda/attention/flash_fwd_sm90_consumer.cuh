// Consumers of the Hopper FlashAttention forward kernel (flash_fwd_sm90.cuh): warpgroup c (of
// kConsumers) owns rows [64 c, 64 c + 64) of every work tile.
//
// Per tile: wait for Q; release, without computing, the key blocks that none of the warpgroup's rows
// sees (causal); then the mainloop over the key blocks, highest first:
//   S = Q K_n^T    wgmma m64n{kBlockN}k16, A = Q and B = K from shared memory (K-major)
//   softmax        Sm90Softmax::online (fp32 registers), P packed to 16 bits as the register A operand
//   O += P V_n     wgmma m64n{D}k16, B = V from shared memory, MN-major (tnspB)
// kOverlap: S_n = Q K_n^T and O += P_{n+1} V_{n+1} are in flight together and the softmax of S_n runs
// under the PV GEMM (overlap_step); kPingPong: the warpgroups pass a named-barrier token so that they
// issue their GEMMs in turn and one's softmax runs under the other's GEMMs. Epilogue: O / l -> 16-bit
// -> the warpgroup's staging rows in shared memory (16-byte chunks XOR-swizzled by row) -> 16-byte
// stores of the rows that exist; lse = m * scale + ln(l).
#pragma once
#include "cuda/attention/flash_fwd_sm90_scheduler.cuh"
#include "cuda/attention/flash_fwd_sm90_softmax.cuh"
#include "cuda/attention/flash_fwd_sm90_traits.cuh"

namespace minillm::cuda::attn {

template <typename Kt, typename T>
struct Sm90Consumer {
  static constexpr int D = Kt::kHeadDim, BM = Kt::kBlockM, BN = Kt::kBlockN, kPBufs = Kt::kPBufs;

  const Sm90FwdParams& P;
  const Sm90Smem<Kt>& smem;
  int c, tid, warp, lane, quad_row, quad_col;  // accumulator rows 16 warp + quad_row (+ 8)
  float s[BN / 2];                    // S tile (64 x BN per warpgroup), then P in fp32
  float o[D / 2];                     // O accumulator (64 x D per warpgroup)
  uint32_t pa[kPBufs][BN / 16][4];    // P as the A operand of the k16 steps of O += P V
  Sm90Softmax<Kt, T> softmax;
  uint64_t desc_q0 = 0;               // this warpgroup's rows of the current Q buffer
  PipelineState<Kt::kStages> kv;      // the next K/V stage to read
  int q_count = 0;
  int n_unmasked_end = 0;             // the current tile's blocks ending beyond it need the mask
  int key_limit[2];                   // keys < key_limit[h] are visible to this thread's row h

  __device__ __forceinline__ Sm90Consumer(const Sm90FwdParams& P_, const Sm90Smem<Kt>& smem_, int c_, int tid_)
      : P(P_), smem(smem_), c(c_), tid(tid_), warp(tid_ / 32), lane(tid_ % 32), quad_row(lane / 4), quad_col(lane % 4) {
    softmax.scale_log2 = P.args.scale_log2;
  }

  // ---- ping-pong: consumer c issues its GEMMs after consumer c - 1 (mod kConsumers) issued its own ----
  __device__ __forceinline__ void sched_wait() const {
    if constexpr (Kt::kPingPong) sm90::named_bar_sync(barrier_id(Sm90Barrier::kPingPong, c), 256);
  }
  __device__ __forceinline__ void sched_pass() const {
    if constexpr (Kt::kPingPong)
      sm90::named_bar_arrive(barrier_id(Sm90Barrier::kPingPong, (c + 1) % Kt::kConsumers), 256);
  }

  // ---- the two GEMMs and the register work around them ----
  __device__ __forceinline__ void issue_qk(int st) {
    const uint64_t desc_k0 = sm90::desc_k_sw128(smem.k(st));
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t q_off = (kk / 4) * BM * 128 + (kk % 4) * 32;
      const uint32_t k_off = (kk / 4) * BN * 128 + (kk % 4) * 32;
      sm90::wgmma_ss<BN, T>(s, sm90::desc_add(desc_q0, q_off), sm90::desc_add(desc_k0, k_off), kk > 0 ? 1 : 0);
    }
    sm90::wgmma_commit();
  }
  template <int kBuf>
  __device__ __forceinline__ void issue_pv(int st) {
    const uint64_t desc_v0 = sm90::desc_mn_sw128(smem.v(st), BN * 128);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) sm90::wgmma_rs<D, T>(o, pa[kBuf][kk], sm90::desc_add(desc_v0, kk * 16 * 128), 1);
    sm90::wgmma_commit();
  }
  __device__ __forceinline__ void convert_p() {  // P (fp32, in s) -> pa[0]
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pa[0][kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
      pa[0][kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
      pa[0][kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
      pa[0][kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
  }
  __device__ __forceinline__ void rescale_o(const float (&corr)[2]) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * j + e] *= corr[e >> 1];
  }

  // The softmax of block n (P to pa[kBuf] when kPack, else into s). kFuse (no GEMM in flight): O is
  // rescaled here too, in the same basic block.
  template <bool kMask, bool kFuse, int kBuf, bool kPack>
  __device__ __forceinline__ void softmax_step(int n, float (&corr)[2]) {
    softmax.template online<kMask, kPack>(s, pa[kBuf], n, key_limit, quad_col, corr);
    if constexpr (kFuse) rescale_o(corr);
  }
  template <bool kFuse, int kBuf, bool kPack>
  __device__ __forceinline__ void softmax_block(int n, float (&corr)[2]) {
    if ((n + 1) * BN > n_unmasked_end) {
      softmax_step<true, kFuse, kBuf, kPack>(n, corr);
    } else {
      softmax_step<false, kFuse, kBuf, kPack>(n, corr);
    }
  }

  // S = Q K^T of the block in the current stage with nothing else in flight: wait for K, take the
  // ping-pong turn for the GEMM (kTurn; the serial loop takes its turn around the softmax instead),
  // wait for it and give K's stage back.
  template <bool kTurn>
  __device__ __forceinline__ void qk_alone(int tag) {
    sm90::mbar_wait(smem.k_full(kv.stage), kv.phase, tag);
    if constexpr (kTurn) sched_wait();
    issue_qk(kv.stage);
    if constexpr (kTurn) sched_pass();
    sm90::wgmma_wait<0>();
    sm90::fence_regs(s);
    if (lane == 0) sm90::mbar_arrive(smem.k_empty(kv.stage));
  }
  // O += P V of the block in stage v.stage with nothing else in flight: wait for V, run the GEMM, give
  // V's stage back.
  template <int kBuf>
  __device__ __forceinline__ void pv_alone(const PipelineState<Kt::kStages>& v, int tag) {
    sm90::mbar_wait(smem.v_full(v.stage), v.phase, tag);
    issue_pv<kBuf>(v.stage);
    sm90::wgmma_wait<0>();
    sm90::fence_regs(o);
    if (lane == 0) sm90::mbar_arrive(smem.v_empty(v.stage));
  }

  // ---- mainloops ----

  // S_n = Q K_n^T and O += P_{n+1} V_{n+1} (P in buffer kCur, V in stage v) in flight together; the
  // softmax of S_n runs under the PV GEMM and writes P_n into the other buffer (one buffer: into s,
  // converted once the PV GEMM is done). v moves on to block n's stage.
  template <int kCur>
  __device__ __forceinline__ void overlap_step(int n, float (&corr)[2], PipelineState<Kt::kStages>& v) {
    constexpr int kNext = (kCur + 1) % kPBufs;
    sm90::mbar_wait(smem.k_full(kv.stage), kv.phase, 13);
    sched_wait();
    issue_qk(kv.stage);
    sm90::mbar_wait(smem.v_full(v.stage), v.phase, 14);
    issue_pv<kCur>(v.stage);
    sched_pass();
    sm90::wgmma_wait<1>();  // S done (O += P V may still run)
    sm90::fence_regs(s);
    if (lane == 0) sm90::mbar_arrive(smem.k_empty(kv.stage));
    softmax_block<false, kNext, kPBufs == 2>(n, corr);
    sm90::wgmma_wait<0>();  // O += P V done: its P buffer and V's stage are free
    sm90::fence_regs(o);
    if (lane == 0) sm90::mbar_arrive(smem.v_empty(v.stage));
    if (__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) rescale_o(corr);  // rarely
    if constexpr (kPBufs == 1) convert_p();
    v = kv;
    kv.advance();
  }

  // Blocks n_top .. 0 with intra-warpgroup overlap; q_slot's buffer is released after the last S GEMM.
  __device__ __forceinline__ void mainloop_overlap(int n_top, int q_slot) {
    float corr[2];
    // Block n_top alone: S, softmax, P into buffer 0.
    qk_alone<true>(12);
    softmax_block<false, 0, true>(n_top, corr);
    PipelineState<Kt::kStages> v = kv;
    kv.advance();
    if constexpr (kPBufs == 2) {
      int n = n_top - 1;
      for (; n >= 1; n -= 2) {  // two blocks per trip: the buffers trade places
        overlap_step<0>(n, corr, v);
        overlap_step<1>(n - 1, corr, v);
      }
      const bool last = n == 0;  // one block left: its P ends in buffer 1
      if (last) overlap_step<0>(0, corr, v);
      if (lane == 0) sm90::mbar_arrive(smem.q_empty(q_slot));  // the last S GEMM of this tile is complete
      if (last) {
        pv_alone<1>(v, 15);
      } else {
        pv_alone<0>(v, 15);
      }
    } else {
      for (int n = n_top - 1; n >= 0; --n) overlap_step<0>(n, corr, v);
      if (lane == 0) sm90::mbar_arrive(smem.q_empty(q_slot));  // the last S GEMM of this tile is complete
      pv_alone<0>(v, 15);
    }
  }

  // Without overlap the ping-pong token guards the softmax instead of the GEMMs: one warpgroup
  // exponentiates (the MUFU-bound phase) while the other's GEMMs run.
  __device__ __forceinline__ void mainloop_serial(int n_top, int q_slot) {
    float corr[2];
    for (int n = n_top; n >= 0; --n) {
      qk_alone<false>(0);
      sched_wait();
      softmax_block<true, 0, true>(n, corr);
      sched_pass();
      pv_alone<0>(kv, 0);
      kv.advance();
    }
    if (lane == 0) sm90::mbar_arrive(smem.q_empty(q_slot));
  }

  // Causal: the first blocks (highest keys) may be beyond every row of this warpgroup (192-row tiles,
  // or rows past the sequence's end): release them without computing, passing the ping-pong token as
  // a computed block would. Returns n_top, the highest block this warpgroup computes (-1: none).
  __device__ __forceinline__ int skip_invisible_blocks(const Sm90Tile& ti, int row0, int diag) {
    int n_top = ti.n_blocks - 1;
    if (P.args.p.causal) {
      const int last_row = min(row0 + 63, ti.seqlen_q - 1);
      const int key_end = last_row < row0 ? 0 : min(ti.seqlen_k, last_row + diag + 1);
      n_top = min(n_top, key_end > 0 ? (key_end + BN - 1) / BN - 1 : -1);  // (no negative division)
    }
    for (int n = ti.n_blocks - 1; n > n_top; --n) {
      sm90::mbar_wait(smem.k_full(kv.stage), kv.phase, 16);
      if (lane == 0) sm90::mbar_arrive(smem.k_empty(kv.stage));
      sm90::mbar_wait(smem.v_full(kv.stage), kv.phase, 17);
      if (lane == 0) sm90::mbar_arrive(smem.v_empty(kv.stage));
      sched_wait();
      sched_pass();
      kv.advance();
    }
    return n_top;
  }

  // ---- epilogue: O / l through this warpgroup's staging rows [64][D] (chunks ^ row % 8) ----
  __device__ __forceinline__ void epilogue(const Sm90Tile& ti, int row0) {
    const FlashAttentionParams& p = P.args.p;
    const bool varlen = p.cu_seqlens_q != nullptr;
    const uint32_t sOc = smem.o(c);
    const int bar = barrier_id(Sm90Barrier::kEpilogue, c);
    sm90::named_bar_sync(bar, 128);  // the previous tile's reads of sOc are done
    const int64_t lse_off = varlen ? int64_t(ti.q_tok0) : int64_t(ti.batch) * p.lse_batch_stride;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = softmax.row_total(h);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = 16 * warp + quad_row + 8 * h;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        const uint32_t addr = sOc + r * D * 2 + ((j ^ (r & 7)) << 4) + quad_col * 4;
        st_shared_u32(addr, pack2<T>(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv));
      }
      if (p.lse != nullptr && quad_col == 0 && row0 + r < ti.seqlen_q)
        p.lse[lse_off + int64_t(ti.head) * p.lse_head_stride + row0 + r] = softmax.lse(h, l, P.args.scale);
    }
    sm90::named_bar_sync(bar, 128);
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
  }

  // ---- one work tile ----
  __device__ __forceinline__ void compute_tile(const Sm90Tile& ti) {
    const bool causal = P.args.p.causal;
    const int m0 = ti.m_block * BM;
    const QSlot<Kt::kQStages> q = QSlot<Kt::kQStages>::next(q_count);
    desc_q0 = sm90::desc_k_sw128(smem.q(q.slot) + c * 64 * 128);
    const int row0 = m0 + 64 * c;                // this warpgroup's first row (within the sequence)
    const int diag = ti.seqlen_k - ti.seqlen_q;  // query i sees keys j <= i + diag (causal)
    n_unmasked_end = causal ? min(ti.seqlen_k, row0 + diag + 1) : ti.seqlen_k;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + 16 * warp + quad_row + 8 * h;
      key_limit[h] = causal ? min(ti.seqlen_k, row + diag + 1) : ti.seqlen_k;
    }
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    softmax.reset();

    sm90::mbar_wait(smem.q_full(q.slot), q.phase, 11);
    const int n_top = skip_invisible_blocks(ti, row0, diag);
    if (n_top >= 0) {
      if constexpr (Kt::kOverlap) {
        mainloop_overlap(n_top, q.slot);
      } else {
        mainloop_serial(n_top, q.slot);
      }
    } else {
      if (lane == 0) sm90::mbar_arrive(smem.q_empty(q.slot));  // no key: o = 0, lse = -inf
    }
    epilogue(ti, row0);
  }

  // The consumer warpgroup's whole life: every tile that the producer publishes.
  __device__ __forceinline__ void run(sm90::TileRing& ring) {
    if constexpr (Kt::kPingPong) {
      if (c == Kt::kConsumers - 1) sm90::named_bar_arrive(barrier_id(Sm90Barrier::kPingPong, 0), 256);  // 0 first
    }
    for_each_tile<BM, BN>(P, [&] { return ring.next().x; }, [&](const Sm90Tile& ti) { compute_tile(ti); });
    if constexpr (Kt::kPingPong) {
      if (c == 0) sm90::named_bar_sync(barrier_id(Sm90Barrier::kPingPong, 0), 256);  // the last token passed to 0
    }
  }
};

}  // namespace minillm::cuda::attn
