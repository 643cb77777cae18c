// Hugging Face model directories, as transformers' save_pretrained writes them: config.json plus
// model.safetensors, or shards listed by model.safetensors.index.json. model_type mixtral, olmoe,
// qwen2_moe, qwen3_moe (docs/WEIGHTS.md, docs/CONFIG.md). The engine loads one with
// InferenceEngine(dir, options) (engine.h).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "minillm/config.h"
#include "minillm/core/dtype.h"

namespace minillm {

// True when `path` is a directory holding a config.json.
bool is_model_dir(const std::string& path);

// The validated model config of a model directory's config.json (errors name the file, the field
// and the value; an unknown model_type names the supported ones).
ModelConfig load_model_dir_config(const std::string& dir);

struct CheckpointInfo {
  std::string dir;
  std::string model_type;
  ModelConfig config;
  DType dtype = DType::f32;          // the tensors' dtype (config.json's, else the first tensor's)
  std::vector<std::string> shards;   // safetensors files, in load order (paths)
  std::vector<size_t> shard_bytes;   // file sizes
  size_t tensor_bytes = 0;           // the model's tensor data, summed
};

// Opens and validates a model directory without reading tensor data: config.json, the index (when
// sharded), every shard's header (offsets, sizes, dtypes), and the tensors against the config: all
// present with their exact shapes, none unexpected, none missing from the shard the index names,
// dtype the config's (or F32). Each error names the file and the tensor.
CheckpointInfo inspect_checkpoint(const std::string& dir);

// Progress of a load, reported after each shard.
struct LoadProgress {
  int shard = 0, num_shards = 0;  // 1-based index of the shard just loaded
  std::string file;               // its path
  size_t bytes = 0;               // bytes of the shards loaded so far
  size_t total_bytes = 0;         // of all shards
  double seconds = 0;             // since the load began
};
using LoadProgressFn = std::function<void(const LoadProgress&)>;

}  // namespace minillm
