// Model weights on the host, keyed by tensor name (HF/Mixtral names; docs/WEIGHTS.md lists them).
// A WeightStore holds each tensor in its storage dtype; backends convert/upload them once.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "minillm/config.h"
#include "minillm/core/dtype.h"

namespace minillm {

struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
};
// Every tensor the config's model needs, in a fixed order, with its shape.
std::vector<WeightSpec> weight_specs(const ModelConfig& c);

struct HostWeight {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel x dtype_size
  int64_t numel() const;
  // Element i converted to fp32.
  float at(int64_t i) const;
  // The whole tensor as fp32 into `out` (numel floats).
  void to_f32(float* out) const;
};

class WeightStore {
 public:
  // Deterministic seeded init: tensor `name` element i is a function of (seed, name, i) only
  // (splitmix64 counter stream keyed by FNV-1a(name) ^ seed), so any tensor can be regenerated
  // alone and in parallel. Distribution (then rounded to `dtype`):
  //   embed_tokens, lm_head:         U(-1, 1) and U(-a, a), a = 1/sqrt(hidden)
  //   linear weights [out, in]:      U(-a, a), a = 1/sqrt(in)
  //   norm weights:                  1 + U(-0.1, 0.1);  norm biases: U(-0.1, 0.1)
  static WeightStore random(const ModelConfig& c, uint64_t seed, DType dtype);
  // Loads and validates a safetensors file against the config: every tensor of weight_specs
  // present with its exact shape, no unexpected tensor, dtype equal to the config's dtype or F32.
  static WeightStore load(const std::string& path, const ModelConfig& c);
  void save(const std::string& path) const;

  const HostWeight& get(const std::string& name) const;  // throws naming the missing tensor
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const std::map<std::string, HostWeight>& tensors() const { return tensors_; }
  size_t total_bytes() const;

 private:
  std::map<std::string, HostWeight> tensors_;
};

// Name helpers (layer l, expert e).
std::string layer_name(int l, const std::string& suffix);  // "model.layers.{l}.{suffix}"
std::string expert_name(int l, int e, const char* w);      // "...block_sparse_moe.experts.{e}.{w}.weight"

}  // namespace minillm
