// minillm::Tokenizer: loading from a model directory or file, the UTF-8 check at the public
// boundary, streaming detokenization and stop strings.
#include "core/json.h"
#include "minillm/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "minillm/core/check.h"
#include "text/text_util.h"
#include "text/tokenizer_impl.h"

namespace minillm {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace text {
int32_t config_token_id(const TokenizerImpl& t, const json* config, const char* key, const std::string& path) {
  if (!config || !config->contains(key) || (*config)[key].is_null()) return -1;
  const json& v = (*config)[key];
  std::string name;
  if (v.is_string()) name = v.get<std::string>();
  else if (v.is_object() && v.contains("content") && v["content"].is_string()) name = v["content"].get<std::string>();
  else MINILLM_FAIL(path << ": tokenizer_config.json " << key << " = " << text::excerpt(v.dump()) << " is neither a string nor {\"content\": ...}");
  const int32_t id = t.token_to_id(name);
  MINILLM_TEXT_REQUIRE(id >= 0, "tokenizer_config.json: " << key << " = \"" << text::excerpt(name) << "\" is not a token of " << path);
  return id;
}
}  // namespace text

namespace {
std::string read_file(const std::string& path) {
  MINILLM_TEXT_REQUIRE(fs::exists(path), path << ": no such file or directory");
  MINILLM_TEXT_REQUIRE(!fs::is_directory(path), path << ": is a directory, not a file");
  std::ifstream f(path, std::ios::binary);
  MINILLM_TEXT_REQUIRE(f.good(), path << ": cannot open the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  MINILLM_TEXT_REQUIRE(!f.bad(), path << ": read error");
  return ss.str();
}

json read_config(const std::string& path) {
  const std::string s = read_file(path);
  try {
    json j = parse_json_strict(s, path + ": not valid JSON");
    MINILLM_TEXT_REQUIRE(j.is_object(), path << ": not a JSON object");
    return j;
  } catch (const json::exception& e) {
    MINILLM_FAIL(path << ": not valid JSON: " << e.what());
  }
}
// Loader errors may quote bytes of the file (a JSON parser's "last read" token); a message must be
// valid UTF-8 (Python turns it into a str), so invalid bytes become U+FFFD.
template <typename F>
auto clean_errors(F&& load) -> decltype(load()) {
  try {
    return load();
  } catch (const Error& e) {
    const std::string m = e.what();
    if (text::utf8_invalid_at(m) == std::string::npos) throw;
    throw Error(text::utf8_lossy(m));
  }
}
}  // namespace

void check_utf8(std::string_view s, std::string_view what) {
  const size_t at = text::utf8_invalid_at(s);
  if (at == std::string_view::npos) return;
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned>(static_cast<uint8_t>(s[at])));
  MINILLM_FAIL(what << " is not valid UTF-8: byte " << hex << " at offset " << at);
}

Tokenizer::Tokenizer(std::unique_ptr<text::TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path, const std::string& config_path) {
  const std::string content = read_file(path);
  json config;
  const bool has_config = !config_path.empty();
  if (has_config) config = clean_errors([&] { return read_config(config_path); });
  size_t i = 0;
  while (i < content.size() && std::isspace(static_cast<unsigned char>(content[i]))) ++i;
  MINILLM_TEXT_REQUIRE(i < content.size(), path << ": the file is empty");
  auto impl = clean_errors([&] {
    return content[i] == '{' ? text::load_hf_tokenizer(path, content, has_config ? &config : nullptr)
                             : text::load_sp_tokenizer(path, content, has_config ? &config : nullptr);
  });
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(const std::string& content, const std::string& name) {
  return std::unique_ptr<Tokenizer>(
      new Tokenizer(clean_errors([&] { return text::load_hf_tokenizer(name, content, nullptr); })));
}

std::unique_ptr<Tokenizer> Tokenizer::from_dir(const std::string& dir) {
  MINILLM_TEXT_REQUIRE(fs::is_directory(dir), dir << ": not a directory");
  const fs::path d(dir);
  const fs::path cfg = d / "tokenizer_config.json";
  const std::string cfg_path = fs::exists(cfg) ? cfg.string() : "";
  if (fs::exists(d / "tokenizer.json")) return from_file((d / "tokenizer.json").string(), cfg_path);
  if (fs::exists(d / "tokenizer.model")) return from_file((d / "tokenizer.model").string(), cfg_path);
  MINILLM_FAIL(dir << ": no tokenizer.json or tokenizer.model in the directory");
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  check_utf8(text, "text");
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode(text, add_special_tokens, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
int32_t Tokenizer::bos_token_id() const { return impl_->bos_id; }
int32_t Tokenizer::eos_token_id() const { return impl_->eos_id; }
std::string Tokenizer::id_to_token(int32_t id) const { return impl_->id_to_token(id); }
int32_t Tokenizer::token_to_id(std::string_view token) const { return impl_->token_to_id(token); }
bool Tokenizer::is_special(int32_t id) const { return impl_->is_special(id); }
std::string Tokenizer::kind() const { return impl_->kind(); }

// ---------------------------------------------------------------- streaming

// The window ids_ holds the ids from the last emitted boundary on; decoding it and removing the
// text of its already-emitted head gives the new text. Text is released only when it does not end
// in U+FFFD (an unfinished UTF-8 sequence decodes to it) and the last id is not a byte-fallback
// byte (whose run decodes as a whole). Decoding the window instead of the whole sequence is exact
// for the decoders we support: what a token decodes to depends only on its neighbours within the
// window, except for the first-token rules (Metaspace, Strip), which both window decodes share.
IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDecoder::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  ids_.push_back(id);
  if (tok_.impl().is_byte_token(id)) return {};
  const std::string text = tok_.decode(ids_, skip_special_);
  const bool unfinished = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
  if (unfinished || text.size() <= prefix_text_.size() || text.compare(0, prefix_text_.size(), prefix_text_) != 0)
    return {};
  std::string out = text.substr(prefix_text_.size());
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(read_));
  read_ = ids_.size();
  prefix_text_ = tok_.decode(ids_, skip_special_);
  return out;
}

std::string IncrementalDecoder::flush() {
  const std::string text = tok_.decode(ids_, skip_special_);
  std::string out = text.compare(0, prefix_text_.size(), prefix_text_) == 0 ? text.substr(prefix_text_.size()) : text;
  ids_.clear();
  read_ = 0;
  prefix_text_.clear();
  return out;
}

// ---------------------------------------------------------------- stop strings

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (size_t i = 0; i < stops_.size(); ++i) {
    MINILLM_TEXT_REQUIRE(!stops_[i].empty(), "stop[" << i << "] is an empty string");
    check_utf8(stops_[i], "stop string");
  }
}

std::string StopStringMatcher::feed(std::string_view text) {
  if (stopped_) return {};
  held_ += text;
  size_t best = std::string::npos;
  for (const auto& s : stops_) {
    const size_t p = held_.find(s);
    if (p < best) { best = p; matched_ = s; }
  }
  if (best != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, best);
    held_.clear();
    return out;
  }
  // hold the longest tail that is the beginning of a stop string
  size_t keep = 0;
  for (const auto& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) { keep = n; break; }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStringMatcher::flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? std::string() : out;
}

}  // namespace minillm
