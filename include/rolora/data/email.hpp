// Text of an e-mail for classification: the Subject plus the readable body, every other header
// dropped (Received, X-Spam-*, List-*, ... would give the answer away), MIME taken apart.
//
// What is done, in order (docs/data.md lists the same):
//  - CRLF and lone CR become LF; a leading mbox "From " separator line is skipped.
//  - Header block: up to the first empty line; folded lines (starting with space or tab) are
//    joined to the field they continue; lines that are not "name: value" are ignored.
//  - Subject: RFC 2047 encoded words (=?charset?Q?...?= and =?charset?B?...?=) decoded to their
//    bytes; the charset is not converted (the tokenizer works on bytes).
//  - Body by Content-Type (default text/plain):
//      text/html                 -> decoded, tags stripped (html_to_text);
//      text/* (not rfc822-headers) -> decoded; stripped as HTML too when a text/plain body
//                                   starts with <html>, <head>, <body> or <!doctype html>, or the
//                                   message has no Content-Type at all and holds an <html> tag;
//      multipart/alternative     -> the first text/plain alternative with text, else the first
//                                   alternative with text;
//      other multipart/*         -> the text of every part, in order, parts' MIME headers dropped
//                                   (a message without Content-Type whose body has a "--X" line
//                                   followed by "Content-..." is read as multipart with boundary
//                                   X);
//      message/rfc822            -> the embedded message's body (its headers dropped too);
//      anything else (images, application/*, signatures, delivery reports) -> dropped.
//    Content-Transfer-Encoding quoted-printable and base64 are decoded.
//  - Whitespace: every run of white space becomes one "\n" if it holds a line break, else one
//    space; the text is trimmed.
// Never throws on malformed mail: it keeps what it can read.
#pragma once
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rolora::data {

// One header field, unfolded: `value` has its line breaks removed and leading space trimmed.
struct header_field {
  std::string name;
  std::string value;
};

// A message or MIME part split into its header fields and its body.
struct mime_entity {
  std::vector<header_field> headers;
  std::string body;
};

// A parsed Content-Type: type and subtype in lower case, parameters (names lower case, values
// unquoted). `present` is false when the header was missing (then text/plain is assumed).
struct content_type {
  std::string type = "text", subtype = "plain";
  std::vector<std::pair<std::string, std::string>> params;
  bool present = false;
  std::string param(std::string_view name) const {
    for (const auto& [k, v] : params) {
      if (k == name) return v;
    }
    return {};
  }
};

namespace detail {

inline char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }
inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

inline std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

inline bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

inline bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

inline std::size_t ifind(std::string_view s, std::string_view needle, std::size_t from = 0) {
  if (needle.empty()) return from <= s.size() ? from : std::string_view::npos;
  for (std::size_t i = from; i + needle.size() <= s.size(); ++i) {
    if (iequals(s.substr(i, needle.size()), needle)) return i;
  }
  return std::string_view::npos;
}

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The next line of `s` from `pos` (without its '\n'); advances `pos` past the '\n'.
inline std::string_view next_line(std::string_view s, std::size_t& pos) {
  const std::size_t end = std::min(s.find('\n', pos), s.size());
  const std::string_view line = s.substr(pos, end - pos);
  pos = end < s.size() ? end + 1 : s.size();
  return line;
}

// Appends code point `cp` as UTF-8 (for numeric HTML entities above 255).
inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x110000) {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace detail

// CRLF and lone CR -> LF.
inline std::string normalize_newlines(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Splits a message (LF line ends) into unfolded header fields and body. A first line starting
// with "From " (the mbox separator, not a header) is skipped.
inline mime_entity parse_entity(std::string_view s) {
  mime_entity e;
  std::size_t pos = 0;
  if (s.starts_with("From ")) detail::next_line(s, pos);
  bool in_field = false;  // the last line began a field that a folded line may continue
  while (pos < s.size()) {
    const std::string_view line = detail::next_line(s, pos);
    if (line.empty()) break;  // end of the header block
    if (line.front() == ' ' || line.front() == '\t') {
      if (in_field) e.headers.back().value += line;
      continue;
    }
    const std::size_t colon = line.find(':');
    const std::string_view name = line.substr(0, colon);
    const bool valid =
        colon != std::string_view::npos && colon > 0 &&
        std::none_of(name.begin(), name.end(), [](char c) { return detail::is_space(c); });
    in_field = valid;
    if (valid) e.headers.push_back({std::string(name), std::string(line.substr(colon + 1))});
  }
  for (auto& h : e.headers) {
    // Unfolded: the line breaks are gone already; trim the space around the value.
    h.value = std::string(detail::trim(h.value));
  }
  e.body = std::string(s.substr(pos));
  return e;
}

// The value of the first header field called `name` (case-insensitive), if any.
inline std::optional<std::string> find_header(const std::vector<header_field>& headers,
                                              std::string_view name) {
  for (const auto& h : headers) {
    if (detail::iequals(h.name, name)) return h.value;
  }
  return std::nullopt;
}

// Parses a Content-Type value: `type/subtype; name=value; name="quoted; value"`.
inline content_type parse_content_type(std::string_view value) {
  content_type ct;
  ct.present = true;
  std::size_t pos = value.find(';');
  const std::string_view mime = detail::trim(value.substr(0, pos));
  const std::size_t slash = mime.find('/');
  if (slash != std::string_view::npos && slash > 0) {
    ct.type = detail::to_lower(detail::trim(mime.substr(0, slash)));
    ct.subtype = detail::to_lower(detail::trim(mime.substr(slash + 1)));
  } else {
    ct.type = detail::to_lower(mime);
    ct.subtype.clear();
  }
  while (pos != std::string_view::npos && pos < value.size()) {
    ++pos;  // past ';'
    const std::size_t eq = value.find('=', pos);
    if (eq == std::string_view::npos) break;
    const std::string name = detail::to_lower(detail::trim(value.substr(pos, eq - pos)));
    std::size_t v = eq + 1;
    while (v < value.size() && detail::is_space(value[v])) ++v;
    std::string param;
    if (v < value.size() && value[v] == '"') {
      for (++v; v < value.size() && value[v] != '"'; ++v) {
        if (value[v] == '\\' && v + 1 < value.size()) ++v;
        param += value[v];
      }
      pos = value.find(';', v);
    } else {
      pos = value.find(';', v);
      param = std::string(
          detail::trim(value.substr(v, pos == std::string_view::npos ? value.npos : pos - v)));
    }
    ct.params.emplace_back(name, std::move(param));
  }
  return ct;
}

// Quoted-printable (RFC 2045 6.7): "=XX" is a byte, "=" at a line end is a soft line break;
// anything malformed is kept as it is.
inline std::string decode_quoted_printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '=') {
      out += s[i];
      continue;
    }
    std::size_t j = i + 1;  // soft break: '=', optional trailing blanks, line end
    while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
    if (j < s.size() && s[j] == '\n') {
      i = j;
    } else if (j == s.size()) {
      i = j - 1;
    } else if (i + 2 < s.size() && detail::hex_value(s[i + 1]) >= 0 &&
               detail::hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(detail::hex_value(s[i + 1]) * 16 + detail::hex_value(s[i + 2]));
      i += 2;
    } else {
      out += '=';
    }
  }
  return out;
}

// Base64 (RFC 4648); characters outside the alphabet (line breaks, padding) are skipped, and
// trailing bits that do not make a whole byte are dropped.
inline std::string decode_base64(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (const char c : s) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '+')
      v = 62;
    else if (c == '/')
      v = 63;
    else
      continue;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

// RFC 2047 encoded words in a header value decoded to their bytes (charset not converted); the
// white space between two adjacent encoded words is dropped, as the RFC says.
inline std::string decode_encoded_words(std::string_view s) {
  std::string out;
  std::size_t pos = 0;
  bool last_was_word = false;
  std::string pending_space;  // white space after an encoded word, dropped if another follows
  while (pos < s.size()) {
    const std::size_t start = s.find("=?", pos);
    std::size_t q1 = start == s.npos ? s.npos : s.find('?', start + 2);
    const bool shape_ok = q1 != s.npos && q1 + 2 < s.size() && s[q1 + 2] == '?';
    const std::size_t end = shape_ok ? s.find("?=", q1 + 3) : s.npos;
    if (start == s.npos || end == s.npos) {
      out += pending_space;
      out += s.substr(pos);
      break;
    }
    const std::string_view between = s.substr(pos, start - pos);
    if (last_was_word && detail::trim(between).empty()) {
      // adjacent encoded words: drop the space between them
    } else {
      out += pending_space;
      out += between;
    }
    pending_space.clear();
    const char enc = detail::lower(s[q1 + 1]);
    const std::string_view text = s.substr(q1 + 3, end - (q1 + 3));
    if (enc == 'b') {
      out += decode_base64(text);
    } else if (enc == 'q') {
      std::string t(text);
      std::replace(t.begin(), t.end(), '_', ' ');
      out += decode_quoted_printable(t);
    } else {
      out += s.substr(start, end + 2 - start);
    }
    pos = end + 2;
    last_was_word = true;
    std::size_t ws = pos;
    while (ws < s.size() && detail::is_space(s[ws])) ++ws;
    pending_space = std::string(s.substr(pos, ws - pos));
    pos = ws;
  }
  return out;
}

// HTML to plain text: tags removed (block tags such as p, br, div, tr, li become line breaks,
// td/th a space), comments and the contents of script and style dropped, the common character
// entities (&amp; &lt; &gt; &quot; &apos; &nbsp; and numeric ones) decoded.
inline std::string html_to_text(std::string_view s) {
  static constexpr std::string_view block_tags[] = {
      "br", "p",  "div", "tr",         "li",  "ul",    "ol",   "table", "h1",     "h2", "h3", "h4",
      "h5", "h6", "hr",  "blockquote", "pre", "title", "body", "html",  "center", "dt", "dd"};
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '<') {
      if (s.substr(i, 4) == "<!--") {
        const std::size_t end = s.find("-->", i + 4);
        i = end == s.npos ? s.size() : end + 3;
        continue;
      }
      const bool tag_like =
          i + 1 < s.size() && (std::isalpha(static_cast<unsigned char>(s[i + 1])) ||
                               s[i + 1] == '/' || s[i + 1] == '!' || s[i + 1] == '?');
      if (!tag_like) {
        out += c;
        ++i;
        continue;
      }
      const std::size_t close = s.find('>', i);
      if (close == s.npos) break;  // an unterminated tag runs to the end
      std::size_t n = i + 1 + (s[i + 1] == '/' ? 1 : 0);
      std::size_t name_end = n;
      while (name_end < close && std::isalnum(static_cast<unsigned char>(s[name_end]))) ++name_end;
      const std::string name = detail::to_lower(s.substr(n, name_end - n));
      i = close + 1;
      if ((name == "script" || name == "style") && s[n - 1] != '/') {
        const std::size_t end = detail::ifind(s, "</" + name, i);
        const std::size_t gt = end == s.npos ? s.npos : s.find('>', end);
        i = gt == s.npos ? s.size() : gt + 1;
      } else if (std::find(std::begin(block_tags), std::end(block_tags), name) !=
                 std::end(block_tags)) {
        out += '\n';
      } else if (name == "td" || name == "th") {
        out += ' ';
      }
      continue;
    }
    if (c == '&') {
      const std::size_t semi = s.find(';', i);
      if (semi != s.npos && semi - i <= 10) {
        const std::string_view ent = s.substr(i + 1, semi - i - 1);
        static constexpr std::pair<std::string_view, char> named[] = {
            {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", ' '}};
        bool done = false;
        for (const auto& [k, v] : named) {
          if (detail::iequals(ent, k)) {
            out += v;
            done = true;
          }
        }
        if (!done && ent.size() >= 2 && ent[0] == '#') {
          const bool hex = ent[1] == 'x' || ent[1] == 'X';
          std::uint32_t cp = 0;
          bool ok = ent.size() > (hex ? 2u : 1u);
          for (std::size_t k = hex ? 2 : 1; k < ent.size() && ok; ++k) {
            const int d =
                hex ? detail::hex_value(ent[k])
                    : (std::isdigit(static_cast<unsigned char>(ent[k])) ? ent[k] - '0' : -1);
            ok = d >= 0 && cp < 0x110000;
            cp = cp * (hex ? 16 : 10) + static_cast<std::uint32_t>(d);
          }
          if (ok && cp < 0x110000) {
            if (cp < 256)
              out += static_cast<char>(cp == 0xA0 ? ' ' : cp);
            else
              detail::append_utf8(out, cp);
            done = true;
          }
        }
        if (done) {
          i = semi + 1;
          continue;
        }
      }
    }
    out += c;
    ++i;
  }
  return out;
}

// Every run of white space -> one "\n" if it holds a line break, else one space; trimmed.
inline std::string collapse_whitespace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    if (!detail::is_space(s[i])) {
      out += s[i++];
      continue;
    }
    bool newline = false;
    for (; i < s.size() && detail::is_space(s[i]); ++i) newline = newline || s[i] == '\n';
    out += newline ? '\n' : ' ';
  }
  return std::string(detail::trim(out));
}

namespace detail {

inline std::string decode_transfer(const mime_entity& e) {
  const std::string cte =
      to_lower(trim(find_header(e.headers, "Content-Transfer-Encoding").value_or("")));
  if (cte == "quoted-printable") return decode_quoted_printable(e.body);
  if (cte == "base64") return decode_base64(e.body);
  return e.body;
}

inline std::string without_blanks(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c != ' ' && c != '\t') out += c;
  }
  return out;
}

// The parts of a multipart body; empty when the boundary never occurs. `loose`: blanks are
// ignored when matching delimiter lines (some spam writes "--= Boundary" for boundary "=Boundary").
inline std::vector<std::string_view> split_multipart(std::string_view body,
                                                     std::string_view boundary, bool loose) {
  std::vector<std::string_view> parts;
  const std::string delimiter =
      loose ? without_blanks("--" + std::string(boundary)) : "--" + std::string(boundary);
  if (delimiter.size() <= 2) return parts;
  std::size_t pos = 0, part_start = std::string_view::npos;
  while (pos < body.size()) {
    const std::size_t line_start = pos;
    const std::string_view raw_line = next_line(body, pos);
    const std::string squeezed = loose ? without_blanks(raw_line) : std::string();
    const std::string_view line = loose ? std::string_view(squeezed) : raw_line;
    if (!line.starts_with(delimiter)) continue;
    const std::string_view rest = line.substr(delimiter.size());
    const bool closing = rest.starts_with("--");
    if (!closing && !trim(rest).empty()) continue;  // a longer boundary that shares the prefix
    if (part_start != std::string_view::npos) {
      // The line break before a delimiter belongs to the delimiter.
      const std::size_t end = line_start > part_start ? line_start - 1 : part_start;
      parts.push_back(body.substr(part_start, end - part_start));
    }
    if (closing) return parts;
    part_start = pos;
  }
  if (part_start != std::string_view::npos && part_start < body.size())
    parts.push_back(body.substr(part_start));
  return parts;
}

inline std::string entity_text(const mime_entity& e, int depth, bool top_level);

// For a message without Content-Type whose body is MIME all the same (some spam): the boundary
// of the first line "--X" that is followed by a "Content-..." line, or "" when there is none.
inline std::string guess_boundary(std::string_view body) {
  std::size_t pos = 0;
  std::string_view previous;
  while (pos < body.size()) {
    const std::string_view line = next_line(body, pos);
    if (previous.starts_with("--") && previous.size() > 2 && istarts_with(line, "Content-")) {
      return std::string(trim(previous.substr(2)));
    }
    previous = line;
  }
  return {};
}

// Whether a text/plain body is really an HTML document (mislabelled, common in spam).
inline bool looks_like_html(std::string_view text) {
  const std::string_view t = trim(text);
  return istarts_with(t, "<html") || istarts_with(t, "<!doctype html") ||
         istarts_with(t, "<head") || istarts_with(t, "<body");
}

inline std::string text_of_part(std::string_view raw, int depth) {
  return entity_text(parse_entity(raw), depth + 1, false);
}

inline std::string entity_text(const mime_entity& e, int depth, bool top_level) {
  if (depth > 16) return {};  // pathological nesting: stop
  const auto ct_value = find_header(e.headers, "Content-Type");
  content_type ct = ct_value ? parse_content_type(*ct_value) : content_type{};
  if (!ct.present && top_level) {
    if (std::string b = guess_boundary(e.body); !b.empty()) {
      ct = {"multipart", "mixed", {{"boundary", std::move(b)}}, false};
    }
  }
  if (ct.type == "multipart") {
    auto parts = split_multipart(e.body, ct.param("boundary"), false);
    if (parts.empty()) parts = split_multipart(e.body, ct.param("boundary"), true);
    if (parts.empty()) return collapse_whitespace(e.body);  // broken boundary: keep the raw body
    if (ct.subtype == "alternative") {
      std::string first_text;
      for (const auto part : parts) {
        const mime_entity pe = parse_entity(part);
        const auto pct = find_header(pe.headers, "Content-Type");
        const content_type pt = pct ? parse_content_type(*pct) : content_type{};
        std::string t = entity_text(pe, depth + 1, false);
        if (t.empty()) continue;
        if (pt.type == "text" && pt.subtype == "plain") return t;
        if (first_text.empty()) first_text = std::move(t);
      }
      return first_text;
    }
    std::string out;
    for (const auto part : parts) {
      std::string t = text_of_part(part, depth);
      if (t.empty()) continue;
      if (!out.empty()) out += '\n';
      out += t;
    }
    return out;
  }
  if (ct.type == "message" && ct.subtype == "rfc822") {
    return entity_text(parse_entity(decode_transfer(e)), depth + 1, false);
  }
  if (ct.type != "text" || ct.subtype == "rfc822-headers") return {};
  const std::string decoded = decode_transfer(e);
  const bool html = ct.subtype == "html" || (ct.subtype == "plain" && looks_like_html(decoded)) ||
                    (top_level && !ct.present && ifind(decoded, "<html") != std::string_view::npos);
  return collapse_whitespace(html ? html_to_text(decoded) : decoded);
}

}  // namespace detail

// The text to classify: the decoded Subject, a line break, the body text (whitespace collapsed).
// No other header survives.
inline std::string email_text(std::string_view raw) {
  const mime_entity e = parse_entity(normalize_newlines(raw));
  const std::string subject =
      collapse_whitespace(decode_encoded_words(find_header(e.headers, "Subject").value_or("")));
  const std::string body = detail::entity_text(e, 0, true);
  return collapse_whitespace(subject + "\n" + body);
}

}  // namespace rolora::data
