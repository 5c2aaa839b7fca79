// Hugging Face chat templates: the Jinja2 source a model ships in tokenizer_config.json's
// "chat_template" (or chat_template.jinja), rendered into the text a chat model is trained and
// prompted on. transformers renders it with jinja2's ImmutableSandboxedEnvironment(trim_blocks,
// lstrip_blocks) plus raise_exception, strftime_now, a json.dumps-like tojson and loop controls;
// the renderer here follows @huggingface/jinja 0.5.13 (the JavaScript renderer transformers.js
// uses), which tests/tokenizers/check_chat.js compares it with. Where that library and Python's
// jinja2 differ, this file follows the library and says so in a comment marked "(jinja2: ...)".
//
//   rolora::tokenizers::chat_template tpl(source);
//   auto out = tpl.render({{"messages", messages}, {"add_generation_prompt", true}});
//   out.text;              // the prompt
//   out.generation_spans;  // [begin, end) of what {% generation %} blocks rendered
//
// Supported: text, {{ }}, {% %}, {# #}, '-' whitespace control, trim_blocks/lstrip_blocks as the
// library applies them (a text rewrite before lexing); if/elif/else, for (tuple targets,
// `for x in xs if c`, for-else, loop.*), set (names, tuples, namespace attributes, block set),
// macro/call (defaults, keyword arguments, varargs/kwargs/caller), filter blocks, break/continue,
// generation/endgeneration; the expressions, tests, filters and methods listed in
// docs/tokenizers.md. Anything else is refused while parsing ("<name>:<line>:<col>: ...") or,
// when it depends on the data, while rendering (a value_error naming the line).
#pragma once
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <deque>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/tokenizers/unicode.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rolora::tokenizers {

// The output of a rendering: the text and, for templates that mark the assistant's response
// with {% generation %} ... {% endgeneration %} (transformers' return_assistant_tokens_mask),
// the [begin, end) byte ranges of `text` rendered inside those blocks, in order.
struct rendered_chat {
  std::string text;
  std::vector<std::pair<std::size_t, std::size_t>> generation_spans;
};

namespace detail::jinja {

// Deeper nesting than this (blocks, brackets, macro calls, printed values) is refused.
inline constexpr int max_depth = 256;
// range() longer than this is refused.
inline constexpr double max_range = 1e7;

// ---- UTF-8 and JavaScript's character classes --------------------------------------------------

// The code point at s[i] and its length in bytes (an invalid byte: U+FFFD, one byte).
inline std::pair<char32_t, std::size_t> code_point_at(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {b0, 1};
  std::size_t n = 0;
  char32_t c = 0;
  if ((b0 & 0xE0) == 0xC0)
    n = 1, c = b0 & 0x1F;
  else if ((b0 & 0xF0) == 0xE0)
    n = 2, c = b0 & 0x0F;
  else if ((b0 & 0xF8) == 0xF0)
    n = 3, c = b0 & 0x07;
  else
    return {0xFFFD, 1};
  if (s.size() - i < n + 1) return {0xFFFD, 1};
  for (std::size_t k = 1; k <= n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return {0xFFFD, 1};
    c = (c << 6) | (b & 0x3F);
  }
  return {c, n + 1};
}

// JavaScript's /\s/ and String.prototype.trim's white space (the library's lexer uses it).
inline bool is_js_space(char32_t c) {
  if (c <= 32) return c == 32 || (c >= 9 && c <= 13);
  return c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}
// Bytes of white space at s[i] (0 when none).
inline std::size_t space_at(std::string_view s, std::size_t i) {
  if (i >= s.size()) return 0;
  const auto [c, n] = code_point_at(s, i);
  return is_js_space(c) ? n : 0;
}
inline std::string_view trim_start(std::string_view s) {
  std::size_t i = 0;
  while (std::size_t n = space_at(s, i)) i += n;
  return s.substr(i);
}
inline std::string_view trim_end(std::string_view s) {
  std::size_t end = 0;
  for (std::size_t i = 0; i < s.size();) {
    const auto [c, n] = code_point_at(s, i);
    i += n;
    if (!is_js_space(c)) end = i;
  }
  return s.substr(0, end);
}
inline std::string_view trim(std::string_view s) { return trim_end(trim_start(s)); }

inline std::u32string to_code_points(std::string_view s) {
  std::u32string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto [c, n] = code_point_at(s, i);
    out.push_back(c);
    i += n;
  }
  return out;
}
// JavaScript's String length: UTF-16 code units.
inline std::int64_t utf16_length(std::string_view s) {
  std::int64_t n = 0;
  for (std::size_t i = 0; i < s.size();) {
    const auto [c, len] = code_point_at(s, i);
    n += c >= 0x10000 ? 2 : 1;
    i += len;
  }
  return n;
}

inline char32_t upper_of(char32_t c) {
  // ASCII, Latin-1, Greek and Cyrillic; JavaScript's toUpperCase maps all of Unicode (and "ß" to
  // "SS"): other scripts are left as they are here.
  if (c >= 'a' && c <= 'z') return c - 32;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7) || (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) ||
      (c >= 0x430 && c <= 0x44F))
    return c - 0x20;
  if (c >= 0x450 && c <= 0x45F) return c - 0x50;
  return c;
}
inline std::string to_upper(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto [c, n] = code_point_at(s, i);
    if (c == 0xDF)
      out += "SS";  // as JavaScript (and Python)
    else
      append_utf8(out, upper_of(c));
    i += n;
  }
  return out;
}
inline std::string to_lower(std::string_view s) {
  std::u32string low;
  for (std::size_t i = 0; i < s.size();) {
    const auto [c, n] = code_point_at(s, i);
    append_lowercase(low, c);
    i += n;
  }
  return encode_utf8(low);
}

// JavaScript's Number.prototype.toString (shortest round trip; exponent from 1e21 and below 1e-6).
inline std::string js_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0) return "0";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string s(buf, r.ptr);
  const bool negative = s[0] == '-';
  if (negative) s.erase(0, 1);
  const auto e = s.find('e');
  std::string digits;
  for (const char c : s.substr(0, e))
    if (c != '.') digits += c;
  const int k = static_cast<int>(digits.size());
  const int n = std::stoi(s.substr(e + 1)) + 1;
  std::string out;
  if (k <= n && n <= 21) {
    out = digits + std::string(static_cast<std::size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out = digits.substr(0, static_cast<std::size_t>(n)) + "." +
          digits.substr(static_cast<std::size_t>(n));
  } else if (-6 < n && n <= 0) {
    out = "0." + std::string(static_cast<std::size_t>(-n), '0') + digits;
  } else {
    out = digits.substr(0, 1);
    if (k > 1) out += "." + digits.substr(1);
    out += n - 1 >= 0 ? "e+" : "e-";
    out += std::to_string(std::abs(n - 1));
  }
  return negative ? "-" + out : out;
}

// ---- Lexer
// ---------------------------------------------------------------------------------------

enum class tok {
  text,
  number,
  string,
  ident,
  equals,
  lparen,
  rparen,
  open_stmt,
  close_stmt,
  open_expr,
  close_expr,
  lbracket,
  rbracket,
  lbrace,
  rbrace,
  comma,
  dot,
  colon,
  pipe,
  additive,
  multiplicative,
  power,
  comparison,
  unary,
  comment,
  gen_begin,
  gen_end
};

inline const char* tok_name(tok t) {
  static constexpr const char* names[] = {"text",
                                          "a number",
                                          "a string",
                                          "a name",
                                          "'='",
                                          "'('",
                                          "')'",
                                          "'{%'",
                                          "'%}'",
                                          "'{{'",
                                          "'}}'",
                                          "'['",
                                          "']'",
                                          "'{'",
                                          "'}'",
                                          "','",
                                          "'.'",
                                          "':'",
                                          "'|'",
                                          "an operator",
                                          "an operator",
                                          "'**'",
                                          "a comparison",
                                          "a sign",
                                          "a comment",
                                          "{% generation %}",
                                          "{% endgeneration %}"};
  return names[static_cast<int>(t)];
}

struct token {
  tok type;
  std::string value;
  std::size_t pos;  // byte offset in the original source
};

// The source after the library's rewrites (trailing newline, lstrip_blocks, trim_blocks, the
// generation tags cut out), with each byte's offset in the original for messages.
struct prepared {
  std::string text;
  std::vector<std::size_t> origin;                  // text.size() + 1 entries
  std::vector<std::pair<std::size_t, bool>> marks;  // generation tags: position, is_end
};

class source_map {
 public:
  source_map(std::string_view source, std::string name) : source_(source), name_(std::move(name)) {}
  std::string where(std::size_t pos) const {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < pos && i < source_.size();) {
      const auto [c, n] = code_point_at(source_, i);
      if (c == '\n')
        ++line, col = 1;
      else
        ++col;
      i += n;
    }
    return name_ + ":" + std::to_string(line) + ":" + std::to_string(col);
  }
  const std::string& name() const { return name_; }

 private:
  std::string_view source_;
  std::string name_;
};

template <class... Parts>
[[noreturn]] void syntax_error(const source_map& map, std::size_t pos, Parts&&... parts) {
  rolora::raise<value_error>(map.where(pos), ": ", std::forward<Parts>(parts)...);
}

inline prepared prepare(std::string_view source) {
  prepared p;
  std::string s(source);
  std::vector<std::size_t> at(s.size() + 1);
  for (std::size_t i = 0; i <= s.size(); ++i) at[i] = i;
  // The library drops one trailing newline (jinja2's keep_trailing_newline = False).
  if (!s.empty() && s.back() == '\n') {
    s.pop_back();
    at.erase(at.end() - 2);
  }
  // lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1" (a line starts after \n, \r, U+2028, U+2029).
  // (jinja2 does not strip before "{-", which is not a tag; the library's pattern does.)
  {
    std::string o;
    std::vector<std::size_t> oa;
    bool line_start = true;
    for (std::size_t i = 0; i < s.size();) {
      if (line_start) {
        std::size_t j = i;
        while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
        if (j + 1 < s.size() && s[j] == '{' &&
            (s[j + 1] == '#' || s[j + 1] == '%' || s[j + 1] == '-'))
          i = j;
        line_start = false;
        if (i >= s.size()) break;
      }
      const auto [c, n] = code_point_at(s, i);
      for (std::size_t k = 0; k < n; ++k) o.push_back(s[i + k]), oa.push_back(at[i + k]);
      if (c == '\n' || c == '\r' || c == 0x2028 || c == 0x2029) line_start = true;
      i += n;
    }
    oa.push_back(at[s.size()]);
    s = std::move(o);
    at = std::move(oa);
  }
  // trim_blocks: /([#%-]})\n/g -> "$1". (jinja2 removes the newline after a block tag only.)
  {
    std::string o;
    std::vector<std::size_t> oa;
    for (std::size_t i = 0; i < s.size();) {
      if (i + 2 < s.size() && (s[i] == '#' || s[i] == '%' || s[i] == '-') && s[i + 1] == '}' &&
          s[i + 2] == '\n') {
        o.append(s, i, 2), oa.push_back(at[i]), oa.push_back(at[i + 1]);
        i += 3;
        continue;
      }
      o.push_back(s[i]), oa.push_back(at[i]);
      ++i;
    }
    oa.push_back(at[s.size()]);
    s = std::move(o);
    at = std::move(oa);
  }
  // transformers' generation tags: /{%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs, cut out with the
  // white space their '-' strips; here each leaves a mark where it was.
  std::size_t last = 0;
  for (std::size_t i = s.find("{%"); i != std::string::npos; i = s.find("{%", i + 1)) {
    if (i < last) continue;
    std::size_t j = i + 2;
    const bool lstrip = j < s.size() && s[j] == '-';
    if (lstrip) ++j;
    while (std::size_t n = space_at(s, j)) j += n;
    bool end = false;
    if (s.compare(j, 13, "endgeneration") == 0)
      end = true, j += 13;
    else if (s.compare(j, 10, "generation") == 0)
      j += 10;
    else
      continue;
    while (std::size_t n = space_at(s, j)) j += n;
    const bool rstrip = j < s.size() && s[j] == '-';
    if (rstrip) ++j;
    if (s.compare(j, 2, "%}") != 0) continue;
    j += 2;
    std::size_t after_end = j;
    while (std::size_t n = space_at(s, after_end)) after_end += n;
    std::size_t cut = i;
    if (lstrip) {
      // back over white space, code point by code point, not before the previous tag
      std::size_t k = last;
      std::size_t keep = last;
      while (k < i) {
        const auto [c, n] = code_point_at(s, k);
        k += n;
        if (!is_js_space(c)) keep = k;
      }
      cut = std::max(keep, last);
    }
    p.text.append(s, last, cut - last);
    p.origin.insert(p.origin.end(), at.begin() + static_cast<std::ptrdiff_t>(last),
                    at.begin() + static_cast<std::ptrdiff_t>(cut));
    p.marks.emplace_back(p.text.size(), end);
    if (!rstrip) {
      p.text.append(s, j, after_end - j);
      p.origin.insert(p.origin.end(), at.begin() + static_cast<std::ptrdiff_t>(j),
                      at.begin() + static_cast<std::ptrdiff_t>(after_end));
    }
    last = after_end;
    i = after_end == 0 ? 0 : after_end - 1;
  }
  p.text.append(s, last, std::string::npos);
  p.origin.insert(p.origin.end(), at.begin() + static_cast<std::ptrdiff_t>(last), at.end());
  return p;
}

inline bool is_word(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The library's tokenizer (lexer.ts), byte for byte on UTF-8.
inline std::vector<token> lex(const prepared& p, const source_map& map) {
  const std::string& src = p.text;
  const std::size_t length = src.size();
  std::vector<token> tokens;
  std::size_t cur = 0, next_mark = 0;
  int curly = 0;
  const auto origin = [&](std::size_t i) { return p.origin[std::min(i, p.origin.size() - 1)]; };
  const auto fail = [&](std::size_t i, const std::string& what) {
    syntax_error(map, origin(i), what);
  };
  // The type of the last token, generation marks not counted (the library has cut them out).
  const auto last_type = [&]() -> std::optional<tok> {
    for (auto it = tokens.rbegin(); it != tokens.rend(); ++it)
      if (it->type != tok::gen_begin && it->type != tok::gen_end) return it->type;
    return std::nullopt;
  };
  const auto push = [&](tok t, std::string v, std::size_t at) {
    tokens.push_back({t, std::move(v), origin(at)});
  };
  const auto char_at = [&](std::size_t i) { return i < length ? src[i] : '\0'; };
  const auto consume_while = [&](auto pred) {
    const std::size_t start = cur;
    while (cur < length && pred(src[cur])) {
      if (++cur >= length) fail(start, "unexpected end of the template");
    }
    return src.substr(start, cur - start);
  };
  const auto strip_trailing = [&] {  // the text before a '{%-' / '{{-' / '{#-'
    for (std::size_t k = tokens.size(); k-- > 0;) {
      token& t = tokens[k];
      if (t.type == tok::gen_begin || t.type == tok::gen_end) continue;
      if (t.type != tok::text) return;
      t.value = std::string(trim_end(t.value));
      if (!t.value.empty()) return;
      tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(k));
    }
  };
  const auto skip_leading = [&] {
    while (std::size_t n = space_at(src, cur)) cur += n;
  };
  while (cur < length) {
    while (next_mark < p.marks.size() && p.marks[next_mark].first <= cur) {
      push(p.marks[next_mark].second ? tok::gen_end : tok::gen_begin, "", cur);
      ++next_mark;
    }
    const auto last = last_type();
    const bool after_mark = !tokens.empty() && (tokens.back().type == tok::gen_begin ||
                                                tokens.back().type == tok::gen_end);
    if (!last || after_mark || *last == tok::close_stmt || *last == tok::close_expr ||
        *last == tok::comment) {
      std::size_t end = cur;
      while (true) {
        end = src.find('{', end);
        if (end == std::string::npos) {
          end = length;
          break;
        }
        const char n = char_at(end + 1);
        if (n == '%' || n == '{' || n == '#') break;
        ++end;
      }
      if (next_mark < p.marks.size() && p.marks[next_mark].first < end)
        end = p.marks[next_mark].first;
      if (end > cur) {
        push(tok::text, src.substr(cur, end - cur), cur);
        cur = end;
        continue;
      }
    }
    if (src[cur] == '{') {
      const char next = char_at(cur + 1);
      if (next == '#') {
        const std::size_t open = cur;
        cur += 2;
        const bool strip_before = char_at(cur) == '-';
        if (strip_before) ++cur;
        const std::size_t end = src.find("#}", cur);
        if (end == std::string::npos)
          fail(open, "a comment is not closed: expected '#}', got the end of the template");
        std::string comment = src.substr(cur, end - cur);
        const bool strip_after = !comment.empty() && comment.back() == '-';
        if (strip_after) comment.pop_back();
        if (strip_before) strip_trailing();
        push(tok::comment, comment, open);
        cur = end + 2;
        if (strip_after) skip_leading();
        continue;
      }
      if (char_at(cur + 2) == '-') {
        if (next == '%') {
          strip_trailing();
          push(tok::open_stmt, "{%", cur);
          cur += 3;
          continue;
        }
        if (next == '{') {
          strip_trailing();
          push(tok::open_expr, "{{", cur);
          curly = 0;
          cur += 3;
          continue;
        }
      }
    }
    consume_while([](char c) { return c == ' ' || (c >= 9 && c <= 13); });
    // multi-byte white space inside a tag
    while (std::size_t n = space_at(src, cur)) {
      cur += n;
      if (cur >= length) fail(cur, "unexpected end of the template");
    }
    const char c = src[cur];
    if (c == '-' && char_at(cur + 2) == '}') {
      const char next = char_at(cur + 1);
      if (next == '%' || next == '}') {
        push(next == '%' ? tok::close_stmt : tok::close_expr, next == '%' ? "%}" : "}}", cur);
        cur += 3;
        skip_leading();
        continue;
      }
    }
    if (c == '-' || c == '+') {
      if (!last || *last == tok::text) fail(cur, std::string("unexpected character '") + c + "'");
      const bool binary = *last == tok::ident || *last == tok::number || *last == tok::string ||
                          *last == tok::rparen || *last == tok::rbracket;
      if (!binary) {
        const std::size_t at = cur;
        ++cur;
        std::string num = consume_while(is_digit);
        if (!num.empty() && char_at(cur) == '.' && is_digit(char_at(cur + 1))) {
          ++cur;
          num += "." + consume_while(is_digit);
        }
        push(num.empty() ? tok::unary : tok::number, std::string(1, c) + num, at);
        continue;
      }
    }
    struct rule {
      const char* seq;
      tok type;
    };
    static constexpr rule rules[] = {{"{%", tok::open_stmt},     {"%}", tok::close_stmt},
                                     {"{{", tok::open_expr},     {"}}", tok::close_expr},
                                     {"(", tok::lparen},         {")", tok::rparen},
                                     {"{", tok::lbrace},         {"}", tok::rbrace},
                                     {"[", tok::lbracket},       {"]", tok::rbracket},
                                     {",", tok::comma},          {".", tok::dot},
                                     {":", tok::colon},          {"|", tok::pipe},
                                     {"<=", tok::comparison},    {">=", tok::comparison},
                                     {"==", tok::comparison},    {"!=", tok::comparison},
                                     {"<", tok::comparison},     {">", tok::comparison},
                                     {"+", tok::additive},       {"-", tok::additive},
                                     {"~", tok::additive},       {"**", tok::power},
                                     {"*", tok::multiplicative}, {"//", tok::multiplicative},
                                     {"/", tok::multiplicative}, {"%", tok::multiplicative},
                                     {"=", tok::equals}};
    bool matched = false;
    for (const auto& r : rules) {
      const std::string_view seq(r.seq);
      if (seq == "}}" && curly > 0) continue;
      if (src.compare(cur, seq.size(), seq) == 0) {
        push(r.type, std::string(seq), cur);
        if (r.type == tok::open_expr)
          curly = 0;
        else if (r.type == tok::lbrace)
          ++curly;
        else if (r.type == tok::rbrace)
          --curly;
        cur += seq.size();
        matched = true;
        break;
      }
    }
    if (matched) continue;
    if (c == '\'' || c == '"') {
      const std::size_t open = cur;
      ++cur;
      std::string str;
      while (true) {
        if (cur >= length)
          fail(open, "a string is not closed: expected " + std::string(1, c) +
                         ", got the end of the template");
        const char ch = src[cur];
        if (ch == c) break;
        ++cur;
        if (ch != '\\') {
          str += ch;
          continue;
        }
        if (cur >= length) fail(open, "a string is not closed: got the end of the template");
        const char e = src[cur++];
        if (e == 'x' || e == 'u') {
          const std::size_t n = e == 'x' ? 2 : 4;
          const std::string hex = src.substr(cur, n);
          if (hex.size() != n || !std::all_of(hex.begin(), hex.end(), [](char h) {
                return std::isxdigit(static_cast<unsigned char>(h));
              }))
            fail(cur - 2, "invalid escape \\" + std::string(1, e) + hex);
          append_utf8(str, static_cast<char32_t>(std::stoul(hex, nullptr, 16)));
          cur += n;
        } else {
          static constexpr std::pair<char, char> escapes[] = {
              {'n', '\n'}, {'t', '\t'},  {'r', '\r'}, {'b', '\b'}, {'f', '\f'},
              {'v', '\v'}, {'\'', '\''}, {'"', '"'},  {'\\', '\\'}};
          const auto* it = std::find_if(std::begin(escapes), std::end(escapes),
                                        [&](auto& x) { return x.first == e; });
          if (it == std::end(escapes))
            fail(cur - 2, std::string("unknown escape \\") + e + " in a string");
          str += it->second;
        }
      }
      push(tok::string, str, open);
      ++cur;
      continue;
    }
    if (is_digit(c)) {
      const std::size_t at = cur;
      std::string num = consume_while(is_digit);
      if (last != tok::dot && char_at(cur) == '.' && is_digit(char_at(cur + 1))) {
        ++cur;
        num += "." + consume_while(is_digit);
      }
      push(tok::number, num, at);
      continue;
    }
    if (is_word(c)) {
      const std::size_t at = cur;
      push(tok::ident, consume_while(is_word), at);
      continue;
    }
    const auto [cp, n] = code_point_at(src, cur);
    (void)cp;
    fail(cur, "unexpected character '" + src.substr(cur, n) + "'");
  }
  while (next_mark < p.marks.size()) {
    push(p.marks[next_mark].second ? tok::gen_end : tok::gen_begin, "", length);
    ++next_mark;
  }
  return tokens;
}

// ---- Syntax tree
// ---------------------------------------------------------------------------------

enum class nk {
  text,
  comment,
  if_,
  for_,
  set,
  macro,
  call_stmt,
  filter_stmt,
  brk,
  cont,
  gen_begin,
  gen_end,
  ident,
  int_lit,
  float_lit,
  str_lit,
  array_lit,
  tuple_lit,
  object_lit,
  member,
  call,
  filter,
  test,
  unary,
  binary,
  ternary,
  select,
  slice,
  kwarg,
  spread,
  kwspread
};

struct node;
using node_ptr = std::unique_ptr<node>;
struct node {
  nk kind;
  std::size_t pos = 0;
  std::string str;  // name, string, operator
  std::int64_t integer = 0;
  double number = 0;
  bool flag = false;     // member: computed; test: negated
  unsigned special = 0;  // macro/call: 1 caller, 2 kwargs, 4 varargs used in the body
  node_ptr x, y, z;
  std::vector<node_ptr> kids, body, alt;
};

// The library's parser (parser.ts): the same grammar and precedence (filters bind tighter than
// tests, tests tighter than '**', '**' tighter than '*', all left-associative), plus tests with
// arguments (`x is divisibleby(3)`), which the library cannot parse.
class parser {
 public:
  parser(const std::vector<token>& tokens, const source_map& map, std::size_t end_pos)
      : t_(tokens), map_(map), end_pos_(end_pos) {}

  std::vector<node_ptr> program() {
    std::vector<node_ptr> body;
    while (cur_ < t_.size()) body.push_back(any());
    return body;
  }

 private:
  const std::vector<token>& t_;
  const source_map& map_;
  std::size_t end_pos_;
  std::size_t cur_ = 0;
  int depth_ = 0;

  struct guard {
    parser& p;
    explicit guard(parser& q, std::size_t pos) : p(q) {
      if (++p.depth_ > max_depth)
        syntax_error(p.map_, pos, "the template nests deeper than ", max_depth, " levels");
    }
    ~guard() { --p.depth_; }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;
  };

  std::size_t here() const { return cur_ < t_.size() ? t_[cur_].pos : end_pos_; }
  std::string got() const {
    if (cur_ >= t_.size()) return "the end of the template";
    const token& k = t_[cur_];
    if (k.type == tok::text || k.type == tok::comment || k.type == tok::gen_begin ||
        k.type == tok::gen_end)
      return tok_name(k.type);
    if (k.type == tok::string) return "the string \"" + k.value.substr(0, 40) + "\"";
    if (k.type == tok::ident) return "the name '" + k.value + "'";
    return "'" + k.value + "'";
  }
  [[noreturn]] void fail(const std::string& expected) {
    syntax_error(map_, here(), "expected ", expected, ", got ", got());
  }
  bool is(tok type, std::size_t ahead = 0) const {
    return cur_ + ahead < t_.size() && t_[cur_ + ahead].type == type;
  }
  bool is_ident(std::string_view name, std::size_t ahead = 0) const {
    return is(tok::ident, ahead) && t_[cur_ + ahead].value == name;
  }
  bool is_statement(std::initializer_list<std::string_view> names) const {
    if (!is(tok::open_stmt) || !is(tok::ident, 1)) return false;
    for (auto n : names)
      if (t_[cur_ + 1].value == n) return true;
    return false;
  }
  const token& expect(tok type, const char* what) {
    if (!is(type)) fail(what);
    return t_[cur_++];
  }
  void expect_ident(std::string_view name) {
    if (!is_ident(name)) fail("'" + std::string(name) + "'");
    ++cur_;
  }
  node_ptr make(nk kind, std::size_t pos) {
    auto n = std::make_unique<node>();
    n->kind = kind;
    n->pos = pos;
    return n;
  }
  // Statements until one of `names` ({% name ...), which must come before the end.
  struct open_block {
    const char* what;
    std::string closer;
    std::size_t at;
  };
  std::vector<open_block> open_;
  void until(std::vector<node_ptr>& body, std::initializer_list<std::string_view> names,
             std::size_t opened, const char* what) {
    std::string closer;
    for (auto n : names)
      if (n.starts_with("end")) closer = "{% " + std::string(n) + " %}";
    open_.push_back({what, closer, opened});
    struct pop {
      std::vector<open_block>& v;
      ~pop() { v.pop_back(); }
    } popper{open_};
    while (!is_statement(names)) {
      if (cur_ >= t_.size()) {
        std::string list;
        for (auto n : names) list += (list.empty() ? "{% " : " or {% ") + std::string(n) + " %}";
        syntax_error(map_, end_pos_, "expected ", list, " closing the ", what, " opened at ",
                     map_.where(opened).substr(map_.name().size() + 1),
                     ", got the end of the template");
      }
      body.push_back(any());
    }
  }

  node_ptr any() {
    guard g(*this, here());
    const token& k = t_[cur_];
    switch (k.type) {
      case tok::comment:
        ++cur_;
        return make(nk::comment, k.pos);
      case tok::text: {
        auto n = make(nk::text, k.pos);
        n->str = k.value;
        ++cur_;
        return n;
      }
      case tok::gen_begin:
        ++cur_;
        return make(nk::gen_begin, k.pos);
      case tok::gen_end:
        ++cur_;
        return make(nk::gen_end, k.pos);
      case tok::open_stmt:
        return statement();
      case tok::open_expr: {
        ++cur_;
        auto e = expression();
        expect(tok::close_expr, "'}}'");
        return e;
      }
      default:
        fail("text, '{{', '{%' or '{#'");
    }
  }

  node_ptr statement() {
    const std::size_t open = here();
    expect(tok::open_stmt, "'{%'");
    if (!is(tok::ident)) fail("a statement name");
    const std::string name = t_[cur_].value;
    const std::size_t at = t_[cur_].pos;
    node_ptr result;
    if (name == "set") {
      ++cur_;
      result = make(nk::set, at);
      result->x = sequence(false);
      if (is(tok::equals)) {
        ++cur_;
        result->y = sequence(false);
      } else {
        expect(tok::close_stmt, "'=' or '%}'");
        until(result->body, {"endset"}, open, "set block");
        ++cur_;
        expect_ident("endset");
      }
      expect(tok::close_stmt, "'%}'");
    } else if (name == "if") {
      ++cur_;
      result = if_rest(at, open);
      expect(tok::open_stmt, "'{%'");
      expect_ident("endif");
      expect(tok::close_stmt, "'%}'");
    } else if (name == "macro") {
      ++cur_;
      result = make(nk::macro, at);
      if (!is(tok::ident)) fail("the macro's name");
      result->str = t_[cur_++].value;
      args(result->kids, true);
      expect(tok::close_stmt, "'%}'");
      until(result->body, {"endmacro"}, open, "macro");
      ++cur_;
      expect_ident("endmacro");
      expect(tok::close_stmt, "'%}'");
      result->special = specials(result->kids, result->body);
    } else if (name == "for") {
      ++cur_;
      result = make(nk::for_, at);
      result->x = sequence(true);
      if (result->x->kind != nk::ident && result->x->kind != nk::tuple_lit)
        syntax_error(map_, result->x->pos, "expected a name or names for the loop variable");
      if (!is_ident("in")) fail("'in'");
      ++cur_;
      result->y = expression();
      expect(tok::close_stmt, "'%}'");
      until(result->body, {"endfor", "else"}, open, "for loop");
      if (is_statement({"else"})) {
        cur_ += 2;
        expect(tok::close_stmt, "'%}'");
        until(result->alt, {"endfor"}, open, "for loop");
      }
      ++cur_;
      expect_ident("endfor");
      expect(tok::close_stmt, "'%}'");
    } else if (name == "call") {
      ++cur_;
      result = make(nk::call_stmt, at);
      if (is(tok::lparen)) args(result->kids, true);
      auto callee = primary();
      if (callee->kind != nk::ident)
        syntax_error(map_, callee->pos, "expected a macro name after 'call'");
      auto call = make(nk::call, callee->pos);
      call->x = std::move(callee);
      args(call->kids, false);
      result->x = std::move(call);
      expect(tok::close_stmt, "'%}'");
      until(result->body, {"endcall"}, open, "call block");
      ++cur_;
      expect_ident("endcall");
      expect(tok::close_stmt, "'%}'");
      result->special = specials(result->kids, result->body);
    } else if (name == "break" || name == "continue") {
      ++cur_;
      result = make(name == "break" ? nk::brk : nk::cont, at);
      expect(tok::close_stmt, "'%}'");
    } else if (name == "filter") {
      ++cur_;
      result = make(nk::filter_stmt, at);
      auto f = primary();
      if (f->kind == nk::ident && is(tok::lparen)) f = call_rest(std::move(f));
      result->x = std::move(f);
      expect(tok::close_stmt, "'%}'");
      until(result->body, {"endfilter"}, open, "filter block");
      ++cur_;
      expect_ident("endfilter");
      expect(tok::close_stmt, "'%}'");
    } else if (!open_.empty() && (name.starts_with("end") || name == "elif" || name == "else")) {
      const auto& b = open_.back();
      syntax_error(map_, at, "expected ", b.closer, " closing the ", b.what, " opened at ",
                   map_.where(b.at).substr(map_.name().size() + 1), ", got {% ", name, " %}");
    } else {
      syntax_error(
          map_, at,
          "expected a statement (set, if, for, macro, call, filter, break, continue), got '", name,
          "'");
    }
    return result;
  }

  node_ptr if_rest(std::size_t at, std::size_t open) {
    auto n = make(nk::if_, at);
    n->x = expression();
    expect(tok::close_stmt, "'%}'");
    until(n->body, {"elif", "else", "endif"}, open, "if block");
    if (is_statement({"elif"})) {
      const std::size_t elif_at = t_[cur_ + 1].pos;
      cur_ += 2;
      n->alt.push_back(if_rest(elif_at, open));
    } else if (is_statement({"else"})) {
      cur_ += 2;
      expect(tok::close_stmt, "'%}'");
      until(n->alt, {"endif"}, open, "if block");
    }
    return n;
  }

  // Which of caller/kwargs/varargs a macro's body uses without declaring (library's rule, roughly:
  // any use of the name that is not a parameter).
  static unsigned specials(const std::vector<node_ptr>& params, const std::vector<node_ptr>& body) {
    unsigned declared = 0, used = 0;
    const auto bit = [](const std::string& s) -> unsigned {
      return s == "caller" ? 1u : s == "kwargs" ? 2u : s == "varargs" ? 4u : 0u;
    };
    for (const auto& p : params) declared |= bit(p->kind == nk::ident ? p->str : p->str);
    std::function<void(const node*)> visit = [&](const node* n) {
      if (!n) return;
      if (n->kind == nk::ident) used |= bit(n->str);
      if (n->kind == nk::member && !n->flag) {
        visit(n->x.get());
        return;
      }
      visit(n->x.get()), visit(n->y.get()), visit(n->z.get());
      for (const auto& k : n->kids) visit(k.get());
      for (const auto& k : n->body) visit(k.get());
      for (const auto& k : n->alt) visit(k.get());
    };
    for (const auto& b : body) visit(b.get());
    for (const auto& p : params)
      if (p->kind == nk::kwarg) visit(p->x.get());
    return used & ~declared;
  }

  node_ptr sequence(bool primary_only) {
    const std::size_t at = here();
    std::vector<node_ptr> items;
    items.push_back(primary_only ? primary() : expression());
    const bool tuple = is(tok::comma);
    while (tuple) {
      ++cur_;
      items.push_back(primary_only ? primary() : expression());
      if (!is(tok::comma)) break;
    }
    if (!tuple) return std::move(items[0]);
    auto n = make(nk::tuple_lit, at);
    n->kids = std::move(items);
    return n;
  }

  node_ptr expression() {
    guard g(*this, here());
    auto a = logical_or();
    if (is_ident("if")) {
      const std::size_t at = here();
      ++cur_;
      auto test = logical_or();
      if (is_ident("else")) {
        ++cur_;
        auto n = make(nk::ternary, at);
        n->x = std::move(test);
        n->y = std::move(a);
        n->z = expression();
        return n;
      }
      // `a if b` without else: undefined when b is false (also the `for x in xs if c` filter)
      auto n = make(nk::select, at);
      n->x = std::move(a);
      n->y = std::move(test);
      return n;
    }
    return a;
  }
  node_ptr binary(node_ptr left, const std::string& op, std::size_t at, node_ptr right) {
    auto n = make(nk::binary, at);
    n->str = op;
    n->x = std::move(left);
    n->y = std::move(right);
    return n;
  }
  node_ptr logical_or() {
    auto left = logical_and();
    while (is_ident("or")) {
      const std::size_t at = here();
      ++cur_;
      left = binary(std::move(left), "or", at, logical_and());
    }
    return left;
  }
  node_ptr logical_and() {
    auto left = logical_not();
    while (is_ident("and")) {
      const std::size_t at = here();
      ++cur_;
      left = binary(std::move(left), "and", at, logical_not());
    }
    return left;
  }
  node_ptr logical_not() {
    guard g(*this, here());
    if (is_ident("not")) {
      auto n = make(nk::unary, here());
      n->str = "not";
      ++cur_;
      n->x = logical_not();
      return n;
    }
    return comparison();
  }
  node_ptr comparison() {
    auto left = additive();
    while (true) {
      const std::size_t at = here();
      std::string op;
      if (is_ident("not") && is_ident("in", 1))
        op = "not in", cur_ += 2;
      else if (is_ident("in"))
        op = "in", ++cur_;
      else if (is(tok::comparison))
        op = t_[cur_++].value;
      else
        break;
      left = binary(std::move(left), op, at, additive());
    }
    return left;
  }
  node_ptr additive() {
    auto left = multiplicative();
    while (is(tok::additive)) {
      const std::size_t at = here();
      const std::string op = t_[cur_++].value;
      left = binary(std::move(left), op, at, multiplicative());
    }
    return left;
  }
  node_ptr multiplicative() {
    auto left = power();
    while (is(tok::multiplicative)) {
      const std::size_t at = here();
      const std::string op = t_[cur_++].value;
      left = binary(std::move(left), op, at, power());
    }
    return left;
  }
  node_ptr power() {
    auto left = test();
    while (is(tok::power)) {
      const std::size_t at = here();
      ++cur_;
      left = binary(std::move(left), "**", at, test());
    }
    return left;
  }
  node_ptr test() {
    auto operand = filter();
    while (is_ident("is")) {
      const std::size_t at = here();
      ++cur_;
      const bool negate = is_ident("not");
      if (negate) ++cur_;
      if (!is(tok::ident)) fail("the name of a test");
      auto n = make(nk::test, at);
      n->str = t_[cur_++].value;
      n->flag = negate;
      n->x = std::move(operand);
      if (is(tok::lparen)) args(n->kids, false);  // (jinja2 syntax; the library refuses it)
      operand = std::move(n);
    }
    return operand;
  }
  node_ptr filter() {
    auto operand = unary_sign();
    while (is(tok::pipe)) {
      const std::size_t at = here();
      ++cur_;
      if (!is(tok::ident)) fail("the name of a filter");
      auto f = primary();
      if (is(tok::lparen)) f = call_rest(std::move(f));
      auto n = make(nk::filter, at);
      n->x = std::move(operand);
      n->y = std::move(f);
      operand = std::move(n);
    }
    return operand;
  }
  node_ptr unary_sign() {
    guard g(*this, here());
    if ((is(tok::unary) || is(tok::additive)) && (t_[cur_].value == "-" || t_[cur_].value == "+")) {
      auto n = make(nk::unary, here());
      n->str = t_[cur_++].value;
      n->x = unary_sign();
      return n;
    }
    auto member_ = member(primary());
    if (is(tok::lparen)) return call_rest(std::move(member_));
    return member_;
  }
  node_ptr call_rest(node_ptr callee) {
    guard g(*this, here());
    auto n = make(nk::call, callee->pos);
    n->x = std::move(callee);
    args(n->kids, false);
    node_ptr e = member(std::move(n));
    if (is(tok::lparen)) e = call_rest(std::move(e));
    return e;
  }
  void args(std::vector<node_ptr>& out, bool parameters) {
    expect(tok::lparen, "'('");
    bool saw_keyword = false, saw_spread = false;
    std::vector<std::string> names;
    while (!is(tok::rparen)) {
      if (cur_ >= t_.size()) fail("')'");
      const std::size_t at = here();
      const bool kw_spread = is(tok::power);
      const bool spread = is(tok::multiplicative) && t_[cur_].value == "*";
      if (parameters && (kw_spread || spread))
        syntax_error(map_, at, "argument unpacking is not allowed in parameter declarations");
      if (kw_spread) {
        ++cur_;
        auto n = make(nk::kwspread, at);
        n->x = expression();
        out.push_back(std::move(n));
        if (is(tok::comma)) ++cur_;
        if (!is(tok::rparen)) fail("')' after the '**' argument");
        break;
      }
      node_ptr a;
      if (spread) {
        if (saw_spread) syntax_error(map_, at, "only one '*' argument is allowed");
        saw_spread = true;
        ++cur_;
        a = make(nk::spread, at);
        a->x = expression();
      } else {
        a = expression();
        if (is(tok::equals)) {
          ++cur_;
          if (a->kind != nk::ident)
            syntax_error(map_, a->pos,
                         parameters ? "expected a parameter name before '='"
                                    : "expected an argument name before '='");
          auto k = make(nk::kwarg, a->pos);
          k->str = a->str;
          k->x = expression();
          a = std::move(k);
        }
        if (parameters) {
          if (a->kind != nk::ident && a->kind != nk::kwarg)
            syntax_error(map_, a->pos, "expected a parameter name");
          if (std::find(names.begin(), names.end(), a->str) != names.end())
            syntax_error(map_, a->pos, "duplicate parameter name '", a->str, "'");
          names.push_back(a->str);
        }
        if (a->kind == nk::kwarg)
          saw_keyword = true;
        else if (saw_keyword)
          syntax_error(map_, a->pos,
                       parameters ? "a parameter without a default follows one with a default"
                                  : "a positional argument follows a keyword argument");
        else if (saw_spread)
          syntax_error(map_, a->pos, "a positional argument follows a '*' argument");
      }
      out.push_back(std::move(a));
      if (is(tok::comma)) ++cur_;
    }
    ++cur_;
  }
  node_ptr member(node_ptr object) {
    while (is(tok::dot) || is(tok::lbracket)) {
      const std::size_t at = here();
      const bool computed = is(tok::lbracket);
      ++cur_;
      auto n = make(nk::member, at);
      n->flag = computed;
      n->x = std::move(object);
      if (computed) {
        std::vector<node_ptr> parts;
        bool slice = false;
        while (!is(tok::rbracket)) {
          if (cur_ >= t_.size()) fail("']'");
          if (is(tok::colon)) {
            parts.push_back(nullptr);
            ++cur_;
            slice = true;
          } else {
            parts.push_back(expression());
            if (is(tok::colon)) ++cur_, slice = true;
          }
        }
        if (parts.empty()) fail("an index or a slice");
        if (slice) {
          if (parts.size() > 3)
            syntax_error(map_, at, "expected at most 3 parts in a slice, got ", parts.size());
          auto s = make(nk::slice, at);
          s->x = std::move(parts[0]);
          if (parts.size() > 1) s->y = std::move(parts[1]);
          if (parts.size() > 2) s->z = std::move(parts[2]);
          n->y = std::move(s);
        } else {
          n->y = std::move(parts[0]);
        }
        expect(tok::rbracket, "']'");
      } else {
        auto p = primary();
        if (p->kind != nk::ident && p->kind != nk::int_lit)
          syntax_error(map_, p->pos, "expected a name after '.'");
        n->y = std::move(p);
      }
      object = std::move(n);
    }
    return object;
  }
  node_ptr primary() {
    guard g(*this, here());
    if (cur_ >= t_.size()) fail("an expression");
    const token& k = t_[cur_++];
    switch (k.type) {
      case tok::number: {
        if (k.value.find('.') != std::string::npos) {
          auto n = make(nk::float_lit, k.pos);
          n->number = std::strtod(k.value.c_str(), nullptr);
          return n;
        }
        auto n = make(nk::int_lit, k.pos);
        const char* b = k.value.data() + (k.value[0] == '+' ? 1 : 0);
        const auto r = std::from_chars(b, k.value.data() + k.value.size(), n->integer);
        if (r.ec != std::errc())
          syntax_error(map_, k.pos, "the number ", k.value, " does not fit in 64 bits");
        return n;
      }
      case tok::string: {
        auto n = make(nk::str_lit, k.pos);
        n->str = k.value;
        while (is(tok::string)) n->str += t_[cur_++].value;
        return n;
      }
      case tok::ident: {
        auto n = make(nk::ident, k.pos);
        n->str = k.value;
        return n;
      }
      case tok::lparen: {
        auto e = sequence(false);
        expect(tok::rparen, "')'");
        return e;
      }
      case tok::lbracket: {
        auto n = make(nk::array_lit, k.pos);
        while (!is(tok::rbracket)) {
          if (cur_ >= t_.size()) fail("']'");
          n->kids.push_back(expression());
          if (is(tok::comma)) ++cur_;
        }
        ++cur_;
        return n;
      }
      case tok::lbrace: {
        auto n = make(nk::object_lit, k.pos);
        while (!is(tok::rbrace)) {
          if (cur_ >= t_.size()) fail("'}'");
          n->kids.push_back(expression());
          expect(tok::colon, "':' between a key and its value");
          n->kids.push_back(expression());
          if (is(tok::comma)) ++cur_;
        }
        ++cur_;
        return n;
      }
      default:
        --cur_;
        fail("an expression");
    }
  }
};

// ---- Values
// --------------------------------------------------------------------------------------

enum class vk : std::uint8_t {
  undefined,
  null,
  boolean,
  integer,
  floating,
  string,
  array,
  object,
  ns,
  function
};

struct value;
struct dict;
struct function;
struct value {
  vk kind = vk::undefined;
  bool b = false;
  std::int64_t i = 0;
  double d = 0;
  std::string s;
  std::shared_ptr<std::vector<value>> list;
  std::shared_ptr<dict> obj;  // object and namespace
  std::shared_ptr<const function> fn;

  static value null() {
    value v;
    v.kind = vk::null;
    return v;
  }
  static value boolean(bool x) {
    value v;
    v.kind = vk::boolean;
    v.b = x;
    return v;
  }
  static value integer(std::int64_t x) {
    value v;
    v.kind = vk::integer;
    v.i = x;
    return v;
  }
  static value floating(double x) {
    value v;
    v.kind = vk::floating;
    v.d = x;
    return v;
  }
  static value string(std::string x) {
    value v;
    v.kind = vk::string;
    v.s = std::move(x);
    return v;
  }
  static value array(std::vector<value> items = {}) {
    value v;
    v.kind = vk::array;
    v.list = std::make_shared<std::vector<value>>(std::move(items));
    return v;
  }
  static value object(vk kind = vk::object);
  bool is_number() const { return kind == vk::integer || kind == vk::floating; }
  double num() const {
    return kind == vk::integer ? static_cast<double>(i) : kind == vk::boolean ? (b ? 1.0 : 0.0) : d;
  }
};

struct dict {
  std::vector<std::pair<std::string, value>> items;
  const value* find(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
  void set(std::string key, value v) {
    for (auto& [k, old] : items)
      if (k == key) {
        old = std::move(v);
        return;
      }
    items.emplace_back(std::move(key), std::move(v));
  }
  void erase(std::string_view key) {
    std::erase_if(items, [&](const auto& kv) { return kv.first == key; });
  }
};
inline value value::object(vk kind) {
  value v;
  v.kind = kind;
  v.obj = std::make_shared<dict>();
  return v;
}

struct call_args {
  std::vector<value> pos;
  dict kw;
  value caller;  // the body of a {% call %} block, for the macro it calls
};
struct function {
  std::string name;
  std::function<value(call_args&)> call;
};

// A failure while rendering: the message, and the position when known.
struct render_fault {
  std::string what;
  std::size_t pos = static_cast<std::size_t>(-1);
};
struct raised {  // raise_exception(msg)
  std::string what;
};
struct loop_break {};
struct loop_continue {};

template <class... Parts>
[[noreturn]] void bad(Parts&&... parts) {
  throw render_fault{rolora::detail::concat(std::forward<Parts>(parts)...)};
}

inline const char* type_name(const value& v) {
  switch (v.kind) {
    case vk::undefined:
      return "undefined";
    case vk::null:
      return "none";
    case vk::boolean:
      return "boolean";
    case vk::integer:
      return "integer";
    case vk::floating:
      return "float";
    case vk::string:
      return "string";
    case vk::array:
      return "list";
    case vk::object:
      return "dict";
    case vk::ns:
      return "namespace";
    case vk::function:
      return "function";
  }
  return "?";
}

// The library's __bool__ (JavaScript's !!value; a namespace is always true).
inline bool truthy(const value& v) {
  switch (v.kind) {
    case vk::undefined:
    case vk::null:
      return false;
    case vk::boolean:
      return v.b;
    case vk::integer:
      return v.i != 0;
    case vk::floating:
      return v.d != 0 && !std::isnan(v.d);
    case vk::string:
      return !v.s.empty();
    case vk::array:
      return !v.list->empty();
    case vk::object:
      return !v.obj->items.empty();
    case vk::ns:
    case vk::function:
      return true;
  }
  return false;
}

inline void json_string(std::string& out, std::string_view s, bool ascii) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto [c, n] = code_point_at(s, i);
    char buf[16];
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || (ascii && c >= 0x7F)) {
          if (c >= 0x10000) {  // as UTF-16, the way the library escapes
            const char32_t u = c - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x",
                          static_cast<unsigned>(0xD800 + (u >> 10)),
                          static_cast<unsigned>(0xDC00 + (u & 0x3FF)));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          }
          out += buf;
        } else {
          out.append(s.substr(i, n));
        }
    }
    i += n;
  }
  out += '"';
}

struct json_options {
  std::optional<std::int64_t> indent;
  bool ascii = false;
  std::optional<std::pair<std::string, std::string>> separators;
  bool sort_keys = false;
  bool undefined_as_null = true;
};

// The library's toJSON (Python's json.dumps: ensure_ascii False, separators (', ', ': ') or
// (',', ': ') with indent). Numbers are JavaScript's: 2.0 is "2" (jinja2: "2.0").
inline void to_json(std::string& out, const value& v, const json_options& o, int depth) {
  if (depth > max_depth) bad("a value nests deeper than ", max_depth, " levels (a cycle?)");
  const bool indented = o.indent && *o.indent != 0;
  const std::string item_sep = o.separators ? o.separators->first : indented ? "," : ", ";
  const std::string key_sep = o.separators ? o.separators->second : ": ";
  switch (v.kind) {
    case vk::null:
      out += "null";
      return;
    case vk::undefined:
      out += o.undefined_as_null ? "null" : "undefined";
      return;
    case vk::boolean:
      out += v.b ? "true" : "false";
      return;
    case vk::integer:
      out += std::to_string(v.i);
      return;
    case vk::floating:
      out += std::isfinite(v.d) ? js_number(v.d) : "null";
      return;
    case vk::string:
      json_string(out, v.s, o.ascii);
      return;
    case vk::function:
      bad("cannot convert a function to JSON");
    default:
      break;
  }
  if (indented && *o.indent < 0) bad("tojson: indent must not be negative, got ", *o.indent);
  const std::string unit = indented ? std::string(static_cast<std::size_t>(*o.indent), ' ') : "";
  std::string base = "\n";
  for (int k = 0; k < depth; ++k) base += unit;
  const std::string child = base + unit;
  if (v.kind == vk::array) {
    if (v.list->empty()) {
      out += "[]";
      return;
    }
    out += '[';
    bool first = true;
    for (const auto& x : *v.list) {
      if (!first) out += item_sep;
      first = false;
      if (indented) out += child;
      to_json(out, x, o, depth + 1);
    }
    if (indented) out += base;
    out += ']';
    return;
  }
  std::vector<const std::pair<std::string, value>*> entries;
  for (const auto& kv : v.obj->items) entries.push_back(&kv);
  // (the library sorts with localeCompare; byte order here)
  if (o.sort_keys)
    std::stable_sort(entries.begin(), entries.end(),
                     [](auto a, auto b) { return a->first < b->first; });
  if (entries.empty()) {
    out += "{}";
    return;
  }
  out += '{';
  bool first = true;
  for (const auto* kv : entries) {
    if (!first) out += item_sep;
    first = false;
    if (indented) out += child;
    json_string(out, kv->first, o.ascii);
    out += key_sep;
    to_json(out, kv->second, o, depth + 1);
  }
  if (indented) out += base;
  out += '}';
}

std::string display(const value& v);

// JavaScript's String(x.value) for the library's `~`, `+` and join: 2.0 is "2", a list is its
// items as they print, joined by ',' (none as "null"), a mapping "[object Map]".
inline std::string js_string(const value& v) {
  switch (v.kind) {
    case vk::undefined:
      return "undefined";
    case vk::null:
      return "null";
    case vk::boolean:
      return v.b ? "true" : "false";
    case vk::integer:
      return std::to_string(v.i);
    case vk::floating:
      return js_number(v.d);
    case vk::string:
      return v.s;
    case vk::array: {
      std::string out;
      for (std::size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ',';
        out += display((*v.list)[k]);
      }
      return out;
    }
    case vk::object:
    case vk::ns:
      return "[object Map]";
    case vk::function:
      bad("cannot convert a function to a string");
  }
  return "";
}

// How {{ v }} prints (the library's toString): true/false lowercase (jinja2: True/False), a float
// with a fractional part of zero as "2.0", lists and mappings as JSON (jinja2: Python's repr).
// (At the top level none and undefined print nothing; inside a list as "null"/"undefined".)
inline std::string display(const value& v) {
  switch (v.kind) {
    case vk::floating:
      if (v.d == 0 && std::signbit(v.d)) return "-0.0";
      if (std::isfinite(v.d) && std::fmod(v.d, 1.0) == 0 && std::fabs(v.d) < 1e21)
        return js_number(v.d) + ".0";
      return js_number(v.d);
    case vk::array:
    case vk::object:
    case vk::ns: {
      std::string out;
      json_options o;
      o.undefined_as_null = false;
      to_json(out, v, o, 0);
      return out;
    }
    default:
      return js_string(v);
  }
}

// JavaScript's Number(string) for loose equality.
inline double js_to_number(std::string_view s) {
  const std::string t(trim(s));
  if (t.empty()) return 0;
  if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) {
    std::uint64_t x = 0;
    const auto r = std::from_chars(t.data() + 2, t.data() + t.size(), x, 16);
    return r.ptr == t.data() + t.size() ? static_cast<double>(x) : std::nan("");
  }
  if (t == "Infinity" || t == "+Infinity") return INFINITY;
  if (t == "-Infinity") return -INFINITY;
  if (t.find_first_not_of("0123456789+-.eE") != std::string::npos) return std::nan("");
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  return end == t.c_str() + t.size() ? d : std::nan("");
}

// The library's `==` (JavaScript's loose equality of the values: 1 == "1" and 1 == true are true;
// lists and mappings are equal only to themselves). (jinja2: Python's ==.)
inline bool loose_equal(const value& a, const value& b) {
  const auto nullish = [](const value& v) { return v.kind == vk::null || v.kind == vk::undefined; };
  if (nullish(a) || nullish(b)) return nullish(a) && nullish(b);
  if (a.kind == vk::boolean) return loose_equal(value::floating(a.b ? 1 : 0), b);
  if (b.kind == vk::boolean) return loose_equal(a, value::floating(b.b ? 1 : 0));
  if (a.is_number() && b.is_number()) return a.num() == b.num();
  if (a.kind == vk::string && b.kind == vk::string) return a.s == b.s;
  if (a.is_number() && b.kind == vk::string) return a.num() == js_to_number(b.s);
  if (a.kind == vk::string && b.is_number()) return js_to_number(a.s) == b.num();
  if (a.kind == vk::array && b.kind == vk::array) return a.list == b.list;
  if ((a.kind == vk::object || a.kind == vk::ns) && (b.kind == vk::object || b.kind == vk::ns))
    return a.obj == b.obj;
  if (a.kind == vk::function && b.kind == vk::function) return a.fn == b.fn;
  return false;
}
// JavaScript's === on the values (`in` a list, unique, the eq/equalto tests).
inline bool strict_equal(const value& a, const value& b) {
  if (a.is_number() && b.is_number()) return a.num() == b.num();
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case vk::undefined:
    case vk::null:
      return true;
    case vk::boolean:
      return a.b == b.b;
    case vk::string:
      return a.s == b.s;
    case vk::array:
      return a.list == b.list;
    case vk::object:
    case vk::ns:
      return a.obj == b.obj;
    case vk::function:
      return a.fn == b.fn;
    default:
      return false;
  }
}

// The library's compareRuntimeValues (sort, dictsort): numbers and booleans by value, strings
// (lowercased unless case-sensitive) by code point; anything else is an error.
inline int compare(const value& a, const value& b, bool case_sensitive) {
  if (a.kind == vk::null && b.kind == vk::null) return 0;
  if (a.kind == vk::undefined && b.kind == vk::undefined) return 0;
  if (a.kind == vk::null || b.kind == vk::null || a.kind == vk::undefined ||
      b.kind == vk::undefined)
    bad("cannot compare ", type_name(a), " with ", type_name(b));
  const auto numeric = [](const value& v) { return v.is_number() || v.kind == vk::boolean; };
  if (numeric(a) && numeric(b)) return a.num() < b.num() ? -1 : a.num() > b.num() ? 1 : 0;
  if (a.kind != b.kind) bad("cannot compare ", type_name(a), " with ", type_name(b));
  if (a.kind != vk::string) bad("cannot compare values of type ", type_name(a));
  if (case_sensitive) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  const std::string x = to_lower(a.s), y = to_lower(b.s);
  return x < y ? -1 : x > y ? 1 : 0;
}

// The value of `path` ("a.b.0") in item, the library's getAttributeValue.
inline value attribute_path(const value& item, std::string_view path) {
  value v = item;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = path.find('.', start);
    const std::string_view part =
        path.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (v.kind == vk::object || v.kind == vk::ns) {
      const value* x = v.obj->find(part);
      v = x ? *x : value{};
    } else if (v.kind == vk::array) {
      std::int64_t index = -1;
      const auto r = std::from_chars(part.data(), part.data() + part.size(), index);
      if (r.ec != std::errc() || index < 0 || static_cast<std::size_t>(index) >= v.list->size())
        return {};
      v = (*v.list)[static_cast<std::size_t>(index)];
    } else {
      return {};
    }
    if (dot == std::string_view::npos) return v;
    start = dot + 1;
  }
}

// The library's convertToRuntimeValues for JSON: a number with no fractional part is an integer
// (JavaScript cannot tell 2.0 from 2); mappings keep their order (JavaScript would put integer-like
// keys first).
inline value from_json(const nlohmann::ordered_json& j, int depth = 0) {
  if (depth > max_depth)
    rolora::raise<value_error>("the context nests deeper than ", max_depth, " levels");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return value::null();
    case nlohmann::ordered_json::value_t::boolean:
      return value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return value::integer(j.get<std::int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto u = j.get<std::uint64_t>();
      return u <= static_cast<std::uint64_t>(INT64_MAX)
                 ? value::integer(static_cast<std::int64_t>(u))
                 : value::floating(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: {
      const double d = j.get<double>();
      if (std::isfinite(d) && std::trunc(d) == d && std::fabs(d) < 9.2e18)
        return value::integer(static_cast<std::int64_t>(d));
      return value::floating(d);
    }
    case nlohmann::ordered_json::value_t::string:
      return value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<value> items;
      items.reserve(j.size());
      for (const auto& x : j) items.push_back(from_json(x, depth + 1));
      return value::array(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      value v = value::object();
      for (const auto& [k, x] : j.items()) v.obj->set(k, from_json(x, depth + 1));
      return v;
    }
    default:
      rolora::raise<value_error>("the context holds a value of JSON type ", j.type_name(),
                                 ", which a template cannot use");
  }
}

// ---- Renderer
// ------------------------------------------------------------------------------------

struct scope {
  scope* parent = nullptr;
  std::vector<std::pair<std::string, value>> vars;
  value* local(std::string_view name) {
    for (auto& [k, v] : vars)
      if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, value v) {
    if (value* x = local(name))
      *x = std::move(v);
    else
      vars.emplace_back(name, std::move(v));
  }
  const value* lookup(std::string_view name) {
    for (scope* s = this; s; s = s->parent)
      if (value* v = s->local(name)) return v;
    return nullptr;
  }
};

// transformers' strftime_now as the library implements it: %Y %m %d %b %B %H %M %% of the local
// time (other directives are left as written). Not reproducible: it reads the clock.
inline std::string strftime_now(std::string_view format) {
  const std::time_t now = std::time(nullptr);
  std::tm t{};
  localtime_r(&now, &t);
  static constexpr const char* months[] = {"January",   "February", "March",    "April",
                                           "May",       "June",     "July",     "August",
                                           "September", "October",  "November", "December"};
  const auto pad2 = [](int n) { return (n < 10 ? "0" : "") + std::to_string(n); };
  std::string out;
  for (std::size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 >= format.size()) {
      out += format[i];
      continue;
    }
    const char c = format[i + 1];
    const std::string month = months[t.tm_mon];
    switch (c) {
      case 'Y':
        out += std::to_string(t.tm_year + 1900);
        break;
      case 'm':
        out += pad2(t.tm_mon + 1);
        break;
      case 'd':
        out += pad2(t.tm_mday);
        break;
      case 'b':
        out += month.substr(0, 3);
        break;
      case 'B':
        out += month;
        break;
      case 'H':
        out += pad2(t.tm_hour);
        break;
      case 'M':
        out += pad2(t.tm_min);
        break;
      case '%':
        out += '%';
        break;
      default:
        out += '%';
        out += c;
        break;
    }
    ++i;
  }
  return out;
}

class renderer {
 public:
  renderer(const std::vector<node_ptr>& program, const source_map& map)
      : program_(program), map_(map) {}

  rendered_chat run(const nlohmann::ordered_json& context) {
    scope& global = new_scope(nullptr);
    global.set("namespace", builtin("namespace", [](call_args& a) { return make_namespace(a); }));
    global.set("false", value::boolean(false));
    global.set("true", value::boolean(true));
    global.set("none", value::null());
    global.set("raise_exception", builtin("raise_exception", [](call_args& a) -> value {
                 throw raised{a.pos.empty() ? std::string() : js_string(a.pos[0])};
               }));
    global.set("range", builtin("range", [](call_args& a) { return range(a); }));
    global.set("strftime_now", builtin("strftime_now", [](call_args& a) {
                 if (a.pos.empty() || a.pos[0].kind != vk::string)
                   bad("strftime_now expects a format string");
                 return value::string(strftime_now(a.pos[0].s));
               }));
    global.set("True", value::boolean(true));
    global.set("False", value::boolean(false));
    global.set("None", value::null());
    if (!context.is_object() && !context.is_null())
      rolora::raise<value_error>(map_.name(), ": the context must be a JSON object, got ",
                                 context.type_name());
    const nlohmann::ordered_json none_given = nlohmann::ordered_json::object();
    for (const auto& [key, v] : (context.is_null() ? none_given : context).items()) {
      // (the library refuses a variable that shadows a global; jinja2 lets it shadow)
      if (global.local(key))
        rolora::raise<value_error>(map_.name(), ": the context variable '", key,
                                   "' would shadow the template global of that name");
      global.set(key, from_json(v));
    }
    rendered_chat result;
    top_ = &result.text;
    spans_ = &result.generation_spans;
    try {
      block(program_, global, result.text);
      if (open_span_) spans_->emplace_back(*open_span_, result.text.size());
    } catch (const raised& r) {
      rolora::raise<value_error>(map_.name(), ": raise_exception: ", r.what);
    } catch (const render_fault& f) {
      rolora::raise<value_error>(
          f.pos == static_cast<std::size_t>(-1) ? map_.name() : map_.where(f.pos), ": ", f.what);
    } catch (const loop_break&) {
      rolora::raise<value_error>(map_.name(), ": {% break %} outside a loop");
    } catch (const loop_continue&) {
      rolora::raise<value_error>(map_.name(), ": {% continue %} outside a loop");
    }
    return result;
  }

 private:
  const std::vector<node_ptr>& program_;
  const source_map& map_;
  std::deque<scope> scopes_;
  std::string* top_ = nullptr;
  std::vector<std::pair<std::size_t, std::size_t>>* spans_ = nullptr;
  std::optional<std::size_t> open_span_;
  int depth_ = 0;

  scope& new_scope(scope* parent) {
    scopes_.emplace_back();
    scopes_.back().parent = parent;
    return scopes_.back();
  }
  static value builtin(std::string name, std::function<value(call_args&)> f) {
    value v;
    v.kind = vk::function;
    v.fn = std::make_shared<const function>(function{std::move(name), std::move(f)});
    return v;
  }
  [[noreturn]] static void fail_at(const node& n, const std::string& what) {
    throw render_fault{what, n.pos};
  }

  static value make_namespace(call_args& a) {
    if (a.pos.size() > 1)
      bad("namespace() takes at most 1 positional argument, got ", a.pos.size());
    value ns = value::object(vk::ns);
    if (a.pos.size() == 1) {
      const value& src = a.pos[0];
      if (src.kind == vk::object) {
        for (const auto& kv : src.obj->items) ns.obj->set(kv.first, kv.second);
      } else if (src.kind == vk::array) {
        for (const auto& pair : *src.list) {
          if (pair.kind != vk::array || pair.list->size() != 2 ||
              (*pair.list)[0].kind != vk::string)
            bad("namespace() expects a mapping or a list of [key, value] pairs");
          ns.obj->set((*pair.list)[0].s, (*pair.list)[1]);
        }
      } else {
        bad("namespace() expects a mapping, got ", type_name(src));
      }
    }
    for (const auto& kv : a.kw.items) ns.obj->set(kv.first, kv.second);
    return ns;
  }
  // Python's range as the library computes it (JavaScript numbers).
  static value range(call_args& a) {
    for (const auto& x : a.pos)
      if (!x.is_number() && x.kind != vk::boolean)
        bad("range() expects numbers, got ", type_name(x));
    if (a.pos.empty() || a.pos.size() > 3)
      bad("range() takes 1 to 3 arguments, got ", a.pos.size());
    double start = 0, stop = 0, step = 1;
    if (a.pos.size() == 1)
      stop = a.pos[0].num();
    else
      start = a.pos[0].num(), stop = a.pos[1].num();
    if (a.pos.size() == 3) step = a.pos[2].num();
    if (step == 0) bad("range() step must not be zero");
    if ((stop - start) / step > max_range)
      bad("range() of more than ", max_range, " numbers is refused");
    std::vector<value> out;
    for (double x = start; step > 0 ? x < stop : x > stop; x += step)
      out.push_back(std::trunc(x) == x ? value::integer(static_cast<std::int64_t>(x))
                                       : value::floating(x));
    return value::array(std::move(out));
  }

  // ---- statements ----
  void block(const std::vector<node_ptr>& body, scope& env, std::string& out) {
    for (const auto& st : body) statement(*st, env, out);
  }
  void statement(const node& n, scope& env, std::string& out) {
    switch (n.kind) {
      case nk::text:
        out += n.str;
        return;
      case nk::comment:
        return;
      case nk::if_:
        block(truthy(eval(*n.x, env)) ? n.body : n.alt, env, out);
        return;
      case nk::for_:
        render_for(n, env, out);
        return;
      case nk::set:
        execute_set(n, env);
        return;
      case nk::macro:
        define_macro(n, env);
        return;
      case nk::brk:
        throw loop_break{};
      case nk::cont:
        throw loop_continue{};
      case nk::gen_begin:
        if (&out == top_ && !open_span_) open_span_ = out.size();
        return;
      case nk::gen_end:
        if (&out == top_ && open_span_) {
          spans_->emplace_back(*open_span_, out.size());
          open_span_.reset();
        }
        return;
      default: {
        const value v = eval(n, env);
        if (v.kind != vk::null && v.kind != vk::undefined) {
          if (v.kind == vk::function)
            fail_at(n, "cannot print a function (a macro or method not called?)");
          out += display(v);
        }
      }
    }
  }

  void bind_target(const node& target, const value& v, scope& env) {
    if (target.kind == nk::ident) {
      env.set(target.str, v);
      return;
    }
    for (std::size_t k = 0; k < target.kids.size(); ++k) {
      if (target.kids[k]->kind != nk::ident)
        fail_at(*target.kids[k], "cannot unpack into something that is not a name");
      env.set(target.kids[k]->str, k < v.list->size() ? (*v.list)[k] : value{});
    }
  }

  void render_for(const node& n, scope& env, std::string& out) {
    scope& loop_scope = new_scope(&env);
    const node* iter_expr = n.y.get();
    const node* test = nullptr;
    if (iter_expr->kind == nk::select) test = iter_expr->y.get(), iter_expr = iter_expr->x.get();
    value iterable = eval(*iter_expr, loop_scope);
    std::vector<value> candidates;
    // (jinja2 also iterates strings, and treats undefined as empty; the library refuses both)
    if (iterable.kind == vk::array)
      candidates = *iterable.list;
    else if (iterable.kind == vk::object)
      for (const auto& kv : iterable.obj->items) candidates.push_back(value::string(kv.first));
    else
      fail_at(*iter_expr,
              std::string("expected a list or a mapping to loop over, got ") + type_name(iterable));
    std::vector<value> items;
    for (auto& c : candidates) {
      if (n.x->kind == nk::tuple_lit) {
        if (c.kind != vk::array)
          fail_at(*n.x, std::string("cannot unpack a ") + type_name(c) + " into " +
                            std::to_string(n.x->kids.size()) + " names");
        if (c.list->size() != n.x->kids.size())
          fail_at(*n.x, std::string("too ") + (n.x->kids.size() > c.list->size() ? "few" : "many") +
                            " items to unpack");
      }
      if (test) {
        scope& s = new_scope(&loop_scope);
        bind_target(*n.x, c, s);
        if (!truthy(eval(*test, s))) continue;
      }
      items.push_back(std::move(c));
    }
    bool none = true;
    const auto count = static_cast<std::int64_t>(items.size());
    for (std::int64_t k = 0; k < count; ++k) {
      value loop = value::object();
      auto& d = *loop.obj;
      d.set("index", value::integer(k + 1));
      d.set("index0", value::integer(k));
      d.set("revindex", value::integer(count - k));
      d.set("revindex0", value::integer(count - k - 1));
      d.set("first", value::boolean(k == 0));
      d.set("last", value::boolean(k == count - 1));
      d.set("length", value::integer(count));
      d.set("previtem", k > 0 ? items[static_cast<std::size_t>(k - 1)] : value{});
      d.set("nextitem", k < count - 1 ? items[static_cast<std::size_t>(k + 1)] : value{});
      loop_scope.set("loop", std::move(loop));
      bind_target(*n.x, items[static_cast<std::size_t>(k)], loop_scope);
      const std::size_t mark = out.size();
      try {
        block(n.body, loop_scope, out);
      } catch (const loop_continue&) {
        // The library drops what the iteration printed before {% continue %} / {% break %}
        // (jinja2 keeps it), and an iteration ended by either does not count for {% else %}.
        discard(out, mark);
        continue;
      } catch (const loop_break&) {
        discard(out, mark);
        break;
      }
      none = false;
    }
    if (none) block(n.alt, loop_scope, out);
  }
  void discard(std::string& out, std::size_t mark) {
    out.resize(mark);
    if (&out != top_) return;
    while (!spans_->empty() && spans_->back().second > mark) spans_->pop_back();
    if (open_span_ && *open_span_ > mark) open_span_.reset();
  }

  void execute_set(const node& n, scope& env) {
    value rhs;
    if (n.y) {
      rhs = eval(*n.y, env);
    } else {
      std::string text;
      block(n.body, env, text);
      rhs = value::string(std::move(text));
    }
    const node& target = *n.x;
    if (target.kind == nk::ident) {
      env.set(target.str, std::move(rhs));
    } else if (target.kind == nk::tuple_lit) {
      if (rhs.kind != vk::array)
        fail_at(n, std::string("cannot unpack a ") + type_name(rhs) + " in set");
      if (rhs.list->size() != target.kids.size())
        fail_at(n, std::string("too ") + (target.kids.size() > rhs.list->size() ? "few" : "many") +
                       " items to unpack in set");
      bind_target(target, rhs, env);
    } else if (target.kind == nk::member) {
      const value object = eval(*target.x, env);
      if (object.kind != vk::ns)
        fail_at(target,
                std::string("can only set an attribute of a namespace, got ") + type_name(object));
      if (target.y->kind != nk::ident || target.flag)
        fail_at(target, "can only set an attribute given by name");
      object.obj->set(target.y->str, std::move(rhs));
    } else {
      fail_at(target, "cannot assign to this expression");
    }
  }

  // caller/kwargs/varargs and parameters, as the library binds them.
  void bind_arguments(const std::string& display_name, const std::vector<node_ptr>& params,
                      unsigned special, call_args& a, scope& s) {
    dict kw = a.kw;
    std::vector<std::pair<std::string, const node*>> pending;
    for (std::size_t k = 0; k < params.size(); ++k) {
      const node& p = *params[k];
      std::optional<value> v;
      if (k < a.pos.size()) v = a.pos[k];
      if (!v) {
        if (const value* x = kw.find(p.str)) {
          v = *x;
          kw.erase(p.str);
        }
      }
      if (!v && p.kind == nk::kwarg) pending.emplace_back(p.str, p.x.get());
      s.set(p.str, v ? *v : value{});
    }
    if (special & 2u) {
      value k = value::object();
      *k.obj = kw;
      s.set("kwargs", std::move(k));
    } else if (!kw.items.empty()) {
      bad("macro ", display_name, " takes no keyword argument '", kw.items.front().first, "'");
    }
    if (special & 4u) {
      std::vector<value> rest;
      for (std::size_t k = params.size(); k < a.pos.size(); ++k) rest.push_back(a.pos[k]);
      s.set("varargs", value::array(std::move(rest)));
    } else if (a.pos.size() > params.size()) {
      bad("macro ", display_name, " takes not more than ", params.size(), " argument(s), got ",
          a.pos.size());
    }
    for (const auto& [name, def] : pending) s.set(name, eval(*def, s));
  }

  struct depth_guard {
    renderer& r;
    explicit depth_guard(renderer& q) : r(q) {
      if (++r.depth_ > max_depth) bad("macro calls nest deeper than ", max_depth, " levels");
    }
    ~depth_guard() { --r.depth_; }
    depth_guard(const depth_guard&) = delete;
    depth_guard& operator=(const depth_guard&) = delete;
  };

  void define_macro(const node& n, scope& env) {
    scope* defined = &env;
    const node* m = &n;
    env.set(n.str, builtin(n.str, [this, defined, m](call_args& a) {
              depth_guard g(*this);
              scope* parent = defined;
              if (m->special & 1u) {
                parent = &new_scope(defined);
                parent->set("caller", a.caller);
              }
              scope& s = new_scope(parent);
              bind_arguments("'" + m->str + "'", m->kids, m->special, a, s);
              std::string text;
              block(m->body, s, text);
              return value::string(std::move(text));
            }));
  }

  // ---- expressions ----
  call_args arguments(const std::vector<node_ptr>& args, scope& env) {
    call_args a;
    for (const auto& x : args) {
      if (x->kind == nk::spread) {
        const value v = eval(*x->x, env);
        if (v.kind != vk::array)
          fail_at(*x, std::string("cannot unpack a ") + type_name(v) + " with '*'");
        a.pos.insert(a.pos.end(), v.list->begin(), v.list->end());
      } else if (x->kind != nk::kwarg && x->kind != nk::kwspread) {
        a.pos.push_back(eval(*x, env));
      }
    }
    for (const auto& x : args) {
      const auto add = [&](const std::string& k, value v) {
        if (a.kw.find(k)) fail_at(*x, "got multiple values for keyword argument '" + k + "'");
        a.kw.items.emplace_back(k, std::move(v));
      };
      if (x->kind == nk::kwarg) {
        add(x->str, eval(*x->x, env));
      } else if (x->kind == nk::kwspread) {
        const value v = eval(*x->x, env);
        if (v.kind != vk::object)
          fail_at(*x, std::string("the argument after ** must be a mapping, got ") + type_name(v));
        for (const auto& kv : v.obj->items) add(kv.first, kv.second);
      }
    }
    return a;
  }

  value call_function(const node& at, const value& fn, call_args& a) {
    if (fn.kind != vk::function)
      fail_at(at, std::string("cannot call a ") + type_name(fn) + " (not a function)");
    try {
      return fn.fn->call(a);
    } catch (render_fault& f) {
      if (f.pos == static_cast<std::size_t>(-1)) f.pos = at.pos;
      throw;
    }
  }

  value eval(const node& n, scope& env) {
    try {
      return eval_inner(n, env);
    } catch (render_fault& f) {
      if (f.pos == static_cast<std::size_t>(-1)) f.pos = n.pos;
      throw;
    }
  }

  value eval_inner(const node& n, scope& env) {
    switch (n.kind) {
      case nk::ident: {
        const value* v = env.lookup(n.str);
        return v ? *v : value{};
      }
      case nk::int_lit:
        return value::integer(n.integer);
      case nk::float_lit:
        return value::floating(n.number);
      case nk::str_lit:
        return value::string(n.str);
      case nk::array_lit:
      case nk::tuple_lit: {
        std::vector<value> items;
        for (const auto& k : n.kids) items.push_back(eval(*k, env));
        return value::array(std::move(items));
      }
      case nk::object_lit: {
        value v = value::object();
        for (std::size_t k = 0; k + 1 < n.kids.size(); k += 2) {
          value key = eval(*n.kids[k], env);
          if (key.kind != vk::string)
            fail_at(*n.kids[k],
                    std::string("dictionary keys must be strings, got ") + type_name(key));
          v.obj->set(key.s, eval(*n.kids[k + 1], env));
        }
        return v;
      }
      case nk::binary:
        return binary(n, env);
      case nk::unary: {
        const value v = eval(*n.x, env);
        if (n.str == "not") return value::boolean(!truthy(v));
        const int sign = n.str == "-" ? -1 : 1;
        if (v.kind == vk::floating) return value::floating(sign * v.d);
        if (v.kind == vk::integer || v.kind == vk::boolean)
          return value::integer(sign * (v.kind == vk::boolean ? (v.b ? 1 : 0) : v.i));
        fail_at(n, "unary " + n.str + " needs a number, got " + type_name(v));
      }
      case nk::ternary:
        return truthy(eval(*n.x, env)) ? eval(*n.y, env) : eval(*n.z, env);
      case nk::select:
        return truthy(eval(*n.y, env)) ? eval(*n.x, env) : value{};
      case nk::member:
        return member(n, env);
      case nk::call: {
        call_args a = arguments(n.kids, env);
        const value fn = eval(*n.x, env);
        return call_function(n, fn, a);
      }
      case nk::filter:
        return filter(eval(*n.x, env), *n.y, env);
      case nk::test:
        return value::boolean(run_test(n, env) != n.flag);
      case nk::call_stmt:
        return call_block(n, env);
      case nk::filter_stmt: {
        std::string text;
        block(n.body, env, text);
        return filter(value::string(std::move(text)), *n.x, env);
      }
      case nk::macro:
        define_macro(n, env);
        return value::null();
      default:
        fail_at(n, "this cannot be evaluated as an expression");
    }
  }

  value call_block(const node& n, scope& env) {
    scope* defined = &env;
    const node* c = &n;
    value caller = builtin("caller", [this, defined, c](call_args& a) {
      scope& s = new_scope(defined);
      bind_arguments("None", c->kids, c->special, a, s);
      std::string text;
      block(c->body, s, text);
      return value::string(std::move(text));
    });
    call_args a = arguments(n.x->kids, env);
    a.caller = caller;
    const value fn = eval(*n.x->x, env);
    return call_function(n, fn, a);
  }

  value binary(const node& n, scope& env) {
    const std::string& op = n.str;
    value left = eval(*n.x, env);
    if (op == "and") return truthy(left) ? eval(*n.y, env) : left;
    if (op == "or") return truthy(left) ? left : eval(*n.y, env);
    const value right = eval(*n.y, env);
    if (op == "==") return value::boolean(loose_equal(left, right));
    if (op == "!=") return value::boolean(!loose_equal(left, right));
    const auto no = [&]() -> value {
      fail_at(n, "unsupported operator '" + op + "' between " + type_name(left) + " and " +
                     type_name(right));
    };
    if (left.is_number() && right.is_number() && op != "~" && op != "**") {
      const bool fl = left.kind == vk::floating || right.kind == vk::floating;
      if (op == "<") return value::boolean(left.num() < right.num());
      if (op == ">") return value::boolean(left.num() > right.num());
      if (op == "<=") return value::boolean(left.num() <= right.num());
      if (op == ">=") return value::boolean(left.num() >= right.num());
      if (op == "/")
        return value::floating(left.num() / right.num());  // (jinja2: division by zero is an error)
      if (fl) {
        const double a = left.num(), b = right.num();
        if (op == "+") return value::floating(a + b);
        if (op == "-") return value::floating(a - b);
        if (op == "*") return value::floating(a * b);
        if (op == "//") return value::floating(std::floor(a / b));
        if (op == "%") return value::floating(std::fmod(a, b));  // the sign of a (jinja2: of b)
        return no();
      }
      const std::int64_t a = left.i, b = right.i;
      std::int64_t r = 0;
      if (op == "+" || op == "-" || op == "*") {
        const bool overflow = op == "+"   ? __builtin_add_overflow(a, b, &r)
                              : op == "-" ? __builtin_sub_overflow(a, b, &r)
                                          : __builtin_mul_overflow(a, b, &r);
        if (overflow) fail_at(n, "integer overflow in '" + op + "'");
        return value::integer(r);
      }
      if (op == "//" || op == "%") {
        if (b == 0) fail_at(n, "integer division or modulo by zero");
        if (op == "%")
          return value::integer(a % b);  // the sign of a, as JavaScript's % (jinja2: of b)
        return value::integer(
            static_cast<std::int64_t>(std::floor(static_cast<double>(a) / static_cast<double>(b))));
      }
      return no();
    }
    if (left.kind == vk::undefined || right.kind == vk::undefined) {
      if (right.kind == vk::undefined && (op == "in" || op == "not in"))
        return value::boolean(op == "not in");
      if (op == "~" && left.kind != vk::null && right.kind != vk::null)
        return value::string((left.kind == vk::undefined ? "" : js_string(left)) +
                             (right.kind == vk::undefined ? "" : js_string(right)));
      fail_at(n, "unsupported operator '" + op + "' on an undefined value");
    }
    if (left.kind == vk::null || right.kind == vk::null)
      fail_at(n, "unsupported operator '" + op + "' on none");
    if (op == "~") return value::string(js_string(left) + js_string(right));
    const auto numeric = [](const value& v) { return v.is_number() || v.kind == vk::boolean; };
    if (op == "**" && numeric(left) && numeric(right)) {
      const double a = left.num(), b = right.num();
      if (a == 0 && b < 0) fail_at(n, "0.0 cannot be raised to a negative power");
      const double r = std::pow(a, b);
      if (!std::isfinite(r)) fail_at(n, "the result of '**' is not a finite number");
      if (left.kind == vk::floating || right.kind == vk::floating || b < 0)
        return value::floating(r);
      if (std::fabs(r) >= 9.2e18) fail_at(n, "integer overflow in '**'");
      return value::integer(static_cast<std::int64_t>(r));
    }
    if (left.kind == vk::array && right.kind == vk::array) {
      if (op == "+") {
        std::vector<value> items = *left.list;
        items.insert(items.end(), right.list->begin(), right.list->end());
        return value::array(std::move(items));
      }
    } else if (right.kind == vk::array) {
      const bool found = std::any_of(right.list->begin(), right.list->end(),
                                     [&](const value& x) { return strict_equal(x, left); });
      if (op == "in") return value::boolean(found);
      if (op == "not in") return value::boolean(!found);
    }
    if ((left.kind == vk::string || right.kind == vk::string) && op == "+")
      return value::string(js_string(left) + js_string(right));
    if (left.kind == vk::string && right.kind == vk::string) {
      if (op == "in") return value::boolean(right.s.find(left.s) != std::string::npos);
      if (op == "not in") return value::boolean(right.s.find(left.s) == std::string::npos);
    }
    if (left.kind == vk::string && right.kind == vk::object) {
      if (op == "in") return value::boolean(right.obj->find(left.s) != nullptr);
      if (op == "not in") return value::boolean(right.obj->find(left.s) == nullptr);
    }
    // (jinja2 also compares strings and lists with < <= > >=; the library refuses)
    return no();
  }

  // The indices a Python slice picks (the library's slice()).
  static std::vector<std::size_t> slice_of(std::optional<std::int64_t> start,
                                           std::optional<std::int64_t> stop, std::int64_t step,
                                           std::size_t size) {
    std::vector<std::size_t> picks;
    const auto len = static_cast<std::int64_t>(size);
    if (step > 0) {
      std::int64_t a = start.value_or(0), b = stop.value_or(len);
      a = a < 0 ? std::max<std::int64_t>(len + a, 0) : std::min(a, len);
      b = b < 0 ? std::max<std::int64_t>(len + b, 0) : std::min(b, len);
      for (std::int64_t k = a; k < b; k += step) picks.push_back(static_cast<std::size_t>(k));
    } else {
      std::int64_t a = start.value_or(len - 1), b = stop.value_or(-1);
      a = a < 0 ? std::max<std::int64_t>(len + a, -1) : std::min(a, len - 1);
      b = b < -1 ? std::max<std::int64_t>(len + b, -1) : std::min(b, len - 1);
      for (std::int64_t k = a; k > b; k += step) picks.push_back(static_cast<std::size_t>(k));
    }
    return picks;
  }

  value member(const node& n, scope& env) {
    const value object = eval(*n.x, env);
    if (n.flag && n.y->kind == nk::slice) {
      if (object.kind != vk::array && object.kind != vk::string)
        fail_at(n, std::string("can only slice a list or a string, got ") + type_name(object));
      const node& s = *n.y;
      std::optional<std::int64_t> part[3];
      const node* exprs[3] = {s.x.get(), s.y.get(), s.z.get()};
      for (int k = 0; k < 3; ++k) {
        if (!exprs[k]) continue;
        const value v = eval(*exprs[k], env);
        // (jinja2 takes none as missing; the library refuses it)
        if (v.kind == vk::integer)
          part[k] = v.i;
        else if (v.kind != vk::undefined)
          fail_at(*exprs[k], std::string("slice bounds must be integers, got ") + type_name(v));
      }
      const std::int64_t step = part[2].value_or(1);
      if (step == 0) fail_at(n, "slice step cannot be zero");
      if (object.kind == vk::array) {
        std::vector<value> items;
        for (std::size_t k : slice_of(part[0], part[1], step, object.list->size()))
          items.push_back((*object.list)[k]);
        return value::array(std::move(items));
      }
      const std::u32string cps = to_code_points(object.s);
      std::string text;
      for (std::size_t k : slice_of(part[0], part[1], step, cps.size())) append_utf8(text, cps[k]);
      return value::string(std::move(text));
    }
    value property;
    if (n.flag)
      property = eval(*n.y, env);
    else if (n.y->kind == nk::int_lit)
      property = value::integer(n.y->integer);
    else
      property = value::string(n.y->str);
    if (object.kind == vk::object || object.kind == vk::ns) {
      if (property.kind != vk::string)
        fail_at(n, std::string("a mapping's keys are strings, got ") + type_name(property));
      if (const value* v = object.obj->find(property.s)) return *v;
      return object.kind == vk::object ? dict_method(object, property.s) : value{};
    }
    if (object.kind == vk::array || object.kind == vk::string) {
      if (property.kind == vk::integer) {
        if (object.kind == vk::array) {
          auto k = property.i;
          const auto len = static_cast<std::int64_t>(object.list->size());
          if (k < 0) k += len;
          return k >= 0 && k < len ? (*object.list)[static_cast<std::size_t>(k)] : value{};
        }
        // (by code point; the library indexes UTF-16 code units)
        const std::u32string cps = to_code_points(object.s);
        auto k = property.i;
        const auto len = static_cast<std::int64_t>(cps.size());
        if (k < 0) k += len;
        if (k < 0 || k >= len) return {};
        std::string ch;
        append_utf8(ch, cps[static_cast<std::size_t>(k)]);
        return value::string(ch);
      }
      if (property.kind == vk::string) {
        if (property.s == "length")
          return value::integer(object.kind == vk::array
                                    ? static_cast<std::int64_t>(object.list->size())
                                    : utf16_length(object.s));
        return object.kind == vk::string ? string_method(object, property.s) : value{};
      }
      fail_at(n, std::string("an index must be an integer or a name, got ") + type_name(property));
    }
    if (property.kind != vk::string) fail_at(n, std::string("cannot index a ") + type_name(object));
    return {};
  }

  // ---- methods ----
  static value string_method(const value& self, const std::string& name) {
    const std::string s = self.s;
    const auto f = [&](std::function<value(call_args&)> g) { return builtin(name, std::move(g)); };
    // (jinja2's strip/lstrip/rstrip take the characters to strip; the library ignores the
    // argument and strips white space)
    if (name == "upper") return f([s](call_args&) { return value::string(to_upper(s)); });
    if (name == "lower") return f([s](call_args&) { return value::string(to_lower(s)); });
    if (name == "strip") return f([s](call_args&) { return value::string(std::string(trim(s))); });
    if (name == "lstrip")
      return f([s](call_args&) { return value::string(std::string(trim_start(s))); });
    if (name == "rstrip")
      return f([s](call_args&) { return value::string(std::string(trim_end(s))); });
    if (name == "title") return f([s](call_args&) { return value::string(title(s)); });
    if (name == "capitalize") return f([s](call_args&) { return value::string(capitalize(s)); });
    if (name == "startswith" || name == "endswith") {
      const bool start = name == "startswith";
      return f([s, start](call_args& a) {
        if (a.pos.empty()) bad(start ? "startswith" : "endswith", "() needs an argument");
        const auto match = [&](const value& p) {
          if (p.kind != vk::string)
            bad(start ? "startswith" : "endswith", "() expects a string or a tuple of strings");
          return start ? s.starts_with(p.s) : s.ends_with(p.s);
        };
        if (a.pos[0].kind == vk::array) {
          for (const auto& p : *a.pos[0].list)
            if (match(p)) return value::boolean(true);
          return value::boolean(false);
        }
        return value::boolean(match(a.pos[0]));
      });
    }
    if (name == "split") return f([s](call_args& a) { return split(s, a); });
    if (name == "replace") return f([s](call_args& a) { return replace(s, a); });
    return {};
  }
  static std::string title(
      std::string_view s) {  // /\b\w/g uppercased (jinja2 also lowercases the rest)
    std::string out(s);
    for (std::size_t k = 0; k < out.size(); ++k)
      if (is_word(out[k]) && (k == 0 || !is_word(out[k - 1])) && out[k] >= 'a' && out[k] <= 'z')
        out[k] = static_cast<char>(out[k] - 32);
    return out;
  }
  static std::string capitalize(std::string_view s) {  // (jinja2 also lowercases the rest)
    if (s.empty()) return "";
    const auto [c, n] = code_point_at(s, 0);
    std::string out = to_upper(s.substr(0, n));
    out.append(s.substr(n));
    return out;
  }
  static value split(const std::string& s, call_args& a) {
    const value sep = a.pos.size() > 0 ? a.pos[0] : value::null();
    const value maxsplit = a.pos.size() > 1 ? a.pos[1] : value::integer(-1);
    if (sep.kind != vk::string && sep.kind != vk::null)
      bad("split(): the separator must be a string or none");
    if (maxsplit.kind != vk::integer) bad("split(): maxsplit must be an integer");
    std::vector<value> out;
    if (sep.kind == vk::null) {
      const std::string_view text = trim_start(s);
      std::size_t k = 0;
      while (k < text.size()) {
        while (std::size_t n = space_at(text, k)) k += n;
        if (k >= text.size()) break;
        std::size_t e = k;
        while (e < text.size() && space_at(text, e) == 0) e += code_point_at(text, e).second;
        if (maxsplit.i >= 0 && static_cast<std::int64_t>(out.size()) >= maxsplit.i) {
          out.push_back(value::string(std::string(text.substr(k))));
          break;
        }
        out.push_back(value::string(std::string(text.substr(k, e - k))));
        k = e;
      }
    } else {
      if (sep.s.empty()) bad("split(): empty separator");
      std::vector<std::string> parts;
      std::size_t k = 0;
      while (true) {
        const std::size_t e = s.find(sep.s, k);
        if (e == std::string::npos) {
          parts.push_back(s.substr(k));
          break;
        }
        parts.push_back(s.substr(k, e - k));
        k = e + sep.s.size();
      }
      if (maxsplit.i >= 0 && static_cast<std::int64_t>(parts.size()) > maxsplit.i) {
        std::string rest;
        for (std::size_t p = static_cast<std::size_t>(maxsplit.i); p < parts.size(); ++p)
          rest += (p > static_cast<std::size_t>(maxsplit.i) ? sep.s : "") + parts[p];
        parts.resize(static_cast<std::size_t>(maxsplit.i));
        parts.push_back(rest);
      }
      for (auto& p : parts) out.push_back(value::string(std::move(p)));
    }
    return value::array(std::move(out));
  }
  static value replace(const std::string& s, call_args& a) {
    if (a.pos.size() < 2) bad("replace() needs two arguments");
    if (a.pos[0].kind != vk::string || a.pos[1].kind != vk::string)
      bad("replace(): the arguments must be strings");
    value count = a.pos.size() > 2 ? a.pos[2] : value::null();
    if (const value* c = a.kw.find("count")) count = *c;
    if (count.kind != vk::integer && count.kind != vk::null)
      bad("replace(): count must be an integer or none");
    std::int64_t left = count.kind == vk::null || count.i < 0 ? INT64_MAX : count.i;
    const std::string& from = a.pos[0].s;
    const std::string& to = a.pos[1].s;
    std::string out;
    if (from.empty()) {  // before each code point and at the end
      std::size_t k = 0;
      while (true) {
        if (left > 0) out += to, --left;
        if (k >= s.size()) break;
        const std::size_t n = code_point_at(s, k).second;
        out.append(s, k, n);
        k += n;
      }
      return value::string(out);
    }
    std::size_t k = 0;
    while (left > 0) {
      const std::size_t e = s.find(from, k);
      if (e == std::string::npos) break;
      out.append(s, k, e - k);
      out += to;
      k = e + from.size();
      --left;
    }
    out.append(s, k);
    return value::string(out);
  }

  static value items_of(const value& self) {
    std::vector<value> out;
    for (const auto& kv : self.obj->items)
      out.push_back(value::array({value::string(kv.first), kv.second}));
    return value::array(std::move(out));
  }
  static value dict_method(const value& self, const std::string& name) {
    const value me = self;
    if (name == "get")
      return builtin(name, [me](call_args& a) {
        if (a.pos.empty() || a.pos[0].kind != vk::string) bad("get(): the key must be a string");
        if (const value* v = me.obj->find(a.pos[0].s)) return *v;
        return a.pos.size() > 1 ? a.pos[1] : value::null();
      });
    if (name == "items") return builtin(name, [me](call_args&) { return items_of(me); });
    if (name == "keys")
      return builtin(name, [me](call_args&) {
        std::vector<value> out;
        for (const auto& kv : me.obj->items) out.push_back(value::string(kv.first));
        return value::array(std::move(out));
      });
    if (name == "values")
      return builtin(name, [me](call_args&) {
        std::vector<value> out;
        for (const auto& kv : me.obj->items) out.push_back(kv.second);
        return value::array(std::move(out));
      });
    if (name == "dictsort")
      return builtin(name, [me](call_args& a) {
        const value cs = arg(a, 0, "case_sensitive", value::boolean(false));
        const value by = arg(a, 1, "by", value::string("key"));
        const value rev = arg(a, 2, "reverse", value::boolean(false));
        if (cs.kind != vk::boolean || rev.kind != vk::boolean)
          bad("dictsort(): case_sensitive and reverse must be booleans");
        if (by.kind != vk::string || (by.s != "key" && by.s != "value"))
          bad("dictsort(): by must be 'key' or 'value'");
        std::vector<value> items = *items_of(me).list;
        const std::size_t index = by.s == "key" ? 0 : 1;
        std::stable_sort(items.begin(), items.end(), [&](const value& x, const value& y) {
          const int r = compare((*x.list)[index], (*y.list)[index], cs.b);
          return rev.b ? r > 0 : r < 0;
        });
        return value::array(std::move(items));
      });
    return {};
  }
  static value arg(call_args& a, std::size_t k, std::string_view name, value fallback) {
    if (k < a.pos.size()) return a.pos[k];
    if (const value* v = a.kw.find(name)) return *v;
    return fallback;
  }

  // ---- tests ----
  bool test_named(const std::string& name, const value& v, const value* other) {
    if (name == "boolean") return v.kind == vk::boolean;
    if (name == "callable") return v.kind == vk::function;
    if (name == "odd" || name == "even") {
      if (v.kind != vk::integer) bad("cannot test ", name, " on a ", type_name(v));
      return (v.i % 2 != 0) == (name == "odd");
    }
    if (name == "false") return v.kind == vk::boolean && !v.b;
    if (name == "true") return v.kind == vk::boolean && v.b;
    if (name == "none") return v.kind == vk::null;
    if (name == "string") return v.kind == vk::string;
    if (name == "number") return v.is_number();
    if (name == "integer") return v.kind == vk::integer;
    if (name == "float") return v.kind == vk::floating;  // (not in the library)
    if (name == "iterable") return v.kind == vk::array || v.kind == vk::string;
    if (name == "mapping") return v.kind == vk::object;
    if (name == "sequence")
      return v.kind == vk::array || v.kind == vk::object || v.kind == vk::string;
    if (name == "lower") return v.kind == vk::string && v.s == to_lower(v.s);
    if (name == "upper") return v.kind == vk::string && v.s == to_upper(v.s);
    if (name == "defined") return v.kind != vk::undefined;
    if (name == "undefined") return v.kind == vk::undefined;
    const value none;
    const value& b = other ? *other : none;
    if (name == "equalto" || name == "eq" || name == "sameas") return strict_equal(v, b);
    // With an argument, as jinja2 has them (the library cannot parse a test's argument):
    if (name == "ne") return !strict_equal(v, b);
    if (name == "divisibleby") {
      if (v.kind != vk::integer || b.kind != vk::integer || b.i == 0)
        bad("divisibleby needs two integers, the second not zero");
      return v.i % b.i == 0;
    }
    if (name == "lt" || name == "gt" || name == "le" || name == "ge") {
      const int r = compare(v, b, true);
      return name == "lt" ? r < 0 : name == "gt" ? r > 0 : name == "le" ? r <= 0 : r >= 0;
    }
    if (name == "in") {
      if (b.kind == vk::array)
        return std::any_of(b.list->begin(), b.list->end(),
                           [&](const value& x) { return strict_equal(x, v); });
      if (b.kind == vk::string && v.kind == vk::string) return b.s.find(v.s) != std::string::npos;
      if (b.kind == vk::object && v.kind == vk::string) return b.obj->find(v.s) != nullptr;
      bad("the test 'in' needs a list, a string or a mapping");
    }
    bad("unknown test '", name, "'");
  }
  bool run_test(const node& n, scope& env) {
    const value v = eval(*n.x, env);
    if (n.kids.empty()) return test_named(n.str, v, nullptr);
    call_args a = arguments(n.kids, env);
    if (a.pos.size() != 1 || !a.kw.items.empty()) fail_at(n, "a test takes one argument");
    return test_named(n.str, v, &a.pos[0]);
  }

  // ---- filters (the library's applyFilter) ----
  value filter(const value& operand, const node& f, scope& env) {
    if (f.kind == nk::ident) return plain_filter(operand, f.str, f);
    const std::string& name = f.x->str;
    if (f.x->kind != nk::ident) fail_at(f, "a filter must be named");
    return call_filter(operand, name, f, env);
  }

  value plain_filter(const value& v, const std::string& name, const node& at) {
    if (name == "safe") return v;
    if (name == "tojson") {
      std::string out;
      to_json(out, v, {}, 0);
      return value::string(out);
    }
    const auto unknown = [&]() -> value {
      fail_at(at, "unknown filter '" + name + "' for a " + type_name(v));
    };
    if (v.kind == vk::array) {
      const auto& l = *v.list;
      if (name == "list") return v;
      // (jinja2 gives undefined for first/last of an empty list; the library fails)
      if (name == "first") return l.empty() ? value{} : l.front();
      if (name == "last") return l.empty() ? value{} : l.back();
      if (name == "length" || name == "count")
        return value::integer(static_cast<std::int64_t>(l.size()));
      if (name == "reverse") return value::array(std::vector<value>(l.rbegin(), l.rend()));
      if (name == "sort") {
        std::vector<value> items = l;
        std::stable_sort(items.begin(), items.end(),
                         [](const value& x, const value& y) { return compare(x, y, false) < 0; });
        return value::array(std::move(items));
      }
      if (name == "join") return value::string(join(l, ""));
      if (name == "string") {
        std::string out;
        json_options o;
        o.undefined_as_null = false;
        to_json(out, v, o, 0);
        return value::string(out);
      }
      if (name == "unique") {
        std::vector<value> out;
        for (const auto& x : l)
          if (std::none_of(out.begin(), out.end(),
                           [&](const value& y) { return strict_equal(x, y); }))
            out.push_back(x);
        return value::array(std::move(out));
      }
      return unknown();
    }
    if (v.kind == vk::string) {
      if (name == "length" || name == "count")
        return value::integer(utf16_length(v.s));  // UTF-16 units, as JavaScript
      if (name == "upper") return value::string(to_upper(v.s));
      if (name == "lower") return value::string(to_lower(v.s));
      if (name == "title") return value::string(title(v.s));
      if (name == "capitalize") return value::string(capitalize(v.s));
      if (name == "trim") return value::string(std::string(trim(v.s)));
      if (name == "indent") return value::string(indent(v.s, "    ", false, false));
      if (name == "join" || name == "string") return v;
      if (name == "int") return value::integer(parse_int(v.s).value_or(0));
      if (name == "float") return value::floating(parse_float(v.s).value_or(0.0));
      return unknown();
    }
    if (v.is_number()) {
      if (name == "abs")
        return v.kind == vk::integer ? value::integer(v.i < 0 ? -v.i : v.i)
                                     : value::floating(std::fabs(v.d));
      if (name == "int")
        return value::integer(v.kind == vk::integer ? v.i
                                                    : static_cast<std::int64_t>(std::trunc(v.d)));
      if (name == "float") return value::floating(v.num());
      if (name == "string") return value::string(display(v));
      return unknown();
    }
    if (v.kind == vk::object) {
      if (name == "items") return items_of(v);
      if (name == "length" || name == "count")
        return value::integer(static_cast<std::int64_t>(v.obj->items.size()));
      const value m = dict_method(v, name);
      if (m.kind == vk::function) {
        call_args none;
        return call_function(at, m, none);
      }
      return unknown();
    }
    if (v.kind == vk::boolean) {
      if (name == "bool") return v;
      if (name == "int") return value::integer(v.b ? 1 : 0);
      if (name == "float") return value::floating(v.b ? 1.0 : 0.0);
      if (name == "string") return value::string(v.b ? "true" : "false");
      return unknown();
    }
    fail_at(at, "cannot apply the filter '" + name + "' to a " + type_name(v));
  }

  static std::string join(const std::vector<value>& items, const std::string& sep) {
    std::string out;
    for (std::size_t k = 0; k < items.size(); ++k) {
      if (k) out += sep;
      if (items[k].kind != vk::null && items[k].kind != vk::undefined) out += js_string(items[k]);
    }
    return out;
  }
  static std::string indent(std::string_view s, const std::string& pad, bool first, bool blank) {
    std::string out;
    std::size_t k = 0, line = 0;
    while (true) {
      const std::size_t e = s.find('\n', k);
      const std::string_view part =
          s.substr(k, e == std::string_view::npos ? std::string_view::npos : e - k);
      if (!((!first && line == 0) || (!blank && part.empty()))) out += pad;
      out.append(part);
      if (e == std::string_view::npos) break;
      out += '\n';
      k = e + 1;
      ++line;
    }
    return out;
  }
  // JavaScript's parseInt(s, 10) and parseFloat(s): a leading number, or nothing.
  static std::optional<std::int64_t> parse_int(std::string_view s) {
    const std::string t(trim_start(s));
    std::size_t k = 0;
    bool neg = false;
    if (k < t.size() && (t[k] == '+' || t[k] == '-')) neg = t[k] == '-', ++k;
    std::int64_t x = 0;
    const auto r = std::from_chars(t.data() + k, t.data() + t.size(), x);
    if (r.ptr == t.data() + k) return std::nullopt;
    return neg ? -x : x;
  }
  static std::optional<double> parse_float(std::string_view s) {
    const std::string t(trim_start(s));
    if (t.starts_with("Infinity") || t.starts_with("+Infinity")) return INFINITY;
    if (t.starts_with("-Infinity")) return -INFINITY;
    std::size_t k = 0;
    if (k < t.size() && (t[k] == '+' || t[k] == '-')) ++k;
    if (k >= t.size() ||
        !(is_digit(t[k]) || (t[k] == '.' && k + 1 < t.size() && is_digit(t[k + 1]))))
      return std::nullopt;
    return std::strtod(t.c_str(), nullptr);
  }

  value call_filter(const value& v, const std::string& name, const node& f, scope& env) {
    call_args a = arguments(f.kids, env);
    const auto unknown = [&]() -> value {
      fail_at(f, "unknown filter '" + name + "' for a " + type_name(v));
    };
    if (name == "tojson") {
      json_options o;
      if (const value* x = a.kw.find("indent")) {
        if (x->kind == vk::integer)
          o.indent = x->i;
        else if (x->kind != vk::null)
          fail_at(f, "tojson: indent must be an integer");
      }
      if (const value* x = a.kw.find("ensure_ascii")) {
        if (x->kind != vk::boolean) fail_at(f, "tojson: ensure_ascii must be a boolean");
        o.ascii = x->b;
      }
      if (const value* x = a.kw.find("sort_keys")) {
        if (x->kind != vk::boolean) fail_at(f, "tojson: sort_keys must be a boolean");
        o.sort_keys = x->b;
      }
      if (const value* x = a.kw.find("separators")) {
        if (x->kind == vk::array) {
          if (x->list->size() != 2 || (*x->list)[0].kind != vk::string ||
              (*x->list)[1].kind != vk::string)
            fail_at(f, "tojson: separators must be two strings");
          o.separators = std::make_pair((*x->list)[0].s, (*x->list)[1].s);
        } else if (x->kind != vk::null) {
          fail_at(f, "tojson: separators must be two strings");
        }
      }
      // (positional arguments are ignored, as in the library; jinja2 takes indent first)
      std::string out;
      to_json(out, v, o, 0);
      return value::string(out);
    }
    if (name == "join") {
      std::vector<value> items;
      if (v.kind == vk::string) {
        for (char32_t c : to_code_points(v.s)) {
          std::string ch;
          append_utf8(ch, c);
          items.push_back(value::string(ch));
        }
      } else if (v.kind == vk::array) {
        items = *v.list;
      } else {
        fail_at(f, std::string("cannot join a ") + type_name(v));
      }
      const value sep = arg(a, 0, "separator", value::string(""));
      if (sep.kind != vk::string) fail_at(f, "join: the separator must be a string");
      return value::string(join(items, sep.s));
    }
    if (name == "int" || name == "float") {
      const bool is_int = name == "int";
      const value def = arg(a, 0, "default", is_int ? value::integer(0) : value::floating(0));
      if (v.kind == vk::string) {
        if (is_int) {
          const auto x = parse_int(v.s);
          return x ? value::integer(*x) : def;
        }
        const auto x = parse_float(v.s);
        return x ? value::floating(*x) : def;
      }
      if (v.is_number() || v.kind == vk::boolean) return plain_filter(v, name, f);
      fail_at(f, "cannot apply the filter '" + name + "' to a " + type_name(v));
    }
    if (name == "default" || name == "d") {  // ("d": jinja2's alias; not in the library)
      const value def = a.pos.empty() ? value::string("") : a.pos[0];
      const value flag = a.pos.size() > 1       ? a.pos[1]
                         : a.kw.find("boolean") ? *a.kw.find("boolean")
                                                : value::boolean(false);
      if (flag.kind != vk::boolean) fail_at(f, "default: the second argument must be a boolean");
      if (v.kind == vk::undefined || (flag.b && !truthy(v))) return def;
      return v;
    }
    if (v.kind == vk::array) {
      if (name == "sort") {
        const value rev = arg(a, 0, "reverse", value::boolean(false));
        const value cs = arg(a, 1, "case_sensitive", value::boolean(false));
        const value attr = arg(a, 2, "attribute", value::null());
        if (rev.kind != vk::boolean || cs.kind != vk::boolean)
          fail_at(f, "sort: reverse and case_sensitive must be booleans");
        if (attr.kind != vk::string && attr.kind != vk::integer && attr.kind != vk::null)
          fail_at(f, "sort: attribute must be a string, an integer or none");
        const auto key = [&](const value& x) {
          if (attr.kind == vk::null) return x;
          return attribute_path(x, attr.kind == vk::integer ? std::to_string(attr.i) : attr.s);
        };
        std::vector<value> items = *v.list;
        try {
          std::stable_sort(items.begin(), items.end(), [&](const value& x, const value& y) {
            const int r = compare(key(x), key(y), cs.b);
            return rev.b ? r > 0 : r < 0;
          });
        } catch (render_fault& e) {
          e.pos = f.pos;
          throw;
        }
        return value::array(std::move(items));
      }
      if (name == "selectattr" || name == "rejectattr") {
        const bool select = name == "selectattr";
        for (const auto& x : *v.list)
          if (x.kind != vk::object && x.kind != vk::ns)
            fail_at(f, name + " can only be applied to a list of mappings");
        for (const auto& k : f.kids)
          if (k->kind != nk::str_lit)
            fail_at(*k, "the arguments of " + name + " must be string literals");
        if (a.pos.empty()) fail_at(f, name + " needs the name of an attribute");
        const std::string attr = a.pos[0].s;
        std::vector<value> out;
        for (const auto& x : *v.list) {
          const value* got = x.obj->find(attr);
          bool r = false;
          if (got)
            r = a.pos.size() > 1
                    ? test_named(a.pos[1].s, *got, a.pos.size() > 2 ? &a.pos[2] : nullptr)
                    : truthy(*got);
          if (r == select) out.push_back(x);
        }
        return value::array(std::move(out));
      }
      if (name == "map") {
        const value* attr = a.kw.find("attribute");
        if (!attr) fail_at(f, "map without attribute= is not supported (as in the library)");
        if (attr->kind != vk::string) fail_at(f, "map: attribute must be a string");
        const value* def = a.kw.find("default");
        std::vector<value> out;
        for (const auto& x : *v.list) {
          if (x.kind != vk::object && x.kind != vk::ns)
            fail_at(f, "map: the items must be mappings");
          value got = attribute_path(x, attr->s);
          out.push_back(got.kind == vk::undefined && def ? *def : got);
        }
        return value::array(std::move(out));
      }
      return unknown();
    }
    if (v.kind == vk::string) {
      if (name == "indent") {
        const value width = arg(a, 0, "width", value::integer(4));
        const value first = arg(a, 1, "first", value::boolean(false));
        const value blank = arg(a, 2, "blank", value::boolean(false));
        if (width.kind != vk::integer && width.kind != vk::string)
          fail_at(f, "indent: width must be an integer or a string");
        const std::string pad =
            width.kind == vk::string
                ? width.s
                : std::string(static_cast<std::size_t>(std::max<std::int64_t>(0, width.i)), ' ');
        return value::string(indent(v.s, pad, truthy(first), truthy(blank)));
      }
      if (name == "replace") return replace(v.s, a);
      return unknown();
    }
    if (v.kind == vk::object) {
      const value m = dict_method(v, name);
      if (m.kind == vk::function) return call_function(f, m, a);
      return unknown();
    }
    fail_at(f, "cannot apply the filter '" + name + "' to a " + type_name(v));
  }
};

struct program {
  std::vector<node_ptr> body;
  bool generation = false;
};

}  // namespace detail::jinja

// A chat template: parsed once, rendered any number of times (render() is const and safe to call
// from several threads at once).
class chat_template {
 public:
  // Parses `source`; a syntax error or an unsupported construct is a rolora::value_error
  // "<name>:<line>:<col>: <what was expected, what came>".
  explicit chat_template(std::string source, std::string name = "chat_template")
      : source_(std::move(source)), name_(std::move(name)) {
    namespace j = detail::jinja;
    const j::source_map map(source_, name_);
    const j::prepared p = j::prepare(source_);
    const auto tokens = j::lex(p, map);
    auto prog = std::make_shared<j::program>();
    prog->generation = !p.marks.empty();
    prog->body = j::parser(tokens, map, source_.size()).program();
    program_ = std::move(prog);
  }

  // Renders with `context`'s top-level keys as variables (messages, add_generation_prompt,
  // bos_token, eos_token, tools, ...; a null context: none). raise_exception(msg) in the template
  // throws a rolora::value_error "<name>: raise_exception: msg". A runtime error (unknown filter,
  // calling a non-callable, wrong argument types, ...) is a value_error naming the line.
  rendered_chat render(const nlohmann::ordered_json& context) const {
    const detail::jinja::source_map map(source_, name_);
    return detail::jinja::renderer(program_->body, map).run(context);
  }

  bool has_generation_blocks() const { return program_->generation; }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::string name_;
  std::shared_ptr<const detail::jinja::program> program_;
};

}  // namespace rolora::tokenizers
