// BPE model of a tokenizer.json (see bpe.h for the algorithm).
#include "text/bpe.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "minillm/core/check.h"
#include "text/text_util.h"

namespace minillm::text {

using json = nlohmann::json;

void PairMap::build(const std::vector<std::pair<uint64_t, uint64_t>>& kv) {
  size_t cap = 16;
  while (cap < kv.size() * 2) cap <<= 1;
  keys_.assign(cap, kEmpty);
  vals_.assign(cap, kEmpty);
  mask_ = cap - 1;
  shift_ = 64 - std::countr_zero(cap);
  for (const auto& [k, v] : kv) {
    size_t i = (k * 0x9E3779B97F4A7C15ull) >> shift_;
    while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & mask_;
    keys_[i] = k;
    vals_[i] = v;  // a repeated merge: the later rank wins, as in Hugging Face's map
  }
}

namespace {
std::string opt_string(const json& m, const char* key) {
  auto it = m.find(key);
  if (it == m.end() || it->is_null()) return "";
  return it->get<std::string>();
}
bool opt_bool(const json& m, const char* key, bool def) {
  auto it = m.find(key);
  if (it == m.end() || it->is_null()) return def;
  return it->get<bool>();
}
}  // namespace

BpeModel::BpeModel(const json& m, const std::string& path) {
  const std::string where = path + ": model";
  auto dropout = m.find("dropout");
  if (dropout != m.end() && !dropout->is_null() && dropout->get<double>() != 0.0)
    MINILLM_FAIL(where << ".dropout = " << dropout->dump() << " is not supported (deterministic BPE only)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!opt_string(m, key).empty())
      MINILLM_FAIL(where << "." << key << " = \"" << opt_string(m, key) << "\" is not supported");
  }
  fuse_unk_ = opt_bool(m, "fuse_unk", false);
  byte_fallback_ = opt_bool(m, "byte_fallback", false);
  ignore_merges_ = opt_bool(m, "ignore_merges", false);

  auto vit = m.find("vocab");
  MINILLM_TEXT_REQUIRE(vit != m.end() && vit->is_object(), where << ".vocab is missing or not an object");
  vocab_.reserve(vit->size() * 2);
  int32_t max_id = -1;
  // ids are dense in real files; a bound keeps a hostile file from asking for a huge id table
  const int64_t id_limit = max_token_id(vit->size());
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    MINILLM_TEXT_REQUIRE(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                      it.value().get<int64_t>() < id_limit,
                  where << ".vocab[\"" << excerpt(it.key()) << "\"] = " << excerpt(it.value().dump())
                        << " is not an id in [0, " << id_limit << ")");
    const auto id = it.value().get<int32_t>();
    vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  vocab_r_.assign(size_t(max_id + 1), std::string());
  has_.assign(size_t(max_id + 1), 0);
  for (const auto& [tok, id] : vocab_) {
    vocab_r_[id] = tok;
    has_[id] = 1;
  }

  const std::string unk = opt_string(m, "unk_token");
  if (!unk.empty()) {
    unk_id_ = token_to_id(unk);  // Hugging Face fails only when the unknown token is needed; so do we
  }
  unk_name_ = unk;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = token_to_id(name);
  }
  for (int c = 0; c < 128; ++c) ascii_ids_[c] = token_to_id(std::string(1, char(c)));

  auto mit = m.find("merges");
  MINILLM_TEXT_REQUIRE(mit != m.end() && mit->is_array(), where << ".merges is missing or not an array");
  std::vector<std::pair<uint64_t, uint64_t>> kv;
  kv.reserve(mit->size());
  uint32_t rank = 0;
  for (const auto& e : *mit) {
    std::string a, b;
    if (e.is_string()) {
      const auto& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      MINILLM_TEXT_REQUIRE(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                    where << ".merges[" << rank << "] = \"" << excerpt(s) << "\" is not two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      MINILLM_TEXT_REQUIRE(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(),
                    where << ".merges[" << rank << "] = " << excerpt(e.dump()) << " is not a pair of strings");
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    }
    const int32_t ia = token_to_id(a), ib = token_to_id(b), in = token_to_id(a + b);
    MINILLM_TEXT_REQUIRE(ia >= 0 && ib >= 0 && in >= 0,
                  where << ".merges[" << rank << "] (\"" << excerpt(a) << "\", \"" << excerpt(b)
                        << "\"): a token of the merge or its result is not in the vocabulary");
    kv.emplace_back((uint64_t(uint32_t(ia)) << 32) | uint32_t(ib), (uint64_t(rank) << 32) | uint32_t(in));
    ++rank;
  }
  merges_.build(kv);
}

void BpeModel::initial_symbols(std::string_view w, std::vector<Sym>& syms) const {
  syms.clear();
  int32_t pend_unk = -1;  // a pending unknown token (fused with the next unknown when fuse_unk)
  auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, n + 1});
  };
  size_t i = 0;
  while (i < w.size()) {
    const auto lead = static_cast<uint8_t>(w[i]);
    const size_t n = static_cast<size_t>(utf8_len(lead));
    int32_t id = lead < 0x80 ? ascii_ids_[lead] : token_to_id(w.substr(i, n));
    if (id >= 0) {
      if (pend_unk >= 0) { add(pend_unk); pend_unk = -1; }
      add(id);
      i += n;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (size_t k = 0; k < n; ++k) all = all && byte_ids_[static_cast<uint8_t>(w[i + k])] >= 0;
      if (all) {  // as Hugging Face: the bytes go in before a pending unknown token
        for (size_t k = 0; k < n; ++k) add(byte_ids_[static_cast<uint8_t>(w[i + k])]);
        i += n;
        continue;
      }
    }
    if (!unk_name_.empty()) {
      MINILLM_TEXT_REQUIRE(unk_id_ >= 0, "BPE: unk_token \"" << unk_name_ << "\" is not in the vocabulary");
      if (pend_unk >= 0 && !fuse_unk_) add(pend_unk);
      pend_unk = unk_id_;
    }  // no unknown token: the character is dropped, as in Hugging Face
    i += n;
  }
  if (pend_unk >= 0) add(pend_unk);
  if (!syms.empty()) syms.back().next = -1;
}

void BpeModel::merge_scan(std::vector<Sym>& s) const {
  // rank[i]: rank of the pair (s[i], s[next]) or kNone; merged-away symbols have id -1.
  constexpr uint32_t kNone = ~0u;
  uint32_t ranks[64];
  const int n = static_cast<int>(s.size());
  for (int i = 0; i < n; ++i) {
    const uint64_t v = i + 1 < n ? pair(s[i].id, s[i + 1].id) : PairMap::kEmpty;
    ranks[i] = v == PairMap::kEmpty ? kNone : uint32_t(v >> 32);
  }
  for (;;) {
    uint32_t best = kNone;
    int at = -1;
    for (int i = 0; i < n; ++i) {
      if (ranks[i] < best) { best = ranks[i]; at = i; }
    }
    if (at < 0) break;
    const int nx = s[at].next;
    s[at].id = static_cast<int32_t>(uint32_t(pair(s[at].id, s[nx].id)));
    s[at].next = s[nx].next;
    if (s[nx].next >= 0) s[s[nx].next].prev = at;
    s[nx].id = -1;
    ranks[nx] = kNone;
    auto rank_of = [&](int i) {
      if (i < 0 || s[i].next < 0) return kNone;
      const uint64_t v = pair(s[i].id, s[s[i].next].id);
      return v == PairMap::kEmpty ? kNone : uint32_t(v >> 32);
    };
    ranks[at] = rank_of(at);
    if (s[at].prev >= 0) ranks[s[at].prev] = rank_of(s[at].prev);
  }
}

void BpeModel::merge_heap(std::vector<Sym>& s) const {
  struct Merge {
    uint32_t rank;
    int32_t pos, new_id;
    bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Merge, std::vector<Merge>, std::greater<Merge>> q;
  auto push = [&](int i) {
    if (i < 0 || s[i].next < 0) return;
    const uint64_t v = pair(s[i].id, s[s[i].next].id);
    if (v != PairMap::kEmpty) q.push({uint32_t(v >> 32), i, int32_t(uint32_t(v))});
  };
  for (int i = 0; i + 1 < static_cast<int>(s.size()); ++i) push(i);
  while (!q.empty()) {
    const Merge top = q.top();
    q.pop();
    Sym& cur = s[top.pos];
    if (cur.id < 0 || cur.next < 0) continue;
    const int nx = cur.next;
    const uint64_t v = pair(cur.id, s[nx].id);
    if (v == PairMap::kEmpty || int32_t(uint32_t(v)) != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    cur.next = s[nx].next;
    if (s[nx].next >= 0) s[s[nx].next].prev = top.pos;
    s[nx].id = -1;
    push(cur.prev);
    push(top.pos);
  }
}

void BpeModel::encode_word(std::string_view w, std::vector<int32_t>& out, std::vector<Sym>& syms) const {
  if (w.empty()) return;
  if (ignore_merges_) {
    const int32_t id = token_to_id(w);
    if (id >= 0) { out.push_back(id); return; }
  }
  initial_symbols(w, syms);
  if (syms.size() <= 64) merge_scan(syms); else merge_heap(syms);
  for (const Sym& x : syms) if (x.id >= 0) out.push_back(x.id);
}

void BpeModel::encode_word_heap(std::string_view w, std::vector<int32_t>& out) const {
  if (w.empty()) return;
  if (ignore_merges_) {
    const int32_t id = token_to_id(w);
    if (id >= 0) { out.push_back(id); return; }
  }
  std::vector<Sym> syms;
  initial_symbols(w, syms);
  merge_heap(syms);
  for (const Sym& x : syms) if (x.id >= 0) out.push_back(x.id);
}

}  // namespace minillm::text
