// Python bindings of the FlashAttention forward kernel: minillm.flash_attention and
// minillm.flash_attention_varlen. Inputs: torch CUDA tensors (read through their attributes: the
// fast path) or any DLPack CUDA array (cupy, jax ...), with any strides and a contiguous last dim.
// Bad input raises ValueError naming the argument; kernel-side failures (CUDA errors) RuntimeError.
//
// Outputs: for torch inputs, torch tensors from q.new_empty() (torch's caching allocator); otherwise
// memory from a minillm pool per device (freed blocks stay cached, so no call pays for cudaMalloc or
// a device-wide cudaFree), owned by a capsule that frees it with cudaFreeAsync on the call's stream,
// returned as a DLPack-capable array (torch.from_dlpack, cupy.from_dlpack ...). `out=` writes into
// an existing tensor instead.
//
// Stream: `stream` (an int cudaStream_t) when given; otherwise torch's current stream of q's device
// for torch inputs, else the legacy default stream 0.
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <optional>
#include <type_traits>
#include <string>
#include <string_view>
#include <utility>

#include "bindings.h"
#include "minillm/attention.h"
#include "minillm/core/cuda_check.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

// Error messages: std::string and std::to_string.
inline void append(std::string& s, const char* x) { s += x; }
inline void append(std::string& s, const std::string& x) { s += x; }
template <typename T>
  requires std::is_arithmetic_v<T>
void append(std::string& s, T x) {
  s += std::to_string(x);
}

template <typename... Args>
[[noreturn]] void value_error(const Args&... args) {
  std::string msg;
  (append(msg, args), ...);
  throw ::minillm::Error(msg);  // ValueError through the module's translator (python/engine.cpp)
}

bool is_torch_tensor(nb::handle h) {
  nb::object mod = nb::getattr(h.type(), "__module__", nb::none());
  if (!nb::isinstance<nb::str>(mod)) return false;
  const std::string_view m(nb::borrow<nb::str>(mod).c_str());
  return m == "torch" || m.starts_with("torch.");
}

// torch objects used on the fast path (looked up once, kept for the life of the process).
struct TorchApi {
  nb::handle bf16, f16, f32, i32;
  nb::handle raw_stream;  // torch._C._cuda_getCurrentRawStream(device) -> int, or null
};

const TorchApi& torch_api() {
  static const TorchApi api = [] {
    nb::module_ torch = nb::module_::import_("torch");
    TorchApi a;
    a.bf16 = nb::object(torch.attr("bfloat16")).release();
    a.f16 = nb::object(torch.attr("float16")).release();
    a.f32 = nb::object(torch.attr("float32")).release();
    a.i32 = nb::object(torch.attr("int32")).release();
    nb::object c = torch.attr("_C");
    if (nb::hasattr(c, "_cuda_getCurrentRawStream")) a.raw_stream = nb::object(c.attr("_cuda_getCurrentRawStream")).release();
    return a;
  }();
  return api;
}

enum class Elem { bf16, f16, i32, other };

// One tensor argument: what the checks and the kernel need. Torch tensors are read through their
// attributes (a few hundred ns; DLPack export/import costs several microseconds per tensor), any
// other object through DLPack.
struct TensorArg {
  const char* name = "";
  Elem elem = Elem::other;
  std::string dtype_str;  // for messages
  int device = -1;        // CUDA device index, -1 when not on a CUDA device
  int ndim = 0;
  int64_t shape[4] = {}, stride[4] = {};  // strides in elements
  void* data = nullptr;
  nb::ndarray<> keep;  // DLPack path: keeps the producer's buffer alive for the call
  int64_t dim(int i) const { return shape[i]; }
};

TensorArg import_tensor(nb::handle obj, const char* name, int ndim, bool torch) {
  TensorArg t;
  t.name = name;
  if (torch) {
    const TorchApi& api = torch_api();
    nb::object dt = obj.attr("dtype");
    t.elem = dt.is(api.bf16) ? Elem::bf16 : dt.is(api.f16) ? Elem::f16 : dt.is(api.i32) ? Elem::i32 : Elem::other;
    if (t.elem == Elem::other) t.dtype_str = nb::str(dt).c_str();
    if (!nb::cast<bool>(obj.attr("is_cuda"))) {
      nb::object dev = obj.attr("device");  // nb::str(lvalue) converts; nb::str(temporary) would not
      value_error(name, " must be on a CUDA device, got ", nb::str(dev).c_str());
    }
    t.device = nb::cast<int>(obj.attr("get_device")());
    nb::tuple shape = nb::borrow<nb::tuple>(obj.attr("shape"));
    t.ndim = static_cast<int>(nb::len(shape));
    if (t.ndim != ndim) value_error(name, " must have ", ndim, " dims, got ", t.ndim);
    nb::tuple stride = nb::borrow<nb::tuple>(obj.attr("stride")());
    for (int i = 0; i < ndim; ++i) {
      t.shape[i] = nb::cast<int64_t>(shape[i]);
      t.stride[i] = nb::cast<int64_t>(stride[i]);
    }
    t.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(obj.attr("data_ptr")()));
    return t;
  }
  nb::ndarray<> a;
  if (obj.is_none() || !nb::try_cast(obj, a, false))
    value_error(name, " must be a tensor that supports DLPack (e.g. a torch CUDA tensor), got ",
                nb::type_name(obj.type()).c_str());
  if (a.device_type() != nb::device::cuda::value)
    value_error(name, " must be on a CUDA device (DLPack device type ", a.device_type(), ")");
  t.ndim = static_cast<int>(a.ndim());
  if (t.ndim != ndim) value_error(name, " must have ", ndim, " dims, got ", t.ndim);
  const nb::dlpack::dtype dt = a.dtype();
  if (dt.lanes == 1 && dt.bits == 16 && dt.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat)) {
    t.elem = Elem::bf16;
  } else if (dt.lanes == 1 && dt.bits == 16 && dt.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)) {
    t.elem = Elem::f16;
  } else if (dt == nb::dtype<int32_t>()) {
    t.elem = Elem::i32;
  } else {
    t.dtype_str = "DLPack code " + std::to_string(dt.code) + ", " + std::to_string(dt.bits) + " bits";
  }
  t.device = a.device_id();
  for (int i = 0; i < ndim; ++i) {
    t.shape[i] = static_cast<int64_t>(a.shape(i));
    t.stride[i] = a.stride(i);
  }
  t.data = static_cast<uint8_t*>(a.data_handle()) + a.byte_offset();
  t.keep = std::move(a);
  return t;
}

DType element_type(const TensorArg& t) {
  if (t.elem == Elem::bf16) return DType::bf16;
  if (t.elem == Elem::f16) return DType::f16;
  value_error(t.name, " must be bfloat16 or float16, got ", t.elem == Elem::i32 ? "int32" : t.dtype_str);
}

// q/k/v/out checks shared by both layouts: dtype, device, contiguous last dim, 16-byte rows.
void check_qkv(const TensorArg& t, DType dtype, int device) {
  if (element_type(t) != dtype) value_error(t.name, " dtype must match q (", dtype_name(dtype), ")");
  if (t.device != device) value_error(t.name, " is on cuda:", t.device, ", q on cuda:", device);
  const int nd = t.ndim;
  if (t.shape[nd - 1] > 1 && t.stride[nd - 1] != 1)
    value_error(t.name, " must be contiguous in the last dim (head_dim), got stride ", t.stride[nd - 1]);
}

// After the shape checks: what the 16-byte cp.async loads and stores need.
void check_alignment(const TensorArg& t) {
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) value_error(t.name, " data pointer must be 16-byte aligned");
  for (int i = 0; i < t.ndim - 1; ++i)
    if (t.shape[i] > 1 && t.stride[i] % 8 != 0)
      value_error(t.name, " stride of dim ", i, " = ", t.stride[i], " elements must be a multiple of 8 (16 bytes)");
}

void check_head_dim(int64_t d) {
  if (d < 8 || d > 256 || d % 8 != 0) value_error("head_dim = ", d, " is not supported: must be a multiple of 8 in [8, 256]");
}

// Sets the device of the call for its duration.
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

cudaStream_t pick_stream(std::optional<uintptr_t> stream, bool torch, int device) {
  if (stream) return reinterpret_cast<cudaStream_t>(*stream);
  if (torch) {
    const TorchApi& api = torch_api();
    uintptr_t s = 0;
    if (api.raw_stream.is_valid()) {
      s = nb::cast<uintptr_t>(api.raw_stream(device));
    } else {
      nb::object cur = nb::module_::import_("torch.cuda").attr("current_stream")(device);
      s = nb::cast<uintptr_t>(cur.attr("cuda_stream"));
    }
    return reinterpret_cast<cudaStream_t>(s);
  }
  return nullptr;
}

cudaMemPool_t pool_for(int device) {
  static std::mutex mu;
  static cudaMemPool_t pools[64] = {};
  if (device < 0 || device >= 64) value_error("CUDA device ", device, " out of range");
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

// A new contiguous output. Torch inputs: like.new_empty(shape, dtype=...) (torch's caching allocator,
// torch's stream semantics). Otherwise: memory from minillm's pool, owned by a capsule that frees it
// stream-ordered, returned as a DLPack-capable array (__dlpack__, __dlpack_device__).
nb::object new_output(nb::handle like, bool torch, std::initializer_list<size_t> shape, bool f32, DType dtype,
                      int device, cudaStream_t stream, void** data) {
  if (torch) {
    nb::tuple shp = nb::steal<nb::tuple>(PyTuple_New(static_cast<Py_ssize_t>(shape.size())));
    Py_ssize_t i = 0;
    for (size_t d : shape) PyTuple_SET_ITEM(shp.ptr(), i++, PyLong_FromSize_t(d));
    const TorchApi& api = torch_api();
    nb::object o = f32 ? like.attr("new_empty")(shp, nb::arg("dtype") = api.f32) : like.attr("new_empty")(shp);
    *data = reinterpret_cast<void*>(nb::cast<uintptr_t>(o.attr("data_ptr")()));
    return o;
  }
  size_t n = 1;
  for (size_t d : shape) n *= d;
  const size_t bytes = std::max<size_t>(n * (f32 ? 4 : 2), 16);  // never a null pointer, even when empty
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
  nb::dlpack::dtype dt = nb::dtype<float>();
  if (!f32) {
    dt.code = static_cast<uint8_t>(dtype == DType::bf16 ? nb::dlpack::dtype_code::Bfloat : nb::dlpack::dtype_code::Float);
    dt.bits = 16;
  }
  return nb::ndarray<nb::array_api>(alloc->ptr, shape, owner, {}, dt, nb::device::cuda::value, device).cast();
}

float check_scale(std::optional<double> softmax_scale) {
  if (!softmax_scale) return 0.f;  // the kernel's default, 1/sqrt(head_dim)
  const double s = *softmax_scale;
  if (!(s > 0.0) || !std::isfinite(static_cast<float>(s)))
    value_error("softmax_scale = ", s, " must be finite and > 0");
  return static_cast<float>(s);
}

// q, k, v checks common to both layouts (dims: 4 padded, 3 varlen; heads at dim nd - 2).
struct QKV {
  TensorArg q, k, v;
  DType dtype;
  int device;
  bool torch;
};

QKV import_qkv(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, int nd) {
  QKV r;
  r.torch = is_torch_tensor(q_obj);
  r.q = import_tensor(q_obj, "q", nd, r.torch);
  r.k = import_tensor(k_obj, "k", nd, is_torch_tensor(k_obj));
  r.v = import_tensor(v_obj, "v", nd, is_torch_tensor(v_obj));
  r.dtype = element_type(r.q);
  r.device = r.q.device;
  for (const TensorArg* t : {&r.q, &r.k, &r.v}) check_qkv(*t, r.dtype, r.device);
  const char* shape_name = nd == 4 ? "(B, Nk, Hkv, D)" : "(total_k, Hkv, D)";
  for (int i = 0; i < nd; ++i)
    if (r.k.dim(i) != r.v.dim(i))
      value_error("k and v must have the same shape ", shape_name, ", got dim ", i, ": ", r.k.dim(i), " vs ", r.v.dim(i));
  const int64_t D = r.q.dim(nd - 1), H = r.q.dim(nd - 2), Hkv = r.k.dim(nd - 2);
  if (r.k.dim(nd - 1) != D) value_error("k head_dim = ", r.k.dim(nd - 1), " must equal q head_dim = ", D);
  check_head_dim(D);
  if (H < 1 || Hkv < 1 || H % Hkv != 0)
    value_error("num_kv_heads = ", Hkv, " (k dim ", nd - 2, ") must divide num_heads = ", H, " (q dim ", nd - 2, ")");
  if (H > 65535) value_error("num_heads = ", H, " must be <= 65535");
  for (const TensorArg* t : {&r.q, &r.k, &r.v}) check_alignment(*t);
  return r;
}

// out=: validated against q's shape; returns the object and fills the strides.
nb::object use_out(nb::handle out_obj, const QKV& a, int nd, void** data, int64_t* stride) {
  const TensorArg out = import_tensor(out_obj, "out", nd, is_torch_tensor(out_obj));
  check_qkv(out, a.dtype, a.device);
  for (int i = 0; i < nd; ++i)
    if (out.dim(i) != a.q.dim(i)) value_error("out must have the shape of q; dim ", i, " is ", out.dim(i), " vs ", a.q.dim(i));
  check_alignment(out);
  *data = out.data;
  for (int i = 0; i < nd; ++i) stride[i] = out.stride[i];
  return nb::borrow(out_obj);
}

nb::object finish(nb::object o, nb::object lse, bool return_lse) {
  if (return_lse) return nb::make_tuple(o, lse);
  return o;
}

nb::object flash_attention(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, bool causal,
                           std::optional<double> softmax_scale, bool return_lse, nb::handle out_obj,
                           std::optional<uintptr_t> stream_arg) {
  const QKV a = import_qkv(q_obj, k_obj, v_obj, 4);
  const int64_t B = a.q.dim(0), Nq = a.q.dim(1), H = a.q.dim(2), D = a.q.dim(3), Nk = a.k.dim(1);
  if (a.k.dim(0) != B) value_error("k batch = ", a.k.dim(0), " must equal q batch = ", B);
  if (B > 65535 || Nq > INT32_MAX || Nk > INT32_MAX)
    value_error("shape too large: batch must be <= 65535 and sequence lengths < 2^31");
  FlashAttentionParams p;
  p.softmax_scale = check_scale(softmax_scale);
  p.dtype = a.dtype;
  p.batch = static_cast<int>(B);
  p.seqlen_q = static_cast<int>(Nq);
  p.seqlen_k = static_cast<int>(Nk);
  p.num_heads = static_cast<int>(H);
  p.num_kv_heads = static_cast<int>(a.k.dim(2));
  p.head_dim = static_cast<int>(D);
  p.causal = causal;

  DeviceGuard guard(a.device);
  const cudaStream_t stream = pick_stream(stream_arg, a.torch, a.device);
  void* o_ptr = nullptr;
  int64_t os[4] = {Nq * H * D, H * D, D, 1};
  nb::object o = out_obj.is_none()
                     ? new_output(q_obj, a.torch, {size_t(B), size_t(Nq), size_t(H), size_t(D)}, false, a.dtype,
                                  a.device, stream, &o_ptr)
                     : use_out(out_obj, a, 4, &o_ptr, os);
  nb::object lse = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse = new_output(q_obj, a.torch, {size_t(B), size_t(H), size_t(Nq)}, true, a.dtype, a.device, stream, &lse_ptr);
    p.lse = static_cast<float*>(lse_ptr);
    p.lse_batch_stride = H * Nq;
    p.lse_head_stride = Nq;
  }
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = o_ptr;
  p.q_batch_stride = a.q.stride[0], p.q_row_stride = a.q.stride[1], p.q_head_stride = a.q.stride[2];
  p.k_batch_stride = a.k.stride[0], p.k_row_stride = a.k.stride[1], p.k_head_stride = a.k.stride[2];
  p.v_batch_stride = a.v.stride[0], p.v_row_stride = a.v.stride[1], p.v_head_stride = a.v.stride[2];
  p.o_batch_stride = os[0], p.o_row_stride = os[1], p.o_head_stride = os[2];
  flash_attention_forward(p, stream);
  return finish(o, lse, return_lse);
}

nb::object flash_attention_varlen(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle cu_q_obj,
                                  nb::handle cu_k_obj, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
                                  std::optional<double> softmax_scale, bool return_lse, nb::handle out_obj,
                                  std::optional<uintptr_t> stream_arg) {
  const QKV a = import_qkv(q_obj, k_obj, v_obj, 3);
  const TensorArg cu_q = import_tensor(cu_q_obj, "cu_seqlens_q", 1, is_torch_tensor(cu_q_obj));
  const TensorArg cu_k = import_tensor(cu_k_obj, "cu_seqlens_k", 1, is_torch_tensor(cu_k_obj));
  for (const TensorArg* c : {&cu_q, &cu_k}) {
    if (c->elem != Elem::i32) value_error(c->name, " must be int32");
    if (c->device != a.device) value_error(c->name, " must be on the device of q (cuda:", a.device, ")");
    if (c->shape[0] > 1 && c->stride[0] != 1) value_error(c->name, " must be contiguous");
  }
  if (cu_q.dim(0) < 1 || cu_q.dim(0) != cu_k.dim(0))
    value_error("cu_seqlens_q and cu_seqlens_k must both have batch + 1 >= 1 entries, got ", cu_q.dim(0), " and ",
                cu_k.dim(0));
  const int64_t B = cu_q.dim(0) - 1, total_q = a.q.dim(0), H = a.q.dim(1), D = a.q.dim(2);
  if (max_seqlen_q < 0 || max_seqlen_k < 0 || max_seqlen_q > INT32_MAX || max_seqlen_k > INT32_MAX)
    value_error("max_seqlen_q = ", max_seqlen_q, " and max_seqlen_k = ", max_seqlen_k, " must be in [0, 2^31)");
  if (B > 65535) value_error("batch = ", B, " must be <= 65535");
  FlashAttentionParams p;
  p.softmax_scale = check_scale(softmax_scale);
  p.dtype = a.dtype;
  p.batch = static_cast<int>(B);
  p.seqlen_q = static_cast<int>(max_seqlen_q);
  p.seqlen_k = static_cast<int>(max_seqlen_k);
  p.num_heads = static_cast<int>(H);
  p.num_kv_heads = static_cast<int>(a.k.dim(1));
  p.head_dim = static_cast<int>(D);
  p.causal = causal;
  p.cu_seqlens_q = static_cast<const int32_t*>(cu_q.data);
  p.cu_seqlens_k = static_cast<const int32_t*>(cu_k.data);

  DeviceGuard guard(a.device);
  const cudaStream_t stream = pick_stream(stream_arg, a.torch, a.device);
  void* o_ptr = nullptr;
  int64_t os[3] = {H * D, D, 1};
  nb::object o = out_obj.is_none() ? new_output(q_obj, a.torch, {size_t(total_q), size_t(H), size_t(D)}, false,
                                                a.dtype, a.device, stream, &o_ptr)
                                   : use_out(out_obj, a, 3, &o_ptr, os);
  nb::object lse = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse = new_output(q_obj, a.torch, {size_t(H), size_t(total_q)}, true, a.dtype, a.device, stream, &lse_ptr);
    p.lse = static_cast<float*>(lse_ptr);
    p.lse_head_stride = total_q;
  }
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = o_ptr;
  p.q_row_stride = a.q.stride[0], p.q_head_stride = a.q.stride[1];
  p.k_row_stride = a.k.stride[0], p.k_head_stride = a.k.stride[1];
  p.v_row_stride = a.v.stride[0], p.v_head_stride = a.v.stride[1];
  p.o_row_stride = os[0], p.o_head_stride = os[1];
  if (total_q > 0) flash_attention_forward(p, stream);
  return finish(o, lse, return_lse);
}

}  // namespace

void bind_attention(nb::module_& m) {
  m.def("flash_attention", &flash_attention, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        nb::arg("causal") = false, nb::arg("softmax_scale") = nb::none(), nb::arg("return_lse") = false,
        nb::arg("out") = nb::none(), nb::arg("stream") = nb::none(),
        "FlashAttention forward. q: (B, Nq, H, D), k, v: (B, Nk, Hkv, D), bf16 or fp16 CUDA tensors with a\n"
        "contiguous last dim; Hkv divides H (GQA); D a multiple of 8 up to 256. causal: bottom-right aligned\n"
        "(query i sees keys j <= i + Nk - Nq). softmax_scale defaults to 1/sqrt(D). Returns o (B, Nq, H, D),\n"
        "or (o, lse) with lse (B, H, Nq) fp32 natural-log sum-exp when return_lse. out: optional tensor to\n"
        "write o into. stream: cudaStream_t as int; default torch's current stream for torch inputs, else 0.");
  m.def("flash_attention_varlen", &flash_attention_varlen, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        nb::arg("cu_seqlens_q"), nb::arg("cu_seqlens_k"), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"),
        nb::arg("causal") = false, nb::arg("softmax_scale") = nb::none(),
        nb::arg("return_lse") = false, nb::arg("out") = nb::none(), nb::arg("stream") = nb::none(),
        "FlashAttention forward on packed sequences. q: (total_q, H, D), k, v: (total_k, Hkv, D);\n"
        "cu_seqlens_q/k: int32 CUDA tensors (B + 1,) of offsets; max_seqlen_q/k bound the lengths.\n"
        "Returns o (total_q, H, D), or (o, lse) with lse (H, total_q) fp32 when return_lse.");
}

}  // namespace minillm::py
