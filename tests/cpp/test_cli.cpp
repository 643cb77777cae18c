// The minillm CLI end to end: info, init, forward, and a non-zero exit with a clear message on bad input.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <sys/wait.h>

namespace {

struct Result {
  int code;
  std::string out;
};

Result run(const std::string& args) {
  const std::string cmd = std::string(MINILLM_CLI) + " " + args + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p.get())) > 0) out.append(buf.data(), n);
  const int status = pclose(p.release());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

void expect_fail(const std::string& args, const char* fragment) {
  const Result r = run(args);
  EXPECT_NE(r.code, 0) << args << "\n" << r.out;
  EXPECT_NE(r.out.find(fragment), std::string::npos) << args << "\n" << r.out;
}

const std::string kGolden = std::string(MINILLM_SOURCE_DIR) + "/tests/golden/";

}  // namespace

TEST(Cli, InfoReportsParametersMemoryAndFlops) {
  const Result r = run("info --model medium --batch 8 --seq 2048");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("parameters: 2.58"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("weight memory"), std::string::npos);
  EXPECT_NE(r.out.find("FLOPs per forward at batch 8 x seq 2048"), std::string::npos);
}

TEST(Cli, ForwardOnIdsAndRandomBatch) {
  Result r = run("forward --model tiny --ids 1,2,3,4,5 --device cpu");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("top tokens"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("finite yes"), std::string::npos) << r.out;
  r = run("forward --model " + kGolden + "tiny.json --weights " + kGolden + "tiny.safetensors --batch 2 --seq 9");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("batch 1, last position"), std::string::npos) << r.out;
}

TEST(Cli, InitWritesLoadableWeights) {
  const std::string p = (std::filesystem::temp_directory_path() / "minillm_cli_init.safetensors").string();
  Result r = run("init --model tiny --seed 5 --out " + p);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run("forward --model tiny --weights " + p + " --ids 7,8,9");
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
  expect_fail("forward --model tiny --ids 1 --device tpu", "device");
  expect_fail("forward --model tiny", "give --ids");
  expect_fail("info", "--model");
}
