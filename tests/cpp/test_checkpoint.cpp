// Hugging Face model directories through the C++ API and the CLI (tests/fixtures/hf/; the logits
// against transformers' goldens are checked in tests/python/test_checkpoints.py).
#include <gtest/gtest.h>

#include <string>

#include "minillm/checkpoint.h"
#include "minillm/core/check.h"
#include "minillm/engine.h"

#include "cli_run.h"

namespace {

const std::string kHf = std::string(MINILLM_SOURCE_DIR) + "/tests/fixtures/hf/";

using Result = minillm::test::CliResult;
using minillm::test::run_cli;

}  // namespace

TEST(Checkpoint, InspectReadsConfigShardsAndDtype) {
  const minillm::CheckpointInfo info = minillm::inspect_checkpoint(kHf + "mixtral");
  EXPECT_EQ(info.model_type, "mixtral");
  EXPECT_EQ(info.shards.size(), 3u);
  EXPECT_EQ(info.dtype, minillm::DType::bf16);
  EXPECT_EQ(info.config.moe.num_experts, 8);
  EXPECT_EQ(info.config.norm_placement, minillm::NormPlacement::pre);
  EXPECT_EQ(info.tensor_bytes, static_cast<size_t>(info.config.num_parameters()) * 2);
  EXPECT_TRUE(minillm::is_model_dir(kHf + "olmoe"));
  EXPECT_FALSE(minillm::is_model_dir(kHf + "olmoe/config.json"));
  EXPECT_THROW(minillm::inspect_checkpoint(kHf + "does_not_exist"), minillm::Error);
}

TEST(Checkpoint, EngineFromDirectoryReportsEachShard) {
  minillm::EngineOptions o;
  o.device = "cpu";
  o.max_seq = 4;
  int shards = 0;
  o.on_load_progress = [&](const minillm::LoadProgress& p) {
    ++shards;
    EXPECT_EQ(p.shard, shards);
    EXPECT_EQ(p.num_shards, 3);
    EXPECT_LE(p.bytes, p.total_bytes);
  };
  minillm::InferenceEngine eng(kHf + "mixtral", o);
  EXPECT_EQ(shards, 3);
  const int32_t ids[4] = {1, 2, 3, 4};
  const std::vector<float> logits = eng.forward(ids, 1, 4);
  EXPECT_EQ(logits.size(), 4u * 256);
}

TEST(Checkpoint, CliForwardAndInfoOnADirectory) {
  Result r = run_cli("forward --model " + kHf + "qwen2_moe --ids 5,6,7 --device cpu");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("loaded shard 1/1 model.safetensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GB/s"), std::string::npos) << r.out;
  r = run_cli("info --model " + kHf + "qwen3_moe_e128");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("experts 128 top-8"), std::string::npos) << r.out;
  r = run_cli("forward --model " + kHf + "nothing_here --ids 1");
  EXPECT_NE(r.code, 0) << r.out;
}
