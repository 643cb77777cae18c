// Torch / DLPack interop of the CUDA bindings (attention.cpp, moe.cpp): reading tensor arguments,
// setting the device, picking the stream, allocating outputs.
//
// Inputs: torch CUDA tensors are read through their attributes (a few hundred ns; a DLPack export
// and import costs several microseconds per tensor), any other object through DLPack (cupy, jax ...).
// Outputs: for torch inputs, like.new_empty() (torch's caching allocator, torch's stream semantics);
// otherwise memory from a minillm pool per device (freed blocks stay cached, so no call pays for
// cudaMalloc or a device-wide cudaFree), owned by a capsule that frees it with cudaFreeAsync on the
// call's stream, returned as a DLPack-capable array (torch.from_dlpack, cupy.from_dlpack ...).
// Stream: `stream` (an int cudaStream_t) when given; else torch's current stream of the device for
// torch inputs; else the legacy default stream 0.
// Errors are minillm::Error: ValueError through the module's translator (python/engine.cpp).
#pragma once
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"
#include "minillm/core/dtype.h"

namespace minillm::py {
namespace nb = nanobind;

// Hidden, like the nanobind types that these hold (else GCC warns when a build leaves out
// -fvisibility=hidden); inline, so the names read as minillm::py::*.
inline namespace interop NB_HIDDEN {

inline bool is_torch_tensor(nb::handle h) {
  nb::object mod = nb::getattr(h.type(), "__module__", nb::none());
  if (!nb::isinstance<nb::str>(mod)) return false;
  const std::string_view m(nb::borrow<nb::str>(mod).c_str());
  return m == "torch" || m.starts_with("torch.");
}

// Element types that the bindings take or make; `other` is anything else.
enum class Elem { bf16, f16, f32, i32, u8, other };
inline constexpr Elem kElems[] = {Elem::bf16, Elem::f16, Elem::f32, Elem::i32, Elem::u8};

inline Elem elem_of(DType t) {
  switch (t) {
    case DType::bf16: return Elem::bf16;
    case DType::f16: return Elem::f16;
    case DType::f32: return Elem::f32;
    case DType::i32: return Elem::i32;
    default: return Elem::other;
  }
}

inline nb::dlpack::dtype dlpack_dtype(Elem e) {
  using code = nb::dlpack::dtype_code;
  switch (e) {
    case Elem::bf16: return {static_cast<uint8_t>(code::Bfloat), 16, 1};
    case Elem::f16: return {static_cast<uint8_t>(code::Float), 16, 1};
    case Elem::f32: return nb::dtype<float>();
    case Elem::i32: return nb::dtype<int32_t>();
    case Elem::u8: return nb::dtype<uint8_t>();
    case Elem::other: break;
  }
  return {};  // matches no array's dtype
}

// torch objects used on the fast path (looked up once, kept for the life of the process).
struct TorchApi {
  nb::handle bf16, f16, f32, i32, u8;
  nb::handle raw_stream;  // torch._C._cuda_getCurrentRawStream(device) -> int, or null
  nb::handle dtype(Elem e) const {
    switch (e) {
      case Elem::bf16: return bf16;
      case Elem::f16: return f16;
      case Elem::f32: return f32;
      case Elem::i32: return i32;
      case Elem::u8: return u8;
      case Elem::other: break;
    }
    return {};
  }
};

inline const TorchApi& torch_api() {
  static const TorchApi api = [] {
    nb::module_ torch = nb::module_::import_("torch");
    TorchApi a;
    a.bf16 = nb::object(torch.attr("bfloat16")).release();
    a.f16 = nb::object(torch.attr("float16")).release();
    a.f32 = nb::object(torch.attr("float32")).release();
    a.i32 = nb::object(torch.attr("int32")).release();
    a.u8 = nb::object(torch.attr("uint8")).release();
    nb::object c = torch.attr("_C");
    if (nb::hasattr(c, "_cuda_getCurrentRawStream"))
      a.raw_stream = nb::object(c.attr("_cuda_getCurrentRawStream")).release();
    return a;
  }();
  return api;
}

// A CUDA tensor argument: what the checks and the kernels need. Each binding checks its own rules
// (dims, dtype, contiguity) on top of read_tensor.
struct Tensor {
  const char* name = "";
  Elem elem = Elem::other;
  int device = -1;                     // CUDA device index
  std::vector<int64_t> shape, stride;  // strides in elements
  void* data = nullptr;
  nb::object torch_dtype;              // torch path: the dtype, for messages
  nb::dlpack::dtype dl_dtype;          // DLPack path: the dtype, for messages
  nb::ndarray<> keep;                  // DLPack path: keeps the producer's buffer alive for the call
  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  std::string dtype_str() const {  // "torch.float32", "DLPack code 2, 32 bits"
    if (torch_dtype.is_valid()) return nb::str(torch_dtype).c_str();
    detail::Message m;
    m << "DLPack code " << dl_dtype.code << ", " << dl_dtype.bits << " bits";
    return m.str();
  }
};

// Reads `obj` (torch: is_torch_tensor(obj), which a caller may already know); raises unless it is a
// tensor on a CUDA device.
inline Tensor read_tensor(nb::handle obj, const char* name, bool torch) {
  Tensor t;
  t.name = name;
  if (torch) {
    const TorchApi& api = torch_api();
    if (!nb::cast<bool>(obj.attr("is_cuda"))) {
      nb::object dev = obj.attr("device");  // nb::str(lvalue) converts; nb::str(temporary) would not
      MINILLM_FAIL(name << " must be on a CUDA device, got " << nb::str(dev).c_str());
    }
    t.torch_dtype = obj.attr("dtype");
    for (Elem e : kElems)
      if (t.torch_dtype.is(api.dtype(e))) t.elem = e;
    t.device = nb::cast<int>(obj.attr("get_device")());
    nb::tuple shape = nb::borrow<nb::tuple>(obj.attr("shape"));
    nb::tuple stride = nb::borrow<nb::tuple>(obj.attr("stride")());
    const size_t nd = nb::len(shape);
    t.shape.resize(nd);
    t.stride.resize(nd);
    for (size_t i = 0; i < nd; ++i) {
      t.shape[i] = nb::cast<int64_t>(shape[i]);
      t.stride[i] = nb::cast<int64_t>(stride[i]);
    }
    t.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(obj.attr("data_ptr")()));
    return t;
  }
  nb::ndarray<> a;
  if (obj.is_none() || !nb::try_cast(obj, a, false))
    MINILLM_FAIL(name << " must be a tensor that supports DLPack (e.g. a torch CUDA tensor), got "
                      << nb::type_name(obj.type()).c_str());
  if (a.device_type() != nb::device::cuda::value)
    MINILLM_FAIL(name << " must be on a CUDA device (DLPack device type " << a.device_type() << ")");
  t.dl_dtype = a.dtype();
  for (Elem e : kElems)
    if (t.dl_dtype == dlpack_dtype(e)) t.elem = e;
  t.device = a.device_id();
  const size_t nd = a.ndim();
  t.shape.resize(nd);
  t.stride.resize(nd);
  for (size_t i = 0; i < nd; ++i) {
    t.shape[i] = static_cast<int64_t>(a.shape(i));
    t.stride[i] = a.stride(i);
  }
  t.data = static_cast<uint8_t*>(a.data_handle()) + a.byte_offset();
  t.keep = std::move(a);
  return t;
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

inline cudaStream_t pick_stream(std::optional<uintptr_t> stream, bool torch, int device) {
  if (stream) return reinterpret_cast<cudaStream_t>(*stream);
  if (!torch) return nullptr;
  const TorchApi& api = torch_api();
  uintptr_t s = 0;
  if (api.raw_stream.is_valid()) {  // the raw call skips building a torch.cuda.Stream object
    s = nb::cast<uintptr_t>(api.raw_stream(device));
  } else {
    nb::object cur = nb::module_::import_("torch.cuda").attr("current_stream")(device);
    s = nb::cast<uintptr_t>(cur.attr("cuda_stream"));
  }
  return reinterpret_cast<cudaStream_t>(s);
}

// One stream-ordered pool per device, shared by all bindings, created on first use.
inline cudaMemPool_t pool_for(int device) {
  static std::mutex mu;
  static cudaMemPool_t pools[64] = {};
  MINILLM_CHECK(device >= 0 && device < 64, "CUDA device " << device << " out of range");
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

// A new contiguous array of `elem` (not Elem::other) on `device`; *data receives its pointer.
// torch: like.new_empty(shape, dtype=...), ordered on torch's current stream. Otherwise a block of
// pool_for(device) allocated and freed on `stream`, owned by the returned DLPack-capable array.
inline nb::object new_array(nb::handle like, bool torch, std::initializer_list<size_t> shape, Elem elem,
                            int device, cudaStream_t stream, void** data) {
  if (torch) {
    nb::tuple shp = nb::steal<nb::tuple>(PyTuple_New(static_cast<Py_ssize_t>(shape.size())));
    Py_ssize_t i = 0;
    for (size_t d : shape) PyTuple_SET_ITEM(shp.ptr(), i++, PyLong_FromSize_t(d));
    nb::object o = like.attr("new_empty")(shp, nb::arg("dtype") = torch_api().dtype(elem));
    *data = reinterpret_cast<void*>(nb::cast<uintptr_t>(o.attr("data_ptr")()));
    return o;
  }
  struct DeviceAlloc {
    void* ptr = nullptr;
    cudaStream_t stream = nullptr;
    int device = 0;
  };
  const nb::dlpack::dtype dt = dlpack_dtype(elem);
  size_t n = 1;
  for (size_t d : shape) n *= d;
  const size_t bytes = std::max<size_t>(n * dt.bits / 8, 16);  // never a null pointer, even when empty
  const cudaMemPool_t pool = pool_for(device);
  void* ptr = nullptr;
  MINILLM_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr, bytes, pool, stream));
  *data = ptr;
  nb::capsule owner(new DeviceAlloc{ptr, stream, device}, [](void* p) noexcept {
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
  return nb::ndarray<nb::array_api>(ptr, shape, owner, {}, dt, nb::device::cuda::value, device).cast();
}

}  // namespace interop
}  // namespace minillm::py
