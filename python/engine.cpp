// Python bindings: config loading and InferenceEngine. Arrays come in through DLPack / the buffer
// protocol (numpy, torch, cupy ...). forward() returns host logits as a numpy float32 array
// [B, N, V]; _forward_cuda() returns the engine's device logits as a torch CUDA tensor view (no
// copy; it keeps the engine alive and is overwritten by the next forward): minillm/__init__.py
// picks one by where the ids live.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>
#include <optional>

#include "bindings.h"
#include "minillm/engine.h"

#ifdef MINILLM_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace nb = nanobind;

namespace minillm::py {

ModelConfig config_from_arg(const std::string& s) {
  if (!s.empty() && s.front() == '{') return parse_config_json(s);
  return load_config(s);
}

namespace {

// ids: any 2-D integer array (B, N), host or CUDA; copied to host int32 with range checks. The
// shape is checked against the engine's plan before anything is copied (a broadcast array can
// claim 2^32 columns without holding them).
// stream: the cudaStream_t the CUDA ids are ordered on (0: the legacy default stream).
std::vector<int32_t> ids_to_host(const nb::ndarray<nb::ro>& a, const InferenceEngine& eng, int& B, int& N,
                                 uintptr_t stream = 0) {
  if (a.ndim() != 2) MINILLM_FAIL("forward: input_ids must be 2-D (batch, seq), got " << a.ndim() << " dims");
  const size_t rows = a.shape(0), cols = a.shape(1);
  if (rows == 0 || cols == 0)
    MINILLM_FAIL("forward: input_ids has shape (" << rows << ", " << cols << "); batch and seq must be at least 1");
  if (rows > static_cast<size_t>(eng.max_batch()))
    MINILLM_FAIL("forward: batch = " << rows << " is outside [1, " << eng.max_batch() << "] (the engine's max_batch)");
  if (cols > static_cast<size_t>(eng.max_seq()))
    MINILLM_FAIL("forward: seq_len = " << cols << " exceeds the engine's max_seq = " << eng.max_seq());
  B = static_cast<int>(rows);
  N = static_cast<int>(cols);
  const auto dt = a.dtype();
  const bool i32 = dt == nb::dtype<int32_t>(), i64 = dt == nb::dtype<int64_t>();
  if (!i32 && !i64)
    MINILLM_FAIL("forward: input_ids must be int32 or int64 (got dtype code " << static_cast<int>(dt.code) << ", "
                                                                               << static_cast<int>(dt.bits) << " bits)");
  const size_t n = static_cast<size_t>(B) * N, es = i32 ? 4 : 8;
  std::vector<uint8_t> raw(n * es);
  // Copy respecting strides (element strides in units of elements).
  const int64_t s0 = a.stride(0), s1 = a.stride(1);
  const bool contiguous = (N <= 1 || s1 == 1) && (B <= 1 || s0 == N);  // strides of size-1 dims do not matter
  std::vector<uint8_t> dense;
  const uint8_t* src = static_cast<const uint8_t*>(a.data());
  if (a.device_type() == nb::device::cuda::value) {
#ifdef MINILLM_WITH_CUDA
    MINILLM_CHECK(contiguous, "forward: CUDA input_ids must be contiguous");
    const auto s = reinterpret_cast<cudaStream_t>(stream);
    if (cudaMemcpyAsync(raw.data(), src, raw.size(), cudaMemcpyDeviceToHost, s) != cudaSuccess ||
        cudaStreamSynchronize(s) != cudaSuccess)
      MINILLM_FAIL("forward: could not copy input_ids from the GPU");
#else
    (void)stream;
    MINILLM_FAIL("forward: input_ids are on CUDA but minillm was built without CUDA");
#endif
  } else if (a.device_type() == nb::device::cpu::value) {
    if (contiguous) {
      std::memcpy(raw.data(), src, raw.size());
    } else {
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < N; ++t)
          std::memcpy(raw.data() + (static_cast<size_t>(b) * N + t) * es, src + (b * s0 + t * s1) * es, es);
    }
  } else {
    MINILLM_FAIL("forward: input_ids must be on the CPU or a CUDA device");
  }
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t v;
    if (i32) {
      int32_t x;
      std::memcpy(&x, raw.data() + 4 * i, 4);
      v = x;
    } else {
      std::memcpy(&v, raw.data() + 8 * i, 8);
    }
    if (v < INT32_MIN || v > INT32_MAX)
      MINILLM_FAIL("forward: token id " << v << " at position [" << i / N << ", " << i % N << "] is out of range");
    ids[i] = static_cast<int32_t>(v);
  }
  return ids;
}

class PyEngine {
 public:
  PyEngine(const std::string& config, const std::optional<std::string>& weights, const std::string& device, int max_batch,
           int max_seq, uint64_t seed, const std::string& logits_dtype, bool cuda_graphs) {
    EngineOptions o;
    o.device = device;
    o.max_batch = max_batch;
    o.max_seq = max_seq;
    o.cuda_graphs = cuda_graphs;
    o.logits_dtype = logits_dtype == "f32" || logits_dtype == "fp32" ? DType::f32 : parse_dtype(logits_dtype);
    if (is_model_dir(config)) {  // a Hugging Face model directory: config.json + safetensors
      if (weights) MINILLM_FAIL("weights: not used with a model directory (" << config << ")");
      const ModelConfig c = load_config(config);
      check_memory(estimate_memory(c, max_batch, max_seq, o), max_batch, max_seq > 0 ? max_seq : c.max_seq_len, false);
      engine_ = std::make_unique<InferenceEngine>(config, o);
      return;
    }
    const ModelConfig c = config_from_arg(config);
    // Refuse before the weights are built when the plan cannot fit (names the sizes and what is free).
    check_memory(estimate_memory(c, max_batch, max_seq, o), max_batch, max_seq > 0 ? max_seq : c.max_seq_len, true);
    const WeightStore ws = weights ? WeightStore::load(*weights, c) : WeightStore::random(c, seed, c.dtype);
    engine_ = std::make_unique<InferenceEngine>(c, ws, o);
  }
  nb::ndarray<nb::numpy, float, nb::ndim<3>> forward(const nb::ndarray<nb::ro>& input_ids) {
    int B = 0, N = 0;
    std::vector<int32_t> ids = ids_to_host(input_ids, *engine_, B, N);
    auto* out = new std::vector<float>(engine_->forward(ids.data(), B, N));
    nb::capsule owner(out, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    const size_t shape[3] = {static_cast<size_t>(B), static_cast<size_t>(N),
                             static_cast<size_t>(engine_->config().vocab_size)};
    return nb::ndarray<nb::numpy, float, nb::ndim<3>>(out->data(), 3, shape, owner);
  }
  // CUDA engine: logits [B, N, V] (logits_dtype) on the GPU as a torch tensor viewing the engine's
  // buffer, ordered on `stream` (the caller's torch stream) without waiting for the forward.
  nb::object forward_cuda(nb::handle self, const nb::ndarray<nb::ro>& input_ids, uintptr_t stream) {
#ifdef MINILLM_WITH_CUDA
    if (engine_->device() != Device::cuda) MINILLM_FAIL("forward: the engine runs on the CPU; pass host input_ids");
    int B = 0, N = 0;
    std::vector<int32_t> ids = ids_to_host(input_ids, *engine_, B, N, stream);
    const Tensor host_ids(ids.data(), DType::i32, Device::cpu, {static_cast<int64_t>(B), static_cast<int64_t>(N)});
    const Tensor logits = engine_->forward_device(host_ids, B, N, reinterpret_cast<void*>(stream));
    const size_t shape[3] = {static_cast<size_t>(B), static_cast<size_t>(N),
                             static_cast<size_t>(engine_->config().vocab_size)};
    nb::dlpack::dtype dt = nb::dtype<float>();
    if (logits.dtype == DType::bf16) dt = {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
    if (logits.dtype == DType::f16) dt = {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    int device_id = 0;
    cudaGetDevice(&device_id);
    return nb::cast(nb::ndarray<nb::pytorch, nb::device::cuda>(logits.data, 3, shape, self, nullptr, dt,
                                                                nb::device::cuda::value, device_id));
#else
    (void)self, (void)input_ids, (void)stream;
    MINILLM_FAIL("forward: minillm was built without CUDA");
#endif
  }
  std::string logits_dtype() const { return dtype_name(engine_->logits_dtype()); }
  // Per-op milliseconds of one profiled forward (CUDA): {"qkv": ms, ...}.
  nb::dict profile(const nb::ndarray<nb::ro>& input_ids) {
    int B = 0, N = 0;
    std::vector<int32_t> ids = ids_to_host(input_ids, *engine_, B, N);
    nb::dict d;
    for (const auto& [kind, ms] : engine_->profile_forward(ids.data(), B, N)) d[kind.c_str()] = ms;
    return d;
  }
  // The engine's weights as views (torch CUDA tensors, or numpy arrays on the CPU) that keep it alive.
  nb::dict weights(nb::handle self) const {
    nb::dict d;
    for (const auto& [name, t] : engine_->weights()) {
      size_t shape[4];
      int64_t strides[4];  // the expert matrices may have padded rows
      for (int i = 0; i < t.ndim; ++i) {
        shape[i] = static_cast<size_t>(t.shape[i]);
        strides[i] = t.stride[i];
      }
      nb::dlpack::dtype dt = nb::dtype<float>();
      if (t.dtype == DType::bf16) dt = {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
      if (t.dtype == DType::f16) dt = {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
      if (t.device == Device::cuda) {
        int device_id = 0;
#ifdef MINILLM_WITH_CUDA
        cudaGetDevice(&device_id);
#endif
        d[name.c_str()] = nb::cast(nb::ndarray<nb::pytorch>(t.data, static_cast<size_t>(t.ndim), shape, self, strides,
                                                            dt, nb::device::cuda::value, device_id));
      } else {
        d[name.c_str()] = nb::cast(nb::ndarray<nb::numpy>(t.data, static_cast<size_t>(t.ndim), shape, self, strides, dt,
                                                          nb::device::cpu::value, 0));
      }
    }
    return d;
  }
  std::string config_json() const { return config_to_json(engine_->config()); }
  std::string device() const { return device_name(engine_->device()); }
  double last_ms() const { return engine_->last_timings().ms; }
  size_t weight_bytes() const { return engine_->weight_bytes(); }
  size_t workspace_bytes() const { return engine_->workspace_bytes(); }

 private:
  std::unique_ptr<InferenceEngine> engine_;
};

}  // namespace

void bind_engine(nb::module_& m) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.attr("__version__") = MINILLM_VERSION;
  m.def("preset_names", [] {
    std::vector<std::string> v;
    for (const char* const* n = preset_names(); *n; ++n) v.push_back(*n);
    return v;
  });
  m.def("config_json", [](const std::string& c) { return config_to_json(config_from_arg(c)); }, nb::arg("config"),
        "Validated config as JSON text: a preset name, a path to a .json file, or JSON text.");
  m.def("num_parameters", [](const std::string& c) { return config_from_arg(c).num_parameters(); }, nb::arg("config"));
  m.def("cuda_available", &cuda_available);
  m.def(
      "write_random_weights",
      [](const std::string& c, const std::string& path, uint64_t seed, const std::string& dtype) {
        const ModelConfig cfg = config_from_arg(c);
        WeightStore::random(cfg, seed, dtype.empty() ? cfg.dtype : parse_dtype(dtype)).save(path);
      },
      nb::arg("config"), nb::arg("path"), nb::arg("seed") = 0, nb::arg("dtype") = "");
  nb::class_<PyEngine>(m, "_InferenceEngine")
      .def(nb::init<const std::string&, const std::optional<std::string>&, const std::string&, int, int, uint64_t, const std::string&,
                    bool>(),
           nb::arg("config"), nb::arg("weights").none() = nb::none(), nb::arg("device") = "auto",
           nb::arg("max_batch") = 1, nb::arg("max_seq") = 0, nb::arg("seed") = 0, nb::arg("logits_dtype") = "f32", nb::arg("cuda_graphs") = true)
      .def("forward", &PyEngine::forward, nb::arg("input_ids"))
      .def(
          "_forward_cuda",
          [](nb::handle self, const nb::ndarray<nb::ro>& ids, uintptr_t stream) {
            return nb::cast<PyEngine&>(self).forward_cuda(self, ids, stream);
          },
          nb::arg("input_ids"), nb::arg("stream") = 0)
      .def_prop_ro("logits_dtype", &PyEngine::logits_dtype)
      .def("profile", &PyEngine::profile, nb::arg("input_ids"))
      .def("_weights", [](nb::handle self) { return nb::cast<PyEngine&>(self).weights(self); })
      .def("config_json", &PyEngine::config_json)
      .def_prop_ro("device", &PyEngine::device)
      .def_prop_ro("last_forward_ms", &PyEngine::last_ms)
      .def_prop_ro("weight_bytes", &PyEngine::weight_bytes)
      .def_prop_ro("workspace_bytes", &PyEngine::workspace_bytes);
}

}  // namespace minillm::py
