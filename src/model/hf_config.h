// Hugging Face config.json -> ModelConfig, one table per model_type (hf_config.cpp), and the tensor
// names of each model_type mapped onto ours (docs/WEIGHTS.md).
#pragma once
#include <optional>
#include <string>

#include "minillm/config.h"

namespace minillm {

struct HfConfig {
  std::string model_type;     // mixtral, olmoe, qwen2_moe, qwen3_moe
  ModelConfig config;         // dtype: the GPU compute dtype (bf16 for fp32 and bf16 checkpoints, fp16 for fp16)
  std::optional<DType> dtype;  // the checkpoint's dtype as config.json states it (dtype / torch_dtype)
};

// Parses config.json text. `where` prefixes every error (the file's path). Every field that changes
// the math is read; unsupported values are errors naming the field and value; an unknown model_type
// names the supported ones.
HfConfig parse_hf_config(const std::string& json_text, const std::string& where);

// The checkpoint's name of our tensor `name` (weight_specs) for a model_type.
std::string hf_tensor_name(const std::string& model_type, const std::string& name);

}  // namespace minillm
