// The transformer graph, written once against the Backend op interface.
//   post-norm (the seed): x = N1(x + Attn(x)); x = N2(x + MoE(x))
//   pre-norm (Mixtral):   x = x + Attn(N1(x)); x = x + MoE(N2(x)); ...; x = Nf(x)
//   logits = x @ lm_head^T
#include <vector>

#include "engine/backend.h"
#include "minillm/weights.h"

namespace minillm {

Tensor Backend::upload(std::initializer_list<int64_t> shape, DType dtype, std::vector<Buffer>& storage,
                       const std::function<void(float*)>& fill, int64_t ld) {
  Tensor t(nullptr, dtype, device(), shape);
  const int64_t n = t.numel();
  const int64_t cols = t.ndim > 0 ? t.shape[t.ndim - 1] : 1;
  if (ld == 0) ld = cols;
  MINILLM_CHECK(ld >= cols && (ld == cols || dtype != DType::f32), "upload: row stride " << ld << " for " << cols
                                                                                        << " columns of " << dtype_name(dtype));
  if (ld != cols) {  // rows padded: strides (.., rows * ld, ld, 1)
    int64_t st = ld;
    for (int d = t.ndim - 2; d >= 0; --d) {
      t.stride[d] = st;
      st *= t.shape[d];
    }
  }
  const int64_t rows = cols > 0 ? n / cols : 0;
  const size_t bytes = static_cast<size_t>(rows * ld) * dtype_size(dtype);
  storage.emplace_back(bytes, device());
  t.data = storage.back().data();
  if (dtype == DType::f32 && device() == Device::cpu) {
    fill(t.ptr<float>());
    return t;
  }
  std::vector<float> f32(static_cast<size_t>(n));
  fill(f32.data());
  if (dtype == DType::f32) {
    to_device(t.data, f32.data(), bytes);
  } else {
    std::vector<uint16_t> h(static_cast<size_t>(rows * ld), 0);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float v = f32[r * cols + c];
        h[r * ld + c] = dtype == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
      }
    to_device(t.data, h.data(), bytes);
  }
  return t;
}

ModelWeights upload_weights(Backend& be, const ModelConfig& c, const WeightStore& ws) {
  ModelWeights mw;
  const DType dt = be.act_dtype();
  const int64_t H = c.hidden_size, V = c.vocab_size, E = c.moe.num_experts, F = c.moe.ffn_size;
  // Uploads the named host tensors concatenated along their first dimension as one tensor.
  auto load = [&](const std::vector<std::string>& names, std::initializer_list<int64_t> shape, DType dtype,
                  int64_t ld = 0) {
    return be.upload(
        shape, dtype, mw.storage,
        [&](float* dst) {
          for (const auto& name : names) {
            const HostWeight& w = ws.get(name);
            w.to_f32(dst);
            dst += w.numel();
          }
        },
        ld);
  };
  auto load_norm = [&](const std::string& prefix) {
    NormWeights n;
    n.w = load({prefix + ".weight"}, {H}, DType::f32);
    if (c.norm_type == NormType::layernorm) n.b = load({prefix + ".bias"}, {H}, DType::f32);
    return n;
  };
  mw.embed = load({"model.embed_tokens.weight"}, {V, H}, dt);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    lw.wqkv = load({layer_name(l, "self_attn.q_proj.weight"), layer_name(l, "self_attn.k_proj.weight"),
                    layer_name(l, "self_attn.v_proj.weight")},
                   {c.qkv_dim(), H}, dt);
    lw.wo = load({layer_name(l, "self_attn.o_proj.weight")}, {H, c.q_dim()}, dt);
    lw.norm1 = load_norm(layer_name(l, "input_layernorm"));
    lw.norm2 = load_norm(layer_name(l, "post_attention_layernorm"));
    lw.router = load({layer_name(l, "block_sparse_moe.gate.weight")}, {E, H}, dt);
    std::vector<std::string> w1, w3, w2;
    for (int e = 0; e < E; ++e) {
      w1.push_back(expert_name(l, e, "w1"));
      w3.push_back(expert_name(l, e, "w3"));
      w2.push_back(expert_name(l, e, "w2"));
    }
    // Expert matrices at the backend's preferred row stride (padded rows on CUDA, see MoELayer).
    lw.w1 = load(w1, {E, F, H}, dt, be.expert_row_stride(H));
    if (c.moe.activation == ExpertActivation::swiglu) lw.w3 = load(w3, {E, F, H}, dt, be.expert_row_stride(H));
    lw.w2 = load(w2, {E, H, F}, dt, be.expert_row_stride(F));
    mw.layers.push_back(lw);
  }
  if (c.norm_placement == NormPlacement::pre) mw.final_norm = load_norm("model.norm");
  mw.lm_head = c.tie_embeddings ? mw.embed : load({"lm_head.weight"}, {V, H}, dt);
  return mw;
}

size_t transformer_workspace_bytes(const Backend& be, const ModelConfig& c, int B, int N) {
  const int64_t T = static_cast<int64_t>(B) * N;
  const size_t es = dtype_size(be.act_dtype());
  const size_t align = 256;
  auto sz = [&](int64_t n) { return (static_cast<size_t>(n) * es + align - 1) / align * align; };
  // x, h, qkv, attn, delta (the o_proj output, then the MoE output's P rows per token)
  return sz(T * c.hidden_size) * 2 + sz(T * be.moe_output_parts(c) * c.hidden_size) + sz(T * c.qkv_dim()) +
         sz(T * c.q_dim()) + be.op_workspace_bytes(c, T);
}

void transformer_forward(Backend& be, const ModelConfig& c, const ModelWeights& w, const Tensor& ids, int B, int N,
                         Workspace& ws, Tensor& logits) {
  const int64_t T = static_cast<int64_t>(B) * N;
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

  be.embedding(ids, w.embed, x);
  // Pre-norm: the residual add of a sublayer's output is deferred into the next norm (fused).
  const Tensor* pending = nullptr;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    if (pre) be.add_norm(x, pending, lw.norm1, c, h);  // x += moe_prev; h = N1(x)
    be.qkv(pre ? h : x, lw.wqkv, qkv, B, N, c);
    be.attention(qkv, attn, B, N, c);
    be.linear(attn, lw.wo, delta);
    if (pre) {
      be.add_norm(x, &delta, lw.norm2, c, h);  // x += attn; h = N2(x)
      be.moe(h, lw, l, c, moe_out, ws);
      pending = &moe_out;
    } else {
      be.add_norm(x, &delta, lw.norm1, c, x);  // x = N1(x + attn)
      be.moe(x, lw, l, c, moe_out, ws);
      be.add_norm(x, &moe_out, lw.norm2, c, x);  // x = N2(x + moe)
    }
  }
  if (pre) be.add_norm(x, pending, w.final_norm, c, h);  // x += moe_last; h = Nf(x)
  be.linear(pre ? h : x, w.lm_head, logits);
}

}  // namespace minillm
