// Strict JSON for untrusted input (model configs, safetensors headers; HF config.json and tokenizer
// files as they land). nlohmann's defaults are lenient where a loader must not be: the last of two
// equal keys silently wins, text after a NUL byte is ignored, nesting is unbounded (and dumping a
// deeply nested value to build a message recurses off the stack), a number out of range of a double
// escapes as a bare nlohmann exception, and its messages echo whole tokens.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace minillm {

struct JsonLimits {
  int max_depth = 64;  // nesting of arrays and objects; the deepest document we read needs 4
};

// Parses `text` as one JSON document. Rejects NUL bytes, duplicate keys within an object, nesting
// deeper than limits.max_depth, syntax errors and numbers out of range, each with a minillm::Error
// "<what>: <problem>" that quotes at most a short excerpt of the input.
nlohmann::json parse_json_strict(std::string_view text, const std::string& what, const JsonLimits& limits = {});

// A short one-line rendering of a JSON value for error messages: its JSON text, cut to `max_chars`
// (with "..." and the full length). For values from parse_json_strict (nesting at most 64).
std::string json_excerpt(const nlohmann::json& v, size_t max_chars = 48);

}  // namespace minillm
