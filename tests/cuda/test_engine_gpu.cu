// GPU tests of the InferenceEngine on CUDA against the CPU engine (the fp32 reference) on the same
// weights, plus graph replay, bad input, and device memory that comes back.
//
// Tolerance, bf16 (relative L2 error of the logits, GPU bf16 vs CPU fp32, same bf16 weights):
// 2e-2. The GPU rounds each op's output to bf16 (unit roundoff u = 2^-8; a uniform relative
// rounding error has RMS u / sqrt(3) = 2.3e-3). Per layer about 6 roundings feed the residual
// stream (qkv, attention out, o_proj, x after each add, the MoE hidden and output), and the post
// LayerNorm keeps the stream at unit scale, so the errors add in quadrature: ~sqrt(6 L) * 2.3e-3 =
// 8e-3 for the 2-layer tiny, ~2e-2 for the 12-layer small (bound 3e-2 there); a flipped expert
// choice on a near-tie adds more locally. fp16 (u = 2^-11): 8x tighter, bound 5e-3.
// Top-1 agreement: >= 90% of positions (near-ties between the two best tokens may flip).
// Test names with "Small" are the ones scripts/gpu_check.sh runs under compute-sanitizer.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "minillm/core/check.h"
#include "minillm/core/cuda_check.h"
#include "minillm/engine.h"
#include "minillm/safetensors.h"

namespace {

using minillm::DType;
using minillm::EngineOptions;
using minillm::InferenceEngine;
using minillm::ModelConfig;
using minillm::Tensor;
using minillm::WeightStore;

// The source tree: $MINILLM_SOURCE_DIR when set (binaries built elsewhere), else the build's.
const std::string kGolden =
    std::string(std::getenv("MINILLM_SOURCE_DIR") ? std::getenv("MINILLM_SOURCE_DIR") : MINILLM_SOURCE_DIR) +
    "/tests/golden/";

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

double top1_agreement(const std::vector<float>& a, const std::vector<float>& ref, int64_t V) {
  const int64_t T = static_cast<int64_t>(a.size()) / V;
  int64_t same = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* x = a.data() + t * V;
    const float* y = ref.data() + t * V;
    same += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
  }
  return static_cast<double>(same) / static_cast<double>(T);
}

bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

std::vector<int32_t> make_ids(int64_t n, int vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& id : ids) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int32_t>((s >> 33) % static_cast<uint64_t>(vocab));
  }
  return ids;
}

EngineOptions opts(const char* device, int max_batch, int max_seq, bool graphs = true, DType logits = DType::f32) {
  EngineOptions o;
  o.device = device;
  o.max_batch = max_batch;
  o.max_seq = max_seq;
  o.cuda_graphs = graphs;
  o.logits_dtype = logits;
  return o;
}

void expect_error(const std::function<void()>& f, const char* fragment) {
  try {
    f();
    ADD_FAILURE() << "no error, expected " << fragment;
  } catch (const minillm::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

size_t free_bytes() {
  size_t free_b = 0, total_b = 0;
  MINILLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return free_b;
}

// GPU vs CPU engine on the same weights over several (B, N) cases.
void compare_with_cpu(const ModelConfig& cfg, const WeightStore& w, const std::vector<std::pair<int, int>>& cases,
                      double bound, const char* what) {
  int max_b = 1, max_n = 1;
  for (auto [b, n] : cases) max_b = std::max(max_b, b), max_n = std::max(max_n, n);
  InferenceEngine gpu(cfg, w, opts("cuda", max_b, max_n));
  InferenceEngine cpu(cfg, w, opts("cpu", max_b, max_n));
  ASSERT_EQ(gpu.device(), minillm::Device::cuda);
  for (auto [B, N] : cases) {
    const auto ids = make_ids(static_cast<int64_t>(B) * N, cfg.vocab_size, B * 1000 + N);
    const auto ref = cpu.forward(ids.data(), B, N);
    for (int rep = 0; rep < 2; ++rep) {  // eager + capture, then graph replay
      const auto out = gpu.forward(ids.data(), B, N);
      ASSERT_TRUE(all_finite(out)) << what << " B=" << B << " N=" << N;
      const double err = rel_l2(out, ref), top1 = top1_agreement(out, ref, cfg.vocab_size);
      if (rep == 0)
        std::printf("[engine-gpu] %s B=%d N=%d: rel L2 %.3e, top-1 agreement %.3f\n", what, B, N, err, top1);
      EXPECT_LE(err, bound) << what << " B=" << B << " N=" << N;
      EXPECT_GE(top1, 0.9) << what << " B=" << B << " N=" << N;
    }
  }
}

}  // namespace

TEST(EngineGpu, SmallTinyMatchesCpu) {
  const auto cfg = minillm::preset_config("tiny");
  compare_with_cpu(cfg, WeightStore::random(cfg, 0, cfg.dtype), {{1, 1}, {2, 16}, {3, 33}, {1, 64}}, 2e-2, "tiny bf16");
}

TEST(EngineGpu, SmallTinyFp16MatchesCpu) {
  auto cfg = minillm::preset_config("tiny");
  cfg.dtype = DType::f16;
  compare_with_cpu(cfg, WeightStore::random(cfg, 3, cfg.dtype), {{2, 16}, {3, 33}}, 5e-3, "tiny fp16");
}

TEST(EngineGpu, SmallGoldenConfigsMatchCpuAndGolden) {
  for (const char* name : {"tiny", "tiny_pre_gqa"}) {
    const auto cfg = minillm::load_config(kGolden + name + ".json");
    const auto w = WeightStore::load(kGolden + std::string(name) + ".safetensors", cfg);
    compare_with_cpu(cfg, w, {{1, 7}, {2, 16}, {3, 33}}, 2e-2, name);
    // Against the independent float64 PyTorch implementation's logits.
    InferenceEngine gpu(cfg, w, opts("cuda", 4, 64));
    minillm::SafeTensorsFile golden(kGolden + name + "_golden.safetensors");
    int cases = 0;
    for (const auto& t : golden.tensors()) {
      if (t.name.rfind("ids.", 0) != 0) continue;
      const auto* lg = golden.find("logits." + t.name.substr(4));
      ASSERT_NE(lg, nullptr);
      const int B = static_cast<int>(t.shape[0]), N = static_cast<int>(t.shape[1]);
      const auto out = gpu.forward(static_cast<const int32_t*>(golden.data(t)), B, N);
      const float* ref = static_cast<const float*>(golden.data(*lg));
      const double err = rel_l2(out, std::vector<float>(ref, ref + lg->numel()));
      std::printf("[engine-gpu] %s vs golden %s: rel L2 %.3e\n", name, t.name.c_str(), err);
      EXPECT_LE(err, 2e-2) << name << " " << t.name;
      ++cases;
    }
    EXPECT_GE(cases, 4);
  }
}

// A wide pre-norm model: hidden 2048 (the add_norm split across two warps per row), RMSNorm,
// GQA 16/4 with head_dim 128, SwiGLU experts, tied embeddings.
TEST(EngineGpu, SmallWidePreNormGqaMatchesCpu) {
  const auto cfg = minillm::parse_config_json(R"({
    "name": "wide", "vocab_size": 512, "hidden_size": 2048, "num_layers": 2, "num_heads": 16, "num_kv_heads": 4,
    "head_dim": 128, "max_seq_len": 256, "norm": {"type": "rmsnorm", "eps": 1e-6, "placement": "pre"},
    "position": {"type": "rope", "theta": 500000.0}, "causal": true,
    "moe": {"num_experts": 4, "top_k": 2, "ffn_size": 128, "activation": "swiglu", "normalize_topk": true},
    "tie_embeddings": true, "dtype": "bf16"})");
  compare_with_cpu(cfg, WeightStore::random(cfg, 5, cfg.dtype), {{2, 24}, {1, 65}}, 2e-2, "wide pre-norm");
}

// The small preset (12 layers, hidden 768, 8 experts, vocab 32000); not under the sanitizer.
TEST(EngineGpu, PresetSmallModelMatchesCpu) {
  const auto cfg = minillm::preset_config("small");
  compare_with_cpu(cfg, WeightStore::random(cfg, 0, cfg.dtype), {{2, 64}, {1, 129}}, 3e-2, "small bf16");
}

TEST(EngineGpu, SmallGraphReplayIsBitwiseEager) {
  const auto cfg = minillm::preset_config("tiny");
  const auto w = WeightStore::random(cfg, 1, cfg.dtype);
  InferenceEngine graph(cfg, w, opts("cuda", 4, 48, true));
  InferenceEngine eager(cfg, w, opts("cuda", 4, 48, false));
  for (auto [B, N] : std::vector<std::pair<int, int>>{{2, 16}, {1, 7}, {2, 16}, {4, 48}, {1, 7}, {2, 16}}) {
    const auto ids = make_ids(static_cast<int64_t>(B) * N, cfg.vocab_size, B + 7 * N);
    const auto a = graph.forward(ids.data(), B, N);
    const auto b = eager.forward(ids.data(), B, N);
    ASSERT_EQ(a, b) << "B=" << B << " N=" << N;
    // forward_device with ids on the device, on a caller stream, gives the same logits.
    int32_t* d_ids = nullptr;
    cudaStream_t s = nullptr;
    MINILLM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    MINILLM_CUDA_CHECK(cudaMalloc(&d_ids, ids.size() * 4));
    MINILLM_CUDA_CHECK(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    const Tensor t(d_ids, DType::i32, minillm::Device::cuda, {B, N});
    const Tensor logits = graph.forward_device(t, B, N, s);
    std::vector<float> c(a.size());
    MINILLM_CUDA_CHECK(cudaMemcpyAsync(c.data(), logits.data, c.size() * 4, cudaMemcpyDeviceToHost, s));
    MINILLM_CUDA_CHECK(cudaStreamSynchronize(s));
    EXPECT_EQ(a, c) << "forward_device B=" << B << " N=" << N;
    MINILLM_CUDA_CHECK(cudaFree(d_ids));
    MINILLM_CUDA_CHECK(cudaStreamDestroy(s));
  }
}

TEST(EngineGpu, SmallLogitsBf16MatchF32) {
  const auto cfg = minillm::preset_config("tiny");
  const auto w = WeightStore::random(cfg, 2, cfg.dtype);
  InferenceEngine f32(cfg, w, opts("cuda", 2, 32, true, DType::f32));
  InferenceEngine bf16(cfg, w, opts("cuda", 2, 32, true, DType::bf16));
  EXPECT_EQ(bf16.logits_dtype(), DType::bf16);
  const auto ids = make_ids(64, cfg.vocab_size, 5);
  const auto a = f32.forward(ids.data(), 2, 32);
  const auto b = bf16.forward(ids.data(), 2, 32);
  // Same computation; only the final rounding to bf16 differs: relative error <= 2^-9 per element.
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(b[i], a[i], std::fabs(a[i]) * 0x1p-8f + 1e-30f) << i;
  expect_error([&] { InferenceEngine(cfg, w, opts("cuda", 1, 8, true, DType::f16)); }, "logits_dtype = f16");
}

TEST(EngineGpu, SmallBadInputLeavesEngineUsable) {
  const auto cfg = minillm::preset_config("tiny");
  InferenceEngine eng(cfg, WeightStore::random(cfg, 0, cfg.dtype), opts("cuda", 2, 32));
  auto ids = make_ids(64, cfg.vocab_size, 9);
  const auto ref = eng.forward(ids.data(), 2, 32);
  const auto ref_again = eng.forward(ids.data(), 2, 32);  // graph replay
  ASSERT_EQ(ref, ref_again);
  const int32_t good = ids[37];
  ids[37] = 256;
  expect_error([&] { eng.forward(ids.data(), 2, 32); }, "token id 256 at position [1, 5] is out of range [0, 256)");
  ids[37] = -1;
  expect_error([&] { eng.forward(ids.data(), 2, 32); }, "token id -1 at position [1, 5]");
  // The same check on device ids, before any launch (also before a graph replay).
  int32_t* d_ids = nullptr;
  MINILLM_CUDA_CHECK(cudaMalloc(&d_ids, ids.size() * 4));
  MINILLM_CUDA_CHECK(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  const Tensor bad(d_ids, DType::i32, minillm::Device::cuda, {2, 32});
  expect_error([&] { eng.forward_device(bad, 2, 32); }, "token id -1 at position [1, 5]");
  ids[37] = good;
  expect_error([&] { eng.forward(ids.data(), 3, 8); }, "batch = 3 is outside [1, 2]");
  expect_error([&] { eng.forward(ids.data(), 1, 33); }, "seq_len = 33 exceeds the engine's max_seq = 32");
  expect_error([&] { eng.forward(ids.data(), 1, 0); }, "seq_len = 0 must be positive");
  const Tensor wrong_dtype(d_ids, DType::f32, minillm::Device::cuda, {2, 32});
  expect_error([&] { eng.forward_device(wrong_dtype, 2, 32); }, "forward: ids: expected i32 [2, 32], got f32 [2, 32]");
  const Tensor wrong_shape(d_ids, DType::i32, minillm::Device::cuda, {2, 31});
  expect_error([&] { eng.forward_device(wrong_shape, 2, 32); }, "expected i32 [2, 32], got i32 [2, 31]");
  MINILLM_CUDA_CHECK(cudaFree(d_ids));
  // Still usable, and bitwise the same.
  EXPECT_EQ(eng.forward(ids.data(), 2, 32), ref);
}

TEST(EngineGpu, SmallCreateDestroyNoLeak) {
  const auto cfg = minillm::preset_config("tiny");
  const auto w = WeightStore::random(cfg, 0, cfg.dtype);
  const auto ids = make_ids(3 * 40, cfg.vocab_size, 4);
  auto cycle = [&](bool check_no_alloc) {
    InferenceEngine eng(cfg, w, opts("cuda", 3, 40));
    eng.forward(ids.data(), 3, 40);  // eager + graph capture
    eng.forward(ids.data(), 1, 9);
    const size_t before = free_bytes();
    for (int i = 0; i < 3; ++i) {
      eng.forward(ids.data(), 3, 40);  // replays
      eng.forward(ids.data(), 1, 9);
    }
    if (check_no_alloc) EXPECT_EQ(free_bytes(), before) << "forward allocated device memory";
  };
  cycle(false);  // loads the kernels and the libraries' lazy state once
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t baseline = free_bytes();
  for (int i = 0; i < 20; ++i) cycle(i == 0);
  MINILLM_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t after = free_bytes();
  const double lost = static_cast<double>(baseline) - static_cast<double>(after);
  std::printf("[engine-gpu] 20 engines created and destroyed: free memory %+.0f bytes vs baseline\n", -lost);
  EXPECT_LE(lost, 1024.0 * 1024.0);
}
