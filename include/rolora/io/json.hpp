// JSON from untrusted bytes, for the io/ readers (safetensors headers, adapter_config.json).
//
// parse_json bounds what a hostile text can make the parser and everything after it do:
//   - nesting: the bytes are scanned before parsing and more than max_json_depth open brackets
//     are refused, so neither the parser, nor the destructor, nor a message recurses deeply;
//   - duplicate keys: refused at any depth (nlohmann would silently keep the last one);
//   - messages: json_excerpt and bounded_text quote a bounded prefix, never a whole value.
// Needs nlohmann-json (an optional dependency of rolora).
#pragma once
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rolora {

// The deepest nesting of arrays and objects the io/ readers accept (their formats need 3).
inline constexpr std::size_t max_json_depth = 64;

namespace detail::json_io {

// What went wrong in parse_json, for the caller to turn into its own error id.
enum class fault { depth, syntax, duplicate_key };

// The first `limit` bytes of `text`, with "..." when it was cut.
inline std::string bounded_text(std::string_view text, std::size_t limit = 120) {
  if (text.size() <= limit) return std::string(text);
  return std::string(text.substr(0, limit)) + "...";
}

// The byte offset at which `text` opens its (max_depth + 1)-th nested bracket, if it does.
// Brackets inside strings do not count; the scan follows the JSON lexer's string rules.
inline std::optional<std::size_t> too_deep_at(std::span<const std::uint8_t> text,
                                              std::size_t max_depth) {
  std::size_t depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::nullopt;
}

// A short JSON rendering of v (at most about `limit` bytes, "..." when cut) for error messages.
// Recursion is bounded by the nesting parse_json admitted.
template <class Json>
void excerpt_into(const Json& v, std::string& out, std::size_t limit) {
  if (out.size() >= limit) return;
  const auto dump = [](const Json& s) {
    return s.dump(-1, ' ', false, Json::error_handler_t::replace);
  };
  if (v.is_object() || v.is_array()) {
    out += v.is_object() ? '{' : '[';
    bool first = true;
    for (const auto& [key, item] : v.items()) {
      if (out.size() >= limit) break;
      if (!first) out += ',';
      first = false;
      if (v.is_object()) out += dump(Json(bounded_text(key, limit))) + ':';
      excerpt_into(item, out, limit);
    }
    out += v.is_object() ? '}' : ']';
  } else if (v.is_string()) {
    out += dump(Json(bounded_text(v.template get_ref<const std::string&>(), limit)));
  } else {
    out += dump(v);
  }
}
template <class Json>
std::string json_excerpt(const Json& v, std::size_t limit = 120) {
  std::string out;
  excerpt_into(v, out, limit);
  return bounded_text(out, limit);
}

// Parses `text` as Json (nlohmann::json or ordered_json). On any problem calls
// fail(fault, message), which must throw; the message says what was found, quoting a bounded
// prefix of the offending text.
template <class Json, class Fail>
Json parse_json(std::span<const std::uint8_t> text, Fail&& fail,
                std::size_t max_depth = max_json_depth) {
  if (const auto at = too_deep_at(text, max_depth)) {
    fail(fault::depth, "arrays and objects nest deeper than " + std::to_string(max_depth) +
                           " levels (at byte " + std::to_string(*at) + ")");
  }
  // Record duplicate keys at any depth; the parse goes on and the first one is reported.
  std::vector<std::set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  const typename Json::parser_callback_t on_event = [&](int, typename Json::parse_event_t event,
                                                        Json& parsed) {
    using event_t = typename Json::parse_event_t;
    if (event == event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == event_t::key && !open_objects.empty() && parsed.is_string()) {
      const auto& key = parsed.template get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && !duplicate) duplicate = key;
    }
    return true;
  };
  Json value;
  try {
    value = Json::parse(text.begin(), text.end(), on_event);
  } catch (const typename Json::exception& e) {
    fail(fault::syntax, "not valid UTF-8 JSON: " + bounded_text(e.what(), 240));
  }
  if (duplicate)
    fail(fault::duplicate_key,
         "key \"" + bounded_text(*duplicate) + "\" appears twice in one object");
  return value;
}

}  // namespace detail::json_io
}  // namespace rolora
