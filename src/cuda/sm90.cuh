// Hopper (sm_90a) PTX wrappers shared by our TMA + wgmma kernels: mbarriers, TMA (bulk tensor)
// loads and stores, proxy fences, named barriers, setmaxnreg, and wgmma (descriptors, fence / commit / wait and
// the m64nNk16 instructions for 16-bit inputs with fp32 accumulators).
//
// Shared-memory matrix descriptors (PTX ISA, "Matrix Descriptor Format"): bits 0-13 start address >> 4,
// 16-29 leading byte offset (LBO) >> 4, 32-45 stride byte offset (SBO) >> 4, 62-63 swizzle mode
// (1 = 128-byte). Both layouts below are what a TMA load with CU_TENSOR_MAP_SWIZZLE_128B writes for a
// box of {64 elements, rows}: rows of 128 bytes, the 16-byte chunks of row r XOR-ed with r % 8, every
// tile 1024-byte aligned (so the descriptors' base offset is 0).
//  - K-major (the reduction dim is contiguous): A = Q [rows][k], B = K [keys][k] for S = Q K^T. 8-row
//    core groups are SBO = 1024 bytes apart; LBO is unused; the 16-wide k slices of a 64-wide box are
//    addressed by adding 32 bytes per slice to the start address.
//  - MN-major (the output dim is contiguous; "transposed", tnspB = 1): B = V [keys][d] for O = P V,
//    where the reduction runs over keys. The 128-byte swizzle atom is 64 d-values x 8 keys; SBO = 1024
//    bytes between 8-key groups, LBO = the byte distance between two 64-wide d blocks (two TMA boxes:
//    keys * 128 bytes). A 16-key k slice starts 16 * 128 = 2048 bytes further.
// The wgmma operand lists below are mechanical (one "+f" per accumulator register).
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <type_traits>

#include "cuda/common.cuh"

namespace minillm::cuda::sm90 {

// ---- mbarrier ----

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
// Makes the initialised barriers visible to the async proxy (TMA) and the other threads.
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
// Arrives and adds `bytes` to the transaction count the current phase waits for (TMA completes them).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits until the phase of parity `parity` has completed. A fresh barrier is in phase 0, so waiting
// for parity 1 returns at once (the producer's first pass over "empty" barriers). Built with
// -DMINILLM_SM90_WATCHDOG, a wait longer than ~4 s prints the barrier and `tag` and traps (debugging).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity, int tag = 0) {
#ifdef MINILLM_SM90_WATCHDOG
  const long long t0 = clock64();
  while (!mbar_try_wait(bar, parity)) {
    if (clock64() - t0 > (1ll << 33)) {
      if (threadIdx.x % 32 == 0)
        printf("mbar_wait stuck: block %d thread %d barrier 0x%x parity %u tag %d\n", int(blockIdx.x),
               int(threadIdx.x), bar, parity, tag);
      __trap();
    }
  }
#else
  (void)tag;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra MBAR_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}

// ---- TMA ----

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// 4-D tile load global -> shared (coordinates innermost first), completing on mbarrier `bar`.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// 2-D tile load global -> shared (coordinates innermost first), completing on mbarrier `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
// 2-D tile store shared -> global (asynchronous, in the thread's bulk group; clipped at the tensor's extent).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's bulk groups still read their shared-memory source.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
// Orders this thread's generic-proxy shared-memory writes before later async-proxy (wgmma, TMA) reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// ---- named barriers (id 0 is __syncthreads) ----

__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- dynamic tile scheduling of a persistent, warp-specialised kernel ----
//
// The producer thread takes work tiles from a global counter (its first tile is blockIdx.x, the next
// ones gridDim.x + atomicAdd(counter, 1)), so that SMs that run faster take more tiles, and publishes
// each tile through a two-slot shared ring that every consumer thread reads: two ints, the tile id or
// what the producer already derived from it (so that the consumers do not repeat dependent global
// loads at the start of every tile). Shared memory: kTileRingBytes at an 8-byte aligned address.
constexpr int kTileRingBytes = 4 * 8 + 2 * 8;  // mbarriers full[2], empty[2], then int2 tile[2]

struct TileRing {
  uint32_t base;   // shared address of the ring
  uint32_t n = 0;  // tiles passed so far: slot n % 2, phase parity (n / 2) % 2
  __device__ uint32_t full(uint32_t s) const { return base + 8u * s; }
  __device__ uint32_t empty(uint32_t s) const { return base + 16u + 8u * s; }
  __device__ uint32_t tile(uint32_t s) const { return base + 32u + 8u * s; }
  // One thread, before the CTA's first barrier sync; `readers`: consumer threads that call next().
  __device__ void init(int readers) const {
    for (uint32_t s = 0; s < 2; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), readers);
    }
  }
  // Producer: hands tile (x, y) to the consumers once they have read the slot's previous one.
  __device__ void publish(int x, int y = 0) {
    const uint32_t s = n & 1u;
    mbar_wait(empty(s), ((n >> 1) & 1u) ^ 1u);
    asm volatile("st.shared.v2.b32 [%0], {%1, %2};" ::"r"(tile(s)), "r"(x), "r"(y) : "memory");
    mbar_arrive(full(s));
    ++n;
  }
  // Every consumer thread: the next tile.
  __device__ int2 next() {
    const uint32_t s = n & 1u;
    mbar_wait(full(s), (n >> 1) & 1u);
    int2 t;
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];" : "=r"(t.x), "=r"(t.y) : "r"(tile(s)) : "memory");
    mbar_arrive(empty(s));
    ++n;
    return t;
  }
};

// ---- register reallocation between warpgroups (needs a register cap: __launch_bounds__(n, 1)) ----

template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
}

// ---- wgmma ----

// Descriptor of a K-major, 128-byte-swizzled tile at shared address `addr` (see the header).
__device__ __forceinline__ uint64_t desc_k_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
// Descriptor of an MN-major, 128-byte-swizzled tile; `lbo` = bytes between 64-wide MN blocks.
__device__ __forceinline__ uint64_t desc_mn_sw128(uint32_t addr, uint32_t lbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}
// A descriptor advanced by `bytes` (start address field; shared addresses stay below 2^18, so the add
// never carries out of the low word: a 32-bit add, no carry chain into the high word).
__device__ __forceinline__ uint64_t desc_add(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Pins accumulator registers at this point of the program: the compiler may not move their reads
// above an earlier wgmma_wait (which has no register operands) or their writes below a later issue.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// Accumulator operand lists of the wgmma asm statements: "+f" for d[i .. i+7], then 32 / 48 / ... of them.
#define MINILLM_ACC8(d, i) \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define MINILLM_ACC32(d) MINILLM_ACC8(d, 0), MINILLM_ACC8(d, 8), MINILLM_ACC8(d, 16), MINILLM_ACC8(d, 24)
#define MINILLM_ACC64(d) MINILLM_ACC32(d), MINILLM_ACC8(d, 32), MINILLM_ACC8(d, 40), MINILLM_ACC8(d, 48), MINILLM_ACC8(d, 56)
#define MINILLM_ACC128(d) \
  MINILLM_ACC64(d), MINILLM_ACC8(d, 64), MINILLM_ACC8(d, 72), MINILLM_ACC8(d, 80), MINILLM_ACC8(d, 88), \
      MINILLM_ACC8(d, 96), MINILLM_ACC8(d, 104), MINILLM_ACC8(d, 112), MINILLM_ACC8(d, 120)

// m64n128k16, A and B from shared memory (K-major both), d: 64 fp32 per thread.
#define MINILLM_WGMMA_SS_N128(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" \
               "}, %64, %65, p, 1, 1, 0, 0;\n}\n" \
               : MINILLM_ACC64(d) \
               : "l"(da), "l"(db), "r"(scale_d))

// m64n256k16, A and B from shared memory (K-major both), d: 128 fp32 per thread.
#define MINILLM_WGMMA_SS_N256(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " {" \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63," \
               "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79," \
               "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95," \
               "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111," \
               "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127" \
               "}, %128, %129, p, 1, 1, 0, 0;\n}\n" \
               : MINILLM_ACC128(d) \
               : "l"(da), "l"(db), "r"(scale_d))

// m64n64k16, A from registers (4 x b16x2), B from shared memory MN-major (transposed), d: 32 fp32.
#define MINILLM_WGMMA_RS_N64(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
               "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n" \
               : MINILLM_ACC32(d) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d))

// m64n128k16, A from registers (4 x b16x2), B from shared memory MN-major (transposed), d: 64 fp32.
#define MINILLM_WGMMA_RS_N128(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" \
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31," \
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" \
               "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n" \
               : MINILLM_ACC64(d) \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d))


// d[64 x N] (+)= A[64 x 16] . B[N x 16]^T; A and B K-major in shared memory (descriptors da, db).
// scale_d = 0 overwrites d. Per thread: d[4 j + 2 h + e] = row 16 warp + lane / 4 + 8 h, column
// 8 j + 2 (lane % 4) + e of the warpgroup's 64 x N tile.
template <int N, typename T>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "16-bit inputs");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 128) {
    if constexpr (kBf16) MINILLM_WGMMA_SS_N128("bf16"); else MINILLM_WGMMA_SS_N128("f16");
  } else {
    static_assert(N == 256, "wgmma_ss: N in {128, 256} (add the instruction's operand list for others)");
    if constexpr (kBf16) MINILLM_WGMMA_SS_N256("bf16"); else MINILLM_WGMMA_SS_N256("f16");
  }
}

// d[64 x N] (+)= A[64 x 16] . B[16 x N]; A from registers in the m16n8k16 A-fragment layout per warp
// (a[0]: row lane / 4, k 2 (lane % 4) + {0, 1}; a[1]: row + 8; a[2]: k + 8; a[3]: row + 8, k + 8;
// warp w owns rows 16 w ..), B MN-major in shared memory (descriptor db, transposed: tnspB = 1).
template <int N, typename T>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db, int scale_d) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "16-bit inputs");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64) {
    if constexpr (kBf16) MINILLM_WGMMA_RS_N64("bf16"); else MINILLM_WGMMA_RS_N64("f16");
  } else {
    static_assert(N == 128, "wgmma_rs: N in {64, 128}");
    if constexpr (kBf16) MINILLM_WGMMA_RS_N128("bf16"); else MINILLM_WGMMA_RS_N128("f16");
  }
}

#undef MINILLM_ACC32
#undef MINILLM_ACC64
#undef MINILLM_ACC128
#undef MINILLM_ACC8
#undef MINILLM_WGMMA_SS_N128
#undef MINILLM_WGMMA_SS_N256
#undef MINILLM_WGMMA_RS_N64
#undef MINILLM_WGMMA_RS_N128

}  // namespace minillm::cuda::sm90
