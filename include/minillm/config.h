// Model configuration: one JSON schema for the presets and (later) real checkpoints.
// Every field is validated; an error names the field and the bad value. See docs/CONFIG.md.
#pragma once
#include <cstdint>
#include <string>

#include "minillm/core/dtype.h"

namespace minillm {

enum class NormType { layernorm, rmsnorm };
enum class NormPlacement { post, pre };
enum class PositionType { none, rope };
enum class QkNorm { none, per_head, full };
enum class ExpertActivation { swiglu, gelu };

// Upper bounds of the dimensions (validate() names the field and the bound). Real checkpoints sit
// well inside them (the largest vocabularies are ~262k, hidden sizes ~16k, ~128 layers); they keep
// every derived size (q_dim, parameter counts, activation bytes) far from 32/64-bit overflow.
inline constexpr int kMaxVocabSize = 1 << 22;    // 4,194,304
inline constexpr int kMaxHiddenSize = 1 << 16;   // 65,536
inline constexpr int kMaxLayers = 1024;
inline constexpr int kMaxHeads = 1024;           // num_heads and num_kv_heads
inline constexpr int kMaxHeadDim = 256;          // the attention kernels' limit
inline constexpr int kMaxSeqLen = 1 << 20;       // 1,048,576
inline constexpr int kMaxExperts = 256;
inline constexpr int kMaxTopK = 8;
inline constexpr int kMaxFfnSize = 1 << 18;      // 262,144
inline constexpr double kMaxRopeTheta = 1e12;
inline constexpr size_t kMaxConfigFileBytes = 16u << 20;  // a config file is a few hundred bytes

struct MoEConfigFields {
  int num_experts = 0;
  int top_k = 0;
  int ffn_size = 0;
  ExpertActivation activation = ExpertActivation::swiglu;
  bool normalize_topk = true;
  // > 0: a shared expert of this width that every token goes through, scaled by a sigmoid gate
  // (Qwen2-MoE): y += sigmoid(x . shared_gate) * w2s(silu(w1s x) * w3s x). 0: none.
  int shared_expert_ffn = 0;
};

struct ModelConfig {
  std::string name = "custom";
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;  // defaults to num_heads
  int head_dim = 0;      // defaults to hidden_size / num_heads
  int max_seq_len = 0;
  NormType norm_type = NormType::layernorm;
  float norm_eps = 1e-5f;
  NormPlacement norm_placement = NormPlacement::post;
  PositionType position = PositionType::rope;
  float rope_theta = 10000.0f;
  // RMSNorm (eps = norm_eps) on q and k after the projection, before RoPE: per_head over each head's
  // head_dim (Qwen3-MoE, weights [D]), full over the whole q / k projection (OLMoE, [q_dim] / [kv_dim]).
  QkNorm qk_norm = QkNorm::none;
  bool qkv_bias = false;  // q_proj, k_proj, v_proj have biases (Qwen2-MoE)
  bool causal = true;
  MoEConfigFields moe;
  bool tie_embeddings = false;
  DType dtype = DType::bf16;  // weight/activation dtype on the GPU (bf16 or f16)

  // Derived widths: at most kMaxHeads x kMaxHeadDim (validate() checks the product in 64 bits).
  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  int qkv_dim() const { return q_dim() + 2 * kv_dim(); }

  int64_t num_parameters() const;         // total
  int64_t num_active_parameters() const;  // per token (top_k of num_experts experts)
  // Forward FLOPs per token at sequence length `seq` (matmuls + attention; 2 per multiply-add).
  double flops_per_token(int64_t seq) const;

  void validate() const;  // throws minillm::Error naming the field and value
};

// Parses a JSON document (string) into a validated config. Strict: unknown or duplicate keys, NUL
// bytes, nesting deeper than 64 and values out of range are errors naming the field.
ModelConfig parse_config_json(const std::string& json_text);
// Loads a preset by name (tiny, small, medium, large; a preset name always means the preset: write
// ./tiny for a file of that name) or parses the file at `name_or_path` (a regular file of at most
// kMaxConfigFileBytes; errors name the file); a directory is a Hugging Face model directory
// (checkpoint.h).
ModelConfig load_config(const std::string& name_or_path);
ModelConfig preset_config(const std::string& name);
std::string config_to_json(const ModelConfig& c);
const char* const* preset_names();  // null-terminated list

}  // namespace minillm
