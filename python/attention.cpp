// Python bindings of the FlashAttention forward kernel: minillm.flash_attention and
// minillm.flash_attention_varlen. Tensors come in through DLPack (torch, cupy, jax ... CUDA tensors;
// any strides with a contiguous last dim) and are validated here with ValueError messages that name
// the argument. Kernel-side failures (CUDA errors) surface as RuntimeError.
//
// Outputs: allocated with cudaMallocFromPoolAsync from a minillm memory pool per device (it keeps
// freed memory cached, so no call pays for cudaMalloc or a device-wide cudaFree) and freed with
// cudaFreeAsync on the stream of the call when the last Python reference goes away. They come back as
// torch tensors when q is a torch tensor, else as DLPack-capable nanobind ndarrays (torch.from_dlpack,
// cupy.from_dlpack ...). Pass `out=` to write into an existing tensor instead (nothing allocated).
//
// Stream: `stream` (an int cudaStream_t) when given; otherwise torch.cuda.current_stream(device)
// when q is a torch tensor, else the legacy default stream 0.
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>

#include "bindings.h"
#include "minillm/attention.h"
#include "minillm/core/cuda_check.h"

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

// A CUDA tensor argument seen through DLPack.
struct CudaArray {
  nb::ndarray<> a;
  const char* name = "";
  int64_t dim(int i) const { return static_cast<int64_t>(a.shape(static_cast<size_t>(i))); }
  int64_t stride(int i) const { return a.stride(static_cast<size_t>(i)); }  // in elements
  void* data() const { return static_cast<uint8_t*>(a.data_handle()) + a.byte_offset(); }
};

CudaArray import_cuda(nb::handle obj, const char* name, int ndim) {
  CudaArray r;
  r.name = name;
  if (obj.is_none() || !nb::try_cast(obj, r.a, false))
    value_error(name, " must be a tensor that supports DLPack (e.g. a torch CUDA tensor), got ",
                nb::type_name(obj.type()).c_str());
  if (r.a.device_type() != nb::device::cuda::value)
    value_error(name, " must be on a CUDA device (DLPack device type ", r.a.device_type(), ")");
  if (static_cast<int>(r.a.ndim()) != ndim) value_error(name, " must have ", ndim, " dims, got ", r.a.ndim());
  return r;
}

DType element_type(const CudaArray& t) {
  const nb::dlpack::dtype dt = t.a.dtype();
  if (dt.lanes == 1 && dt.bits == 16) {
    if (dt.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat)) return DType::bf16;
    if (dt.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)) return DType::f16;
  }
  value_error(t.name, " must be bfloat16 or float16 (DLPack code ", int(dt.code), ", ", int(dt.bits), " bits)");
}

// q/k/v/out checks shared by both layouts: dtype, device, contiguous last dim, 16-byte rows.
void check_qkv(const CudaArray& t, DType dtype, int device, const char* dtype_of) {
  if (element_type(t) != dtype) value_error(t.name, " dtype must match ", dtype_of, " (", dtype_name(dtype), ")");
  if (t.a.device_id() != device) value_error(t.name, " is on cuda:", t.a.device_id(), ", q on cuda:", device);
  const int nd = static_cast<int>(t.a.ndim());
  if (t.dim(nd - 1) > 1 && t.stride(nd - 1) != 1)
    value_error(t.name, " must be contiguous in the last dim (head_dim), got stride ", t.stride(nd - 1));
  if (reinterpret_cast<uintptr_t>(t.data()) % 16 != 0) value_error(t.name, " data pointer must be 16-byte aligned");
  for (int i = 0; i < nd - 1; ++i)
    if (t.dim(i) > 1 && t.stride(i) % 8 != 0)
      value_error(t.name, " stride of dim ", i, " = ", t.stride(i), " elements must be a multiple of 8 (16 bytes)");
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

cudaStream_t pick_stream(std::optional<uintptr_t> stream, nb::handle q, int device) {
  if (stream) return reinterpret_cast<cudaStream_t>(*stream);
  if (is_torch_tensor(q)) {
    nb::object cur = nb::module_::import_("torch.cuda").attr("current_stream")(device);
    return reinterpret_cast<cudaStream_t>(nb::cast<uintptr_t>(cur.attr("cuda_stream")));
  }
  return nullptr;
}

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

// A new array of `shape` (contiguous) on `device`, owned by a capsule that frees it stream-ordered.
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
      if (cudaFreeAsync(a->ptr, a->stream) != cudaSuccess) {  // e.g. the stream is gone
        cudaGetLastError();
        cudaFree(a->ptr);
      }
      cudaSetDevice(prev);
    }
    delete a;
  });
  if (as_torch) {
    return nb::ndarray<nb::pytorch>(alloc->ptr, shape, owner, {}, dtype, nb::device::cuda::value, device).cast();
  }
  return nb::ndarray<>(alloc->ptr, shape, owner, {}, dtype, nb::device::cuda::value, device).cast();
}

nb::dlpack::dtype dlpack_of(DType t) {
  nb::dlpack::dtype d{};
  d.code = static_cast<uint8_t>(t == DType::bf16 ? nb::dlpack::dtype_code::Bfloat : nb::dlpack::dtype_code::Float);
  d.bits = 16;
  d.lanes = 1;
  return d;
}

float check_scale(std::optional<double> softmax_scale) {
  if (!softmax_scale) return 0.f;  // the kernel's default, 1/sqrt(head_dim)
  const double s = *softmax_scale;
  if (!(s > 0.0) || !std::isfinite(static_cast<float>(s)))
    value_error("softmax_scale = ", s, " must be finite and > 0");
  return static_cast<float>(s);
}

nb::object finish(nb::object o, nb::object lse, bool return_lse) {
  if (return_lse) return nb::make_tuple(o, lse);
  return o;
}

nb::object flash_attention(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, bool causal,
                           std::optional<double> softmax_scale, bool return_lse, nb::handle out_obj,
                           std::optional<uintptr_t> stream_arg) {
  const CudaArray q = import_cuda(q_obj, "q", 4), k = import_cuda(k_obj, "k", 4), v = import_cuda(v_obj, "v", 4);
  const DType dtype = element_type(q);
  const int device = q.a.device_id();
  check_qkv(q, dtype, device, "q");
  check_qkv(k, dtype, device, "q");
  check_qkv(v, dtype, device, "q");
  const int64_t B = q.dim(0), Nq = q.dim(1), H = q.dim(2), D = q.dim(3);
  const int64_t Nk = k.dim(1), Hkv = k.dim(2);
  for (int i = 0; i < 4; ++i)
    if (k.dim(i) != v.dim(i))
      value_error("k and v must have the same shape (B, Nk, Hkv, D), got dim ", i, ": ", k.dim(i), " vs ", v.dim(i));
  if (k.dim(0) != B) value_error("k batch = ", k.dim(0), " must equal q batch = ", B);
  if (k.dim(3) != D) value_error("k head_dim = ", k.dim(3), " must equal q head_dim = ", D);
  check_head_dim(D);
  if (H < 1 || Hkv < 1 || H % Hkv != 0)
    value_error("num_kv_heads = ", Hkv, " (k dim 2) must divide num_heads = ", H, " (q dim 2)");
  if (B > 65535 || H > 65535 || Nq > INT32_MAX || Nk > INT32_MAX)
    value_error("shape too large: batch and heads must be <= 65535, sequence lengths < 2^31");
  const float scale = check_scale(softmax_scale);

  DeviceGuard guard(device);
  const cudaStream_t stream = pick_stream(stream_arg, q_obj, device);
  const bool as_torch = is_torch_tensor(q_obj);

  FlashAttentionParams p;
  p.dtype = dtype;
  p.batch = static_cast<int>(B);
  p.seqlen_q = static_cast<int>(Nq);
  p.seqlen_k = static_cast<int>(Nk);
  p.num_heads = static_cast<int>(H);
  p.num_kv_heads = static_cast<int>(Hkv);
  p.head_dim = static_cast<int>(D);
  p.causal = causal;
  p.softmax_scale = scale;

  nb::object o_obj;
  void* o_ptr = nullptr;
  if (!out_obj.is_none()) {
    const CudaArray out = import_cuda(out_obj, "out", 4);
    check_qkv(out, dtype, device, "q");
    for (int i = 0; i < 4; ++i)
      if (out.dim(i) != q.dim(i)) value_error("out must have the shape of q (B, Nq, H, D); dim ", i, " is ", out.dim(i));
    o_obj = nb::borrow(out_obj);
    o_ptr = out.data();
    p.o_batch_stride = out.stride(0);
    p.o_row_stride = out.stride(1);
    p.o_head_stride = out.stride(2);
  } else {
    o_obj = new_array({size_t(B), size_t(Nq), size_t(H), size_t(D)}, dlpack_of(dtype), device, stream, as_torch, &o_ptr);
    p.o_batch_stride = Nq * H * D;
    p.o_row_stride = H * D;
    p.o_head_stride = D;
  }
  nb::object lse_obj = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse_obj = new_array({size_t(B), size_t(H), size_t(Nq)}, nb::dtype<float>(), device, stream, as_torch, &lse_ptr);
    p.lse = static_cast<float*>(lse_ptr);
    p.lse_batch_stride = H * Nq;
    p.lse_head_stride = Nq;
  }
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = o_ptr;
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  flash_attention_forward(p, stream);
  return finish(o_obj, lse_obj, return_lse);
}

nb::object flash_attention_varlen(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle cu_q_obj,
                                  nb::handle cu_k_obj, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
                                  std::optional<double> softmax_scale, bool return_lse, nb::handle out_obj,
                                  std::optional<uintptr_t> stream_arg) {
  const CudaArray q = import_cuda(q_obj, "q", 3), k = import_cuda(k_obj, "k", 3), v = import_cuda(v_obj, "v", 3);
  const CudaArray cu_q = import_cuda(cu_q_obj, "cu_seqlens_q", 1), cu_k = import_cuda(cu_k_obj, "cu_seqlens_k", 1);
  const DType dtype = element_type(q);
  const int device = q.a.device_id();
  check_qkv(q, dtype, device, "q");
  check_qkv(k, dtype, device, "q");
  check_qkv(v, dtype, device, "q");
  for (const CudaArray* c : {&cu_q, &cu_k}) {
    if (c->a.dtype() != nb::dtype<int32_t>()) value_error(c->name, " must be int32");
    if (c->a.device_id() != device) value_error(c->name, " must be on the device of q (cuda:", device, ")");
    if (c->dim(0) > 1 && c->stride(0) != 1) value_error(c->name, " must be contiguous");
  }
  if (cu_q.dim(0) < 1 || cu_q.dim(0) != cu_k.dim(0))
    value_error("cu_seqlens_q and cu_seqlens_k must both have batch + 1 >= 1 entries, got ", cu_q.dim(0), " and ",
                cu_k.dim(0));
  const int64_t B = cu_q.dim(0) - 1;
  const int64_t total_q = q.dim(0), H = q.dim(1), D = q.dim(2), Hkv = k.dim(1);
  for (int i = 0; i < 3; ++i)
    if (k.dim(i) != v.dim(i))
      value_error("k and v must have the same shape (total_k, Hkv, D), got dim ", i, ": ", k.dim(i), " vs ", v.dim(i));
  if (k.dim(2) != D) value_error("k head_dim = ", k.dim(2), " must equal q head_dim = ", D);
  check_head_dim(D);
  if (H < 1 || Hkv < 1 || H % Hkv != 0)
    value_error("num_kv_heads = ", Hkv, " (k dim 1) must divide num_heads = ", H, " (q dim 1)");
  if (max_seqlen_q < 0 || max_seqlen_k < 0 || max_seqlen_q > INT32_MAX || max_seqlen_k > INT32_MAX)
    value_error("max_seqlen_q = ", max_seqlen_q, " and max_seqlen_k = ", max_seqlen_k, " must be in [0, 2^31)");
  if (B > 65535 || H > 65535) value_error("batch and heads must be <= 65535");
  const float scale = check_scale(softmax_scale);

  DeviceGuard guard(device);
  const cudaStream_t stream = pick_stream(stream_arg, q_obj, device);
  const bool as_torch = is_torch_tensor(q_obj);

  FlashAttentionParams p;
  p.dtype = dtype;
  p.batch = static_cast<int>(B);
  p.seqlen_q = static_cast<int>(max_seqlen_q);
  p.seqlen_k = static_cast<int>(max_seqlen_k);
  p.num_heads = static_cast<int>(H);
  p.num_kv_heads = static_cast<int>(Hkv);
  p.head_dim = static_cast<int>(D);
  p.causal = causal;
  p.softmax_scale = scale;
  p.cu_seqlens_q = static_cast<const int32_t*>(cu_q.data());
  p.cu_seqlens_k = static_cast<const int32_t*>(cu_k.data());

  nb::object o_obj;
  void* o_ptr = nullptr;
  if (!out_obj.is_none()) {
    const CudaArray out = import_cuda(out_obj, "out", 3);
    check_qkv(out, dtype, device, "q");
    for (int i = 0; i < 3; ++i)
      if (out.dim(i) != q.dim(i)) value_error("out must have the shape of q (total_q, H, D); dim ", i, " is ", out.dim(i));
    o_obj = nb::borrow(out_obj);
    o_ptr = out.data();
    p.o_row_stride = out.stride(0);
    p.o_head_stride = out.stride(1);
  } else {
    o_obj = new_array({size_t(total_q), size_t(H), size_t(D)}, dlpack_of(dtype), device, stream, as_torch, &o_ptr);
    p.o_row_stride = H * D;
    p.o_head_stride = D;
  }
  nb::object lse_obj = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse_obj = new_array({size_t(H), size_t(total_q)}, nb::dtype<float>(), device, stream, as_torch, &lse_ptr);
    p.lse = static_cast<float*>(lse_ptr);
    p.lse_head_stride = total_q;
  }
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.o = o_ptr;
  p.q_row_stride = q.stride(0), p.q_head_stride = q.stride(1);
  p.k_row_stride = k.stride(0), p.k_head_stride = k.stride(1);
  p.v_row_stride = v.stride(0), p.v_head_stride = v.stride(1);
  if (total_q > 0) flash_attention_forward(p, stream);
  return finish(o_obj, lse_obj, return_lse);
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
