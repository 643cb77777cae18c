// tokenizer.model (SentencePiece): a BPE model of the Llama / Mistral / Mixtral kind in C++ (sp_bpe.h),
// any other through Debian's libsentencepiece (encode/decode are the library's own). BOS/EOS come from
// tokenizer_config.json (add_bos_token defaults to true and add_eos_token to false, as in
// transformers' LlamaTokenizer) or the model's bos/eos ids.
// libsentencepiece (and its protobuf runtime) live in a plugin, libminillm_sentencepiece.so
// (sentencepiece/sp_api.h says why), found beside the binary or Python extension that holds this
// code, or in its parent folder, else on the loader's search path; it is loaded once, on first use,
// with its own symbols bound first (RTLD_DEEPBIND, except under AddressSanitizer, which refuses it).
// A file's bytes reach it only once they parse as a ModelProto (sp_model_check.h).
#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "minillm/core/check.h"
#include "text/sentencepiece/sp_api.h"
#include "text/sp_bpe.h"
#include "text/sp_model_check.h"
#include "text/text_util.h"
#include "text/tokenizer_impl.h"

namespace minillm::text {

using json = nlohmann::json;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

// The plugin's function table, loaded on the first call (thread-safe); throws when it cannot be.
const SpApi& sp_api() {
  static const SpApi* api = nullptr;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    namespace fs = std::filesystem;
    std::vector<std::string> candidates;
    Dl_info info{};
    if (dladdr(reinterpret_cast<const void*>(&sp_api), &info) && info.dli_fname) {
      const fs::path dir = fs::path(info.dli_fname).parent_path();
      candidates.push_back((dir / kSpPluginFile).string());
      candidates.push_back((dir.parent_path() / kSpPluginFile).string());
    }
    candidates.push_back(kSpPluginFile);
    const int flags = RTLD_NOW | RTLD_LOCAL | (kAsan ? 0 : RTLD_DEEPBIND);
    std::ostringstream why;
    for (const std::string& c : candidates) {
      if (c.find('/') != std::string::npos && !fs::exists(c)) continue;
      void* h = dlopen(c.c_str(), flags);
      if (!h) {
        why << "; " << dlerror();
        continue;
      }
      using Get = const SpApi* (*)();
      auto get = reinterpret_cast<Get>(dlsym(h, kSpApiSymbol));
      const SpApi* a = get ? get() : nullptr;
      if (a && a->version == kSpApiVersion) {
        api = a;
        return;
      }
      why << "; " << c << ": no " << kSpApiSymbol << " of version " << kSpApiVersion;
    }
    failure = why.str();
  });
  MINILLM_TEXT_REQUIRE(api, "tokenizer.model needs " << kSpPluginFile << " (built beside minillm; not found or not "
                                                     << "loadable" << failure << ")");
  return *api;
}

// What both tokenizer.model implementations share: BOS/EOS around the text's ids, and ids outside the
// vocabulary (and, when asked, control ids) dropped before decoding, as Hugging Face does.
class SpTokenizerBase : public TokenizerImpl {
 public:
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const final {
    if (add_special && add_bos && bos_id >= 0) out.push_back(bos_id);
    encode_text(text, out);
    if (add_special && add_eos && eos_id >= 0) out.push_back(eos_id);
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special) const final {
    std::vector<int32_t> keep;
    keep.reserve(ids.size());
    for (int32_t id : ids)
      if (id >= 0 && id < vocab_size() && !(skip_special && is_special(id))) keep.push_back(id);
    return decode_ids(keep);
  }
  virtual int32_t model_bos() const = 0;
  virtual int32_t model_eos() const = 0;

  bool add_bos = true, add_eos = false;

 protected:
  virtual void encode_text(std::string_view text, std::vector<int32_t>& out) const = 0;
  virtual std::string decode_ids(std::span<const int32_t> ids) const = 0;  // ids inside the vocabulary
};

// Any tokenizer.model, through libsentencepiece in the plugin.
class SpTokenizer final : public SpTokenizerBase {
 public:
  SpTokenizer(const std::string& path, const std::string& content) : api_(sp_api()), path_(path) {
    sp_ = api_.load(content.data(), content.size());
    MINILLM_TEXT_REQUIRE(sp_, path << ": not a SentencePiece model: " << api_.last_error());
    n_ = api_.piece_size(sp_);
  }
  ~SpTokenizer() override { api_.destroy(sp_); }
  SpTokenizer(const SpTokenizer&) = delete;
  SpTokenizer& operator=(const SpTokenizer&) = delete;

  int32_t vocab_size() const override { return n_; }
  std::string id_to_token(int32_t id) const override {
    if (id < 0 || id >= n_) return {};
    const char* piece = nullptr;
    size_t bytes = 0;
    api_.id_to_piece(sp_, id, &piece, &bytes);
    return std::string(piece, bytes);
  }
  int32_t token_to_id(std::string_view tok) const override {
    const int id = api_.piece_to_id(sp_, tok.data(), tok.size());
    // piece_to_id answers unk_id for unknown pieces
    return id >= 0 && id < n_ && id_to_token(id) == tok ? id : -1;
  }
  bool is_special(int32_t id) const override { return id >= 0 && id < n_ && api_.is_control(sp_, id) != 0; }
  bool is_byte_token(int32_t id) const override { return id >= 0 && id < n_ && api_.is_byte(sp_, id) != 0; }
  std::string kind() const override { return "tokenizer.model (SentencePiece)"; }
  int32_t model_bos() const override { return api_.bos_id(sp_); }
  int32_t model_eos() const override { return api_.eos_id(sp_); }

 private:
  void encode_text(std::string_view text, std::vector<int32_t>& out) const override {
    const int* ids = nullptr;
    size_t count = 0;
    MINILLM_TEXT_REQUIRE(api_.encode(sp_, text.data(), text.size(), &ids, &count),
                         path_ << ": SentencePiece encode failed: " << api_.last_error());
    out.insert(out.end(), ids, ids + count);
  }
  std::string decode_ids(std::span<const int32_t> ids) const override {
    const char* text = nullptr;
    size_t bytes = 0;
    MINILLM_TEXT_REQUIRE(api_.decode(sp_, ids.data(), ids.size(), &text, &bytes),
                         path_ << ": SentencePiece decode failed: " << api_.last_error());
    return std::string(text, bytes);
  }

  const SpApi& api_;
  std::string path_;
  void* sp_ = nullptr;  // the plugin's processor
  int32_t n_ = 0;
};

// SentencePiece BPE in C++ (sp_bpe.h): no plugin, no protobuf runtime.
class SpNativeTokenizer final : public SpTokenizerBase {
 public:
  SpNativeTokenizer(const std::string& path, const std::string& content) : m_(content, path) {}

  int32_t vocab_size() const override { return m_.size(); }
  std::string id_to_token(int32_t id) const override { return id >= 0 && id < m_.size() ? m_.piece(id) : ""; }
  int32_t token_to_id(std::string_view tok) const override {
    const int32_t id = m_.piece_to_id(tok);
    return m_.piece(id) == tok ? id : -1;
  }
  bool is_special(int32_t id) const override { return id >= 0 && id < m_.size() && m_.is_control(id); }
  bool is_byte_token(int32_t id) const override { return id >= 0 && id < m_.size() && m_.is_byte(id); }
  std::string kind() const override { return "tokenizer.model (SentencePiece BPE)"; }
  int32_t model_bos() const override { return m_.bos_id(); }
  int32_t model_eos() const override { return m_.eos_id(); }

 private:
  void encode_text(std::string_view text, std::vector<int32_t>& out) const override { m_.encode(text, out); }
  std::string decode_ids(std::span<const int32_t> ids) const override { return m_.decode(ids); }

  SpBpeModel m_;
};

std::unique_ptr<TokenizerImpl> configure(std::unique_ptr<SpTokenizerBase> t, const std::string& path,
                                         const json* config) {
  t->bos_id = config_token_id(*t, config, "bos_token", path);
  t->eos_id = config_token_id(*t, config, "eos_token", path);
  if (t->bos_id < 0) t->bos_id = t->model_bos();
  if (t->eos_id < 0) t->eos_id = t->model_eos();
  if (config) {
    if (config->contains("add_bos_token") && (*config)["add_bos_token"].is_boolean())
      t->add_bos = (*config)["add_bos_token"].get<bool>();
    if (config->contains("add_eos_token") && (*config)["add_eos_token"].is_boolean())
      t->add_eos = (*config)["add_eos_token"].get<bool>();
  }
  return t;
}

}  // namespace

std::unique_ptr<TokenizerImpl> load_sp_tokenizer(const std::string& path, const std::string& content,
                                                 const json* config) {
  const std::string problem = sp_model_problem(content);
  MINILLM_TEXT_REQUIRE(problem.empty(), path << ": not a SentencePiece model: " << problem);
  if (sp_bpe_unsupported(content).empty())
    return configure(std::make_unique<SpNativeTokenizer>(path, content), path, config);
  return configure(std::make_unique<SpTokenizer>(path, content), path, config);
}

}  // namespace minillm::text
