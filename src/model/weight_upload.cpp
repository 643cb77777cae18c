// Weight upload: every tensor of the model is allocated on the backend first (QKV fused, experts
// stacked, in the backend's dtype; norms, biases and qk-norm weights in fp32), then each named host
// tensor of a WeightSource is converted to its destination's dtype and copied into its place as the
// source hands it over. A tensor whose dtype and row layout already match its destination goes to
// the device straight from the source's memory (a checkpoint's mmap); others are converted through
// a bounded staging buffer (kStagingBytes), so host memory never holds a copy of the model.
#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "engine/backend.h"
#include "minillm/core/check.h"
#include "minillm/weights.h"

namespace minillm {
namespace {

constexpr size_t kStagingBytes = size_t{64} << 20;

// Where one named tensor goes: rows [row0, row0 + rows) of `dst` viewed as [R, cols] with row stride ld.
// With chunks > 1 the source is [rows, chunks * cols], and its column chunk j goes to the rows
// [row0 + j * chunk_step, + rows) (a shared expert's down_proj, cut into experts).
struct Slot {
  Tensor dst;
  int64_t row0 = 0, rows = 0, cols = 0, ld = 0;
  int64_t chunks = 1, chunk_step = 0;
  bool filled = false;
};

// Converts n elements of `src` (dtype s) to `dst` (dtype d), serially, one loop per dtype pair
// (bf16 <-> f32 inline bit operations). Float dtypes only.
void convert(const char* src, DType s, char* dst, DType d, int64_t n) {
  if (s == d) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(d));
    return;
  }
  auto in = [&](int64_t i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return h;
  };
  if (s == DType::bf16 && d == DType::f32) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = bf16_to_f32(in(i));
      std::memcpy(dst + 4 * i, &v, 4);
    }
  } else if (s == DType::f32 && d == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, src + 4 * i, 4);
      const uint16_t h = f32_to_bf16(v);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  } else {  // any pair with f16: through fp32
    for (int64_t i = 0; i < n; ++i) {
      float v;
      if (s == DType::f32) {
        std::memcpy(&v, src + 4 * i, 4);
      } else {
        v = s == DType::bf16 ? bf16_to_f32(in(i)) : f16_to_f32(in(i));
      }
      if (d == DType::f32) {
        std::memcpy(dst + 4 * i, &v, 4);
      } else {
        const uint16_t h = d == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(dst + 2 * i, &h, 2);
      }
    }
  }
}

// Copies column chunk `part` of a [rows, chunks * cols] host tensor (dtype sdt, dense) into its slot,
// converting as needed.
void write_chunk(Backend& be, const Slot& s, int64_t part, DType sdt, const void* data, std::vector<uint8_t>& staging) {
  const DType ddt = s.dst.dtype;
  const size_t ses = dtype_size(sdt), des = dtype_size(ddt);
  char* base = static_cast<char*>(s.dst.data) + static_cast<size_t>((s.row0 + part * s.chunk_step) * s.ld) * des;
  const int64_t src_ld = s.chunks * s.cols;
  const char* src = static_cast<const char*>(data) + static_cast<size_t>(part * s.cols) * ses;
  if (sdt == ddt && s.ld == s.cols && s.chunks == 1) {  // the bytes as they are
    be.to_device(base, src, static_cast<size_t>(s.rows * s.cols) * des);
    return;
  }
  // Rows per staging chunk; the CPU backend's memory is the host's, written in place.
  const bool host = be.device() == Device::cpu;
  const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kStagingBytes / (static_cast<size_t>(s.ld) * des)));
  const size_t need = static_cast<size_t>(std::min(chunk, s.rows) * s.ld) * des;
  if (!host && staging.size() < need) staging.resize(need);
  for (int64_t r0 = 0; r0 < s.rows; r0 += chunk) {
    const int64_t n = std::min(chunk, s.rows - r0);
    char* dst = host ? base + static_cast<size_t>(r0 * s.ld) * des : reinterpret_cast<char*>(staging.data());
#pragma omp parallel for schedule(static) if (n * s.cols > (int64_t{1} << 16))
    for (int64_t r = 0; r < n; ++r) {
      char* d = dst + static_cast<size_t>(r * s.ld) * des;
      convert(src + static_cast<size_t>((r0 + r) * src_ld) * ses, sdt, d, ddt, s.cols);
      if (s.ld > s.cols) std::memset(d + static_cast<size_t>(s.cols) * des, 0, static_cast<size_t>(s.ld - s.cols) * des);
    }
    if (!host) be.to_device(base + static_cast<size_t>(r0 * s.ld) * des, dst, static_cast<size_t>(n * s.ld) * des);
  }
}

class StoreSource final : public WeightSource {
 public:
  explicit StoreSource(const WeightStore& ws) : ws_(ws) {}
  void for_each(const Sink& sink) const override {
    for (const auto& [name, w] : ws_.tensors()) sink(name, w.dtype, w.shape, w.bytes.data());
  }

 private:
  const WeightStore& ws_;
};

}  // namespace

Tensor Backend::alloc_weight(std::initializer_list<int64_t> shape, DType dtype, std::vector<Buffer>& storage,
                             int64_t ld) {
  Tensor t(nullptr, dtype, device(), shape);
  const int64_t cols = t.ndim > 0 ? t.shape[t.ndim - 1] : 1;
  if (ld == 0) ld = cols;
  MINILLM_CHECK(ld >= cols && (ld == cols || dtype != DType::f32), "alloc_weight: row stride " << ld << " for " << cols
                                                                                              << " columns of "
                                                                                              << dtype_name(dtype));
  if (ld != cols) {  // rows padded: strides (.., rows * ld, ld, 1)
    int64_t st = ld;
    for (int d = t.ndim - 2; d >= 0; --d) {
      t.stride[d] = st;
      st *= t.shape[d];
    }
  }
  const int64_t rows = cols > 0 ? t.numel() / cols : 0;
  storage.emplace_back(static_cast<size_t>(rows * ld) * dtype_size(dtype), device());
  t.data = storage.back().data();
  return t;
}

ModelWeights upload_weights(Backend& be, const ModelConfig& c, const WeightSource& src) {
  ModelWeights mw;
  const DType dt = be.act_dtype();
  const int64_t H = c.hidden_size, V = c.vocab_size, E = c.moe.num_experts, F = c.moe.ffn_size;
  const int64_t Fs = c.moe.shared_expert_ffn;
  const int64_t S = Fs > 0 ? be.shared_expert_chunks(c) : 0;  // the shared expert stored as S more experts
  std::map<std::string, Slot> slots;
  // Tensor `t` (already allocated) receives `name` at rows [row0, row0 + rows) of its [R, cols] view.
  auto place = [&](const std::string& name, const Tensor& t, int64_t row0, int64_t rows) {
    const int64_t cols = t.ndim >= 2 ? t.shape[t.ndim - 1] : 1;
    const int64_t ld = t.ndim >= 2 ? t.stride[t.ndim - 2] : 1;
    slots[name] = Slot{t, row0, rows, cols, ld};
  };
  auto tensor = [&](const std::string& name, std::initializer_list<int64_t> shape, DType dtype) {
    Tensor t = be.alloc_weight(shape, dtype, mw.storage);
    place(name, t, 0, t.ndim >= 2 ? t.shape[0] : t.numel());
    return t;
  };
  auto norm = [&](const std::string& prefix) {
    NormWeights n;
    n.w = tensor(prefix + ".weight", {H}, DType::f32);
    if (c.norm_type == NormType::layernorm) n.b = tensor(prefix + ".bias", {H}, DType::f32);
    return n;
  };
  mw.embed = tensor("model.embed_tokens.weight", {V, H}, dt);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    const int64_t qd = c.q_dim(), kvd = c.kv_dim();
    lw.wqkv = be.alloc_weight({c.qkv_dim(), H}, dt, mw.storage);
    place(layer_name(l, "self_attn.q_proj.weight"), lw.wqkv, 0, qd);
    place(layer_name(l, "self_attn.k_proj.weight"), lw.wqkv, qd, kvd);
    place(layer_name(l, "self_attn.v_proj.weight"), lw.wqkv, qd + kvd, kvd);
    if (c.qkv_bias) {
      lw.bqkv = be.alloc_weight({c.qkv_dim()}, DType::f32, mw.storage);
      place(layer_name(l, "self_attn.q_proj.bias"), lw.bqkv, 0, qd);
      place(layer_name(l, "self_attn.k_proj.bias"), lw.bqkv, qd, kvd);
      place(layer_name(l, "self_attn.v_proj.bias"), lw.bqkv, qd + kvd, kvd);
    }
    if (c.qk_norm != QkNorm::none) {
      const bool per_head = c.qk_norm == QkNorm::per_head;
      lw.q_norm = tensor(layer_name(l, "self_attn.q_norm.weight"), {per_head ? c.head_dim : qd}, DType::f32);
      lw.k_norm = tensor(layer_name(l, "self_attn.k_norm.weight"), {per_head ? c.head_dim : kvd}, DType::f32);
    }
    lw.wo = tensor(layer_name(l, "self_attn.o_proj.weight"), {H, qd}, dt);
    lw.norm1 = norm(layer_name(l, "input_layernorm"));
    lw.norm2 = norm(layer_name(l, "post_attention_layernorm"));
    lw.router = tensor(layer_name(l, "block_sparse_moe.gate.weight"), {E, H}, dt);
    // Expert matrices at the backend's preferred row stride (padded rows on CUDA, see MoELayer).
    lw.w1 = be.alloc_weight({E + S, F, H}, dt, mw.storage, be.expert_row_stride(H));
    if (c.moe.activation == ExpertActivation::swiglu)
      lw.w3 = be.alloc_weight({E + S, F, H}, dt, mw.storage, be.expert_row_stride(H));
    lw.w2 = be.alloc_weight({E + S, H, F}, dt, mw.storage, be.expert_row_stride(F));
    for (int e = 0; e < E; ++e) {
      place(expert_name(l, e, "w1"), lw.w1, e * F, F);
      if (lw.w3.data) place(expert_name(l, e, "w3"), lw.w3, e * F, F);
      place(expert_name(l, e, "w2"), lw.w2, e * H, H);
    }
    if (S > 0) {  // experts E .. E+S-1: gate/up rows [j F, (j+1) F), down_proj columns [j F, (j+1) F)
      MINILLM_CHECK(Fs == S * F && lw.w3.data, "weights: shared expert of width " << Fs << " as " << S << " experts of " << F);
      place(layer_name(l, "mlp.shared_expert.gate_proj.weight"), lw.w1, E * F, Fs);
      place(layer_name(l, "mlp.shared_expert.up_proj.weight"), lw.w3, E * F, Fs);
      place(layer_name(l, "mlp.shared_expert.down_proj.weight"), lw.w2, E * H, H);
      Slot& down = slots[layer_name(l, "mlp.shared_expert.down_proj.weight")];
      down.chunks = S;
      down.chunk_step = H;
      lw.shared_gate = tensor(layer_name(l, "mlp.shared_expert_gate.weight"), {1, H}, dt);
    } else if (Fs > 0) {
      lw.ws13 = be.alloc_weight({2 * Fs, H}, dt, mw.storage);
      place(layer_name(l, "mlp.shared_expert.gate_proj.weight"), lw.ws13, 0, Fs);
      place(layer_name(l, "mlp.shared_expert.up_proj.weight"), lw.ws13, Fs, Fs);
      lw.ws2 = tensor(layer_name(l, "mlp.shared_expert.down_proj.weight"), {H, Fs}, dt);
      lw.shared_gate = tensor(layer_name(l, "mlp.shared_expert_gate.weight"), {1, H}, dt);
    }
    mw.layers.push_back(lw);
  }
  if (c.norm_placement == NormPlacement::pre) mw.final_norm = norm("model.norm");
  mw.lm_head = c.tie_embeddings ? mw.embed : tensor("lm_head.weight", {V, H}, dt);

  std::vector<uint8_t> staging;
  src.for_each([&](const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data) {
    auto it = slots.find(name);
    MINILLM_CHECK(it != slots.end(), "weights: unexpected tensor '" << name << "' for config '" << c.name << "'");
    Slot& s = it->second;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const int64_t cols = s.chunks * s.cols;
    MINILLM_CHECK(n == s.rows * cols && !shape.empty() && shape.back() == (s.cols == 1 ? shape.back() : cols),
                  "weights: tensor '" << name << "' has " << n << " elements, expected " << s.rows * cols);
    MINILLM_CHECK(is_float(dtype), "weights: tensor '" << name << "' has dtype " << dtype_name(dtype)
                                                       << ", expected a float dtype");
    MINILLM_CHECK(!s.filled, "weights: tensor '" << name << "' given twice");
    for (int64_t j = 0; j < s.chunks; ++j) write_chunk(be, s, j, dtype, data, staging);
    s.filled = true;
  });
  for (const auto& [name, s] : slots) MINILLM_CHECK(s.filled, "weights: missing tensor '" << name << "'");
  return mw;
}

std::unique_ptr<WeightSource> make_store_source(const WeightStore& ws) { return std::make_unique<StoreSource>(ws); }

}  // namespace minillm
