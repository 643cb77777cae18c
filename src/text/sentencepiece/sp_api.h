// The SentencePiece plugin's interface (libminillm_sentencepiece.so, sp_plugin.cpp): a table of
// functions over an opaque processor. The plugin is the only code that links libsentencepiece and
// its libprotobuf-lite; the core library dlopens it (sp_tokenizer.cpp) the first time a
// tokenizer.model is loaded. Why: a process that has imported PyTorch crashes when a second
// protobuf runtime is initialised in it at load time (the Python extension used to link them), and
// most minillm processes never read a tokenizer.model. Errors come back as strings; nothing throws
// across the boundary.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace minillm::text {

struct SpApi {
  int version;                                                        // kSpApiVersion
  void* (*load)(const std::string& serialized, std::string& error);   // null on error
  void (*destroy)(void* sp);
  bool (*encode)(const void* sp, std::string_view text, std::vector<int>& ids, std::string& error);
  bool (*decode)(const void* sp, const std::vector<int>& ids, std::string& text, std::string& error);
  int (*piece_size)(const void* sp);
  void (*id_to_piece)(const void* sp, int id, std::string& piece);
  int (*piece_to_id)(const void* sp, std::string_view piece);  // unk_id for unknown pieces
  bool (*is_control)(const void* sp, int id);
  bool (*is_byte)(const void* sp, int id);
  int (*bos_id)(const void* sp);
  int (*eos_id)(const void* sp);
};
constexpr int kSpApiVersion = 1;
constexpr const char* kSpPluginFile = "libminillm_sentencepiece.so";
constexpr const char* kSpApiSymbol = "minillm_sentencepiece_api";

}  // namespace minillm::text
