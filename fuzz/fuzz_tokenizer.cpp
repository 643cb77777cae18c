// libFuzzer target: the tokenizer.json loader (load_hf_tokenizer) on arbitrary bytes, then encode
// and decode of a fixed text with whatever loaded. Contract: a minillm::Error, or a tokenizer
// whose encode/decode neither crash nor return negative ids. (Ids at or above vocab_size() can come
// out: a post-processor template may name any id, as in Hugging Face; the engine range-checks ids.)
// Run: scripts/fuzz.sh [seconds] tokenizer; seeds in fuzz/corpus/tokenizer/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "minillm/core/check.h"
#include "text/tokenizer_impl.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string content(reinterpret_cast<const char*>(data), size);
  try {
    auto t = minillm::text::load_hf_tokenizer("tokenizer.json", content, nullptr);
    std::vector<int32_t> ids;
    t->encode("Hello, world! 123 \xc3\xa9t\xc3\xa9 <s> \xe2\x80\x94 \xf0\x9f\x98\x80  \n\tend", true, ids);
    for (int32_t id : ids)
      if (id < 0) std::abort();
    ids.push_back(0);
    ids.push_back(t->vocab_size() + 5);  // out of range: skipped, as in Hugging Face
    (void)t->decode(ids, false);
    (void)t->decode(ids, true);
  } catch (const minillm::Error&) {
  }
  return 0;
}
