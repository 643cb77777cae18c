// Config schema: presets, parsing, and a clear error for every invalid input.
#include <gtest/gtest.h>

#include <string>

#include "minillm/config.h"
#include "minillm/core/check.h"

using minillm::Error;

namespace {

const char* kValid = R"({
  "vocab_size": 256, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_seq_len": 512,
  "moe": {"num_experts": 4, "top_k": 2, "ffn_size": 128}
})";

// Replaces the first occurrence of `from` in the valid config with `to`.
std::string with(const std::string& from, const std::string& to) {
  std::string s = kValid;
  const size_t p = s.find(from);
  EXPECT_NE(p, std::string::npos) << from;
  return s.replace(p, from.size(), to);
}

// Parsing `json` must throw an Error whose message contains every fragment.
void expect_error(const std::string& json, std::initializer_list<const char*> fragments) {
  try {
    minillm::parse_config_json(json);
    ADD_FAILURE() << "no error for: " << json;
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
}

}  // namespace

TEST(Config, PresetsValidateAndCountParameters) {
  for (const char* const* n = minillm::preset_names(); *n; ++n) EXPECT_NO_THROW(minillm::preset_config(*n).validate());
  // DESIGN.md: medium 2.58 B, large 13.7 B parameters.
  EXPECT_NEAR(minillm::preset_config("medium").num_parameters() / 1e9, 2.58, 0.01);
  EXPECT_NEAR(minillm::preset_config("large").num_parameters() / 1e9, 13.7, 0.05);
  const auto large = minillm::preset_config("large");
  EXPECT_LT(large.num_active_parameters(), large.num_parameters());
  EXPECT_THROW(minillm::preset_config("huge"), Error);
}

TEST(Config, ParsesDefaultsAndRoundTrips) {
  const auto c = minillm::parse_config_json(kValid);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.norm_type, minillm::NormType::layernorm);
  EXPECT_EQ(c.norm_placement, minillm::NormPlacement::post);
  EXPECT_TRUE(c.causal);
  const auto again = minillm::parse_config_json(minillm::config_to_json(c));
  EXPECT_EQ(minillm::config_to_json(again), minillm::config_to_json(c));
  const auto tiny = minillm::preset_config("tiny");
  EXPECT_EQ(minillm::config_to_json(minillm::parse_config_json(minillm::config_to_json(tiny))),
            minillm::config_to_json(tiny));
}

TEST(Config, RejectsMalformedJson) { expect_error("{\"vocab_size\": ", {"malformed JSON"}); }

TEST(Config, RejectsUnknownKeys) {
  expect_error(with("\"vocab_size\"", "\"vocab_sise\": 3, \"vocab_size\""), {"unknown key 'vocab_sise'"});
  expect_error(with("\"top_k\"", "\"topk\": 2, \"top_k\""), {"unknown key 'moe.topk'"});
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"norm\": {\"kind\": \"x\"}"),
               {"unknown key 'norm.kind'"});
}

TEST(Config, RejectsMissingKeys) {
  expect_error(with("\"vocab_size\": 256,", ""), {"missing required key 'vocab_size'"});
  expect_error(with("\"ffn_size\": 128", "\"activation\": \"swiglu\""), {"missing required key 'moe.ffn_size'"});
}

TEST(Config, RejectsWrongTypes) {
  expect_error(with("256", "\"256\""), {"vocab_size", "must be an integer"});
  expect_error(with("256", "2.5"), {"vocab_size", "must be an integer"});
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"causal\": 1"), {"causal", "true or false"});
}

TEST(Config, RejectsOutOfRangeValues) {
  expect_error(with("\"vocab_size\": 256", "\"vocab_size\": 0"), {"vocab_size = 0", "positive"});
  expect_error(with("\"num_layers\": 2", "\"num_layers\": -1"), {"num_layers = -1"});
  expect_error(with("\"hidden_size\": 64", "\"hidden_size\": 66"), {"hidden_size = 66", "not divisible by num_heads = 4"});
  expect_error(with("\"num_heads\": 4", "\"num_heads\": 4, \"num_kv_heads\": 3"),
               {"num_kv_heads = 3", "does not divide num_heads = 4"});
  expect_error(with("\"top_k\": 2", "\"top_k\": 5"), {"moe.top_k = 5", "exceeds moe.num_experts = 4"});
  expect_error(with("\"top_k\": 2", "\"top_k\": 0"), {"moe.top_k = 0"});
  expect_error(with("\"num_experts\": 4", "\"num_experts\": 300"), {"moe.num_experts = 300"});
  expect_error(with("\"ffn_size\": 128", "\"ffn_size\": -5"), {"moe.ffn_size = -5"});
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"norm\": {\"eps\": -1}"), {"norm.eps"});
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"head_dim\": 15"), {"head_dim = 15", "even"});
  expect_error(with("\"vocab_size\": 256", "\"vocab_size\": 99999999999"), {"vocab_size", "out of range"});
}

TEST(Config, RejectsBadEnumValues) {
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"norm\": {\"type\": \"batchnorm\"}"),
               {"norm.type = 'batchnorm'", "layernorm"});
  expect_error(with("\"ffn_size\": 128", "\"ffn_size\": 128, \"activation\": \"relu\""),
               {"moe.activation = 'relu'", "swiglu"});
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"dtype\": \"fp8\""), {"dtype = 'fp8'"});
  expect_error(with("\"max_seq_len\": 512", "\"max_seq_len\": 512, \"position\": {\"type\": \"alibi\"}"),
               {"position.type = 'alibi'"});
}

TEST(Config, LoadsFilesAndReportsMissingOnes) {
  const auto c = minillm::load_config(std::string(MINILLM_SOURCE_DIR) + "/tests/golden/tiny_pre_gqa.json");
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.norm_placement, minillm::NormPlacement::pre);
  EXPECT_THROW(minillm::load_config("/nonexistent/config.json"), Error);
}
