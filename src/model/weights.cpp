// Weight names and shapes, seeded random init, safetensors load/save with validation.
#include "minillm/weights.h"

#include <cmath>
#include <cstring>

#include "minillm/core/check.h"
#include "minillm/core/tensor.h"
#include "minillm/safetensors.h"

namespace minillm {
namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
bool ends_with(const std::string& s, const char* suf) {
  const size_t n = std::strlen(suf);
  return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
}

// The host memory a WeightStore of `bytes` takes, refused up front when the host lacks it.
void check_host_bytes(int64_t bytes, const ModelConfig& c, const char* what) {
  const size_t avail = available_memory(Device::cpu);
  if (avail && static_cast<uint64_t>(bytes) > avail)
    MINILLM_FAIL("weights: " << what << " of config " << excerpt(c.name) << " needs "
                             << format_bytes(static_cast<double>(bytes)) << " of host memory, more than the "
                             << format_bytes(static_cast<double>(avail)) << " available (MemAvailable)");
}

void add_norm_specs(std::vector<WeightSpec>& v, const ModelConfig& c, const std::string& prefix) {
  v.push_back({prefix + ".weight", {c.hidden_size}});
  if (c.norm_type == NormType::layernorm) v.push_back({prefix + ".bias", {c.hidden_size}});
}

}  // namespace

std::string layer_name(int l, const std::string& suffix) { return "model.layers." + std::to_string(l) + "." + suffix; }
std::string expert_name(int l, int e, const char* w) {
  return layer_name(l, "block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight");
}

std::vector<WeightSpec> weight_specs(const ModelConfig& c) {
  const int64_t H = c.hidden_size, F = c.moe.ffn_size;
  std::vector<WeightSpec> v;
  v.push_back({"model.embed_tokens.weight", {c.vocab_size, H}});
  for (int l = 0; l < c.num_layers; ++l) {
    v.push_back({layer_name(l, "self_attn.q_proj.weight"), {c.q_dim(), H}});
    v.push_back({layer_name(l, "self_attn.k_proj.weight"), {c.kv_dim(), H}});
    v.push_back({layer_name(l, "self_attn.v_proj.weight"), {c.kv_dim(), H}});
    if (c.qkv_bias) {
      v.push_back({layer_name(l, "self_attn.q_proj.bias"), {c.q_dim()}});
      v.push_back({layer_name(l, "self_attn.k_proj.bias"), {c.kv_dim()}});
      v.push_back({layer_name(l, "self_attn.v_proj.bias"), {c.kv_dim()}});
    }
    if (c.qk_norm != QkNorm::none) {
      const bool per_head = c.qk_norm == QkNorm::per_head;
      v.push_back({layer_name(l, "self_attn.q_norm.weight"), {per_head ? c.head_dim : c.q_dim()}});
      v.push_back({layer_name(l, "self_attn.k_norm.weight"), {per_head ? c.head_dim : c.kv_dim()}});
    }
    v.push_back({layer_name(l, "self_attn.o_proj.weight"), {H, c.q_dim()}});
    add_norm_specs(v, c, layer_name(l, "input_layernorm"));
    add_norm_specs(v, c, layer_name(l, "post_attention_layernorm"));
    v.push_back({layer_name(l, "block_sparse_moe.gate.weight"), {c.moe.num_experts, H}});
    for (int e = 0; e < c.moe.num_experts; ++e) {
      v.push_back({expert_name(l, e, "w1"), {F, H}});
      if (c.moe.activation == ExpertActivation::swiglu) v.push_back({expert_name(l, e, "w3"), {F, H}});
      v.push_back({expert_name(l, e, "w2"), {H, F}});
    }
    if (const int64_t Fs = c.moe.shared_expert_ffn; Fs > 0) {
      v.push_back({layer_name(l, "mlp.shared_expert.gate_proj.weight"), {Fs, H}});
      v.push_back({layer_name(l, "mlp.shared_expert.up_proj.weight"), {Fs, H}});
      v.push_back({layer_name(l, "mlp.shared_expert.down_proj.weight"), {H, Fs}});
      v.push_back({layer_name(l, "mlp.shared_expert_gate.weight"), {1, H}});
    }
  }
  if (c.norm_placement == NormPlacement::pre) add_norm_specs(v, c, "model.norm");
  if (!c.tie_embeddings) v.push_back({"lm_head.weight", {c.vocab_size, H}});
  return v;
}

int64_t HostWeight::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

float HostWeight::at(int64_t i) const {
  switch (dtype) {
    case DType::f32: { float f; std::memcpy(&f, bytes.data() + 4 * i, 4); return f; }
    case DType::bf16: { uint16_t h; std::memcpy(&h, bytes.data() + 2 * i, 2); return bf16_to_f32(h); }
    case DType::f16: { uint16_t h; std::memcpy(&h, bytes.data() + 2 * i, 2); return f16_to_f32(h); }
    default: MINILLM_FAIL("weights: tensor of dtype " << dtype_name(dtype) << " is not a float tensor");
  }
}

void HostWeight::to_f32(float* out) const {
  const int64_t n = numel();
  if (dtype == DType::f32) {
    std::memcpy(out, bytes.data(), 4 * n);
    return;
  }
  const auto* h = reinterpret_cast<const uint16_t*>(bytes.data());
  if (dtype == DType::bf16) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = bits_f32(static_cast<uint32_t>(h[i]) << 16);
  } else if (dtype == DType::f16) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(h[i]);
  } else {
    MINILLM_FAIL("weights: tensor of dtype " << dtype_name(dtype) << " is not a float tensor");
  }
}

WeightStore WeightStore::random(const ModelConfig& c, uint64_t seed, DType dtype) {
  MINILLM_CHECK(is_float(dtype), "weights: random init dtype must be a float type, got " << dtype_name(dtype));
  c.validate();
  check_host_bytes(checked_mul(c.num_parameters(), static_cast<int64_t>(dtype_size(dtype)), "weights: bytes"), c,
                   "seeded init");
  WeightStore ws;
  for (const WeightSpec& spec : weight_specs(c)) {
    HostWeight w;
    w.dtype = dtype;
    w.shape = spec.shape;
    const int64_t n = w.numel();
    w.bytes.resize(static_cast<size_t>(n) * dtype_size(dtype));
    float lo = -1.0f, hi = 1.0f, offset = 0.0f;
    if (ends_with(spec.name, "layernorm.weight") || ends_with(spec.name, "_norm.weight") ||
        spec.name == "model.norm.weight") {
      lo = -0.1f, hi = 0.1f, offset = 1.0f;
    } else if (ends_with(spec.name, ".bias")) {
      lo = -0.1f, hi = 0.1f;
    } else if (spec.name != "model.embed_tokens.weight") {
      const float a = 1.0f / std::sqrt(static_cast<float>(spec.shape.back()));
      lo = -a, hi = a;
    }
    const uint64_t key = fnv1a(spec.name) ^ splitmix64(seed);
    uint8_t* dst = w.bytes.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t r = splitmix64(key + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull);
      const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1)
      const float x = offset + lo + (hi - lo) * u;
      if (dtype == DType::f32) {
        std::memcpy(dst + 4 * i, &x, 4);
      } else {
        const uint16_t h = dtype == DType::bf16 ? f32_to_bf16(x) : f32_to_f16(x);
        std::memcpy(dst + 2 * i, &h, 2);
      }
    }
    ws.tensors_.emplace(spec.name, std::move(w));
  }
  return ws;
}

WeightStore WeightStore::load(const std::string& path, const ModelConfig& c) {
  c.validate();
  SafeTensorsFile f(path);
  int64_t file_bytes = 0;
  for (const auto& t : f.tensors()) file_bytes += static_cast<int64_t>(t.end - t.begin);  // <= the file size
  check_host_bytes(file_bytes, c, "loading the weights");
  WeightStore ws;
  const auto specs = weight_specs(c);
  std::map<std::string, const WeightSpec*> expected;
  for (const auto& s : specs) expected[s.name] = &s;
  for (const auto& t : f.tensors()) {
    if (!expected.count(t.name))
      MINILLM_FAIL("weights: " << excerpt(path, 256) << ": unexpected tensor " << excerpt(t.name, 128) << " for config "
                               << excerpt(c.name));
  }
  for (const auto& spec : specs) {
    const SafeTensorInfo* t = f.find(spec.name);
    if (!t) MINILLM_FAIL("weights: '" << path << "': missing tensor '" << spec.name << "'");
    if (t->shape != spec.shape) {
      std::string got, want;
      for (int64_t s : t->shape) got += (got.empty() ? "" : ", ") + std::to_string(s);
      for (int64_t s : spec.shape) want += (want.empty() ? "" : ", ") + std::to_string(s);
      MINILLM_FAIL("weights: '" << path << "': tensor '" << spec.name << "' has shape [" << got << "], expected [" << want
                                << "]");
    }
    if (t->dtype != c.dtype && t->dtype != DType::f32)
      MINILLM_FAIL("weights: '" << path << "': tensor '" << spec.name << "' has dtype " << dtype_name(t->dtype)
                                << ", expected " << dtype_name(c.dtype) << " (the config's dtype) or f32");
    HostWeight w;
    w.dtype = t->dtype;
    w.shape = t->shape;
    const auto* p = static_cast<const uint8_t*>(f.data(*t));
    w.bytes.assign(p, p + (t->end - t->begin));
    const int64_t bad = first_non_finite(w.dtype, w.bytes.data(), w.numel());
    if (bad >= 0) {
      const float v = w.at(bad);
      detail::Message at;
      for (size_t d = 0, rest = static_cast<size_t>(bad); d < w.shape.size(); ++d) {
        int64_t inner = 1;
        for (size_t e = d + 1; e < w.shape.size(); ++e) inner *= w.shape[e];
        at << (d ? ", " : "") << static_cast<int64_t>(rest) / inner;
        rest %= static_cast<size_t>(inner);
      }
      MINILLM_FAIL("weights: '" << path << "': tensor '" << spec.name << "' holds " << (std::isnan(v) ? "NaN" : "Inf")
                                << " at [" << at.str() << "] (element " << bad << "); weights must be finite");
    }
    ws.tensors_.emplace(spec.name, std::move(w));
  }
  return ws;
}

void WeightStore::save(const std::string& path) const {
  std::vector<SafeTensorOut> out;
  for (const auto& [name, w] : tensors_) out.push_back({name, w.dtype, w.shape, w.bytes.data()});
  write_safetensors(path, std::move(out), {{"format", "pt"}, {"producer", "minillm"}});
}

const HostWeight& WeightStore::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) MINILLM_FAIL("weights: missing tensor '" << name << "'");
  return it->second;
}

size_t WeightStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, w] : tensors_) n += w.bytes.size();
  return n;
}

}  // namespace minillm
