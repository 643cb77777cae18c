// SentencePiece BPE models (tokenizer.model of the Llama / Mistral / Mixtral family) in C++, without
// libsentencepiece: the ModelProto is read with the wire-format walker of sp_model_check.h.
//
// Supported: model_type BPE, no precompiled normalization map (the "identity" normalizer), whitespace
// as a prefix. sp_bpe_supported() says whether a model is one of these; the others go to
// libsentencepiece (sp_tokenizer.cpp).
// Encode (SentencePiece's bpe_model.cc and sentencepiece_processor.cc, same results): the text's
// spaces become U+2581, one is prepended (add_dummy_prefix); user-defined pieces are matched longest
// first and never merged; the other characters are the initial symbols; the adjacent pair whose
// concatenation is a piece with the highest score is merged first (ties: the leftmost), until no pair
// is a piece; an unused piece is split back into the two it was merged from; a symbol that is no piece
// becomes its UTF-8 bytes <0xNN> (byte_fallback) or the unknown id (a run of them: one id).
// Decode: control ids vanish, the unknown id is unk_surface (" \u2047 "), runs of byte pieces are
// decoded as UTF-8 (an invalid byte: U+FFFD), U+2581 becomes a space, and the first piece's leading
// one is dropped (add_dummy_prefix).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "text/bpe.h"

namespace minillm::text {

class SpBpeModel {
 public:
  // bytes: a file that passed sp_model_problem(); path names it in errors.
  SpBpeModel(std::string_view bytes, const std::string& path);

  void encode(std::string_view text, std::vector<int32_t>& out) const;  // text: valid UTF-8
  std::string decode(std::span<const int32_t> ids) const;  // ids: in [0, size())

  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const { return pieces_[id].text; }
  int32_t piece_to_id(std::string_view piece) const;  // the unknown id when it is no piece
  bool is_control(int32_t id) const { return pieces_[id].type == kControl; }
  bool is_byte(int32_t id) const { return pieces_[id].type == kByte; }
  bool is_unknown(int32_t id) const { return pieces_[id].type == kUnknown; }
  int32_t bos_id() const { return control_id(bos_piece_); }
  int32_t eos_id() const { return control_id(eos_piece_); }

 private:
  enum Type : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string text;
    float score = 0.0f;
    int type = kNormal;
  };
  struct Symbol {
    size_t begin, len;  // bytes of the normalized text
    int prev, next;
    bool frozen;  // a user-defined piece
  };
  int32_t control_id(const std::string& piece) const {
    const int32_t id = piece_to_id(piece);
    return id >= 0 && is_control(id) ? id : -1;
  }
  int32_t mergeable_id(std::string_view s) const;  // normal, user-defined or unused piece; else -1
  void emit(std::string_view s, std::vector<int32_t>& out, bool& prev_unknown) const;

  std::vector<Piece> pieces_;
  StringMap mergeable_;  // normal, user-defined and unused pieces
  StringMap reserved_;   // control, unknown and byte pieces
  std::vector<std::string> user_defined_;  // longest first
  int32_t byte_ids_[256];
  std::vector<int16_t> byte_value_;  // per id: the byte of a byte piece, else -1
  int32_t unk_id_ = 0;
  bool byte_fallback_ = false, add_dummy_prefix_ = true, escape_whitespaces_ = true;
  std::string unk_surface_ = " \xE2\x81\x87 ", bos_piece_ = "<s>", eos_piece_ = "</s>";
};

// Whether the model is one SpBpeModel reads (an empty string) or why not.
std::string sp_bpe_unsupported(std::string_view bytes);

}  // namespace minillm::text
