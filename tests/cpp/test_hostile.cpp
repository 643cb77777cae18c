// Hostile input (issue 19): every case found by trying minillm as a hostile user would, as a
// regression test. Each must end in a minillm::Error naming the file/field (never a crash, a hang,
// an unbounded message or silently wrong numbers).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "core/file.h"
#include "core/json.h"
#include "minillm/checkpoint.h"
#include "minillm/config.h"
#include "minillm/core/check.h"
#include "minillm/engine.h"
#include "minillm/safetensors.h"
#include "minillm/weights.h"
#include "model/hf_config.h"
#include "text/tokenizer_impl.h"

using minillm::Error;
namespace fs = std::filesystem;

namespace {

const std::string kTinyJson = R"({"vocab_size":256,"hidden_size":64,"num_layers":2,"num_heads":4,"max_seq_len":512,
  "moe":{"num_experts":4,"top_k":2,"ffn_size":128}})";

// Runs `f`, which must throw minillm::Error whose message contains every fragment and is at most
// `max_len` bytes long (messages never echo unbounded input).
template <typename F>
void expect_error(F&& f, std::initializer_list<const char*> fragments, size_t max_len = 600) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << *fragments.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* frag : fragments) EXPECT_NE(msg.find(frag), std::string::npos) << "'" << frag << "' not in: " << msg;
    EXPECT_LE(msg.size(), max_len) << msg.substr(0, 300);
  }
}
void expect_config_error(const std::string& json, std::initializer_list<const char*> fragments) {
  expect_error([&] { minillm::parse_config_json(json); }, fragments);
}
// The tiny config with `"key": value` added at the top level (or replacing an existing key).
std::string tiny_with(const std::string& key, const std::string& value) {
  std::string s = kTinyJson;
  const std::string k = "\"" + key + "\":";
  const size_t p = s.find(k);
  if (p == std::string::npos) return "{\"" + key + "\":" + value + "," + s.substr(1);
  const size_t v = p + k.size();
  size_t e = v;
  while (s[e] != ',' && s[e] != '}') ++e;
  return s.replace(v, e - v, value);
}

std::string tmp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("minillm_hostile_" + std::to_string(::getpid()) + "_" + name)).string();
}
void write_all(const std::string& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), static_cast<std::streamsize>(s.size()));
}
std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}
// A safetensors image: the length, the header, then `data`.
std::string st_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }
void expect_st_error(const std::string& image, std::initializer_list<const char*> fragments) {
  expect_error(
      [&] {
        minillm::parse_safetensors(reinterpret_cast<const uint8_t*>(image.data()), image.size(), "mem.safetensors");
      },
      fragments);
}
const std::string k8 = std::string(8, '\1');

}  // namespace

// ---- 1. int products that wrapped: q_dim(), qkv_dim(), parameter counts ----
TEST(Hostile, HugeHeadCountsAreRejectedBeforeAnySizeIsComputed) {
  const std::string heads = R"({"vocab_size":256,"hidden_size":64,"num_layers":2,"num_heads":16777217,
    "num_kv_heads":16777217,"head_dim":256,"max_seq_len":512,"moe":{"num_experts":4,"top_k":2,"ffn_size":128}})";
  expect_config_error(heads, {"num_heads = 16777217", "exceeds the supported maximum 1024"});
  std::string no_pos = heads;
  no_pos.insert(1, R"("position":{"type":"none"},)");
  expect_config_error(no_pos, {"num_heads = 16777217"});
  const std::string with_head_dim = tiny_with("head_dim", "256");
  auto with_heads = [&](const char* n) {
    std::string s = with_head_dim;
    return s.replace(s.find("\"num_heads\":4"), 13, std::string("\"num_heads\":") + n);
  };
  expect_config_error(with_heads("16777216"), {"num_heads = 16777216", "1024"});  // q_dim 0 before
  expect_config_error(with_heads("1073741824"), {"num_heads = 1073741824"});     // negative counts before
  expect_config_error(tiny_with("num_kv_heads", "2048"), {"num_kv_heads = 2048", "1024"});
  // Programmatic configs go through the same validate() (the engine calls it).
  minillm::ModelConfig c = minillm::preset_config("tiny");
  c.num_heads = c.num_kv_heads = 16777217;
  c.head_dim = 256;
  expect_error([&] { c.validate(); }, {"num_heads = 16777217"});
  expect_error([&] { minillm::WeightStore::random(c, 0, minillm::DType::bf16); }, {"num_heads = 16777217"});
}

TEST(Hostile, EveryDimensionHasANamedUpperBound) {
  expect_config_error(tiny_with("vocab_size", "2147483647"), {"vocab_size = 2147483647", "maximum 4194304"});
  expect_config_error(tiny_with("hidden_size", "131072"), {"hidden_size = 131072", "maximum 65536"});
  expect_config_error(tiny_with("num_layers", "1000000000"), {"num_layers = 1000000000", "maximum 1024"});
  expect_config_error(tiny_with("head_dim", "512"), {"head_dim = 512", "maximum 256"});
  expect_config_error(tiny_with("max_seq_len", "2000000"), {"max_seq_len = 2000000", "maximum 1048576"});
  expect_config_error(R"({"vocab_size":256,"hidden_size":64,"num_layers":2,"num_heads":4,"max_seq_len":512,
    "moe":{"num_experts":4,"top_k":2,"ffn_size":1000000}})",
                      {"moe.ffn_size = 1000000", "maximum 262144"});
  expect_config_error(R"({"vocab_size":256,"hidden_size":64,"num_layers":2,"num_heads":4,"max_seq_len":512,
    "moe":{"num_experts":4,"top_k":2,"ffn_size":128,"shared_expert_ffn":1000000}})",
                      {"moe.shared_expert_ffn = 1000000", "maximum 262144"});
  // The largest config within every bound still has exact 64-bit counts.
  minillm::ModelConfig c = minillm::preset_config("tiny");
  c.vocab_size = minillm::kMaxVocabSize;
  c.hidden_size = minillm::kMaxHiddenSize;
  c.num_layers = minillm::kMaxLayers;
  c.num_heads = c.num_kv_heads = minillm::kMaxHeads;
  c.head_dim = minillm::kMaxHeadDim;
  c.moe.num_experts = minillm::kMaxExperts;
  c.moe.top_k = minillm::kMaxTopK;
  c.moe.ffn_size = c.moe.shared_expert_ffn = minillm::kMaxFfnSize;
  c.qkv_bias = true;
  c.qk_norm = minillm::QkNorm::full;
  EXPECT_NO_THROW(c.validate());
  EXPECT_GT(c.num_parameters(), int64_t{1} << 50);
  EXPECT_GT(c.num_active_parameters(), 0);
}

// ---- 2. deep nesting: no stack overflow, in configs and safetensors headers ----
TEST(Hostile, DeeplyNestedJsonIsRejectedWithoutRecursion) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_config_error(tiny_with("name", deep), {"nested deeper than 64"});
  expect_config_error(tiny_with("vocab_size", deep), {"nested deeper than 64"});
  expect_config_error(deep, {"nested deeper than 64"});
  expect_st_error(st_file(R"({"t":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,8]}})", k8),
                  {"header", "nested deeper than 64"});
  // Shallow nesting in a wrong place is an ordinary type error quoting a bounded excerpt.
  expect_config_error(tiny_with("vocab_size", "[[[1]]]"), {"vocab_size must be an integer, got [[[1]]]"});
}

// ---- 3. shape products overflowing int64 ----
TEST(Hostile, SafetensorsShapeProductsAreChecked) {
  expect_st_error(st_file(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", k8),
                  {"tensor 't'", "overflows 64 bits"});
  expect_st_error(st_file(R"({"t":{"dtype":"BF16","shape":[4611686018427387904,2],"data_offsets":[0,8]}})", k8),
                  {"overflows 64 bits"});
  expect_st_error(st_file(R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", k8),
                  {"bad shape entry 18446744073709551615"});
  expect_st_error(st_file(R"({"t":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", "abcd"),
                  {"9 dims", "more than the supported 8"});
}

// ---- 4. number overflow, and huge numbers never echoed whole ----
TEST(Hostile, OutOfRangeNumbersAreMinillmErrorsWithShortMessages) {
  expect_config_error(tiny_with("vocab_size", "1e400"), {"config", "malformed JSON", "number overflow"});
  expect_config_error(tiny_with("vocab_size", std::string(100000, '9')), {"config", "malformed JSON"});
  expect_config_error(tiny_with("norm", R"({"eps":1e400})"), {"config", "malformed JSON"});
  expect_st_error(st_file(R"({"t":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})", "abcd"),
                  {"mem.safetensors", "header", "malformed JSON"});
  // Every message also stays short for huge strings and keys.
  const std::string big(100000, 'x');
  expect_config_error(tiny_with("name", "\"" + big + "\""), {"name 'xxxx", "(100000 bytes) is longer than 256"});
  expect_config_error(tiny_with(big, "1"), {"unknown key 'xxxx", "(100000 bytes)"});
  expect_config_error(tiny_with("dtype", "\"" + big + "\""), {"dtype = 'xxx"});
  expect_st_error(st_file("{\"" + big + R"(":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abc"),
                  {"tensor 'xxx", "out of range"});
  expect_st_error(st_file(R"({"t":{"dtype":")" + big + R"(","shape":[1],"data_offsets":[0,4]}})", "abcd"),
                  {"unsupported dtype 'xxx"});
}

// ---- 6. malformed safetensors that used to load ----
TEST(Hostile, SafetensorsMustBeExact) {
  const std::string two = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  EXPECT_NO_THROW(minillm::parse_safetensors(reinterpret_cast<const uint8_t*>(st_file(two, k8).data()), 16 + two.size(),
                                             "ok"));
  // Duplicate tensor names: the last used to win.
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          k8),
                  {"duplicate key 'a'"});
  // A header length one byte short: the last header byte becomes data, every tensor shifts.
  std::string padded = two + "   ";
  std::string shifted = le64(padded.size() - 1) + padded + k8;
  expect_st_error(shifted, {"1 trailing bytes after the last tensor", "header length"});
  // Trailing bytes, gaps, overlaps.
  expect_st_error(st_file(two, k8 + "zz"), {"2 trailing bytes"});
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                          k8 + "1234"),
                  {"4 unused bytes before tensor 'b'"});
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", k8), {"4 unused bytes"});
  // Text after a NUL byte in the header used to be ignored.
  std::string nul = two;
  nul.insert(nul.size() - 1, std::string("\0,\"c\":{}", 8));
  expect_st_error(st_file(nul, k8), {"NUL byte at offset"});
  // Unknown fields in an entry.
  expect_st_error(st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", "abcd"),
                  {"unknown field 'x'"});
  // The writer refuses to produce a duplicate.
  const float v = 1;
  expect_error([&] { minillm::write_safetensors(tmp_path("dup.safetensors"), {{"a", minillm::DType::f32, {1}, &v},
                                                                               {"a", minillm::DType::f32, {1}, &v}}); },
               {"tensor 'a' given twice"});
}

// Duplicate lm_head (the second all zeros) gave all-zero logits and exit 0; now the file is refused.
TEST(Hostile, DuplicateTensorInAWeightsFileIsRefused) {
  const auto cfg = minillm::preset_config("tiny");
  const std::string p = tmp_path("dup_lm_head.safetensors");
  minillm::WeightStore::random(cfg, 0, minillm::DType::bf16).save(p);
  std::string s = read_all(p);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; --i) hl = (hl << 8) | static_cast<uint8_t>(s[i]);
  std::string header = s.substr(8, hl), data = s.substr(8 + hl);
  const size_t at = header.find("\"lm_head.weight\"");
  ASSERT_NE(at, std::string::npos);
  const size_t end = header.find('}', at) + 1;
  const uint64_t bytes = 256 * 64 * 2;
  const std::string dup = ",\"lm_head.weight\":{\"dtype\":\"BF16\",\"shape\":[256,64],\"data_offsets\":[" +
                          std::to_string(data.size()) + "," + std::to_string(data.size() + bytes) + "]}";
  header.insert(end, dup);
  write_all(p, st_file(header, data + std::string(bytes, '\0')));
  expect_error([&] { minillm::WeightStore::load(p, cfg); }, {"duplicate key 'lm_head.weight'"});
  fs::remove(p);
}

// ---- 7. NaN / Inf weights ----
TEST(Hostile, NonFiniteWeightsAreRefusedAtLoadNamingTheTensor) {
  const auto cfg = minillm::preset_config("tiny");
  const auto good = minillm::WeightStore::random(cfg, 0, minillm::DType::bf16);
  for (const uint16_t bad : {uint16_t{0x7fc0}, uint16_t{0x7f80}, uint16_t{0xff80}}) {  // NaN, +Inf, -Inf
    std::vector<minillm::SafeTensorOut> out;
    std::vector<uint8_t> copy = good.get("model.layers.1.self_attn.o_proj.weight").bytes;
    std::memcpy(copy.data() + 2 * (3 * 64 + 5), &bad, 2);  // element [3, 5]
    for (const auto& [name, w] : good.tensors())
      out.push_back({name, w.dtype, w.shape,
                     name == "model.layers.1.self_attn.o_proj.weight" ? copy.data() : w.bytes.data()});
    const std::string p = tmp_path("nan.safetensors");
    minillm::write_safetensors(p, out);
    expect_error([&] { minillm::WeightStore::load(p, cfg); },
                 {"tensor 'model.layers.1.self_attn.o_proj.weight' holds", bad == 0x7fc0 ? "NaN" : "Inf",
                  "at [3, 5] (element 197)"});
    fs::remove(p);
  }
  // fp32 storage too.
  minillm::ModelConfig c = cfg;
  auto w32 = minillm::WeightStore::random(c, 0, minillm::DType::f32);
  std::vector<minillm::SafeTensorOut> out;
  std::vector<uint8_t> emb = w32.get("model.embed_tokens.weight").bytes;
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(emb.data() + 4 * 64 * 255, &inf, 4);
  for (const auto& [name, w] : w32.tensors())
    out.push_back({name, w.dtype, w.shape, name == "model.embed_tokens.weight" ? emb.data() : w.bytes.data()});
  const std::string p = tmp_path("inf32.safetensors");
  minillm::write_safetensors(p, out);
  expect_error([&] { minillm::WeightStore::load(p, c); }, {"model.embed_tokens.weight", "Inf at [255, 0]"});
  fs::remove(p);
}

// ---- 8. absurd sizes: refused up front with the number and what is available ----
TEST(Hostile, MemoryEstimateRefusesUpFront) {
  const auto cfg = minillm::preset_config("tiny");
  minillm::EngineOptions o;
  o.device = "cpu";
  const auto m = minillm::estimate_memory(cfg, 2, 64, o);
  EXPECT_EQ(m.device, minillm::Device::cpu);
  EXPECT_GE(m.weights, static_cast<size_t>(cfg.num_parameters()) * 4);  // fp32 on the CPU
  EXPECT_GE(m.workspace, static_cast<size_t>(2 * 64 * 256 * 4));         // at least the logits
  EXPECT_EQ(m.ids, (4u * 2 * 64 + 2 * 2 + 1) * 4);  // the packed step batch: ids, positions, slots, rows, cu, lens
  EXPECT_EQ(m.host_weights, static_cast<size_t>(cfg.num_parameters()) * 2);
  EXPECT_NO_THROW(minillm::check_memory(m, 2, 64, true));
  // The engine sizes its arena with the same plan.
  const auto w = minillm::WeightStore::random(cfg, 0, minillm::DType::bf16);
  o.max_batch = 2;
  o.max_seq = 64;
  minillm::InferenceEngine eng(cfg, w, o);
  EXPECT_EQ(eng.workspace_bytes(), m.workspace);
  EXPECT_EQ(eng.weight_bytes(), m.weights);
  // 2^30 tokens of a 4M vocabulary: petabytes of logits, refused with the sizes.
  minillm::ModelConfig big = cfg;
  big.vocab_size = minillm::kMaxVocabSize;
  big.max_seq_len = 1 << 20;
  expect_error([&] { minillm::check_memory(minillm::estimate_memory(big, 1024, 1 << 20, o), 1024, 1 << 20, true); },
               {"memory: batch 1024 x seq 1048576 needs", "PB", "more than the", "available (MemAvailable)"});
  expect_error([&] { minillm::estimate_memory(cfg, 2147483647, 512, o); }, {"max_batch x max_seq", "2^30"});
  expect_error([&] { minillm::InferenceEngine(big, w, [] { minillm::EngineOptions e; e.device = "cpu"; e.max_batch = 1024; e.max_seq = 1 << 20; return e; }()); },
               {"needs", "available"});
  // Seeded weights of a model beyond the host's memory: an error before any allocation.
  minillm::ModelConfig huge = cfg;
  huge.vocab_size = minillm::kMaxVocabSize;
  huge.hidden_size = minillm::kMaxHiddenSize;
  huge.num_heads = huge.num_kv_heads = 256;
  huge.head_dim = 256;
  huge.num_layers = minillm::kMaxLayers;
  huge.moe.ffn_size = minillm::kMaxFfnSize;
  expect_error([&] { minillm::WeightStore::random(huge, 0, minillm::DType::bf16); },
               {"seeded init", "of host memory, more than the"});
}

// ---- 9. values misreported or silently changed ----
TEST(Hostile, ValuesAreReadExactlyOrRefused) {
  expect_config_error(tiny_with("vocab_size", "18446744073709551615"),
                      {"vocab_size = 18446744073709551615 is out of range"});
  expect_config_error(tiny_with("norm", R"({"eps":1e-50})"), {"norm.eps = 1e-50", "32-bit float", "become 0"});
  expect_config_error(tiny_with("position", R"({"theta":1e300})"), {"position.theta = 1e+300", "become inf"});
  expect_config_error(tiny_with("position", R"({"theta":1e20})"), {"position.theta = 1e+20", "must be in (1, 1e+12]"});
  expect_config_error(tiny_with("position", R"({"theta":0.5})"), {"position.theta = 0.5"});
  // Duplicate keys used to keep the last value.
  expect_config_error(R"({"vocab_size":256,"vocab_size":512,"hidden_size":64,"num_layers":2,"num_heads":4,
    "max_seq_len":512,"moe":{"num_experts":4,"top_k":2,"ffn_size":128}})",
                      {"duplicate key 'vocab_size'"});
  expect_config_error(tiny_with("norm", R"({"eps":1e-5,"eps":1e-6})"), {"duplicate key 'eps'"});
  // Text after a NUL used to be ignored.
  expect_config_error(kTinyJson + std::string("\0{\"garbage\"", 11), {"NUL byte at offset"});
  // The engine refuses what it used to change silently.
  const auto cfg = minillm::preset_config("tiny");
  const auto w = minillm::WeightStore::random(cfg, 0, minillm::DType::bf16);
  minillm::EngineOptions o;
  o.device = "cpu";
  o.max_seq = -5;
  expect_error([&] { minillm::InferenceEngine(cfg, w, o); }, {"max_seq = -5 must be positive"});
  o.max_seq = 0;
  o.logits_dtype = minillm::DType::bf16;
  expect_error([&] { minillm::InferenceEngine(cfg, w, o); }, {"logits_dtype = bf16 needs the CUDA backend"});
}

// ---- 10. files that are not regular files; presets win over files of the same name ----
TEST(Hostile, FifosDirectoriesAndPresetShadowing) {
  const std::string dir = tmp_path("dir");
  fs::create_directories(dir);
  // A directory is a model directory (config.json + safetensors), never read as a JSON file.
  expect_error([&] { minillm::load_config(dir); }, {"model directory", "missing config.json"});
  expect_error([&] { minillm::SafeTensorsFile f(dir); }, {"weights", "is a directory"});
  const std::string fifo = tmp_path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Without a writer, opening a FIFO used to block forever.
  expect_error([&] { minillm::load_config(fifo); }, {"is a FIFO (named pipe)"});
  expect_error([&] { minillm::SafeTensorsFile f(fifo); }, {"is a FIFO (named pipe)"});
  fs::remove(fifo);
  fs::remove_all(dir);
  // A file named "tiny" in the working directory does not shadow the preset.
  const auto cwd = fs::current_path();
  const std::string work = tmp_path("cwd");
  fs::create_directories(work);
  fs::current_path(work);
  write_all("tiny", "not json");
  fs::create_directories("small");
  write_all("small/config.json", "{}");  // looks like a model directory
  EXPECT_EQ(minillm::load_config("tiny").name, "tiny");
  EXPECT_EQ(minillm::load_config("small").name, "small");
  EXPECT_FALSE(minillm::is_model_dir("small"));
  EXPECT_TRUE(minillm::is_model_dir("./small"));
  expect_error([&] { minillm::load_config("./tiny"); }, {"./tiny", "malformed JSON"});
  fs::current_path(cwd);
  fs::remove_all(work);
  // Oversized config files are refused before they are read.
  const std::string big = tmp_path("big.json");
  write_all(big, std::string(minillm::kMaxConfigFileBytes + 1, ' '));
  expect_error([&] { minillm::load_config(big); }, {"bytes, more than the limit of 16777216"});
  fs::remove(big);
}

TEST(Hostile, ErrorsNameTheFile) {
  const std::string p = tmp_path("bad_heads.json");
  write_all(p, tiny_with("num_heads", "16777217"));
  expect_error([&] { minillm::load_config(p); }, {p.c_str(), "num_heads = 16777217"});
  write_all(p, tiny_with("vocab_size", "1e400"));
  expect_error([&] { minillm::load_config(p); }, {p.c_str(), "malformed JSON"});
  fs::remove(p);
}

TEST(Hostile, ExcerptsAndCheckedArithmetic) {
  EXPECT_EQ(minillm::excerpt("abc"), "'abc'");
  EXPECT_EQ(minillm::excerpt(std::string(100, 'a'), 4), "'aaaa...' (100 bytes)");
  EXPECT_EQ(minillm::excerpt(std::string("a\nb\0", 4)), "'a\\x0ab\\x00'");
  // Bytes that are not UTF-8 are escaped; a cut never splits a character.
  EXPECT_EQ(minillm::excerpt("\xef"), "'\\xef'");
  EXPECT_EQ(minillm::excerpt("\xc3\xa9t\xc3\xa9"), "'\xc3\xa9t\xc3\xa9'");
  EXPECT_EQ(minillm::excerpt("\xc3\xa9\xc3\xa9", 3), "'\xc3\xa9...' (4 bytes)");
  EXPECT_EQ(minillm::excerpt("\xed\xa0\x80"), "'\\xed\\xa0\\x80'");  // a surrogate
  expect_config_error("\xef", {"malformed JSON", "\\xef"});
  EXPECT_EQ(minillm::checked_mul(int64_t{1} << 31, int64_t{1} << 31, "x"), int64_t{1} << 62);
  expect_error([] { minillm::checked_mul(int64_t{1} << 32, int64_t{1} << 32, "shape"); }, {"shape = 4294967296 x 4294967296 overflows 64 bits"});
  expect_error([] { minillm::checked_add(INT64_MAX, 1, "offset"); }, {"offset", "overflows"});
  EXPECT_EQ(minillm::json_excerpt(nlohmann::json::parse("[1,2,3]")), "[1,2,3]");
  EXPECT_EQ(minillm::json_excerpt(nlohmann::json::parse("[1,2,3]"), 4), "[1,2... (7 chars)");
  EXPECT_EQ(minillm::json_excerpt(nlohmann::json(std::string(100, 'z')), 10), "\"zzzzzzzzz... (102 chars)");
}

// The other JSON readers (HF config.json, tokenizer.json) share the strict parser.
TEST(Hostile, HfConfigAndTokenizerJsonAreStrict) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_error([] { minillm::parse_hf_config(R"({"model_type":"mixtral","model_type":"olmoe"})", "config.json"); },
               {"config.json", "duplicate key 'model_type'"});
  expect_error([&] { minillm::parse_hf_config("{\"model_type\":\"mixtral\",\"x\":" + deep + "}", "config.json"); },
               {"config.json", "nested deeper than 64"});
  expect_error([] { minillm::parse_hf_config(R"({"model_type":"mixtral","vocab_size":1e400})", "config.json"); },
               {"config.json", "malformed JSON"});
  expect_error([&] { minillm::text::load_hf_tokenizer("tok.json", "{\"model\":" + deep + "}", nullptr); },
               {"tok.json", "nested deeper than 64"});
  expect_error([] { minillm::text::load_hf_tokenizer("tok.json", R"({"model":{},"model":{}})", nullptr); },
               {"tok.json", "duplicate key 'model'"});
}
