// Host-side CUDA helpers (device.h): cached device queries and TMA descriptor encoding.
#include "cuda/device.h"

#include <cudaTypedefs.h>

#include "minillm/core/check.h"

namespace minillm::cuda {
namespace {

constexpr int kMaxDevices = 64;

// Caches one int per device; 0 means not yet queried (every cached value is > 0).
template <typename Query>
int cached_per_device(std::atomic<int> (&cache)[kMaxDevices], Query query) {
  const int dev = current_device();
  if (dev < kMaxDevices) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  const int v = query(dev);
  if (dev < kMaxDevices) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    MINILLM_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
    MINILLM_CHECK(q == cudaDriverEntryPointSuccess && f != nullptr, "cuTensorMapEncodeTiled is not available");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

int current_device() {
  int dev = 0;
  MINILLM_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

int device_sm_count() {
  static std::atomic<int> cache[kMaxDevices] = {};
  return cached_per_device(cache, [](int dev) {
    int sms = 0;
    MINILLM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
  });
}

bool device_is_sm90() {
  static std::atomic<int> cache[kMaxDevices] = {};  // 1: sm90, 2: other
  return cached_per_device(cache, [](int dev) {
           int major = 0, minor = 0;
           MINILLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
           MINILLM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
           return major == 9 && minor == 0 ? 1 : 2;
         }) == 1;
}

CUresult encode_tensor_map(CUtensorMap* map, DType dtype, const void* ptr, int rank, const uint64_t* dims,
                           const uint64_t* strides_bytes, const uint32_t* box) {
  MINILLM_CHECK(rank >= 1 && rank <= 5, "encode_tensor_map: rank = " << rank << " must be in [1, 5]");
  MINILLM_CHECK(dtype == DType::bf16 || dtype == DType::f16,
                "encode_tensor_map: dtype = " << dtype_name(dtype) << " must be bf16 or f16");
  cuuint64_t d[5], s[4];
  cuuint32_t b[5], elem_strides[5];
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    b[i] = box[i];
    elem_strides[i] = 1;
    if (i + 1 < rank) s[i] = strides_bytes[i];
  }
  return tensor_map_encoder()(map,
                              dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                              static_cast<cuuint32_t>(rank), const_cast<void*>(ptr), d, s, b, elem_strides,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

}  // namespace minillm::cuda
