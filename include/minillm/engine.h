// InferenceEngine: owns the config, the weights on its device, one workspace planned for the
// largest batch x seq it was built for, and (on CUDA) streams and CUDA graphs. forward() allocates
// nothing on the device. Destroying the engine frees everything.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "minillm/config.h"
#include "minillm/core/tensor.h"
#include "minillm/weights.h"

namespace minillm {

struct EngineOptions {
  std::string device = "auto";  // "auto" (CUDA when available), "cpu" or "cuda"
  int max_batch = 1;            // the workspace is planned for max_batch x max_seq tokens
  int max_seq = 0;              // 0: the config's max_seq_len
  bool cuda_graphs = true;      // capture one CUDA graph per (B, N) shape on first use
  DType logits_dtype = DType::f32;  // f32 or the model dtype (CUDA backend)
};

struct ForwardTimings {
  double ms = 0;  // wall time of the last forward
};

class InferenceEngine {
 public:
  InferenceEngine(const ModelConfig& config, const WeightStore& weights, const EngineOptions& opts = {});
  ~InferenceEngine();
  InferenceEngine(const InferenceEngine&) = delete;
  InferenceEngine& operator=(const InferenceEngine&) = delete;

  // ids: B x N host token ids (row-major). Returns host logits [B, N, V] as fp32.
  // Throws minillm::Error (engine stays usable) on ids out of range or B/N above the plan.
  std::vector<float> forward(const int32_t* ids, int B, int N);
  // Device-resident variant: ids [B, N] i32 and logits [B, N, V] (f32 or model dtype) on the
  // engine's device. The logits tensor is owned by the engine and valid until the next call.
  Tensor forward_device(const Tensor& ids, int B, int N);

  const ModelConfig& config() const { return config_; }
  Device device() const;
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }
  size_t weight_bytes() const;
  size_t workspace_bytes() const;
  const ForwardTimings& last_timings() const { return timings_; }
  // Validates ids on the host (range, count); throws naming the first bad position and value.
  void check_ids(const int32_t* ids, int B, int N) const;

 private:
  void check_shape(int B, int N) const;
  void run(const Tensor& ids_dev, int B, int N);

  ModelConfig config_;
  int max_batch_ = 1, max_seq_ = 0;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ForwardTimings timings_;
};

}  // namespace minillm
