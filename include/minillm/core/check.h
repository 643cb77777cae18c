// Errors: one exception type, and CHECK macros that name the failing expression, file and line.
// User input is validated once at the public boundary with messages that name the field and value.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace minillm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void fail(const char* file, int line, const char* expr, const std::string& msg) {
  std::ostringstream os;
  os << msg;
  if (expr) os << " [check '" << expr << "' failed at " << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail
}  // namespace minillm

// MINILLM_CHECK(cond, "field = " << value << " must be ...") throws minillm::Error when !cond.
#define MINILLM_CHECK(cond, msg)                                          \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::ostringstream minillm_os_;                                     \
      minillm_os_ << msg;                                                 \
      ::minillm::detail::fail(__FILE__, __LINE__, #cond, minillm_os_.str()); \
    }                                                                     \
  } while (0)

// MINILLM_FAIL(msg) throws minillm::Error with the message alone (for user-facing input errors).
#define MINILLM_FAIL(msg)                 \
  do {                                    \
    std::ostringstream minillm_os_;       \
    minillm_os_ << msg;                   \
    throw ::minillm::Error(minillm_os_.str()); \
  } while (0)
