// Runs the minillm CLI (MINILLM_CLI, set by CMake) with `args` through the shell, stdout and stderr
// together: the exit code (-1 when it did not exit) and the output. cwd: where to run it ("" = here).
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>

namespace minillm::test {

struct CliResult {
  int code;
  std::string out;
};

inline CliResult run_cli(const std::string& args, const std::string& cwd = "") {
  const std::string cmd = (cwd.empty() ? "" : "cd '" + cwd + "' && ") + std::string(MINILLM_CLI) + " " + args + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p.get())) > 0) out.append(buf.data(), n);
  const int status = pclose(p.release());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace minillm::test
