// Message excerpts and overflow-checked size arithmetic (include/minillm/core/check.h).
#include "minillm/core/check.h"

namespace minillm {

std::string excerpt(std::string_view s, size_t max_chars) {
  // Control bytes print as \xNN so that a message stays one line.
  std::string out = "'";
  const std::string_view head = s.substr(0, max_chars);
  for (const char ch : head) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  if (s.size() > max_chars) {
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
