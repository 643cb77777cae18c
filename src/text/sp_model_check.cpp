// The wire-format walk of sp_model_check.h. Protobuf wire format: a message is a sequence of
// (tag varint = field << 3 | wire type, value); wire type 0 varint, 1 eight bytes, 2 a varint length
// then that many bytes, 5 four bytes; 3 and 4 (groups) are not used by SentencePiece and are refused.
#include "text/sp_model_check.h"

namespace minillm::text {
namespace {

std::string at_byte(const std::string& what, size_t at) { return what + " at byte " + std::to_string(at); }

// Reads the varint at buf[pos] (before end), advancing pos; "" or the problem.
std::string varint(std::string_view buf, size_t& pos, size_t end, uint64_t& v) {
  const size_t start = pos;
  v = 0;
  for (int i = 0; i < 10; ++i) {
    if (pos >= end) return at_byte("truncated varint", start);
    const auto b = static_cast<uint8_t>(buf[pos++]);
    v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
    if (!(b & 0x80)) return "";
  }
  return at_byte("varint longer than 10 bytes", start);
}

}  // namespace

std::string proto_walk(std::string_view buf, size_t begin, size_t end,
                       const std::function<std::string(const ProtoField&)>& on_field) {
  size_t pos = begin;
  while (pos < end) {
    ProtoField f{};
    f.at = pos;
    uint64_t tag = 0;
    if (std::string p = varint(buf, pos, end, tag); !p.empty()) return p;
    f.number = tag >> 3;
    f.wire = static_cast<int>(tag & 7);
    if (f.number == 0 || f.number > (1u << 29) - 1) return at_byte("field number " + std::to_string(f.number), f.at);
    f.begin = pos;
    if (f.wire == 0) {
      if (std::string p = varint(buf, pos, end, f.varint); !p.empty()) return p;
    } else if (f.wire == 1 || f.wire == 5) {
      const size_t n = f.wire == 1 ? 8 : 4;
      if (end - pos < n) return at_byte("truncated fixed-size field " + std::to_string(f.number), f.at);
      pos += n;
    } else if (f.wire == 2) {
      uint64_t len = 0;
      if (std::string p = varint(buf, pos, end, len); !p.empty()) return p;
      if (len > end - pos)
        return at_byte("field " + std::to_string(f.number) + " of " + std::to_string(len) + " bytes runs past its message", f.at);
      f.begin = pos;
      pos += static_cast<size_t>(len);
    } else {
      return at_byte("wire type " + std::to_string(f.wire) + " of field " + std::to_string(f.number), f.at);
    }
    f.end = pos;
    if (std::string p = on_field(f); !p.empty()) return p;
  }
  return "";
}

std::string sp_model_problem(std::string_view bytes) {
  if (bytes.empty()) return "empty file";
  size_t pieces = 0;
  const std::string problem = proto_walk(bytes, 0, bytes.size(), [&](const ProtoField& f) -> std::string {
    if (f.number > 5) return "";  // extensions and unknown fields: well-formed is enough
    if (f.wire != 2) return at_byte("field " + std::to_string(f.number) + " is not length-delimited", f.at);
    if (f.number == 1) ++pieces;
    return proto_walk(bytes, f.begin, f.end, [](const ProtoField&) { return std::string(); });
  });
  if (!problem.empty()) return problem;
  if (pieces == 0) return "no pieces (field 1)";
  return "";
}

}  // namespace minillm::text
