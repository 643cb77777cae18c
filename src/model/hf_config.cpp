// Hugging Face config.json -> ModelConfig. One table per model_type says which config.json keys
// change the math and what an absent key means (transformers' own class default); all four
// architectures are pre-norm RMSNorm decoders with RoPE (rotate_half), SwiGLU experts, a softmax
// router and an untied or tied LM head, so the table only fills the flags of the one graph:
//
//   model_type  experts key                  ffn key                renorm top-k      qk-norm   qkv bias  shared expert
//   mixtral     num_local_experts            intermediate_size      always            -         -         -
//   olmoe       num_experts                  intermediate_size      norm_topk_prob    full      -         -
//   qwen2_moe   num_experts                  moe_intermediate_size  norm_topk_prob    -         qkv_bias  shared_expert_intermediate_size
//   qwen3_moe   num_experts (num_local_...)  moe_intermediate_size  norm_topk_prob    per_head  -         -
//
// Keys that would change the math in ways we do not implement are errors naming the key and value
// (sliding-window attention, rope scaling, non-MoE layers, attention/o_proj biases, qkv clipping,
// activations other than silu). Keys without effect on a forward pass (ids, dropout, init, aux-loss,
// cache flags, metadata) are ignored.
#include "model/hf_config.h"

#include <nlohmann/json.hpp>

#include "core/json.h"
#include "minillm/core/check.h"

namespace minillm {
namespace {

using json = nlohmann::json;

constexpr const char* kSupported = "mixtral, olmoe, qwen2_moe, qwen3_moe";

struct Reader {
  const json& j;
  const std::string& where;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  int integer(const char* key, std::optional<int> fallback) const {
    if (!has(key)) {
      if (!fallback) MINILLM_FAIL(where << ": missing required key '" << key << "'");
      return *fallback;
    }
    const json& v = j.at(key);
    if (!v.is_number_integer()) MINILLM_FAIL(where << ": " << key << " must be an integer, got " << json_excerpt(v));
    const int64_t x = v.get<int64_t>();
    if (x < 0 || x > INT32_MAX) MINILLM_FAIL(where << ": " << key << " = " << x << " is out of range");
    return static_cast<int>(x);
  }
  double number(const json& obj, const char* key, double fallback) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
    const json& v = obj.at(key);
    if (!v.is_number()) MINILLM_FAIL(where << ": " << key << " must be a number, got " << json_excerpt(v));
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j.at(key);
    if (!v.is_boolean()) MINILLM_FAIL(where << ": " << key << " must be true or false, got " << json_excerpt(v));
    return v.get<bool>();
  }
  // Fails when `key` is present with a value other than null / the given harmless ones.
  void require_false(const char* key, const char* why) const {
    if (boolean(key, false)) MINILLM_FAIL(where << ": " << key << " = true is not supported (" << why << ")");
  }
  void require_null(const char* key, const char* why) const {
    if (has(key)) MINILLM_FAIL(where << ": " << key << " = " << json_excerpt(j.at(key)) << " is not supported (" << why << ")");
  }
};

// rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x): only the default rotary
// embedding over the whole head.
float read_rope(const Reader& r, float fallback_theta) {
  double theta = r.number(r.j, "rope_theta", fallback_theta);
  auto check_type = [&](const json& obj, const char* key) {
    for (const char* k : {"rope_type", "type"}) {
      if (!obj.contains(k) || obj.at(k).is_null()) continue;
      const json& t = obj.at(k);
      if (!t.is_string() || t.get<std::string>() != "default")
        MINILLM_FAIL(r.where << ": " << key << "." << k << " = " << json_excerpt(t)
                             << " is not supported (only the default rotary embedding)");
    }
    const double prf = r.number(obj, "partial_rotary_factor", 1.0);
    if (prf != 1.0) MINILLM_FAIL(r.where << ": " << key << ".partial_rotary_factor = " << prf << " is not supported (use 1)");
  };
  if (r.has("rope_scaling")) {
    const json& s = r.j.at("rope_scaling");
    if (!s.is_object()) MINILLM_FAIL(r.where << ": rope_scaling = " << json_excerpt(s) << " is not supported");
    check_type(s, "rope_scaling");
  }
  if (r.has("rope_parameters")) {
    const json& p = r.j.at("rope_parameters");
    if (!p.is_object()) MINILLM_FAIL(r.where << ": rope_parameters must be an object, got " << json_excerpt(p));
    check_type(p, "rope_parameters");
    theta = r.number(p, "rope_theta", theta);
  }
  const double prf = r.number(r.j, "partial_rotary_factor", 1.0);
  if (prf != 1.0) MINILLM_FAIL(r.where << ": partial_rotary_factor = " << prf << " is not supported (use 1)");
  return static_cast<float>(theta);
}

}  // namespace

HfConfig parse_hf_config(const std::string& text, const std::string& where) {
  json j;
  try {
    j = parse_json_strict(text, where);
  } catch (const json::parse_error& e) {
    MINILLM_FAIL(where << ": malformed JSON: " << e.what());
  }
  if (!j.is_object()) MINILLM_FAIL(where << ": must be a JSON object");
  const Reader r{j, where};
  if (!r.has("model_type")) MINILLM_FAIL(where << ": missing key 'model_type' (supported: " << kSupported << ")");
  if (!j.at("model_type").is_string()) MINILLM_FAIL(where << ": model_type must be a string, got " << json_excerpt(j.at("model_type")));
  HfConfig h;
  h.model_type = j.at("model_type").get<std::string>();
  const std::string& t = h.model_type;
  const bool mixtral = t == "mixtral", olmoe = t == "olmoe", qwen2 = t == "qwen2_moe", qwen3 = t == "qwen3_moe";
  if (!mixtral && !olmoe && !qwen2 && !qwen3)
    MINILLM_FAIL(where << ": model_type = '" << t << "' is not supported (supported: " << kSupported << ")");

  ModelConfig& c = h.config;
  c.name = t;
  c.norm_type = NormType::rmsnorm;
  c.norm_placement = NormPlacement::pre;
  c.position = PositionType::rope;
  c.causal = true;
  c.vocab_size = r.integer("vocab_size", mixtral ? 32000 : olmoe ? 50304 : 151936);
  c.hidden_size = r.integer("hidden_size", mixtral ? 4096 : 2048);
  c.num_layers = r.integer("num_hidden_layers", mixtral ? 32 : olmoe ? 16 : 24);
  c.num_heads = r.integer("num_attention_heads", mixtral || qwen3 ? 32 : 16);
  c.num_kv_heads = r.integer("num_key_value_heads", mixtral ? 8 : qwen3 ? 4 : c.num_heads);
  if (c.num_heads <= 0) MINILLM_FAIL(where << ": num_attention_heads = " << c.num_heads << " must be positive");
  c.head_dim = r.integer("head_dim", c.hidden_size / c.num_heads);
  if (!r.has("head_dim") && c.hidden_size % c.num_heads != 0)
    MINILLM_FAIL(where << ": hidden_size = " << c.hidden_size << " is not divisible by num_attention_heads = " << c.num_heads);
  c.max_seq_len = r.integer("max_position_embeddings", mixtral ? 131072 : olmoe ? 4096 : 32768);
  c.norm_eps = static_cast<float>(r.number(j, "rms_norm_eps", mixtral || olmoe ? 1e-5 : 1e-6));
  c.rope_theta = read_rope(r, mixtral ? 1e6f : 1e4f);
  c.tie_embeddings = r.boolean("tie_word_embeddings", false);

  // Experts: count, top-k, width, router renormalisation.
  const char* experts_key = mixtral ? "num_local_experts" : "num_experts";
  const char* alias_key = mixtral ? "num_experts" : "num_local_experts";  // transformers' attribute_map
  c.moe.num_experts = r.integer(r.has(experts_key) ? experts_key : alias_key, mixtral ? 8 : olmoe ? 64 : qwen2 ? 60 : 128);
  c.moe.top_k = r.integer("num_experts_per_tok", mixtral ? 2 : qwen2 ? 4 : 8);
  c.moe.ffn_size = mixtral || olmoe ? r.integer("intermediate_size", mixtral ? 14336 : 2048)
                                    : r.integer("moe_intermediate_size", qwen2 ? 1408 : 768);
  c.moe.activation = ExpertActivation::swiglu;
  c.moe.normalize_topk = mixtral ? true : r.boolean("norm_topk_prob", false);
  if (r.has("hidden_act")) {
    const json& a = j.at("hidden_act");
    if (!a.is_string() || a.get<std::string>() != "silu")
      MINILLM_FAIL(where << ": hidden_act = " << json_excerpt(a) << " is not supported (only silu: SwiGLU experts)");
  }

  // Attention variants.
  if (olmoe) c.qk_norm = QkNorm::full;
  if (qwen3) c.qk_norm = QkNorm::per_head;
  if (qwen2) {
    c.qkv_bias = r.boolean("qkv_bias", true);
    c.moe.shared_expert_ffn = r.integer("shared_expert_intermediate_size", 5632);
    if (c.moe.shared_expert_ffn <= 0)
      MINILLM_FAIL(where << ": shared_expert_intermediate_size = " << c.moe.shared_expert_ffn << " must be positive");
  }
  if (!mixtral) r.require_false("attention_bias", "biases on q/k/v/o_proj");
  if (olmoe) r.require_null("clip_qkv", "clamping q, k, v");
  if (mixtral) r.require_null("sliding_window", "sliding-window attention");
  if (qwen2 || qwen3) {
    r.require_false("use_sliding_window", "sliding-window attention");
    const int step = r.integer("decoder_sparse_step", 1);
    if (step != 1 && c.num_layers > 1)
      MINILLM_FAIL(where << ": decoder_sparse_step = " << step << " is not supported (makes dense MLP layers; use 1)");
    if (r.has("mlp_only_layers")) {
      const json& m = j.at("mlp_only_layers");
      if (!m.is_array() || !m.empty())
        MINILLM_FAIL(where << ": mlp_only_layers = " << json_excerpt(m) << " is not supported (dense MLP layers; use [])");
    }
  }
  if (r.has("layer_types")) {
    const json& lt = j.at("layer_types");
    if (!lt.is_array()) MINILLM_FAIL(where << ": layer_types must be a list, got " << json_excerpt(lt));
    for (size_t i = 0; i < lt.size(); ++i) {
      if (!lt[i].is_string() || lt[i].get<std::string>() != "full_attention")
        MINILLM_FAIL(where << ": layer_types[" << i << "] = " << json_excerpt(lt[i])
                           << " is not supported (only full_attention)");
    }
  }

  // The checkpoint's dtype (transformers 5 writes "dtype", 4.x "torch_dtype").
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (!r.has(key)) continue;
    const json& d = j.at(key);
    const std::string s = d.is_string() ? d.get<std::string>() : d.dump();
    if (s == "float32") h.dtype = DType::f32;
    else if (s == "bfloat16") h.dtype = DType::bf16;
    else if (s == "float16") h.dtype = DType::f16;
    else MINILLM_FAIL(where << ": " << key << " = " << json_excerpt(d) << " is not supported (float32, bfloat16, float16)");
    break;
  }
  c.dtype = h.dtype == DType::f16 ? DType::f16 : DType::bf16;
  try {
    c.validate();
  } catch (const Error& e) {
    MINILLM_FAIL(where << ": " << e.what());
  }
  return h;
}

std::string hf_tensor_name(const std::string& model_type, const std::string& name) {
  if (model_type == "mixtral") return name;
  // block_sparse_moe.gate -> mlp.gate; block_sparse_moe.experts.{e}.w1/w3/w2 -> mlp.experts.{e}.gate/up/down_proj
  const std::string moe = "block_sparse_moe.";
  const size_t p = name.find(moe);
  if (p == std::string::npos) return name;
  std::string out = name.substr(0, p) + "mlp." + name.substr(p + moe.size());
  for (const auto& [ours, theirs] : {std::pair{".w1.weight", ".gate_proj.weight"}, std::pair{".w3.weight", ".up_proj.weight"},
                                     std::pair{".w2.weight", ".down_proj.weight"}}) {
    const std::string o = ours;
    if (out.size() > o.size() && out.compare(out.size() - o.size(), o.size(), o) == 0)
      return out.substr(0, out.size() - o.size()) + theirs;
  }
  return out;
}

}  // namespace minillm
