// Tokenizer unit tests on small hand-made tokenizer.json files: BPE merges, added tokens, the
// post-processor, streaming decode, stop strings, UTF-8 handling and the errors for bad files.
// Exactness on real vocabularies against Hugging Face is tests/python/test_tokenizer_exact.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sys/wait.h>
#include <unistd.h>

#include "minillm/core/check.h"
#include "minillm/tokenizer.h"
#include "text/bpe.h"
#include "text/sp_bpe.h"
#include "text/sp_model_check.h"
#include "text/text_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using minillm::Tokenizer;

namespace {

std::string byte_char(int b) {  // GPT-2's bytes_to_unicode
  int n = 0;
  for (int x = 0; x < 256; ++x) {
    const bool direct = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
    const char32_t c = direct ? char32_t(x) : char32_t(256 + n++);
    if (x == b) {
      std::string s;
      minillm::text::utf8_append(s, c);
      return s;
    }
  }
  return {};
}

// A byte-level BPE: the 256 byte characters (ids 0..255) and a few merges.
json tiny_bytelevel() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {byte_char(' '), "w"}, {"o", "r"}, {"or", "ld"}, {"l", "d"}};
  json m = json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    m.push_back(a + " " + b);
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", json::array({{{"id", 264}, {"content", "<|end|>"}, {"single_word", false}, {"lstrip", false},
                                         {"rstrip", false}, {"normalized", false}, {"special", true}}})},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
          {"post_processor", {{"type", "TemplateProcessing"},
                              {"single", json::array({{{"SpecialToken", {{"id", "<|end|>"}, {"type_id", 0}}}},
                                                      {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                              {"pair", json::array()},
                              {"special_tokens", {{"<|end|>", {{"id", "<|end|>"}, {"ids", {264}}, {"tokens", {"<|end|>"}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"byte_fallback", false},
                     {"vocab", vocab}, {"merges", m}}}};
}

class TempDir {
 public:
  TempDir() {
    static int n = 0;
    path_ = fs::temp_directory_path() / ("minillm_tok_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
    return (path_ / name).string();
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::unique_ptr<Tokenizer> load(const json& j) {
  TempDir d;
  d.write("tokenizer.json", j.dump());
  return Tokenizer::from_dir(d.str());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const minillm::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Tokenizer, ByteLevelMergesAddedTokensAndTemplate) {
  auto t = load(tiny_bytelevel());
  const int32_t hello = t->token_to_id("hello"), sw = t->token_to_id(byte_char(' ') + "w"),
                orld = t->token_to_id("orld");
  ASSERT_GE(hello, 0);
  EXPECT_EQ(t->encode("hello world", false), (std::vector<int32_t>{hello, sw, orld}));
  EXPECT_EQ(t->encode("hello world"), (std::vector<int32_t>{264, hello, sw, orld}));  // template BOS
  EXPECT_EQ(t->bos_token_id(), 264);
  // the special token splits the text before pre-tokenization; the text on both sides is BPE'd alone
  EXPECT_EQ(t->encode("hello<|end|>hello", false), (std::vector<int32_t>{hello, 264, hello}));
  EXPECT_EQ(t->decode(t->encode("hello<|end|>x y")), "<|end|>hello<|end|>x y");
  EXPECT_EQ(t->decode(t->encode("hello<|end|>x y"), true), "hellox y");
  EXPECT_TRUE(t->is_special(264));
  EXPECT_FALSE(t->is_special(hello));
  EXPECT_EQ(t->vocab_size(), 265);  // added tokens take ids after the vocabulary, as in tokenizers
}

TEST(Tokenizer, PostProcessorIdsMustBeTokenIds) {
  const auto with_ids = [](json ids) {
    json j = tiny_bytelevel();
    j["post_processor"]["special_tokens"]["<|end|>"]["ids"] = std::move(ids);
    return error_of([&] { load(j); });
  };
  EXPECT_NE(with_ids(json::parse("[2.6e74]")).find("post_processor.special_tokens[\"<|end|>\"].ids[0] = 2.6e+74 is not a token id"),
            std::string::npos)
      << with_ids(json::parse("[2.6e74]"));
  EXPECT_NE(with_ids({264, -1}).find("ids[1] = -1 is not a token id"), std::string::npos);
  EXPECT_NE(with_ids({"264"}).find("ids[0] = \"264\" is not a token id"), std::string::npos);
  EXPECT_NE(with_ids({4294967296LL}).find("ids[0] = 4294967296 is not a token id"), std::string::npos);
  EXPECT_NE(with_ids({265}).find("post_processor: token id 265 is outside the vocabulary (265 ids)"), std::string::npos)
      << with_ids({265});
  json roberta = tiny_bytelevel();
  roberta["post_processor"] = {{"type", "RobertaProcessing"}, {"cls", {"<|end|>", 264}}, {"sep", {"<|end|>", 1.5}}};
  EXPECT_NE(error_of([&] { load(roberta); }).find("post_processor.sep[1] = 1.5 is not a token id"), std::string::npos)
      << error_of([&] { load(roberta); });
}

TEST(Tokenizer, NfcNormalizesBeforeMerging) {
  auto t = load(tiny_bytelevel());
  // e + combining acute becomes U+00E9: two bytes C3 A9
  EXPECT_EQ(t->encode("e\xCC\x81", false), (std::vector<int32_t>{0xC3, 0xA9}));
  EXPECT_EQ(t->decode(t->encode("e\xCC\x81", false)), "\xC3\xA9");
}

TEST(Tokenizer, StreamingReleasesWholeCharactersAndMatchesDecode) {
  auto t = load(tiny_bytelevel());
  const std::string text = "hello h\xC3\xA9llo \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD world";
  const auto ids = t->encode(text);
  minillm::IncrementalDecoder dec(*t);
  std::string all;
  for (int32_t id : ids) {
    const std::string piece = dec.push(id);
    EXPECT_EQ(minillm::text::utf8_invalid_at(piece), std::string::npos) << "piece splits a character";
    all += piece;
  }
  all += dec.flush();
  EXPECT_EQ(all, t->decode(ids));
  // a lone lead byte at the end is held, then flushed as U+FFFD (as decode gives it)
  minillm::IncrementalDecoder d2(*t);
  EXPECT_EQ(d2.push(t->token_to_id("hello")), "hello");
  EXPECT_EQ(d2.push(0xE4), "");
  EXPECT_EQ(d2.flush(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, BpeScanAndHeapAgree) {
  // a vocabulary with chains of merges over a small alphabet, words long enough for both paths
  json vocab = json::object();
  json merges = json::array();
  const std::string letters = "abcd";
  int id = 0;
  for (char c : letters) vocab[std::string(1, c)] = id++;
  std::mt19937 rng(3);
  std::vector<std::string> toks(letters.size());
  for (size_t i = 0; i < letters.size(); ++i) toks[i] = std::string(1, letters[i]);
  for (int k = 0; k < 60; ++k) {
    const std::string a = toks[rng() % toks.size()], b = toks[rng() % toks.size()];
    if (vocab.contains(a + b) || (a + b).size() > 8) continue;
    vocab[a + b] = id++;
    merges.push_back(a + " " + b);
    toks.push_back(a + b);
  }
  const json model = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  minillm::text::BpeModel bpe(model, "test");
  for (int trial = 0; trial < 200; ++trial) {
    std::string w;
    const size_t n = 1 + rng() % 150;
    for (size_t i = 0; i < n; ++i) w += letters[rng() % letters.size()];
    std::vector<int32_t> a, b;
    bpe.encode_word(w, a);
    bpe.encode_word_heap(w, b);
    ASSERT_EQ(a, b) << w;
    std::string back;
    for (int32_t x : a) back += *bpe.id_to_token(x);
    ASSERT_EQ(back, w);
  }
}

TEST(Tokenizer, ByteFallbackAndUnknown) {
  json vocab = {{"<unk>", 0}, {"<0xE4>", 1}, {"<0xBD>", 2}, {"<0xA0>", 3}, {"\xE2\x96\x81", 4}, {"a", 5}, {"\xE2\x96\x81" "a", 6}};
  json j = {{"normalizer", {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                                                                               {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}}},
            {"pre_tokenizer", nullptr},
            {"decoder", {{"type", "Sequence"}, {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                                                         {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                                         {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
            {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true},
                       {"vocab", vocab}, {"merges", json::array({"\xE2\x96\x81 a"})}}}};
  auto t = load(j);
  // 你 has its three bytes in the vocabulary; 好 has not: one (fused) unknown token
  EXPECT_EQ(t->encode("a\xE4\xBD\xA0", false), (std::vector<int32_t>{6, 1, 2, 3}));
  EXPECT_EQ(t->encode("a\xE5\xA5\xBD\xE5\xA5\xBD", false), (std::vector<int32_t>{6, 0}));
  EXPECT_EQ(t->decode(std::vector<int32_t>{6, 1, 2, 3}), "a\xE4\xBD\xA0");
  EXPECT_EQ(t->decode(std::vector<int32_t>{6, 1, 2}), "a\xEF\xBF\xBD\xEF\xBF\xBD");  // an unfinished run: one U+FFFD per byte
  minillm::IncrementalDecoder dec(*t);
  EXPECT_EQ(dec.push(6), "a");
  EXPECT_EQ(dec.push(1), "");  // byte runs are held until they end
  EXPECT_EQ(dec.push(2), "");
  EXPECT_EQ(dec.push(3), "");
  EXPECT_EQ(dec.push(6), "\xE4\xBD\xA0 a");
  EXPECT_EQ(dec.flush(), "");
}

TEST(Tokenizer, Utf8) {
  using minillm::text::utf8_lossy;
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("a\xE0\x80z"), "a" + R + R + "z");       // E0 needs A0..BF next
  EXPECT_EQ(utf8_lossy("\xE4\xBD" "A"), R + "A");               // an unfinished sequence is one U+FFFD
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"), R + R + R + R);      // above U+10FFFF
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), R + R + R);              // a surrogate
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x91"), R);
  EXPECT_EQ(minillm::text::utf8_incomplete_tail("ab\xF0\x9F\x91"), 3u);
  EXPECT_EQ(minillm::text::utf8_incomplete_tail("ab\xF0\x9F\x91\x8D"), 0u);
  auto t = load(tiny_bytelevel());
  const std::string e = error_of([&] { t->encode("abc\xFF" "def"); });
  EXPECT_NE(e.find("not valid UTF-8"), std::string::npos) << e;
  EXPECT_NE(e.find("offset 3"), std::string::npos) << e;
}

TEST(Tokenizer, StopStrings) {
  minillm::StopStringMatcher m({"END", "\n\n"});
  EXPECT_EQ(m.feed("Hello E"), "Hello ");  // "E" may start "END": held
  EXPECT_EQ(m.feed("N"), "");
  EXPECT_EQ(m.feed("Xtra"), "ENXtra");     // it did not
  EXPECT_EQ(m.feed(" more\n"), " more");
  EXPECT_EQ(m.feed("\nafter"), "");        // "\n\n" across two pieces
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "\n\n");
  EXPECT_EQ(m.feed("ignored"), "");
  minillm::StopStringMatcher m2({"stop"});
  EXPECT_EQ(m2.feed("no st"), "no ");
  EXPECT_EQ(m2.flush(), "st");
  EXPECT_FALSE(m2.stopped());
  minillm::StopStringMatcher m3({"bc", "abcd"});
  EXPECT_EQ(m3.feed("xabcd"), "x");  // the earliest match wins
  EXPECT_EQ(m3.matched(), "abcd");
  EXPECT_NE(error_of([] { minillm::StopStringMatcher({""}); }).find("empty"), std::string::npos);
}

TEST(Tokenizer, BadFilesNameTheFileAndTheProblem) {
  TempDir d;
  std::string e = error_of([&] { Tokenizer::from_dir(d.str() + "/absent"); });
  EXPECT_NE(e.find("not a directory"), std::string::npos) << e;
  e = error_of([&] { Tokenizer::from_dir(d.str()); });
  EXPECT_NE(e.find("no tokenizer.json or tokenizer.model"), std::string::npos) << e;

  const std::string p = d.write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
  e = error_of([&] { Tokenizer::from_dir(d.str()); });
  EXPECT_NE(e.find(p), std::string::npos) << e;
  EXPECT_NE(e.find("malformed JSON"), std::string::npos) << e;
  d.write("tokenizer.json", "{\"model\": {\"a\", \xF6\xF6}}");  // the parser quotes the invalid bytes
  e = error_of([&] { Tokenizer::from_dir(d.str()); });
  EXPECT_EQ(minillm::text::utf8_invalid_at(e), std::string::npos) << "the message is not valid UTF-8: " << e;

  auto with = [&](const char* key, json v) {
    json j = tiny_bytelevel();
    j[key] = v;
    d.write("tokenizer.json", j.dump());
    return error_of([&] { Tokenizer::from_dir(d.str()); });
  };
  e = with("normalizer", {{"type", "BertNormalizer"}});
  EXPECT_NE(e.find("normalizer type \"BertNormalizer\" is not supported"), std::string::npos) << e;
  e = with("pre_tokenizer", {{"type", "Whitespace"}});
  EXPECT_NE(e.find("\"Whitespace\" is not supported"), std::string::npos) << e;
  e = with("decoder", {{"type", "WordPiece"}});
  EXPECT_NE(e.find("\"WordPiece\" is not supported"), std::string::npos) << e;
  for (const json& bad : {json(8.8e79), json(-1), json(1.5), json("2")}) {  // a count that is not one
    e = with("decoder", {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", bad}});
    EXPECT_NE(e.find("decoder.stop = "), std::string::npos) << e;
    EXPECT_NE(e.find("must be a non-negative integer"), std::string::npos) << e;
  }
  e = with("truncation", {{"max_length", 8}});
  EXPECT_NE(e.find("truncation"), std::string::npos) << e;
  e = with("pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}});
  EXPECT_NE(e.find("does not compile"), std::string::npos) << e;
  json j = tiny_bytelevel();
  j["model"]["type"] = "WordPiece";
  e = with("model", j["model"]);
  EXPECT_NE(e.find("model.type = \"WordPiece\""), std::string::npos) << e;
  j = tiny_bytelevel();
  j["model"]["merges"].push_back("zz qq");
  e = with("model", j["model"]);
  EXPECT_NE(e.find("not in the vocabulary"), std::string::npos) << e;
  j = tiny_bytelevel();
  j["model"]["continuing_subword_prefix"] = "##";
  e = with("model", j["model"]);
  EXPECT_NE(e.find("continuing_subword_prefix"), std::string::npos) << e;

  d.write("tokenizer.json", tiny_bytelevel().dump());
  const std::string cfg = d.write("tokenizer_config.json", "{\"bos_token\": \"<nope>\"}");
  e = error_of([&] { Tokenizer::from_dir(d.str()); });
  EXPECT_NE(e.find("bos_token = \"<nope>\" is not a token"), std::string::npos) << e;
  d.write("tokenizer_config.json", "{bad");
  e = error_of([&] { Tokenizer::from_dir(d.str()); });
  EXPECT_NE(e.find(cfg), std::string::npos) << e;

  TempDir d2;
  const std::string sp = d2.write("tokenizer.model", "\x01\x02garbage");
  e = error_of([&] { Tokenizer::from_dir(d2.str()); });
  EXPECT_NE(e.find(sp), std::string::npos) << e;
  EXPECT_NE(e.find("not a SentencePiece model"), std::string::npos) << e;
}

TEST(Tokenizer, SentencePieceModelBytesAreCheckedBeforeTheLibrarySeesThem) {
  using minillm::text::sp_model_problem;
  using namespace std::string_view_literals;
  // pieces { piece: "a" score: 0.5 type: 1 } trainer_spec { model_type: 2 }
  const std::string piece = std::string("\x0a\x01" "a" "\x15\x00\x00\x00\x3f" "\x18\x01", 10);
  std::string model(1, '\x0a');
  model += static_cast<char>(piece.size());
  model += piece;
  model.append("\x12\x02\x18\x02", 4);
  EXPECT_EQ(sp_model_problem(model), "");
  EXPECT_EQ(sp_model_problem(model + "\xc8\x0c\x07"), "");  // an extension (field 201, varint) is allowed
  EXPECT_EQ(sp_model_problem(""), "empty file");
  EXPECT_EQ(sp_model_problem("\x12\x00"sv), "no pieces (field 1)");
  EXPECT_EQ(sp_model_problem("\x01\x02garbage"), "field number 0 at byte 0");
  EXPECT_EQ(sp_model_problem(model.substr(0, model.size() - 1)), "field 2 of 2 bytes runs past its message at byte 12");
  EXPECT_EQ(sp_model_problem(model + "\x0b"), "wire type 3 of field 1 at byte 16");
  EXPECT_EQ(sp_model_problem(model + "\x10\x01"), "field 2 is not length-delimited at byte 16");
  EXPECT_EQ(sp_model_problem(model + "\x28" + std::string(11, '\xff')), "varint longer than 10 bytes at byte 17");
  EXPECT_EQ(sp_model_problem("\x0a\x02\x15\x00"sv), "truncated fixed-size field 2 at byte 2");  // inside a piece
  EXPECT_EQ(sp_model_problem("\x0a\x80"), "truncated varint at byte 1");
  // Every prefix of a valid model is refused or (at a field boundary) well-formed; never a crash.
  for (size_t n = 0; n < model.size(); ++n) {
    const std::string why = sp_model_problem(model.substr(0, n));
    EXPECT_TRUE(n == 12 || !why.empty()) << n;
  }
  const std::string real = std::string(MINILLM_SOURCE_DIR) + "/.tokenizers/mixtral-sp/tokenizer.model";
  if (std::filesystem::exists(real)) {  // a real vocabulary (scripts/setup.sh)
    std::ifstream f(real, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_EQ(sp_model_problem(bytes), "");
    EXPECT_NE(sp_model_problem(bytes.substr(0, bytes.size() / 2)), "");
  }
}

namespace {
// A ModelProto by hand: pieces (text, score, type), trainer_spec {model_type BPE, byte_fallback},
// normalizer_spec {add_dummy_prefix, remove_extra_whitespaces 0}.
std::string proto_field(int field, const std::string& bytes) {
  std::string s(1, static_cast<char>(field << 3 | 2));
  s += static_cast<char>(bytes.size());  // < 128 bytes here
  return s + bytes;
}
std::string sp_bpe_model(const std::vector<std::tuple<std::string, float, int>>& pieces, bool byte_fallback) {
  std::string m;
  for (const auto& [text, score, type] : pieces) {
    std::string p = proto_field(1, text) + '\x15';
    p.append(reinterpret_cast<const char*>(&score), 4);
    p += '\x18';
    p += static_cast<char>(type);
    m += proto_field(1, p);
  }
  std::string trainer = "\x18\x02";  // model_type BPE
  if (byte_fallback) trainer += "\x98\x02\x01";  // field 35
  return m + proto_field(2, trainer) + proto_field(3, std::string("\x18\x01\x20\x00", 4));
}
}  // namespace

// SentencePiece's BPE: highest-scoring piece first (ties to the left), user-defined pieces never merged,
// unused pieces split back, a run of unknown characters one unknown id; decode drops the dummy prefix.
TEST(Tokenizer, SentencePieceBpeInCpp) {
  using minillm::text::SpBpeModel;
  const std::string sp = "\xE2\x96\x81";
  // ids: 0 <unk>, 1 <s>, 2 </s>, 3 a, 4 b, 5 c, 6 ▁, 7 ab, 8 bc, 9 ▁a, 10 abc (unused), 11 <u> (user-defined)
  const std::string model = sp_bpe_model({{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}, {"a", -1, 1}, {"b", -1, 1},
                                          {"c", -1, 1}, {sp, -1, 1}, {"ab", -2, 1}, {"bc", -3, 1}, {sp + "a", -5, 1},
                                          {"abc", 0, 5}, {"<u>", 0, 4}},
                                         false);
  ASSERT_EQ(minillm::text::sp_bpe_unsupported(model), "");
  const SpBpeModel m(model, "t.model");
  auto enc = [&](const std::string& s) {
    std::vector<int32_t> ids;
    m.encode(s, ids);
    return ids;
  };
  EXPECT_EQ(enc("abc"), (std::vector<int32_t>{6, 7, 5}));  // ab (-2) before bc (-3); abc is unused: a b -> ab, c
  EXPECT_EQ(enc("bc"), (std::vector<int32_t>{6, 8}));
  EXPECT_EQ(enc("a"), (std::vector<int32_t>{9}));            // ▁a
  EXPECT_EQ(enc("ab<u>xyz c"), (std::vector<int32_t>{6, 7, 11, 0, 6, 5}));  // xyz: one unknown id
  EXPECT_EQ(enc(""), (std::vector<int32_t>{}));
  EXPECT_EQ(m.decode(std::vector<int32_t>{9, 7, 0, 6, 5}), "aab \xE2\x81\x87  c");
  EXPECT_EQ(m.decode(std::vector<int32_t>{1, 6, 3}), "a");  // control ids vanish; the first ▁ is the dummy prefix
  EXPECT_EQ(m.piece_to_id("zz"), 0);
  EXPECT_EQ(m.bos_id(), 1);
  EXPECT_EQ(m.eos_id(), 2);
  // Refused: byte_fallback without byte pieces, an empty piece, two unknown pieces, a unigram model.
  auto error = [](const std::string& bytes) {
    try {
      SpBpeModel x(bytes, "t.model");
    } catch (const minillm::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error(sp_bpe_model({{"<unk>", 0, 2}, {"a", 0, 1}}, true)).find("byte_fallback without piece <0x0>"),
            std::string::npos);
  EXPECT_NE(error(sp_bpe_model({{"<unk>", 0, 2}, {"", 0, 1}}, false)).find("piece 1 is empty"), std::string::npos);
  for (const char* bad : {"<0x-5>", "<0xab>", "<0x1>", "<0x1G>"})  // a signed or lower-case number was once taken
    EXPECT_NE(error(sp_bpe_model({{"<unk>", 0, 2}, {bad, 0, 6}}, false)).find("not <0xNN>"), std::string::npos) << bad;
  EXPECT_NE(error(sp_bpe_model({{"<unk>", 0, 2}, {"<v>", 0, 2}}, false)).find("2 unknown pieces"), std::string::npos);
  EXPECT_EQ(minillm::text::sp_bpe_unsupported(proto_field(1, proto_field(1, "a")) + proto_field(2, "\x18\x01")),
            "model_type 1 (BPE is 2)");
}

TEST(Tokenizer, TextStreamerStopsAcrossTokens) {
  auto t = load(tiny_bytelevel());
  const auto ids = t->encode("hello world<|end|>hello world", false);
  // " world" is one token; the stop string "o w" spans "hello" and " w"
  minillm::TextStreamer s(*t, {"o w"});
  std::string shown;
  size_t used = 0;
  for (int32_t id : ids) {
    shown += s.push(id);
    ++used;
    if (s.stopped()) break;
  }
  shown += s.finish();
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(shown, "hell");
  EXPECT_EQ(used, 2u);
  // no stop string: everything, special tokens skipped
  minillm::TextStreamer all(*t, {});
  std::string text;
  for (int32_t id : ids) text += all.push(id);
  text += all.finish();
  EXPECT_EQ(text, "hello worldhello world");
  EXPECT_FALSE(all.stopped());
}

// ---------------------------------------------------------------- the CLI's text mode

namespace {
struct CliResult {
  int code;
  std::string out;
};
CliResult run_cli(const std::string& args, bool with_stderr) {
  const std::string cmd = std::string(MINILLM_CLI) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p.get())) > 0) out.append(buf, n);
  const int status = pclose(p.release());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}
}  // namespace

TEST(Tokenizer, CliGenerateStreamsTextAndStopsOnStrings) {
  // the tiny preset (vocabulary 256, seeded weights) with a byte-level tokenizer of 256 ids
  const std::string bytes256 = std::string(MINILLM_SOURCE_DIR) + "/tests/fixtures/tokenizer/bytes256";
  TempDir d;
  auto tok = Tokenizer::from_dir(bytes256);
  const std::string common = "generate --model tiny --device cpu --temperature 0 --max-tokens 24 --ignore-eos --tokenizer " + bytes256;

  // text mode prints exactly the decode of what id mode generates for the same prompt
  const CliResult text = run_cli(common + " --prompt 'Hello'", false);
  ASSERT_EQ(text.code, 0) << text.out;
  const CliResult ids = run_cli("generate --model tiny --device cpu --temperature 0 --max-tokens 24 --ignore-eos --prompt-ids 72,101,108,108,111", false);
  ASSERT_EQ(ids.code, 0) << ids.out;
  std::vector<int32_t> gen;
  for (size_t i = 0; i < ids.out.size();) {
    size_t e = i;
    while (e < ids.out.size() && std::isdigit(static_cast<unsigned char>(ids.out[e]))) ++e;
    if (e > i) gen.push_back(std::stoi(ids.out.substr(i, e - i)));
    i = e + 1;
  }
  ASSERT_EQ(gen.size(), 24u) << ids.out;
  const std::string want = tok->decode(gen);
  EXPECT_EQ(text.out, want + "\n");

  // a stop string from the middle of that text (two characters, no NUL, not ending in a newline,
  // which the shell would drop): the output ends just before its first occurrence
  std::string stop;
  for (size_t at = 0, k = 0; at < want.size() && stop.empty(); at += minillm::text::utf8_len(static_cast<uint8_t>(want[at])), ++k) {
    size_t end = at;
    for (int c = 0; c < 2 && end < want.size(); ++c) end += minillm::text::utf8_len(static_cast<uint8_t>(want[end]));
    const std::string cand = want.substr(at, end - at);
    if (k >= 2 && cand.size() >= 2 && cand.find('\0') == std::string::npos && cand.back() != '\n') stop = cand;
  }
  ASSERT_FALSE(stop.empty()) << want;
  const std::string stop_file = d.write("stop.txt", stop);
  const CliResult stopped = run_cli(common + " --prompt 'Hello' --stop \"$(cat " + stop_file + ")\"", true);
  ASSERT_EQ(stopped.code, 0) << stopped.out;
  EXPECT_EQ(stopped.out.substr(0, stopped.out.find('\n') + 1), want.substr(0, want.find(stop)) + "\n") << stopped.out;
  EXPECT_NE(stopped.out.find("(stop: \""), std::string::npos) << stopped.out;
  EXPECT_NE(stopped.out.find("time to first token"), std::string::npos) << stopped.out;

  // bad input: named, exit 1 (or 2 for a missing prompt)
  CliResult r = run_cli("generate --model tiny --device cpu --prompt 'Hello'", true);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--tokenizer DIR"), std::string::npos) << r.out;
  r = run_cli(common + " --prompt \"$(printf 'ab\\377')\"", true);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--prompt is not valid UTF-8: byte 0xFF at offset 2"), std::string::npos) << r.out;
  r = run_cli("generate --model tiny --device cpu --prompt-ids 1,2 --stop x", true);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("give --prompt TEXT"), std::string::npos) << r.out;
  r = run_cli("generate --model tiny --device cpu", true);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("give --prompt TEXT or --prompt-ids"), std::string::npos) << r.out;
}
