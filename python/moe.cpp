// Python binding of the CUDA MoE layer: minillm.MoELayer.
//
//   moe = minillm.MoELayer(hidden_dim, num_experts, top_k, ffn_dim, activation="swiglu",
//                          normalize_topk=True, dtype="bf16")
//   moe.set_weights(router, w_gate, w_up, w_down)   # (E,H), (E,F,H), (E,F,H) or None for gelu, (E,H,F)
//   y = moe(x)                                      # (T, H) -> (T, H)
//   ids, weights = moe.route(x)                     # (T, k) int32, (T, k) float32
//
// Tensors: torch CUDA tensors (read through their attributes) or any DLPack CUDA array; contiguous
// (expert weights: rows may be padded), of the layer's dtype; validated here with ValueError messages that name the argument. The weights
// are borrowed: the layer keeps references to the Python objects so they stay alive.
// Outputs and the per-call scratch: for torch inputs on torch's current stream, x.new_empty() (torch's
// caching allocator); otherwise memory from minillm's stream-ordered pool (torch_interop.h), outputs
// returned as DLPack-capable arrays.
// Stream: `stream` (an int cudaStream_t) when given; else torch's current stream for torch inputs;
// else the legacy default stream 0.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "minillm/moe.h"
#include "torch_interop.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

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

// A CUDA tensor argument of the layer's dtype with its shape checked (-1: any size), on `device` unless
// that is -1; contiguous, or (row_strided, expert matrices [E, rows, cols]) with padded rows: strides
// (rows * ld, ld, 1), ld >= cols a multiple of 8.
Tensor import_tensor(nb::handle obj, const char* name, DType dtype, const std::vector<int64_t>& want, int device,
                     bool row_strided = false) {
  Tensor t = read_tensor(obj, name, is_torch_tensor(obj));
  if (device >= 0 && t.device != device)
    MINILLM_FAIL(name << " is on cuda:" << t.device << ", the layer's weights on cuda:" << device);
  if (t.elem != elem_of(dtype)) MINILLM_FAIL(name << " must be " << (dtype == DType::bf16 ? "bfloat16" : "float16"));
  bool shape_ok = t.shape.size() == want.size();
  for (size_t i = 0; shape_ok && i < want.size(); ++i) shape_ok = want[i] < 0 || t.shape[i] == want[i];
  if (!shape_ok) MINILLM_FAIL(name << " must have shape " << shape_str(want) << ", got " << shape_str(t.shape));
  if (row_strided) {
    const int64_t ld = t.stride[1];
    if (!(t.stride[2] == 1 && ld >= t.shape[2] && ld % 8 == 0 && (t.shape[0] == 1 || t.stride[0] == t.shape[1] * ld)))
      MINILLM_FAIL(name << " must have contiguous rows with a row stride (a multiple of 8) >= " << t.shape[2]
                        << " and experts rows * stride apart; got strides (" << t.stride[0] << ", " << ld << ", "
                        << t.stride[2] << ")");
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) MINILLM_FAIL(name << " data pointer must be 16-byte aligned");
    return t;
  }
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] > 1 && t.stride[i] != expect) MINILLM_FAIL(name << " must be contiguous");
    expect *= t.shape[i];
  }
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) MINILLM_FAIL(name << " data pointer must be 16-byte aligned");
  return t;
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
      cfg_.activation = ExpertActivation::swiglu;
    } else if (activation == "gelu") {
      cfg_.activation = ExpertActivation::gelu;
    } else {
      MINILLM_FAIL("activation = '" << activation << "' must be 'swiglu' or 'gelu'");
    }
    cfg_.normalize_topk = normalize_topk;
    if (dtype == "bf16" || dtype == "bfloat16") {
      cfg_.dtype = DType::bf16;
    } else if (dtype == "f16" || dtype == "fp16" || dtype == "float16") {
      cfg_.dtype = DType::f16;
    } else {
      MINILLM_FAIL("dtype = '" << dtype << "' must be 'bf16' or 'fp16'");
    }
    cfg_.validate();
  }

  void set_weights(nb::handle router, nb::handle w_gate, nb::handle w_up, nb::handle w_down) {
    const int64_t E = cfg_.num_experts, H = cfg_.hidden, F = cfg_.ffn;
    const DType dt = cfg_.dtype;
    const Tensor r = import_tensor(router, "router", dt, {E, H}, -1);
    const int device = r.device;
    const Tensor g = import_tensor(w_gate, "w_gate", dt, {E, F, H}, device, true);
    const bool swiglu = cfg_.activation == ExpertActivation::swiglu;
    Tensor u;
    if (swiglu) {
      u = import_tensor(w_up, "w_up", dt, {E, F, H}, device, true);
      if (u.stride[1] != g.stride[1])
        MINILLM_FAIL("w_up's row stride " << u.stride[1] << " must equal w_gate's " << g.stride[1]);
    } else if (!w_up.is_none()) {
      MINILLM_FAIL("w_up must be None for activation 'gelu'");
    }
    const Tensor d = import_tensor(w_down, "w_down", dt, {E, H, F}, device, true);
    DeviceGuard guard(device);
    if (!layer_ || device != device_) layer_ = std::make_unique<MoELayer>(cfg_);
    device_ = device;
    layer_->set_weights(r.data, g.data, swiglu ? u.data : nullptr, d.data, g.stride[1], d.stride[1]);
    refs_ = nb::make_tuple(nb::borrow(router), nb::borrow(w_gate), nb::borrow(w_up), nb::borrow(w_down));
  }

  nb::object forward(nb::handle x_obj, nb::handle out_obj, std::optional<uintptr_t> stream_arg) {
    check_ready();
    const Tensor x = import_tensor(x_obj, "x", cfg_.dtype, {-1, cfg_.hidden}, device_);
    const int64_t T = x.dim(0);
    check_tokens(T);
    DeviceGuard guard(device_);
    const bool torch = is_torch_tensor(x_obj);
    const cudaStream_t stream = pick_stream(stream_arg, torch, device_);
    nb::object y_obj;
    void* y = nullptr;
    if (!out_obj.is_none()) {
      const Tensor out = import_tensor(out_obj, "out", cfg_.dtype, {T, cfg_.hidden}, device_);
      y_obj = nb::borrow(out_obj);
      y = out.data;
    } else {
      y_obj = new_array(x_obj, torch, {size_t(T), size_t(cfg_.hidden)}, elem_of(cfg_.dtype), device_, stream, &y);
    }
    if (T > 0) {
      const size_t bytes = layer_->workspace_bytes(T);
      void* scratch = nullptr;
      // Scratch from torch only on torch's current stream: torch would hand a block freed when `keep`
      // dies to its stream at once, while our kernels may still use it on another one.
      nb::object keep = new_array(x_obj, torch && !stream_arg, {bytes}, Elem::u8, device_, stream, &scratch);
      layer_->forward(x.data, y, T, scratch, bytes, stream);
    }
    return y_obj;
  }

  nb::object route(nb::handle x_obj, std::optional<uintptr_t> stream_arg) {
    check_ready();
    const Tensor x = import_tensor(x_obj, "x", cfg_.dtype, {-1, cfg_.hidden}, device_);
    const int64_t T = x.dim(0);
    check_tokens(T);
    DeviceGuard guard(device_);
    const bool torch = is_torch_tensor(x_obj);
    const cudaStream_t stream = pick_stream(stream_arg, torch, device_);
    void* ids = nullptr;
    void* weights = nullptr;
    const size_t k = static_cast<size_t>(cfg_.top_k);
    nb::object ids_obj = new_array(x_obj, torch, {size_t(T), k}, Elem::i32, device_, stream, &ids);
    nb::object w_obj = new_array(x_obj, torch, {size_t(T), k}, Elem::f32, device_, stream, &weights);
    if (T > 0) {
      const size_t bytes = layer_->workspace_bytes(T);
      void* scratch = nullptr;
      nb::object keep = new_array(x_obj, torch && !stream_arg, {bytes}, Elem::u8, device_, stream, &scratch);
      layer_->route(x.data, T, static_cast<int32_t*>(ids), static_cast<float*>(weights), scratch, bytes, stream);
    }
    return nb::make_tuple(ids_obj, w_obj);
  }

  size_t workspace_bytes(int64_t T) const {
    if (T < 0) MINILLM_FAIL("tokens = " << T << " must be >= 0");
    return MoELayer::workspace_bytes(cfg_, T);
  }

  const MoEConfig& config() const { return cfg_; }

 private:
  void check_ready() const {
    if (!layer_) MINILLM_FAIL("MoELayer: call set_weights(router, w_gate, w_up, w_down) first");
  }
  void check_tokens(int64_t T) const {
    if (T * cfg_.top_k >= (int64_t{1} << 30)) MINILLM_FAIL("x has " << T << " tokens: tokens * top_k must be < 2^30");
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
           "router (E, H), w_gate (E, F, H), w_up (E, F, H) or None for gelu, w_down (E, H, F): CUDA tensors of\n"
           "the layer's dtype in HF's [out, in] layout. Borrowed, not copied: keep them unchanged. The expert\n"
           "matrices may have padded rows (views [..., :cols] of storage with weight_row_stride(cols) columns),\n"
           "which read faster.")
      .def_static("weight_row_stride", &MoELayer::weight_row_stride, nb::arg("cols"),
                  "The row stride (elements) at which expert matrices of `cols` columns read fastest.")
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
