#include "minillm/core/tensor.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>

#ifdef MINILLM_WITH_CUDA
#include "minillm/core/cuda_check.h"
#endif

namespace minillm {

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

Tensor::Tensor(void* d, DType dt, Device dev, std::initializer_list<int64_t> shp)
    : data(d), dtype(dt), device(dev), ndim(static_cast<int>(shp.size())) {
  MINILLM_CHECK(ndim <= kMaxDims, "tensor rank " << ndim << " exceeds " << kMaxDims);
  int i = 0;
  for (int64_t s : shp) shape[i++] = s;
  int64_t st = 1;
  for (int d2 = ndim - 1; d2 >= 0; --d2) {
    stride[d2] = st;
    st *= shape[d2];
  }
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t st = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != st) return false;
    st *= shape[d];
  }
  return true;
}

std::string Tensor::shape_str() const {
  detail::Message m;  // no iostreams: see check.h
  m << "[";
  for (int i = 0; i < ndim; ++i) m << (i ? ", " : "") << shape[i];
  m << "]";
  return m.str();
}

Tensor Tensor::view(std::initializer_list<int64_t> new_shape) const {
  MINILLM_CHECK(is_contiguous(), "view of a non-contiguous tensor " << shape_str());
  Tensor v(data, dtype, device, new_shape);
  MINILLM_CHECK(v.numel() == numel(), "view " << v.shape_str() << " does not match " << shape_str());
  return v;
}

void check_tensor(const Tensor& t, const char* what, DType dtype, std::initializer_list<int64_t> shape) {
  Tensor want(nullptr, dtype, t.device, shape);
  bool ok = t.dtype == dtype && t.ndim == want.ndim;
  for (int i = 0; ok && i < t.ndim; ++i) ok = t.shape[i] == want.shape[i];
  if (!ok) {
    MINILLM_FAIL(what << ": expected " << dtype_name(dtype) << " " << want.shape_str() << ", got "
                      << dtype_name(t.dtype) << " " << t.shape_str());
  }
}

Buffer::Buffer(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::cpu) {
    // Large buffers: 2 MiB aligned and backed by transparent huge pages (far fewer page faults
    // when multi-GB weights are first written).
    const size_t align = bytes >= (8u << 20) ? (2u << 20) : 256;  // 256: as cudaMalloc, and as Workspace aligns
    data_ = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (!data_) MINILLM_FAIL("out of host memory allocating " << bytes << " bytes");
    if (align > 256) ::madvise(data_, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
  } else {
#ifdef MINILLM_WITH_CUDA
    cudaError_t err = cudaMalloc(&data_, bytes);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      data_ = nullptr;
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      MINILLM_FAIL("out of GPU memory allocating " << bytes << " bytes (" << free_b << " of " << total_b
                                                 << " bytes free): " << cudaGetErrorString(err));
    }
#else
    MINILLM_FAIL("device 'cuda' requested but minillm was built without CUDA");
#endif
  }
}

void Buffer::release() noexcept {
  if (!data_) return;
  if (device_ == Device::cpu) {
    std::free(data_);
  } else {
#ifdef MINILLM_WITH_CUDA
    cudaFree(data_);
#endif
  }
  data_ = nullptr;
  bytes_ = 0;
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_), device_(o.device_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = o.data_;
    bytes_ = o.bytes_;
    device_ = o.device_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

OwnedTensor::OwnedTensor(DType dtype, Device device, std::initializer_list<int64_t> shape) {
  t = Tensor(nullptr, dtype, device, shape);
  buf = Buffer(t.nbytes(), device);
  t.data = buf.data();
}

void* Workspace::alloc_bytes(size_t bytes) {
  const size_t aligned = (offset_ + 255) / 256 * 256;
  if (aligned + bytes > buf_.bytes()) {
    MINILLM_FAIL("workspace exhausted: request of " << bytes << " bytes at offset " << aligned
                                                  << " exceeds the planned capacity of " << buf_.bytes()
                                                  << " bytes");
  }
  offset_ = aligned + bytes;
  if (offset_ > peak_) peak_ = offset_;
  return static_cast<char*>(buf_.data()) + aligned;
}

Tensor Workspace::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, buf_.device(), shape);
  t.data = alloc_bytes(t.nbytes());
  return t;
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev == Device::cpu && src_dev == Device::cpu) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef MINILLM_WITH_CUDA
  MINILLM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
#else
  MINILLM_FAIL("device copy requested but minillm was built without CUDA");
#endif
}

bool cuda_available() {
#ifdef MINILLM_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
#else
  return false;
#endif
}

size_t available_memory(Device device) {
  if (device == Device::cuda) {
#ifdef MINILLM_WITH_CUDA
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return free_b;
#else
    return 0;
#endif
  }
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, f)) found = std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
    std::fclose(f);
    if (found) return static_cast<size_t>(kb) * 1024;
  }
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"bytes", "kB", "MB", "GB", "TB", "PB", "EB"};
  int u = 0;
  while (bytes >= 1000 && u < 6) bytes /= 1000, ++u;
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

}  // namespace minillm
