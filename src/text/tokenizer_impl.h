// The interface behind minillm::Tokenizer: one implementation per file format.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace minillm::text {

class TokenizerImpl {
 public:
  virtual ~TokenizerImpl() = default;
  // text is valid UTF-8 (checked by the caller); ids are appended to out.
  virtual void encode(std::string_view text, bool add_special_tokens, std::vector<int32_t>& out) const = 0;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;
  virtual int32_t token_to_id(std::string_view token) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // A byte-fallback token (<0xNN>) whose text depends on the tokens after it: streaming holds it.
  virtual bool is_byte_token(int32_t id) const = 0;
  virtual std::string kind() const = 0;

  int32_t bos_id = -1;
  int32_t eos_id = -1;
};

// tokenizer.json (Hugging Face `tokenizers` format). config: tokenizer_config.json or null.
std::unique_ptr<TokenizerImpl> load_hf_tokenizer(const std::string& path, const std::string& content,
                                                 const nlohmann::json* config);
// tokenizer.model (SentencePiece: BPE in C++, other kinds through libsentencepiece).
std::unique_ptr<TokenizerImpl> load_sp_tokenizer(const std::string& path, const std::string& content,
                                                 const nlohmann::json* config);

// The id of a token named in tokenizer_config.json ("bos_token": "<s>" or {"content": "<s>", ...});
// -1 when the key is absent or null.
int32_t config_token_id(const TokenizerImpl& t, const nlohmann::json* config, const char* key,
                        const std::string& path);

}  // namespace minillm::text
