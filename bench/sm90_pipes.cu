// Microbenchmarks behind docs/HOPPER_ATTENTION.md ("Where a head-dim-128 iteration's cycles go"):
// 1. issue cost of MUFU.EX2, FFMA, FMNMX, F2FP, FADD per SM sub-partition (132 CTAs of 4 or 8 warps,
//    16 independent chains per thread); 2. the slowdown of a softmax-like loop (max tree over 64
//    values, 64 x FFMA + MUFU.EX2 + FADD) while the other warpgroup of the CTA runs back-to-back
//    HGMMA.64x128x16 (SS, RS or both) on garbage shared memory. H100, CUDA 13: MUFU.EX2 8 cycles per
//    warp instruction, FMNMX and F2FP 2, FFMA and FADD 1; softmax loop 772 cycles alone, 1036-1258
//    next to the HGMMA loops.
//   nvcc -gencode arch=compute_90a,code=sm_90a -O3 -std=c++20 -Isrc -Iinclude -o sm90_pipes bench/sm90_pipes.cu
#include <cstdio>
#include <cuda_bf16.h>
#include "cuda/sm90.cuh"
using namespace minillm::cuda::sm90;
using T = __nv_bfloat16;

template <int OP>
__global__ void pipe_kernel(float* out, long long* cyc, int iters) {
  float v[16];
  for (int i = 0; i < 16; ++i) v[i] = threadIdx.x * 1e-3f + i * 1e-4f - 0.5f;
  __syncthreads();
  long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      if (OP == 0) asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(v[i]));
      if (OP == 1) v[i] = fmaf(v[i], 0.999f, 0.001f);
      if (OP == 2) v[i] = fmaxf(v[i], v[(i + 1) % 16]);
      if (OP == 3) { __nv_bfloat162 b = __floats2bfloat162_rn(v[i], v[(i+1)%16]); v[i] = __int_as_float(*(int*)&b); }
      if (OP == 4) asm volatile("max.ftz.f32 %0, %0, %1;" : "+f"(v[i]) : "f"(v[(i + 1) % 16]));
      if (OP == 5) v[i] = v[i] + v[(i + 1) % 16];
      if (OP == 6) asm volatile("add.ftz.f32 %0, %0, %1;" : "+f"(v[i]) : "f"(v[(i + 1) % 16]));
    }
  }
  long long t1 = clock64();
  float s = 0; for (int i = 0; i < 16; ++i) s += v[i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x % 32 == 0) cyc[blockIdx.x * 32 + threadIdx.x / 32] = t1 - t0;
}
__global__ void __launch_bounds__(256, 1) interf(int mode, long long* out, float* sink, int iters) {
  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t base = (smem_u32(smem) + 1023u) & ~1023u;
  for (int i = threadIdx.x; i < 48 * 1024 / 4; i += blockDim.x)
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(base + 4 * i), "r"(0x3c003c00u));
  __shared__ volatile int done;
  if (threadIdx.x == 0) done = 0;
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    if (mode == 0) return;
    float acc[64];
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    uint32_t a[8][4];
    for (int i = 0; i < 8; ++i) for (int j = 0; j < 4; ++j) a[i][j] = 0x3c003c00u + threadIdx.x;
    const uint64_t da = desc_k_sw128(base), db = desc_k_sw128(base + 16384);
    const uint64_t dv = desc_mn_sw128(base + 16384, 128 * 128);
    long long t0 = clock64();
    int n = 0;
    for (;;) {
      int stop = 0;
      asm volatile("{ .reg .pred p, q; setp.ne.s32 q, %1, 0; bar.red.or.pred p, 1, 128, q; selp.s32 %0, 1, 0, p; }"
                   : "=r"(stop) : "r"(int(done)));
      if (stop) break;
      wgmma_fence();
      if (mode == 1 || mode == 3) {
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) wgmma_ss<128, T>(acc, desc_add(da, kk * 32), desc_add(db, kk * 32), 1);
      }
      if (mode == 2 || mode == 3) {
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) wgmma_rs<128, T>(acc, a[kk], desc_add(dv, kk * 16 * 128), 1);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc);
      ++n;
    }
    long long t1 = clock64();
    float s = 0; for (int i = 0; i < 64; ++i) s += acc[i];
    sink[blockIdx.x * blockDim.x + threadIdx.x] = s;
    if (threadIdx.x == 0) { out[blockIdx.x * 4 + 2] = t1 - t0; out[blockIdx.x * 4 + 3] = n; }
  } else {
    float v[64];
    for (int i = 0; i < 64; ++i) v[i] = (threadIdx.x % 7) * 0.1f + i * 0.01f;
    float tot = 0.f;
    long long t0 = clock64();
    for (int it = 0; it < iters; ++it) {
      float p[4];
      for (int t = 0; t < 4; ++t) p[t] = fmaxf(v[t], v[t + 4]);
#pragma unroll
      for (int j = 8; j < 64; j += 4)
        for (int t = 0; t < 4; ++t) p[t] = fmaxf(p[t], v[j + t]);
      float m = fmaxf(fmaxf(p[0], p[1]), fmaxf(p[2], p[3]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int j = 0; j < 64; ++j) {
        float x = fmaf(v[j], 1.4426950f, -m);
        asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(x));
        v[j] = x * 0.5f + 0.25f;
        if (j % 2) s0 += x; else s1 += x;
      }
      tot += s0 + s1;
    }
    long long t1 = clock64();
    if (threadIdx.x == 128) done = 1;
    sink[blockIdx.x * blockDim.x + threadIdx.x] = tot + v[threadIdx.x % 64];
    if (threadIdx.x == 128) { out[blockIdx.x * 4 + 0] = t1 - t0; out[blockIdx.x * 4 + 1] = iters; }
  }
}
static int pipes() {
  float* out; long long* cyc; cudaMalloc(&out, 1 << 24); cudaMalloc(&cyc, 1 << 20);
  const char* names[] = {"MUFU.EX2", "FFMA", "FMNMX", "F2FP", "FMNMX.FTZ", "FADD", "FADD.FTZ"};
  for (int op = 0; op < 7; ++op)
    for (int warps = 4; warps <= 8; warps *= 2) {
      int iters = 2000;
      void (*ks[])(float*, long long*, int) = {pipe_kernel<0>, pipe_kernel<1>, pipe_kernel<2>, pipe_kernel<3>, pipe_kernel<4>, pipe_kernel<5>, pipe_kernel<6>};
      auto kern = ks[op];
      kern<<<132, 32 * warps>>>(out, cyc, iters);
      kern<<<132, 32 * warps>>>(out, cyc, iters);
      cudaDeviceSynchronize();
      long long h[32]; cudaMemcpy(h, cyc, sizeof(h), cudaMemcpyDeviceToHost);
      double c = 0; for (int w = 0; w < warps; ++w) c = c > h[w] ? c : h[w];
      double per = c / (iters * 16.0);  // clk per warp-instruction per warp
      int per_smsp = warps < 4 ? 1 : warps / 4;
      printf("%-9s warps/CTA %2d: %.2f clk per instr per warp -> %.2f clk per warp-instr per SMSP\n", names[op], warps, per, per / per_smsp);
    }
    return 0;
}

static int interference() {
  long long* out; float* sink;
  cudaMalloc(&out, 1 << 16); cudaMalloc(&sink, 1 << 20);
  cudaFuncSetAttribute(interf, cudaFuncAttributeMaxDynamicSharedMemorySize, 50 * 1024);
  const char* names[] = {"WG0 idle", "WG0 SS 8 HGMMA loop", "WG0 RS 8 HGMMA loop", "WG0 SS+RS 16 HGMMA loop"};
  for (int mode = 0; mode < 4; ++mode) {
    const int iters = 2000;
    interf<<<132, 256, 50 * 1024>>>(mode, out, sink, iters);
    interf<<<132, 256, 50 * 1024>>>(mode, out, sink, iters);
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) { printf("error %s\n", cudaGetErrorString(e)); return 1; }
    long long h[4]; cudaMemcpy(h, out, sizeof(h), cudaMemcpyDeviceToHost);
    printf("%-26s softmax block: %7.1f clk", names[mode], double(h[0]) / iters);
    if (mode) printf("   | HGMMA: %6.1f clk per m64n128k16", double(h[2]) / h[3] / (mode == 3 ? 16 : 8));
    printf("\n");
  }
    return 0;
}

int main() { return pipes() || interference(); }
