// The split regexes of Hugging Face tokenizer.json files, as hand-written matchers over Unicode
// classes (no regex engine: the ones at hand lack \p{L}). Only the patterns below are known; any
// other is refused by name (tokenizer.hpp). Each matcher reproduces Oniguruma's leftmost,
// ordered-alternation semantics for its pattern, found match after match through the text.
//
//   gpt2      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//             (the ByteLevel pre-tokenizer's own, GPT-2 and RoBERTa)
//   llama3    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//              ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2     the same with \p{N} for \p{N}{1,3} (Qwen2, Qwen2.5, Qwen3)
//
// Positions are code point indices into a std::u32string.
#pragma once
#include <cstddef>
#include <optional>
#include <rolora/tokenizers/unicode.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rolora::tokenizers::detail {

// [first, last) in code points, and whether it is a match (false: the text between matches).
struct span_piece {
  std::size_t first = 0, last = 0;
  bool is_match = false;
};

inline constexpr std::string_view gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view llama3_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view qwen2_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class split_regex {
 public:
  enum class family { gpt2, llama3 };

  // The matcher of `pattern`, or nothing when it is not one of the known patterns.
  static std::optional<split_regex> of(std::string_view pattern) {
    if (pattern == gpt2_pattern) return split_regex(family::gpt2, 0);
    if (pattern == llama3_pattern) return split_regex(family::llama3, 3);
    if (pattern == qwen2_pattern) return split_regex(family::llama3, 1);
    return std::nullopt;
  }

  // Every match and the text between, in order, covering s (empty s: one empty non-match).
  std::vector<span_piece> find_matches(const std::u32string& s) const {
    std::vector<span_piece> out;
    if (s.empty()) {
      out.push_back({0, 0, false});
      return out;
    }
    std::size_t i = 0;
    while (i < s.size()) {
      const std::size_t end = match_at(s, i);  // every position starts a match of these patterns
      out.push_back({i, end, true});
      i = end;
    }
    return out;
  }

 private:
  split_regex(family f, std::size_t max_digits) : family_(f), max_digits_(max_digits) {}

  static bool is_other(char32_t c) { return !is_white_space(c) && !is_letter(c) && !is_number(c); }
  static bool is_newline(char32_t c) { return c == U'\r' || c == U'\n'; }

  // The length of the contraction at i ("'s", "'ll", ...), 0 if none; case-insensitive for the
  // llama3 family, where Unicode case folding also maps U+017F (long s) to 's'.
  std::size_t contraction_at(const std::u32string& s, std::size_t i) const {
    if (s[i] != U'\'') return 0;
    const bool fold = family_ == family::llama3;
    const auto same = [&](std::size_t at, char32_t lower) {
      if (at >= s.size()) return false;
      const char32_t c = s[at];
      if (c == lower) return true;
      if (!fold) return false;
      return c == lower - 32 || (lower == U's' && c == 0x17F);
    };
    for (const std::u32string_view suffix : {U"s", U"t", U"re", U"ve", U"m", U"ll", U"d"}) {
      bool ok = true;
      for (std::size_t k = 0; k < suffix.size() && ok; ++k) ok = same(i + 1 + k, suffix[k]);
      if (ok) return 1 + suffix.size();
    }
    return 0;
  }

  template <class Pred>
  static std::size_t run_end(const std::u32string& s, std::size_t i, Pred pred) {
    while (i < s.size() && pred(s[i])) ++i;
    return i;
  }

  // \s+(?!\S) then \s+ for the whitespace run at i.
  static std::size_t whitespace_at(const std::u32string& s, std::size_t i) {
    const std::size_t end = run_end(s, i, is_white_space);
    if (end == s.size() || end - i == 1) return end;
    return end - 1;  // leave the last space to the word that follows
  }

  std::size_t match_at(const std::u32string& s, std::size_t i) const {
    if (const std::size_t n = contraction_at(s, i)) return i + n;
    const char32_t c = s[i];
    const bool has_next = i + 1 < s.size();
    if (family_ == family::gpt2) {
      const std::size_t j = (c == U' ' && has_next) ? i + 1 : i;  // the optional ' '
      if (is_letter(s[j])) return run_end(s, j, is_letter);
      if (is_number(s[j])) return run_end(s, j, is_number);
      if (is_other(s[j])) return run_end(s, j, is_other);
      return whitespace_at(s, i);
    }
    // llama3 / qwen2
    if (is_letter(c)) return run_end(s, i, is_letter);
    if (!is_newline(c) && !is_number(c) && has_next && is_letter(s[i + 1]))
      return run_end(s, i + 1, is_letter);
    if (is_number(c)) {
      std::size_t end = i;
      while (end < s.size() && end - i < max_digits_ && is_number(s[end])) ++end;
      return end;
    }
    const std::size_t j = (c == U' ' && has_next && is_other(s[i + 1])) ? i + 1 : i;
    if (is_other(s[j])) return run_end(s, run_end(s, j, is_other), is_newline);
    // c is whitespace: \s*[\r\n]+ ends after the run's last newline, if it has one.
    const std::size_t end = run_end(s, i, is_white_space);
    for (std::size_t k = end; k > i; --k) {
      if (is_newline(s[k - 1])) return k;
    }
    return whitespace_at(s, i);
  }

  family family_;
  std::size_t max_digits_;  // \p{N}{1,max}: 0 unbounded
};

// The matches of the literal `needle` in s, leftmost first, not overlapping (a String pattern).
inline std::vector<span_piece> find_literal(const std::u32string& s, const std::u32string& needle) {
  std::vector<span_piece> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  std::size_t prev = 0, i = 0;
  while (!needle.empty() && (i = s.find(needle, i)) != std::u32string::npos) {
    if (prev < i) out.push_back({prev, i, false});
    out.push_back({i, i + needle.size(), true});
    i += needle.size();
    prev = i;
  }
  if (prev < s.size()) out.push_back({prev, s.size(), false});
  return out;
}

// What a split does with the matched delimiters (the reference's SplitDelimiterBehavior).
enum class split_behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// The pieces of s cut at `matches` (covering s in order) per `behavior`; empty pieces dropped.
inline std::vector<std::u32string> apply_split(const std::u32string& s,
                                               std::vector<span_piece> matches,
                                               split_behavior behavior) {
  std::vector<std::pair<span_piece, bool>> cuts;  // (piece, remove it)
  bool previous_match = false;
  switch (behavior) {
    case split_behavior::isolated:
      for (const auto& m : matches) cuts.push_back({m, false});
      break;
    case split_behavior::removed:
      for (const auto& m : matches) cuts.push_back({m, m.is_match});
      break;
    case split_behavior::contiguous:
      for (const auto& m : matches) {
        if (m.is_match == previous_match && !cuts.empty()) {
          cuts.back().first.last = m.last;
        } else {
          cuts.push_back({m, false});
        }
        previous_match = m.is_match;
      }
      break;
    case split_behavior::merged_with_previous:
      for (const auto& m : matches) {
        if (m.is_match && !previous_match && !cuts.empty()) {
          cuts.back().first.last = m.last;
        } else {
          cuts.push_back({m, false});
        }
        previous_match = m.is_match;
      }
      break;
    case split_behavior::merged_with_next:
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->is_match && !previous_match && !cuts.empty()) {
          cuts.back().first.first = it->first;
        } else {
          cuts.push_back({*it, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(cuts.begin(), cuts.end());
      break;
  }
  std::vector<std::u32string> out;
  for (const auto& [piece, remove] : cuts) {
    if (!remove && piece.last > piece.first)
      out.push_back(s.substr(piece.first, piece.last - piece.first));
  }
  return out;
}

}  // namespace rolora::tokenizers::detail
