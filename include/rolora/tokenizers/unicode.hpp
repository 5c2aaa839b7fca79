// The Unicode the tokenizers need: UTF-8 in and out, the character classes the Hugging Face
// normalizers and split patterns ask about (\p{L}, \p{N}, \s, punctuation, marks, controls),
// canonical decomposition and composition (NFD, NFC) and lowercase mapping.
//
// The data is unicode_tables.hpp, generated from Python's unicodedata by
// scripts/gen_tokenizer_unicode.py (Unicode 14.0 there). The reference library mixes versions:
// Rust's std (char::is_whitespace, char::to_lowercase), the unicode_categories and
// unicode-normalization-alignments crates and Oniguruma each carry their own; the code points
// where they differ from 14.0 are new or rare ones (docs/tokenizers.md).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <rolora/core/error.hpp>
#include <rolora/tokenizers/unicode_tables.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::tokenizers {

// A coarse general category: the classes the tokenizers distinguish.
enum class char_class : std::uint8_t {
  unassigned,       // Cn
  letter,           // L*
  mark_nonspacing,  // Mn
  mark_other,       // Mc, Me
  number,           // N*
  punctuation,      // P*
  symbol,           // S*
  separator,        // Z*
  control,          // Cc
  format,           // Cf
  private_use,      // Co
  surrogate,        // Cs
};

namespace detail {

template <class Row, std::size_t N>
const Row* find_run(const Row (&rows)[N], char32_t c) {
  const auto* it = std::upper_bound(std::begin(rows), std::end(rows), static_cast<std::uint32_t>(c),
                                    [](std::uint32_t v, const Row& r) { return v < r.first; });
  if (it == std::begin(rows)) return nullptr;
  --it;
  return c <= it->last ? it : nullptr;
}

}  // namespace detail

inline char_class class_of(char32_t c) {
  const auto* run = detail::find_run(detail::tables::general_class, c);
  return run ? static_cast<char_class>(run->value) : char_class::unassigned;
}
inline bool is_letter(char32_t c) { return class_of(c) == char_class::letter; }
inline bool is_number(char32_t c) { return class_of(c) == char_class::number; }
// The White_Space property (Rust's char::is_whitespace, Oniguruma's \s).
inline bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}
// The reference's own classes (unicode_tables.hpp): BertNormalizer and BertPreTokenizer use the
// unicode_categories crate (Unicode 8.0), where "other" is Cc, Cf or Co (not Cn); StripAccents
// drops the combining marks of unicode-normalization-alignments.
namespace detail {
inline std::uint8_t bert_bits(char32_t c) {
  const auto* run = find_run(tables::bert_class, c);
  return run ? run->value : 0;
}
}  // namespace detail
inline bool is_bert_other(char32_t c) { return (detail::bert_bits(c) & 1) != 0; }
inline bool is_bert_nonspacing_mark(char32_t c) { return (detail::bert_bits(c) & 2) != 0; }
inline bool is_combining_mark(char32_t c) { return (detail::bert_bits(c) & 8) != 0; }
inline bool is_bert_punctuation_class(char32_t c) { return (detail::bert_bits(c) & 4) != 0; }

inline std::uint8_t combining_class(char32_t c) {
  const auto* run = detail::find_run(detail::tables::combining_class, c);
  return run ? run->value : 0;
}

// UTF-8 -> code points. Invalid UTF-8 (overlong forms, surrogates, truncated sequences) is
// refused with the byte offset: the reference library takes Rust strings, always valid.
inline std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  const auto bad = [&](std::size_t at) {
    rolora::detail::fail<value_error>("tokenizer", "the text is not valid UTF-8 at byte ", at);
  };
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    std::size_t n = 0;
    char32_t c = 0, min = 0;
    if ((b0 & 0xE0) == 0xC0) {
      n = 1, c = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      n = 2, c = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      n = 3, c = b0 & 0x07, min = 0x10000;
    } else {
      bad(i);
    }
    if (s.size() - i < n + 1) bad(i);
    for (std::size_t k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) bad(i);
      c = (c << 6) | (b & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) bad(i);
    out.push_back(c);
    i += n + 1;
  }
  return out;
}

inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

inline std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char32_t c : s) append_utf8(out, c);
  return out;
}

// Lowercase, code point by code point (Rust's char::to_lowercase, as the reference's
// NormalizedString::lowercase applies it: no final-sigma rule).
inline void append_lowercase(std::u32string& out, char32_t c) {
  if (c == 0x130) {  // 'İ' -> "i̇", the one lowercase of two code points
    out.push_back(0x69);
    out.push_back(0x307);
    return;
  }
  const auto& rows = detail::tables::lowercase;
  const auto* it =
      std::lower_bound(std::begin(rows), std::end(rows), static_cast<std::uint32_t>(c),
                       [](const auto& r, std::uint32_t v) { return r.code_point < v; });
  out.push_back(it != std::end(rows) && it->code_point == c ? it->lower : c);
}

namespace detail {

// Hangul syllables decompose and compose by arithmetic (Unicode 3.12).
inline constexpr char32_t hangul_s = 0xAC00, hangul_l = 0x1100, hangul_v = 0x1161,
                          hangul_t = 0x11A7;
inline constexpr char32_t hangul_l_count = 19, hangul_v_count = 21, hangul_t_count = 28,
                          hangul_n = hangul_v_count * hangul_t_count,
                          hangul_s_count = hangul_l_count * hangul_n;

inline void decompose_into(std::u32string& out, char32_t c) {
  if (c >= hangul_s && c < hangul_s + hangul_s_count) {
    const char32_t s = c - hangul_s;
    out.push_back(hangul_l + s / hangul_n);
    out.push_back(hangul_v + (s % hangul_n) / hangul_t_count);
    if (s % hangul_t_count != 0) out.push_back(hangul_t + s % hangul_t_count);
    return;
  }
  const auto& rows = tables::canonical_decomposition;
  const auto* it =
      std::lower_bound(std::begin(rows), std::end(rows), static_cast<std::uint32_t>(c),
                       [](const auto& r, std::uint32_t v) { return r.code_point < v; });
  if (it == std::end(rows) || it->code_point != c) {
    out.push_back(c);
    return;
  }
  decompose_into(out, it->first);
  if (it->second != 0) decompose_into(out, it->second);
}

inline char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= hangul_l && a < hangul_l + hangul_l_count && b >= hangul_v &&
      b < hangul_v + hangul_v_count) {
    return hangul_s + ((a - hangul_l) * hangul_v_count + (b - hangul_v)) * hangul_t_count;
  }
  if (a >= hangul_s && a < hangul_s + hangul_s_count && (a - hangul_s) % hangul_t_count == 0 &&
      b > hangul_t && b < hangul_t + hangul_t_count) {
    return a + (b - hangul_t);
  }
  const auto& rows = tables::canonical_composition;
  const auto* it =
      std::lower_bound(std::begin(rows), std::end(rows), std::pair<char32_t, char32_t>{a, b},
                       [](const auto& r, const std::pair<char32_t, char32_t>& v) {
                         return r.first != v.first ? r.first < v.first : r.second < v.second;
                       });
  return it != std::end(rows) && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace detail

// Canonical decomposition with canonical ordering (NFD).
inline std::u32string nfd(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (const char32_t c : s) detail::decompose_into(out, c);
  // Canonical ordering: a stable sort of each run of non-starters by combining class.
  std::size_t i = 0;
  while (i < out.size()) {
    if (combining_class(out[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < out.size() && combining_class(out[j]) != 0) ++j;
    std::stable_sort(
        out.begin() + static_cast<std::ptrdiff_t>(i), out.begin() + static_cast<std::ptrdiff_t>(j),
        [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  return out;
}

// Canonical composition of the canonical decomposition (NFC).
inline std::u32string nfc(std::u32string_view s) {
  std::u32string d = nfd(s);
  if (d.empty()) return d;
  std::u32string out;
  out.reserve(d.size());
  std::size_t starter = std::u32string::npos;  // index in out of the last starter
  int last_class = -1;                         // class of the last character appended
  for (const char32_t c : d) {
    const int cc = combining_class(c);
    // Not blocked: c follows the starter directly, or everything between (non-starters in
    // canonical order) has a lower class than c.
    if (starter != std::u32string::npos && (out.size() - 1 == starter || last_class < cc)) {
      if (const char32_t comp = detail::compose_pair(out[starter], c)) {
        out[starter] = comp;
        continue;
      }
    }
    if (cc == 0) starter = out.size();
    out.push_back(c);
    last_class = cc;
  }
  return out;
}

}  // namespace rolora::tokenizers
