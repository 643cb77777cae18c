// minillm::MoELayer: a Mixture-of-Experts FFN layer on the GPU (bf16 or fp16, fp32 accumulation).
//
//   logits = x @ router^T                 [T, E] fp32
//   ids, w = top_k(softmax(logits))       [T, k] (ties to the lower expert index; optional renorm)
//   y[t]   = sum_j w[t, j] * expert_{ids[t, j]}(x[t])      (fp32 sum in slot order, no atomics)
//   swiglu expert: w_down @ (silu(w_gate x) * (w_up x));  gelu expert: w_down @ gelu(w_gate x)
//
// A shared expert (Qwen2-MoE: y += sigmoid(x . g) * w_down_s @ (silu(w_gate_s x) * (w_up_s x)), of
// width S * F) runs beside the routed ones, in the same kernels: its width is cut into S chunks of F
// columns stored as experts E .. E+S-1 (a chunk's down projection is the matching F columns of
// w_down_s, so the S chunk outputs sum to the shared expert's), and every token gets S more slots
// k .. k+S-1 on those experts with weight sigmoid(x . g). The layer then has k + S slots per token.
//
// Weights use HF's layout ([out, in] per expert) and are BORROWED: set_weights keeps the device
// pointers, nothing is copied, so they must stay alive and unchanged while the layer is used. The rows
// of the expert matrices may be padded (a row stride >= their columns): weights stored at
// weight_row_stride(cols) read fastest (power-of-two row strides collide in L2: docs/REPORT.md).
// forward() allocates nothing and never synchronises with the host (CUDA-graph capturable): all
// scratch comes from a workspace sized by workspace_bytes(max_tokens), either owned (reserve) or
// passed by the caller. The result is bitwise identical from run to run.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "minillm/config.h"
#include "minillm/core/dtype.h"
#include "minillm/core/tensor.h"

namespace minillm {

struct MoEConfig {
  int64_t hidden = 0;       // H: model width; multiple of 64
  int64_t num_experts = 0;  // E: 1..256
  int64_t top_k = 0;        // k: 1..min(8, E)
  int64_t ffn = 0;          // F: expert width; multiple of 64
  ExpertActivation activation = ExpertActivation::swiglu;
  bool normalize_topk = true;  // renormalise the k weights to sum 1 (Mixtral, Qwen3); OLMoE: false
  DType dtype = DType::bf16;   // bf16 or f16, for activations and weights
  int64_t shared_experts = 0;  // S: chunks of F columns of a shared expert (0: none); E + S <= 256

  int64_t slots() const { return top_k + shared_experts; }                // per token
  int64_t stored_experts() const { return num_experts + shared_experts; }  // in the weight tensors
  void validate() const;  // throws minillm::Error naming the field and value
};

// A residual add and norm that follows a layer (the engine's next one): x [T, H] += the layer's output;
// out [T, H] = norm(x), RMSNorm (b null) or LayerNorm, with w, b [H] fp32 (out may alias x). The layer
// runs it in its last kernel when fuses_residual_norm says so. counter: one device int32, zero before
// the call, which the kernel leaves zero again.
struct ResidualNorm {
  void* x = nullptr;
  void* out = nullptr;
  const float* w = nullptr;
  const float* b = nullptr;
  bool rmsnorm = true;
  float eps = 1e-6f;
  int32_t* counter = nullptr;
};

class MoELayer {
 public:
  // Tokens up to this count take the decode path (weights streamed once, no tile padding).
  static constexpr int64_t kDecodeMaxTokens = 64;

  // max_tokens > 0 reserves an owned workspace for up to that many tokens.
  explicit MoELayer(const MoEConfig& cfg, int64_t max_tokens = 0);
  ~MoELayer();
  MoELayer(MoELayer&&) noexcept;
  MoELayer& operator=(MoELayer&&) noexcept;

  const MoEConfig& config() const;

  // Device tensors in cfg.dtype, with E' = E + S (stored_experts): router [E, H] contiguous; w_gate
  // [E', F, H], w_up [E', F, H] (swiglu; an empty Tensor for gelu), w_down [E', H, F] with contiguous rows,
  // strides (rows * ld, ld, 1), ld >= cols; shared_gate [1, H] when S > 0 (else an empty Tensor).
  void set_weights(const Tensor& router, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down,
                   const Tensor& shared_gate = Tensor());
  // The same from raw device pointers (w_up null for gelu); ld_in: row stride of w_gate / w_up, ld_ffn:
  // of w_down, in elements (0: dense, H and F).
  void set_weights(const void* router, const void* w_gate, const void* w_up, const void* w_down, int64_t ld_in = 0,
                   int64_t ld_ffn = 0, const void* shared_gate = nullptr);
  // The row stride (elements) at which expert matrices of `cols` columns read fastest: the smallest odd
  // multiple of 64 >= cols (power-of-two strides collide in L2).
  static int64_t weight_row_stride(int64_t cols);

  // Scratch bytes that forward needs for up to max_tokens tokens (0 for max_tokens == 0).
  static size_t workspace_bytes(const MoEConfig& cfg, int64_t max_tokens);
  size_t workspace_bytes(int64_t max_tokens) const { return workspace_bytes(config(), max_tokens); }
  // (Re)allocates the owned workspace for up to max_tokens tokens (the only allocation).
  void reserve(int64_t max_tokens);
  int64_t reserved_tokens() const;

  // y = moe(x). x, y: [T, H] contiguous device tensors in cfg.dtype (T may be 0).
  void forward(const Tensor& x, const Tensor& y, cudaStream_t stream);               // owned workspace
  void forward(const Tensor& x, const Tensor& y, Workspace& ws, cudaStream_t stream);  // caller's arena
  // Raw form for the engine: x, y device pointers [T, H]; scratch of scratch_bytes >= workspace_bytes(T),
  // 256-byte aligned.
  void forward(const void* x, void* y, int64_t T, void* scratch, size_t scratch_bytes, cudaStream_t stream);
  // The same without the final sum over the k + S slots: y_pairs [T, k + S, H] holds w[t, j] * expert_j(x[t])
  // (rounded to cfg.dtype), so that y[t] = sum_j y_pairs[t, j]. Lets the caller fuse that sum into its
  // next pass over the rows (the engine's residual add + norm) instead of a separate combine.
  // With `then`, the layer also runs then's residual add (of y_pairs' sum) and norm in its last kernel;
  // only where fuses_residual_norm(T) (the decode path, a few tokens).
  void forward_pairs(const void* x, void* y_pairs, int64_t T, void* scratch, size_t scratch_bytes,
                     cudaStream_t stream, const ResidualNorm* then = nullptr);
  bool fuses_residual_norm(int64_t T) const;

  // The routing alone (for tests): ids [T, k + S] int32 (the top k by descending weight, then the S
  // shared chunks E .. E+S-1), weights [T, k + S] fp32.
  void route(const void* x, int64_t T, int32_t* ids, float* weights, void* scratch, size_t scratch_bytes,
             cudaStream_t stream);

 private:
  void run(const void* x, void* y, int64_t T, void* scratch, size_t scratch_bytes, cudaStream_t stream, bool pairs,
           const ResidualNorm* then);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minillm
