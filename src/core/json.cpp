// Strict JSON parsing (see json.h): one pass of nlohmann's parser with a callback that tracks the
// nesting depth and the keys of every open object.
#include "core/json.h"

#include <cstring>
#include <unordered_set>
#include <vector>

#include "minillm/core/check.h"

namespace minillm {

nlohmann::json parse_json_strict(std::string_view text, const std::string& what, const JsonLimits& limits) {
  using json = nlohmann::json;
  if (const void* nul = std::memchr(text.data(), '\0', text.size())) {
    MINILLM_FAIL(what << ": NUL byte at offset " << static_cast<const char*>(nul) - text.data()
                      << " (JSON text may not contain one; nlohmann would stop reading there)");
  }
  std::vector<std::unordered_set<std::string>> open_keys;  // one set per open object, innermost last
  std::vector<bool> is_object;                              // per open container
  auto cb = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= limits.max_depth)
          MINILLM_FAIL(what << ": JSON nested deeper than " << limits.max_depth << " levels");
        is_object.push_back(event == json::parse_event_t::object_start);
        if (is_object.back()) open_keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!is_object.empty()) {
          if (is_object.back()) open_keys.pop_back();
          is_object.pop_back();
        }
        break;
      case json::parse_event_t::key:
        if (!open_keys.empty() && parsed.is_string() && !open_keys.back().insert(parsed.get_ref<const std::string&>()).second)
          MINILLM_FAIL(what << ": duplicate key " << excerpt(parsed.get_ref<const std::string&>()) << " in one JSON object");
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), cb);
  } catch (const json::parse_error& e) {
    MINILLM_FAIL(what << ": malformed JSON at byte " << e.byte << ": " << excerpt(e.what(), 160));
  } catch (const json::exception& e) {  // out_of_range 406: a number beyond a double
    MINILLM_FAIL(what << ": malformed JSON: " << excerpt(e.what(), 160));
  }
}

std::string json_excerpt(const nlohmann::json& v, size_t max_chars) {
  // Nesting is bounded by parse_json_strict, so dump() cannot recurse deeply; the text is cut.
  const std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() <= max_chars) return s;
  size_t cut = max_chars;  // dump() wrote valid UTF-8 (error_handler_t::replace): cut at a character
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
  detail::Message m;
  m << s.substr(0, cut) << "... (" << s.size() << " chars)";
  return m.str();
}

}  // namespace minillm
