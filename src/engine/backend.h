// The op interface the transformer graph calls, at the granularity of fused ops. The CPU backend
// (fp32 reference) and the CUDA backend (bf16/fp16) implement it; the graph is written once.
// Every forward runs over a StepBatch (step_batch.h): activations are [T, C] row-major over its T
// new tokens, sequence after sequence; logits are computed for its R logits rows only.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "minillm/config.h"
#include "minillm/core/tensor.h"
#include "engine/sampler.h"
#include "engine/step_batch.h"

namespace minillm {

struct NormWeights {
  Tensor w;  // [H] fp32
  Tensor b;  // [H] fp32, or empty (RMSNorm)
};

// One layer's weights on the backend's device. Matmul weights in the backend's dtype, norms fp32.
struct LayerWeights {
  Tensor wqkv;  // [q_dim + 2 kv_dim, H]: q_proj, k_proj, v_proj rows concatenated
  Tensor bqkv;  // [q_dim + 2 kv_dim] fp32 q, k, v biases (qkv_bias), or empty
  Tensor q_norm, k_norm;  // fp32 RMSNorm weights: [D] (per_head) or [q_dim] / [kv_dim] (full), or empty
  Tensor wo;    // [H, q_dim]
  NormWeights norm1, norm2;  // input_layernorm, post_attention_layernorm
  Tensor router;  // [E, H]
  Tensor w1;      // [E, F, H] gate
  Tensor w3;      // [E, F, H] up (empty for gelu)
  Tensor w2;      // [E, H, F] down
  // Shared expert (moe.shared_expert_ffn = Fs > 0), else empty (ws13, ws2 also when the backend
  // stores it among the experts: Backend::shared_expert_chunks):
  Tensor ws13;         // [2 Fs, H]: gate_proj rows, then up_proj rows
  Tensor ws2;          // [H, Fs] down_proj
  Tensor shared_gate;  // [1, H] sigmoid gate
};

struct ModelWeights {
  Tensor embed;  // [V, H]
  std::vector<LayerWeights> layers;
  NormWeights final_norm;  // pre-norm models only
  Tensor lm_head;          // [V, H] (aliases embed when tied)
  std::vector<Buffer> storage;  // owns everything above
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual DType act_dtype() const = 0;

  // Allocates an uninitialised tensor of `shape` x `dtype` in backend memory (owned by `storage`).
  // ld > 0 (16-bit dtypes only) stores the rows (last dim) with that row stride instead of densely
  // (the padding is zeroed).
  Tensor alloc_weight(std::initializer_list<int64_t> shape, DType dtype, std::vector<Buffer>& storage, int64_t ld = 0);
  // The row stride at which this backend wants expert matrices of `cols` columns stored.
  virtual int64_t expert_row_stride(int64_t cols) const { return cols; }
  // S > 0: the shared expert (moe.shared_expert_ffn = S * F) is stored as S more experts of width F
  // after the routed ones (w1, w3 [E + S, F, H], w2 [E + S, H, F]: chunk j holds gate_proj / up_proj
  // rows [j F, (j+1) F) and down_proj columns [j F, (j+1) F)), and ws13 / ws2 stay empty. 0: apart.
  virtual int64_t shared_expert_chunks(const ModelConfig&) const { return 0; }

  // out[t] = table[ids[t]]. ids: [T] i32 on the backend's device.
  virtual void embedding(const Tensor& ids, const Tensor& table, Tensor& out) = 0;
  // y[T, N] = x[T, K] @ w[N, K]^T.
  virtual void linear(const Tensor& x, const Tensor& w, Tensor& y) = 0;
  // In place on qkv [T, qkv_dim]: RoPE on the q and k parts at each token's position.
  virtual void rope(Tensor& qkv, const StepBatch& b, const ModelConfig& c) = 0;
  // In place on qkv [T, qkv_dim]: + w.bqkv (when present), then RMSNorm of q and k with w.q_norm /
  // w.k_norm (per head or over the whole projection, as c.qk_norm says).
  virtual void qkv_bias_norm(Tensor& qkv, const LayerWeights& w, const ModelConfig& c) = 0;
  // The step's new k and v rows (inside qkv [T, qkv_dim]) into layer `layer` of the cache at
  // b.slot_mapping (negative slots skipped).
  virtual void kv_cache_write(const Tensor& qkv, const StepBatch& b, const KVCache& cache, int layer,
                              const ModelConfig& c) = 0;
  // qkv [T, qkv_dim] = x [T, H] @ w.wqkv^T (+ bias, qk-norm), then RoPE at each token's position
  // when the config has it; with a cache, the new k and v rows then go into layer `layer` of it
  // (kv_cache_write). Backends may fuse the steps.
  virtual void qkv(const Tensor& x, const LayerWeights& w, Tensor& qkv, const StepBatch& b, const ModelConfig& c,
                   const KVCache* cache, int layer) {
    linear(x, w.wqkv, qkv);
    if (w.bqkv.data || c.qk_norm != QkNorm::none) qkv_bias_norm(qkv, w, c);
    if (c.position == PositionType::rope) rope(qkv, b, c);
    if (cache) kv_cache_write(qkv, b, *cache, layer, c);
  }
  // out [T, q_dim] = attention of each new token (q inside qkv [T, qkv_dim]) over its sequence.
  // With a cache (which qkv() has given the new k and v), the keys are the sequence's whole context
  // in layer `layer` of it. Without (forward(): b.uniform_len or b.no_prefix), the keys are the new
  // tokens of the same sequence. Scratch comes from `ws`.
  virtual void attention(const Tensor& qkv, Tensor& out, const StepBatch& b, const KVCache* cache, int layer,
                         const ModelConfig& c, Workspace& ws) = 0;
  // out [R, C] = x [T, C] at rows [R] (i32 on the device).
  virtual void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) = 0;
  // Draws one token per row of logits [R, V] (fp32) as src/engine/sampler.h describes; may
  // overwrite the logits. Results go to the device arrays of `a`.
  virtual void sample(Tensor& logits, const SampleArgs& a) = 0;
  // x = x + delta (when delta is given); out = norm(x). out may alias x. delta: [T * P, H], P rows per
  // token (P = 1, or moe_output_parts for a MoE output) whose sum is the token's delta.
  virtual void add_norm(Tensor& x, const Tensor* delta, const NormWeights& n, const ModelConfig& c, Tensor& out) = 0;
  // y [T * P, H] with P = moe_output_parts(c): MoE(x [T, H]) with layer `l`'s router and experts (and
  // its shared expert, when the config has one), as P rows per token whose sum is the output (the
  // backend may leave that sum to add_norm).
  virtual void moe(const Tensor& x, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y,
                   Workspace& ws) = 0;
  virtual int moe_output_parts(const ModelConfig&) const { return 1; }
  // A sublayer's output projection or MoE, then the residual add and norm after it, as one op so that a
  // backend may run the add and norm in the same kernel (the defaults run the two ops):
  // delta [T, N] = a [T, K] @ w^T; add_norm(x, &delta, n, c, out).
  virtual void linear_add_norm(const Tensor& a, const Tensor& w, Tensor& delta, Tensor& x, const NormWeights& n,
                               const ModelConfig& c, Tensor& out) {
    linear(a, w, delta);
    add_norm(x, &delta, n, c, out);
  }
  // moe(h, w, layer, c, y, ws); add_norm(x, &y, n, c, out). out may alias h (the MoE has read it by then).
  virtual void moe_add_norm(const Tensor& h, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y,
                            Workspace& ws, Tensor& x, const NormWeights& n, Tensor& out) {
    moe(h, w, layer, c, y, ws);
    add_norm(x, &y, n, c, out);
  }
  // Bytes of workspace the backend's ops need beyond the graph's activations, for T tokens.
  virtual size_t op_workspace_bytes(const ModelConfig& c, int64_t T) const = 0;
  // Copies raw bytes between host and the backend's device (synchronous).
  virtual void to_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void synchronize() {}
  // Copies host -> device in order with the backend's work (the source may be reused on return).
  virtual void to_device_async(void* dst, const void* src, size_t bytes) { to_device(dst, src, bytes); }
  // Issues the work of `enqueue` (one forward). With use_graph on a backend that has graphs, the
  // first call for `key` runs it and records it, later calls replay the record; `enqueue` must then
  // issue the same work on the same pointers each time. Default: runs it.
  virtual void run_graph(int64_t key, bool use_graph, const std::function<void()>& enqueue) {
    (void)key, (void)use_graph;
    enqueue();
  }
  // Device bytes free for the KV cache after everything allocated so far (0: not known, the CPU).
  virtual size_t free_device_bytes() const { return 0; }
};

std::unique_ptr<Backend> make_cpu_backend();
#ifdef MINILLM_WITH_CUDA
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& c, int max_tokens);
#endif

// A set of named host tensors (our names, docs/WEIGHTS.md), already validated against the config:
// for_each hands each one to `sink` in the source's own order (a checkpoint: shard by shard; the
// data pointer is valid only during the call).
class WeightSource {
 public:
  using Sink = std::function<void(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                  const void* data)>;
  virtual ~WeightSource() = default;
  virtual void for_each(const Sink& sink) const = 0;
};

// Uploads weights to a backend in the layout above (QKV fused, experts stacked): every tensor of the
// config is allocated first, then each source tensor is converted to its destination's dtype and
// copied into place as it comes (host memory: a bounded staging buffer, no copy of the model).
ModelWeights upload_weights(Backend& be, const ModelConfig& c, const WeightSource& src);
// A WeightStore's tensors as a WeightSource (the store must outlive it).
std::unique_ptr<WeightSource> make_store_source(const class WeightStore& ws);

// The transformer forward pass over a step batch. cache: the paged KV cache (null for forward(),
// whose batch has no prefix); logits: [b.R, V] in `logits.dtype` (fp32 on the CPU backend). All
// scratch comes from `ws` (reset by the caller).
void transformer_forward(Backend& be, const ModelConfig& c, const ModelWeights& w, const StepBatch& b,
                         const KVCache* cache, Workspace& ws, Tensor& logits);
// Workspace bytes transformer_forward needs for T tokens and R logits rows.
size_t transformer_workspace_bytes(const Backend& be, const ModelConfig& c, int64_t T, int64_t R);

}  // namespace minillm
