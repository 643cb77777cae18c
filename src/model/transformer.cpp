// The transformer graph, written once against the Backend op interface.
//   post-norm (the seed): x = N1(x + Attn(x)); x = N2(x + MoE(x))
//   pre-norm (Mixtral):   x = x + Attn(N1(x)); x = x + MoE(N2(x)); ...; x = Nf(x)
//   logits = x @ lm_head^T on the step batch's logits rows
#include "engine/backend.h"

namespace minillm {

size_t transformer_workspace_bytes(const Backend& be, const ModelConfig& c, int64_t T, int64_t R) {
  const size_t es = dtype_size(be.act_dtype());
  const size_t align = 256;
  auto sz = [&](int64_t n) { return (static_cast<size_t>(n) * es + align - 1) / align * align; };
  // x, h, qkv, attn, delta (the o_proj output, then the MoE output's P rows per token), and the
  // gathered rows of the LM head's input when the logits rows are not all rows
  return sz(T * c.hidden_size) * 2 + sz(T * be.moe_output_parts(c) * c.hidden_size) + sz(T * c.qkv_dim()) +
         sz(T * c.q_dim()) + (R < T ? sz(R * c.hidden_size) : 0) + be.op_workspace_bytes(c, T);
}

void transformer_forward(Backend& be, const ModelConfig& c, const ModelWeights& w, const StepBatch& b,
                         const KVCache* cache, Workspace& ws, Tensor& logits) {
  const int64_t T = b.T;
  const int64_t H = c.hidden_size;
  const DType dt = be.act_dtype();
  Tensor x = ws.alloc(dt, {T, H});            // residual stream
  Tensor h = ws.alloc(dt, {T, H});            // normed input to a sublayer (pre-norm)
  Tensor qkv = ws.alloc(dt, {T, c.qkv_dim()});
  Tensor attn = ws.alloc(dt, {T, c.q_dim()});
  const int parts = be.moe_output_parts(c);
  Tensor moe_out = ws.alloc(dt, {T * parts, H});  // the MoE's output: `parts` rows per token, summed by add_norm
  Tensor delta(moe_out.data, dt, moe_out.device, {T, H});  // the attention sublayer's output
  const bool pre = c.norm_placement == NormPlacement::pre;

  be.embedding(b.token_ids, w.embed, x);
  // Every residual add is fused with the norm after it, and that with the op before it (a backend may
  // run the three in one kernel): pre-norm, a layer's MoE is followed by the next layer's N1 (Nf after
  // the last).
  const int L = c.num_layers;
  if (pre) be.add_norm(x, nullptr, L > 0 ? w.layers[0].norm1 : w.final_norm, c, h);  // h = N1(x)
  for (int l = 0; l < L; ++l) {
    const LayerWeights& lw = w.layers[l];
    be.qkv(pre ? h : x, lw, qkv, b, c, cache, l);  // + bias, qk-norm, RoPE; k, v into the cache
    be.attention(qkv, attn, b, cache, l, c, ws);
    if (pre) {
      be.linear_add_norm(attn, lw.wo, delta, x, lw.norm2, c, h);  // x += attn Wo; h = N2(x)
      const NormWeights& next = l + 1 < L ? w.layers[l + 1].norm1 : w.final_norm;
      be.moe_add_norm(h, lw, l, c, moe_out, ws, x, next, h);  // x += MoE(h); h = N1'(x) or Nf(x)
    } else {
      be.linear_add_norm(attn, lw.wo, delta, x, lw.norm1, c, x);  // x = N1(x + attn Wo)
      be.moe_add_norm(x, lw, l, c, moe_out, ws, x, lw.norm2, x);  // x = N2(x + MoE(x))
    }
  }
  const Tensor& last = pre ? h : x;
  if (b.all_rows) {
    be.linear(last, w.lm_head, logits);
  } else {  // the LM head on the logits rows only
    Tensor rows = ws.alloc(dt, {static_cast<int64_t>(b.R), H});
    be.gather_rows(last, b.logits_rows, rows);
    be.linear(rows, w.lm_head, logits);
  }
}

}  // namespace minillm
