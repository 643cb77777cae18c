// CPU reference ops: fp32, simple loops (linear is cache- and register-blocked), OpenMP-parallel.
// They are the oracle that every CUDA kernel is tested against, and the CPU backend of the engine.
// All tensors are contiguous, row-major; shapes are given in the comments. Accumulation is in fp32
// unless noted (double where a reduction is long enough to matter: norm statistics, attention scores
// and softmax, router softmax). Results do not depend on the thread count.
#pragma once
#include <cstdint>

#include "minillm/config.h"

namespace minillm::cpu {

// out[t, :] = table[ids[t], :]. ids: [T] (must be in [0, V): checked by the caller), table: [V, H].
void embedding(const int32_t* ids, int64_t T, const float* table, int64_t H, float* out);

// y = x @ w^T (+ bias). x: [T, K], w: [N, K] (HF Linear layout), bias: [N] or null, y: [T, N].
void linear(const float* x, const float* w, const float* bias, int64_t T, int64_t K, int64_t N, float* y);

// Rotary embedding in place, NeoX/HF "rotate_half" convention: for each head, pairs (i, i + D/2),
// angle = pos * theta^(-2i/D), computed in double. x: [T, heads, D] with row stride `row_stride`
// elements between tokens (so q and k can live inside a fused QKV row), pos: [T].
void rope(float* x, int64_t T, int64_t heads, int64_t D, int64_t row_stride, const int32_t* pos, float theta);

// Scaled dot-product attention with GQA. q: [B, Nq, Hq, D], k, v: [B, Nk, Hkv, D], o: [B, Nq, Hq, D];
// q/k/v/o rows have strides (elements between consecutive tokens) q_row, kv_row, o_row; heads are
// contiguous within a row. Causal masking is aligned to the bottom-right: query i sees keys
// j <= i + Nk - Nq (as FlashAttention 2.1+). A query that sees no key gets a zero output.
// Hq % Hkv == 0; query head h uses kv head h / (Hq / Hkv). Scores, softmax and the weighted sum of v
// in double, with the row max subtracted (safe for any score magnitude); O(Nk) scratch per thread.
// lse (optional): [B, Hq, Nq] natural-log sum of exp of the scaled scores (-inf where no key).
void attention(const float* q, const float* k, const float* v, float* o, int64_t B, int64_t Nq, int64_t Nk,
               int64_t Hq, int64_t Hkv, int64_t D, int64_t q_row, int64_t kv_row, int64_t o_row, bool causal,
               float scale, float* lse = nullptr);

// LayerNorm (with bias; bias may be null) or RMSNorm over the last dim. x, y: [T, H] (may alias).
void layernorm(const float* x, const float* w, const float* b, float eps, int64_t T, int64_t H, float* y);
void rmsnorm(const float* x, const float* w, float eps, int64_t T, int64_t H, float* y);

// In place on a fused QKV activation qkv [T, (Hq + 2 Hkv) * D]: + bias ([(Hq + 2 Hkv) * D], or null),
// then RMSNorm (eps) of q and k with weights q_norm / k_norm (null: none): per_head normalises each
// head's D values with weights [D]; otherwise q [Hq * D] and k [Hkv * D] are each one vector
// (weights [Hq * D] / [Hkv * D]). v is only biased.
void qkv_bias_norm(float* qkv, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, const float* bias, const float* q_norm,
                   const float* k_norm, bool per_head, float eps);

// MoE router on logits [T, E]: softmax in double over E -> top-k (ties to the lower expert index)
// -> optional renormalisation of the k weights to sum 1. ids: [T, k] (descending weight), weights: [T, k].
// 1 <= k <= E.
void moe_router(const float* logits, int64_t T, int64_t E, int64_t k, bool normalize, int32_t* ids,
                float* weights);

// A whole MoE layer: router GEMM, routing, the experts and the weighted combine.
// x: [T, H], router_w: [E, H], w1 (gate): [E, F, H], w3 (up): [E, F, H] (unused for gelu),
// w2 (down): [E, H, F], y: [T, H]. swiglu expert: w2 @ (silu(w1 x) * (w3 x)); gelu expert:
// w2 @ gelu(w1 x) (tanh-free, erf form). Combine: y[t] = sum_j weight[t, j] * expert_{ids[t, j]}(x[t]),
// summed in the order j = 0..k-1 (deterministic). Each expert runs as a GEMM on its gathered tokens.
void moe(const float* x, const float* router_w, const float* w1, const float* w3, const float* w2, int64_t T,
         int64_t H, int64_t E, int64_t F, int64_t k, bool normalize, ExpertActivation act, float* y);

// Shared expert with a sigmoid gate (Qwen2-MoE), added onto y:
//   y[t] += sigmoid(x[t] . gate) * w2 @ (silu(w1 x[t]) * (w3 x[t]))
// x, y: [T, H]; w13: [2 Fs, H] (w1 = gate_proj rows, then w3 = up_proj rows); w2: [H, Fs]; gate: [H].
void shared_expert(const float* x, const float* w13, const float* w2, const float* gate, int64_t T, int64_t H,
                   int64_t Fs, float* y);

}  // namespace minillm::cpu
