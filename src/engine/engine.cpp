// InferenceEngine: weights uploaded once, one workspace planned at construction, forward() with
// input validation at the boundary (the engine stays usable after a rejected call).
//
// Memory plan (one device arena, no allocation in forward): transformer_forward takes, in order,
// x [T, H], h [T, H], qkv, attn and delta from the workspace, then each op's scratch. The logits
// [T, V] share the same arena: only the LM head writes them, and at that point the only live
// activation it reads is x (post-norm) or h (pre-norm), the first two slots. So the logits start
// after two [max_tokens, H] slots, and the arena is max(activations + scratch, 2 slots + logits)
// instead of their sum (medium at B8 N2048: 1.08 GB instead of 1.6 GB with bf16 logits).
//
// forward(ids) is one prefill step of the step-batch graph (transformer_forward over a StepBatch of
// B sequences of N tokens, no KV cache, logits for every row). Its i32 arrays live in meta_buf with
// the ids first; the padded layout's other arrays are host-computable, and only the CPU backend
// reads them (positions), so CUDA uploads just the ids.
//
// CUDA: the backend owns a non-blocking stream; forward work is replayed from one CUDA graph per
// (B, N) shape (EngineOptions::cuda_graphs), and token ids are always range-checked on the host
// before any launch. forward_device orders itself after the caller's stream with events and never
// waits for the forward to finish.
#include "minillm/engine.h"

#include <chrono>
#include <cstring>

#include "engine/backend.h"
#include "model/checkpoint.h"

#ifdef MINILLM_WITH_CUDA
#include "cuda/engine/cuda_backend.h"
#include "minillm/core/cuda_check.h"
#endif

namespace minillm {

namespace {
size_t align256(size_t n) { return (n + 255) / 256 * 256; }

bool resolve_cuda(const std::string& device) {
  if (device == "cuda") {
    if (!cuda_available()) MINILLM_FAIL("engine: device 'cuda' requested but no CUDA device (or no CUDA build) is available");
    return true;
  }
  if (device == "auto") return cuda_available();
  if (device != "cpu") MINILLM_FAIL("engine: device = " << excerpt(device) << " is not one of: auto, cpu, cuda");
  return false;
}

// Validates the plan's shape; returns max_seq with 0 meaning the config's max_seq_len.
int resolve_max_seq(const ModelConfig& c, int max_batch, int max_seq) {
  if (max_batch <= 0) MINILLM_FAIL("engine: max_batch = " << max_batch << " must be positive");
  if (max_seq < 0) MINILLM_FAIL("engine: max_seq = " << max_seq << " must be positive (or 0: the config's max_seq_len)");
  const int n = max_seq > 0 ? max_seq : c.max_seq_len;
  if (n > c.max_seq_len)
    MINILLM_FAIL("engine: max_seq = " << n << " exceeds the config's max_seq_len = " << c.max_seq_len);
  const int64_t tokens = static_cast<int64_t>(max_batch) * n;
  if (tokens > (int64_t{1} << 30))
    MINILLM_FAIL("engine: max_batch x max_seq = " << max_batch << " x " << n << " = " << tokens
                                                  << " tokens exceeds the supported 2^30");
  return n;
}

// The engine's memory plan on backend `be` (see MemoryEstimate). All products in 64 bits: the config
// bounds and the 2^30-token cap keep them below 2^63.
MemoryEstimate plan_memory(const Backend& be, const ModelConfig& c, int B, int N, DType logits_dtype) {
  const int64_t T = static_cast<int64_t>(B) * N;
  const int64_t es = static_cast<int64_t>(dtype_size(be.act_dtype()));
  const int64_t H = c.hidden_size, V = c.vocab_size, E = c.moe.num_experts, F = c.moe.ffn_size;
  auto bytes = [](int64_t elems, int64_t elem_size) { return static_cast<size_t>(elems * elem_size); };
  const int64_t norm = (c.norm_type == NormType::layernorm ? 2 : 1);
  const int64_t mats_fh = c.moe.activation == ExpertActivation::swiglu ? 2 : 1;  // w1 (and w3): [E, F, H]
  size_t per_layer = bytes(c.qkv_dim() * H, es) + bytes(H * c.q_dim(), es) + 2 * norm * bytes(H, 4) +
                     bytes(E * H, es) + mats_fh * bytes(E * F * be.expert_row_stride(H), es) +
                     bytes(E * H * be.expert_row_stride(F), es);
  MemoryEstimate m;
  m.device = be.device();
  m.weights = bytes(V * H, es) * (c.tie_embeddings ? 1 : 2) + static_cast<size_t>(c.num_layers) * per_layer +
              (c.norm_placement == NormPlacement::pre ? norm * bytes(H, 4) : 0);
  // The logits share the arena with the activations (see the header comment).
  const size_t slot = align256(static_cast<size_t>(T * H * es));
  const size_t logits = static_cast<size_t>(T * V) * dtype_size(logits_dtype);
  m.workspace = std::max(transformer_workspace_bytes(be, c, T, T), 2 * slot + logits);
  m.ids = static_cast<size_t>(4 * T + 2 * B + 1) * 4;  // the packed StepBatch (meta_buf)
  m.host_weights = static_cast<size_t>(c.num_parameters()) * dtype_size(c.dtype);
  return m;
}
}  // namespace

MemoryEstimate estimate_memory(const ModelConfig& config, int max_batch, int max_seq, const EngineOptions& opts) {
  config.validate();
  const int n = resolve_max_seq(config, max_batch, max_seq);
  const bool use_cuda = resolve_cuda(opts.device);
#ifdef MINILLM_WITH_CUDA
  if (use_cuda) {
    CudaBackend be(config, static_cast<int64_t>(max_batch) * n);
    return plan_memory(be, config, max_batch, n, opts.logits_dtype);
  }
#endif
  (void)use_cuda;
  return plan_memory(*make_cpu_backend(), config, max_batch, n, DType::f32);
}

void check_memory(const MemoryEstimate& m, int max_batch, int max_seq, bool with_host_weights) {
  auto fail = [&](Device d, size_t need, size_t avail, const std::string& parts) {
    MINILLM_FAIL("memory: batch " << max_batch << " x seq " << max_seq << " needs "
                                  << format_bytes(static_cast<double>(need)) << " on " << device_name(d) << " (" << parts
                                  << "), more than the " << format_bytes(static_cast<double>(avail)) << " available"
                                  << (d == Device::cpu ? " (MemAvailable)" : " (free device memory)"));
  };
  const std::string parts = "weights " + format_bytes(static_cast<double>(m.weights)) + ", workspace " +
                            format_bytes(static_cast<double>(m.workspace)) + " for activations and logits";
  const std::string host = "the host copy of the weights " + format_bytes(static_cast<double>(m.host_weights));
  if (m.device == Device::cpu) {
    const size_t need = m.device_total() + (with_host_weights ? m.host_weights : 0);
    const size_t avail = available_memory(Device::cpu);
    if (avail && need > avail) fail(Device::cpu, need, avail, with_host_weights ? parts + ", " + host : parts);
    return;
  }
  const size_t avail = available_memory(Device::cuda);
  if (avail && m.device_total() > avail) fail(Device::cuda, m.device_total(), avail, parts);
  const size_t host_avail = available_memory(Device::cpu);
  if (with_host_weights && host_avail && m.host_weights > host_avail) fail(Device::cpu, m.host_weights, host_avail, host);
}

struct InferenceEngine::Impl {
  std::unique_ptr<Backend> backend;
  ModelWeights weights;
  Workspace ws;              // activations, op scratch, and the logits at logits_offset
  size_t logits_offset = 0;  // bytes from the workspace's base
  char* ws_base = nullptr;
  Buffer meta_buf;  // the StepBatch's i32 arrays (step_batch.h) for max_batch x max_seq, ids first
  StepBatchBuilder batch;  // of the last (B, N)
  int64_t batch_key = -1;
  std::vector<int32_t> meta_host;
  DType logits_dtype = DType::f32;
  size_t weight_bytes = 0;
  bool graphs = false;
#ifdef MINILLM_WITH_CUDA
  CudaBackend* cuda = nullptr;  // == backend.get() on the CUDA device
  cudaEvent_t caller_ready = nullptr, done = nullptr;
#endif

  ~Impl() {
#ifdef MINILLM_WITH_CUDA
    if (cuda) cudaStreamSynchronize(cuda->stream());
    if (caller_ready) cudaEventDestroy(caller_ready);
    if (done) cudaEventDestroy(done);
#endif
  }
  void* logits_data() const { return ws_base + logits_offset; }
};

InferenceEngine::InferenceEngine(const ModelConfig& config, const WeightStore& weights, const EngineOptions& opts)
    : config_(config), impl_(std::make_unique<Impl>()) {
  init(opts, *make_store_source(weights));
}

InferenceEngine::InferenceEngine(const std::string& model_dir, const EngineOptions& opts)
    : impl_(std::make_unique<Impl>()) {
  const CheckpointInfo info = inspect_checkpoint(model_dir);
  config_ = info.config;
  init(opts, CheckpointSource(info, opts.on_load_progress));
}

void InferenceEngine::init(const EngineOptions& opts, const WeightSource& weights) {
  config_.validate();
  max_batch_ = opts.max_batch;
  max_seq_ = resolve_max_seq(config_, opts.max_batch, opts.max_seq);
  const bool use_cuda = resolve_cuda(opts.device);
  const int64_t max_tokens = static_cast<int64_t>(max_batch_) * max_seq_;
  if (!use_cuda && opts.logits_dtype != DType::f32)
    MINILLM_FAIL("engine: logits_dtype = " << dtype_name(opts.logits_dtype)
                                           << " needs the CUDA backend (the CPU backend computes f32 logits)");
  const DType logits_dtype = opts.logits_dtype;
  if (logits_dtype != DType::f32 && logits_dtype != config_.dtype)
    MINILLM_FAIL("engine: logits_dtype = " << dtype_name(opts.logits_dtype) << " must be f32 or the model dtype "
                                           << dtype_name(config_.dtype));
#ifdef MINILLM_WITH_CUDA
  if (use_cuda) {
    auto be = std::make_unique<CudaBackend>(config_, max_tokens);
    impl_->cuda = be.get();
    impl_->backend = std::move(be);
    MINILLM_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->caller_ready, cudaEventDisableTiming));
    MINILLM_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->done, cudaEventDisableTiming));
  } else {
    impl_->backend = make_cpu_backend();
  }
#else
  (void)use_cuda;
  impl_->backend = make_cpu_backend();
#endif
  Backend& be = *impl_->backend;
  impl_->logits_dtype = logits_dtype;
  impl_->graphs = opts.cuda_graphs;
  // Refuse up front, before any large allocation, when the plan does not fit.
  const MemoryEstimate plan = plan_memory(be, config_, max_batch_, max_seq_, logits_dtype);
  check_memory(plan, max_batch_, max_seq_, false);
  impl_->weights = upload_weights(be, config_, weights);
  for (const Buffer& b : impl_->weights.storage) impl_->weight_bytes += b.bytes();

  const size_t slot = align256(static_cast<size_t>(max_tokens) * config_.hidden_size * dtype_size(be.act_dtype()));
  impl_->logits_offset = 2 * slot;
  impl_->ws = Workspace(plan.workspace, be.device());
  impl_->ws_base = static_cast<char*>(impl_->ws.alloc_bytes(1));
  impl_->ws.reset();
  // packed StepBatch of the padded layout: ids, positions, slots, rows [T] each; cu_seqlens, context_lens
  impl_->meta_buf = Buffer(plan.ids, be.device());
}

InferenceEngine::~InferenceEngine() = default;

Device InferenceEngine::device() const { return impl_->backend->device(); }
size_t InferenceEngine::weight_bytes() const { return impl_->weight_bytes; }
size_t InferenceEngine::workspace_bytes() const { return impl_->ws.capacity(); }
DType InferenceEngine::logits_dtype() const { return impl_->logits_dtype; }

void InferenceEngine::check_shape(int B, int N) const {
  if (B <= 0 || B > max_batch_)
    MINILLM_FAIL("forward: batch = " << B << " is outside [1, " << max_batch_ << "] (the engine's max_batch)");
  if (N <= 0) MINILLM_FAIL("forward: seq_len = " << N << " must be positive");
  if (N > config_.max_seq_len)
    MINILLM_FAIL("forward: seq_len = " << N << " exceeds the model's max_seq_len = " << config_.max_seq_len);
  if (N > max_seq_) MINILLM_FAIL("forward: seq_len = " << N << " exceeds the engine's max_seq = " << max_seq_);
}

void InferenceEngine::check_ids(const int32_t* ids, int B, int N) const {
  const int64_t T = static_cast<int64_t>(B) * N;
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= config_.vocab_size)
      MINILLM_FAIL("forward: token id " << ids[t] << " at position [" << t / N << ", " << t % N
                                        << "] is out of range [0, " << config_.vocab_size << ")");
  }
}

Tensor InferenceEngine::logits_view(int B, int N) const {
  return Tensor(impl_->logits_data(), impl_->logits_dtype, device(),
                {static_cast<int64_t>(B), static_cast<int64_t>(N), config_.vocab_size});
}

// Enqueues the forward pass over the ids already at the start of meta_buf (CPU: runs it).
void InferenceEngine::run(int B, int N) {
  const int64_t T = static_cast<int64_t>(B) * N;
  StepBatchBuilder& sb = impl_->batch;
  const int64_t key = static_cast<int64_t>(B) << 32 | N;
  if (key != impl_->batch_key) {  // the padded layout depends on (B, N) only
    sb.reset(0, kPageSize);
    for (int b = 0; b < B; ++b) sb.add(nullptr, N, 0, nullptr, 0, false);
    sb.set_uniform(N);
    impl_->batch_key = key;
  }
  if (device() == Device::cpu) {  // the other arrays, after the ids already there
    impl_->meta_host.resize(sb.packed_size());
    sb.pack(impl_->meta_host.data());
    std::memcpy(static_cast<int32_t*>(impl_->meta_buf.data()) + T, impl_->meta_host.data() + T,
                (impl_->meta_host.size() - static_cast<size_t>(T)) * 4);
  }
  const StepBatch batch = sb.view(impl_->meta_buf.data(), device());
  Tensor logits(impl_->logits_data(), impl_->logits_dtype, device(), {T, config_.vocab_size});
  auto enqueue = [&] {
    impl_->ws.reset();
    transformer_forward(*impl_->backend, config_, impl_->weights, batch, nullptr, impl_->ws, logits);
  };
  impl_->backend->run_graph(key, impl_->graphs, enqueue);
}

std::vector<float> InferenceEngine::forward(const int32_t* ids, int B, int N) {
  check_shape(B, N);
  check_ids(ids, B, N);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t T = static_cast<int64_t>(B) * N;
  const size_t n = static_cast<size_t>(T) * config_.vocab_size;
#ifdef MINILLM_WITH_CUDA
  if (impl_->cuda) {
    // Pageable source: the copy is staged before the call returns, so `ids` may be reused at once.
    MINILLM_CUDA_CHECK(
        cudaMemcpyAsync(impl_->meta_buf.data(), ids, static_cast<size_t>(T) * 4, cudaMemcpyHostToDevice, impl_->cuda->stream()));
  } else {
    impl_->backend->to_device(impl_->meta_buf.data(), ids, static_cast<size_t>(T) * 4);
  }
#else
  impl_->backend->to_device(impl_->meta_buf.data(), ids, static_cast<size_t>(T) * 4);
#endif
  run(B, N);
  impl_->backend->synchronize();
  timings_.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::vector<float> out(n);
  if (impl_->logits_dtype == DType::f32) {
    impl_->backend->to_host(out.data(), impl_->logits_data(), n * 4);
  } else {
    std::vector<uint16_t> h(n);
    impl_->backend->to_host(h.data(), impl_->logits_data(), n * 2);
    const bool bf = impl_->logits_dtype == DType::bf16;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) out[i] = bf ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
  }
  return out;
}

Tensor InferenceEngine::forward_device(const Tensor& ids, int B, int N, void* stream) {
  check_shape(B, N);
  const int64_t T = static_cast<int64_t>(B) * N;
  if (ids.ndim == 2) {
    check_tensor(ids, "forward: ids", DType::i32, {static_cast<int64_t>(B), static_cast<int64_t>(N)});
  } else {
    check_tensor(ids, "forward: ids", DType::i32, {T});
  }
  MINILLM_CHECK(ids.is_contiguous(), "forward: ids must be contiguous");
  const auto t0 = std::chrono::steady_clock::now();
#ifdef MINILLM_WITH_CUDA
  if (impl_->cuda) {
    const cudaStream_t s = impl_->cuda->stream();
    const cudaStream_t caller = static_cast<cudaStream_t>(stream);
    if (ids.device == Device::cpu) {
      check_ids(ids.ptr<int32_t>(), B, N);
      MINILLM_CUDA_CHECK(cudaMemcpyAsync(impl_->meta_buf.data(), ids.data, static_cast<size_t>(T) * 4,
                                         cudaMemcpyHostToDevice, s));
    } else {
      // The range check stays on the host: a bad id must be an error, not a wild read. The ids are
      // few (4 bytes per token); reading them waits for the caller's stream up to this point.
      std::vector<int32_t> h(static_cast<size_t>(T));
      MINILLM_CUDA_CHECK(cudaMemcpyAsync(h.data(), ids.data, h.size() * 4, cudaMemcpyDeviceToHost, caller));
      MINILLM_CUDA_CHECK(cudaStreamSynchronize(caller));
      check_ids(h.data(), B, N);
      MINILLM_CUDA_CHECK(cudaMemcpyAsync(impl_->meta_buf.data(), ids.data, h.size() * 4, cudaMemcpyDeviceToDevice, s));
    }
    // The previous forward's logits may still be read on the caller's stream: start after it.
    MINILLM_CUDA_CHECK(cudaEventRecord(impl_->caller_ready, caller));
    MINILLM_CUDA_CHECK(cudaStreamWaitEvent(s, impl_->caller_ready, 0));
    run(B, N);
    MINILLM_CUDA_CHECK(cudaEventRecord(impl_->done, s));
    MINILLM_CUDA_CHECK(cudaStreamWaitEvent(caller, impl_->done, 0));
    timings_.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return logits_view(B, N);
  }
#endif
  (void)stream;
  MINILLM_CHECK(ids.device == device(), "forward: ids are on " << device_name(ids.device) << ", the engine on "
                                                               << device_name(device()));
  check_ids(ids.ptr<int32_t>(), B, N);
  impl_->backend->to_device(impl_->meta_buf.data(), ids.data, static_cast<size_t>(T) * 4);
  run(B, N);
  timings_.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return logits_view(B, N);
}

std::vector<std::pair<std::string, double>> InferenceEngine::profile_forward(const int32_t* ids, int B, int N) {
  check_shape(B, N);
  check_ids(ids, B, N);
#ifdef MINILLM_WITH_CUDA
  if (impl_->cuda) {
    const int64_t T = static_cast<int64_t>(B) * N;
    MINILLM_CUDA_CHECK(cudaMemcpyAsync(impl_->meta_buf.data(), ids, static_cast<size_t>(T) * 4, cudaMemcpyHostToDevice,
                                       impl_->cuda->stream()));
    impl_->cuda->begin_profile();
    try {
      run(B, N);
    } catch (...) {
      impl_->cuda->end_profile();
      throw;
    }
    return impl_->cuda->end_profile();
  }
#endif
  MINILLM_FAIL("profile_forward: per-op timing needs the CUDA backend (this engine runs on "
               << device_name(device()) << ")");
}

std::vector<std::pair<std::string, Tensor>> InferenceEngine::weights() const {
  const ModelWeights& w = impl_->weights;
  std::vector<std::pair<std::string, Tensor>> out;
  auto add = [&](const std::string& name, const Tensor& t) {
    if (t.data) out.emplace_back(name, t);
  };
  add("embed", w.embed);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "wqkv", lw.wqkv);
    add(p + "bqkv", lw.bqkv);
    add(p + "q_norm", lw.q_norm);
    add(p + "k_norm", lw.k_norm);
    add(p + "wo", lw.wo);
    add(p + "norm1.w", lw.norm1.w);
    add(p + "norm1.b", lw.norm1.b);
    add(p + "norm2.w", lw.norm2.w);
    add(p + "norm2.b", lw.norm2.b);
    add(p + "router", lw.router);
    add(p + "w1", lw.w1);
    add(p + "w3", lw.w3);
    add(p + "w2", lw.w2);
    add(p + "ws13", lw.ws13);
    add(p + "ws2", lw.ws2);
    add(p + "shared_gate", lw.shared_gate);
  }
  add("final_norm.w", w.final_norm.w);
  add("final_norm.b", w.final_norm.b);
  add("lm_head", w.lm_head);
  return out;
}

void* InferenceEngine::stream() const {
#ifdef MINILLM_WITH_CUDA
  if (impl_->cuda) return impl_->cuda->stream();
#endif
  return nullptr;
}

}  // namespace minillm
