// Python binding of the CUDA MoE layer: minillm.MoELayer.
//
//   moe = minillm.MoELayer(hidden_dim, num_experts, top_k, ffn_dim, activation="swiglu",
//                          normalize_topk=True, dtype="bf16")
//   moe.set_weights(router, w_gate, w_up, w_down)   # (E,H), (E,F,H), (E,F,H) or None for gelu, (E,H,F)
//   y = moe(x)                                      # (T, H) -> (T, H)
//   ids, weights = moe.route(x)                     # (T, k) int32, (T, k) float32
//
// Tensors: torch CUDA tensors (read through their attributes) or any DLPack CUDA array; contiguous,
// of the layer's dtype; validated here with ValueError messages that name the argument. The weights
// are borrowed: the layer keeps references to the Python objects so they stay alive.
// Outputs and the per-call scratch: for torch inputs on torch's current stream, x.new_empty() (torch's
// caching allocator); otherwise memory from a stream-ordered pool of this module (freed blocks stay
// cached, so no call pays for cudaMalloc), outputs returned as DLPack-capable arrays.
// Stream: `stream` (an int cudaStream_t) when given; else torch's current stream for torch inputs;
// else the legacy default stream 0.
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bindings.h"
#include "minillm/core/cuda_check.h"
#include "minillm/moe.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

template <typename... Args>
[[noreturn]] void value_error(Args&&... args) {
  ::minillm::detail::Message m;  // no iostreams: see core/check.h
  (m << ... << args);
  throw ::minillm::Error(m.str());  // ValueError through the module's translator (python/engine.cpp)
}

bool is_torch_tensor(nb::handle h) {
  nb::object mod = nb::getattr(h.type(), "__module__", nb::none());
  if (!nb::isinstance<nb::str>(mod)) return false;
  const std::string_view m(nb::borrow<nb::str>(mod).c_str());
  return m == "torch" || m.starts_with("torch.");
}

// torch objects used on the fast path (looked up once, kept for the life of the process).
struct TorchApi {
  nb::handle bf16, f16, f32, i32, u8;
};

const TorchApi& torch_api() {
  static const TorchApi api = [] {
    nb::module_ torch = nb::module_::import_("torch");
    TorchApi a;
    a.bf16 = nb::object(torch.attr("bfloat16")).release();
    a.f16 = nb::object(torch.attr("float16")).release();
    a.f32 = nb::object(torch.attr("float32")).release();
    a.i32 = nb::object(torch.attr("int32")).release();
    a.u8 = nb::object(torch.attr("uint8")).release();
    return a;
  }();
  return api;
}

// A contiguous CUDA tensor argument of the layer's dtype with its shape checked (-1: any size).
// Torch tensors are read through their attributes (cheap); any other object through DLPack.
struct TensorArg {
  void* data = nullptr;
  int device = -1;
  std::vector<int64_t> shape;
  nb::ndarray<> keep;  // DLPack path: keeps the producer's buffer alive for the call
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
};

std::string shape_str(const std::vector<int64_t>& shape) {
  ::minillm::detail::Message os;  // no iostreams: see core/check.h
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << (i ? ", " : "");
    if (shape[i] < 0) {
      os << "T";
    } else {
      os << shape[i];
    }
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

TensorArg import_tensor(nb::handle obj, const char* name, DType dtype, const std::vector<int64_t>& want,
                        int device) {
  TensorArg t;
  std::vector<int64_t> stride;
  bool dtype_ok = false;
  if (!obj.is_none() && is_torch_tensor(obj)) {
    const TorchApi& api = torch_api();
    if (!nb::cast<bool>(obj.attr("is_cuda")))
      value_error(name, " must be on a CUDA device, got ", nb::str(obj.attr("device")).c_str());
    nb::object dt = obj.attr("dtype");
    dtype_ok = dt.is(dtype == DType::bf16 ? api.bf16 : api.f16);
    t.device = nb::cast<int>(obj.attr("get_device")());
    nb::tuple shp = nb::borrow<nb::tuple>(obj.attr("shape"));
    nb::tuple str = nb::borrow<nb::tuple>(obj.attr("stride")());
    for (size_t i = 0; i < nb::len(shp); ++i) {
      t.shape.push_back(nb::cast<int64_t>(shp[i]));
      stride.push_back(nb::cast<int64_t>(str[i]));
    }
    t.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(obj.attr("data_ptr")()));
  } else {
    nb::ndarray<> a;
    if (obj.is_none() || !nb::try_cast(obj, a, false))
      value_error(name, " must be a tensor that supports DLPack (e.g. a torch CUDA tensor), got ",
                  nb::type_name(obj.type()).c_str());
    if (a.device_type() != nb::device::cuda::value)
      value_error(name, " must be on a CUDA device (DLPack device type ", a.device_type(), ")");
    const nb::dlpack::dtype d = a.dtype();
    const auto code = static_cast<uint8_t>(dtype == DType::bf16 ? nb::dlpack::dtype_code::Bfloat
                                                                : nb::dlpack::dtype_code::Float);
    dtype_ok = d.lanes == 1 && d.bits == 16 && d.code == code;
    t.device = a.device_id();
    for (size_t i = 0; i < a.ndim(); ++i) {
      t.shape.push_back(static_cast<int64_t>(a.shape(i)));
      stride.push_back(a.stride(i));
    }
    t.data = static_cast<uint8_t*>(a.data_handle()) + a.byte_offset();
    t.keep = std::move(a);
  }
  if (device >= 0 && t.device != device)
    value_error(name, " is on cuda:", t.device, ", the layer's weights on cuda:", device);
  if (!dtype_ok) value_error(name, " must be ", dtype == DType::bf16 ? "bfloat16" : "float16");
  bool shape_ok = t.shape.size() == want.size();
  for (size_t i = 0; shape_ok && i < want.size(); ++i) shape_ok = want[i] < 0 || t.shape[i] == want[i];
  if (!shape_ok) value_error(name, " must have shape ", shape_str(want), ", got ", shape_str(t.shape));
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] > 1 && stride[i] != expect) value_error(name, " must be contiguous");
    expect *= t.shape[i];
  }
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) value_error(name, " data pointer must be 16-byte aligned");
  return t;
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

struct DeviceAlloc {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
};

enum class Out { act, i32, f32, bytes };

// A new contiguous device array. Torch inputs: like.new_empty(shape, dtype=...) from torch's caching
// allocator (its stream semantics). Otherwise memory from this module's pool, owned by a capsule that
// frees it stream-ordered, returned as a DLPack-capable array.
nb::object new_array(nb::handle like, bool torch, std::initializer_list<size_t> shape, Out kind, DType act,
                     int device, cudaStream_t stream, void** data) {
  if (torch) {
    const TorchApi& api = torch_api();
    nb::list shp;
    for (size_t d : shape) shp.append(d);
    nb::handle dt = kind == Out::i32 ? api.i32 : kind == Out::f32 ? api.f32 : kind == Out::bytes ? api.u8
                    : act == DType::bf16 ? api.bf16 : api.f16;
    nb::object o = like.attr("new_empty")(nb::tuple(shp), nb::arg("dtype") = dt);
    *data = reinterpret_cast<void*>(nb::cast<uintptr_t>(o.attr("data_ptr")()));
    return o;
  }
  nb::dlpack::dtype dt{};
  dt.lanes = 1;
  if (kind == Out::i32) {
    dt = nb::dtype<int32_t>();
  } else if (kind == Out::f32) {
    dt = nb::dtype<float>();
  } else if (kind == Out::bytes) {
    dt = nb::dtype<uint8_t>();
  } else {
    dt.code = static_cast<uint8_t>(act == DType::bf16 ? nb::dlpack::dtype_code::Bfloat : nb::dlpack::dtype_code::Float);
    dt.bits = 16;
  }
  size_t n = 1;
  for (size_t d : shape) n *= d;
  const size_t bytes = std::max<size_t>(n * dt.bits / 8, 16);  // never a null pointer, even when empty
  auto* alloc = new DeviceAlloc{nullptr, stream, device};
  const cudaError_t err = cudaMallocFromPoolAsync(&alloc->ptr, bytes, pool_for(device), stream);
  if (err != cudaSuccess) {
    delete alloc;
    MINILLM_CUDA_CHECK(err);
  }
  *data = alloc->ptr;
  nb::capsule owner(alloc, [](void* p) noexcept {
    auto* a = static_cast<DeviceAlloc*>(p);
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(a->device);
    if (cudaFreeAsync(a->ptr, a->stream) != cudaSuccess) {  // e.g. the stream is gone
      cudaGetLastError();
      cudaFree(a->ptr);
    }
    cudaSetDevice(prev);
    delete a;
  });
  return nb::ndarray<nb::array_api>(alloc->ptr, shape, owner, {}, dt, nb::device::cuda::value, device).cast();
}

cudaStream_t pick_stream(std::optional<uintptr_t> stream, bool torch, int device) {
  if (stream) return reinterpret_cast<cudaStream_t>(*stream);
  if (torch) {
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
    cfg_.validate();
  }

  void set_weights(nb::handle router, nb::handle w_gate, nb::handle w_up, nb::handle w_down) {
    const int64_t E = cfg_.num_experts, H = cfg_.hidden, F = cfg_.ffn;
    const DType dt = cfg_.dtype;
    const TensorArg r = import_tensor(router, "router", dt, {E, H}, -1);
    const int device = r.device;
    const TensorArg g = import_tensor(w_gate, "w_gate", dt, {E, F, H}, device);
    const bool swiglu = cfg_.activation == MoEActivation::swiglu;
    TensorArg u;
    if (swiglu) {
      u = import_tensor(w_up, "w_up", dt, {E, F, H}, device);
    } else if (!w_up.is_none()) {
      value_error("w_up must be None for activation 'gelu'");
    }
    const TensorArg d = import_tensor(w_down, "w_down", dt, {E, H, F}, device);
    DeviceGuard guard(device);
    if (!layer_ || device != device_) layer_ = std::make_unique<MoELayer>(cfg_);
    device_ = device;
    layer_->set_weights(r.data, g.data, swiglu ? u.data : nullptr, d.data);
    refs_ = nb::make_tuple(nb::borrow(router), nb::borrow(w_gate), nb::borrow(w_up), nb::borrow(w_down));
  }

  nb::object forward(nb::handle x_obj, nb::handle out_obj, std::optional<uintptr_t> stream_arg) {
    check_ready();
    const TensorArg x = import_tensor(x_obj, "x", cfg_.dtype, {-1, cfg_.hidden}, device_);
    const int64_t T = x.dim(0);
    check_tokens(T);
    DeviceGuard guard(device_);
    const bool torch = is_torch_tensor(x_obj);
    const cudaStream_t stream = pick_stream(stream_arg, torch, device_);
    nb::object y_obj;
    void* y = nullptr;
    if (!out_obj.is_none()) {
      const TensorArg out = import_tensor(out_obj, "out", cfg_.dtype, {T, cfg_.hidden}, device_);
      y_obj = nb::borrow(out_obj);
      y = out.data;
    } else {
      y_obj = new_array(x_obj, torch, {size_t(T), size_t(cfg_.hidden)}, Out::act, cfg_.dtype, device_, stream, &y);
    }
    if (T > 0) {
      const size_t bytes = layer_->workspace_bytes(T);
      void* scratch = nullptr;
      nb::object keep = new_array(x_obj, torch && !stream_arg, {bytes}, Out::bytes, cfg_.dtype, device_, stream, &scratch);
      layer_->forward(x.data, y, T, scratch, bytes, stream);
    }
    return y_obj;
  }

  nb::object route(nb::handle x_obj, std::optional<uintptr_t> stream_arg) {
    check_ready();
    const TensorArg x = import_tensor(x_obj, "x", cfg_.dtype, {-1, cfg_.hidden}, device_);
    const int64_t T = x.dim(0);
    check_tokens(T);
    DeviceGuard guard(device_);
    const bool torch = is_torch_tensor(x_obj);
    const cudaStream_t stream = pick_stream(stream_arg, torch, device_);
    void* ids = nullptr;
    void* weights = nullptr;
    const size_t k = static_cast<size_t>(cfg_.top_k);
    nb::object ids_obj = new_array(x_obj, torch, {size_t(T), k}, Out::i32, cfg_.dtype, device_, stream, &ids);
    nb::object w_obj = new_array(x_obj, torch, {size_t(T), k}, Out::f32, cfg_.dtype, device_, stream, &weights);
    if (T > 0) {
      const size_t bytes = layer_->workspace_bytes(T);
      void* scratch = nullptr;
      nb::object keep = new_array(x_obj, torch && !stream_arg, {bytes}, Out::bytes, cfg_.dtype, device_, stream, &scratch);
      layer_->route(x.data, T, static_cast<int32_t*>(ids), static_cast<float*>(weights), scratch, bytes, stream);
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
    if (!layer_) throw ::minillm::Error("MoELayer: call set_weights(router, w_gate, w_up, w_down) first");
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
      .def("set_weights", &PyMoELayer::set_weights, nb::arg("router").none(), nb::arg("w_gate").none(),
           nb::arg("w_up").none(), nb::arg("w_down").none(),
           "router (E, H), w_gate (E, F, H), w_up (E, F, H) or None for gelu, w_down (E, H, F): contiguous CUDA\n"
           "tensors of the layer's dtype in HF's [out, in] layout. Borrowed, not copied: keep them unchanged.")
      .def("__call__", &PyMoELayer::forward, nb::arg("x").none(), nb::arg("out").none() = nb::none(), nb::arg("stream") = nb::none(),
           "y = moe(x): x (T, H) -> y (T, H). out: optional tensor to write y into. stream: cudaStream_t as int.")
      .def("forward", &PyMoELayer::forward, nb::arg("x").none(), nb::arg("out").none() = nb::none(), nb::arg("stream") = nb::none())
      .def("route", &PyMoELayer::route, nb::arg("x").none(), nb::arg("stream") = nb::none(),
           "The routing alone: (ids (T, k) int32 in descending weight, weights (T, k) float32).")
      .def("workspace_bytes", &PyMoELayer::workspace_bytes, nb::arg("tokens"),
           "Scratch bytes that a forward of `tokens` tokens uses.")
      .def_prop_ro("hidden_dim", [](const PyMoELayer& l) { return l.config().hidden; })
      .def_prop_ro("num_experts", [](const PyMoELayer& l) { return l.config().num_experts; })
      .def_prop_ro("top_k", [](const PyMoELayer& l) { return l.config().top_k; })
      .def_prop_ro("ffn_dim", [](const PyMoELayer& l) { return l.config().ffn; });
}

}  // namespace minillm::py
