// The CPU backend: fp32 activations and weights, each op delegating to the reference ops in
// cpu/ops.h. It is the oracle for the CUDA backend and runs the engine on machines without a GPU.
#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "cpu/sampling.h"
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
  void rope(Tensor& qkv, const StepBatch& b, const ModelConfig& c) override {
    const int32_t* pos = b.positions.ptr<int32_t>();  // [T]
    float* base = qkv.ptr<float>();
    cpu::rope(base, b.T, c.num_heads, c.head_dim, c.qkv_dim(), pos, c.rope_theta);
    cpu::rope(base + c.q_dim(), b.T, c.num_kv_heads, c.head_dim, c.qkv_dim(), pos, c.rope_theta);
  }
  void qkv_bias_norm(Tensor& qkv, const LayerWeights& w, const ModelConfig& c) override {
    const bool qkn = c.qk_norm != QkNorm::none;
    cpu::qkv_bias_norm(qkv.ptr<float>(), qkv.size(0), c.num_heads, c.num_kv_heads, c.head_dim,
                       w.bqkv.data ? w.bqkv.ptr<float>() : nullptr, qkn ? w.q_norm.ptr<float>() : nullptr,
                       qkn ? w.k_norm.ptr<float>() : nullptr, c.qk_norm == QkNorm::per_head, c.norm_eps);
  }
  void kv_cache_write(const Tensor& qkv, const StepBatch& b, const KVCache& cache, int layer,
                      const ModelConfig& c) override {
    const float* q = qkv.ptr<float>();  // [T, qkv_dim]
    cpu::kv_cache_write(q + c.q_dim(), q + c.q_dim() + c.kv_dim(), c.qkv_dim(), c.qkv_dim(),
                        b.slot_mapping.ptr<int32_t>(), b.T, c.num_kv_heads, c.head_dim, cache.k[layer].ptr<float>(),
                        cache.v[layer].ptr<float>(), cache.num_pages * kPageSize);
  }
  void attention(const Tensor& qkv, Tensor& out, const StepBatch& b, const KVCache* cache, int layer,
                 const ModelConfig& c, Workspace&) override {
    const float* q = qkv.ptr<float>();  // [T, qkv_dim]: q, k, v of each new token
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const int64_t qkv_dim = c.qkv_dim(), kv = c.kv_dim();
    if (!cache && b.uniform_len > 0) {  // forward(): S sequences of N tokens, no prefix
      const int64_t N = b.uniform_len;
      cpu::attention(q, q + c.q_dim(), q + c.q_dim() + kv, out.ptr<float>(), b.S, N, N, c.num_heads, c.num_kv_heads,
                     c.head_dim, qkv_dim, qkv_dim, c.q_dim(), c.causal, scale);
      return;
    }
    const int32_t* cu = b.cu_seqlens_q.ptr<int32_t>();
    if (!cache) {  // no prefix: each sequence over its own new tokens
      for (int s = 0; s < b.S; ++s) {
        const float* qs = q + static_cast<int64_t>(cu[s]) * qkv_dim;
        const int64_t n = cu[s + 1] - cu[s];
        cpu::attention(qs, qs + c.q_dim(), qs + c.q_dim() + kv, out.ptr<float>() + cu[s] * c.q_dim(), 1, n, n,
                       c.num_heads, c.num_kv_heads, c.head_dim, qkv_dim, qkv_dim, c.q_dim(), c.causal, scale);
      }
      return;
    }
    // Each new token over its sequence's context in the cache (qkv() wrote the new k and v there).
    const int64_t num_pages = cache->num_pages, T = b.T;
    q_.resize(static_cast<size_t>(T * c.q_dim()));  // q [T, Hq, D] contiguous
    for (int64_t t = 0; t < T; ++t) std::memcpy(q_.data() + t * c.q_dim(), q + t * qkv_dim, c.q_dim() * sizeof(float));
    cpu::paged_attention(q_.data(), cache->k[layer].ptr<float>(), cache->v[layer].ptr<float>(),
                         b.block_table.ptr<int32_t>(), b.max_pages, b.context_lens.ptr<int32_t>(), cu, b.S, num_pages,
                         c.num_heads, c.num_kv_heads, c.head_dim, c.causal, scale, out.ptr<float>());
  }
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) override {
    const int64_t C = x.size(1);
    const int32_t* r = rows.ptr<int32_t>();
    for (int64_t i = 0; i < rows.numel(); ++i)
      std::memcpy(out.ptr<float>() + i * C, x.ptr<float>() + static_cast<int64_t>(r[i]) * C, C * sizeof(float));
  }
  void sample(Tensor& logits, const SampleArgs& a) override {
    cpu::sample(logits.ptr<float>(), logits.size(0), logits.size(1), a.params, a.penalties, a.n_top, a.tokens,
                a.logprobs, a.top_ids, a.top_logprobs);
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
  std::vector<float> q_;  // the step's queries, contiguous: [T, Hq, D]
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace minillm
