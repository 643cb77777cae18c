// tokenizer.json (Hugging Face `tokenizers` format), encode and decode as `tokenizers` does:
//
//   encode: added tokens matched on the raw text (non-normalized ones; leftmost-longest, with
//           lstrip/rstrip/single_word) -> normalizer on the pieces between them -> normalized
//           added tokens matched -> pre-tokenizer pipeline (regex Split, ByteLevel, Metaspace,
//           Digits) -> BPE on each pre-token (cached by pre-token) -> post-processor's BOS/EOS.
//   decode: ids -> token strings (added tokens first) -> decoder chain (ByteLevel, ByteFallback,
//           Fuse, Strip, Replace, Metaspace) -> joined.
// Every type or option that the file names and that is not implemented here is an error naming
// it: a tokenizer that silently tokenizes differently is worse than none.
#include <utf8proc.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/json.h"
#include "minillm/core/check.h"
#include "text/bpe.h"
#include "text/text_util.h"
#include "text/tokenizer_impl.h"

namespace minillm::text {

using json = nlohmann::json;

namespace {

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Oniguruma's \s (the engine of `tokenizers`) is Unicode White_Space, which has U+0085; PCRE2's
// \s with UCP is the Z categories plus \t\n\v\f\r, without it. Rewrites \s and \S so that both
// agree.
std::string onig_compatible(const std::string& p, const std::string& what) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (n == 'S') {
        MINILLM_TEXT_REQUIRE(!in_class, what << ": \\S inside a character class is not supported in " << excerpt(p));
        out += "[^\\s\\x{85}]";
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') { out += '^'; ++i; }
      if (i + 1 < p.size() && p[i + 1] == ']') { out += ']'; ++i; }  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:alpha:]
      const size_t e = p.find(":]", i + 2);
      MINILLM_TEXT_REQUIRE(e != std::string::npos, what << ": unterminated POSIX class in " << excerpt(p));
      out.append(p, i, e + 2 - i);
      i = e + 1;
      continue;
    }
    MINILLM_TEXT_REQUIRE(!(in_class && c == '['), what << ": nested character classes are not supported in " << excerpt(p));
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}-/#&~ ").find(c) != std::string_view::npos) {
      if (c == ' ') { out += "\\x{20}"; continue; }
      out += '\\';
    }
    out += c;
  }
  return out;
}

// A Split/Replace "pattern": {"String": "..."} or {"Regex": "..."}.
Regex compile_pattern(const json& pat, const std::string& where) {
  MINILLM_TEXT_REQUIRE(pat.is_object() && pat.size() == 1, where << ".pattern = " << excerpt(pat.dump()) << " is not {\"String\"|\"Regex\": ...}");
  if (pat.contains("String")) return Regex(regex_escape(pat["String"].get<std::string>()), where);
  if (pat.contains("Regex")) return Regex(onig_compatible(pat["Regex"].get<std::string>(), where), where);
  MINILLM_FAIL(where << ".pattern = " << excerpt(pat.dump()) << " is not {\"String\"|\"Regex\": ...}");
}

std::string type_of(const json& j, const std::string& where) {
  MINILLM_TEXT_REQUIRE(j.is_object() && j.contains("type") && j["type"].is_string(),
                where << " = " << excerpt(j.dump()) << " has no \"type\"");
  return j["type"].get<std::string>();
}

bool get_bool(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? def : it->get<bool>();
}

// A count field (absent or null: 0): a non-negative integer, or an error naming it (nlohmann's own
// conversion of a float or a negative number to size_t is undefined behaviour).
size_t get_count(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return 0;
  MINILLM_TEXT_REQUIRE(it->is_number_integer() && it->get<int64_t>() >= 0,
                       where << "." << key << " = " << json_excerpt(*it) << " must be a non-negative integer");
  return static_cast<size_t>(it->get<int64_t>());
}

char32_t single_char(const std::string& s, const std::string& where) {
  MINILLM_TEXT_REQUIRE(!s.empty() && utf8_invalid_at(s) == std::string::npos, where << " = \"" << excerpt(s) << "\" is not one character");
  size_t i = 0;
  const char32_t c = utf8_next(s, i);
  MINILLM_TEXT_REQUIRE(i == s.size(), where << " = \"" << excerpt(s) << "\" is not one character");
  return c;
}

// Splits s at the matches of a pattern with a delimiter behaviour, as NormalizedString::split.
enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
Behavior parse_behavior(const json& j, const std::string& where) {
  const std::string b = j.get<std::string>();
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  MINILLM_FAIL(where << ".behavior = \"" << b << "\" is not supported");
}

struct Span {
  size_t b, e;
  bool flag;  // is_match before the behaviour, should_remove after
};

// The (offsets, is_match) list covering s; then the behaviour. Output: the kept pieces.
void split_pieces(std::string_view s, const Regex& re, bool invert, Behavior behavior,
                  std::vector<std::pair<size_t, size_t>>& scratch, std::vector<Span>& m, std::vector<Span>& out) {
  out.clear();
  m.clear();
  re.find_all(s, scratch);
  size_t prev = 0;
  for (auto [b, e] : scratch) {
    if (prev != b) m.push_back({prev, b, false});
    m.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) m.push_back({prev, s.size(), false});
  if (invert) for (auto& x : m) x.flag = !x.flag;
  switch (behavior) {
    case Behavior::Isolated:
      for (auto& x : m) out.push_back({x.b, x.e, false});
      break;
    case Behavior::Removed:
      out = m;
      break;
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (auto& x : m) {
        if (x.flag == prev_match && !out.empty()) out.back().e = x.e;
        else out.push_back({x.b, x.e, false});
        prev_match = x.flag;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& x : m) {
        if (x.flag && !prev_match && !out.empty()) out.back().e = x.e;
        else out.push_back({x.b, x.e, false});
        prev_match = x.flag;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->flag && !prev_match && !out.empty()) out.back().b = it->b;
        else out.push_back({it->b, it->e, false});
        prev_match = it->flag;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  // drop removed and empty pieces
  size_t k = 0;
  for (auto& x : out) if (!x.flag && x.e > x.b) out[k++] = x;
  out.resize(k);
}

// ---------------------------------------------------------------- normalizers

struct Normalizer {
  enum Kind { Unicode, Lowercase, Strip, Prepend, Replace } kind;
  int utf8proc_flags = 0;
  bool left = false, right = false;
  std::string text;  // Prepend's prefix, Replace's content
  std::shared_ptr<Regex> re;

  void apply(std::string& s) const {
    switch (kind) {
      case Unicode: {
        bool ascii = true;
        for (char c : s) ascii = ascii && static_cast<uint8_t>(c) < 0x80;
        if (ascii) return;  // every normal form of ASCII is itself
        utf8proc_uint8_t* dst = nullptr;
        const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    static_cast<utf8proc_ssize_t>(s.size()), &dst,
                                    static_cast<utf8proc_option_t>(utf8proc_flags));
        MINILLM_TEXT_REQUIRE(n >= 0, "Unicode normalization failed: " << utf8proc_errmsg(n));
        s.assign(reinterpret_cast<char*>(dst), static_cast<size_t>(n));
        std::free(dst);
        return;
      }
      case Lowercase: {
        std::string out;
        out.reserve(s.size());
        for (size_t i = 0; i < s.size();) utf8_append(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(utf8_next(s, i)))));
        s.swap(out);
        return;
      }
      case Strip: {
        size_t b = 0, e = s.size();
        if (left) {
          while (b < e) {
            size_t i = b;
            if (!is_unicode_whitespace(utf8_next(s, i))) break;
            b = i;
          }
        }
        if (right) {
          while (e > b) {
            size_t st = e - 1;
            while (st > b && (static_cast<uint8_t>(s[st]) & 0xC0) == 0x80) --st;
            size_t i = st;
            if (!is_unicode_whitespace(utf8_next(s, i))) break;
            e = st;
          }
        }
        s = s.substr(b, e - b);
        return;
      }
      case Prepend:
        if (!s.empty()) s.insert(0, text);
        return;
      case Replace: {
        std::vector<std::pair<size_t, size_t>> m;
        re->find_all(s, m);
        if (m.empty()) return;
        std::string out;
        size_t prev = 0;
        for (auto [b, e] : m) {
          out.append(s, prev, b - prev);
          out += text;
          prev = e;
        }
        out.append(s, prev, std::string::npos);
        s.swap(out);
        return;
      }
    }
  }
};

void parse_normalizer(const json& j, const std::string& where, std::vector<Normalizer>& out) {
  if (j.is_null()) return;
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    const json& list = j.at("normalizers");
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]", out);
    return;
  }
  Normalizer n{};
  if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
    n.kind = Normalizer::Unicode;
    int f = UTF8PROC_STABLE | (t.back() == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
    if (t.size() == 4) f |= UTF8PROC_COMPAT;
    n.utf8proc_flags = f;
  } else if (t == "Lowercase") {
    n.kind = Normalizer::Lowercase;
  } else if (t == "Strip") {
    n.kind = Normalizer::Strip;
    n.left = get_bool(j, "strip_left", true);
    n.right = get_bool(j, "strip_right", true);
  } else if (t == "Prepend") {
    n.kind = Normalizer::Prepend;
    n.text = j.at("prepend").get<std::string>();
  } else if (t == "Replace") {
    n.kind = Normalizer::Replace;
    n.text = j.at("content").get<std::string>();
    n.re = std::make_shared<Regex>(compile_pattern(j.at("pattern"), where));
  } else {
    MINILLM_FAIL(where << ": normalizer type \"" << t << "\" is not supported");
  }
  out.push_back(std::move(n));
}

// ---------------------------------------------------------------- pre-tokenizers

struct PreTok {
  enum Kind { Split, ByteLevel, Metaspace } kind;
  std::shared_ptr<Regex> re;
  bool invert = false;
  Behavior behavior = Behavior::Isolated;
  bool add_prefix_space = false, use_regex = true;   // ByteLevel
  std::string replacement;                           // Metaspace
  enum Prepend { Always, First, Never } prepend = Always;
  bool split = true;
};

void parse_pretokenizer(const json& j, const std::string& where, std::vector<PreTok>& out) {
  if (j.is_null()) return;
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    const json& list = j.at("pretokenizers");
    for (size_t i = 0; i < list.size(); ++i)
      parse_pretokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]", out);
    return;
  }
  PreTok p{};
  if (t == "Split") {
    p.kind = PreTok::Split;
    p.re = std::make_shared<Regex>(compile_pattern(j.at("pattern"), where));
    p.invert = get_bool(j, "invert", false);
    p.behavior = parse_behavior(j.at("behavior"), where);
  } else if (t == "ByteLevel") {
    p.kind = PreTok::ByteLevel;
    p.add_prefix_space = get_bool(j, "add_prefix_space", true);
    p.use_regex = get_bool(j, "use_regex", true);
    if (p.use_regex) p.re = std::make_shared<Regex>(onig_compatible(kGpt2Pattern, where), where);
  } else if (t == "Digits") {
    p.kind = PreTok::Split;
    const bool individual = get_bool(j, "individual_digits", false);
    p.re = std::make_shared<Regex>(std::string("\\p{N}"), where);
    p.behavior = individual ? Behavior::Isolated : Behavior::Contiguous;
  } else if (t == "Metaspace") {
    p.kind = PreTok::Metaspace;
    p.replacement = j.at("replacement").get<std::string>();
    single_char(p.replacement, where + ".replacement");
    const std::string scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>() : "always";
    if (scheme == "always") p.prepend = PreTok::Always;
    else if (scheme == "first") p.prepend = PreTok::First;
    else if (scheme == "never") p.prepend = PreTok::Never;
    else MINILLM_FAIL(where << ".prepend_scheme = \"" << scheme << "\" is not supported");
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      MINILLM_TEXT_REQUIRE(p.prepend == PreTok::Never || !j.contains("prepend_scheme"),
                    where << ": add_prefix_space does not match declared prepend_scheme");
      p.prepend = PreTok::Never;
    }
    p.split = get_bool(j, "split", true);
    if (p.split) p.re = std::make_shared<Regex>(regex_escape(p.replacement), where);
  } else {
    MINILLM_FAIL(where << ": pre-tokenizer type \"" << t << "\" is not supported");
  }
  out.push_back(std::move(p));
}

// ---------------------------------------------------------------- decoders

struct DecStep {
  enum Kind { ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace } kind;
  char32_t ch = 0;        // Strip's content, Metaspace's replacement
  size_t start = 0, stop = 0;
  bool prepend = true;    // Metaspace: prepend_scheme != never
  std::string content;    // Replace
  std::shared_ptr<Regex> re;
};

void parse_decoder(const json& j, const std::string& where, std::vector<DecStep>& out) {
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    const json& list = j.at("decoders");
    for (size_t i = 0; i < list.size(); ++i)
      parse_decoder(list[i], where + ".decoders[" + std::to_string(i) + "]", out);
    return;
  }
  DecStep d{};
  if (t == "ByteLevel") {
    d.kind = DecStep::ByteLevel;
  } else if (t == "ByteFallback") {
    d.kind = DecStep::ByteFallback;
  } else if (t == "Fuse") {
    d.kind = DecStep::Fuse;
  } else if (t == "Strip") {
    d.kind = DecStep::Strip;
    d.ch = single_char(j.at("content").get<std::string>(), where + ".content");
    d.start = get_count(j, "start", where);
    d.stop = get_count(j, "stop", where);
  } else if (t == "Replace") {
    d.kind = DecStep::Replace;
    d.content = j.at("content").get<std::string>();
    d.re = std::make_shared<Regex>(compile_pattern(j.at("pattern"), where));
  } else if (t == "Metaspace") {
    d.kind = DecStep::Metaspace;
    d.ch = single_char(j.at("replacement").get<std::string>(), where + ".replacement");
    const std::string scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>() : "always";
    MINILLM_TEXT_REQUIRE(scheme == "always" || scheme == "first" || scheme == "never",
                  where << ".prepend_scheme = \"" << scheme << "\" is not supported");
    d.prepend = scheme != "never";
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>())
      d.prepend = false;
  } else {
    MINILLM_FAIL(where << ": decoder type \"" << t << "\" is not supported");
  }
  out.push_back(std::move(d));
}

// byte <-> char of the byte-level alphabet (GPT-2's bytes_to_unicode)
struct ByteAlphabet {
  char32_t to_char[256];
  std::string to_utf8[256];
  ByteAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = direct ? char32_t(b) : char32_t(256 + n++);
      utf8_append(to_utf8[b], to_char[b]);
    }
  }
  // the byte of a char of the alphabet, or -1
  int byte_of(char32_t c) const {
    if (c < 256) {
      const bool direct = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      return direct ? int(c) : -1;
    }
    for (int b = 0; b < 256; ++b) if (to_char[b] == c) return b;
    return -1;
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// ---------------------------------------------------------------- added tokens

struct AddedToken {
  std::string content;
  int32_t id;
  bool single_word, lstrip, rstrip, normalized, special;
};

// Leftmost-longest matching of a set of strings (what Aho-Corasick with LeftmostLongest finds).
class AddedMatcher {
 public:
  void add(std::string pattern, int32_t idx) {
    if (pattern.empty()) return;
    first_[static_cast<uint8_t>(pattern[0])] = true;
    pats_.emplace_back(std::move(pattern), idx);
  }
  void finish() {
    std::stable_sort(pats_.begin(), pats_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  bool empty() const { return pats_.empty(); }
  // The next match at or after `from`: (begin, end, token index), or begin = npos.
  std::tuple<size_t, size_t, int32_t> next(std::string_view s, size_t from) const {
    for (size_t i = from; i < s.size(); ++i) {
      if (!first_[static_cast<uint8_t>(s[i])]) continue;
      for (const auto& [p, idx] : pats_) {
        if (p.size() <= s.size() - i && s.compare(i, p.size(), p) == 0) return {i, i + p.size(), idx};
      }
    }
    return {std::string_view::npos, 0, -1};
  }

 private:
  bool first_[256] = {};
  std::vector<std::pair<std::string, int32_t>> pats_;
};

bool is_word_char(char32_t c) {  // regex \w: alphanumeric, marks, connector punctuation
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  switch (cat) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return c == 0x200C || c == 0x200D;
  }
}
char32_t last_char(std::string_view s) {
  size_t st = s.size() - 1;
  while (st > 0 && (static_cast<uint8_t>(s[st]) & 0xC0) == 0x80) --st;
  return utf8_next(s, st);
}

// ---------------------------------------------------------------- the tokenizer

class HfTokenizer final : public TokenizerImpl {
 public:
  HfTokenizer(const std::string& path, const json& j) : path_(path) {
    for (const char* k : {"truncation", "padding"}) {
      MINILLM_TEXT_REQUIRE(!j.contains(k) || j[k].is_null(),
                    path << ": \"" << k << "\" is set; truncation and padding are not supported (set them to null)");
    }
    const json& model = j.at("model");
    const std::string mt = model.contains("type") ? model["type"].get<std::string>() : "BPE";
    MINILLM_TEXT_REQUIRE(mt == "BPE", path << ": model.type = \"" << mt << "\" is not supported (only BPE)");
    bpe_ = std::make_unique<BpeModel>(model, path);

    if (j.contains("normalizer")) parse_normalizer(j["normalizer"], path + ": normalizer", norm_);
    if (j.contains("pre_tokenizer")) parse_pretokenizer(j["pre_tokenizer"], path + ": pre_tokenizer", pre_);
    for (size_t i = 0; i < pre_.size(); ++i) {
      if (pre_[i].kind == PreTok::ByteLevel) {
        MINILLM_TEXT_REQUIRE(i + 1 == pre_.size(), path << ": pre_tokenizer: a pre-tokenizer after ByteLevel is not supported");
        byte_level_ = true;
      }
    }
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      parse_decoder(j["decoder"], path + ": decoder", dec_);
      has_decoder_ = true;
    }
    for (const auto& d : dec_) byte_fallback_dec_ = byte_fallback_dec_ || d.kind == DecStep::ByteFallback;
    if (j.contains("post_processor")) parse_post(j["post_processor"], path + ": post_processor");

    id_end_ = bpe_->id_end();
    if (j.contains("added_tokens")) {
      // Ids as `tokenizers` assigns them when it loads the file (AddedVocabulary::add_tokens): the
      // model's id when the content is in the vocabulary, else the next id from the vocabulary's
      // size on, in order; the "id" fields are not read (in real files they agree). A repeated
      // content keeps its first id and takes the later flags.
      int32_t next_id = bpe_->vocab_count();
      std::unordered_map<std::string, size_t> by_content;
      for (const auto& a : j["added_tokens"]) {
        AddedToken t{a.at("content").get<std::string>(), -1,
                     get_bool(a, "single_word", false), get_bool(a, "lstrip", false),
                     get_bool(a, "rstrip", false), get_bool(a, "normalized", true), get_bool(a, "special", false)};
        if (t.content.empty()) continue;
        auto dup = by_content.find(t.content);
        if (dup != by_content.end()) {
          t.id = added_[dup->second].id;
          added_[dup->second] = std::move(t);
          continue;
        }
        t.id = bpe_->token_to_id(t.content);
        if (t.id < 0) t.id = next_id++;
        id_end_ = std::max(id_end_, t.id + 1);
        by_content[t.content] = added_.size();
        added_.push_back(std::move(t));
      }
    }
    for (const auto* ids : {&prefix_, &suffix_})
      for (int32_t id : *ids)
        MINILLM_TEXT_REQUIRE(id < id_end_, path << ": post_processor: token id " << id << " is outside the vocabulary ("
                                                << id_end_ << " ids)");
    added_by_id_.assign(size_t(id_end_), -1);
    for (size_t k = 0; k < added_.size(); ++k) {
      const AddedToken& t = added_[k];
      if (added_by_id_[t.id] >= 0) {  // two contents on one id (a sparse vocabulary): the later wins
        const int32_t old = added_by_id_[t.id];
        added_[old].id = -1;
      }
      added_by_id_[t.id] = static_cast<int32_t>(k);
    }
    for (size_t k = 0; k < added_.size(); ++k) {
      const AddedToken& t = added_[k];
      if (t.id < 0) continue;
      if (t.normalized) {
        std::string n = t.content;
        for (const auto& nm : norm_) nm.apply(n);
        norm_match_.add(n, static_cast<int32_t>(k));
      } else {
        raw_match_.add(t.content, static_cast<int32_t>(k));
      }
    }
    raw_match_.finish();
    norm_match_.finish();
    for (int32_t id : prefix_) MINILLM_TEXT_REQUIRE(token_string(id), path << ": post_processor adds id " << id << ", which is not a token");
    for (int32_t id : suffix_) MINILLM_TEXT_REQUIRE(token_string(id), path << ": post_processor adds id " << id << ", which is not a token");
  }

  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const override {
    if (add_special) out.insert(out.end(), prefix_.begin(), prefix_.end());
    std::unique_lock<std::mutex> lk(cache_mu_, std::try_to_lock);
    Ctx ctx{lk.owns_lock() ? &cache_ : nullptr, out, std::vector<std::vector<Span>>(pre_.size() + 1), {}, {}, {}, {}};
    split_added(text, raw_match_, 0, [&](std::string_view seg, size_t seg_start, int32_t tok) {
      if (tok >= 0) { out.push_back(added_[tok].id); return; }
      std::string normalized(seg);
      for (const auto& n : norm_) n.apply(normalized);
      split_added(normalized, norm_match_, seg_start, [&](std::string_view s2, size_t start2, int32_t tok2) {
        if (tok2 >= 0) { out.push_back(added_[tok2].id); return; }
        pretokenize(0, s2, start2 == 0, ctx);
      });
    });
    if (add_special) out.insert(out.end(), suffix_.begin(), suffix_.end());
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (int32_t id : ids) {
      const std::string* s = token_string(id);
      if (!s) continue;
      if (skip_special && is_special(id)) continue;
      toks.push_back(*s);
    }
    if (!has_decoder_) {
      std::string out;
      for (size_t i = 0; i < toks.size(); ++i) { if (i) out += ' '; out += toks[i]; }
      return out;
    }
    for (const auto& d : dec_) apply_decoder(d, toks);
    std::string out;
    for (const auto& t : toks) out += t;
    return out;
  }

  int32_t vocab_size() const override { return id_end_; }
  std::string id_to_token(int32_t id) const override {
    const std::string* s = token_string(id);
    return s ? *s : std::string();
  }
  int32_t token_to_id(std::string_view tok) const override {
    for (const auto& a : added_) if (a.id >= 0 && a.content == tok) return a.id;
    return bpe_->token_to_id(tok);
  }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < id_end_ && added_by_id_[id] >= 0 && added_[added_by_id_[id]].special;
  }
  bool is_byte_token(int32_t id) const override {
    if (!byte_fallback_dec_) return false;
    const std::string* s = token_string(id);
    return s && s->size() == 6 && s->compare(0, 3, "<0x") == 0 && (*s)[5] == '>' &&
           std::isxdigit(static_cast<unsigned char>((*s)[3])) && std::isxdigit(static_cast<unsigned char>((*s)[4]));
  }
  std::string kind() const override {
    return std::string("tokenizer.json (BPE") + (byte_level_ ? ", byte-level" : "") +
           (bpe_->byte_fallback() ? ", byte fallback" : "") + ")";
  }

  // Template/Roberta/Bert post-processors: the first special token before the sequence is BOS,
  // the first after it is EOS (when tokenizer_config.json does not say).
  int32_t template_bos() const { return prefix_.empty() ? -1 : prefix_.front(); }
  int32_t template_eos() const { return suffix_.empty() ? -1 : suffix_.front(); }
  const BpeModel& bpe() const { return *bpe_; }

 private:
  using Cache = std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>>;
  // Per-call state: the cache (when this call holds it), the output, and scratch buffers reused
  // across pre-tokens (no allocation per pre-token once they have grown).
  struct Ctx {
    Cache* cache;
    std::vector<int32_t>& out;
    std::vector<std::vector<Span>> spans;  // per pre-tokenizer stage
    std::vector<std::pair<size_t, size_t>> matches;
    std::vector<Span> marks;
    std::string mapped;
    std::vector<BpeModel::Sym> syms;
  };

  const std::string* token_string(int32_t id) const {
    if (id >= 0 && id < id_end_ && added_by_id_[id] >= 0) return &added_[added_by_id_[id]].content;
    return bpe_->id_to_token(id);
  }

  // Splits s at the matches of an added-token matcher, as AddedVocabulary::find_matches does, and
  // calls f(piece, offset, token index or -1) for each non-empty piece in order.
  template <typename F>
  void split_added(std::string_view s, const AddedMatcher& m, size_t base, F&& f) const {
    if (m.empty()) {
      if (!s.empty()) f(s, base, -1);
      return;
    }
    size_t start_offset = 0, from = 0;
    for (;;) {
      auto [b, e, idx] = m.next(s, from);
      if (b == std::string_view::npos) break;
      from = e;
      const AddedToken& t = added_[idx];
      if (t.single_word) {
        const bool start_space = b == 0 || !is_word_char(last_char(s.substr(0, b)));
        bool stop_space = e == s.size();
        if (!stop_space) { size_t i = e; stop_space = !is_word_char(utf8_next(s, i)); }
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        size_t nb = b;
        while (nb > 0) {
          size_t st = nb - 1;
          while (st > 0 && (static_cast<uint8_t>(s[st]) & 0xC0) == 0x80) --st;
          size_t i = st;
          if (!is_unicode_whitespace(utf8_next(s, i))) break;
          nb = st;
        }
        b = std::max(nb, start_offset);
      }
      if (t.rstrip) {
        while (e < s.size()) {
          size_t i = e;
          if (!is_unicode_whitespace(utf8_next(s, i))) break;
          e = i;
        }
        from = e;
      }
      if (start_offset < b) f(s.substr(start_offset, b - start_offset), base + start_offset, -1);
      f(s.substr(b, e - b), base + b, idx);
      start_offset = e;
    }
    if (start_offset < s.size()) f(s.substr(start_offset), base + start_offset, -1);
  }

  // Runs pre-tokenizer stage k on s (at_start: s begins at offset 0 of the input), then the model.
  void pretokenize(size_t k, std::string_view s, bool at_start, Ctx& ctx) const {
    if (s.empty()) return;
    if (k == pre_.size()) { model(s, ctx); return; }
    const PreTok& p = pre_[k];
    auto& spans_by_stage = ctx.spans;
    switch (p.kind) {
      case PreTok::Split: {
        std::vector<Span> spans;
        spans.swap(spans_by_stage[k]);
        split_pieces(s, *p.re, p.invert, p.behavior, ctx.matches, ctx.marks, spans);
        for (const Span& x : spans) pretokenize(k + 1, s.substr(x.b, x.e - x.b), at_start && x.b == 0, ctx);
        spans.swap(spans_by_stage[k]);
        return;
      }
      case PreTok::ByteLevel: {
        std::string tmp;
        std::string_view v = s;
        if (p.add_prefix_space && s.front() != ' ') {
          tmp.reserve(s.size() + 1);
          tmp += ' ';
          tmp += s;
          v = tmp;
        }
        if (!p.use_regex) { model(v, ctx); return; }
        std::vector<Span> spans;
        spans.swap(spans_by_stage[k]);
        split_pieces(v, *p.re, false, Behavior::Isolated, ctx.matches, ctx.marks, spans);
        for (const Span& x : spans) model(v.substr(x.b, x.e - x.b), ctx);
        spans.swap(spans_by_stage[k]);
        return;
      }
      case PreTok::Metaspace: {
        std::string tmp;
        for (char c : s) { if (c == ' ') tmp += p.replacement; else tmp += c; }
        const bool starts = tmp.compare(0, p.replacement.size(), p.replacement) == 0;
        if (!starts && (p.prepend == PreTok::Always || (p.prepend == PreTok::First && at_start)))
          tmp.insert(0, p.replacement);
        if (!p.split) { pretokenize(k + 1, tmp, at_start, ctx); return; }
        std::vector<Span> spans;
        split_pieces(tmp, *p.re, false, Behavior::MergedWithNext, ctx.matches, ctx.marks, spans);
        for (const Span& x : spans) pretokenize(k + 1, std::string_view(tmp).substr(x.b, x.e - x.b), at_start && x.b == 0, ctx);
        return;
      }
    }
  }

  // BPE on one pre-token, through the cache (keyed by the pre-token's raw bytes).
  void model(std::string_view w, Ctx& ctx) const {
    if (w.empty()) return;
    if (ctx.cache) {
      auto it = ctx.cache->find(w);
      if (it != ctx.cache->end()) {
        ctx.out.insert(ctx.out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t before = ctx.out.size();
    if (byte_level_) {
      ctx.mapped.clear();
      const ByteAlphabet& a = alphabet();
      for (char c : w) ctx.mapped += a.to_utf8[static_cast<uint8_t>(c)];
      bpe_->encode_word(ctx.mapped, ctx.out, ctx.syms);
    } else {
      bpe_->encode_word(w, ctx.out, ctx.syms);
    }
    if (ctx.cache && w.size() < 256) {
      if (ctx.cache->size() >= kCacheCapacity) ctx.cache->clear();
      ctx.cache->emplace(std::string(w), std::vector<int32_t>(ctx.out.begin() + before, ctx.out.end()));
    }
  }

  // A token id of a post-processor: an integer in [0, 2^31) (the vocabulary's bound is checked once
  // the added tokens are known).
  static int32_t post_id(const json& v, const std::string& where) {
    MINILLM_TEXT_REQUIRE(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
                         where << " = " << excerpt(v.dump()) << " is not a token id");
    return static_cast<int32_t>(v.get<int64_t>());
  }

  void parse_post(const json& j, const std::string& where) {
    if (j.is_null()) return;
    const std::string t = type_of(j, where);
    if (t == "Sequence") {
      const json& list = j.at("processors");
      for (size_t i = 0; i < list.size(); ++i) parse_post(list[i], where + ".processors[" + std::to_string(i) + "]");
      return;
    }
    if (t == "ByteLevel") return;  // offsets only
    MINILLM_TEXT_REQUIRE(prefix_.empty() && suffix_.empty(), where << ": two post-processors that add tokens are not supported");
    if (t == "TemplateProcessing") {
      const json& specials = j.at("special_tokens");
      bool seen_seq = false;
      for (const auto& item : j.at("single")) {
        if (item.contains("Sequence")) {
          MINILLM_TEXT_REQUIRE(item["Sequence"].at("id").get<std::string>() == "A" && !seen_seq,
                        where << ".single: only one sequence $A is supported");
          seen_seq = true;
        } else if (item.contains("SpecialToken")) {
          const std::string name = item["SpecialToken"].at("id").get<std::string>();
          MINILLM_TEXT_REQUIRE(specials.contains(name), where << ".single names special token \"" << excerpt(name) << "\" that special_tokens lacks");
          const json& ids = specials[name].at("ids");
          for (size_t i = 0; i < ids.size(); ++i)
            (seen_seq ? suffix_ : prefix_)
                .push_back(post_id(ids[i], where + ".special_tokens[\"" + excerpt(name) + "\"].ids[" + std::to_string(i) + "]"));
        } else {
          MINILLM_FAIL(where << ".single: item " << excerpt(item.dump()) << " is not supported");
        }
      }
      MINILLM_TEXT_REQUIRE(seen_seq, where << ".single has no $A");
    } else if (t == "RobertaProcessing" || t == "BertProcessing") {
      prefix_.push_back(post_id(j.at("cls").at(1), where + ".cls[1]"));
      suffix_.push_back(post_id(j.at("sep").at(1), where + ".sep[1]"));
    } else {
      MINILLM_FAIL(where << ": post-processor type \"" << t << "\" is not supported");
    }
  }

  static void apply_decoder(const DecStep& d, std::vector<std::string>& toks) {
    switch (d.kind) {
      case DecStep::ByteLevel: {
        std::string bytes;
        for (const auto& t : toks) {
          const size_t mark = bytes.size();
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            const int b = alphabet().byte_of(utf8_next(t, i));
            if (b < 0) ok = false; else bytes += static_cast<char>(b);
          }
          if (!ok) { bytes.resize(mark); bytes += t; }  // a token outside the alphabet: its own bytes
        }
        toks.assign(1, utf8_lossy(bytes));
        return;
      }
      case DecStep::ByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        auto flush = [&] {
          if (pending.empty()) return;
          if (utf8_invalid_at(pending) == std::string::npos) out.push_back(pending);
          else for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
          pending.clear();
        };
        for (auto& t : toks) {
          int v = -1;
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
              std::isxdigit(static_cast<unsigned char>(t[3])) && std::isxdigit(static_cast<unsigned char>(t[4])))
            v = std::stoi(t.substr(3, 2), nullptr, 16);
          if (v >= 0) { pending += static_cast<char>(v); continue; }
          flush();
          out.push_back(std::move(t));
        }
        flush();
        toks.swap(out);
        return;
      }
      case DecStep::Fuse: {
        std::string all;
        for (const auto& t : toks) all += t;
        toks.assign(1, std::move(all));
        return;
      }
      case DecStep::Strip:
        for (auto& t : toks) {
          std::vector<char32_t> cs;
          for (size_t i = 0; i < t.size();) cs.push_back(utf8_next(t, i));
          size_t b = 0, e = cs.size();
          for (size_t i = 0; i < d.start && i < cs.size() && cs[i] == d.ch; ++i) b = i + 1;
          for (size_t i = 0; i < d.stop && i < cs.size(); ++i) {
            const size_t idx = cs.size() - i - 1;
            if (cs[idx] != d.ch) break;
            e = idx;
          }
          std::string o;
          for (size_t i = b; i < e; ++i) utf8_append(o, cs[i]);
          t.swap(o);
        }
        return;
      case DecStep::Replace: {
        std::vector<std::pair<size_t, size_t>> m;
        for (auto& t : toks) {
          d.re->find_all(t, m);
          if (m.empty()) continue;
          std::string o;
          size_t prev = 0;
          for (auto [b, e] : m) { o.append(t, prev, b - prev); o += d.content; prev = e; }
          o.append(t, prev, std::string::npos);
          t.swap(o);
        }
        return;
      }
      case DecStep::Metaspace:
        for (size_t k = 0; k < toks.size(); ++k) {
          std::string o;
          const std::string& t = toks[k];
          for (size_t i = 0; i < t.size();) {
            const char32_t c = utf8_next(t, i);
            if (c == d.ch) { if (!(k == 0 && d.prepend)) o += ' '; }
            else utf8_append(o, c);
          }
          toks[k].swap(o);
        }
        return;
    }
  }

  static constexpr size_t kCacheCapacity = 1 << 16;
  std::string path_;
  std::unique_ptr<BpeModel> bpe_;
  std::vector<Normalizer> norm_;
  std::vector<PreTok> pre_;
  std::vector<DecStep> dec_;
  bool has_decoder_ = false, byte_level_ = false, byte_fallback_dec_ = false;
  std::vector<int32_t> prefix_, suffix_;
  std::vector<AddedToken> added_;
  std::vector<int32_t> added_by_id_;
  AddedMatcher raw_match_, norm_match_;
  int32_t id_end_ = 0;
  mutable std::mutex cache_mu_;
  mutable Cache cache_;
};

}  // namespace

std::unique_ptr<TokenizerImpl> load_hf_tokenizer(const std::string& path, const std::string& content,
                                                 const json* config) {
  json j;
  try {
    j = parse_json_strict(content, path + ": not valid JSON");  // depth, duplicates, NUL: core/json.h
  } catch (const json::exception& e) {
    MINILLM_FAIL(path << ": not valid JSON: " << e.what());
  }
  MINILLM_TEXT_REQUIRE(j.is_object() && j.contains("model"), path << ": not a tokenizer.json (no \"model\" object)");
  std::unique_ptr<HfTokenizer> t;
  try {
    t = std::make_unique<HfTokenizer>(path, j);
  } catch (const json::exception& e) {
    MINILLM_FAIL(path << ": malformed tokenizer.json: " << e.what());
  }
  t->bos_id = config_token_id(*t, config, "bos_token", path);
  t->eos_id = config_token_id(*t, config, "eos_token", path);
  if (t->bos_id < 0 && !config) t->bos_id = t->template_bos();
  if (t->eos_id < 0 && !config) t->eos_id = t->template_eos();
  return t;
}

}  // namespace minillm::text
