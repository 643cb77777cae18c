// libFuzzer target: the model config parser (parse_config_json) on arbitrary bytes.
// Contract: any input either parses into a config that validates, round-trips through
// config_to_json unchanged and whose derived sizes are exact, or throws minillm::Error with a
// bounded message. Anything else (another exception, a crash, UB, a leak, a huge message) is a bug.
// Run: scripts/fuzz.sh [seconds]; seeds in fuzz/corpus/config/, dictionary fuzz/config.dict.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "minillm/config.h"
#include "minillm/core/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  minillm::ModelConfig c;
  try {
    c = minillm::parse_config_json(text);
  } catch (const minillm::Error& e) {
    if (std::string(e.what()).size() > 1024) std::abort();  // messages quote excerpts only
    return 0;
  }
  // Accepted: the derived quantities are computed without overflow (UBSan watches) ...
  if (c.num_parameters() <= 0 || c.num_active_parameters() <= 0 || c.num_active_parameters() > c.num_parameters())
    std::abort();
  if (!(c.flops_per_token(c.max_seq_len) > 0)) std::abort();
  // ... and the config survives a round trip unchanged.
  const std::string once = minillm::config_to_json(c);
  const std::string twice = minillm::config_to_json(minillm::parse_config_json(once));
  if (once != twice) std::abort();
  return 0;
}
