// minillm::MoELayer (include/minillm/moe.h): validation, workspace plan, and the sequence of kernels.
//
//   x [T, H] --router_logits--> logits [T, E] fp32 --router_topk--> ids, weights [T, k]
//     (router_fused: both in one kernel when E <= 32 and T >= 1024)
//     [--shared_slots--> slots k .. k+S-1 of ids, weights: the shared expert's S chunks; from here on
//      "k" is k + S slots and "E" the E + S stored experts]
//     --permute--> dest [T*k], counts/row_offset [E], mblock_expert --gather_rows--> x_perm [rows, H]
//     --grouped_gemm swiglu|gelu--> h [rows, F]
// The expert weights may have padded rows (MoELayer::weight_row_stride); x_perm and h are dense.
//     --grouped_gemm none--> y_perm [rows, H] (reuses x_perm's memory) --combine--> y [T, H]
//   forward_pairs (and top-1): --grouped_gemm combine--> the weighted rows in token-pair order
//     [T, k, H], whose sum over k the caller fuses into its next pass.
//   Decode (T <= 64): router_logits --decode_route (top-k, the sort and the list of active experts in one
//     launch; up to 8 tokens, decode_router does the router GEMM in that launch too)--> no gather: the
//     first decode_gemm reads x's rows through src_pair; the second stores the weighted rows in pair
//     order (forward_pairs, top-1), or y_perm [rows, H] --combine--> y. Both have blocks only for the
//     active experts (at most T * k of the E); with a ResidualNorm the second also runs the caller's
//     residual add and next norm in its last block.
//
// Nothing here waits for the GPU: every routing-dependent size stays on the device and the TMA
// descriptors are encoded on the host from pointers and bounds, so forward can be captured in a CUDA
// graph. Every kernel is ours (no cuBLAS): the result is bitwise reproducible.
#include <algorithm>

#include "cuda/moe/moe_ops.h"
#include "minillm/core/cuda_check.h"
#include "minillm/moe.h"

namespace minillm {
namespace {

namespace km = cuda::moe;

constexpr size_t kAlign = 256;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Byte offsets of every scratch array for T tokens (one function for sizing and for carving).
struct Plan {
  bool decode = false;
  int row_align = 1;
  int64_t pairs = 0, rows = 0, mblocks = 0, nchunks = 0;
  int splits = 1;  // of the router GEMM
  size_t logits = 0, ids = 0, weights = 0, chunk_counts = 0, counts = 0, row_offset = 0, num_mblocks = 0,
         mblock_expert = 0, tile_counter = 0, active = 0, num_active = 0, dest = 0, src_pair = 0, x_perm = 0, h = 0,
         total = 0;
};

Plan make_plan(const MoEConfig& c, int64_t T) {
  Plan p;
  if (T == 0) return p;
  p.decode = T <= MoELayer::kDecodeMaxTokens;
  p.row_align = p.decode ? 1 : km::kGemmBlockM;
  p.pairs = T * c.slots();
  p.rows = km::permuted_rows(p.pairs, c.stored_experts(), p.row_align);
  p.mblocks = (p.rows + km::kGemmBlockM - 1) / km::kGemmBlockM;
  p.nchunks = km::permute_num_chunks(p.pairs);
  const size_t es = dtype_size(c.dtype);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  p.splits = km::router_splits(T, c.num_experts, c.hidden);
  p.logits = take(sizeof(float) * p.splits * T * c.num_experts);
  p.ids = take(sizeof(int32_t) * p.pairs);
  p.weights = take(sizeof(float) * p.pairs);
  p.chunk_counts = take(sizeof(int32_t) * c.stored_experts() * p.nchunks);
  p.counts = take(sizeof(int32_t) * c.stored_experts());
  p.row_offset = take(sizeof(int32_t) * c.stored_experts());
  p.num_mblocks = take(sizeof(int32_t));
  p.mblock_expert = take(sizeof(int32_t) * p.mblocks);
  p.tile_counter = take(sizeof(int32_t));
  p.active = take(sizeof(int32_t) * c.stored_experts());
  p.num_active = take(sizeof(int32_t));
  p.dest = take(sizeof(int32_t) * p.pairs);
  p.src_pair = take(sizeof(int32_t) * p.rows);
  p.x_perm = take(es * p.rows * c.hidden);  // also y_perm
  p.h = take(es * p.rows * c.ffn);
  p.total = off;
  return p;
}

void check_device_tensor(const Tensor& t, const char* what, DType dtype, std::initializer_list<int64_t> shape,
                         bool row_strided = false) {
  MINILLM_CHECK(t.device == Device::cuda, what << ": expected a cuda tensor, got a " << device_name(t.device)
                                               << " tensor");
  check_tensor(t, what, dtype, shape);
  MINILLM_CHECK(t.data != nullptr || t.numel() == 0, what << ": null data pointer");
  if (!row_strided) {
    MINILLM_CHECK(t.is_contiguous(), what << ": expected a contiguous tensor");
    return;
  }
  // [E, rows, cols]: contiguous rows, a row stride >= cols (multiple of 8), experts rows * stride apart.
  const int64_t ld = t.stride[1];
  MINILLM_CHECK(t.stride[2] == 1 && ld >= t.shape[2] && ld % 8 == 0 && t.stride[0] == t.shape[1] * ld,
                what << ": strides (" << t.stride[0] << ", " << ld << ", " << t.stride[2]
                     << ") must be (rows * ld, ld, 1) with ld >= " << t.shape[2] << " a multiple of 8");
}

// The routing arrays of plan p inside the scratch at `base`.
km::Routing routing_in(const Plan& p, char* base) {
  auto at = [&](size_t off) { return reinterpret_cast<int32_t*>(base + off); };
  km::Routing r;
  r.chunk_counts = at(p.chunk_counts);
  r.counts = at(p.counts);
  r.row_offset = at(p.row_offset);
  r.num_mblocks = at(p.num_mblocks);
  r.mblock_expert = at(p.mblock_expert);
  r.dest = at(p.dest);
  r.src_pair = at(p.src_pair);
  r.tile_counter = at(p.tile_counter);
  r.active = at(p.active);
  r.num_active = at(p.num_active);
  return r;
}

// The decode GEMM's first operand may be read through a row map; the second (h) never is.
void reset_row_map(km::DecodeGemmArgs& g) { g.a_pair = nullptr; }
void reset_row_map(cuda::gemm::GroupedGemmArgs&) {}

}  // namespace

void MoEConfig::validate() const {
  if (hidden <= 0 || hidden % 64 != 0)
    MINILLM_FAIL("MoEConfig.hidden = " << hidden << " must be a positive multiple of 64");
  if (num_experts < 1 || num_experts > 256)
    MINILLM_FAIL("MoEConfig.num_experts = " << num_experts << " must be in [1, 256]");
  if (top_k < 1 || top_k > 8 || top_k > num_experts)
    MINILLM_FAIL("MoEConfig.top_k = " << top_k << " must be in [1, min(8, num_experts = " << num_experts << ")]");
  if (ffn <= 0 || ffn % 64 != 0) MINILLM_FAIL("MoEConfig.ffn = " << ffn << " must be a positive multiple of 64");
  if (activation != ExpertActivation::swiglu && activation != ExpertActivation::gelu)
    MINILLM_FAIL("MoEConfig.activation = " << static_cast<int>(activation) << " is not swiglu or gelu");
  if (dtype != DType::bf16 && dtype != DType::f16)
    MINILLM_FAIL("MoEConfig.dtype = " << dtype_name(dtype) << " must be bf16 or f16");
  if (shared_experts < 0 || num_experts + shared_experts > 256 || top_k + shared_experts > 8)
    MINILLM_FAIL("MoEConfig.shared_experts = " << shared_experts << " must be >= 0 with num_experts + shared_experts"
                 << " <= 256 and top_k + shared_experts <= 8 (num_experts = " << num_experts << ", top_k = " << top_k << ")");
}

struct MoELayer::Impl {
  MoEConfig cfg;
  const void* router = nullptr;
  const void* w_gate = nullptr;
  const void* w_up = nullptr;
  const void* w_down = nullptr;
  const void* shared_gate = nullptr;  // [H], when cfg.shared_experts > 0
  int64_t ld_in = 0;   // row stride of w_gate / w_up (>= hidden)
  int64_t ld_ffn = 0;  // row stride of w_down (>= ffn)
  Buffer workspace;
  int64_t reserved = 0;
  Buffer route_counter;  // [1] int32: decode_router's, zero between its launches

  void check_ready() const {
    MINILLM_CHECK(router && w_gate && w_down && (w_up || cfg.activation == ExpertActivation::gelu) &&
                      (shared_gate || cfg.shared_experts == 0),
                  "MoELayer: set_weights() must be called before forward()");
  }

  // The decode path's routing (shared slots, router GEMM, top-k, the sort and the active experts): the
  // router GEMM and the rest in one launch for a few tokens, else in two.
  void decode_routing(const void* x, int64_t T, int splits, float* logits, int32_t* ids, float* weights,
                      const km::Routing& r, cudaStream_t stream) const {
    const int Er = static_cast<int>(cfg.num_experts), top_k = static_cast<int>(cfg.top_k);
    const int E = static_cast<int>(cfg.stored_experts()), k = static_cast<int>(cfg.slots());
    shared_slots(x, T, ids, weights, stream);
    if (km::decode_router_supported(T, Er, cfg.hidden)) {
      km::decode_router(cfg.dtype, x, router, T, Er, cfg.hidden, logits, top_k, k, E, cfg.normalize_topk, ids, weights,
                        r, static_cast<int32_t*>(route_counter.data()), stream);
    } else {
      km::router_logits(cfg.dtype, x, router, T, Er, cfg.hidden, splits, logits, stream);
      km::decode_route(logits, splits, T, Er, top_k, k, E, cfg.normalize_topk, ids, weights, r, stream);
    }
  }

  // The shared experts' slots k .. k+S-1 of every token's ids and weights rows (none without them).
  void shared_slots(const void* x, int64_t T, int32_t* ids, float* weights, cudaStream_t stream) const {
    if (cfg.shared_experts == 0) return;
    km::shared_slots(cfg.dtype, x, shared_gate, T, cfg.hidden, static_cast<int>(cfg.num_experts),
                     static_cast<int>(cfg.top_k), static_cast<int>(cfg.shared_experts), static_cast<int>(cfg.slots()),
                     ids, weights, stream);
  }

};

MoELayer::MoELayer(const MoEConfig& cfg, int64_t max_tokens) : impl_(std::make_unique<Impl>()) {
  cfg.validate();
  impl_->cfg = cfg;
  impl_->route_counter = Buffer(sizeof(int32_t), Device::cuda);
  MINILLM_CUDA_CHECK(cudaMemset(impl_->route_counter.data(), 0, sizeof(int32_t)));
  if (max_tokens > 0) reserve(max_tokens);
}

MoELayer::~MoELayer() = default;
MoELayer::MoELayer(MoELayer&&) noexcept = default;
MoELayer& MoELayer::operator=(MoELayer&&) noexcept = default;

const MoEConfig& MoELayer::config() const { return impl_->cfg; }

void MoELayer::set_weights(const Tensor& router, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down,
                           const Tensor& shared_gate) {
  const MoEConfig& c = impl_->cfg;
  const int64_t Es = c.stored_experts();
  check_device_tensor(router, "MoELayer.set_weights: router", c.dtype, {c.num_experts, c.hidden});
  check_device_tensor(w_gate, "MoELayer.set_weights: w_gate", c.dtype, {Es, c.ffn, c.hidden}, true);
  if (c.shared_experts > 0) {
    check_device_tensor(shared_gate, "MoELayer.set_weights: shared_gate", c.dtype, {1, c.hidden});
  } else if (shared_gate.data != nullptr || shared_gate.ndim != 0) {
    MINILLM_FAIL("MoELayer.set_weights: shared_gate must be empty without shared experts, got "
                 << shared_gate.shape_str());
  }
  if (c.activation == ExpertActivation::swiglu) {
    check_device_tensor(w_up, "MoELayer.set_weights: w_up", c.dtype, {Es, c.ffn, c.hidden}, true);
    MINILLM_CHECK(w_up.stride[1] == w_gate.stride[1], "MoELayer.set_weights: w_up's row stride "
                                                          << w_up.stride[1] << " differs from w_gate's "
                                                          << w_gate.stride[1]);
  } else if (w_up.data != nullptr || w_up.ndim != 0) {
    MINILLM_FAIL("MoELayer.set_weights: w_up must be empty for activation gelu, got " << w_up.shape_str());
  }
  check_device_tensor(w_down, "MoELayer.set_weights: w_down", c.dtype, {Es, c.hidden, c.ffn}, true);
  set_weights(router.data, w_gate.data, w_up.data, w_down.data, w_gate.stride[1], w_down.stride[1], shared_gate.data);
}

int64_t MoELayer::weight_row_stride(int64_t cols) {
  MINILLM_CHECK(cols > 0 && cols % 64 == 0, "MoELayer.weight_row_stride: cols = " << cols
                                                                                  << " must be a positive multiple of 64");
  return km::fast_row_stride(cols);
}

void MoELayer::set_weights(const void* router, const void* w_gate, const void* w_up, const void* w_down,
                           int64_t ld_in, int64_t ld_ffn, const void* shared_gate) {
  const MoEConfig& c = impl_->cfg;
  const bool swiglu = c.activation == ExpertActivation::swiglu;
  if (ld_in == 0) ld_in = c.hidden;
  if (ld_ffn == 0) ld_ffn = c.ffn;
  MINILLM_CHECK(ld_in >= c.hidden && ld_in % 8 == 0, "MoELayer.set_weights: ld_in = "
                                                         << ld_in << " must be a multiple of 8 >= hidden = " << c.hidden);
  MINILLM_CHECK(ld_ffn >= c.ffn && ld_ffn % 8 == 0, "MoELayer.set_weights: ld_ffn = "
                                                        << ld_ffn << " must be a multiple of 8 >= ffn = " << c.ffn);
  MINILLM_CHECK(router && w_gate && w_down, "MoELayer.set_weights: null weight pointer");
  MINILLM_CHECK(!swiglu || w_up, "MoELayer.set_weights: w_up is required for activation swiglu");
  MINILLM_CHECK((shared_gate != nullptr) == (c.shared_experts > 0),
                "MoELayer.set_weights: shared_gate is required exactly when shared_experts = " << c.shared_experts << " > 0");
  for (const void* p : {router, w_gate, w_up, w_down, shared_gate}) {
    MINILLM_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "MoELayer.set_weights: pointer " << p
                                                                << " is not 16-byte aligned");
  }
  impl_->router = router;
  impl_->w_gate = w_gate;
  impl_->w_up = swiglu ? w_up : nullptr;
  impl_->w_down = w_down;
  impl_->shared_gate = shared_gate;
  impl_->ld_in = ld_in;
  impl_->ld_ffn = ld_ffn;
}

size_t MoELayer::workspace_bytes(const MoEConfig& cfg, int64_t max_tokens) {
  cfg.validate();
  MINILLM_CHECK(max_tokens >= 0, "MoELayer: max_tokens = " << max_tokens << " must be >= 0");
  // Monotone in T (decode rows T*k < prefill rows), so any T <= max_tokens fits.
  return make_plan(cfg, max_tokens).total;
}

void MoELayer::reserve(int64_t max_tokens) {
  MINILLM_CHECK(max_tokens >= 0, "MoELayer.reserve: max_tokens = " << max_tokens << " must be >= 0");
  MINILLM_CHECK(max_tokens * impl_->cfg.slots() < (int64_t{1} << 30),
                "MoELayer.reserve: max_tokens = " << max_tokens << " is too large (tokens * slots must be < 2^30)");
  impl_->workspace = Buffer();  // free first: the two need not fit together
  impl_->workspace = Buffer(workspace_bytes(max_tokens), Device::cuda);
  impl_->reserved = max_tokens;
}

int64_t MoELayer::reserved_tokens() const { return impl_->reserved; }

void MoELayer::forward(const Tensor& x, const Tensor& y, cudaStream_t stream) {
  const int64_t T = x.ndim == 2 ? x.shape[0] : -1;
  MINILLM_CHECK(T <= impl_->reserved, "MoELayer.forward: T = " << T << " exceeds the reserved workspace ("
                                                               << impl_->reserved << " tokens); call reserve()");
  const MoEConfig& c = impl_->cfg;
  check_device_tensor(x, "MoELayer.forward: x", c.dtype, {T, c.hidden});
  check_device_tensor(y, "MoELayer.forward: y", c.dtype, {T, c.hidden});
  forward(x.data, y.data, T, impl_->workspace.data(), impl_->workspace.bytes(), stream);
}

void MoELayer::forward(const Tensor& x, const Tensor& y, Workspace& ws, cudaStream_t stream) {
  const MoEConfig& c = impl_->cfg;
  const int64_t T = x.ndim == 2 ? x.shape[0] : -1;
  check_device_tensor(x, "MoELayer.forward: x", c.dtype, {T, c.hidden});
  check_device_tensor(y, "MoELayer.forward: y", c.dtype, {T, c.hidden});
  MINILLM_CHECK(ws.device() == Device::cuda, "MoELayer.forward: the workspace must be on the cuda device");
  const size_t bytes = workspace_bytes(T);
  void* scratch = bytes ? ws.alloc_bytes(bytes) : nullptr;
  forward(x.data, y.data, T, scratch, bytes, stream);
}

void MoELayer::forward(const void* x, void* y, int64_t T, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  run(x, y, T, scratch, scratch_bytes, stream, /*pairs=*/false, nullptr);
}

void MoELayer::forward_pairs(const void* x, void* y_pairs, int64_t T, void* scratch, size_t scratch_bytes,
                             cudaStream_t stream, const ResidualNorm* then) {
  run(x, y_pairs, T, scratch, scratch_bytes, stream, /*pairs=*/true, then);
}

bool MoELayer::fuses_residual_norm(int64_t T) const {
  return T <= kDecodeMaxTokens && km::add_norm_tail_supported(T, impl_->cfg.hidden);
}

void MoELayer::run(const void* x, void* y, int64_t T, void* scratch, size_t scratch_bytes, cudaStream_t stream,
                   bool pairs, const ResidualNorm* then) {
  Impl& m = *impl_;
  const MoEConfig& c = m.cfg;
  MINILLM_CHECK(T >= 0, "MoELayer.forward: T = " << T << " must be >= 0");
  if (T == 0) return;
  m.check_ready();
  MINILLM_CHECK(!then || (fuses_residual_norm(T) && then->x && then->out && then->w && then->counter),
                "MoELayer.forward_pairs: a residual norm for T = " << T << " tokens (at most "
                                                               << km::kTailMaxRows << ", H = " << c.hidden
                                                               << " at most " << km::kAddNormTailMaxH
                                                               << ") with x, out, w and counter set");
  MINILLM_CHECK(T * c.slots() < (int64_t{1} << 30), "MoELayer.forward: T = " << T << " is too large");
  const Plan p = make_plan(c, T);
  MINILLM_CHECK(scratch_bytes >= p.total, "MoELayer.forward: scratch of " << scratch_bytes << " bytes is smaller than "
                                                                          << p.total << " bytes needed for T = " << T);
  MINILLM_CHECK(reinterpret_cast<uintptr_t>(scratch) % kAlign == 0, "MoELayer.forward: scratch must be 256-byte aligned");
  MINILLM_CHECK(x && y && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0,
                "MoELayer.forward: x and y must be non-null and 16-byte aligned");
  char* base = static_cast<char*>(scratch);
  auto at = [&](size_t off) { return static_cast<void*>(base + off); };
  // Routed and shared experts alike from here on: E stored experts, k slots per token.
  const int E = static_cast<int>(c.stored_experts()), k = static_cast<int>(c.slots());
  const bool swiglu = c.activation == ExpertActivation::swiglu;

  int32_t* ids = static_cast<int32_t*>(at(p.ids));
  float* weights = static_cast<float*>(at(p.weights));
  const km::Routing r = routing_in(p, base);
  void* x_perm = at(p.x_perm);
  void* h = at(p.h);
  if (p.decode) {  // the first expert GEMM reads x's rows through src_pair
    m.decode_routing(x, T, p.splits, static_cast<float*>(at(p.logits)), ids, weights, r, stream);
  } else {
    route(x, T, ids, weights, at(p.logits), sizeof(float) * p.splits * T * c.num_experts, stream);
    km::permute(ids, T, k, E, p.row_align, r, stream);
    km::gather_rows(x, T, k, c.hidden, r.dest, x_perm, stream);
  }

  // The two expert projections, h = act(a W_gate^T [, W_up]) and h W_down^T (to `down_d` with
  // `down_epilogue`), through `run_gemm` (the decode or the grouped kernel) with `g` holding that path's
  // routing fields; `a` is x_perm, or x itself where g reads it through a_pair.
  auto projections = [&](auto& g, auto run_gemm, const void* a, km::Epilogue down_epilogue, void* down_d) {
    g.dtype = c.dtype;
    g.E = E;
    g.counts = r.counts;
    g.row_offset = r.row_offset;
    g.src_pair = r.src_pair;
    g.pair_weight = weights;
    g.epilogue = swiglu ? km::Epilogue::swiglu : km::Epilogue::gelu;
    g.a = a;
    g.lda = c.hidden;
    g.K = c.hidden;
    g.w0 = m.w_gate;
    g.w1 = m.w_up;
    g.ldw = m.ld_in;
    g.N = c.ffn;
    g.d = h;
    g.ldd = c.ffn;
    run_gemm(g, stream);
    reset_row_map(g);
    g.epilogue = down_epilogue;
    g.a = h;
    g.lda = c.ffn;
    g.K = c.ffn;
    g.w0 = m.w_down;
    g.w1 = nullptr;
    g.ldw = m.ld_ffn;
    g.N = c.hidden;
    g.d = down_d;
    g.ldd = c.hidden;
    run_gemm(g, stream);
  };
  // pairs (or top-1): the down GEMM scales its rows by their weights and stores them in token-pair
  // order, straight to the output: no combine pass.
  const bool direct = pairs || k == 1;
  if (p.decode) {
    km::DecodeGemmArgs g;
    g.a_pair = r.src_pair;
    g.a_slots = k;
    g.active = r.active;
    g.num_active = r.num_active;
    g.max_active = static_cast<int>(std::min<int64_t>(E, p.pairs));
    if (direct) {
      // The down GEMM (the combine epilogue) also runs `then`'s residual add and norm in its last block.
      auto run_gemm = [&](km::DecodeGemmArgs& a, cudaStream_t s) {
        if (then && a.epilogue == km::Epilogue::combine)
          a.norm_tail = then, a.tail_rows = static_cast<int>(T), a.tail_parts = k, a.tail_counter = then->counter;
        km::decode_gemm(a, s);
      };
      projections(g, run_gemm, x, km::Epilogue::combine, y);
    } else {
      projections(g, km::decode_gemm, x, km::Epilogue::none, x_perm);  // y_perm [rows, H], unweighted
      km::combine(c.dtype, x_perm, r.dest, weights, T, k, c.hidden, y, stream);
    }
    return;
  }
  cuda::gemm::GroupedGemmArgs g;
  g.rows = p.rows;
  g.num_mblocks = r.num_mblocks;
  g.mblock_expert = r.mblock_expert;
  g.max_mblocks = p.mblocks;
  g.tile_counter = r.tile_counter;  // each GEMM leaves it at zero for the next
  if (direct) {
    projections(g, cuda::gemm::grouped_gemm, x_perm, km::Epilogue::combine, y);
  } else {
    // A combine pass is needed anyway: TMA stores in permuted order (y_perm in x_perm's memory) and
    // the weighted combine (the scattering epilogue measured slower on the down GEMM here:
    // docs/REPORT.md).
    projections(g, cuda::gemm::grouped_gemm, x_perm, km::Epilogue::none, x_perm);
    km::combine(c.dtype, x_perm, r.dest, weights, T, k, c.hidden, y, stream);
  }
}

void MoELayer::route(const void* x, int64_t T, int32_t* ids, float* weights, void* scratch, size_t scratch_bytes,
                     cudaStream_t stream) {
  Impl& m = *impl_;
  const MoEConfig& c = m.cfg;
  MINILLM_CHECK(T >= 0, "MoELayer.route: T = " << T << " must be >= 0");
  if (T == 0) return;
  MINILLM_CHECK(m.router, "MoELayer: set_weights() must be called before route()");
  const int E = static_cast<int>(c.num_experts), k = static_cast<int>(c.top_k), ld = static_cast<int>(c.slots());
  m.shared_slots(x, T, ids, weights, stream);
  if (km::router_fused_supported(T, E)) {
    km::router_fused(c.dtype, x, m.router, T, E, c.hidden, k, ld, c.normalize_topk, ids, weights, stream);
    return;
  }
  const int splits = km::router_splits(T, c.num_experts, c.hidden);
  const size_t logits_bytes = sizeof(float) * splits * T * c.num_experts;
  MINILLM_CHECK(scratch_bytes >= logits_bytes, "MoELayer.route: scratch of " << scratch_bytes << " bytes is smaller than "
                                                                          << logits_bytes << " bytes");
  float* logits = static_cast<float*>(scratch);
  km::router_logits(c.dtype, x, m.router, T, E, c.hidden, splits, logits, stream);
  km::router_topk(logits, splits, T, E, k, ld, c.normalize_topk, ids, weights, stream);
}

}  // namespace minillm
