// The CUDA backend: every op of the Backend interface (src/engine/backend.h) on one stream that it
// owns, bf16 or fp16 activations and weights (the config's dtype), fp32 accumulation and norm math.
//   embedding, rope, add_norm: the kernels of src/cuda/engine/*.cu
//   linear: cuBLASLt (gemm.h); attention: minillm::flash_attention_forward on strided views of qkv
//        (forward() and prefills without a prefix), else the paged attention over the KV cache
//   sample: src/cuda/sampling/sample.cu
//   qkv: on Hopper, head dim 64 / 128, for forward()'s padded batch, the QKV projection with the
//        q/k/v bias, per-head qk-norm and RoPE in its epilogue (one kernel, engine/qkv_rope.cu: the
//        grouped GEMM of cuda/gemm/ as a dense GEMM); else linear, then bias + qk-norm + RoPE at the
//        batch's positions in one pass (qkv_bias_norm_rope.cu), or RoPE alone
//   moe: one minillm::MoELayer per layer (weights borrowed, scratch from the engine's workspace; its
//        output left as k weighted rows per token, summed by the next add_norm). A shared expert
//        (Qwen2-MoE) of S times the experts' width runs inside it as S more experts that every
//        token goes through, weighted by its sigmoid gate (k + S rows per token; the weights are
//        stored that way: shared_expert_chunks). Shapes MoELayer does not take go to a plain
//        fallback, and a shared expert it cannot take runs after the combined routed output (two
//        cuBLASLt GEMMs and two elementwise kernels, shared_expert.cu)
// Beyond the interface, the engine uses: the stream, CUDA-graph replay per (B, N) shape, and a
// profiling mode that brackets every op with CUDA events and sums the times per op kind.
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/engine/ops.h"
#include "engine/backend.h"
#include "minillm/moe.h"

namespace minillm {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& c, int64_t max_tokens);
  ~CudaBackend() override;

  Device device() const override { return Device::cuda; }
  DType act_dtype() const override { return config_.dtype; }
  void embedding(const Tensor& ids, const Tensor& table, Tensor& out) override;
  void linear(const Tensor& x, const Tensor& w, Tensor& y) override;
  void rope(Tensor& qkv, const StepBatch& b, const ModelConfig& c) override;
  void qkv_bias_norm(Tensor& qkv, const LayerWeights& w, const ModelConfig& c) override;
  void kv_cache_write(const Tensor& qkv, const StepBatch& b, const KVCache& cache, int layer,
                      const ModelConfig& c) override;
  void qkv(const Tensor& x, const LayerWeights& w, Tensor& qkv, const StepBatch& b, const ModelConfig& c,
           const KVCache* cache, int layer) override;
  void attention(const Tensor& qkv, Tensor& out, const StepBatch& b, const KVCache* cache, int layer,
                 const ModelConfig& c, Workspace& ws) override;
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void sample(Tensor& logits, const SampleArgs& a) override;
  void add_norm(Tensor& x, const Tensor* delta, const NormWeights& n, const ModelConfig& c, Tensor& out) override;
  void moe(const Tensor& x, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y, Workspace& ws) override;
  // On the decode path for a few rows the add and norm run in the GEMM's last block (Gemm::
  // linear_residual_norm, MoELayer::forward_pairs with a ResidualNorm); else the two ops.
  void linear_add_norm(const Tensor& a, const Tensor& w, Tensor& delta, Tensor& x, const NormWeights& n,
                       const ModelConfig& c, Tensor& out) override;
  void moe_add_norm(const Tensor& h, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y, Workspace& ws,
                    Tensor& x, const NormWeights& n, Tensor& out) override;
  int moe_output_parts(const ModelConfig& c) const override;
  size_t op_workspace_bytes(const ModelConfig& c, int64_t T) const override;
  int64_t expert_row_stride(int64_t cols) const override;
  int64_t shared_expert_chunks(const ModelConfig& c) const override;
  void to_device(void* dst, const void* src, size_t bytes) override;
  void to_host(void* dst, const void* src, size_t bytes) override;
  void synchronize() override;
  void to_device_async(void* dst, const void* src, size_t bytes) override;
  size_t free_device_bytes() const override;

  cudaStream_t stream() const { return stream_; }

  // Issues one forward pass for shape `key` on stream(): `enqueue` issues it op by op. With
  // use_graph, the first call for a key runs `enqueue` eagerly and then captures it once more into
  // a CUDA graph (capturing executes nothing); later calls replay the graph. `enqueue` must issue
  // the same work with the same pointers every time (the workspace plan guarantees it).
  void run_graph(int64_t key, bool use_graph, const std::function<void()>& enqueue) override;
  size_t num_graphs() const { return graphs_.size(); }

  // Profiling: between begin_profile() and end_profile(), every op is bracketed by CUDA events;
  // end_profile() waits for the stream and returns the milliseconds summed per op kind, in order
  // of first appearance (embedding, qkv, rope, attention, o_proj, add_norm, moe, lm_head).
  void begin_profile();
  std::vector<std::pair<std::string, double>> end_profile();

 private:
  class OpScope;
  // rope(), and (cache given) k and v into layer `layer` of the cache at b's slots, in one launch.
  void rope_store(Tensor& qkv, const StepBatch& b, const ModelConfig& c, const KVCache* cache, int layer);
  // In place on qkv [T, qkv_dim]: + bias, qk-norm, then RoPE at b's positions (when b is given and the
  // config has RoPE), then (cache given) k and v into layer `layer` of the cache at b's slots; one pass.
  void bias_norm_rope(Tensor& qkv, const LayerWeights& w, const ModelConfig& c, const StepBatch* b,
                      const KVCache* cache = nullptr, int layer = 0);
  // What bias_norm_rope does to each QKV row (b null: no RoPE, no cache store).
  cuda::engine::QkvFinish qkv_finish(const LayerWeights& w, const ModelConfig& c, const StepBatch* b,
                                     const KVCache* cache, int layer) const;
  // Scratch of moe(): the routed experts' (MoELayer or the fallback), then the shared expert's when it
  // runs apart.
  static size_t routed_workspace_bytes(const ModelConfig& c, int64_t T);
  // moe(), and `then` (may be null) in the MoE layer's last kernel when it can: returns whether it did.
  bool run_moe(const Tensor& x, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y, Workspace& ws,
               const ResidualNorm* then);
  // The residual add and norm x += delta; out = n(x) for a fused kernel (the backend's tail counter).
  ResidualNorm residual_norm(Tensor& x, const NormWeights& n, const ModelConfig& c, Tensor& out) const;
  static size_t shared_workspace_bytes(const ModelConfig& c, int64_t T);
  ModelConfig config_;
  int64_t max_tokens_ = 0;
  cudaStream_t stream_ = nullptr;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::map<int64_t, cudaGraphExec_t> graphs_;
};

}  // namespace minillm
