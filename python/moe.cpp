// Python binding of the CUDA MoE layer: minillm.MoELayer.
//
//   moe = minillm.MoELayer(hidden_dim, num_experts, top_k, ffn_dim, activation="swiglu",
//                          normalize_topk=True, dtype="bf16")
//   moe.set_weights(router, w_gate, w_up, w_down)   # (E,H), (E,F,H), (E,F,H) or None for gelu, (E,H,F)
//   y = moe(x)                                      # (T, H) -> (T, H)
//   ids, weights = moe.route(x)                     # (T, k) int32, (T, k) float32
//
// Tensors come in through DLPack (CUDA, contiguous, the layer's dtype) and are validated here with
// ValueError messages that name the argument. The weights are borrowed: the layer keeps references
// to the Python objects so they stay alive. Outputs and the per-call scratch come from a
// stream-ordered memory pool of this module (cached: no call pays for cudaMalloc or a device-wide
// cudaFree); outputs are torch tensors when x is one, else DLPack-capable nanobind ndarrays.
// Stream: `stream` (an int cudaStream_t) when given; else torch.cuda.current_stream() for torch
// inputs; else the legacy default stream 0.
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>

#include "bindings.h"
#include "minillm/core/cuda_check.h"
#include "minillm/moe.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

template <typename... Args>
[[noreturn]] void value_error(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw nb::value_error(os.str().c_str());
}

bool is_torch_tensor(nb::handle h) {
  nb::object mod = nb::getattr(h.type(), "__module__", nb::none());
  if (!nb::isinstance<nb::str>(mod)) return false;
  const std::string_view m(nb::borrow<nb::str>(mod).c_str());
  return m == "torch" || m.starts_with("torch.");
}

// A contiguous CUDA tensor argument seen through DLPack, with its shape checked.
struct CudaArray {
  nb::ndarray<> a;
  void* data() const { return static_cast<uint8_t*>(a.data_handle()) + a.byte_offset(); }
  int64_t dim(int i) const { return static_cast<int64_t>(a.shape(static_cast<size_t>(i))); }
};

std::string shape_str(const nb::ndarray<>& a) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i) << (a.ndim() == 1 ? "," : "");
  os << ")";
  return os.str();
}

bool dtype_is(const nb::ndarray<>& a, DType t) {
  const nb::dlpack::dtype d = a.dtype();
  if (d.lanes != 1 || d.bits != 16) return false;
  const auto code = static_cast<uint8_t>(t == DType::bf16 ? nb::dlpack::dtype_code::Bfloat : nb::dlpack::dtype_code::Float);
  return d.code == code;
}

CudaArray import_cuda(nb::handle obj, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                      int device) {
  CudaArray r;
  if (obj.is_none() || !nb::try_cast(obj, r.a, false))
    value_error(name, " must be a tensor that supports DLPack (e.g. a torch CUDA tensor), got ",
                nb::type_name(obj.type()).c_str());
  if (r.a.device_type() != nb::device::cuda::value)
    value_error(name, " must be on a CUDA device (DLPack device type ", r.a.device_type(), ")");
  if (device >= 0 && r.a.device_id() != device)
    value_error(name, " is on cuda:", r.a.device_id(), ", the layer's weights on cuda:", device);
  if (!dtype_is(r.a, dtype)) value_error(name, " must be ", dtype == DType::bf16 ? "bfloat16" : "float16");
  bool ok = r.a.ndim() == shape.size();
  size_t i = 0;
  for (int64_t s : shape) ok = ok && (s < 0 || static_cast<int64_t>(r.a.shape(i++)) == s);
  if (!ok) {
    std::ostringstream want;
    want << "(";
    i = 0;
    for (int64_t s : shape) want << (i++ ? ", " : "") << (s < 0 ? std::string("T") : std::to_string(s));
    want << ")";
    value_error(name, " must have shape ", want.str(), ", got ", shape_str(r.a));
  }
  int64_t expect = 1;
  for (int d = static_cast<int>(r.a.ndim()) - 1; d >= 0; --d) {
    if (r.dim(d) > 1 && r.a.stride(static_cast<size_t>(d)) != expect) value_error(name, " must be contiguous");
    expect *= r.dim(d);
  }
  if (reinterpret_cast<uintptr_t>(r.data()) % 16 != 0) value_error(name, " data pointer must be 16-byte aligned");
  return r;
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MINILLM_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) MINILLM_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

cudaMemPool_t pool_for(int device) {
  static std::mutex mu;
  static cudaMemPool_t pools[64] = {};
  MINILLM_CHECK(device >= 0 && device < 64, "device " << device << " out of range");
  std::lock_guard<std::mutex> lock(mu);
  if (pools[device] == nullptr) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    MINILLM_CUDA_CHECK(cudaMemPoolCreate(&pools[device], &props));
    uint64_t keep = UINT64_MAX;  // keep freed blocks cached in the pool
    MINILLM_CUDA_CHECK(cudaMemPoolSetAttribute(pools[device], cudaMemPoolAttrReleaseThreshold, &keep));
  }
  return pools[device];
}

// Stream-ordered scratch for one call.
class Scratch {
 public:
  Scratch(size_t bytes, int device, cudaStream_t stream) : stream_(stream) {
    if (bytes) MINILLM_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr_, bytes, pool_for(device), stream));
  }
  ~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

struct DeviceAlloc {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
};

// A new contiguous array on `device`, owned by a capsule that frees it stream-ordered.
nb::object new_array(std::initializer_list<size_t> shape, nb::dlpack::dtype dtype, int device, cudaStream_t stream,
                     bool as_torch, void** data) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  auto* alloc = new DeviceAlloc{nullptr, stream, device};
  const size_t bytes = n * dtype.bits / 8;
  if (bytes > 0) {
    const cudaError_t err = cudaMallocFromPoolAsync(&alloc->ptr, bytes, pool_for(device), stream);
    if (err != cudaSuccess) {
      delete alloc;
      MINILLM_CUDA_CHECK(err);
    }
  }
  *data = alloc->ptr;
  nb::capsule owner(alloc, [](void* p) noexcept {
    auto* a = static_cast<DeviceAlloc*>(p);
    if (a->ptr != nullptr) {
      int prev = 0;
      cudaGetDevice(&prev);
      cudaSetDevice(a->device);
      if (cudaFreeAsync(a->ptr, a->stream) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(a->ptr);
      }
      cudaSetDevice(prev);
    }
    delete a;
  });
  if (as_torch) return nb::ndarray<nb::pytorch>(alloc->ptr, shape, owner, {}, dtype, nb::device::cuda::value, device).cast();
  return nb::ndarray<>(alloc->ptr, shape, owner, {}, dtype, nb::device::cuda::value, device).cast();
}

nb::dlpack::dtype dlpack_of(DType t) {
  nb::dlpack::dtype d{};
  d.code = static_cast<uint8_t>(t == DType::bf16 ? nb::dlpack::dtype_code::Bfloat : nb::dlpack::dtype_code::Float);
  d.bits = 16;
  d.lanes = 1;
  return d;
}

cudaStream_t pick_stream(std::optional<uintptr_t> stream, nb::handle x, int device) {
  if (stream) return reinterpret_cast<cudaStream_t>(*stream);
  if (is_torch_tensor(x)) {
    nb::object cur = nb::module_::import_("torch.cuda").attr("current_stream")(device);
    return reinterpret_cast<cudaStream_t>(nb::cast<uintptr_t>(cur.attr("cuda_stream")));
  }
  return nullptr;
}

class PyMoELayer {
 public:
  PyMoELayer(int64_t hidden, int64_t experts, int64_t top_k, int64_t ffn, const std::string& activation,
             bool normalize_topk, const std::string& dtype) {
    cfg_.hidden = hidden;
    cfg_.num_experts = experts;
    cfg_.top_k = top_k;
    cfg_.ffn = ffn;
    if (activation == "swiglu") {
      cfg_.activation = MoEActivation::swiglu;
    } else if (activation == "gelu") {
      cfg_.activation = MoEActivation::gelu;
    } else {
      value_error("activation = '", activation, "' must be 'swiglu' or 'gelu'");
    }
    cfg_.normalize_topk = normalize_topk;
    if (dtype == "bf16" || dtype == "bfloat16") {
      cfg_.dtype = DType::bf16;
    } else if (dtype == "f16" || dtype == "fp16" || dtype == "float16") {
      cfg_.dtype = DType::f16;
    } else {
      value_error("dtype = '", dtype, "' must be 'bf16' or 'fp16'");
    }
    try {
      cfg_.validate();
    } catch (const Error& e) {
      throw nb::value_error(e.what());
    }
  }

  void set_weights(nb::handle router, nb::handle w_gate, nb::handle w_up, nb::handle w_down) {
    const int64_t E = cfg_.num_experts, H = cfg_.hidden, F = cfg_.ffn;
    const DType dt = cfg_.dtype;
    const CudaArray r = import_cuda(router, "router", dt, {E, H}, -1);
    const int device = r.a.device_id();
    const CudaArray g = import_cuda(w_gate, "w_gate", dt, {E, F, H}, device);
    const bool swiglu = cfg_.activation == MoEActivation::swiglu;
    CudaArray u;
    if (swiglu) {
      u = import_cuda(w_up, "w_up", dt, {E, F, H}, device);
    } else if (!w_up.is_none()) {
      value_error("w_up must be None for activation 'gelu'");
    }
    const CudaArray d = import_cuda(w_down, "w_down", dt, {E, H, F}, device);
    DeviceGuard guard(device);
    if (!layer_ || device != device_) layer_ = std::make_unique<MoELayer>(cfg_);
    device_ = device;
    layer_->set_weights(r.data(), g.data(), swiglu ? u.data() : nullptr, d.data());
    refs_ = nb::make_tuple(nb::borrow(router), nb::borrow(w_gate), nb::borrow(w_up), nb::borrow(w_down));
  }

  nb::object forward(nb::handle x_obj, nb::handle out_obj, std::optional<uintptr_t> stream_arg) {
    check_ready();
    const CudaArray x = import_cuda(x_obj, "x", cfg_.dtype, {-1, cfg_.hidden}, device_);
    const int64_t T = x.dim(0);
    check_tokens(T);
    DeviceGuard guard(device_);
    const cudaStream_t stream = pick_stream(stream_arg, x_obj, device_);
    nb::object y_obj;
    void* y = nullptr;
    if (!out_obj.is_none()) {
      const CudaArray out = import_cuda(out_obj, "out", cfg_.dtype, {T, cfg_.hidden}, device_);
      y_obj = nb::borrow(out_obj);
      y = out.data();
    } else {
      y_obj = new_array({size_t(T), size_t(cfg_.hidden)}, dlpack_of(cfg_.dtype), device_, stream, is_torch_tensor(x_obj),
                        &y);
    }
    if (T > 0) {
      const size_t bytes = layer_->workspace_bytes(T);
      Scratch scratch(bytes, device_, stream);
      layer_->forward(x.data(), y, T, scratch.get(), bytes, stream);
    }
    return y_obj;
  }

  nb::object route(nb::handle x_obj, std::optional<uintptr_t> stream_arg) {
    check_ready();
    const CudaArray x = import_cuda(x_obj, "x", cfg_.dtype, {-1, cfg_.hidden}, device_);
    const int64_t T = x.dim(0);
    check_tokens(T);
    DeviceGuard guard(device_);
    const cudaStream_t stream = pick_stream(stream_arg, x_obj, device_);
    const bool as_torch = is_torch_tensor(x_obj);
    void* ids = nullptr;
    void* weights = nullptr;
    const size_t k = static_cast<size_t>(cfg_.top_k);
    nb::object ids_obj = new_array({size_t(T), k}, nb::dtype<int32_t>(), device_, stream, as_torch, &ids);
    nb::object w_obj = new_array({size_t(T), k}, nb::dtype<float>(), device_, stream, as_torch, &weights);
    if (T > 0) {
      const size_t bytes = layer_->workspace_bytes(T);
      Scratch scratch(bytes, device_, stream);
      layer_->route(x.data(), T, static_cast<int32_t*>(ids), static_cast<float*>(weights), scratch.get(), bytes, stream);
    }
    return nb::make_tuple(ids_obj, w_obj);
  }

  size_t workspace_bytes(int64_t T) const {
    if (T < 0) value_error("tokens = ", T, " must be >= 0");
    return MoELayer::workspace_bytes(cfg_, T);
  }

  const MoEConfig& config() const { return cfg_; }

 private:
  void check_ready() const {
    if (!layer_) throw nb::value_error("MoELayer: call set_weights(router, w_gate, w_up, w_down) first");
  }
  void check_tokens(int64_t T) const {
    if (T * cfg_.top_k >= (int64_t{1} << 30)) value_error("x has ", T, " tokens: tokens * top_k must be < 2^30");
  }

  MoEConfig cfg_;
  std::unique_ptr<MoELayer> layer_;
  int device_ = -1;
  nb::object refs_;  // the weight tensors, kept alive while the layer points at them
};

}  // namespace

void bind_moe(nb::module_& m) {
  nb::class_<PyMoELayer>(m, "MoELayer",
                         "Mixture-of-Experts FFN layer on the GPU: router (softmax -> top-k -> optional renorm),\n"
                         "grouped expert GEMMs (SwiGLU or GELU experts), weighted combine. bf16/fp16, fp32\n"
                         "accumulation, bitwise deterministic.")
      .def(nb::init<int64_t, int64_t, int64_t, int64_t, const std::string&, bool, const std::string&>(),
           nb::arg("hidden_dim"), nb::arg("num_experts"), nb::arg("top_k"), nb::arg("ffn_dim"),
           nb::arg("activation") = "swiglu", nb::arg("normalize_topk") = true, nb::arg("dtype") = "bf16")
      .def("set_weights", &PyMoELayer::set_weights, nb::arg("router"), nb::arg("w_gate"), nb::arg("w_up").none(),
           nb::arg("w_down"),
           "router (E, H), w_gate (E, F, H), w_up (E, F, H) or None for gelu, w_down (E, H, F): contiguous CUDA\n"
           "tensors of the layer's dtype in HF's [out, in] layout. Borrowed, not copied: keep them unchanged.")
      .def("__call__", &PyMoELayer::forward, nb::arg("x"), nb::arg("out") = nb::none(), nb::arg("stream") = nb::none(),
           "y = moe(x): x (T, H) -> y (T, H). out: optional tensor to write y into. stream: cudaStream_t as int.")
      .def("forward", &PyMoELayer::forward, nb::arg("x"), nb::arg("out") = nb::none(), nb::arg("stream") = nb::none())
      .def("route", &PyMoELayer::route, nb::arg("x"), nb::arg("stream") = nb::none(),
           "The routing alone: (ids (T, k) int32 in descending weight, weights (T, k) float32).")
      .def("workspace_bytes", &PyMoELayer::workspace_bytes, nb::arg("tokens"),
           "Scratch bytes that a forward of `tokens` tokens uses.")
      .def_prop_ro("hidden_dim", [](const PyMoELayer& l) { return l.config().hidden; })
      .def_prop_ro("num_experts", [](const PyMoELayer& l) { return l.config().num_experts; })
      .def_prop_ro("top_k", [](const PyMoELayer& l) { return l.config().top_k; })
      .def_prop_ro("ffn_dim", [](const PyMoELayer& l) { return l.config().ffn; });
}

}  // namespace minillm::py
