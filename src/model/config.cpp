// Model config: JSON parsing (nlohmann-json), presets, validation, parameter and FLOP counts.
#include "minillm/config.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/file.h"
#include "core/json.h"
#include "minillm/checkpoint.h"
#include "minillm/core/check.h"

namespace minillm {
namespace {

using json = nlohmann::json;

// Reads `obj[key]` into `out` when present, rejecting values of the wrong JSON type or out of
// range of `out`. Messages quote at most a short excerpt of the value.
void read_int(const json& obj, const char* key, const std::string& path, int& out) {
  if (!obj.contains(key)) return;
  const json& v = obj.at(key);
  if (!v.is_number_integer())
    MINILLM_FAIL("config: " << path << key << " must be an integer, got " << json_excerpt(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX))
    MINILLM_FAIL("config: " << path << key << " = " << v.get<uint64_t>() << " is out of range (at most " << INT32_MAX << ")");
  const int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) MINILLM_FAIL("config: " << path << key << " = " << x << " is out of range");
  out = static_cast<int>(x);
}
// A float field: the JSON number must be a float without rounding to 0 or overflowing to inf.
void read_float(const json& obj, const char* key, const std::string& path, float& out) {
  if (!obj.contains(key)) return;
  const json& v = obj.at(key);
  if (!v.is_number()) MINILLM_FAIL("config: " << path << key << " must be a number, got " << json_excerpt(v));
  const double x = v.get<double>();
  const double a = std::fabs(x);
  if (!std::isfinite(x) || a > std::numeric_limits<float>::max() || (a != 0 && a < std::numeric_limits<float>::min()))
    MINILLM_FAIL("config: " << path << key << " = " << x << " is out of the range of a 32-bit float (it would become "
                            << (a < 1 ? "0" : "inf") << ")");
  out = static_cast<float>(x);
}
void read_bool(const json& obj, const char* key, const std::string& path, bool& out) {
  if (!obj.contains(key)) return;
  const json& v = obj.at(key);
  if (!v.is_boolean()) MINILLM_FAIL("config: " << path << key << " must be true or false, got " << json_excerpt(v));
  out = v.get<bool>();
}
std::string read_string(const json& obj, const char* key, const std::string& path) {
  const json& v = obj.at(key);
  if (!v.is_string()) MINILLM_FAIL("config: " << path << key << " must be a string, got " << json_excerpt(v));
  return v.get<std::string>();
}
void check_keys(const json& obj, const std::string& path, std::initializer_list<const char*> allowed) {
  if (!obj.is_object()) MINILLM_FAIL("config: " << (path.empty() ? "document" : path) << " must be a JSON object");
  std::set<std::string> ok(allowed.begin(), allowed.end());
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!ok.count(it.key())) {
      detail::Message os;
      for (const char* a : allowed) os << " " << a;
      MINILLM_FAIL("config: unknown key " << excerpt(path + it.key()) << " (allowed:" << os.str() << ")");
    }
  }
}
template <typename E>
E read_enum(const json& obj, const char* key, const std::string& path,
            std::initializer_list<std::pair<const char*, E>> options, E fallback) {
  if (!obj.contains(key)) return fallback;
  const std::string s = read_string(obj, key, path);
  detail::Message names;
  for (auto& [n, e] : options) {
    if (s == n) return e;
    names << " " << n;
  }
  MINILLM_FAIL("config: " << path << key << " = " << excerpt(s) << " is not one of:" << names.str());
}

const char* norm_type_name(NormType t) { return t == NormType::layernorm ? "layernorm" : "rmsnorm"; }
const char* placement_name(NormPlacement p) { return p == NormPlacement::post ? "post" : "pre"; }
const char* qk_norm_name(QkNorm q) { return q == QkNorm::none ? "none" : q == QkNorm::per_head ? "per_head" : "full"; }
const char* activation_name(ExpertActivation a) { return a == ExpertActivation::swiglu ? "swiglu" : "gelu"; }

ModelConfig make_preset(const char* name, int layers, int hidden, int heads, int experts, int top_k, int ffn,
                        int vocab, int max_seq) {
  ModelConfig c;
  c.name = name;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = heads;
  c.head_dim = hidden / heads;
  c.max_seq_len = max_seq;
  c.moe.num_experts = experts;
  c.moe.top_k = top_k;
  c.moe.ffn_size = ffn;
  return c;
}

}  // namespace

const char* const* preset_names() {
  static const char* const names[] = {"tiny", "small", "medium", "large", nullptr};
  return names;
}

ModelConfig preset_config(const std::string& name) {
  // The seed's architecture: post-LayerNorm, causal MHA with RoPE, softmax -> top-k -> renormalise MoE.
  if (name == "tiny") return make_preset("tiny", 2, 64, 4, 4, 2, 128, 256, 512);
  if (name == "small") return make_preset("small", 12, 768, 12, 8, 2, 3072, 32000, 8192);
  if (name == "medium") return make_preset("medium", 24, 1024, 16, 8, 2, 4096, 32000, 8192);
  if (name == "large") return make_preset("large", 32, 4096, 32, 8, 2, 3584, 32000, 8192);
  MINILLM_FAIL("unknown preset " << excerpt(name) << " (presets: tiny, small, medium, large; or a path to a .json config)");
}

ModelConfig parse_config_json(const std::string& text) {
  const json j = parse_json_strict(text, "config");
  check_keys(j, "", {"name", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "max_seq_len", "norm", "position", "qk_norm", "qkv_bias", "causal", "moe", "tie_embeddings",
                     "dtype"});
  ModelConfig c;
  if (j.contains("name")) c.name = read_string(j, "name", "");
  for (const char* req : {"vocab_size", "hidden_size", "num_layers", "num_heads", "max_seq_len", "moe"}) {
    if (!j.contains(req)) MINILLM_FAIL("config: missing required key '" << req << "'");
  }
  read_int(j, "vocab_size", "", c.vocab_size);
  read_int(j, "hidden_size", "", c.hidden_size);
  read_int(j, "num_layers", "", c.num_layers);
  read_int(j, "num_heads", "", c.num_heads);
  c.num_kv_heads = c.num_heads;
  read_int(j, "num_kv_heads", "", c.num_kv_heads);
  c.head_dim = c.num_heads > 0 && c.hidden_size % c.num_heads == 0 ? c.hidden_size / c.num_heads : 0;
  const bool explicit_head_dim = j.contains("head_dim");
  read_int(j, "head_dim", "", c.head_dim);
  read_int(j, "max_seq_len", "", c.max_seq_len);
  if (j.contains("norm")) {
    const json& n = j.at("norm");
    check_keys(n, "norm.", {"type", "eps", "placement"});
    c.norm_type = read_enum<NormType>(n, "type", "norm.", {{"layernorm", NormType::layernorm}, {"rmsnorm", NormType::rmsnorm}},
                                      c.norm_type);
    read_float(n, "eps", "norm.", c.norm_eps);
    c.norm_placement = read_enum<NormPlacement>(n, "placement", "norm.",
                                                {{"post", NormPlacement::post}, {"pre", NormPlacement::pre}}, c.norm_placement);
  }
  if (j.contains("position")) {
    const json& p = j.at("position");
    check_keys(p, "position.", {"type", "theta"});
    c.position = read_enum<PositionType>(p, "type", "position.", {{"none", PositionType::none}, {"rope", PositionType::rope}},
                                         c.position);
    read_float(p, "theta", "position.", c.rope_theta);
  }
  c.qk_norm = read_enum<QkNorm>(j, "qk_norm", "", {{"none", QkNorm::none}, {"per_head", QkNorm::per_head}, {"full", QkNorm::full}},
                                c.qk_norm);
  read_bool(j, "qkv_bias", "", c.qkv_bias);
  read_bool(j, "causal", "", c.causal);
  {
    const json& m = j.at("moe");
    check_keys(m, "moe.", {"num_experts", "top_k", "ffn_size", "activation", "normalize_topk", "shared_expert_ffn"});
    for (const char* req : {"num_experts", "top_k", "ffn_size"}) {
      if (!m.contains(req)) MINILLM_FAIL("config: missing required key 'moe." << req << "'");
    }
    read_int(m, "num_experts", "moe.", c.moe.num_experts);
    read_int(m, "top_k", "moe.", c.moe.top_k);
    read_int(m, "ffn_size", "moe.", c.moe.ffn_size);
    c.moe.activation = read_enum<ExpertActivation>(
        m, "activation", "moe.", {{"swiglu", ExpertActivation::swiglu}, {"gelu", ExpertActivation::gelu}}, c.moe.activation);
    read_bool(m, "normalize_topk", "moe.", c.moe.normalize_topk);
    read_int(m, "shared_expert_ffn", "moe.", c.moe.shared_expert_ffn);
  }
  read_bool(j, "tie_embeddings", "", c.tie_embeddings);
  if (j.contains("dtype")) {
    const std::string d = read_string(j, "dtype", "");
    if (d != "bf16" && d != "fp16") MINILLM_FAIL("config: dtype = " << excerpt(d) << " is not one of: bf16 fp16");
    c.dtype = parse_dtype(d);
  }
  if (!explicit_head_dim && c.num_heads > 0 && c.hidden_size % c.num_heads != 0) {
    MINILLM_FAIL("config: hidden_size = " << c.hidden_size << " is not divisible by num_heads = " << c.num_heads
                                          << " (set head_dim explicitly to decouple them)");
  }
  c.validate();
  return c;
}

void ModelConfig::validate() const {
  auto in_range = [](const char* field, int64_t v, int64_t max) {
    if (v <= 0) MINILLM_FAIL("config: " << field << " = " << v << " must be positive");
    if (v > max) MINILLM_FAIL("config: " << field << " = " << v << " exceeds the supported maximum " << max);
  };
  if (name.size() > 256) MINILLM_FAIL("config: name " << excerpt(name) << " is longer than 256 bytes");
  in_range("vocab_size", vocab_size, kMaxVocabSize);
  in_range("hidden_size", hidden_size, kMaxHiddenSize);
  in_range("num_layers", num_layers, kMaxLayers);
  in_range("num_heads", num_heads, kMaxHeads);
  in_range("num_kv_heads", num_kv_heads, kMaxHeads);
  in_range("head_dim", head_dim, kMaxHeadDim);
  in_range("max_seq_len", max_seq_len, kMaxSeqLen);
  in_range("moe.num_experts", moe.num_experts, kMaxExperts);
  in_range("moe.top_k", moe.top_k, kMaxTopK);
  in_range("moe.ffn_size", moe.ffn_size, kMaxFfnSize);
  // The derived widths in 64 bits: the bounds above keep them far below 2^31 (q_dim() is an int).
  const int64_t q = checked_mul(num_heads, head_dim, "config: num_heads x head_dim");
  if (q > INT32_MAX) MINILLM_FAIL("config: num_heads x head_dim = " << q << " exceeds " << INT32_MAX);
  if (num_heads % num_kv_heads != 0)
    MINILLM_FAIL("config: num_kv_heads = " << num_kv_heads << " does not divide num_heads = " << num_heads);
  if (head_dim % 2 != 0 && position == PositionType::rope)
    MINILLM_FAIL("config: head_dim = " << head_dim << " must be even for rope");
  if (moe.top_k > moe.num_experts)
    MINILLM_FAIL("config: moe.top_k = " << moe.top_k << " exceeds moe.num_experts = " << moe.num_experts);
  if (moe.shared_expert_ffn < 0) MINILLM_FAIL("config: moe.shared_expert_ffn = " << moe.shared_expert_ffn << " must be >= 0");
  if (moe.shared_expert_ffn > kMaxFfnSize)
    MINILLM_FAIL("config: moe.shared_expert_ffn = " << moe.shared_expert_ffn << " exceeds the supported maximum " << kMaxFfnSize);
  if (moe.shared_expert_ffn > 0 && moe.activation != ExpertActivation::swiglu)
    MINILLM_FAIL("config: moe.shared_expert_ffn = " << moe.shared_expert_ffn << " needs moe.activation = swiglu, got "
                                                    << activation_name(moe.activation));
  if (!(norm_eps > 0.0f) || norm_eps > 1.0f) MINILLM_FAIL("config: norm.eps = " << norm_eps << " must be in (0, 1]");
  if (position == PositionType::rope && !(rope_theta > 1.0f && rope_theta <= kMaxRopeTheta))
    MINILLM_FAIL("config: position.theta = " << rope_theta << " must be in (1, " << kMaxRopeTheta << "]");
  if (dtype != DType::bf16 && dtype != DType::f16)
    MINILLM_FAIL("config: dtype = " << dtype_name(dtype) << " is not one of: bf16 fp16");
  (void)checked_mul(num_parameters(), 4, "config: fp32 weight bytes");  // cannot overflow within the bounds
}

int64_t ModelConfig::num_parameters() const {
  const int64_t H = hidden_size, V = vocab_size, E = moe.num_experts, F = moe.ffn_size;
  const int64_t n_mats = moe.activation == ExpertActivation::swiglu ? 3 : 2;
  const int64_t norm_params = norm_type == NormType::layernorm ? 2 * H : H;
  const int64_t qk = qk_norm == QkNorm::none ? 0 : qk_norm == QkNorm::per_head ? 2 * head_dim : q_dim() + kv_dim();
  const int64_t bias = qkv_bias ? qkv_dim() : 0;
  const int64_t shared = moe.shared_expert_ffn > 0 ? 3 * H * moe.shared_expert_ffn + H : 0;
  const int64_t per_layer =
      H * qkv_dim() + bias + q_dim() * H + qk + E * H + E * n_mats * H * F + shared + 2 * norm_params;
  const int64_t final_norm = norm_placement == NormPlacement::pre ? norm_params : 0;
  return V * H * (tie_embeddings ? 1 : 2) + num_layers * per_layer + final_norm;
}

int64_t ModelConfig::num_active_parameters() const {
  const int64_t H = hidden_size, E = moe.num_experts, F = moe.ffn_size;
  const int64_t n_mats = moe.activation == ExpertActivation::swiglu ? 3 : 2;
  return num_parameters() - num_layers * (E - moe.top_k) * n_mats * H * F;
}

double ModelConfig::flops_per_token(int64_t seq) const {
  const double H = hidden_size, F = moe.ffn_size;
  const double n_mats = moe.activation == ExpertActivation::swiglu ? 3 : 2;
  const double shared = moe.shared_expert_ffn > 0 ? 3.0 * H * moe.shared_expert_ffn + H : 0.0;
  const double matmul_params =
      H * qkv_dim() + q_dim() * H + H * moe.num_experts + moe.top_k * n_mats * H * F + shared;
  // Attention: QK^T and PV, 2 FLOPs per multiply-add; a causal query sees (seq + 1) / 2 keys on average.
  const double keys = causal ? (seq + 1) / 2.0 : static_cast<double>(seq);
  const double attn = 4.0 * keys * q_dim();
  return num_layers * (2.0 * matmul_params + attn) + 2.0 * H * vocab_size;
}

ModelConfig load_config(const std::string& name_or_path) {
  for (const char* const* n = preset_names(); *n; ++n)
    if (name_or_path == *n) return preset_config(name_or_path);  // presets win over files and dirs of that name
  if (std::filesystem::is_directory(name_or_path)) return load_model_dir_config(name_or_path);  // checkpoint.h
  const bool looks_like_path = name_or_path.find('/') != std::string::npos || name_or_path.ends_with(".json");
  std::error_code ec;
  if (!looks_like_path && !std::filesystem::exists(name_or_path, ec)) return preset_config(name_or_path);
  const std::string text = read_regular_file(name_or_path, "config", kMaxConfigFileBytes);
  try {
    return parse_config_json(text);
  } catch (const Error& e) {
    MINILLM_FAIL(excerpt(name_or_path, 256) << ": " << e.what());
  }
}

std::string config_to_json(const ModelConfig& c) {
  json j = {
      {"name", c.name},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_layers", c.num_layers},
      {"num_heads", c.num_heads},
      {"num_kv_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"max_seq_len", c.max_seq_len},
      {"norm", {{"type", norm_type_name(c.norm_type)}, {"eps", c.norm_eps}, {"placement", placement_name(c.norm_placement)}}},
      {"position", {{"type", c.position == PositionType::rope ? "rope" : "none"}, {"theta", c.rope_theta}}},
      {"qk_norm", qk_norm_name(c.qk_norm)},
      {"qkv_bias", c.qkv_bias},
      {"causal", c.causal},
      {"moe",
       {{"num_experts", c.moe.num_experts},
        {"top_k", c.moe.top_k},
        {"ffn_size", c.moe.ffn_size},
        {"activation", activation_name(c.moe.activation)},
        {"normalize_topk", c.moe.normalize_topk},
        {"shared_expert_ffn", c.moe.shared_expert_ffn}}},
      {"tie_embeddings", c.tie_embeddings},
      {"dtype", c.dtype == DType::bf16 ? "bf16" : "fp16"},
  };
  return j.dump(2);
}

}  // namespace minillm
