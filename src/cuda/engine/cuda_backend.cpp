// The CUDA backend (cuda_backend.h): op dispatch, the per-layer MoE layers, the RoPE table, CUDA
// graphs per (B, N) shape and per-op profiling with CUDA events.
//
// Nothing here allocates or synchronises inside a forward pass: cuBLASLt plans are cached, the
// MoE scratch comes from the engine's workspace (taken and given back around each call), and
// every launch goes to the backend's own non-blocking stream, so a forward can be captured whole.
#include "cuda/engine/cuda_backend.h"

#include <algorithm>
#include <cmath>

#include "cuda/engine/gemm.h"
#include "cuda/engine/ops.h"
#include "cuda/sampling/sample.h"
#include "minillm/attention.h"
#include "minillm/core/cuda_check.h"
#include "minillm/moe.h"

namespace minillm {
namespace {

namespace ke = cuda::engine;

// The QKV projection with RoPE fused into its epilogue (ops.h: qkv_rope) where it runs; else
// cuBLASLt and the rope kernel.
bool fused_qkv_supported(const ModelConfig& c) {
  return c.position == PositionType::rope && ke::qkv_rope_supported(c.head_dim, c.hidden_size, c.qkv_dim());
}

bool valid(const MoEConfig& m) {
  try {
    m.validate();
    return true;
  } catch (const Error&) {
    return false;
  }
}

// The MoE config of the model, and whether minillm::MoELayer takes it. A shared expert whose width
// is a multiple of the experts' runs inside the layer as that many more experts (MoEConfig.shared_experts)
// when the layer takes that too; otherwise it runs beside it (cuBLASLt, shared_expert.cu).
MoEConfig moe_config(const ModelConfig& c) {
  MoEConfig m;
  m.hidden = c.hidden_size;
  m.num_experts = c.moe.num_experts;
  m.top_k = c.moe.top_k;
  m.ffn = c.moe.ffn_size;
  m.activation = c.moe.activation;
  m.normalize_topk = c.moe.normalize_topk;
  m.dtype = c.dtype;
  const int64_t Fs = c.moe.shared_expert_ffn, F = c.moe.ffn_size;
  if (Fs > 0 && F > 0 && Fs % F == 0 && m.activation == ExpertActivation::swiglu) {
    MoEConfig fused = m;
    fused.shared_experts = Fs / F;
    if (valid(fused)) return fused;
  }
  return m;
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

constexpr int64_t kMaxSplitCounterTokens = 4096;  // sequences x row blocks that the split counters cover

bool moe_layer_supports(const ModelConfig& c) { return valid(moe_config(c)); }

}  // namespace

struct CudaBackend::Impl {
  ke::Gemm gemm;
  std::vector<MoELayer> moe;  // one per layer (empty: the fallback path)
  Buffer rope_table;          // [max_pos, D/2] float2
  int rope_max_pos = 0;
  bool fused_qkv = false;     // qkv(): one GEMM with the RoPE epilogue
  Buffer tile_counter;        // [1] int32, zero between launches of that GEMM
  Buffer tail_counter;        // [1] int32, zero between the kernels with a tail (decode GEMM)
  Buffer split_counters;      // [split_counter_count] int32, zero between paged attention launches
  int64_t split_counter_count = 0;
  // Profiling state: events in pairs, the op kind of each pair.
  bool profiling = false;
  std::vector<cudaEvent_t> events;
  std::vector<std::string> kinds;
  size_t used_pairs = 0;

  ~Impl() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);
  }
};

// Brackets one op with a pair of events while profiling (nothing otherwise).
class CudaBackend::OpScope {
 public:
  OpScope(CudaBackend& be, const char* kind) : be_(be) {
    Impl& m = *be_.impl_;
    if (!m.profiling) return;
    if (m.used_pairs * 2 + 2 > m.events.size()) {
      for (int i = 0; i < 2; ++i) {
        cudaEvent_t e;
        MINILLM_CUDA_CHECK(cudaEventCreate(&e));
        m.events.push_back(e);
      }
    }
    pair_ = m.used_pairs++;
    if (m.kinds.size() < m.used_pairs) m.kinds.resize(m.used_pairs);
    m.kinds[pair_] = kind;
    MINILLM_CUDA_CHECK(cudaEventRecord(m.events[2 * pair_], be_.stream_));
  }
  ~OpScope() {
    if (pair_ != kNone) cudaEventRecord(be_.impl_->events[2 * pair_ + 1], be_.stream_);
  }

 private:
  static constexpr size_t kNone = ~size_t{0};
  CudaBackend& be_;
  size_t pair_ = kNone;
};

CudaBackend::CudaBackend(const ModelConfig& c, int64_t max_tokens) : config_(c), max_tokens_(max_tokens) {
  MINILLM_CHECK(c.dtype == DType::bf16 || c.dtype == DType::f16,
                "cuda backend: dtype = " << dtype_name(c.dtype) << " must be bf16 or fp16");
  MINILLM_CHECK(c.head_dim % 8 == 0 && c.head_dim <= 256,
                "cuda backend: head_dim = " << c.head_dim << " must be a multiple of 8 in [8, 256] (FlashAttention)");
  MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    impl_ = std::make_unique<Impl>();
    impl_->tail_counter = Buffer(sizeof(int32_t), Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(impl_->tail_counter.data(), 0, sizeof(int32_t)));
    // Paged attention's split counters: one per (sequence, kv head, row block) of a launch; a decode step
    // needs S x Hkv of them. Launches that would need more take the combine kernel.
    impl_->split_counter_count = std::clamp<int64_t>(max_tokens, 1, kMaxSplitCounterTokens) * c.num_kv_heads;
    impl_->split_counters = Buffer(static_cast<size_t>(impl_->split_counter_count) * sizeof(int32_t), Device::cuda);
    MINILLM_CUDA_CHECK(cudaMemset(impl_->split_counters.data(), 0, impl_->split_counters.bytes()));
    if (moe_layer_supports(c)) {
      const MoEConfig mc = moe_config(c);
      impl_->moe.reserve(static_cast<size_t>(c.num_layers));
      for (int l = 0; l < c.num_layers; ++l) impl_->moe.emplace_back(mc);
    }
    if (c.position == PositionType::rope) {
      // Positions are < N <= min(max_seq_len, max_tokens).
      impl_->rope_max_pos = static_cast<int>(std::min<int64_t>(c.max_seq_len, std::max<int64_t>(max_tokens, 1)));
      const int half = c.head_dim / 2;
      std::vector<float2> table(static_cast<size_t>(impl_->rope_max_pos) * half);
      ke::rope_table(table.data(), impl_->rope_max_pos, c.head_dim, c.rope_theta);
      impl_->rope_table = Buffer(table.size() * sizeof(float2), Device::cuda);
      to_device(impl_->rope_table.data(), table.data(), table.size() * sizeof(float2));
      impl_->fused_qkv = fused_qkv_supported(c);
      if (impl_->fused_qkv) {
        impl_->tile_counter = Buffer(sizeof(int32_t), Device::cuda);
        MINILLM_CUDA_CHECK(cudaMemset(impl_->tile_counter.data(), 0, sizeof(int32_t)));
      }
    }
  } catch (...) {
    impl_.reset();
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  impl_.reset();
  cudaStreamDestroy(stream_);
}

void CudaBackend::embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  OpScope s(*this, "embedding");
  ke::embedding(table.dtype, ids.ptr<int32_t>(), table.data, out.data, ids.numel(), table.size(1), stream_);
}

void CudaBackend::linear(const Tensor& x, const Tensor& w, Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  MINILLM_CHECK(w.size(1) == K && y.size(0) == M && y.size(1) == N && w.dtype == x.dtype,
                "linear: x " << x.shape_str() << " " << dtype_name(x.dtype) << ", w " << w.shape_str() << " "
                             << dtype_name(w.dtype) << ", y " << y.shape_str() << " do not match");
  const char* kind = N == config_.vocab_size && w.data != nullptr && K == config_.hidden_size ? "lm_head"
                     : N == config_.qkv_dim()                                                 ? "qkv"
                                                                                              : "o_proj";
  OpScope s(*this, kind);
  impl_->gemm.linear(x.data, w.data, y.data, M, N, K, x.dtype, y.dtype, stream_);
}

namespace {

// RoPE's positions for a step batch: forward()'s padded batch rotates row t at t % N; otherwise each
// token has its position (< max_context) in b.positions.
struct RopePositions {
  int N;
  const int32_t* positions;
};

RopePositions rope_positions(const StepBatch& b, int planned) {
  const int bound = b.uniform_len > 0 ? b.uniform_len : b.max_context;
  MINILLM_CHECK(bound <= planned, "rope: position " << bound - 1 << " beyond the planned " << planned);
  return {b.uniform_len > 0 ? b.uniform_len : 1, b.uniform_len > 0 ? nullptr : b.positions.ptr<int32_t>()};
}

// Where a QKV kernel stores the step's k and v: layer `layer` of the cache at b's slots (none without a cache).
ke::KvStore kv_store(const StepBatch* b, const KVCache* cache, int layer) {
  if (!cache) return {};
  return {b->slot_mapping.ptr<int32_t>(), cache->k[layer].data, cache->v[layer].data};
}

}  // namespace

void CudaBackend::rope(Tensor& qkv, const StepBatch& b, const ModelConfig& c) { rope_store(qkv, b, c, nullptr, 0); }

void CudaBackend::rope_store(Tensor& qkv, const StepBatch& b, const ModelConfig& c, const KVCache* cache, int layer) {
  OpScope s(*this, "rope");
  const RopePositions rp = rope_positions(b, impl_->rope_max_pos);
  ke::rope(c.dtype, qkv.data, b.T, rp.N, c.num_heads + c.num_kv_heads, c.head_dim, c.qkv_dim(),
           static_cast<const float2*>(impl_->rope_table.data()), stream_, rp.positions, kv_store(&b, cache, layer),
           c.num_kv_heads);
}

void CudaBackend::qkv_bias_norm(Tensor& qkv, const LayerWeights& w, const ModelConfig& c) {
  bias_norm_rope(qkv, w, c, nullptr);
}

ke::QkvFinish CudaBackend::qkv_finish(const LayerWeights& w, const ModelConfig& c, const StepBatch* b,
                                      const KVCache* cache, int layer) const {
  ke::QkvFinish f;
  const bool qkn = c.qk_norm != QkNorm::none;
  f.bias = w.bqkv.data ? w.bqkv.ptr<float>() : nullptr;
  f.q_norm = qkn ? w.q_norm.ptr<float>() : nullptr;
  f.k_norm = qkn ? w.k_norm.ptr<float>() : nullptr;
  f.Hq = c.num_heads;
  f.Hkv = c.num_kv_heads;
  f.D = c.head_dim;
  f.per_head = c.qk_norm == QkNorm::per_head;
  f.eps = c.norm_eps;
  if (b && c.position == PositionType::rope) {
    const RopePositions rp = rope_positions(*b, impl_->rope_max_pos);
    f.cos_sin = static_cast<const float2*>(impl_->rope_table.data());
    f.N = rp.N;
    f.positions = rp.positions;
  }
  f.store = kv_store(b, cache, layer);
  return f;
}

void CudaBackend::bias_norm_rope(Tensor& qkv, const LayerWeights& w, const ModelConfig& c, const StepBatch* b,
                                 const KVCache* cache, int layer) {
  OpScope s(*this, b && c.position == PositionType::rope ? "qkv_bias_norm_rope" : "qkv_bias_norm");
  ke::qkv_bias_norm_rope(c.dtype, qkv.data, qkv.size(0), qkv_finish(w, c, b, cache, layer), stream_);
}

void CudaBackend::kv_cache_write(const Tensor& qkv, const StepBatch& b, const KVCache& cache, int layer,
                                 const ModelConfig& c) {
  OpScope s(*this, "kv_cache_write");
  const auto* base = static_cast<const char*>(qkv.data);
  const size_t es = dtype_size(c.dtype);
  cuda::kv_cache_write(base + es * c.q_dim(), base + es * (c.q_dim() + c.kv_dim()), c.qkv_dim(), c.qkv_dim(),
                       b.slot_mapping.ptr<int32_t>(), b.T, c.num_kv_heads, c.head_dim, cache.k[layer].data,
                       cache.v[layer].data, c.dtype, stream_);
}

void CudaBackend::qkv(const Tensor& x, const LayerWeights& lw, Tensor& y, const StepBatch& b, const ModelConfig& c,
                      const KVCache* cache, int layer) {
  const bool extra = lw.bqkv.data || c.qk_norm != QkNorm::none;
  // The RoPE epilogue computes position row % N: forward()'s padded layout only. It adds the bias and
  // normalises per head; a norm over the whole projection spans tiles and takes the separate pass.
  if (!impl_->fused_qkv || b.uniform_len == 0 || c.qk_norm == QkNorm::full) {
    // A few rows (decode): the GEMM's last block finishes the rows (bias, qk-norm, RoPE, cache store).
    const int64_t T = x.size(0), H = x.size(1), N = lw.wqkv.size(0);
    if ((extra || c.position == PositionType::rope || cache) &&
        ke::Gemm::fuses_qkv_finish(x.data, lw.wqkv.data, T, N, H, x.dtype, y.dtype) && lw.wqkv.size(1) == H &&
        N == c.qkv_dim() && y.size(0) == T && y.size(1) == N && lw.wqkv.dtype == x.dtype) {
      OpScope s(*this, "qkv");
      impl_->gemm.linear_qkv_finish(x.data, lw.wqkv.data, y.data, T, N, H, c.dtype,
                                    qkv_finish(lw, c, &b, cache, layer),
                                    static_cast<int32_t*>(impl_->tail_counter.data()), stream_);
      return;
    }
    linear(x, lw.wqkv, y);
    if (extra) {  // one pass over q and k, which also stores k and v into the cache
      bias_norm_rope(y, lw, c, &b, cache, layer);
      return;
    }
    if (c.position == PositionType::rope) {
      rope_store(y, b, c, cache, layer);  // rotates q and k, stores k and v into the cache
    } else if (cache) {
      kv_cache_write(y, b, *cache, layer, c);
    }
    return;
  }
  const Tensor& w = lw.wqkv;
  const int N = b.uniform_len;
  const int64_t T = b.T, H = c.hidden_size;
  MINILLM_CHECK(x.size(0) == T && x.size(1) == H && w.size(0) == c.qkv_dim() && w.size(1) == H &&
                    y.size(0) == T && y.size(1) == c.qkv_dim() && x.dtype == c.dtype && w.dtype == c.dtype,
                "qkv: x " << x.shape_str() << ", w " << w.shape_str() << ", y " << y.shape_str() << " do not match");
  MINILLM_CHECK(N <= impl_->rope_max_pos, "qkv: seq_len = " << N << " exceeds the planned " << impl_->rope_max_pos);
  {
    OpScope s(*this, "qkv");
    ke::QkvExtras ex;
    ex.bias = lw.bqkv.data ? lw.bqkv.ptr<float>() : nullptr;
    if (c.qk_norm == QkNorm::per_head) {
      ex.q_norm = lw.q_norm.ptr<float>();
      ex.k_norm = lw.k_norm.ptr<float>();
    }
    ex.q_heads = c.num_heads;
    ex.eps = c.norm_eps;
    ke::qkv_rope(c.dtype, x.data, w.data, y.data, T, H, c.qkv_dim(), N, c.num_heads + c.num_kv_heads, c.head_dim,
                 static_cast<const float2*>(impl_->rope_table.data()),
                 static_cast<int32_t*>(impl_->tile_counter.data()), stream_, ex);
  }
  if (cache) kv_cache_write(y, b, *cache, layer, c);
}

namespace {

// FlashAttention over the new tokens inside qkv [T, qkv_dim] (no prefix): padded [S, N] when
// uniform_len = N, else varlen over cu_seqlens_q.
void flash_over_qkv(const Tensor& qkv, Tensor& out, const StepBatch& b, const ModelConfig& c, cudaStream_t stream) {
  FlashAttentionParams p;
  const auto* base = static_cast<const char*>(qkv.data);
  const size_t es = dtype_size(c.dtype);
  p.q = base;
  p.k = base + es * c.q_dim();
  p.v = base + es * (c.q_dim() + c.kv_dim());
  p.o = out.data;
  p.dtype = c.dtype;
  p.batch = b.S;
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = c.qkv_dim();
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = c.head_dim;
  p.o_row_stride = c.q_dim();
  if (b.uniform_len > 0) {
    const int N = b.uniform_len;
    p.seqlen_q = p.seqlen_k = N;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = static_cast<int64_t>(N) * c.qkv_dim();
    p.o_batch_stride = static_cast<int64_t>(N) * c.q_dim();
  } else {
    p.seqlen_q = p.seqlen_k = b.max_q_len;
    p.cu_seqlens_q = p.cu_seqlens_k = b.cu_seqlens_q.ptr<int32_t>();
  }
  p.causal = c.causal;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  flash_attention_forward(p, stream);
}

cuda::PagedAttentionParams paged_params(const ModelConfig& c, int S, int T, int max_q, int max_ctx) {
  cuda::PagedAttentionParams p;
  p.dtype = c.dtype;
  p.num_seqs = S;
  p.num_tokens = T;
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.q_row = c.qkv_dim();
  p.out_row = c.q_dim();
  p.max_query_len = max_q;
  p.max_context_len = max_ctx;
  p.max_pages = (max_ctx + kPageSize - 1) / kPageSize;
  p.causal = c.causal;
  return p;
}

}  // namespace

void CudaBackend::attention(const Tensor& qkv, Tensor& out, const StepBatch& b, const KVCache* cache, int layer,
                            const ModelConfig& c, Workspace& ws) {
  OpScope s(*this, "attention");
  if (!cache) {
    flash_over_qkv(qkv, out, b, c, stream_);
    return;
  }
  if (b.no_prefix) {  // prefills from position 0: the new tokens are the whole context (qkv() stored them)
    flash_over_qkv(qkv, out, b, c, stream_);
    return;
  }
  cuda::PagedAttentionParams p = paged_params(c, b.S, b.T, b.max_q_len, b.max_context);
  p.q = qkv.data;
  p.k_cache = cache->k[layer].data;
  p.v_cache = cache->v[layer].data;
  p.out = out.data;
  p.block_table = b.block_table.ptr<int32_t>();
  p.context_lens = b.context_lens.ptr<int32_t>();
  p.cu_seqlens_q = b.cu_seqlens_q.ptr<int32_t>();
  p.max_pages = b.max_pages;
  p.workspace_bytes = cuda::paged_attention_workspace_bytes(p);
  const size_t mark = ws.used();
  p.workspace = p.workspace_bytes ? ws.alloc_bytes(p.workspace_bytes) : nullptr;
  if (cuda::paged_attention_split_counters(p) <= impl_->split_counter_count) {
    p.split_counters = static_cast<int32_t*>(impl_->split_counters.data());
    p.split_counter_count = impl_->split_counter_count;
  }
  cuda::paged_attention(p, stream_);
  ws.rewind(mark);
}

void CudaBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  OpScope s(*this, "lm_head");
  ke::embedding(x.dtype, rows.ptr<int32_t>(), x.data, out.data, rows.numel(), x.size(1), stream_);
}

void CudaBackend::sample(Tensor& logits, const SampleArgs& a) {
  OpScope s(*this, "sample");
  MINILLM_CHECK(logits.dtype == DType::f32, "sample: logits must be fp32, got " << dtype_name(logits.dtype));
  cuda::sampling::sample(logits.ptr<float>(), logits.size(0), logits.size(1), a, stream_);
}

void CudaBackend::add_norm(Tensor& x, const Tensor* delta, const NormWeights& n, const ModelConfig& c, Tensor& out) {
  OpScope s(*this, "add_norm");
  const int64_t T = x.size(0);
  const int parts = delta && T > 0 ? static_cast<int>(delta->size(0) / T) : 1;  // rows of delta per token
  MINILLM_CHECK(!delta || delta->size(0) == T * parts, "add_norm: delta " << delta->shape_str() << " for x " << x.shape_str());
  ke::add_norm(c.dtype, x.data, delta ? delta->data : nullptr, parts, n.w.ptr<float>(), n.b.data ? n.b.ptr<float>() : nullptr,
               c.norm_type == NormType::rmsnorm, c.norm_eps, out.data, x.size(0), x.size(1), stream_);
}

namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

ResidualNorm CudaBackend::residual_norm(Tensor& x, const NormWeights& n, const ModelConfig& c, Tensor& out) const {
  ResidualNorm r;
  r.x = x.data;
  r.out = out.data;
  r.w = n.w.ptr<float>();
  r.b = n.b.data ? n.b.ptr<float>() : nullptr;
  r.rmsnorm = c.norm_type == NormType::rmsnorm;
  r.eps = c.norm_eps;
  r.counter = static_cast<int32_t*>(impl_->tail_counter.data());
  return r;
}

void CudaBackend::linear_add_norm(const Tensor& a, const Tensor& w, Tensor& delta, Tensor& x, const NormWeights& n,
                                  const ModelConfig& c, Tensor& out) {
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  const bool fused = ke::Gemm::fuses_residual_norm(a.data, w.data, M, N, K, a.dtype, delta.dtype) &&
                     w.size(1) == K && delta.size(0) == M && delta.size(1) == N && x.size(0) == M &&
                     x.size(1) == N && out.size(0) == M && out.size(1) == N && aligned16(x.data) &&
                     aligned16(out.data) && w.dtype == a.dtype && x.dtype == a.dtype && out.dtype == a.dtype;
  if (!fused) {
    linear(a, w, delta);
    add_norm(x, &delta, n, c, out);
    return;
  }
  OpScope s(*this, "o_proj");
  const ResidualNorm then = residual_norm(x, n, c, out);
  impl_->gemm.linear_residual_norm(a.data, w.data, delta.data, M, N, K, a.dtype, then, stream_);
}

void CudaBackend::moe_add_norm(const Tensor& h, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y,
                               Workspace& ws, Tensor& x, const NormWeights& n, Tensor& out) {
  const ResidualNorm then = residual_norm(x, n, c, out);
  const bool fit = x.size(0) == h.size(0) && out.size(0) == h.size(0) && aligned16(x.data) && aligned16(out.data);
  if (!run_moe(h, w, layer, c, y, ws, fit ? &then : nullptr)) add_norm(x, &y, n, c, out);
}

void CudaBackend::moe(const Tensor& x, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y,
                      Workspace& ws) {
  run_moe(x, w, layer, c, y, ws, nullptr);
}

bool CudaBackend::run_moe(const Tensor& x, const LayerWeights& w, int layer, const ModelConfig& c, Tensor& y,
                          Workspace& ws, const ResidualNorm* then) {
  OpScope s(*this, "moe");
  bool fused = false;
  const int64_t T = x.size(0), H = c.hidden_size;
  const bool shared_inside = !impl_->moe.empty() && impl_->moe.front().config().shared_experts > 0;
  const int64_t Fs = shared_inside ? 0 : c.moe.shared_expert_ffn;  // a shared expert run apart
  const size_t routed = routed_workspace_bytes(c, T);
  const size_t mark = ws.used();
  char* scratch = static_cast<char*>(ws.alloc_bytes(routed + shared_workspace_bytes(c, T)));
  if (!impl_->moe.empty()) {
    MoELayer& m = impl_->moe.at(static_cast<size_t>(layer));
    m.set_weights(w.router.data, w.w1.data, w.w3.data, w.w2.data, w.w1.stride[1], w.w2.stride[1],
                  shared_inside ? w.shared_gate.data : nullptr);
    if (Fs > 0) {
      m.forward(x.data, y.data, T, scratch, routed, stream_);  // y [T, H]: the shared expert is added onto it
    } else {
      // y [T * slots, H]: add_norm (or the layer's last kernel, with `then`) sums the rows (the routed
      // experts' and the shared expert's chunks).
      fused = then && m.fuses_residual_norm(T);
      m.forward_pairs(x.data, y.data, T, scratch, routed, stream_, fused ? then : nullptr);
    }
  } else {
    ke::moe_fallback(c.dtype, x.data, w.router.data, w.w1.data, w.w3.data, w.w2.data, T, H, c.moe.num_experts,
                     c.moe.ffn_size, c.moe.top_k, c.moe.normalize_topk, c.moe.activation == ExpertActivation::swiglu,
                     y.data, scratch, stream_);
  }
  if (Fs > 0) {  // y += sigmoid(x . gate) * w2s(silu(w1s x) * w3s x)
    const size_t es = dtype_size(c.dtype);
    char* gu = scratch + routed;                           // [T, 2 Fs]
    char* a = gu + align256(static_cast<size_t>(T * 2 * Fs) * es);  // [T, Fs]
    char* o = a + align256(static_cast<size_t>(T * Fs) * es);       // [T, H]
    impl_->gemm.linear(x.data, w.ws13.data, gu, T, 2 * Fs, H, c.dtype, c.dtype, stream_);
    ke::swiglu_rows(c.dtype, gu, a, T, Fs, stream_);
    impl_->gemm.linear(a, w.ws2.data, o, T, H, Fs, c.dtype, c.dtype, stream_);
    ke::shared_expert_add(c.dtype, x.data, w.shared_gate.data, o, y.data, T, H, stream_);
  }
  ws.rewind(mark);
  return fused;
}

int CudaBackend::moe_output_parts(const ModelConfig& c) const {
  if (!moe_layer_supports(c)) return 1;
  const MoEConfig m = moe_config(c);
  return c.moe.shared_expert_ffn > 0 && m.shared_experts == 0 ? 1 : static_cast<int>(m.slots());
}

int64_t CudaBackend::shared_expert_chunks(const ModelConfig& c) const {
  return moe_layer_supports(c) ? moe_config(c).shared_experts : 0;
}

int64_t CudaBackend::expert_row_stride(int64_t cols) const {
  // Only MoELayer reads padded rows; the fallback path wants them dense.
  return moe_layer_supports(config_) ? MoELayer::weight_row_stride(cols) : cols;
}

size_t CudaBackend::routed_workspace_bytes(const ModelConfig& c, int64_t T) {
  const size_t bytes = moe_layer_supports(c) ? MoELayer::workspace_bytes(moe_config(c), T)
                                             : ke::moe_fallback_workspace(T, c.moe.ffn_size, c.moe.top_k);
  return align256(bytes);
}

size_t CudaBackend::shared_workspace_bytes(const ModelConfig& c, int64_t T) {
  const int64_t Fs = c.moe.shared_expert_ffn;
  if (Fs == 0 || (moe_layer_supports(c) && moe_config(c).shared_experts > 0)) return 0;
  const size_t es = dtype_size(c.dtype);
  return align256(static_cast<size_t>(T * 2 * Fs) * es) + align256(static_cast<size_t>(T * Fs) * es) +
         align256(static_cast<size_t>(T * c.hidden_size) * es);
}

size_t CudaBackend::op_workspace_bytes(const ModelConfig& c, int64_t T) const {
  size_t bytes = routed_workspace_bytes(c, T) + shared_workspace_bytes(c, T);
  // The paged attention's split-KV partials (not live at the same time as the MoE's scratch): the
  // most over the step shapes of up to T tokens at full context: S decoding sequences (every S up
  // to 1024, then powers of two), and S sequences of T / S new tokens; twice that, since the split
  // count is a heuristic of the shape (an overrun is an error, never a wild write).
  size_t paged = 0;
  const bool paged_supported = c.head_dim == 64 || c.head_dim == 128;  // else attention over a cache is refused
  for (int64_t S = 1; paged_supported && S <= T; S = S < 1024 ? S + 1 : 2 * S)
    for (int64_t q : {int64_t{1}, T / S})
      paged = std::max(paged, cuda::paged_attention_workspace_bytes(paged_params(
                                  c, static_cast<int>(S), static_cast<int>(S * q), static_cast<int>(q), c.max_seq_len)));
  bytes = std::max(bytes, 2 * paged);
  return (bytes + 255) / 256 * 256 + 256;  // + the arena's alignment slack
}

void CudaBackend::to_device(void* dst, const void* src, size_t bytes) {
  MINILLM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void CudaBackend::to_host(void* dst, const void* src, size_t bytes) {
  MINILLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  MINILLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::synchronize() { MINILLM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaBackend::to_device_async(void* dst, const void* src, size_t bytes) {
  // Pageable source: staged by the driver before the call returns, so it may be reused at once.
  MINILLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
}

size_t CudaBackend::free_device_bytes() const {
  size_t free = 0, total = 0;
  MINILLM_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free;
}

void CudaBackend::run_graph(int64_t key, bool use_graph, const std::function<void()>& enqueue) {
  if (!use_graph || impl_->profiling) {
    enqueue();
    return;
  }
  auto it = graphs_.find(key);
  if (it != graphs_.end()) {
    MINILLM_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    return;
  }
  // First use of this shape: run eagerly (this also loads the kernels, sets their attributes and
  // plans the GEMMs outside of the capture), then record the same work into a graph.
  enqueue();
  MINILLM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    enqueue();
  } catch (...) {
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  MINILLM_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MINILLM_CUDA_CHECK(err);
  graphs_.emplace(key, exec);
}

void CudaBackend::begin_profile() {
  impl_->profiling = true;
  impl_->used_pairs = 0;
}

std::vector<std::pair<std::string, double>> CudaBackend::end_profile() {
  Impl& m = *impl_;
  m.profiling = false;
  synchronize();
  std::vector<std::pair<std::string, double>> out;
  for (size_t i = 0; i < m.used_pairs; ++i) {
    float ms = 0.f;
    MINILLM_CUDA_CHECK(cudaEventElapsedTime(&ms, m.events[2 * i], m.events[2 * i + 1]));
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& p) { return p.first == m.kinds[i]; });
    if (it == out.end()) {
      out.emplace_back(m.kinds[i], ms);
    } else {
      it->second += ms;
    }
  }
  return out;
}

#ifdef MINILLM_WITH_CUDA
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& c, int max_tokens) {
  return std::make_unique<CudaBackend>(c, max_tokens);
}
#endif

}  // namespace minillm
