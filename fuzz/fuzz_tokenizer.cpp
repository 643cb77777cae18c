// libFuzzer target: the tokenizer.json loader (Tokenizer::from_json) on arbitrary bytes, then the
// loaded tokenizer on a few texts and on ids taken from the input; and the tokenizer.model check
// (sp_model_check.h: the bytes' protobuf wire format) and, for a SentencePiece BPE model, the C++ reader
// of sp_bpe.h on the same texts and ids.
// Contract: any input either throws minillm::Error with a bounded message, or loads a tokenizer
// whose encode gives ids inside the vocabulary (or throws minillm::Error, e.g. a regex hitting its
// match limit), whose decode and streamed pieces are valid UTF-8, and which never crashes, leaks or
// runs into UB (ASan/UBSan watch). Streamed pieces are checked to concatenate to decode only for
// the decoders docs/TOKENIZER.md covers, not here. Run: scripts/fuzz.sh [seconds] tokenizer; seeds
// in fuzz/corpus/tokenizer/, dictionary fuzz/tokenizer.dict.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "minillm/core/check.h"
#include "minillm/tokenizer.h"
#include "text/sp_bpe.h"
#include "text/sp_model_check.h"
#include "text/text_util.h"

namespace {
const char* const kTexts[] = {
    "Hello world! It's 2026, 12345678 tokens.", "  tabs\tand\n\nnewlines  ", "\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
    "<s>special</s><|endoftext|>", "", "e\xCC\x81 \xEF\xAC\x81 \xC2\x85",
};

bool valid(const std::string& s) { return minillm::text::utf8_invalid_at(s) == std::string::npos; }
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string content(reinterpret_cast<const char*>(data), size);
  const std::string sp_problem = minillm::text::sp_model_problem(content);
  if (sp_problem.size() > 256) std::abort();  // bounded messages
  if (sp_problem.empty() && minillm::text::sp_bpe_unsupported(content).empty()) {
    try {
      const minillm::text::SpBpeModel m(content, "tokenizer.model");
      std::vector<int32_t> ids;
      for (const char* t : kTexts) m.encode(t, ids);
      for (size_t i = 0; i + 2 <= size && i < 64; i += 2) ids.push_back((data[i] | (data[i + 1] << 8)) % m.size());
      for (int32_t id : ids) if (id < 0 || id >= m.size()) std::abort();
      if (!valid(m.decode(ids))) std::abort();
    } catch (const minillm::Error& e) {
      if (std::strlen(e.what()) > 2048 || !valid(e.what())) std::abort();
    }
  }
  std::unique_ptr<minillm::Tokenizer> tok;
  try {
    tok = minillm::Tokenizer::from_json(content);
  } catch (const minillm::Error& e) {
    if (std::strlen(e.what()) > 2048 || !valid(e.what())) std::abort();  // bounded, printable messages
    return 0;
  }
  const int32_t n = tok->vocab_size();
  auto check_decode = [&](const std::vector<int32_t>& ids) {
    const std::string whole = tok->decode(ids);
    if (!valid(whole) || !valid(tok->decode(ids, true))) std::abort();
    minillm::IncrementalDecoder dec(*tok);
    for (int32_t id : ids) if (!valid(dec.push(id))) std::abort();
    if (!valid(dec.flush())) std::abort();
  };
  for (const char* t : kTexts) {
    std::vector<int32_t> ids;
    try {
      ids = tok->encode(t);
    } catch (const minillm::Error& e) {
      if (std::strlen(e.what()) > 2048) std::abort();
      continue;
    }
    for (int32_t id : ids) if (id < 0 || id >= n) std::abort();
    check_decode(ids);
  }
  // ids from the input's last bytes, in and out of the vocabulary
  std::vector<int32_t> ids;
  for (size_t i = size > 64 ? size - 64 : 0; i + 2 <= size; i += 2)
    ids.push_back(static_cast<int32_t>((data[i] | (data[i + 1] << 8)) % (n + 2)) - 1);
  check_decode(ids);
  return 0;
}
