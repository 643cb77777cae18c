// Rotary position embedding, in place on the fused qkv buffer (HF rotate_half convention).
//
// Algorithm: for token t (position positions[t], or t % N without a positions array), head h and i in [0, D/2), the pair (x[i], x[i + D/2])
// becomes (x[i] c - x[i + D/2] s, x[i + D/2] c + x[i] s) with (c, s) = (cos, sin)(pos * theta^(-2i/D)).
// The angles and their cos/sin are computed once on the host in double, exactly as the CPU
// reference (src/cpu/rope.cpp), and kept as an fp32 table [max_pos, D/2] of (cos, sin); the
// rotation is fp32, rounded once to bf16/fp16. q and k are rotated in one launch: in a qkv row
// [q heads | k heads | v heads] the k heads directly follow the q heads.
// Layout: x [T, heads, D] with row stride row_stride elements (qkv_dim). One thread rotates kV
// consecutive pairs (8-byte loads for kV = 4), grid-stride over T * heads * D/(2 kV) items.
// With a KvStore (a generation step), the items also cover the v heads, and each thread stores the
// k pairs it has rotated and the v pairs it has read into the token's paged-cache slot: the cache
// write needs no launch of its own.
// Cost: reads and writes q and k once (bandwidth-bound; measurements: docs/REPORT.md).
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/engine/ops.h"
#include "cuda/launch.cuh"
#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"

namespace minillm::cuda::engine {
namespace {

template <typename T, int kV>
struct alignas(sizeof(T) * kV) Pack {
  T v[kV];
};

// The cache side of a launch: slots null, or k heads [heads - kv_heads, heads) and v heads
// [heads, heads + kv_heads) of each row stored at row slots[t] of the caches [rows, kv_heads, D].
template <typename T>
struct Store {
  const int32_t* slots;
  T* k_cache;
  T* v_cache;
  int kv_heads;
};

template <typename T, int kV>
__global__ void rope_kernel(T* __restrict__ x, int64_t T_tokens, int N, int heads, int D, int64_t row_stride,
                            const float2* __restrict__ cos_sin, const int32_t* __restrict__ positions,
                            const Store<T> st) {
  pdl_wait();  // cuda::launch (launch.cuh)
  pdl_trigger();
  const int half = D / 2, chunks = half / kV;
  const int all_heads = heads + (st.slots ? st.kv_heads : 0);  // + the v heads, copied only
  const int first_kv = heads - st.kv_heads;
  const int64_t items = T_tokens * all_heads * chunks;
  for (int64_t it = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; it < items;
       it += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(it % chunks);
    const int64_t th = it / chunks;
    const int h = static_cast<int>(th % all_heads);
    const int64_t t = th / all_heads;
    const int i0 = c * kV;
    T* lo_p = x + t * row_stride + static_cast<int64_t>(h) * D + i0;  // x[i0 .. i0 + kV)
    T* hi_p = lo_p + half;                                            // x[i0 + D/2 ..)
    Pack<T, kV> lo = *reinterpret_cast<const Pack<T, kV>*>(lo_p);
    Pack<T, kV> hi = *reinterpret_cast<const Pack<T, kV>*>(hi_p);
    if (h < heads) {
      const int pos = positions ? positions[t] : static_cast<int>(t % N);
      const float2* cs = cos_sin + static_cast<int64_t>(pos) * half + i0;
#pragma unroll
      for (int j = 0; j < kV; ++j) {
        const float2 r = cs[j];
        const float a = to_f32(lo.v[j]), b = to_f32(hi.v[j]);
        lo.v[j] = from_f32<T>(a * r.x - b * r.y);
        hi.v[j] = from_f32<T>(b * r.x + a * r.y);
      }
      *reinterpret_cast<Pack<T, kV>*>(lo_p) = lo;
      *reinterpret_cast<Pack<T, kV>*>(hi_p) = hi;
    }
    if (st.slots && h >= first_kv) {
      const int32_t slot = st.slots[t];
      if (slot < 0) continue;
      const int kvh = h - first_kv;  // [0, kv_heads): k, then v
      T* cache = kvh < st.kv_heads ? st.k_cache : st.v_cache;
      T* dst = cache + (static_cast<int64_t>(slot) * st.kv_heads + kvh % st.kv_heads) * D + i0;
      *reinterpret_cast<Pack<T, kV>*>(dst) = lo;
      *reinterpret_cast<Pack<T, kV>*>(dst + half) = hi;
    }
  }
}

template <typename T, int kV>
void launch(void* x, int64_t T_tokens, int N, int heads, int D, int64_t row_stride, const float2* cos_sin,
            const int32_t* positions, const Store<T>& st, cudaStream_t stream) {
  const int64_t items = T_tokens * (heads + (st.slots ? st.kv_heads : 0)) * (D / 2 / kV);
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((items + threads - 1) / threads, int64_t{device_sm_count()} * 16);
  cuda::launch(rope_kernel<T, kV>, static_cast<unsigned>(blocks), threads, 0, stream, static_cast<T*>(x), T_tokens, N,
               heads, D, row_stride, cos_sin, positions, st);
}

template <typename T>
void dispatch(void* x, int64_t T_tokens, int N, int heads, int D, int64_t row_stride, const float2* cos_sin,
              const int32_t* positions, const KvStore& store, int kv_heads, cudaStream_t stream) {
  const Store<T> st{store.slots, static_cast<T*>(store.k_cache), static_cast<T*>(store.v_cache),
                    store.slots ? kv_heads : 0};
  const int half = D / 2;
  if (half % 4 == 0 && row_stride % 4 == 0) {
    launch<T, 4>(x, T_tokens, N, heads, D, row_stride, cos_sin, positions, st, stream);
  } else if (half % 2 == 0 && row_stride % 2 == 0) {
    launch<T, 2>(x, T_tokens, N, heads, D, row_stride, cos_sin, positions, st, stream);
  } else {
    launch<T, 1>(x, T_tokens, N, heads, D, row_stride, cos_sin, positions, st, stream);
  }
}

}  // namespace

void rope_table(float2* host_cos_sin, int max_pos, int D, float theta) {
  const int half = D / 2;
  for (int i = 0; i < half; ++i) {
    const double inv_freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(D));
    for (int p = 0; p < max_pos; ++p) {
      const double angle = static_cast<double>(p) * inv_freq;
      host_cos_sin[static_cast<int64_t>(p) * half + i] =
          make_float2(static_cast<float>(std::cos(angle)), static_cast<float>(std::sin(angle)));
    }
  }
}

void rope(DType dtype, void* x, int64_t T, int N, int heads, int D, int64_t row_stride, const float2* cos_sin,
          cudaStream_t stream, const int32_t* positions, const KvStore& store, int kv_heads) {
  MINILLM_CHECK(!store.slots || (kv_heads > 0 && kv_heads <= heads && D % 2 == 0),
                "rope: kv_heads = " << kv_heads << " must be in [1, heads = " << heads << "] and head_dim = " << D
                                    << " even to store into the cache");
  if (T <= 0 || heads <= 0 || D < 2) return;
  if (dtype == DType::bf16) {
    dispatch<__nv_bfloat16>(x, T, N, heads, D, row_stride, cos_sin, positions, store, kv_heads, stream);
  } else {
    dispatch<__half>(x, T, N, heads, D, row_stride, cos_sin, positions, store, kv_heads, stream);
  }
}

}  // namespace minillm::cuda::engine
