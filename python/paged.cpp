// Python bindings of the paged KV cache ops (include/minillm/kv_cache.h): minillm.paged_attention and
// minillm.kv_cache_write, like flash_attn_with_kvcache, for tests and benchmarks.
//
// Two paths, chosen by where q (k for kv_cache_write) lives:
//  - CUDA (with a CUDA build): torch CUDA tensors or DLPack CUDA arrays (torch_interop.h), bf16/fp16,
//    the CUDA kernels; outputs from torch's allocator (torch) or minillm's pool (other DLPack).
//  - CPU: float32 arrays (numpy, or anything DLPack on the CPU), the fp32 reference ops; outputs are
//    numpy arrays.
// Bad input raises ValueError naming the argument. With check=True (the default) the CUDA path copies
// block_table, context_lens and cu_seqlens_q to the host (one synchronisation) and validates every
// page index and length as the CPU path does; check=False skips that (for benchmarks and CUDA graphs):
// then max_query_len and max_context_len bound the launch (defaults: the number of query tokens and
// max_pages * page_size) and out-of-range pages are the caller's responsibility.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "minillm/core/check.h"
#include "minillm/kv_cache.h"
#ifdef MINILLM_WITH_CUDA
#include "torch_interop.h"
#endif

namespace nb = nanobind;

namespace minillm::py {
namespace {

// ---- CPU path ----
using CpuF32 = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
using CpuI32 = nb::ndarray<const int32_t, nb::c_contig, nb::device::cpu>;

bool on_cpu(nb::handle obj) {
#ifdef MINILLM_WITH_CUDA
  if (is_torch_tensor(obj)) return !nb::cast<bool>(obj.attr("is_cuda"));  // fast path, no DLPack export
#endif
  nb::ndarray<nb::ro> a;
  if (!nb::try_cast(obj, a, false)) {
    return false;
  }
  return a.device_type() == nb::device::cpu::value;
}

template <typename A>
A cpu_array(nb::handle obj, const char* name, size_t ndim, const char* what) {
  A a;
  if (obj.is_none() || !nb::try_cast(obj, a, false))
    MINILLM_FAIL(name << " must be a C-contiguous " << what << " CPU array");
  if (a.ndim() != ndim) MINILLM_FAIL(name << " must have " << ndim << " dims, got " << a.ndim());
  return a;
}

nb::object numpy_f32(std::vector<float>&& v, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<float>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return nb::ndarray<nb::numpy, float>(owned->data(), shape, owner).cast();
}

float scale_of(std::optional<double> softmax_scale) {
  if (!softmax_scale) return 0.f;
  const double s = *softmax_scale;
  if (!(s > 0.0) || !std::isfinite(static_cast<float>(s)))
    MINILLM_FAIL("softmax_scale = " << s << " must be finite and > 0");
  return static_cast<float>(s);
}

// Checks of the cache shapes shared by both paths: [P, page_size, Hkv, D], k and v equal.
void check_cache_shape(const int64_t* ks, const int64_t* vs, int kn, int vn) {
  if (kn != 4) MINILLM_FAIL("k_cache must have 4 dims (num_pages, page_size, num_kv_heads, head_dim), got " << kn);
  if (vn != 4) MINILLM_FAIL("v_cache must have 4 dims (num_pages, page_size, num_kv_heads, head_dim), got " << vn);
  for (int i = 0; i < 4; ++i)
    if (ks[i] != vs[i])
      MINILLM_FAIL("k_cache and v_cache must have the same shape; dim " << i << ": " << ks[i] << " vs " << vs[i]);
  if (ks[1] != kPageSize) MINILLM_FAIL("k_cache dim 1 (page size) = " << ks[1] << " must be " << kPageSize);
  if (ks[0] < 1) MINILLM_FAIL("k_cache must have at least one page");
}

nb::object paged_attention_cpu(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle bt_obj,
                               nb::handle ctx_obj, nb::handle cu_obj, bool causal, float scale, bool return_lse) {
  const CpuF32 q = cpu_array<CpuF32>(q_obj, "q", 3, "float32");
  const CpuF32 kc = cpu_array<CpuF32>(k_obj, "k_cache", 4, "float32");
  const CpuF32 vc = cpu_array<CpuF32>(v_obj, "v_cache", 4, "float32");
  const CpuI32 bt = cpu_array<CpuI32>(bt_obj, "block_table", 2, "int32");
  const CpuI32 ctx = cpu_array<CpuI32>(ctx_obj, "context_lens", 1, "int32");
  const int64_t ks[4] = {int64_t(kc.shape(0)), int64_t(kc.shape(1)), int64_t(kc.shape(2)), int64_t(kc.shape(3))};
  const int64_t vs[4] = {int64_t(vc.shape(0)), int64_t(vc.shape(1)), int64_t(vc.shape(2)), int64_t(vc.shape(3))};
  check_cache_shape(ks, vs, 4, 4);
  const int64_t T = q.shape(0), Hq = q.shape(1), D = q.shape(2), S = bt.shape(0), Hkv = ks[2];
  if (ks[3] != D) MINILLM_FAIL("k_cache head_dim = " << ks[3] << " must equal q head_dim = " << D);
  if (Hq % Hkv != 0) MINILLM_FAIL("num_kv_heads = " << Hkv << " (k_cache dim 2) must divide num_heads = " << Hq);
  if (int64_t(ctx.shape(0)) != S)
    MINILLM_FAIL("context_lens must have one entry per block_table row (" << S << "), got " << ctx.shape(0));
  const int32_t* cu = nullptr;
  CpuI32 cua;
  if (!cu_obj.is_none()) {
    cua = cpu_array<CpuI32>(cu_obj, "cu_seqlens_q", 1, "int32");
    if (int64_t(cua.shape(0)) != S + 1)
      MINILLM_FAIL("cu_seqlens_q must have num_seqs + 1 = " << S + 1 << " entries, got " << cua.shape(0));
    if (S > 0 && cua.data()[S] != T)
      MINILLM_FAIL("cu_seqlens_q[-1] = " << cua.data()[S] << " must equal the number of query tokens " << T);
    cu = cua.data();
  } else if (T != S) {
    MINILLM_FAIL("without cu_seqlens_q, q must have one token per sequence: " << T << " vs " << S);
  }
  std::vector<float> out(static_cast<size_t>(T * Hq * D)), lse(static_cast<size_t>(T * Hq));
  {
    nb::gil_scoped_release release;
    cpu::paged_attention(q.data(), kc.data(), vc.data(), bt.data(), bt.shape(1), ctx.data(), cu, S, ks[0], Hq, Hkv,
                         D, causal, scale, out.data(), lse.data());
  }
  nb::object o = numpy_f32(std::move(out), {size_t(T), size_t(Hq), size_t(D)});
  if (!return_lse) return o;
  return nb::make_tuple(o, numpy_f32(std::move(lse), {size_t(T), size_t(Hq)}));
}

void kv_cache_write_cpu(nb::handle k_obj, nb::handle v_obj, nb::handle kc_obj, nb::handle vc_obj, nb::handle sl_obj) {
  const CpuF32 k = cpu_array<CpuF32>(k_obj, "k", 3, "float32");
  const CpuF32 v = cpu_array<CpuF32>(v_obj, "v", 3, "float32");
  CpuF32 kc = cpu_array<CpuF32>(kc_obj, "k_cache", 4, "writable float32");
  CpuF32 vc = cpu_array<CpuF32>(vc_obj, "v_cache", 4, "writable float32");
  const CpuI32 sl = cpu_array<CpuI32>(sl_obj, "slot_mapping", 1, "int32");
  const int64_t ks[4] = {int64_t(kc.shape(0)), int64_t(kc.shape(1)), int64_t(kc.shape(2)), int64_t(kc.shape(3))};
  const int64_t vs[4] = {int64_t(vc.shape(0)), int64_t(vc.shape(1)), int64_t(vc.shape(2)), int64_t(vc.shape(3))};
  check_cache_shape(ks, vs, 4, 4);
  for (int i = 0; i < 3; ++i)
    if (k.shape(i) != v.shape(i)) MINILLM_FAIL("k and v must have the same shape; dim " << i << ": " << k.shape(i) << " vs " << v.shape(i));
  if (int64_t(k.shape(1)) != ks[2] || int64_t(k.shape(2)) != ks[3])
    MINILLM_FAIL("k rows (" << k.shape(1) << ", " << k.shape(2) << ") must match the cache's (num_kv_heads, head_dim) = ("
                            << ks[2] << ", " << ks[3] << ")");
  if (sl.shape(0) != k.shape(0))
    MINILLM_FAIL("slot_mapping must have one entry per token (" << k.shape(0) << "), got " << sl.shape(0));
  cpu::kv_cache_write(k.data(), v.data(), ks[2] * ks[3], ks[2] * ks[3], sl.data(), k.shape(0), ks[2], ks[3], kc.data(),
                      vc.data(), ks[0] * kPageSize);
}

#ifdef MINILLM_WITH_CUDA
// ---- CUDA path ----

Tensor cuda_arg(nb::handle obj, const char* name, int ndim) {
  Tensor t = read_tensor(obj, name, is_torch_tensor(obj));
  if (t.ndim() != ndim) MINILLM_FAIL(name << " must have " << ndim << " dims, got " << t.ndim());
  return t;
}

DType half_type(const Tensor& t) {
  if (t.elem == Elem::bf16) return DType::bf16;
  if (t.elem == Elem::f16) return DType::f16;
  MINILLM_FAIL(t.name << " must be bfloat16 or float16, got " << t.dtype_str());
}

bool contiguous(const Tensor& t) {
  int64_t expect = 1;
  for (int i = t.ndim() - 1; i >= 0; --i) {
    if (t.shape[i] > 1 && t.stride[i] != expect) return false;
    expect *= t.shape[i];
  }
  return true;
}

void check_16(const Tensor& t, DType dtype, int device) {
  if (half_type(t) != dtype) MINILLM_FAIL(t.name << " dtype " << t.dtype_str() << " must match q's (" << dtype_name(dtype) << ")");
  if (t.device != device) MINILLM_FAIL(t.name << " is on cuda:" << t.device << ", q on cuda:" << device);
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) MINILLM_FAIL(t.name << " data pointer must be 16-byte aligned");
}

// [T, heads, D] rows: heads and D contiguous, the token stride a multiple of 8 elements.
void check_rows(const Tensor& t) {
  const int64_t D = t.dim(2), H = t.dim(1);
  if ((D > 1 && t.stride[2] != 1) || (H > 1 && t.stride[1] != D))
    MINILLM_FAIL(t.name << " must have contiguous heads and head_dim (strides (*, " << D << ", 1)), got ("
                        << t.stride[0] << ", " << t.stride[1] << ", " << t.stride[2] << ")");
  if (t.dim(0) > 1 && (t.stride[0] % 8 != 0 || t.stride[0] < H * D))
    MINILLM_FAIL(t.name << " token stride " << t.stride[0] << " must be >= " << H * D << " and a multiple of 8");
}

Tensor i32_arg(nb::handle obj, const char* name, int ndim, int device) {
  Tensor t = cuda_arg(obj, name, ndim);
  if (t.elem != Elem::i32) MINILLM_FAIL(name << " must be int32, got " << t.dtype_str());
  if (t.device != device) MINILLM_FAIL(name << " must be on the device of q (cuda:" << device << ")");
  if (!contiguous(t)) MINILLM_FAIL(name << " must be contiguous");
  return t;
}

std::vector<int32_t> to_host(const Tensor& t, cudaStream_t stream) {
  size_t n = 1;
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  std::vector<int32_t> h(n);
  if (n > 0) {
    MINILLM_CUDA_CHECK(cudaMemcpyAsync(h.data(), t.data, n * 4, cudaMemcpyDeviceToHost, stream));
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  return h;
}

nb::object paged_attention_cuda(nb::handle q_obj, nb::handle k_obj, nb::handle v_obj, nb::handle bt_obj,
                                nb::handle ctx_obj, nb::handle cu_obj, bool causal, float scale,
                                std::optional<int64_t> max_query_len, std::optional<int64_t> max_context_len,
                                int64_t num_splits, bool check, bool return_lse, nb::handle out_obj,
                                std::optional<uintptr_t> stream_arg) {
  const bool torch = is_torch_tensor(q_obj);
  const Tensor q = cuda_arg(q_obj, "q", 3);
  const DType dtype = half_type(q);
  const int device = q.device;
  check_rows(q);
  check_16(q, dtype, device);
  const Tensor kc = cuda_arg(k_obj, "k_cache", 4), vc = cuda_arg(v_obj, "v_cache", 4);
  check_cache_shape(kc.shape.data(), vc.shape.data(), kc.ndim(), vc.ndim());
  for (const Tensor* t : {&kc, &vc}) {
    check_16(*t, dtype, device);
    if (!contiguous(*t)) MINILLM_FAIL(t->name << " must be contiguous");
  }
  const int64_t T = q.dim(0), Hq = q.dim(1), D = q.dim(2), Hkv = kc.dim(2), P = kc.dim(0);
  if (kc.dim(3) != D) MINILLM_FAIL("k_cache head_dim = " << kc.dim(3) << " must equal q head_dim = " << D);
  if (D != 64 && D != 128) MINILLM_FAIL("head_dim = " << D << " is not supported: must be 64 or 128");
  if (Hq % Hkv != 0) MINILLM_FAIL("num_kv_heads = " << Hkv << " (k_cache dim 2) must divide num_heads = " << Hq);
  const Tensor bt = i32_arg(bt_obj, "block_table", 2, device);
  const Tensor ctx = i32_arg(ctx_obj, "context_lens", 1, device);
  const int64_t S = bt.dim(0), max_pages = bt.dim(1);
  if (ctx.dim(0) != S) MINILLM_FAIL("context_lens must have one entry per block_table row (" << S << "), got " << ctx.dim(0));
  if (max_pages < 1) MINILLM_FAIL("block_table must have at least one column");
  if (S > 65535 || T > INT32_MAX || P * kPageSize > INT32_MAX || max_pages * kPageSize > INT32_MAX)
    MINILLM_FAIL("too large: num_seqs must be <= 65535 and token / slot counts < 2^31");
  std::optional<Tensor> cu;
  if (!cu_obj.is_none()) {
    cu = i32_arg(cu_obj, "cu_seqlens_q", 1, device);
    if (cu->dim(0) != S + 1) MINILLM_FAIL("cu_seqlens_q must have num_seqs + 1 = " << S + 1 << " entries, got " << cu->dim(0));
  } else if (T != S) {
    MINILLM_FAIL("without cu_seqlens_q, q must have one token per sequence: " << T << " vs " << S);
  }

  DeviceGuard guard(device);
  const cudaStream_t stream = pick_stream(stream_arg, torch, device);
  int64_t max_q = max_query_len.value_or(cu ? T : 1);
  int64_t max_ctx = max_context_len.value_or(max_pages * kPageSize);
  if (check) {  // validate on the host, and take the exact bounds
    const std::vector<int32_t> hbt = to_host(bt, stream), hctx = to_host(ctx, stream);
    const std::vector<int32_t> hcu = cu ? to_host(*cu, stream) : std::vector<int32_t>{};
    if (cu && S > 0 && hcu[0] != 0) MINILLM_FAIL("cu_seqlens_q[0] = " << hcu[0] << " must be 0");
    if (cu && hcu[S] != T) MINILLM_FAIL("cu_seqlens_q[-1] = " << hcu[S] << " must equal the number of query tokens " << T);
    int64_t mq = 0, mc = 0;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t n = cu ? int64_t{hcu[s + 1]} - hcu[s] : 1, len = hctx[s];
      if (n < 0) MINILLM_FAIL("cu_seqlens_q must be non-decreasing at entry " << s + 1);
      if (len < n || len > max_pages * kPageSize)
        MINILLM_FAIL("context_lens[" << s << "] = " << len << " must be in [" << n << " (its query tokens), "
                                     << max_pages * kPageSize << " (block_table columns * " << kPageSize << ")]");
      for (int64_t pg = 0; pg < (len + kPageSize - 1) / kPageSize; ++pg) {
        const int32_t page = hbt[s * max_pages + pg];
        if (page < 0 || page >= P)
          MINILLM_FAIL("block_table[" << s << ", " << pg << "] = " << page << " is out of range [0, " << P << ")");
      }
      mq = std::max(mq, n), mc = std::max(mc, len);
    }
    max_q = mq, max_ctx = mc;
  }
  if (max_q < 0 || max_q > T || max_ctx < 0 || max_ctx > max_pages * kPageSize)
    MINILLM_FAIL("max_query_len = " << max_q << " must be in [0, " << T << "] and max_context_len = " << max_ctx
                                    << " in [0, " << max_pages * kPageSize << "]");
  if (num_splits < 0 || num_splits > 64) MINILLM_FAIL("num_splits = " << num_splits << " must be in [0, 64]");

  cuda::PagedAttentionParams p;
  p.q = q.data, p.k_cache = kc.data, p.v_cache = vc.data;
  p.block_table = static_cast<const int32_t*>(bt.data);
  p.context_lens = static_cast<const int32_t*>(ctx.data);
  p.cu_seqlens_q = cu ? static_cast<const int32_t*>(cu->data) : nullptr;
  p.dtype = dtype;
  p.num_seqs = static_cast<int>(S), p.num_tokens = static_cast<int>(T), p.max_pages = static_cast<int>(max_pages);
  p.num_heads = static_cast<int>(Hq), p.num_kv_heads = static_cast<int>(Hkv), p.head_dim = static_cast<int>(D);
  p.q_row = T > 1 ? q.stride[0] : Hq * D;
  p.max_query_len = static_cast<int>(max_q), p.max_context_len = static_cast<int>(max_ctx);
  p.num_splits = static_cast<int>(num_splits);
  p.causal = causal, p.softmax_scale = scale;

  void* o_ptr = nullptr;
  nb::object o;
  if (out_obj.is_none()) {
    o = new_array(q_obj, torch, {size_t(T), size_t(Hq), size_t(D)}, elem_of(dtype), device, stream, &o_ptr);
    p.out_row = Hq * D;
  } else {
    const Tensor out = cuda_arg(out_obj, "out", 3);
    check_16(out, dtype, device);
    for (int i = 0; i < 3; ++i)
      if (out.dim(i) != q.dim(i)) MINILLM_FAIL("out must have the shape of q; dim " << i << " is " << out.dim(i) << " vs " << q.dim(i));
    check_rows(out);
    o = nb::borrow(out_obj), o_ptr = out.data;
    p.out_row = T > 1 ? out.stride[0] : Hq * D;
  }
  p.out = o_ptr;
  nb::object lse = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse = new_array(q_obj, torch, {size_t(T), size_t(Hq)}, Elem::f32, device, stream, &lse_ptr);
    p.lse = static_cast<float*>(lse_ptr);
  }
  const size_t ws_bytes = cuda::paged_attention_workspace_bytes(p);
  nb::object ws;  // kept alive until the kernels are enqueued (stream-ordered allocators)
  if (ws_bytes > 0) {
    void* ws_ptr = nullptr;
    ws = new_array(q_obj, torch, {ws_bytes / 4}, Elem::f32, device, stream, &ws_ptr);
    p.workspace = ws_ptr, p.workspace_bytes = ws_bytes;
  }
  cuda::paged_attention(p, stream);
  if (!return_lse) return o;
  return nb::make_tuple(o, lse);
}

void kv_cache_write_cuda(nb::handle k_obj, nb::handle v_obj, nb::handle kc_obj, nb::handle vc_obj, nb::handle sl_obj,
                         std::optional<uintptr_t> stream_arg) {
  const bool torch = is_torch_tensor(k_obj);
  const Tensor k = cuda_arg(k_obj, "k", 3), v = cuda_arg(v_obj, "v", 3);
  const DType dtype = half_type(k);
  const int device = k.device;
  for (const Tensor* t : {&k, &v}) {
    check_16(*t, dtype, device);
    check_rows(*t);
  }
  for (int i = 0; i < 3; ++i)
    if (k.dim(i) != v.dim(i)) MINILLM_FAIL("k and v must have the same shape; dim " << i << ": " << k.dim(i) << " vs " << v.dim(i));
  const Tensor kc = cuda_arg(kc_obj, "k_cache", 4), vc = cuda_arg(vc_obj, "v_cache", 4);
  check_cache_shape(kc.shape.data(), vc.shape.data(), kc.ndim(), vc.ndim());
  for (const Tensor* t : {&kc, &vc}) {
    check_16(*t, dtype, device);
    if (!contiguous(*t)) MINILLM_FAIL(t->name << " must be contiguous");
  }
  if (k.dim(1) != kc.dim(2) || k.dim(2) != kc.dim(3))
    MINILLM_FAIL("k rows (" << k.dim(1) << ", " << k.dim(2) << ") must match the cache's (num_kv_heads, head_dim) = ("
                            << kc.dim(2) << ", " << kc.dim(3) << ")");
  if (k.dim(2) % 8 != 0) MINILLM_FAIL("head_dim = " << k.dim(2) << " must be a multiple of 8");
  const Tensor sl = i32_arg(sl_obj, "slot_mapping", 1, device);
  if (sl.dim(0) != k.dim(0)) MINILLM_FAIL("slot_mapping must have one entry per token (" << k.dim(0) << "), got " << sl.dim(0));
  DeviceGuard guard(device);
  const cudaStream_t stream = pick_stream(stream_arg, torch, device);
  const int64_t num_slots = kc.dim(0) * kPageSize;
  const std::vector<int32_t> slots = to_host(sl, stream);
  for (size_t t = 0; t < slots.size(); ++t)
    if (slots[t] >= num_slots)
      MINILLM_FAIL("slot_mapping[" << t << "] = " << slots[t] << " must be < num_pages * " << kPageSize << " = " << num_slots);
  const int64_t krow = k.dim(0) > 1 ? k.stride[0] : k.dim(1) * k.dim(2), vrow = v.dim(0) > 1 ? v.stride[0] : krow;
  cuda::kv_cache_write(k.data, v.data, krow, vrow, static_cast<const int32_t*>(sl.data), k.dim(0),
                       static_cast<int>(kc.dim(2)), static_cast<int>(kc.dim(3)), kc.data, vc.data, dtype, stream);
}
#endif

nb::object paged_attention(nb::handle q, nb::handle k_cache, nb::handle v_cache, nb::handle block_table,
                           nb::handle context_lens, nb::handle cu_seqlens_q, bool causal,
                           std::optional<double> softmax_scale, std::optional<int64_t> max_query_len,
                           std::optional<int64_t> max_context_len, int64_t num_splits, bool check, bool return_lse,
                           nb::handle out, std::optional<uintptr_t> stream) {
  const float scale = scale_of(softmax_scale);
  if (on_cpu(q)) {
    if (!out.is_none()) MINILLM_FAIL("out is supported on CUDA only");
    return paged_attention_cpu(q, k_cache, v_cache, block_table, context_lens, cu_seqlens_q, causal, scale, return_lse);
  }
#ifdef MINILLM_WITH_CUDA
  return paged_attention_cuda(q, k_cache, v_cache, block_table, context_lens, cu_seqlens_q, causal, scale,
                              max_query_len, max_context_len, num_splits, check, return_lse, out, stream);
#else
  (void)max_query_len, (void)max_context_len, (void)num_splits, (void)check, (void)stream;
  MINILLM_FAIL("q must be a float32 CPU array (this build has no CUDA)");
#endif
}

void kv_cache_write(nb::handle k, nb::handle v, nb::handle k_cache, nb::handle v_cache, nb::handle slot_mapping,
                    std::optional<uintptr_t> stream) {
  if (on_cpu(k)) return kv_cache_write_cpu(k, v, k_cache, v_cache, slot_mapping);
#ifdef MINILLM_WITH_CUDA
  kv_cache_write_cuda(k, v, k_cache, v_cache, slot_mapping, stream);
#else
  (void)stream;
  MINILLM_FAIL("k must be a float32 CPU array (this build has no CUDA)");
#endif
}

}  // namespace

void bind_paged(nb::module_& m) {
  m.attr("KV_PAGE_SIZE") = kPageSize;
  m.def("paged_attention", &paged_attention, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"),
        nb::arg("block_table"), nb::arg("context_lens"), nb::arg("cu_seqlens_q") = nb::none(),
        nb::arg("causal") = true, nb::arg("softmax_scale") = nb::none(), nb::arg("max_query_len") = nb::none(),
        nb::arg("max_context_len") = nb::none(), nb::arg("num_splits") = 0, nb::arg("check") = true,
        nb::arg("return_lse") = false, nb::arg("out") = nb::none(), nb::arg("stream") = nb::none(),
        "Attention of q against a paged KV cache. q: (T, Hq, D); k_cache, v_cache: (num_pages, KV_PAGE_SIZE,\n"
        "Hkv, D); block_table: (S, max_pages) int32 page ids; context_lens: (S,) int32 tokens cached per sequence\n"
        "(including the new ones); cu_seqlens_q: (S + 1,) int32 offsets of each sequence's query tokens in q,\n"
        "which are its last positions (None: one token per sequence). causal: query i of n sees keys\n"
        "j <= context_len - n + i. CUDA: bf16/fp16 tensors, head_dim 64 or 128; CPU: float32 arrays.\n"
        "check=False skips the host-side validation (no synchronisation); max_query_len / max_context_len then\n"
        "bound the launch. num_splits: split-KV CTAs (0: automatic). Returns out (T, Hq, D), or (out, lse)\n"
        "with lse (T, Hq) float32 natural-log sum-exp when return_lse.");
  m.def("kv_cache_write", &kv_cache_write, nb::arg("k"), nb::arg("v"), nb::arg("k_cache"), nb::arg("v_cache"),
        nb::arg("slot_mapping"), nb::arg("stream") = nb::none(),
        "Writes k[t], v[t] ((T, Hkv, D)) into cache row slot_mapping[t] (= page * KV_PAGE_SIZE + row) of\n"
        "k_cache / v_cache (in place); negative slots are skipped. CUDA bf16/fp16 tensors or float32 CPU arrays.");
}

}  // namespace minillm::py
