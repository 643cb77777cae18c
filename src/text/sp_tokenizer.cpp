// tokenizer.model (SentencePiece) through Debian's libsentencepiece: encode/decode are the
// library's own; BOS/EOS come from tokenizer_config.json (add_bos_token defaults to true and
// add_eos_token to false, as in transformers' LlamaTokenizer) or the model's bos/eos ids.
#include <sentencepiece_processor.h>

#include <nlohmann/json.hpp>

#include "minillm/core/check.h"
#include "text/text_util.h"
#include "text/tokenizer_impl.h"

namespace minillm::text {

using json = nlohmann::json;

namespace {

class SpTokenizer final : public TokenizerImpl {
 public:
  SpTokenizer(const std::string& path, const std::string& content) : path_(path) {
    const auto st = sp_.LoadFromSerializedProto(content);
    MINILLM_TEXT_REQUIRE(st.ok(), path << ": not a SentencePiece model: " << st.ToString());
    n_ = sp_.GetPieceSize();
  }

  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const override {
    std::vector<int> ids;
    const auto st = sp_.Encode(text, &ids);
    MINILLM_TEXT_REQUIRE(st.ok(), path_ << ": SentencePiece encode failed: " << st.ToString());
    if (add_special && add_bos && bos_id >= 0) out.push_back(bos_id);
    out.insert(out.end(), ids.begin(), ids.end());
    if (add_special && add_eos && eos_id >= 0) out.push_back(eos_id);
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<int> keep;
    keep.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= n_) continue;  // unknown ids are skipped, as Hugging Face does
      if (skip_special && is_special(id)) continue;
      keep.push_back(id);
    }
    std::string out;
    const auto st = sp_.Decode(keep, &out);
    MINILLM_TEXT_REQUIRE(st.ok(), path_ << ": SentencePiece decode failed: " << st.ToString());
    return out;
  }

  int32_t vocab_size() const override { return n_; }
  std::string id_to_token(int32_t id) const override {
    return id >= 0 && id < n_ ? sp_.IdToPiece(id) : std::string();
  }
  int32_t token_to_id(std::string_view tok) const override {
    const int id = sp_.PieceToId(tok);
    // PieceToId answers unk_id for unknown pieces
    return id >= 0 && id < n_ && sp_.IdToPiece(id) == tok ? id : -1;
  }
  bool is_special(int32_t id) const override { return id >= 0 && id < n_ && sp_.IsControl(id); }
  bool is_byte_token(int32_t id) const override { return id >= 0 && id < n_ && sp_.IsByte(id); }
  std::string kind() const override { return "tokenizer.model (SentencePiece)"; }

  int32_t model_bos() const { return sp_.bos_id(); }
  int32_t model_eos() const { return sp_.eos_id(); }

  bool add_bos = true, add_eos = false;

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  int32_t n_ = 0;
};

}  // namespace

std::unique_ptr<TokenizerImpl> load_sp_tokenizer(const std::string& path, const std::string& content,
                                                 const json* config) {
  auto t = std::make_unique<SpTokenizer>(path, content);
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

}  // namespace minillm::text
