// Tensor: a non-owning view (data pointer, dtype, device, up to 4 dims, strides in elements).
// Buffer: owning host or device memory (RAII). Workspace: a bump arena over one Buffer that the
// forward pass takes all of its scratch from, so that the forward pass itself never allocates.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "minillm/core/check.h"
#include "minillm/core/dtype.h"

namespace minillm {

enum class Device : uint8_t { cpu, cuda };
const char* device_name(Device d);

constexpr int kMaxDims = 4;

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};  // in elements

  Tensor() = default;
  // A contiguous (row-major) view of `data` with the given shape.
  Tensor(void* data, DType dtype, Device device, std::initializer_list<int64_t> shape);

  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  bool is_contiguous() const;
  bool empty() const { return numel() == 0; }
  std::string shape_str() const;  // "[2, 3, 4]"

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  // Same data, new contiguous shape with the same numel (requires contiguity).
  Tensor view(std::initializer_list<int64_t> new_shape) const;
};

// Throws a message naming `what` when the tensor's dtype or shape differ from the expectation.
void check_tensor(const Tensor& t, const char* what, DType dtype, std::initializer_list<int64_t> shape);

// Owning memory: host (256-byte aligned; 2 MiB and huge pages from 8 MiB) or CUDA device. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(size_t bytes, Device device);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::cpu;
};

// An owned tensor: a Buffer plus a contiguous view of it.
struct OwnedTensor {
  Buffer buf;
  Tensor t;
  OwnedTensor() = default;
  OwnedTensor(DType dtype, Device device, std::initializer_list<int64_t> shape);
};

// Bump allocator over one Buffer. alloc() never calls malloc/cudaMalloc: running out of the
// planned capacity is an error that names the request and the capacity.
class Workspace {
 public:
  Workspace() = default;
  Workspace(size_t bytes, Device device) : buf_(bytes, device) {}
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape);
  void* alloc_bytes(size_t bytes);
  void reset() { offset_ = 0; }
  // Scratch scopes: `size_t m = ws.used(); ...; ws.rewind(m);` frees what was taken after m.
  void rewind(size_t mark) { offset_ = mark < offset_ ? mark : offset_; }
  size_t used() const { return offset_; }
  size_t peak() const { return peak_; }
  size_t capacity() const { return buf_.bytes(); }
  Device device() const { return buf_.device(); }

 private:
  Buffer buf_;
  size_t offset_ = 0;
  size_t peak_ = 0;
};

// Copies between host and device (or host-host); sizes in bytes. Synchronous.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);

bool cuda_available();  // true when built with CUDA and a device is present

// Bytes that can be allocated on `device` now: the host's MemAvailable (/proc/meminfo), or the
// current CUDA device's free memory. 0 when unknown.
size_t available_memory(Device device);
// "1.23 GB", "456.0 MB", "789 bytes" (powers of 1000, as the error messages and `minillm info` print).
std::string format_bytes(double bytes);

}  // namespace minillm
