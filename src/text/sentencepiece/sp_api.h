// The SentencePiece plugin's interface (libminillm_sentencepiece.so, sp_plugin.cpp): a table of C
// functions over an opaque processor. The plugin is the only code that links libsentencepiece and
// its protobuf runtime; the core library dlopens it (sp_tokenizer.cpp) the first time a
// tokenizer.model is loaded. Why: a process that has imported PyTorch crashes when a second
// protobuf runtime is initialised in it at load time (the Python extension used to link them), and
// most minillm processes never read a tokenizer.model.
// Only C types cross the boundary (bytes as pointer + length, ints): the plugin and the core may be
// bound to different C++ runtimes, so neither hands the other a std::string, a container or an
// exception. Results and errors live in the plugin's storage of the calling thread, valid until that
// thread's next call.
#pragma once
#include <cstddef>

namespace minillm::text {

struct SpApi {
  int version;                                      // kSpApiVersion
  void* (*load)(const char* model, size_t bytes);  // null on error (last_error)
  const char* (*last_error)();                      // the calling thread's last error, NUL-terminated
  void (*destroy)(void* sp);
  // 1: ids [count] of text; 0: error.
  int (*encode)(const void* sp, const char* text, size_t bytes, const int** ids, size_t* count);
  // 1: text [bytes] of ids; 0: error.
  int (*decode)(const void* sp, const int* ids, size_t count, const char** text, size_t* bytes);
  int (*piece_size)(const void* sp);
  void (*id_to_piece)(const void* sp, int id, const char** piece, size_t* bytes);
  int (*piece_to_id)(const void* sp, const char* piece, size_t bytes);  // unk_id for unknown pieces
  int (*is_control)(const void* sp, int id);
  int (*is_byte)(const void* sp, int id);
  int (*bos_id)(const void* sp);
  int (*eos_id)(const void* sp);
};
constexpr int kSpApiVersion = 2;
constexpr const char* kSpPluginFile = "libminillm_sentencepiece.so";
constexpr const char* kSpApiSymbol = "minillm_sentencepiece_api";

}  // namespace minillm::text
