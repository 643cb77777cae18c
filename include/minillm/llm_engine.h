// LLMEngine: generation with continuous batching (docs/GENERATION.md).
//
//   LLMEngine eng(config, weights, LLMOptions{});
//   int64_t id = eng.add_request({1, 2, 3}, SamplingParams{.max_tokens = 32});
//   while (eng.has_unfinished()) for (const StepOutput& o : eng.step()) ...;
//   auto outs = eng.generate({{1, 2, 3}, {4, 5}}, params);   // blocking
//
// Each step() schedules the running and waiting requests onto one step batch (decode tokens first,
// then prefill chunks under the token budget), runs the model on it, samples on the device and
// returns what every request gained. add_request / abort may be called from other threads while
// step() runs (they queue; the next step takes them in). Bad input throws minillm::Error naming
// the field and value; the engine keeps serving the other requests.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "minillm/config.h"
#include "minillm/weights.h"

namespace minillm {

struct SamplingParams {
  int max_tokens = 16;             // >= 1
  float temperature = 1.0f;        // >= 0; 0 = greedy
  float top_p = 1.0f;              // (0, 1]
  int top_k = 0;                   // 0 = off
  float min_p = 0.0f;              // [0, 1]
  float repetition_penalty = 1.0f; // > 0; 1 = off (prompt and output tokens)
  float presence_penalty = 0.0f;   // output tokens
  float frequency_penalty = 0.0f;  // output tokens
  std::optional<uint64_t> seed;    // none: derived from the engine's seed and the request id
  std::vector<int32_t> stop_token_ids;               // stop after generating any of these
  std::vector<std::vector<int32_t>> stop_sequences;  // stop when the output ends with one of these
  bool ignore_eos = false;
  int logprobs = -1;  // -1: none; n >= 0: the chosen token's logprob and the top n (n <= 20)

  // Throws minillm::Error naming the field and value.
  void validate(int vocab_size) const;
};

struct StepOutput {
  int64_t request_id = 0;
  std::vector<int32_t> new_token_ids;
  std::vector<float> logprobs;                                   // per new token (logprobs requested)
  std::vector<std::vector<std::pair<int32_t, float>>> top_logprobs;  // per new token: top n (id, logprob)
  bool finished = false;
  std::string finish_reason;  // "stop", "length", "abort", or "" while running
};

struct RequestOutput {
  int64_t request_id = 0;
  std::vector<int32_t> prompt_token_ids;
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  std::vector<std::vector<std::pair<int32_t, float>>> top_logprobs;
  std::string finish_reason;
  double ttft_ms = 0;   // arrival to first token
  double total_ms = 0;  // arrival to finish
};

struct LLMOptions {
  std::string device = "auto";      // auto, cpu, cuda
  int max_model_len = 0;            // context per sequence; 0: the config's max_seq_len
  double gpu_memory_fraction = 0.9; // of the device memory free after weights and workspace, for the KV cache
  int64_t num_kv_tokens = 0;        // > 0: a KV pool of exactly this many tokens (rounded up to pages)
  int max_num_seqs = 256;           // sequences per step
  int max_step_tokens = 8192;       // new tokens per step (decode + prefill chunks)
  uint64_t seed = 0;                // seeds requests that have none
  bool cuda_graphs = true;          // decode-only steps replay graphs per batch-size bucket
  std::vector<int32_t> eos_token_ids;  // stop ids unless ignore_eos
};

struct EngineStats {
  int running = 0, waiting = 0;
  int kv_pages_used = 0, kv_pages_total = 0;
  int64_t prompt_tokens = 0, generation_tokens = 0;  // computed prompt tokens (recomputes too), sampled tokens
  int64_t preemptions = 0, steps = 0;
};

class LLMEngine {
 public:
  LLMEngine(const ModelConfig& config, const WeightStore& weights, const LLMOptions& opts = {});
  // A Hugging Face model directory (minillm/checkpoint.h); EOS ids from its config.json and
  // generation_config.json unless opts gives some.
  explicit LLMEngine(const std::string& model_dir, const LLMOptions& opts = {});
  ~LLMEngine();
  LLMEngine(const LLMEngine&) = delete;
  LLMEngine& operator=(const LLMEngine&) = delete;

  // Validates and queues a request; returns its id. Throws on an empty prompt, ids out of range,
  // a prompt that leaves no room in the context, or bad sampling parameters.
  int64_t add_request(std::vector<int32_t> prompt_token_ids, const SamplingParams& params);
  // One engine step; what each scheduled (or aborted) request gained.
  std::vector<StepOutput> step();
  // Aborts a request (its pages return at the next step, which reports it with reason "abort").
  // False when the id is unknown or already finished.
  bool abort(int64_t request_id);
  bool has_unfinished() const;
  // Adds the prompts, steps until they all finish, returns their outputs in prompt order.
  std::vector<RequestOutput> generate(const std::vector<std::vector<int32_t>>& prompts, const SamplingParams& params);

  EngineStats stats() const;
  const ModelConfig& config() const;
  const LLMOptions& options() const;  // with max_model_len and device resolved
  const std::vector<int32_t>& eos_token_ids() const;
  std::string device() const;
  size_t weight_bytes() const;
  size_t kv_cache_bytes() const;

 private:
  void init(const ModelConfig& config, const LLMOptions& opts, const class WeightSource& weights);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// EOS ids of a Hugging Face model directory: eos_token_id (an int or a list) of config.json and
// generation_config.json, in that order without repeats; empty when neither has one.
std::vector<int32_t> read_eos_token_ids(const std::string& model_dir);

}  // namespace minillm
