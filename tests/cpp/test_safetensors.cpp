// safetensors reader/writer and weight loading: round trip, and a clear error (no crash) for
// truncated, corrupted and mismatched files.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "minillm/core/check.h"
#include "minillm/safetensors.h"
#include "minillm/weights.h"

using minillm::Error;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("minillm_test_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_all(const std::string& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), static_cast<std::streamsize>(s.size()));
}
// A file made of an 8-byte length, the header text and `data_bytes` zero bytes.
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\0');
}

void expect_load_error(const std::string& content, const char* fragment) {
  const std::string p = tmp_path("bad.safetensors");
  write_all(p, content);
  try {
    minillm::SafeTensorsFile f(p);
    ADD_FAILURE() << "no error, expected: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
  fs::remove(p);
}

const minillm::ModelConfig& tiny() {
  static const minillm::ModelConfig c = minillm::preset_config("tiny");
  return c;
}

}  // namespace

TEST(SafeTensors, RoundTrip) {
  const std::string p = tmp_path("rt.safetensors");
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t b[3] = {minillm::f32_to_bf16(1.5f), minillm::f32_to_bf16(-2.0f), 0};
  minillm::write_safetensors(p, {{"b", minillm::DType::bf16, {3}, b}, {"a", minillm::DType::f32, {2, 3}, a}},
                             {{"k", "v"}});
  minillm::SafeTensorsFile f(p);
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto* ta = f.find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(f.data(*ta), a, sizeof a), 0);
  const auto* tb = f.find("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, minillm::DType::bf16);
  EXPECT_EQ(minillm::bf16_to_f32(static_cast<const uint16_t*>(f.data(*tb))[1]), -2.0f);
  EXPECT_EQ(f.metadata().at("k"), "v");
  fs::remove(p);
}

TEST(SafeTensors, RejectsTruncatedAndCorruptFiles) {
  expect_load_error("abc", "truncated");
  expect_load_error(raw_file("{}", 0).substr(0, 8) + "{", "header length");  // length says 2, 1 byte present
  std::string huge = raw_file("{}", 0);
  huge[7] = 0x7f;  // absurd header length
  expect_load_error(huge, "header length");
  expect_load_error(raw_file("{not json", 0), "malformed JSON");
  expect_load_error(raw_file("[1, 2]", 0), "not a JSON object");
  expect_load_error(raw_file(R"({"t": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", 1),
                    "unsupported dtype 'F8_E4M3'");
  expect_load_error(raw_file(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
                    "out of range");
  expect_load_error(raw_file(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", 16),
                    "16 bytes for shape x dtype needing 12");
  expect_load_error(raw_file(R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4), "bad shape");
  expect_load_error(raw_file(R"({"t": {"dtype": "F32", "shape": [1]}})", 4), "needs dtype, shape and data_offsets");
  expect_load_error(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                             12),
                    "overlap");
}

TEST(Weights, SeededInitIsDeterministicAndDocumentedRanges) {
  const auto a = minillm::WeightStore::random(tiny(), 7, minillm::DType::bf16);
  const auto b = minillm::WeightStore::random(tiny(), 7, minillm::DType::bf16);
  const auto c = minillm::WeightStore::random(tiny(), 8, minillm::DType::bf16);
  ASSERT_EQ(a.tensors().size(), minillm::weight_specs(tiny()).size());
  for (const auto& [name, w] : a.tensors()) EXPECT_EQ(w.bytes, b.get(name).bytes) << name;
  EXPECT_NE(a.get("lm_head.weight").bytes, c.get("lm_head.weight").bytes);
  const auto& q = a.get("model.layers.0.self_attn.q_proj.weight");  // U(-1/8, 1/8)
  const auto& n = a.get("model.layers.1.input_layernorm.weight");  // 1 + U(-0.1, 0.1)
  for (int64_t i = 0; i < q.numel(); ++i) EXPECT_LE(std::abs(q.at(i)), 0.126f);
  for (int64_t i = 0; i < n.numel(); ++i) EXPECT_NEAR(n.at(i), 1.0f, 0.1f + 1.0f / 128);  // bf16 spacing near 1.1 is 2^-7
}

TEST(Weights, SaveLoadRoundTripAndCommittedFixtureMatchesSeed) {
  const std::string p = tmp_path("w.safetensors");
  const auto a = minillm::WeightStore::random(tiny(), 3, minillm::DType::bf16);
  a.save(p);
  const auto b = minillm::WeightStore::load(p, tiny());
  for (const auto& [name, w] : a.tensors()) EXPECT_EQ(w.bytes, b.get(name).bytes) << name;
  fs::remove(p);
  // The golden fixture was written by `minillm init --model tests/golden/tiny.json --seed 0`.
  const std::string dir = std::string(MINILLM_SOURCE_DIR) + "/tests/golden/";
  const auto cfg = minillm::load_config(dir + "tiny.json");
  const auto fixture = minillm::WeightStore::load(dir + "tiny.safetensors", cfg);
  const auto seeded = minillm::WeightStore::random(cfg, 0, minillm::DType::bf16);
  for (const auto& [name, w] : seeded.tensors()) EXPECT_EQ(w.bytes, fixture.get(name).bytes) << name;
}

TEST(Weights, RejectsMissingUnexpectedMisshapenAndMistypedTensors) {
  const auto good = minillm::WeightStore::random(tiny(), 0, minillm::DType::bf16);
  auto write_variant = [&](const std::string& drop, const std::string& extra, const std::string& reshape,
                           minillm::DType dtype) {
    std::vector<minillm::SafeTensorOut> out;
    std::vector<std::vector<uint8_t>> keep;
    for (const auto& [name, w] : good.tensors()) {
      if (name == drop) continue;
      auto shape = w.shape;
      if (name == reshape) shape = {shape[1], shape[0]};
      if (name == reshape && shape[0] == shape[1]) shape = {shape[0] + 0, shape[1] - 1};
      size_t bytes = minillm::dtype_size(dtype);
      for (auto s : shape) bytes *= static_cast<size_t>(s);
      keep.emplace_back(bytes, 0);
      out.push_back({name, dtype, shape, keep.back().data()});
    }
    if (!extra.empty()) {
      keep.emplace_back(4, 0);
      out.push_back({extra, minillm::DType::f32, {1}, keep.back().data()});
    }
    const std::string p = tmp_path("variant.safetensors");
    minillm::write_safetensors(p, out);
    return p;
  };
  auto expect = [&](const std::string& p, const char* fragment) {
    try {
      minillm::WeightStore::load(p, tiny());
      ADD_FAILURE() << "no error, expected " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    fs::remove(p);
  };
  const auto bf = minillm::DType::bf16;
  expect(write_variant("model.layers.1.block_sparse_moe.experts.3.w2.weight", "", "", bf),
         "missing tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight'");
  expect(write_variant("", "model.layers.9.extra", "", bf), "unexpected tensor 'model.layers.9.extra'");
  expect(write_variant("", "", "model.layers.0.self_attn.o_proj.weight", bf),
         "tensor 'model.layers.0.self_attn.o_proj.weight' has shape");
  expect(write_variant("", "", "", minillm::DType::f16), "has dtype f16, expected bf16");
  // A file cut short in its data block.
  const std::string p = tmp_path("cut.safetensors");
  good.save(p);
  std::string s = read_all(p);
  write_all(p, s.substr(0, s.size() - 100));
  expect(p, "truncated");
}
