// InferenceEngine: weights uploaded once, one workspace planned at construction, forward() with
// input validation at the boundary (the engine stays usable after a rejected call).
#include "minillm/engine.h"

#include <chrono>
#include <cstring>

#include "engine/backend.h"

namespace minillm {

struct InferenceEngine::Impl {
  std::unique_ptr<Backend> backend;
  ModelWeights weights;
  Workspace ws;
  Buffer ids_buf;     // [max_batch * max_seq] i32 on the device
  Buffer logits_buf;  // [max_batch * max_seq, V] logits_dtype on the device
  DType logits_dtype = DType::f32;
  size_t weight_bytes = 0;
};

InferenceEngine::InferenceEngine(const ModelConfig& config, const WeightStore& weights, const EngineOptions& opts)
    : config_(config), impl_(std::make_unique<Impl>()) {
  config_.validate();
  max_batch_ = opts.max_batch;
  max_seq_ = opts.max_seq > 0 ? opts.max_seq : config_.max_seq_len;
  if (max_batch_ <= 0) MINILLM_FAIL("engine: max_batch = " << max_batch_ << " must be positive");
  if (max_seq_ > config_.max_seq_len)
    MINILLM_FAIL("engine: max_seq = " << max_seq_ << " exceeds the config's max_seq_len = " << config_.max_seq_len);
  bool use_cuda = false;
  if (opts.device == "cuda") {
    if (!cuda_available()) MINILLM_FAIL("engine: device 'cuda' requested but no CUDA device (or no CUDA build) is available");
    use_cuda = true;
  } else if (opts.device == "auto") {
    use_cuda = cuda_available();
  } else if (opts.device != "cpu") {
    MINILLM_FAIL("engine: device = '" << opts.device << "' is not one of: auto, cpu, cuda");
  }
  const int64_t max_tokens = static_cast<int64_t>(max_batch_) * max_seq_;
#ifdef MINILLM_WITH_CUDA
  impl_->backend = use_cuda ? make_cuda_backend(config_, static_cast<int>(max_tokens)) : make_cpu_backend();
#else
  (void)use_cuda;
  impl_->backend = make_cpu_backend();
#endif
  Backend& be = *impl_->backend;
  impl_->logits_dtype = be.device() == Device::cpu ? DType::f32 : opts.logits_dtype;
  if (impl_->logits_dtype != DType::f32 && impl_->logits_dtype != config_.dtype)
    MINILLM_FAIL("engine: logits_dtype = " << dtype_name(opts.logits_dtype) << " must be f32 or the model dtype "
                                           << dtype_name(config_.dtype));
  impl_->weights = upload_weights(be, config_, weights);
  for (const Buffer& b : impl_->weights.storage) impl_->weight_bytes += b.bytes();
  impl_->ws = Workspace(transformer_workspace_bytes(be, config_, max_batch_, max_seq_), be.device());
  impl_->ids_buf = Buffer(static_cast<size_t>(max_tokens) * 4, be.device());
  impl_->logits_buf =
      Buffer(static_cast<size_t>(max_tokens) * config_.vocab_size * dtype_size(impl_->logits_dtype), be.device());
}

InferenceEngine::~InferenceEngine() = default;

Device InferenceEngine::device() const { return impl_->backend->device(); }
size_t InferenceEngine::weight_bytes() const { return impl_->weight_bytes; }
size_t InferenceEngine::workspace_bytes() const { return impl_->ws.capacity(); }

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

void InferenceEngine::run(const Tensor& ids_dev, int B, int N) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t T = static_cast<int64_t>(B) * N;
  Tensor logits(impl_->logits_buf.data(), impl_->logits_dtype, device(), {T, config_.vocab_size});
  impl_->ws.reset();
  transformer_forward(*impl_->backend, config_, impl_->weights, ids_dev, B, N, impl_->ws, logits);
  impl_->backend->synchronize();
  timings_.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<float> InferenceEngine::forward(const int32_t* ids, int B, int N) {
  check_shape(B, N);
  check_ids(ids, B, N);
  const int64_t T = static_cast<int64_t>(B) * N;
  Tensor ids_dev(impl_->ids_buf.data(), DType::i32, device(), {T});
  impl_->backend->to_device(ids_dev.data, ids, static_cast<size_t>(T) * 4);
  run(ids_dev, B, N);
  std::vector<float> out(static_cast<size_t>(T) * config_.vocab_size);
  if (impl_->logits_dtype == DType::f32) {
    impl_->backend->to_host(out.data(), impl_->logits_buf.data(), out.size() * 4);
  } else {
    std::vector<uint16_t> h(out.size());
    impl_->backend->to_host(h.data(), impl_->logits_buf.data(), h.size() * 2);
    for (size_t i = 0; i < h.size(); ++i)
      out[i] = impl_->logits_dtype == DType::bf16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
  }
  return out;
}

Tensor InferenceEngine::forward_device(const Tensor& ids, int B, int N) {
  check_shape(B, N);
  check_tensor(ids, "forward: ids", DType::i32, {static_cast<int64_t>(B) * N});
  MINILLM_CHECK(ids.device == device(), "forward: ids are on " << device_name(ids.device) << ", the engine on "
                                                               << device_name(device()));
  // Range check on the host: ids are few (B x N int32), and a bad id must be an error, not a wild read.
  std::vector<int32_t> h(static_cast<size_t>(ids.numel()));
  impl_->backend->to_host(h.data(), ids.data, h.size() * 4);
  check_ids(h.data(), B, N);
  run(ids, B, N);
  return Tensor(impl_->logits_buf.data(), impl_->logits_dtype, device(),
                {static_cast<int64_t>(B), static_cast<int64_t>(N), config_.vocab_size});
}

}  // namespace minillm
