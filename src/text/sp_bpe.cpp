// SentencePiece BPE without libsentencepiece; the algorithm is in sp_bpe.h.
// Symbols live in a linked list over an array; candidate merges in a max-heap of (score, -left) with
// stale entries (a side already merged away) skipped when popped.
#include "text/sp_bpe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "text/sp_model_check.h"
#include "text/text_util.h"

namespace minillm::text {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace

// Calls f(field) for each field of the message bytes[f.begin, f.end) (the file passed sp_model_problem()).
template <typename F>
void for_each_field(std::string_view bytes, size_t begin, size_t end, F&& f) {
  proto_walk(bytes, begin, end, [&](const ProtoField& field) {
    f(field);
    return std::string();
  });
}

}  // namespace

std::string sp_bpe_unsupported(std::string_view bytes) {
  uint64_t model_type = 1;  // UNIGRAM, the proto's default
  bool suffix = false, remove_ws = true;
  size_t charsmap = 0;
  for_each_field(bytes, 0, bytes.size(), [&](const ProtoField& f) {
    if (f.number == 2 && f.wire == 2)
      for_each_field(bytes, f.begin, f.end, [&](const ProtoField& t) {
        if (t.number == 3 && t.wire == 0) model_type = t.varint;
        if (t.number == 24 && t.wire == 0) suffix = t.varint != 0;
      });
    if (f.number == 3 && f.wire == 2)
      for_each_field(bytes, f.begin, f.end, [&](const ProtoField& n) {
        if (n.number == 2 && n.wire == 2) charsmap = n.end - n.begin;
        if (n.number == 4 && n.wire == 0) remove_ws = n.varint != 0;
      });
  });
  if (model_type != 2) return "model_type " + std::to_string(model_type) + " (BPE is 2)";
  if (charsmap) return "a precompiled normalization map";
  if (remove_ws) return "remove_extra_whitespaces";
  if (suffix) return "treat_whitespace_as_suffix";
  return "";
}

SpBpeModel::SpBpeModel(std::string_view bytes, const std::string& path) {
  const std::string why = sp_bpe_unsupported(bytes);
  MINILLM_TEXT_REQUIRE(why.empty(), path << ": SentencePiece model not supported natively: " << why);
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  auto text = [&](const ProtoField& f) { return std::string(bytes.substr(f.begin, f.end - f.begin)); };
  for_each_field(bytes, 0, bytes.size(), [&](const ProtoField& f) {
    if (f.number == 1 && f.wire == 2) {
      Piece p;
      for_each_field(bytes, f.begin, f.end, [&](const ProtoField& g) {
        if (g.number == 1 && g.wire == 2) p.text = text(g);
        if (g.number == 2 && g.wire == 5) std::memcpy(&p.score, bytes.data() + g.begin, 4);
        if (g.number == 3 && g.wire == 0) p.type = static_cast<int>(g.varint);
      });
      pieces_.push_back(std::move(p));
    } else if (f.number == 2 && f.wire == 2) {
      for_each_field(bytes, f.begin, f.end, [&](const ProtoField& t) {
        if (t.number == 35 && t.wire == 0) byte_fallback_ = t.varint != 0;
        if (t.number == 44 && t.wire == 2) unk_surface_ = text(t);
        if (t.number == 46 && t.wire == 2) bos_piece_ = text(t);
        if (t.number == 47 && t.wire == 2) eos_piece_ = text(t);
      });
    } else if (f.number == 3 && f.wire == 2) {
      for_each_field(bytes, f.begin, f.end, [&](const ProtoField& n) {
        if (n.number == 3 && n.wire == 0) add_dummy_prefix_ = n.varint != 0;
        if (n.number == 5 && n.wire == 0) escape_whitespaces_ = n.varint != 0;
      });
    }
  });
  int unknowns = 0;
  byte_value_.assign(pieces_.size(), -1);
  for (int32_t id = 0; id < size(); ++id) {
    Piece& p = pieces_[id];
    MINILLM_TEXT_REQUIRE(p.type >= kNormal && p.type <= kByte, path << ": piece " << id << " has type " << p.type);
    MINILLM_TEXT_REQUIRE(!p.text.empty() && utf8_invalid_at(p.text) == std::string::npos,
                         path << ": piece " << id << " is empty or not valid UTF-8");
    MINILLM_TEXT_REQUIRE(std::isfinite(p.score), path << ": piece " << id << " has score " << p.score);
    StringMap& map = p.type == kNormal || p.type == kUserDefined || p.type == kUnused ? mergeable_ : reserved_;
    MINILLM_TEXT_REQUIRE(map.emplace(p.text, id).second, path << ": piece " << id << " (\"" << excerpt(p.text)
                                                       << "\") appears twice");
    if (p.type == kUserDefined) user_defined_.push_back(p.text);
    if (p.type == kUnknown) unk_id_ = id, ++unknowns;
    if (p.type == kByte) {
      // SentencePiece's own form, "<0x%02X>": two upper-case hex digits
      auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
      const bool form = p.text.size() == 6 && p.text.starts_with("<0x") && p.text[5] == '>';
      const int hi = form ? hex(p.text[3]) : -1, lo = form ? hex(p.text[4]) : -1;
      MINILLM_TEXT_REQUIRE(hi >= 0 && lo >= 0,
                           path << ": byte piece " << id << " is \"" << excerpt(p.text) << "\", not <0xNN>");
      const int v = hi * 16 + lo;
      byte_ids_[v] = id;
      byte_value_[id] = static_cast<int16_t>(v);
    }
  }
  MINILLM_TEXT_REQUIRE(utf8_invalid_at(unk_surface_) == std::string::npos, path << ": unk_surface is not valid UTF-8");
  MINILLM_TEXT_REQUIRE(unknowns == 1, path << ": " << unknowns << " unknown pieces (1 expected)");
  if (byte_fallback_)
    for (int b = 0; b < 256; ++b) MINILLM_TEXT_REQUIRE(byte_ids_[b] >= 0, path << ": byte_fallback without piece <0x" << b << ">");
  std::sort(user_defined_.begin(), user_defined_.end(), [](const auto& a, const auto& b) { return a.size() > b.size(); });
}

int32_t SpBpeModel::piece_to_id(std::string_view piece) const {
  if (auto it = reserved_.find(piece); it != reserved_.end()) return it->second;
  if (auto it = mergeable_.find(piece); it != mergeable_.end()) return it->second;
  return unk_id_;
}

int32_t SpBpeModel::mergeable_id(std::string_view s) const {
  auto it = mergeable_.find(s);
  return it == mergeable_.end() ? -1 : it->second;
}

// One final symbol to ids: known pieces as they are, unknown ones as bytes or one unknown id per run.
void SpBpeModel::emit(std::string_view s, std::vector<int32_t>& out, bool& prev_unknown) const {
  const int32_t id = piece_to_id(s);
  if (is_unknown(id) && byte_fallback_) {
    for (char c : s) out.push_back(byte_ids_[static_cast<uint8_t>(c)]);
    return;
  }
  if (!(is_unknown(id) && prev_unknown)) out.push_back(id);
  prev_unknown = is_unknown(id);
}

void SpBpeModel::encode(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string norm;
  norm.reserve(text.size() + 3 * 8);
  if (add_dummy_prefix_) norm += escape_whitespaces_ ? kSpace : std::string_view(" ");
  for (char c : text) {
    if (c == ' ' && escape_whitespaces_)
      norm += kSpace;
    else
      norm += c;
  }
  // Initial symbols: user-defined pieces (longest match) or single characters.
  std::vector<Symbol> sym;
  for (size_t i = 0; i < norm.size();) {
    size_t len = 0;
    bool frozen = false;
    for (const std::string& u : user_defined_)
      if (norm.compare(i, u.size(), u) == 0) {
        len = u.size(), frozen = true;
        break;
      }
    if (!len) len = std::min<size_t>(std::max(utf8_len(static_cast<uint8_t>(norm[i])), 1), norm.size() - i);
    const int k = static_cast<int>(sym.size());
    sym.push_back({i, len, k - 1, i + len < norm.size() ? k + 1 : -1, frozen});
    i += len;
  }
  struct Cand {
    float score;
    int left, right;
    size_t len;
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Cand> heap;
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> unmerge;  // unused pieces
  auto view = [&](const Symbol& s) { return std::string_view(norm).substr(s.begin, s.len); };
  auto consider = [&](int l, int r) {
    if (l < 0 || r < 0 || sym[l].frozen || sym[r].frozen) return;
    const std::string_view both = std::string_view(norm).substr(sym[l].begin, sym[l].len + sym[r].len);
    const int32_t id = mergeable_id(both);
    if (id < 0) return;
    heap.push({pieces_[id].score, l, r, both.size()});
    if (pieces_[id].type == kUnused) unmerge[both] = {view(sym[l]), view(sym[r])};
  };
  for (size_t i = 1; i < sym.size(); ++i) consider(int(i) - 1, int(i));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Symbol &l = sym[c.left], &r = sym[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;  // stale
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    r.len = 0;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }
  bool prev_unknown = false;
  auto resegment = [&](auto&& self, std::string_view s) -> void {
    const int32_t id = piece_to_id(s);
    auto it = pieces_[id].type == kUnused ? unmerge.find(s) : unmerge.end();
    if (it == unmerge.end()) return emit(s, out, prev_unknown);
    self(self, it->second.first);
    self(self, it->second.second);
  };
  for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) resegment(resegment, view(sym[i]));
}

std::string SpBpeModel::decode(std::span<const int32_t> ids) const {
  std::string text;
  bool bos_ws = true, bos_ws_seen = false;
  size_t i = 0;
  while (i < ids.size()) {
    if (is_byte(ids[i])) {  // a run of byte pieces, decoded as UTF-8 (an invalid byte: U+FFFD)
      std::string bytes;
      for (; i < ids.size() && is_byte(ids[i]); ++i)
        bytes += static_cast<char>(byte_value_[ids[i]]);
      for (size_t k = 0; k < bytes.size();) {
        const size_t n = std::min<size_t>(utf8_len(static_cast<uint8_t>(bytes[k])), bytes.size() - k);
        const bool ok = utf8_invalid_at(std::string_view(bytes).substr(k, n)) == std::string_view::npos;
        text += ok ? std::string_view(bytes).substr(k, n) : std::string_view("\xEF\xBF\xBD");
        k += ok ? n : 1;
      }
      continue;
    }
    const int32_t id = ids[i++];
    if (bos_ws_seen || !text.empty()) bos_ws = false;
    bos_ws_seen = false;
    if (is_control(id)) continue;
    if (is_unknown(id)) {
      text += unk_surface_;
      continue;
    }
    std::string_view p = pieces_[id].text;
    if (bos_ws && add_dummy_prefix_ && p.substr(0, kSpace.size()) == kSpace) {
      p.remove_prefix(kSpace.size());
      bos_ws_seen = true;
    }
    for (size_t k = 0; k < p.size();) {
      if (p.compare(k, kSpace.size(), kSpace) == 0) {
        text += ' ';
        k += kSpace.size();
      } else {
        text += p[k++];
      }
    }
  }
  return text;
}

}  // namespace minillm::text
