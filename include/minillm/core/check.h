// Errors: one exception type, and CHECK macros that name the failing expression, file and line.
// User input is validated once at the public boundary with messages that name the field and value.
#pragma once
#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace minillm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

// Builds error messages without iostreams: numbers go through std::to_chars, which involves no
// locale. In a process that holds a second copy of libstdc++'s locale machinery (a Python process
// with torch loaded), formatting a number through std::ostream crashed inside our module.
class Message {
 public:
  Message& operator<<(const std::string& s) { s_ += s; return *this; }
  Message& operator<<(std::string_view s) { s_ += s; return *this; }
  Message& operator<<(const char* s) { s_ += s ? s : "(null)"; return *this; }
  Message& operator<<(char c) { s_ += c; return *this; }
  Message& operator<<(bool b) { s_ += b ? "true" : "false"; return *this; }
  template <typename T>
    requires std::is_arithmetic_v<T>
  Message& operator<<(T v) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    s_.append(buf, r.ptr);
    return *this;
  }
  template <typename T>
    requires std::is_enum_v<T>
  Message& operator<<(T v) {  // enums (status codes) print as their value
    return *this << static_cast<std::underlying_type_t<T>>(v);
  }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

[[noreturn]] inline void fail(const char* file, int line, const char* expr, const std::string& msg) {
  Message m;
  m << msg;
  if (expr) m << " [check '" << expr << "' failed at " << file << ":" << line << "]";
  throw Error(m.str());
}
}  // namespace detail

// `s` for an error message: whole when short, else its first `max_chars` bytes, "..." and the length
// ("'abc...' (100000 bytes)"). Messages never echo an unbounded value from a file or a request.
std::string excerpt(std::string_view s, size_t max_chars = 64);

// a * b and a + b for sizes: throws minillm::Error "<what> = a x b overflows 64 bits" on overflow.
int64_t checked_mul(int64_t a, int64_t b, const char* what);
int64_t checked_add(int64_t a, int64_t b, const char* what);

}  // namespace minillm

// MINILLM_CHECK(cond, "field = " << value << " must be ...") throws minillm::Error when !cond.
#define MINILLM_CHECK(cond, msg)                                          \
  do {                                                                    \
    if (!(cond)) {                                                        \
      ::minillm::detail::Message minillm_os_;                             \
      minillm_os_ << msg;                                                 \
      ::minillm::detail::fail(__FILE__, __LINE__, #cond, minillm_os_.str()); \
    }                                                                     \
  } while (0)

// MINILLM_FAIL(msg) throws minillm::Error with the message alone (for user-facing input errors).
#define MINILLM_FAIL(msg)                 \
  do {                                    \
    ::minillm::detail::Message minillm_os_; \
    minillm_os_ << msg;                   \
    throw ::minillm::Error(minillm_os_.str()); \
  } while (0)
