// The CPU engine against golden logits from the independent PyTorch implementation
// (tests/golden/make_golden.py), and input validation at the engine boundary.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "minillm/core/check.h"
#include "minillm/engine.h"
#include "minillm/safetensors.h"

using minillm::Error;

namespace {

const std::string kGolden = std::string(MINILLM_SOURCE_DIR) + "/tests/golden/";

double rel_l2(const float* a, const float* ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

void check_golden(const std::string& name) {
  const auto cfg = minillm::load_config(kGolden + name + ".json");
  const auto weights = minillm::WeightStore::load(kGolden + name + ".safetensors", cfg);
  minillm::EngineOptions opts;
  opts.device = "cpu";
  opts.max_batch = 4;
  opts.max_seq = 64;
  minillm::InferenceEngine eng(cfg, weights, opts);
  minillm::SafeTensorsFile golden(kGolden + name + "_golden.safetensors");
  int cases = 0;
  for (const auto& t : golden.tensors()) {
    if (t.name.rfind("ids.", 0) != 0) continue;
    const auto* lg = golden.find("logits." + t.name.substr(4));
    ASSERT_NE(lg, nullptr) << t.name;
    const int B = static_cast<int>(t.shape[0]), N = static_cast<int>(t.shape[1]);
    const auto logits = eng.forward(static_cast<const int32_t*>(golden.data(t)), B, N);
    ASSERT_EQ(static_cast<int64_t>(logits.size()), lg->numel());
    const double err = rel_l2(logits.data(), static_cast<const float*>(golden.data(*lg)), lg->numel());
    std::printf("[golden] %s %s: relative L2 error %.3e\n", name.c_str(), t.name.c_str(), err);
    EXPECT_LE(err, 1e-4) << name << " " << t.name;
    ++cases;
  }
  EXPECT_GE(cases, 4);
}

minillm::InferenceEngine make_tiny(int max_batch = 2, int max_seq = 32) {
  const auto cfg = minillm::preset_config("tiny");
  minillm::EngineOptions opts;
  opts.device = "cpu";
  opts.max_batch = max_batch;
  opts.max_seq = max_seq;
  return minillm::InferenceEngine(cfg, minillm::WeightStore::random(cfg, 0, cfg.dtype), opts);
}

void expect_error(const std::function<void()>& f, const char* fragment) {
  try {
    f();
    ADD_FAILURE() << "no error, expected " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Engine, MatchesGoldenSeedArchitecture) { check_golden("tiny"); }
TEST(Engine, MatchesGoldenPreNormGqaGeluTied) { check_golden("tiny_pre_gqa"); }

TEST(Engine, RejectsBadIdsAndShapesAndStaysUsable) {
  auto eng = make_tiny();
  std::vector<int32_t> ids(64, 5);
  const auto ref = eng.forward(ids.data(), 2, 32);
  ids[37] = 256;  // == vocab
  expect_error([&] { eng.forward(ids.data(), 2, 32); }, "token id 256 at position [1, 5] is out of range [0, 256)");
  ids[37] = -1;
  expect_error([&] { eng.forward(ids.data(), 2, 32); }, "token id -1 at position [1, 5]");
  ids[37] = 5;
  expect_error([&] { eng.forward(ids.data(), 3, 8); }, "batch = 3 is outside [1, 2]");
  expect_error([&] { eng.forward(ids.data(), 1, 33); }, "seq_len = 33 exceeds the engine's max_seq = 32");
  expect_error([&] { eng.forward(ids.data(), 1, 0); }, "seq_len = 0 must be positive");
  // Still usable, and deterministic.
  const auto again = eng.forward(ids.data(), 2, 32);
  EXPECT_EQ(ref, again);
}

TEST(Engine, RejectsSequencesLongerThanTheModel) {
  const auto cfg = minillm::preset_config("tiny");
  minillm::EngineOptions opts;
  opts.device = "cpu";
  opts.max_seq = cfg.max_seq_len + 1;
  expect_error([&] { minillm::InferenceEngine(cfg, minillm::WeightStore::random(cfg, 0, cfg.dtype), opts); },
               "max_seq = 513 exceeds the config's max_seq_len = 512");
  opts.max_seq = 0;
  opts.device = "tpu";
  expect_error([&] { minillm::InferenceEngine(cfg, minillm::WeightStore::random(cfg, 0, cfg.dtype), opts); },
               "device = 'tpu'");
}

TEST(Engine, CausalPrefixConsistency) {
  // With causal attention, the logits of a prefix do not depend on later tokens.
  auto eng = make_tiny(1, 32);
  std::vector<int32_t> ids(32);
  for (int i = 0; i < 32; ++i) ids[i] = (i * 37 + 11) % 256;
  const auto full = eng.forward(ids.data(), 1, 32);
  const auto prefix = eng.forward(ids.data(), 1, 9);
  for (size_t i = 0; i < prefix.size(); ++i) ASSERT_NEAR(prefix[i], full[i], 1e-4f) << i;
  for (float v : full) ASSERT_TRUE(std::isfinite(v));
}
