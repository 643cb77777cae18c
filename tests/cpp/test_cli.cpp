// The minillm CLI end to end: info, init, forward, and a non-zero exit with a clear message on bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_run.h"

namespace {

using Result = minillm::test::CliResult;
using minillm::test::run_cli;

void expect_fail(const std::string& args, const char* fragment, int code = 1) {
  const Result r = run_cli(args);
  EXPECT_EQ(r.code, code) << args << "\n" << r.out;
  EXPECT_NE(r.out.find(fragment), std::string::npos) << args << "\n" << r.out;
  EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << "no 'error: ' prefix: " << args << "\n" << r.out;
  EXPECT_LT(r.out.size(), 1000u) << args;
}
std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("minillm_cli_" + std::to_string(::getpid()) + "_" + name)).string();
}

const std::string kGolden = std::string(MINILLM_SOURCE_DIR) + "/tests/golden/";

}  // namespace

TEST(Cli, InfoReportsParametersMemoryAndFlops) {
  const Result r = run_cli("info --model medium --batch 8 --seq 2048");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("parameters: 2.58 B total (2582413312), 770.47 M active"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("weight memory"), std::string::npos);
  EXPECT_NE(r.out.find("FLOPs per forward at batch 8 x seq 2048"), std::string::npos);
}

TEST(Cli, ServeHandsOverToThePythonServer) {
  // `minillm serve` execs python3 -m minillm serve (python/minillm/server.py) with this tree's python/.
  Result r = run_cli("serve --help");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("usage: minillm serve"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--api-key"), std::string::npos) << r.out;
  expect_fail("serve --model no_such_model_dir --device cpu", "no_such_model_dir");
}

TEST(Cli, ForwardOnIdsAndRandomBatch) {
  Result r = run_cli("forward --model tiny --ids 1,2,3,4,5 --device cpu");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("logits: float32 [1, 5, 256]; the 5 largest at the last position"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  batch 0, position 4: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("finite yes"), std::string::npos) << r.out;
  r = run_cli("forward --model " + kGolden + "tiny.json --weights " + kGolden + "tiny.safetensors --batch 2 --seq 9");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("batch 1, position 8:"), std::string::npos) << r.out;
}

TEST(Cli, InitWritesLoadableWeights) {
  const std::string p = (std::filesystem::temp_directory_path() / "minillm_cli_init.safetensors").string();
  Result r = run_cli("init --model tiny --seed 5 --out " + p);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("forward --model tiny --weights " + p + " --ids 7,8,9");
  EXPECT_EQ(r.code, 0) << r.out;
  std::filesystem::remove(p);
}

TEST(Cli, BadInputExitsNonZeroWithAClearMessage) {
  expect_fail("forward --model tiny --ids 1,256,3", "token id 256 at position [0, 1] is out of range [0, 256)");
  expect_fail("forward --model tiny --ids 1,-4", "token id -4");
  expect_fail("forward --model tiny --ids 1,x", "'x' is not an integer");
  expect_fail("forward --model tiny --batch 1 --seq 513", "exceeds the model's max_seq_len = 512");
  expect_fail("forward --model nosuch --ids 1", "unknown preset 'nosuch'");
  expect_fail("forward --model /nonexistent/c.json --ids 1", "cannot open");
  expect_fail("forward --model tiny --weights /nonexistent.safetensors --ids 1", "cannot open");
  expect_fail("forward --model tiny --ids 1 --device tpu", "--device: tpu not in {auto,cpu,cuda}", 2);
  expect_fail("forward --model tiny", "give --ids");
  expect_fail("info", "--model", 2);
}

// Issue 20's papercuts: --version, small models in M, specific errors for batch/seq, --out.
TEST(Cli, VersionAndSmallModelsInMillions) {
  Result r = run_cli("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("minillm " MINILLM_VERSION, 0), 0u) << r.out;
  r = run_cli("info --model tiny");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("parameters: 0.26 M total (263168), 0.16 M active"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("weight memory: bf16/fp16 526.34 kB, fp32 1.05 MB"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("0.000"), std::string::npos) << r.out;
  r = run_cli("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("Exit codes: 0 success, 1 error"), std::string::npos) << r.out;
}

TEST(Cli, BatchAndSeqErrorsAreSpecific) {
  expect_fail("forward --model tiny --batch 0 --seq 4", "--batch = 0 must be positive");
  expect_fail("forward --model tiny --batch 2 --seq -5", "--seq = -5 must be positive");
  expect_fail("forward --model tiny --seq 4", "--seq needs --batch too");
  expect_fail("forward --model tiny --batch 4", "--batch needs --seq too");
  expect_fail("info --model tiny --seq -5", "--seq = -5 must be positive");
  expect_fail("info --model tiny --batch 0", "--batch = 0 must be positive");
  // 2^31-1 sequences used to end in std::bad_alloc; now refused before anything is allocated.
  expect_fail("forward --model tiny --batch 2147483647 --seq 512 --device cpu", "2^30");
  expect_fail("forward --model tiny --batch 2000000 --seq 512 --device cpu", "needs");
}

TEST(Cli, HostileArgumentsAreRefused) {
  expect_fail("forward --model tiny --ids 1,2,", "--ids: entry 2 is empty");
  expect_fail("forward --model tiny --ids ,1", "--ids: entry 0 is empty");
  expect_fail("forward --model tiny --ids 99999999999", "out of the int32 range");
  expect_fail("forward --model tiny --ids 1,2 --weights ''", "--weights: empty path");
  expect_fail("forward --model tiny --ids 1 --seed -1", "--seed", 2);
  expect_fail("init --model tiny --seed -1 --out x.safetensors", "--seed", 2);
  expect_fail("forward --model tiny --ids 1 --bogus", "--bogus", 2);  // CLI11 errors get the prefix too
  expect_fail("forward --model tiny --ids 1 --out logits.txt", "must name a .npy file");
  // A directory, a FIFO, and a preset shadowed by a file in the working directory.
  const std::string dir = tmp_path("dir");
  std::filesystem::create_directories(dir);
  expect_fail("info --model " + dir, "missing config.json");
  expect_fail("forward --model tiny --ids 1 --weights " + dir, "is a directory");
  const std::string fifo = tmp_path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_fail("info --model " + fifo, "is a FIFO");
  expect_fail("forward --model tiny --ids 1 --weights " + fifo, "is a FIFO");
  std::filesystem::remove(fifo);
  std::ofstream(dir + "/tiny") << "not json";
  const Result r = run_cli("info --model tiny", dir);
  EXPECT_NE(r.out.find("model tiny:"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
  // The issue's crashing config: an error naming the file and the field, exit 1.
  const std::string cfg = tmp_path("heads.json");
  std::ofstream(cfg) << R"({"vocab_size":256,"hidden_size":64,"num_layers":2,"num_heads":16777217,"num_kv_heads":16777217,)"
                        R"("head_dim":256,"max_seq_len":512,"moe":{"num_experts":4,"top_k":2,"ffn_size":128}})";
  expect_fail("forward --model " + cfg + " --ids 1,2,3 --device cpu", "num_heads = 16777217 exceeds the supported maximum 1024");
  std::filesystem::remove(cfg);
}

TEST(Cli, OutWritesTheLogitsAsNpy) {
  const std::string p = tmp_path("logits.npy");
  const Result r = run_cli("forward --model tiny --batch 2 --seq 3 --device cpu --out " + p);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("wrote " + p + ": logits float32 [2, 3, 256]"), std::string::npos) << r.out;
  std::ifstream f(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), {});
  ASSERT_GT(s.size(), 128u);
  EXPECT_EQ(s.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t hl = static_cast<uint8_t>(s[8]) | static_cast<uint8_t>(s[9]) << 8;
  EXPECT_EQ((10 + hl) % 64, 0u);
  EXPECT_NE(s.find("'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 256), }"), std::string::npos);
  EXPECT_EQ(s.size(), 10 + hl + 2 * 3 * 256 * 4);
  std::filesystem::remove(p);
}
