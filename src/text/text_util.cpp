// UTF-8 helpers (validation, lossy decoding with maximal-subpart replacement) and the PCRE2 wrapper.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/text_util.h"

#include <pcre2.h>

#include "minillm/core/check.h"

namespace minillm::text {

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

namespace {
// For a lead byte: the number of continuation bytes and the valid range of the first one
// (Unicode Table 3-7, well-formed UTF-8). need = -1 for bytes that cannot start a sequence.
struct Lead {
  int need;
  uint8_t lo, hi;
};
Lead lead_info(uint8_t b) {
  if (b < 0x80) return {0, 0, 0};
  if (b < 0xC2) return {-1, 0, 0};
  if (b < 0xE0) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b < 0xF0) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b < 0xF4) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {-1, 0, 0};
}
// Length of the valid (possibly incomplete) prefix of the sequence at s[i]; `complete` says
// whether it is a whole character.
size_t valid_prefix(std::string_view s, size_t i, bool& complete) {
  const Lead l = lead_info(static_cast<uint8_t>(s[i]));
  complete = false;
  if (l.need < 0) return 0;
  if (l.need == 0) { complete = true; return 1; }
  size_t k = 1;
  for (int c = 0; c < l.need; ++c, ++k) {
    if (i + k >= s.size()) return k;
    const auto b = static_cast<uint8_t>(s[i + k]);
    const uint8_t lo = c == 0 ? l.lo : 0x80, hi = c == 0 ? l.hi : 0xBF;
    if (b < lo || b > hi) return k;
  }
  complete = true;
  return k;
}
}  // namespace

size_t utf8_invalid_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) { ++i; continue; }
    bool complete;
    const size_t n = valid_prefix(s, i, complete);
    if (!complete) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) { out += s[i++]; continue; }
    bool complete;
    const size_t n = valid_prefix(s, i, complete);
    if (complete) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += n == 0 ? 1 : n;
    }
  }
  return out;
}

size_t utf8_incomplete_tail(std::string_view s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t i = s.size() - back;
    const auto b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) return 0;
    if (b >= 0xC0) {  // a lead: is the rest a valid but unfinished sequence?
      bool complete;
      const size_t n = valid_prefix(s, i, complete);
      return (!complete && n == back) ? back : 0;
    }
  }
  return 0;
}

bool is_unicode_whitespace(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

Regex::Regex(const std::string& pattern, const std::string& what) {
  int err = 0;
  PCRE2_SIZE off = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code_) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    MINILLM_FAIL(what << ": regex " << excerpt(pattern) << " does not compile at offset " << off << ": "
                      << reinterpret_cast<const char*>(buf));
  }
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when unavailable
}

Regex::Regex(Regex&& o) noexcept : code_(o.code_) { o.code_ = nullptr; }
Regex& Regex::operator=(Regex&& o) noexcept {
  std::swap(code_, o.code_);
  return *this;
}
Regex::~Regex() {
  if (code_) pcre2_code_free(code_);
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  struct MatchData {  // one per thread, grown on demand
    pcre2_match_data* md = nullptr;
    ~MatchData() { if (md) pcre2_match_data_free(md); }
  };
  thread_local MatchData tl;
  if (!tl.md) tl.md = pcre2_match_data_create(32, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t start = 0;
  while (start <= s.size()) {
    const int rc = pcre2_match(code_, subject, s.size(), start, PCRE2_NO_UTF_CHECK, tl.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {  // a match or depth limit on a pathological pattern: an error, not a wrong split
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof buf);
      MINILLM_FAIL("regex match failed: " << reinterpret_cast<const char*>(buf));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(tl.md);
    const size_t b = ov[0], e = ov[1];
    out.emplace_back(b, e);
    if (e > b) {
      start = e;
    } else {  // empty match: step over one character
      if (e >= s.size()) break;
      start = e + utf8_len(static_cast<uint8_t>(s[e]));
    }
  }
}

}  // namespace minillm::text
