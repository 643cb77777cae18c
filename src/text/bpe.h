// BPE model of a tokenizer.json: vocabulary, ranked merges, byte fallback, unknown token.
//
// encode_word() takes one pre-token and applies merges lowest rank first (leftmost among equal
// ranks), as Hugging Face's Word::merge_all does. Symbols live in a doubly linked list over an
// array; pair ranks come from an open-addressing hash map keyed by (left id, right id). Short
// words keep the rank of each adjacent pair in an array and scan it (no heap, no allocation);
// long words use a binary heap of (rank, position) with stale entries skipped. Both orders are
// the same: the minimum (rank, position) among the live pairs.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace minillm::text {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Open addressing, linear probing; keys are (a << 32 | b) with a, b >= 0.
class PairMap {
 public:
  void build(const std::vector<std::pair<uint64_t, uint64_t>>& kv);  // key -> value
  // value for key, or UINT64_MAX
  uint64_t get(uint64_t key) const {
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    for (;;) {
      const uint64_t k = keys_[i];
      if (k == key) return vals_[i];
      if (k == kEmpty) return kEmpty;
      i = (i + 1) & mask_;
    }
  }
  static constexpr uint64_t kEmpty = ~0ull;

 private:
  std::vector<uint64_t> keys_{kEmpty}, vals_{kEmpty};
  size_t mask_ = 0;
  int shift_ = 63;
};

// Ids of a file with n tokens must be below this (real files number their tokens densely).
inline int64_t max_token_id(size_t n) { return int64_t(n) * 4 + 65536; }

class BpeModel {
 public:
  // model: the "model" object of tokenizer.json; path names the file in errors.
  BpeModel(const nlohmann::json& model, const std::string& path);

  struct Sym {
    int32_t id, prev, next;
  };
  // Appends the ids of one pre-token (its UTF-8 characters are the initial symbols); scratch is
  // reused between calls.
  void encode_word(std::string_view word, std::vector<int32_t>& out, std::vector<Sym>& scratch) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const {
    std::vector<Sym> scratch;
    encode_word(word, out, scratch);
  }
  // The same with the merge order forced to the heap (tests compare both paths).
  void encode_word_heap(std::string_view word, std::vector<int32_t>& out) const;

  int32_t token_to_id(std::string_view token) const {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
  }
  const std::string* id_to_token(int32_t id) const {
    return id >= 0 && size_t(id) < vocab_r_.size() && has_[id] ? &vocab_r_[id] : nullptr;
  }
  int32_t id_end() const { return static_cast<int32_t>(vocab_r_.size()); }  // max id + 1
  int32_t vocab_count() const { return static_cast<int32_t>(vocab_.size()); }  // number of tokens
  bool byte_fallback() const { return byte_fallback_; }
  int32_t byte_token(uint8_t b) const { return byte_ids_[b]; }

 private:
  // Initial symbols of a word (characters, byte fallback, unknown tokens) -> syms.
  void initial_symbols(std::string_view word, std::vector<Sym>& syms) const;
  void merge_scan(std::vector<Sym>& syms) const;
  void merge_heap(std::vector<Sym>& syms) const;
  uint64_t pair(int32_t a, int32_t b) const {
    return merges_.get((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
  }

  StringMap vocab_;
  std::vector<std::string> vocab_r_;
  std::vector<uint8_t> has_;
  PairMap merges_;  // (left, right) -> (rank << 32 | new id)
  int32_t unk_id_ = -1;
  std::string unk_name_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256];
  int32_t ascii_ids_[128];  // vocabulary id of each ASCII character (-1 when absent)
};

}  // namespace minillm::text
