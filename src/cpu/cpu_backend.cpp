// The CPU backend: fp32 activations and weights, each op delegating to the reference ops in
// cpu/ops.h. It is the oracle for the CUDA backend and runs the engine on machines without a GPU.
#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "engine/backend.h"

namespace minillm {
namespace {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  DType act_dtype() const override { return DType::f32; }

  void embedding(const Tensor& ids, const Tensor& table, Tensor& out) override {
    cpu::embedding(ids.ptr<int32_t>(), ids.numel(), table.ptr<float>(), table.size(1), out.ptr<float>());
  }
  void linear(const Tensor& x, const Tensor& w, Tensor& y) override {
    cpu::linear(x.ptr<float>(), w.ptr<float>(), nullptr, x.size(0), x.size(1), w.size(0), y.ptr<float>());
  }
  void rope(Tensor& qkv, int B, int N, const ModelConfig& c) override {
    const int64_t T = static_cast<int64_t>(B) * N;
    pos_.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos_[t] = static_cast<int32_t>(t % N);
    float* base = qkv.ptr<float>();
    cpu::rope(base, T, c.num_heads, c.head_dim, c.qkv_dim(), pos_.data(), c.rope_theta);
    cpu::rope(base + c.q_dim(), T, c.num_kv_heads, c.head_dim, c.qkv_dim(), pos_.data(), c.rope_theta);
  }
  void qkv_bias_norm(Tensor& qkv, const LayerWeights& w, const ModelConfig& c) override {
    const bool qkn = c.qk_norm != QkNorm::none;
    cpu::qkv_bias_norm(qkv.ptr<float>(), qkv.size(0), c.num_heads, c.num_kv_heads, c.head_dim,
                       w.bqkv.data ? w.bqkv.ptr<float>() : nullptr, qkn ? w.q_norm.ptr<float>() : nullptr,
                       qkn ? w.k_norm.ptr<float>() : nullptr, c.qk_norm == QkNorm::per_head, c.norm_eps);
  }
  void attention(const Tensor& qkv, Tensor& out, int B, int N, const ModelConfig& c) override {
    const float* q = qkv.ptr<float>();
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    cpu::attention(q, q + c.q_dim(), q + c.q_dim() + c.kv_dim(), out.ptr<float>(), B, N, N, c.num_heads,
                   c.num_kv_heads, c.head_dim, c.qkv_dim(), c.qkv_dim(), c.q_dim(), c.causal, scale);
  }
  void add_norm(Tensor& x, const Tensor* delta, const NormWeights& n, const ModelConfig& c, Tensor& out) override {
    const int64_t T = x.size(0), H = x.size(1);
    float* xp = x.ptr<float>();
    if (delta) {
      MINILLM_CHECK(delta->size(0) == T, "cpu add_norm: delta " << delta->shape_str() << " for " << T << " rows");
      const float* d = delta->ptr<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < T * H; ++i) xp[i] += d[i];
    }
    if (c.norm_type == NormType::layernorm) {
      cpu::layernorm(xp, n.w.ptr<float>(), n.b.data ? n.b.ptr<float>() : nullptr, c.norm_eps, T, H, out.ptr<float>());
    } else {
      cpu::rmsnorm(xp, n.w.ptr<float>(), c.norm_eps, T, H, out.ptr<float>());
    }
  }
  void moe(const Tensor& x, const LayerWeights& w, int, const ModelConfig& c, Tensor& y, Workspace&) override {
    cpu::moe(x.ptr<float>(), w.router.ptr<float>(), w.w1.ptr<float>(), w.w3.data ? w.w3.ptr<float>() : nullptr,
             w.w2.ptr<float>(), x.size(0), c.hidden_size, c.moe.num_experts, c.moe.ffn_size, c.moe.top_k,
             c.moe.normalize_topk, c.moe.activation, y.ptr<float>());
    if (c.moe.shared_expert_ffn > 0)
      cpu::shared_expert(x.ptr<float>(), w.ws13.ptr<float>(), w.ws2.ptr<float>(), w.shared_gate.ptr<float>(), x.size(0),
                         c.hidden_size, c.moe.shared_expert_ffn, y.ptr<float>());
  }
  size_t op_workspace_bytes(const ModelConfig&, int64_t) const override { return 0; }
  void to_device(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }

 private:
  std::vector<int32_t> pos_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace minillm
