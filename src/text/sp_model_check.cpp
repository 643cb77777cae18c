// The wire-format walk of sp_model_check.h. Protobuf wire format: a message is a sequence of
// (tag varint = field << 3 | wire type, value); wire type 0 varint, 1 eight bytes, 2 a varint length
// then that many bytes, 5 four bytes; 3 and 4 (groups) are not used by SentencePiece and are refused.
#include "text/sp_model_check.h"

#include <cstdint>
#include <sstream>

namespace minillm::text {
namespace {

struct Walker {
  std::string_view buf;
  std::string problem;

  bool fail(size_t at, const std::string& what) {
    std::ostringstream s;
    s << what << " at byte " << at;
    problem = s.str();
    return false;
  }

  bool varint(size_t& pos, size_t end, uint64_t& v) {
    const size_t start = pos;
    v = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos >= end) return fail(start, "truncated varint");
      const auto b = static_cast<uint8_t>(buf[pos++]);
      v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
      if (!(b & 0x80)) return true;
    }
    return fail(start, "varint longer than 10 bytes");
  }

  // One message in buf[begin, end): every tag and value well-formed; on_field(field, wire, tag offset,
  // value begin, value end) may check a field further.
  template <typename OnField>
  bool message(size_t begin, size_t end, OnField&& on_field) {
    size_t pos = begin;
    while (pos < end) {
      const size_t at = pos;
      uint64_t tag = 0;
      if (!varint(pos, end, tag)) return false;
      const uint64_t field = tag >> 3;
      const auto wire = static_cast<int>(tag & 7);
      if (field == 0 || field > (1u << 29) - 1) return fail(at, "field number " + std::to_string(field));
      size_t vb = pos, ve = pos;
      if (wire == 0) {
        uint64_t v = 0;
        if (!varint(pos, end, v)) return false;
        ve = pos;
      } else if (wire == 1 || wire == 5) {
        const size_t n = wire == 1 ? 8 : 4;
        if (end - pos < n) return fail(at, "truncated fixed-size field " + std::to_string(field));
        pos += n;
        ve = pos;
      } else if (wire == 2) {
        uint64_t len = 0;
        if (!varint(pos, end, len)) return false;
        if (len > end - pos) return fail(at, "field " + std::to_string(field) + " of " + std::to_string(len) +
                                                 " bytes runs past its message");
        vb = pos;
        pos += static_cast<size_t>(len);
        ve = pos;
      } else {
        return fail(at, "wire type " + std::to_string(wire) + " of field " + std::to_string(field));
      }
      if (!on_field(field, wire, at, vb, ve)) return false;
    }
    return true;
  }
};

}  // namespace

std::string sp_model_problem(std::string_view bytes) {
  Walker w{bytes, {}};
  if (bytes.empty()) return "empty file";
  size_t pieces = 0;
  auto any = [](uint64_t, int, size_t, size_t, size_t) { return true; };
  const bool ok = w.message(0, bytes.size(), [&](uint64_t field, int wire, size_t at, size_t vb, size_t ve) {
    if (field > 5) return true;  // extensions and unknown fields: well-formed is enough
    if (wire != 2) return w.fail(at, "field " + std::to_string(field) + " is not length-delimited");
    if (field == 1) ++pieces;
    return w.message(vb, ve, any);
  });
  if (!ok) return w.problem;
  if (pieces == 0) return "no pieces (field 1)";
  return "";
}

}  // namespace minillm::text
