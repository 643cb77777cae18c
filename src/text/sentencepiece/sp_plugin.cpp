// libminillm_sentencepiece.so: libsentencepiece behind the C function table of sp_api.h. Built as a
// separate module (CMake target minillm_sentencepiece) and loaded on demand by sp_tokenizer.cpp.
// Every entry point catches what the library throws; results and errors go to thread-local storage.
#include <sentencepiece_processor.h>

#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "text/sentencepiece/sp_api.h"

namespace {

using sentencepiece::SentencePieceProcessor;
const SentencePieceProcessor& P(const void* sp) { return *static_cast<const SentencePieceProcessor*>(sp); }

thread_local std::string t_error;
thread_local std::string t_text;
thread_local std::vector<int> t_ids;

// Runs `call` (returns a sentencepiece status); 1 on success, else 0 with t_error set.
template <typename Call>
int guarded(Call&& call) {
  try {
    const auto st = call();
    if (st.ok()) return 1;
    t_error = st.ToString();
  } catch (const std::exception& e) {
    t_error = e.what();
  } catch (...) {
    t_error = "unknown error";
  }
  return 0;
}

void* load(const char* model, size_t bytes) {
  SentencePieceProcessor* sp = nullptr;
  try {
    sp = new SentencePieceProcessor();
  } catch (const std::exception& e) {
    t_error = e.what();
    return nullptr;
  }
  if (guarded([&] { return sp->LoadFromSerializedProto(std::string_view(model, bytes)); })) return sp;
  delete sp;
  return nullptr;
}

const char* last_error() { return t_error.c_str(); }
void destroy(void* sp) { delete static_cast<SentencePieceProcessor*>(sp); }

int encode(const void* sp, const char* text, size_t bytes, const int** ids, size_t* count) {
  t_ids.clear();
  const int ok = guarded([&] { return P(sp).Encode(std::string_view(text, bytes), &t_ids); });
  *ids = t_ids.data();
  *count = ok ? t_ids.size() : 0;
  return ok;
}

int decode(const void* sp, const int* ids, size_t count, const char** text, size_t* bytes) {
  t_text.clear();
  const int ok = guarded([&] { return P(sp).Decode(std::vector<int>(ids, ids + count), &t_text); });
  *text = t_text.data();
  *bytes = ok ? t_text.size() : 0;
  return ok;
}

int piece_size(const void* sp) { return P(sp).GetPieceSize(); }
void id_to_piece(const void* sp, int id, const char** piece, size_t* bytes) {
  try {
    t_text = P(sp).IdToPiece(id);
  } catch (const std::exception&) {
    t_text.clear();
  }
  *piece = t_text.data();
  *bytes = t_text.size();
}
int piece_to_id(const void* sp, const char* piece, size_t bytes) {
  return P(sp).PieceToId(std::string_view(piece, bytes));
}
int is_control(const void* sp, int id) { return P(sp).IsControl(id) ? 1 : 0; }
int is_byte(const void* sp, int id) { return P(sp).IsByte(id) ? 1 : 0; }
int bos_id(const void* sp) { return P(sp).bos_id(); }
int eos_id(const void* sp) { return P(sp).eos_id(); }

const minillm::text::SpApi kApi{minillm::text::kSpApiVersion, load, last_error, destroy, encode, decode, piece_size,
                                id_to_piece, piece_to_id, is_control, is_byte, bos_id, eos_id};

}  // namespace

extern "C" __attribute__((visibility("default"))) const minillm::text::SpApi* minillm_sentencepiece_api() {
  return &kApi;
}
