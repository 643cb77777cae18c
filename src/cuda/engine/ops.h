// Launchers of the engine's glue kernels (embedding, RoPE, the QKV projection with RoPE, fused
// residual add + norm, and a plain MoE fallback). Raw device pointers, explicit sizes and a stream; each enqueues its kernel(s) and
// never synchronises. Activations are bf16 or fp16 (`dtype`), norm weights and math are fp32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "minillm/core/dtype.h"

namespace minillm::cuda::engine {

// out[t, :] = table[ids[t], :]. table: [V, H], out: [T, H] row-major; ids are valid (checked on the host).
// Also the row gather of the LM head's input (table = the activations, ids = the logits rows).
void embedding(DType dtype, const int32_t* ids, const void* table, void* out, int64_t T, int64_t H,
               cudaStream_t stream);

// Where a QKV op stores each new token's k and v rows in the paged KV cache (as cuda::kv_cache_write).
struct KvStore {
  const int32_t* slots = nullptr;  // [T] cache row of each token (negative: skipped), or null: no store
  void* k_cache = nullptr;         // [num_pages * kPageSize, Hkv, D]
  void* v_cache = nullptr;
};

// In place on qkv: for tokens t in [0, T) at position positions[t] (device [T] i32; null: t % N), rotates heads [0, heads) of the rows
// (HF rotate_half: the pair (x[i], x[i + D/2]) by the angle pos * theta^(-2i/D)).
// x: [T, heads, D] with row stride row_stride (elements); cos_sin: [max_pos, D/2] float2 (cos, sin)
// made by rope_table. All of q and k in one launch: heads = num_heads + num_kv_heads, since k's
// heads follow q's in a fused qkv row. With `store.slots`, the last kv_heads of the rotated heads
// (k) and the kv_heads heads after them (v) also go into the cache.
void rope(DType dtype, void* x, int64_t T, int N, int heads, int D, int64_t row_stride, const float2* cos_sin,
          cudaStream_t stream, const int32_t* positions = nullptr, const KvStore& store = {}, int kv_heads = 0);
// The QKV projection with RoPE fused into its epilogue, one kernel (qkv_rope.cu: the grouped GEMM
// as a dense GEMM, Hopper only): y = x w^T, then heads [0, rope_heads) of every row t rotated as by
// rope() at position t % N. x: [T, H], w: [qkv_dim, H] (HF Linear layout), y: [T, qkv_dim], all
// dense; cos_sin as for rope(); tile_counter: [1] int32 on the device, zero (the kernel leaves it zero).
// extras: before the rotation, + bias (fp32 [qkv_dim]) and RMSNorm of each q head (the first q_heads)
// and k head with the fp32 weights q_norm / k_norm [head_dim], each when given (Qwen3's per-head
// qk-norm; a norm over the whole projection cannot be done in a tile: qkv_bias_norm_rope does it).
// qkv_rope_supported: head_dim 64 or 128, H and qkv_dim multiples of 8, on a compute capability 9.0
// device.
struct QkvExtras {
  const float* bias = nullptr;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  int q_heads = 0;
  float eps = 1e-6f;
};
bool qkv_rope_supported(int head_dim, int64_t H, int64_t qkv_dim);
void qkv_rope(DType dtype, const void* x, const void* w, void* y, int64_t T, int64_t H, int64_t qkv_dim, int N,
              int rope_heads, int head_dim, const float2* cos_sin, int32_t* tile_counter, cudaStream_t stream,
              const QkvExtras& extras = {});
// Host: fills cos_sin [max_pos, D/2] as (cos, sin) of the angle pos * theta^(-2i/D), computed in double
// exactly as the CPU reference (src/cpu/rope.cpp), then rounded to fp32.
void rope_table(float2* host_cos_sin, int max_pos, int D, float theta);

// Fused residual add + norm, one read of x and delta, in fp32:
//   v = x + sum_j delta[t, j] (delta may be null); x = v (only when delta is given and out != x);
//   out = norm(v)
// norm: LayerNorm (two-pass mean / variance; bias may be null) or RMSNorm. x, out: [T, H]; delta:
// [T, delta_parts, H] (1..8 parts, summed in order); out may alias x. w, b: [H] fp32.
void add_norm(DType dtype, void* x, const void* delta, int delta_parts, const float* w, const float* b, bool rmsnorm,
              float eps, void* out, int64_t T, int64_t H, cudaStream_t stream);

// In place on qkv [T, (Hq + 2 Hkv) * D], one pass: + bias (fp32 [(Hq + 2 Hkv) * D], or null), then
// RMSNorm (eps) of q and k with the fp32 weights q_norm / k_norm (null: none): per_head over each
// head's D values (weights [D]), else over all of q (weights [Hq * D]) and all of k ([Hkv * D]); then,
// when cos_sin is given, RoPE on the q and k heads at position positions[t] (or t % N without
// positions), as rope(). As cpu::qkv_bias_norm followed by cpu::rope. With `store.slots`, the row's
// final k and v then go into the paged cache (D a multiple of 8, qkv and the caches 16-byte aligned).
// The arguments travel as one QkvFinish, which the decode GEMM's tail takes too (it runs the same row
// function, qkv_finish_row in qkv_finish.cuh, on the rows it has just produced: moe::DecodeGemmArgs).
struct QkvFinish {
  const float* bias = nullptr;      // [(Hq + 2 Hkv) * D], or null
  const float* q_norm = nullptr;    // null: no qk-norm
  const float* k_norm = nullptr;
  int Hq = 0, Hkv = 0, D = 0;
  bool per_head = false;
  float eps = 0.f;
  const float2* cos_sin = nullptr;  // null: no RoPE
  int N = 1;
  const int32_t* positions = nullptr;
  KvStore store;                    // slots null: no cache store
};
void qkv_bias_norm_rope(DType dtype, void* qkv, int64_t T, const QkvFinish& f, cudaStream_t stream);
// Throws, as qkv_bias_norm_rope does, when the cache store cannot take these arguments (head_dim, alignment).
void qkv_finish_check(const QkvFinish& f, const void* qkv);

// Shared expert (Qwen2-MoE) elementwise steps: a [T, Fs] = silu(gu[:, :Fs]) * gu[:, Fs:] with gu [T, 2 Fs];
// y [T, H] += sigmoid(x [T, H] . gate [H]) * o [T, H]. As cpu::shared_expert.
void swiglu_rows(DType dtype, const void* gu, void* a, int64_t T, int64_t Fs, cudaStream_t stream);
void shared_expert_add(DType dtype, const void* x, const void* gate, const void* o, void* y, int64_t T, int64_t H,
                       cudaStream_t stream);

// A plain MoE (router softmax -> top-k -> weighted experts, fp32 math) for the shapes that
// minillm::MoELayer does not take (hidden or ffn not a multiple of 64). Correctness path for tiny
// configs, not tuned. x, y: [T, H]; router [E, H]; w1, w3 [E, F, H] (w3 null for gelu); w2 [E, H, F].
size_t moe_fallback_workspace(int64_t T, int64_t F, int64_t k);
void moe_fallback(DType dtype, const void* x, const void* router, const void* w1, const void* w3, const void* w2,
                  int64_t T, int64_t H, int64_t E, int64_t F, int64_t k, bool normalize, bool swiglu, void* y,
                  void* scratch, cudaStream_t stream);

}  // namespace minillm::cuda::engine
