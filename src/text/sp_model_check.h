// A tokenizer.model's bytes checked against the protobuf wire format of SentencePiece's ModelProto
// before any of them reach libsentencepiece and its protobuf runtime: a file that is not one is
// refused here, with the byte offset, and the plugin that holds those libraries is not even loaded.
// The same walk reads the model for sp_bpe.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace minillm::text {

// "" when `bytes` is a well-formed ModelProto message: every field of every level this checks has a
// valid tag (field number 1..2^29-1, wire type varint / 64-bit / length-delimited / 32-bit), varints of
// at most 10 bytes, lengths inside their message; at least one `pieces` entry (field 1), each a
// well-formed SentencePiece message, and the other known fields (trainer_spec 2, normalizer_spec 3,
// self_test_data 4, denormalizer_spec 5) length-delimited well-formed messages. Otherwise the
// first problem found, with its byte offset in the file.
std::string sp_model_problem(std::string_view bytes);

// One field of a protobuf message in a buffer: its number, wire type (0 varint, 1 64-bit, 2
// length-delimited, 5 32-bit), the offset of its tag, its value's bytes [begin, end) and, for a varint,
// the value.
struct ProtoField {
  uint64_t number;
  int wire;
  size_t at, begin, end;
  uint64_t varint;
};

// Walks the message buf[begin, end), calling on_field for each field in order; on_field returns "" to
// go on or a problem to stop with. Returns "" or the first problem ("... at byte N", N an offset in buf).
std::string proto_walk(std::string_view buf, size_t begin, size_t end,
                       const std::function<std::string(const ProtoField&)>& on_field);

}  // namespace minillm::text
