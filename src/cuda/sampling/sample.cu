// Device sampling: one thread block per logits row, every step of src/engine/sampler.h in one
// kernel (logprobs of the raw logits, penalties, temperature, top-k, top-p, min-p, Gumbel-max
// draw with per-token Philox noise).
//
// Layout: logits [R, V] fp32 row-major (the LM head writes fp32 for the sampled rows); params [R];
// penalty entries [P] with each row's range in its params. A row's threads stride over the
// vocabulary (thread j reads i = j, j + blockDim, ...), which keeps loads coalesced; the row stays
// in L2 between passes (V * 4 bytes: 0.6 MB at V = 151936).
// Thresholds: top-k and top-p are found by a bitwise search over the order-preserving keys of
// z = l / T: 32 passes per threshold, each a count or an exp-sum over the row and a block reduction
// (warp shuffles then one warp over the per-warp partials: a fixed tree, so the same inputs give
// the same bits every run). Rows without top-k / top-p skip those passes. The log-sum-exp and the
// raw argmax come from one pass (online: a running max and its sum of exp; 16-byte loads), which is
// all a greedy row without penalties needs. Argmax ties go to the lower token id, like the CPU
// reference (src/cpu/sampling.cpp), which sums in double; thresholds at exact ties of mass can differ
// from it in the last bit, the distribution is the same.
#include <cfloat>

#include "cuda/launch.cuh"
#include "cuda/sampling/sample.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::sampling {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

struct ArgMax {
  float v;
  int32_t i;
};

// a better than b: larger value, ties to the lower index (-1: none).
__device__ __forceinline__ bool better(const ArgMax& a, const ArgMax& b) {
  if (a.i < 0) return false;
  if (b.i < 0) return true;
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

__device__ ArgMax block_argmax(ArgMax x, ArgMax* red) {
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax y{__shfl_xor_sync(0xffffffffu, x.v, o), __shfl_xor_sync(0xffffffffu, x.i, o)};
    if (better(y, x)) x = y;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = lane < kWarps ? red[lane] : ArgMax{-FLT_MAX, -1};
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax y{__shfl_xor_sync(0xffffffffu, x.v, o), __shfl_xor_sync(0xffffffffu, x.i, o)};
    if (better(y, x)) x = y;
  }
  __syncthreads();
  return x;
}

// op over the block (every thread gets the result); `identity` fills the lanes beyond the warps.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* red, Op op, T identity) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < kWarps ? red[lane] : identity;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

// Online log-sum-exp state: the max m and sum of exp(x - m) over the elements seen.
struct Lse {
  float m, s;
};

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

// One pass over a row: its log-sum-exp and its argmax (ties to the lower id), block-wide. 16-byte
// loads when the row allows (each thread takes 4 consecutive logits per step), else one per step.
__device__ void row_stats(const float* row, int V, Lse* red_l, ArgMax* red_am, float& lse, ArgMax& arg) {
  Lse st{-FLT_MAX, 0.f};
  ArgMax best{-FLT_MAX, -1};
  auto take = [&](float x, int i) {
    if (x > st.m) {
      st.s = st.s * __expf(st.m - x) + 1.f;
      st.m = x;
    } else {
      st.s += __expf(x - st.m);
    }
    const ArgMax c{x, i};
    if (better(c, best)) best = c;
  };
  int tail = 0;
  if (V % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int i = threadIdx.x; i < V / 4; i += kThreads) {
      const float4 v = row4[i];
      take(v.x, 4 * i), take(v.y, 4 * i + 1), take(v.z, 4 * i + 2), take(v.w, 4 * i + 3);
    }
    tail = V;
  }
  for (int i = tail + threadIdx.x; i < V; i += kThreads) take(row[i], i);
  // Block reduction in a fixed tree (warp butterflies, then one warp over the warps' partials).
  for (int o = 16; o > 0; o >>= 1) st = lse_merge(st, Lse{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)});
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red_l[warp] = st;
  __syncthreads();
  st = lane < kWarps ? red_l[lane] : Lse{-FLT_MAX, 0.f};
  for (int o = 16; o > 0; o >>= 1) st = lse_merge(st, Lse{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)});
  __syncthreads();
  lse = st.m + logf(st.s);
  arg = block_argmax(best, red_am);
}

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__global__ void __launch_bounds__(kThreads) sample_kernel(float* __restrict__ logits, int V, SampleArgs a) {
  __shared__ ArgMax red_am[kWarps];
  __shared__ Lse red_l[kWarps];
  __shared__ float red_f[kWarps];
  __shared__ int red_i[kWarps];
  __shared__ float chosen_raw;
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int r = blockIdx.x;
  float* row = logits + static_cast<int64_t>(r) * V;  // [V]
  const SampleRowParams p = a.params[r];
  const int tid = threadIdx.x;

  // 1. log-sum-exp, argmax (one pass) and top n of the raw logits.
  float lse;
  ArgMax raw_arg;
  row_stats(row, V, red_l, red_am, lse, raw_arg);
  ArgMax prev{FLT_MAX, -1};
  for (int j = 0; j < a.n_top; ++j) {
    ArgMax best{-FLT_MAX, -1};
    for (int i = tid; i < V; i += kThreads) {
      const float v = row[i];
      if (prev.i >= 0 && (v > prev.v || (v == prev.v && i <= prev.i))) continue;
      const ArgMax c{v, i};
      if (better(c, best)) best = c;
    }
    best = block_argmax(best, red_am);
    if (tid == 0) {
      a.top_ids[r * a.n_top + j] = best.i;
      a.top_logprobs[r * a.n_top + j] = best.v - lse;
    }
    prev = best;
  }
  // 2. penalties (each token once per row), keeping the raw value.
  for (int e = p.pen_begin + tid; e < p.pen_end; e += kThreads) {
    PenaltyEntry& pe = a.penalties[e];
    pe.raw = row[pe.token];
    row[pe.token] = apply_penalties(pe.raw, p, pe.output_count);
  }
  __syncthreads();

  ArgMax pick{-FLT_MAX, -1};
  if (p.temperature == 0.f && p.pen_begin == p.pen_end) {  // 3. greedy, no penalties: the raw argmax
    pick = raw_arg;
  } else if (p.temperature == 0.f) {  // 3. greedy over the penalised logits
    for (int i = tid; i < V; i += kThreads) {
      const ArgMax c{row[i], i};
      if (better(c, pick)) pick = c;
    }
  } else {
    const float t = p.temperature;  // z = l / t, divided (not multiplied by 1/t) as on the CPU
    float zm = -FLT_MAX;
    for (int i = tid; i < V; i += kThreads) zm = fmaxf(zm, row[i] / t);
    zm = block_reduce(zm, red_f, Max{}, -FLT_MAX);
    uint32_t floor = 0;
    if (p.top_k > 0 && p.top_k < V) {  // 4. top-k: the key of the k-th largest z
      for (int bit = 31; bit >= 0; --bit) {
        const uint32_t cand = floor | (1u << bit);
        int count = 0;
        for (int i = tid; i < V; i += kThreads) count += order_key(row[i] / t) >= cand;
        if (block_reduce(count, red_i, Sum{}, 0) >= p.top_k) floor = cand;
      }
    }
    if (p.top_p < 1.f) {  // 5. top-p within what top-k kept
      float total = 0.f;
      for (int i = tid; i < V; i += kThreads) {
        const float z = row[i] / t;
        if (order_key(z) >= floor) total += __expf(z - zm);
      }
      const float target = p.top_p * block_reduce(total, red_f, Sum{}, 0.f);
      for (int bit = 31; bit >= 0; --bit) {
        const uint32_t cand = floor | (1u << bit);
        if (cand <= floor) continue;
        float mass = 0.f;
        for (int i = tid; i < V; i += kThreads) {
          const float z = row[i] / t;
          if (order_key(z) >= cand) mass += __expf(z - zm);
        }
        if (block_reduce(mass, red_f, Sum{}, 0.f) >= target) floor = cand;
      }
    }
    const float min_z = p.min_p > 0.f ? zm + logf(p.min_p) : -FLT_MAX;  // 6. min-p
    for (int i = tid; i < V; i += kThreads) {  // 7. Gumbel-max over the kept tokens
      const float z = row[i] / t;
      if (order_key(z) < floor || z < min_z) continue;
      const ArgMax c{z + gumbel_noise(p.seed_lo, p.seed_hi, p.step, i), i};
      if (better(c, pick)) pick = c;
    }
  }
  pick = block_argmax(pick, red_am);
  if (pick.i < 0) pick.i = 0;  // only NaN logits leave nothing kept
  // The chosen token's raw logit: in the penalty entries if it was penalised.
  if (tid == 0) chosen_raw = row[pick.i];
  __syncthreads();
  for (int e = p.pen_begin + tid; e < p.pen_end; e += kThreads)
    if (a.penalties[e].token == pick.i) chosen_raw = a.penalties[e].raw;
  __syncthreads();
  if (tid == 0) {
    a.tokens[r] = pick.i;
    a.logprobs[r] = chosen_raw - lse;
  }
}

}  // namespace

void sample(float* logits, int64_t R, int64_t V, const SampleArgs& a, cudaStream_t stream) {
  if (R <= 0) return;
  MINILLM_CHECK(V > 0 && V < INT32_MAX, "sample: vocabulary " << V);
  cuda::launch(sample_kernel, static_cast<unsigned>(R), kThreads, 0, stream, logits, static_cast<int>(V), a);
}

}  // namespace minillm::cuda::sampling
