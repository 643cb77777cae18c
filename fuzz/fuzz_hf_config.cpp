// libFuzzer target: the Hugging Face config.json mapping (parse_hf_config) on arbitrary bytes.
// Contract: a minillm::Error with a bounded message, or an HfConfig whose ModelConfig validates and
// has positive exact counts. Run: scripts/fuzz.sh [seconds] hf_config; seeds in
// fuzz/corpus/hf_config/ (the committed tests/fixtures/hf configs), dictionary fuzz/hf_config.dict.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "minillm/core/check.h"
#include "model/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const minillm::HfConfig h = minillm::parse_hf_config(text, "config.json");
    h.config.validate();
    if (h.config.num_parameters() <= 0 || h.config.num_active_parameters() > h.config.num_parameters()) std::abort();
    (void)minillm::hf_tensor_name(h.model_type, "model.embed_tokens.weight");
  } catch (const minillm::Error& e) {
    if (std::string(e.what()).size() > 4096) std::abort();  // messages quote excerpts, not whole values
  }
  return 0;
}
