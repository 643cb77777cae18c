// Text in, text out: a tokenizer loaded from a model directory, exact to Hugging Face `tokenizers`.
//
//   auto tok = minillm::Tokenizer::from_dir("models/olmoe");   // tokenizer.json, else tokenizer.model
//   std::vector<int32_t> ids = tok->encode("Hello world");      // + BOS/EOS as the file says
//   std::string text = tok->decode(ids);
//   minillm::IncrementalDecoder dec(*tok);                      // streaming: whole UTF-8 characters only
//   for (int32_t id : ids) std::cout << dec.push(id);
//   std::cout << dec.flush();
//
// Supported: tokenizer.json with a BPE model (byte-level or SentencePiece-style with byte fallback),
// the normalizers, pre-tokenizers, post-processors and decoders that GPT-2, GPT-NeoX/OLMoE,
// Llama-3, Qwen2/3, DeepSeek and Mistral/Mixtral files use, added/special tokens; tokenizer.model
// (SentencePiece) through libsentencepiece. A file that uses anything else is an error naming it.
// Input text must be valid UTF-8: invalid bytes are an error naming their offset.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace minillm {

namespace text {
class TokenizerImpl;  // src/text/: tokenizer.json (hf_tokenizer.cpp) or tokenizer.model (sp_tokenizer.cpp)
}

class Tokenizer {
 public:
  // A model directory: tokenizer.json if present, else tokenizer.model; tokenizer_config.json (when
  // present) gives bos/eos tokens and add_bos_token/add_eos_token. Errors name the file and the problem.
  static std::unique_ptr<Tokenizer> from_dir(const std::string& dir);
  // One file: a tokenizer.json or a SentencePiece .model (by content), optionally with a tokenizer_config.json.
  static std::unique_ptr<Tokenizer> from_file(const std::string& path, const std::string& config_path = "");
  // The text of a tokenizer.json; `name` stands for the file in error messages.
  static std::unique_ptr<Tokenizer> from_json(const std::string& content, const std::string& name = "tokenizer.json");

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // text -> ids; add_special_tokens adds what the post-processor (or tokenizer_config) asks: BOS/EOS.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // ids -> text, as Hugging Face's decode does (ids outside the vocabulary are skipped, as there).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;            // number of ids (model vocabulary plus added tokens)
  int32_t bos_token_id() const;          // -1 when none
  int32_t eos_token_id() const;          // -1 when none
  std::string id_to_token(int32_t id) const;   // the token's string as stored in the file; "" if none
  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  bool is_special(int32_t id) const;     // special added tokens / control pieces
  std::string kind() const;              // "tokenizer.json (BPE, byte-level)" etc., for messages

  const text::TokenizerImpl& impl() const { return *impl_; }

 private:
  explicit Tokenizer(std::unique_ptr<text::TokenizerImpl> impl);
  std::unique_ptr<text::TokenizerImpl> impl_;
};

// Streaming detokenizer: push ids one at a time; each call returns the text that is now final
// (whole UTF-8 characters only; a byte-fallback run is held until it ends). The concatenation of
// all push() results and flush() equals tok.decode(all ids, skip_special_tokens).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string flush();  // the held-back rest (possibly with U+FFFD for an unfinished sequence)

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;   // ids still inside the decode window
  std::string prefix_text_;    // decode(ids_[0:read_]) : text of the window already emitted
  size_t read_ = 0;            // ids_[0:read_] are emitted
};

// Stop strings matched on generated text across token boundaries. feed() takes the streamed text
// and returns what may be shown now: text that cannot be the start of a stop string is released,
// the rest is held until it is decided. Once a stop string is found, stopped() is true and the
// released text ends just before it (the stop string itself is not shown).
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);
  std::string feed(std::string_view text);
  std::string flush();  // at the end without a stop: the held text
  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }  // the stop string that ended the text

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
  std::string matched_;
};

// Generated ids -> text to print, for `generate`: the incremental decoder followed by the stop
// string matcher. push() returns the text to show now; once stopped() the generation should end
// (the stop string and anything after it are not shown); finish() returns the held rest.
class TextStreamer {
 public:
  TextStreamer(const Tokenizer& tok, std::vector<std::string> stops, bool skip_special_tokens = true)
      : dec_(tok, skip_special_tokens), stop_(std::move(stops)) {}
  std::string push(int32_t id) { return stop_.stopped() ? std::string() : stop_.feed(dec_.push(id)); }
  std::string finish() {
    std::string out = stop_.feed(dec_.flush());
    return out + stop_.flush();
  }
  bool stopped() const { return stop_.stopped(); }
  const std::string& matched() const { return stop_.matched(); }

 private:
  IncrementalDecoder dec_;
  StopStringMatcher stop_;
};

// Checks that `s` is valid UTF-8; throws minillm::Error naming `what` and the first bad byte's offset.
void check_utf8(std::string_view s, std::string_view what);

}  // namespace minillm
