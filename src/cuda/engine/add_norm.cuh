// One row's residual add + LayerNorm / RMSNorm by a whole block, the row staged in shared memory: the
// general add_norm kernel (add_norm.cu, one block per row) and the decode GEMM's add-norm tail
// (moe_decode.cu, the grid's last block over a few rows) both run it.
//
// v = x + sum_p delta[p] (fp32, parts in order), x = v (rounded; skipped when out aliases x or there is
// no delta), out = (v - mean) * rstd * w + b (RMSNorm: mean 0, b absent). LayerNorm's variance is the
// mean of (v - mean)^2 from the staged row (the stable two-pass form of the CPU reference). Reductions:
// block_sum, a fixed order (bitwise reproducible). delta is read through L2 (ld.global.cg): in the
// tail, other blocks of the same grid wrote it. 16-byte vectors when H % 8 == 0 and the rows are
// 16-byte aligned, else one element per thread and step.
#pragma once
#include "cuda/common.cuh"

namespace minillm::cuda::engine {

// row: [H] fp32 shared memory; red: [32] fp32 shared memory. All threads of the block call it.
template <typename T, bool kVectorized>
__device__ __forceinline__ void add_norm_row(T* xr, const T* dr, int parts, const float* __restrict__ w,
                                             const float* __restrict__ b, bool rmsnorm, float eps, T* outr,
                                             int64_t H, float* row, float* red) {
  constexpr int kVec = 8;
  const bool write_x = dr != nullptr && outr != xr;
  float sum = 0.f;
  if constexpr (kVectorized) {
    for (int64_t i = threadIdx.x * kVec; i < H; i += blockDim.x * kVec) {
      float v[kVec], d[kVec] = {};
      unpack8<T>(*reinterpret_cast<const uint4*>(xr + i), v);
      for (int pj = 0; dr && pj < parts; ++pj) {
        float e[kVec];
        unpack8<T>(__ldcg(reinterpret_cast<const uint4*>(dr + pj * H + i)), e);
#pragma unroll
        for (int j = 0; j < kVec; ++j) d[j] += e[j];
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        v[j] += d[j];
        row[i + j] = v[j];
        sum += v[j];
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      float d = 0.f;
      for (int pj = 0; dr && pj < parts; ++pj) d += to_f32(__ldcg(dr + pj * H + i));
      const float v = to_f32(xr[i]) + d;
      row[i] = v;
      sum += v;
    }
  }
  const float inv_h = 1.f / static_cast<float>(H);
  const float mean = rmsnorm ? 0.f : block_sum(sum, red) * inv_h;
  // Each thread re-reads only the elements it staged, so no barrier is needed before this pass.
  float sq = 0.f;
  if constexpr (kVectorized) {
    for (int64_t i = threadIdx.x * kVec; i < H; i += blockDim.x * kVec) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float d = row[i + j] - mean;
        sq += d * d;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      const float d = row[i] - mean;
      sq += d * d;
    }
  }
  const float rstd = rsqrtf(block_sum(sq, red) * inv_h + eps);
  if constexpr (kVectorized) {
    for (int64_t i = threadIdx.x * kVec; i < H; i += blockDim.x * kVec) {
      float xo[kVec], o[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        xo[j] = row[i + j];
        o[j] = (xo[j] - mean) * rstd * w[i + j] + (b ? b[i + j] : 0.f);
      }
      if (write_x) *reinterpret_cast<uint4*>(xr + i) = pack8<T>(xo);
      *reinterpret_cast<uint4*>(outr + i) = pack8<T>(o);
    }
  } else {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
      const float v = row[i];
      if (write_x) xr[i] = from_f32<T>(v);
      outr[i] = from_f32<T>((v - mean) * rstd * w[i] + (b ? b[i] : 0.f));
    }
  }
}

}  // namespace minillm::cuda::engine
