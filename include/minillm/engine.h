// InferenceEngine: owns the config, the weights on its device, one workspace planned for the
// largest batch x seq it was built for, and (on CUDA) a stream and CUDA graphs. forward() allocates
// nothing on the device. Destroying the engine frees everything.
//
// CUDA: bf16/fp16 weights and activations (the config's dtype), fp32 accumulation; the logits are
// f32 or the model dtype (EngineOptions::logits_dtype). With cuda_graphs, the first forward of a
// (B, N) shape runs op by op and records a CUDA graph; later forwards of that shape replay it.
// Token ids are range-checked on the host before every launch (also before a graph replay).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "minillm/checkpoint.h"
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
  LoadProgressFn on_load_progress;  // model directories: called after each shard is uploaded
};

// The bytes an engine for (config, max_batch, max_seq) needs, computed from the same formulas the
// engine plans its memory with: on its device the weights in the backend's layout and dtype, the one
// workspace arena (activations, op scratch, logits) and the ids buffer; on the host, while the
// engine is built, the WeightStore in the config's dtype.
struct MemoryEstimate {
  Device device = Device::cpu;
  size_t weights = 0, workspace = 0, ids = 0;  // on `device`; ids: the packed step batch (ids first)
  size_t host_weights = 0;                     // the WeightStore (host)
  size_t device_total() const { return weights + workspace + ids; }
};
// Throws minillm::Error naming the field for max_batch/max_seq out of range (<= 0, above the
// config's max_seq_len, or more than 2^30 tokens).
MemoryEstimate estimate_memory(const ModelConfig& c, int max_batch, int max_seq, const EngineOptions& opts = {});
// Throws minillm::Error "batch B x seq N on cpu needs X (...), more than the Y available" when the
// estimate does not fit what the device (and, with `with_host_weights`, the host) has free now.
void check_memory(const MemoryEstimate& m, int max_batch, int max_seq, bool with_host_weights);

struct ForwardTimings {
  double ms = 0;  // host wall time of the last forward (forward_device: until it is enqueued)
};

class InferenceEngine {
 public:
  InferenceEngine(const ModelConfig& config, const WeightStore& weights, const EngineOptions& opts = {});
  // A Hugging Face model directory (checkpoint.h): validated completely, then uploaded shard by shard
  // in the checkpoint's dtype (converted to the backend's: fp32 on the CPU, bf16/fp16 on CUDA).
  explicit InferenceEngine(const std::string& model_dir, const EngineOptions& opts = {});
  ~InferenceEngine();
  InferenceEngine(const InferenceEngine&) = delete;
  InferenceEngine& operator=(const InferenceEngine&) = delete;

  // ids: B x N host token ids (row-major). Returns host logits [B, N, V] as fp32.
  // Throws minillm::Error (engine stays usable) on ids out of range or B/N above the plan.
  std::vector<float> forward(const int32_t* ids, int B, int N);
  // Device-resident variant: ids [B, N] or [B * N] i32, contiguous, on the host or on the engine's
  // device; returns logits [B, N, V] (logits_dtype) on the engine's device, owned by the engine and
  // valid until the next call. CUDA: `stream` is the caller's cudaStream_t (nullptr: the legacy
  // default stream). The forward starts after the work already queued there, and work queued there
  // afterwards runs after the forward; the call itself does not wait for the forward (device ids
  // are copied to the host for the range check, which waits for the caller's stream).
  Tensor forward_device(const Tensor& ids, int B, int N, void* stream = nullptr);
  // One forward run op by op (no graph) with CUDA events around every op: milliseconds summed per
  // op kind (embedding, qkv, rope, attention, o_proj, add_norm, moe, lm_head), in order of first
  // use. CUDA only (throws on the CPU backend).
  std::vector<std::pair<std::string, double>> profile_forward(const int32_t* ids, int B, int N);

  // The uploaded weights as the backend holds them (device tensors on CUDA): "embed", "lm_head",
  // "final_norm.w/.b", and per layer "layers.{l}." + "wqkv" [qkv_dim, H] (q, k, v rows), "wo",
  // "norm1.w/.b", "norm2.w/.b", "router" [E, H], "w1", "w3" [E, F, H], "w2" [E, H, F], and when the
  // config has them "bqkv" [qkv_dim] fp32, "q_norm", "k_norm" fp32, "ws13" [2 Fs, H], "ws2" [H, Fs],
  // "shared_gate" [1, H]. On CUDA a shared expert of width Fs = S * F usually lives among the experts
  // instead ("w1", "w3" [E + S, F, H], "w2" [E + S, H, F]; no "ws13", "ws2": docs/ARCHITECTURE.md).
  // Views: valid while the engine lives. Empty tensors are left out.
  std::vector<std::pair<std::string, Tensor>> weights() const;

  const ModelConfig& config() const { return config_; }
  Device device() const;
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }
  size_t weight_bytes() const;
  size_t workspace_bytes() const;  // activations + op scratch + logits (they share one arena)
  DType logits_dtype() const;
  void* stream() const;  // the CUDA backend's cudaStream_t (nullptr on the CPU)
  const ForwardTimings& last_timings() const { return timings_; }
  // Validates ids on the host (range, count); throws naming the first bad position and value.
  void check_ids(const int32_t* ids, int B, int N) const;

 private:
  void init(const EngineOptions& opts, const class WeightSource& weights);
  void check_shape(int B, int N) const;
  void run(int B, int N);
  Tensor logits_view(int B, int N) const;

  ModelConfig config_;
  int max_batch_ = 1, max_seq_ = 0;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ForwardTimings timings_;
};

}  // namespace minillm
