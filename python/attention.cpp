// Python bindings of the FlashAttention forward kernel: minillm.flash_attention and
// minillm.flash_attention_varlen. Inputs: torch CUDA tensors (read through their attributes: the
// fast path) or any DLPack CUDA array (cupy, jax ...), with any strides and a contiguous last dim.
// Bad input raises ValueError naming the argument; kernel-side failures (CUDA errors) RuntimeError.
//
// Outputs: for torch inputs, torch tensors from q.new_empty() (torch's caching allocator); otherwise
// DLPack-capable arrays from minillm's stream-ordered pool (torch_interop.h). `out=` writes into an
// existing tensor instead.
//
// Stream: `stream` (an int cudaStream_t) when given; otherwise torch's current stream of q's device
// for torch inputs, else the legacy default stream 0.
#include <nanobind/stl/optional.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "bindings.h"
#include "minillm/attention.h"
#include "torch_interop.h"

namespace nb = nanobind;

namespace minillm::py {
namespace {

// One argument with its number of dims checked.
Tensor import_tensor(nb::handle obj, const char* name, int ndim, bool torch) {
  Tensor t = read_tensor(obj, name, torch);
  if (t.ndim() != ndim) MINILLM_FAIL(name << " must have " << ndim << " dims, got " << t.ndim());
  return t;
}

DType element_type(const Tensor& t) {
  if (t.elem == Elem::bf16) return DType::bf16;
  if (t.elem == Elem::f16) return DType::f16;
  MINILLM_FAIL(t.name << " must be bfloat16 or float16, got "
                      << (t.elem == Elem::i32 ? std::string("int32") : t.dtype_str()));
}

// q/k/v/out checks shared by both layouts: dtype, device, contiguous last dim, 16-byte rows.
void check_qkv(const Tensor& t, DType dtype, int device) {
  if (element_type(t) != dtype) MINILLM_FAIL(t.name << " dtype must match q (" << dtype_name(dtype) << ")");
  if (t.device != device) MINILLM_FAIL(t.name << " is on cuda:" << t.device << ", q on cuda:" << device);
  const int nd = t.ndim();
  if (t.shape[nd - 1] > 1 && t.stride[nd - 1] != 1)
    MINILLM_FAIL(t.name << " must be contiguous in the last dim (head_dim), got stride " << t.stride[nd - 1]);
}

// After the shape checks: what the 16-byte cp.async loads and stores need.
void check_alignment(const Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) MINILLM_FAIL(t.name << " data pointer must be 16-byte aligned");
  for (int i = 0; i < t.ndim() - 1; ++i)
    if (t.shape[i] > 1 && t.stride[i] % 8 != 0)
      MINILLM_FAIL(t.name << " stride of dim " << i << " = " << t.stride[i]
                          << " elements must be a multiple of 8 (16 bytes)");
}

void check_head_dim(int64_t d) {
  if (d < 8 || d > 256 || d % 8 != 0)
    MINILLM_FAIL("head_dim = " << d << " is not supported: must be a multiple of 8 in [8, 256]");
}

float check_scale(std::optional<double> softmax_scale) {
  if (!softmax_scale) return 0.f;  // the kernel's default, 1/sqrt(head_dim)
  const double s = *softmax_scale;
  if (!(s > 0.0) || !std::isfinite(static_cast<float>(s)))
    MINILLM_FAIL("softmax_scale = " << s << " must be finite and > 0");
  return static_cast<float>(s);
}

// q, k, v checks common to both layouts (dims: 4 padded, 3 varlen; heads at dim nd - 2).
struct QKV {
  Tensor q, k, v;
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
  for (const Tensor* t : {&r.q, &r.k, &r.v}) check_qkv(*t, r.dtype, r.device);
  const char* shape_name = nd == 4 ? "(B, Nk, Hkv, D)" : "(total_k, Hkv, D)";
  for (int i = 0; i < nd; ++i)
    if (r.k.dim(i) != r.v.dim(i))
      MINILLM_FAIL("k and v must have the same shape " << shape_name << ", got dim " << i << ": " << r.k.dim(i)
                                                        << " vs " << r.v.dim(i));
  const int64_t D = r.q.dim(nd - 1), H = r.q.dim(nd - 2), Hkv = r.k.dim(nd - 2);
  if (r.k.dim(nd - 1) != D) MINILLM_FAIL("k head_dim = " << r.k.dim(nd - 1) << " must equal q head_dim = " << D);
  check_head_dim(D);
  if (H < 1 || Hkv < 1 || H % Hkv != 0)
    MINILLM_FAIL("num_kv_heads = " << Hkv << " (k dim " << nd - 2 << ") must divide num_heads = " << H << " (q dim "
                                   << nd - 2 << ")");
  if (H > 65535) MINILLM_FAIL("num_heads = " << H << " must be <= 65535");
  for (const Tensor* t : {&r.q, &r.k, &r.v}) check_alignment(*t);
  return r;
}

// out=: validated against q's shape; returns the object and fills the strides.
nb::object use_out(nb::handle out_obj, const QKV& a, int nd, void** data, int64_t* stride) {
  const Tensor out = import_tensor(out_obj, "out", nd, is_torch_tensor(out_obj));
  check_qkv(out, a.dtype, a.device);
  for (int i = 0; i < nd; ++i)
    if (out.dim(i) != a.q.dim(i))
      MINILLM_FAIL("out must have the shape of q; dim " << i << " is " << out.dim(i) << " vs " << a.q.dim(i));
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
  if (a.k.dim(0) != B) MINILLM_FAIL("k batch = " << a.k.dim(0) << " must equal q batch = " << B);
  if (B > 65535 || Nq > INT32_MAX || Nk > INT32_MAX)
    MINILLM_FAIL("shape too large: batch must be <= 65535 and sequence lengths < 2^31");
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
  nb::object o = out_obj.is_none() ? new_array(q_obj, a.torch, {size_t(B), size_t(Nq), size_t(H), size_t(D)},
                                               elem_of(a.dtype), a.device, stream, &o_ptr)
                                   : use_out(out_obj, a, 4, &o_ptr, os);
  nb::object lse = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse = new_array(q_obj, a.torch, {size_t(B), size_t(H), size_t(Nq)}, Elem::f32, a.device, stream, &lse_ptr);
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
  const Tensor cu_q = import_tensor(cu_q_obj, "cu_seqlens_q", 1, is_torch_tensor(cu_q_obj));
  const Tensor cu_k = import_tensor(cu_k_obj, "cu_seqlens_k", 1, is_torch_tensor(cu_k_obj));
  for (const Tensor* c : {&cu_q, &cu_k}) {
    if (c->elem != Elem::i32) MINILLM_FAIL(c->name << " must be int32");
    if (c->device != a.device) MINILLM_FAIL(c->name << " must be on the device of q (cuda:" << a.device << ")");
    if (c->shape[0] > 1 && c->stride[0] != 1) MINILLM_FAIL(c->name << " must be contiguous");
  }
  if (cu_q.dim(0) < 1 || cu_q.dim(0) != cu_k.dim(0))
    MINILLM_FAIL("cu_seqlens_q and cu_seqlens_k must both have batch + 1 >= 1 entries, got " << cu_q.dim(0)
                 << " and " << cu_k.dim(0));
  const int64_t B = cu_q.dim(0) - 1, total_q = a.q.dim(0), H = a.q.dim(1), D = a.q.dim(2);
  if (max_seqlen_q < 0 || max_seqlen_k < 0 || max_seqlen_q > INT32_MAX || max_seqlen_k > INT32_MAX)
    MINILLM_FAIL("max_seqlen_q = " << max_seqlen_q << " and max_seqlen_k = " << max_seqlen_k
                                   << " must be in [0, 2^31)");
  if (B > 65535) MINILLM_FAIL("batch = " << B << " must be <= 65535");
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
  nb::object o = out_obj.is_none() ? new_array(q_obj, a.torch, {size_t(total_q), size_t(H), size_t(D)},
                                               elem_of(a.dtype), a.device, stream, &o_ptr)
                                   : use_out(out_obj, a, 3, &o_ptr, os);
  nb::object lse = nb::none();
  if (return_lse) {
    void* lse_ptr = nullptr;
    lse = new_array(q_obj, a.torch, {size_t(H), size_t(total_q)}, Elem::f32, a.device, stream, &lse_ptr);
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
