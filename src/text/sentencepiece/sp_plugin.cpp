// libminillm_sentencepiece.so: libsentencepiece behind the function table of sp_api.h. Built as a
// separate module (CMake target minillm_sentencepiece) and loaded on demand by sp_tokenizer.cpp.
#include <sentencepiece_processor.h>

#include <exception>

#include "text/sentencepiece/sp_api.h"

namespace {

using sentencepiece::SentencePieceProcessor;
const SentencePieceProcessor& P(const void* sp) { return *static_cast<const SentencePieceProcessor*>(sp); }

void* load(const std::string& serialized, std::string& error) {
  try {
    auto* sp = new SentencePieceProcessor();
    const auto st = sp->LoadFromSerializedProto(serialized);
    if (st.ok()) return sp;
    error = st.ToString();
    delete sp;
  } catch (const std::exception& e) {
    error = e.what();
  }
  return nullptr;
}

void destroy(void* sp) { delete static_cast<SentencePieceProcessor*>(sp); }

// Runs a SentencePiece call that returns a status; false with `error` set when it fails or throws.
template <typename Call>
bool guarded(std::string& error, Call&& call) {
  try {
    const auto st = call();
    if (!st.ok()) error = st.ToString();
    return st.ok();
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
}

bool encode(const void* sp, std::string_view text, std::vector<int>& ids, std::string& error) {
  return guarded(error, [&] { return P(sp).Encode(text, &ids); });
}

bool decode(const void* sp, const std::vector<int>& ids, std::string& text, std::string& error) {
  return guarded(error, [&] { return P(sp).Decode(ids, &text); });
}

int piece_size(const void* sp) { return P(sp).GetPieceSize(); }
void id_to_piece(const void* sp, int id, std::string& piece) { piece = P(sp).IdToPiece(id); }
int piece_to_id(const void* sp, std::string_view piece) { return P(sp).PieceToId(piece); }
bool is_control(const void* sp, int id) { return P(sp).IsControl(id); }
bool is_byte(const void* sp, int id) { return P(sp).IsByte(id); }
int bos_id(const void* sp) { return P(sp).bos_id(); }
int eos_id(const void* sp) { return P(sp).eos_id(); }

const minillm::text::SpApi kApi{minillm::text::kSpApiVersion, load, destroy, encode, decode, piece_size,
                                id_to_piece, piece_to_id, is_control, is_byte, bos_id, eos_id};

}  // namespace

extern "C" __attribute__((visibility("default"))) const minillm::text::SpApi* minillm_sentencepiece_api() {
  return &kApi;
}
