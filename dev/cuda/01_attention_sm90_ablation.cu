// Ablations of the Hopper FlashAttention forward kernel (src/cuda/attention/flash_fwd_sm90.cuh): the
// product kernel against variants that switch off one technique each, on the same inputs.
//
//   fa2                  the FlashAttention-2 kernel (mma.sync, no TMA / wgmma)
//   sm90                 the product's Hopper kernel, default schedule
//   m128, m192           head dim 64: 128- or 192-row tiles instead of the heuristic's choice
//   nonpersistent        one CTA per work unit instead of one per SM
//   static               static round-robin of the work units instead of the global counter
//   onegroup, group48    all (batch, head) pairs in one L2 group / groups of 48 pairs
//   serial               no intra-warpgroup overlap (S = Q K^T, softmax, O += P V strictly in turn)
//   nopingpong           no scheduling barrier between the consumer warpgroups
//   serial_nopingpong    neither
//   exp2_quarter, exp2_third, exp2_half   1/4, 1/3, 1/2 of the exponentials on the FMA pipe (exp2_poly)
// The last seven are instantiations of the kernel template with other traits (bf16 only, built here,
// never in the library); the others are options of the library's internal entry point (flash_fwd.h).
//
// Timing: CUDA events around each call after warm-up, median of 30, input sets rotated when one set
// fits in L2. Each case's output is compared with the FlashAttention-2 kernel's (max |difference|;
// fa2 itself against the sm90 kernel). Inputs: bf16, uniform in [-1.73, 1.73] (variance 1).
//
//   build:  cmake -B build -DMINILLM_DEV=ON && cmake --build build --target dev_01_attention_sm90_ablation
//   run:    build/dev/01_attention_sm90_ablation sm90 serial ...   (no name: all variants)
// Prints one line per variant: "JSON" + [{"case": [B, H, N, D, causal], "ms", "tflops", "max_abs_diff"}].
// bench/ablate_attention.py runs it and writes attention_ablation.json.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cuda/attention/flash_fwd.h"
#include "cuda/attention/flash_fwd_sm90.cuh"
#include "minillm/core/cuda_check.h"

namespace {

using minillm::FlashAttentionParams;
using namespace minillm::cuda::attn;
using T = __nv_bfloat16;

struct Case {
  int B, H, N, D;
  bool causal;
};

// Variant traits: Sm90FwdTraits<D, consumers, BN, stages, overlap, pingpong, exp2 poly>. The product's
// tiles: D64: 192 x 128 (3 consumers), 3 stages; D128: 128 x 128 (2 consumers), 2 stages.
template <int D>
constexpr int kConsumers = D == 64 ? 3 : 2;
template <int D>
constexpr int kStages = D == 64 ? 3 : 2;
template <int D, bool kOverlap, bool kPingPong, int kPoly>
using Variant = Sm90FwdTraits<D, kConsumers<D>, 128, kStages<D>, kOverlap, kPingPong, kPoly>;

template <bool kOverlap, bool kPingPong, int kPoly>
bool launch_variant(const FlashFwdArgs& args, cudaStream_t stream) {
  if (args.p.head_dim == 64) return launch_flash_fwd_sm90<Variant<64, kOverlap, kPingPong, kPoly>, T>(args, {}, stream);
  return launch_flash_fwd_sm90<Variant<128, kOverlap, kPingPong, kPoly>, T>(args, {}, stream);
}

using Runner = std::function<void(const FlashAttentionParams&, cudaStream_t)>;

Runner with_options(FlashFwdOptions opt) {
  return [opt](const FlashAttentionParams& p, cudaStream_t s) { flash_attention_forward(p, opt, s); };
}

template <bool kOverlap, bool kPingPong, int kPoly>
Runner traits_variant() {
  return [](const FlashAttentionParams& p, cudaStream_t s) {
    FlashFwdArgs args;
    if (!make_flash_fwd_args(p, args)) return;
    const bool launched = launch_variant<kOverlap, kPingPong, kPoly>(args, s);
    MINILLM_CHECK(launched, "variant: TMA descriptors rejected");
  };
}

std::vector<std::pair<std::string, Runner>> variants() {
  auto opt = [](auto set) {
    FlashFwdOptions o;
    set(o);
    return with_options(o);
  };
  return {
      {"fa2", opt([](FlashFwdOptions& o) { o.kernel = Kernel::kFa2; })},
      {"sm90", opt([](FlashFwdOptions&) {})},
      {"m128", opt([](FlashFwdOptions& o) { o.sm90.block_m = 128; })},
      {"m192", opt([](FlashFwdOptions& o) { o.sm90.block_m = 192; })},
      {"serial", traits_variant<false, true, 0>()},
      {"nopingpong", traits_variant<true, false, 0>()},
      {"serial_nopingpong", traits_variant<false, false, 0>()},
      {"nonpersistent", opt([](FlashFwdOptions& o) { o.sm90.persistent = false; })},
      {"static", opt([](FlashFwdOptions& o) { o.sm90.dynamic = false; })},
      {"onegroup", opt([](FlashFwdOptions& o) { o.sm90.head_group = 1000000; })},
      {"group48", opt([](FlashFwdOptions& o) { o.sm90.head_group = 48; })},
      {"exp2_quarter", traits_variant<true, true, 4>()},
      {"exp2_third", traits_variant<true, true, 3>()},
      {"exp2_half", traits_variant<true, true, 2>()},
  };
}

__global__ void fill_uniform(T* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
    x[i] = __float2bfloat16_rn((float(h) * (1.0f / 4294967296.0f) - 0.5f) * 3.4641f);
  }
}

struct Inputs {
  std::vector<T*> q, k, v;  // one pointer per input set
  T *o = nullptr, *ref = nullptr;
};

FlashAttentionParams params(const Case& c, const Inputs& in, int set, T* o) {
  FlashAttentionParams p;
  p.q = in.q[set], p.k = in.k[set], p.v = in.v[set], p.o = o;
  p.dtype = minillm::DType::bf16;
  p.batch = c.B, p.seqlen_q = p.seqlen_k = c.N, p.num_heads = p.num_kv_heads = c.H, p.head_dim = c.D;
  p.causal = c.causal;
  minillm::set_packed_strides(p);
  return p;
}

double max_abs_diff(const T* a, const T* b, size_t n) {
  std::vector<T> ha(n), hb(n);
  MINILLM_CUDA_CHECK(cudaMemcpy(ha.data(), a, n * sizeof(T), cudaMemcpyDeviceToHost));
  MINILLM_CUDA_CHECK(cudaMemcpy(hb.data(), b, n * sizeof(T), cudaMemcpyDeviceToHost));
  double m = 0.0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(std::abs(__bfloat162float(ha[i]) - __bfloat162float(hb[i]))));
  return m;
}

// One case under one variant: {ms, tflops, max_abs_diff}.
std::string run_case(const Case& c, const Inputs& in, const Runner& run, const Runner& ref) {
  const size_t n = size_t(c.B) * c.N * c.H * c.D;
  run(params(c, in, 0, in.o), nullptr);
  ref(params(c, in, 0, in.ref), nullptr);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  const double diff = max_abs_diff(in.o, in.ref, n);
  const int sets = static_cast<int>(in.q.size());
  for (int i = 0; i < 3; ++i) run(params(c, in, i % sets, in.o), nullptr);
  constexpr int kReps = 30;
  std::vector<cudaEvent_t> ev(2 * kReps);
  for (auto& e : ev) MINILLM_CUDA_CHECK(cudaEventCreate(&e));
  for (int r = 0; r < kReps; ++r) {
    MINILLM_CUDA_CHECK(cudaEventRecord(ev[2 * r]));
    run(params(c, in, r % sets, in.o), nullptr);
    MINILLM_CUDA_CHECK(cudaEventRecord(ev[2 * r + 1]));
  }
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms(kReps);
  for (int r = 0; r < kReps; ++r) MINILLM_CUDA_CHECK(cudaEventElapsedTime(&ms[r], ev[2 * r], ev[2 * r + 1]));
  for (auto& e : ev) MINILLM_CUDA_CHECK(cudaEventDestroy(e));
  std::nth_element(ms.begin(), ms.begin() + kReps / 2, ms.end());
  const double med = ms[kReps / 2];
  const double flops = 4.0 * c.B * c.H * double(c.N) * c.N * c.D * (c.causal ? 0.5 : 1.0);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "{\"case\": [%d, %d, %d, %d, %s], \"ms\": %.5f, \"tflops\": %.2f, \"max_abs_diff\": %.5f}", c.B, c.H,
                c.N, c.D, c.causal ? "true" : "false", med, flops / med / 1e9, diff);
  return buf;
}

Inputs make_inputs(const Case& c) {
  const size_t n = size_t(c.B) * c.N * c.H * c.D;
  const size_t set_bytes = 4 * n * sizeof(T);  // q, k, v, o
  const size_t l2 = size_t{50} << 20;
  const int sets = static_cast<int>(std::clamp<size_t>((2 * l2 + set_bytes - 1) / set_bytes, 1, 4));
  Inputs in;
  uint32_t seed = 1;
  for (int s = 0; s < sets; ++s)
    for (auto* list : {&in.q, &in.k, &in.v}) {
      T* p = nullptr;
      MINILLM_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
      fill_uniform<<<1024, 256>>>(p, n, seed++ * 0x1234567u);
      list->push_back(p);
    }
  MINILLM_CUDA_CHECK(cudaMalloc(&in.o, n * sizeof(T)));
  MINILLM_CUDA_CHECK(cudaMalloc(&in.ref, n * sizeof(T)));
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  return in;
}

void free_inputs(Inputs& in) {
  for (auto* list : {&in.q, &in.k, &in.v})
    for (T* p : *list) cudaFree(p);
  cudaFree(in.o);
  cudaFree(in.ref);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<Case> cases;
    for (auto [b, n] : {std::pair{16, 2048}, {1, 2048}, {16, 512}, {1, 8192}})
      for (int d : {64, 128})
        for (bool causal : {false, true}) cases.push_back({b, 16, n, d, causal});
    const auto all = variants();
    std::vector<std::string> names;
    for (int i = 1; i < argc; ++i) names.push_back(argv[i]);
    if (names.empty())
      for (const auto& [name, run] : all) names.push_back(name);
    const Runner fa2 = all[0].second, sm90 = all[1].second;
    std::map<std::string, std::vector<std::string>> out;
    for (const Case& c : cases) {  // inputs made once per case, shared by the variants
      Inputs in = make_inputs(c);
      for (const std::string& name : names) {
        auto it = std::find_if(all.begin(), all.end(), [&](const auto& v) { return v.first == name; });
        MINILLM_CHECK(it != all.end(), "unknown variant '" << name << "'");
        out[name].push_back(run_case(c, in, it->second, name == "fa2" ? sm90 : fa2));
      }
      free_inputs(in);
    }
    for (const std::string& name : names) {
      std::string line = "JSON " + name + " [";
      for (size_t i = 0; i < out[name].size(); ++i) line += (i ? ", " : "") + out[name][i];
      std::printf("%s]\n", line.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
