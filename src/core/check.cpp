// Message excerpts and overflow-checked size arithmetic (include/minillm/core/check.h).
#include "minillm/core/check.h"

namespace minillm {

namespace {
// Length of the valid UTF-8 sequence starting at s[i] (1-4), or 0 when the bytes there are not one.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  uint32_t cp = n == 1 ? c : c & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (d & 0x3f);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;  // overlong, too big, surrogate
  return n;
}
}  // namespace

std::string excerpt(std::string_view s, size_t max_chars) {
  // Control bytes and bytes that are not valid UTF-8 print as \xNN, so that a message stays one
  // line of valid UTF-8 (Python decodes it into a str); the cut never splits a character.
  std::string out = "'";
  size_t i = 0;
  while (i < s.size() && i < max_chars) {
    const size_t n = utf8_sequence(s, i);
    const auto c = static_cast<unsigned char>(s[i]);
    if (n == 0 || c < 0x20 || c == 0x7f) {
      const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
      ++i;
    } else if (i + n > max_chars) {
      break;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  if (i < s.size()) {
    detail::Message m;
    m << "...' (" << s.size() << " bytes)";
    return out + m.str();
  }
  return out + "'";
}

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) MINILLM_FAIL(what << " = " << a << " x " << b << " overflows 64 bits");
  return r;
}

int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) MINILLM_FAIL(what << " = " << a << " + " << b << " overflows 64 bits");
  return r;
}

}  // namespace minillm
