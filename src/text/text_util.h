// UTF-8 helpers and a PCRE2 regex wrapper shared by the tokenizer pieces.
//
// Regexes are compiled with PCRE2_UTF | PCRE2_UCP so that \p{L}, \p{N}, \s and \w are Unicode
// classes, as in the Oniguruma / Rust regex engines that Hugging Face `tokenizers` uses; JIT when
// available. Input strings are validated UTF-8 before any match (PCRE2_NO_UTF_CHECK then).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "minillm/core/check.h"

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

// A user-facing check: throws minillm::Error with the message alone (no expression or source line).
#define MINILLM_TEXT_REQUIRE(cond, msg) \
  do {                                  \
    if (!(cond)) MINILLM_FAIL(msg);     \
  } while (0)

namespace minillm::text {

// Byte length of the UTF-8 sequence that starts with `lead` (1 for invalid leads).
inline int utf8_len(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes one code point of valid UTF-8 at s[i], advancing i.
inline char32_t utf8_next(std::string_view s, size_t& i) {
  const auto b = static_cast<uint8_t>(s[i]);
  const int n = utf8_len(b);
  char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) c = (c << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
  i += n;
  return c;
}

void utf8_append(std::string& out, char32_t c);

// At most n bytes of s for an error message, cut at a character boundary ("..." when cut).
inline std::string excerpt(std::string_view s, size_t n = 64) {
  if (s.size() <= n) return std::string(s);
  while (n > 0 && (static_cast<uint8_t>(s[n]) & 0xC0) == 0x80) --n;
  return std::string(s.substr(0, n)) + "...";
}

// Offset of the first invalid byte, or npos when `s` is valid UTF-8 (no surrogates, <= U+10FFFF).
size_t utf8_invalid_at(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Length of the tail of `bytes` that is an incomplete (but so far valid) UTF-8 sequence: 0..3.
size_t utf8_incomplete_tail(std::string_view bytes);

bool is_unicode_whitespace(char32_t c);  // Rust char::is_whitespace (Unicode White_Space)

// A compiled PCRE2 regex. find_all() gives the non-overlapping matches left to right, as
// Oniguruma's / Rust's find_iter do (an empty match advances by one character).
class Regex {
 public:
  Regex() = default;
  Regex(const std::string& pattern, const std::string& what);  // `what` names it in errors
  Regex(Regex&& o) noexcept;
  Regex& operator=(Regex&& o) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();
  bool valid() const { return code_ != nullptr; }
  // Matches in s (valid UTF-8) as [begin, end) byte offsets.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
};

}  // namespace minillm::text
