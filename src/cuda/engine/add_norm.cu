// Fused residual add + LayerNorm / RMSNorm: one read of x and delta, one write of x and out.
//
// Algorithm (add_norm_rows_kernel, when H = 8 * kV * tpr with kV <= 4 and tpr a power of two):
// a row is held in registers by `tpr` threads, kV 16-byte vectors of x and of delta each (coalesced:
// vector j of lane l is vector j * tpr + l of the row), v = x + delta in fp32. LayerNorm: mean, then
// the variance as the mean of (v - mean)^2 from the registers (the stable two-pass form of the CPU
// reference, in fp32 here); RMSNorm: the mean of v^2. Reductions by warp shuffles (plus shared
// memory across the warps of a row when tpr > 32), in a fixed order: bitwise reproducible. Then
// x = v (rounded to bf16/fp16; skipped when out aliases x) and out = (v - mean) * rstd * w + b.
// 256 threads per block, 256 / tpr rows per block: H = 768 -> tpr 32, kV 3; 1024 -> 32, 4;
// 4096 -> 128, 4. Other H (not a multiple of 8, or no such split): add_norm_kernel, one block per
// row with the row in shared memory (add_norm_row, add_norm.cuh, which the decode GEMM's add-norm
// tail also runs).
// Layout: x, out [T, H] row-major bf16/fp16, delta [T, parts, H] (the MoE layer's k weighted expert
// rows per token, MoELayer::forward_pairs: their sum in fp32, slot order, is the row's delta; this
// replaces the MoE's separate combine pass), w, b [H] fp32.
// Cost: (1 + parts) reads + 1 or 2 writes of T x H x 2 bytes: bandwidth-bound. The kernel is
// specialised for 1 and 2 parts so that all loads of a row are in flight together (a runtime loop
// over the parts measured slower). Measurements: docs/REPORT.md.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/engine/add_norm.cuh"
#include "cuda/engine/ops.h"
#include "cuda/launch.cuh"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

constexpr int kVec = 8;  // 16-bit elements per 16-byte vector

template <typename T, bool kVectorized>
__global__ void add_norm_kernel(T* x, const T* __restrict__ delta, int parts, const float* __restrict__ w,
                                const float* __restrict__ b, bool rmsnorm, float eps, T* out, int64_t H) {
  extern __shared__ float row[];  // [H] fp32: v = x + delta
  __shared__ float red[32];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int64_t r = blockIdx.x;
  add_norm_row<T, kVectorized>(x + r * H, delta ? delta + r * parts * H : nullptr, parts, w, b, rmsnorm, eps,
                               out + r * H, H, row, red);
}

constexpr int kRowsThreads = 256;

// Sum over the `tpr` threads of a row (all threads of the block call it; tpr a power of two).
// red: [kRowsThreads / 32] floats of shared memory.
__device__ __forceinline__ float row_sum(float v, int tpr, float* red) {
  for (int o = (tpr < 32 ? tpr : 32) / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (tpr <= 32) return v;
  const int warp = threadIdx.x >> 5, wpr = tpr >> 5, first = warp / wpr * wpr;
  if ((threadIdx.x & 31) == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < wpr; ++i) s += red[first + i];
  __syncthreads();
  return s;
}

// kP: delta rows per token when 1 or 2 (all loads of a row independent, in flight together); 0: any
// count `parts`, loaded part by part.
template <typename T, int kV, int kP>
__global__ void __launch_bounds__(kRowsThreads)
    add_norm_rows_kernel(T* x, const T* __restrict__ delta, int parts, const float* __restrict__ w,
                         const float* __restrict__ b, bool rmsnorm, float eps, T* out, int64_t rows, int64_t H,
                         int tpr) {
  __shared__ float red[kRowsThreads / 32];
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int lane = threadIdx.x & (tpr - 1);
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kRowsThreads / tpr) + threadIdx.x / tpr;
  const bool active = r < rows;  // inactive threads still take part in the reductions
  if constexpr (kP > 0) parts = kP;
  // v = the row's delta (the sum of its `parts` rows, in order), then + x.
  float v[kV][kVec] = {};
  uint4 xv[kV];
#pragma unroll
  for (int j = 0; j < kV; ++j) {
    const int64_t i = (static_cast<int64_t>(j) * tpr + lane) * kVec;
    xv[j] = active ? *reinterpret_cast<const uint4*>(x + r * H + i) : make_uint4(0, 0, 0, 0);
  }
  if (delta && active) {
#pragma unroll(kP > 0 ? kP : 1)
    for (int pj = 0; pj < parts; ++pj) {
      uint4 dv[kV];
#pragma unroll
      for (int j = 0; j < kV; ++j)
        dv[j] = *reinterpret_cast<const uint4*>(delta + (r * parts + pj) * H + (static_cast<int64_t>(j) * tpr + lane) * kVec);
#pragma unroll
      for (int j = 0; j < kV; ++j) {
        const T* de = reinterpret_cast<const T*>(&dv[j]);
#pragma unroll
        for (int e = 0; e < kVec; ++e) v[j][e] += to_f32(de[e]);
      }
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kV; ++j) {
    const T* xe = reinterpret_cast<const T*>(&xv[j]);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      v[j][e] += to_f32(xe[e]);
      sum += v[j][e];
    }
  }
  const float inv_h = 1.f / static_cast<float>(H);
  const float mean = rmsnorm ? 0.f : row_sum(sum, tpr, red) * inv_h;
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < kV; ++j) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float d = v[j][e] - mean;
      sq += d * d;
    }
  }
  const float rstd = rsqrtf(row_sum(sq, tpr, red) * inv_h + eps);
  if (!active) return;
  const bool write_x = delta != nullptr && out != x;
#pragma unroll
  for (int j = 0; j < kV; ++j) {
    const int64_t i = (static_cast<int64_t>(j) * tpr + lane) * kVec;
    const float4 w0 = *reinterpret_cast<const float4*>(w + i), w1 = *reinterpret_cast<const float4*>(w + i + 4);
    float4 b0 = make_float4(0.f, 0.f, 0.f, 0.f), b1 = b0;
    if (b) b0 = *reinterpret_cast<const float4*>(b + i), b1 = *reinterpret_cast<const float4*>(b + i + 4);
    const float wv[kVec] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
    const float bv[kVec] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
    uint4 ov, xv;
    T* oe = reinterpret_cast<T*>(&ov);
    T* xe = reinterpret_cast<T*>(&xv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      xe[e] = from_f32<T>(v[j][e]);
      oe[e] = from_f32<T>((v[j][e] - mean) * rstd * wv[e] + bv[e]);
    }
    if (write_x) *reinterpret_cast<uint4*>(x + r * H + i) = xv;
    *reinterpret_cast<uint4*>(out + r * H + i) = ov;
  }
}

template <typename T, int kV>
void launch_rows(void* x, const void* delta, int parts, const float* w, const float* b, bool rmsnorm, float eps,
                 void* out, int64_t rows, int64_t H, int tpr, cudaStream_t stream) {
  const int64_t per_block = kRowsThreads / tpr;
  const unsigned blocks = static_cast<unsigned>((rows + per_block - 1) / per_block);
  auto kernel = parts == 1 ? add_norm_rows_kernel<T, kV, 1>
                : parts == 2 ? add_norm_rows_kernel<T, kV, 2>
                             : add_norm_rows_kernel<T, kV, 0>;
  cuda::launch(kernel, blocks, kRowsThreads, 0, stream, static_cast<T*>(x), static_cast<const T*>(delta), parts, w, b,
               rmsnorm, eps, static_cast<T*>(out), rows, H, tpr);
}

template <typename T>
void launch(void* x, const void* delta, int parts, const float* w, const float* b, bool rmsnorm, float eps, void* out,
            int64_t T_rows, int64_t H, cudaStream_t stream) {
  if (H % kVec == 0) {  // registers: the row split as H = 8 * kV * tpr
    const int64_t nv = H / kVec;
    for (int tpr = 1; tpr <= kRowsThreads; tpr *= 2) {
      if (nv % tpr != 0 || nv / tpr > 4) continue;
      switch (nv / tpr) {
        case 1: return launch_rows<T, 1>(x, delta, parts, w, b, rmsnorm, eps, out, T_rows, H, tpr, stream);
        case 2: return launch_rows<T, 2>(x, delta, parts, w, b, rmsnorm, eps, out, T_rows, H, tpr, stream);
        case 3: return launch_rows<T, 3>(x, delta, parts, w, b, rmsnorm, eps, out, T_rows, H, tpr, stream);
        default: return launch_rows<T, 4>(x, delta, parts, w, b, rmsnorm, eps, out, T_rows, H, tpr, stream);
      }
    }
  }
  const bool vec = H % kVec == 0;
  const int threads = static_cast<int>(std::clamp<int64_t>((H / kVec + 31) / 32 * 32, 32, 512));
  const size_t smem = static_cast<size_t>(H) * sizeof(float);
  auto kernel = vec ? add_norm_kernel<T, true> : add_norm_kernel<T, false>;
  if (smem > 48 * 1024) {
    if (vec) {
      set_max_dynamic_smem<add_norm_kernel<T, true>>(static_cast<int>(smem));
    } else {
      set_max_dynamic_smem<add_norm_kernel<T, false>>(static_cast<int>(smem));
    }
  }
  cuda::launch(kernel, static_cast<unsigned>(T_rows), threads, smem, stream, static_cast<T*>(x),
               static_cast<const T*>(delta), parts, w, b, rmsnorm, eps, static_cast<T*>(out), H);
}

}  // namespace

void add_norm(DType dtype, void* x, const void* delta, int delta_parts, const float* w, const float* b, bool rmsnorm,
              float eps, void* out, int64_t T, int64_t H, cudaStream_t stream) {
  if (T <= 0 || H <= 0) return;
  MINILLM_CHECK(delta_parts >= 1 && delta_parts <= 8, "add_norm: delta_parts = " << delta_parts << " must be in [1, 8]");
  if (dtype == DType::bf16) {
    launch<__nv_bfloat16>(x, delta, delta_parts, w, b, rmsnorm, eps, out, T, H, stream);
  } else {
    launch<__half>(x, delta, delta_parts, w, b, rmsnorm, eps, out, T, H, stream);
  }
}

}  // namespace minillm::cuda::engine
