// Hugging Face tokenizers from tokenizer.json: WordPiece (BERT) and BPE, byte-level (GPT-2,
// RoBERTa, Llama-3, Qwen2/3, SmolLM) or not, with the normalizers, pre-tokenizers,
// post-processors and added tokens those files use. encode() gives the ids the reference library
// (tokenizers 0.22, Rust) gives for the same file and text; docs/tokenizers.md says what is
// supported, what is refused and how that is verified.
//
//   auto tok = rolora::tokenizers::tokenizer::from_file("tokenizer.json");
//   std::vector<std::int32_t> ids = tok.encode("Hello world");          // with [CLS]/<s>/... if
//   the std::vector<std::int32_t> pair = tok.encode_pair("a", "b");         // post-processor adds
//   them
//
// The pipeline of one text (the reference's): added tokens are cut out of the raw text (those
// with normalized = false), each remaining piece is normalized, added tokens with normalized =
// true are cut out of the result, the rest is pre-tokenized into words, each word goes through
// the model; the post-processor adds the special tokens of a single text or a pair.
//
// Anything the file holds that is not implemented here -- an unknown type, an option with a
// value other than the supported ones, an unknown key -- is refused with
// "[rolora.tokenizer] <file>: <field>: ..." (a config_error); nothing is guessed. Text that is
// not valid UTF-8 is a value_error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <rolora/core/error.hpp>
#include <rolora/io/file.hpp>
#include <rolora/io/json.hpp>
#if defined(ROLORA_HAVE_SENTENCEPIECE)
#include <rolora/tokenizers/sentencepiece.hpp>
#endif
#include <rolora/tokenizers/split_patterns.hpp>
#include <rolora/tokenizers/unicode.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rolora::tokenizers {

// Ids of the special tokens a model needs to know (absent when the files do not name one).
struct special_ids {
  std::optional<std::int32_t> pad, unk, cls, sep, bos, eos;
};

namespace detail {

using json = nlohmann::json;
using pieces = std::vector<std::u32string>;

// Where a value sits in the file, for messages: "<file>: pre_tokenizer.pretokenizers[1].pattern".
struct where {
  std::string file;
  std::string path;
  where at(std::string_view key) const {
    return {file, path.empty() ? std::string(key) : path + "." + std::string(key)};
  }
  where at(std::size_t index) const { return {file, path + "[" + std::to_string(index) + "]"}; }
};

template <class... Parts>
[[noreturn]] void refuse(const where& w, Parts&&... parts) {
  rolora::detail::fail<config_error>("tokenizer", w.file, ": ", w.path, ": ",
                                     std::forward<Parts>(parts)...);
}

inline std::string excerpt(const json& v) { return rolora::detail::json_io::json_excerpt(v, 80); }

inline const json& member(const json& obj, const where& w, const char* key) {
  if (!obj.is_object()) refuse(w, "expected an object, got ", excerpt(obj));
  const auto it = obj.find(key);
  if (it == obj.end()) refuse(w.at(key), "missing");
  return *it;
}
inline bool has(const json& obj, const char* key) { return obj.is_object() && obj.contains(key); }

// Refuses a key the component does not know: it could change what the reference does.
inline void only_keys(const json& obj, const where& w,
                      std::initializer_list<std::string_view> keys) {
  if (!obj.is_object()) refuse(w, "expected an object, got ", excerpt(obj));
  for (const auto& [key, value] : obj.items()) {
    bool known = false;
    for (const auto k : keys) known = known || key == k;
    if (!known) refuse(w.at(key), "unknown option (value ", excerpt(value), "); not supported");
  }
}

inline std::string get_string(const json& obj, const where& w, const char* key) {
  const json& v = member(obj, w, key);
  if (!v.is_string()) refuse(w.at(key), "expected a string, got ", excerpt(v));
  return v.get<std::string>();
}
inline std::optional<std::string> get_optional_string(const json& obj, const where& w,
                                                      const char* key) {
  if (!has(obj, key) || obj.at(key).is_null()) return std::nullopt;
  return get_string(obj, w, key);
}
inline bool get_bool(const json& obj, const where& w, const char* key,
                     std::optional<bool> fallback = std::nullopt) {
  if (!has(obj, key)) {
    if (fallback) return *fallback;
    refuse(w.at(key), "missing");
  }
  const json& v = obj.at(key);
  if (!v.is_boolean()) refuse(w.at(key), "expected true or false, got ", excerpt(v));
  return v.get<bool>();
}
inline std::int32_t get_id(const json& v, const where& w) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 0x7FFFFFFFu)
    refuse(w, "expected a token id in [0, 2^31), got ", excerpt(v));
  return static_cast<std::int32_t>(v.get<std::uint64_t>());
}
inline const json& get_array(const json& obj, const where& w, const char* key) {
  const json& v = member(obj, w, key);
  if (!v.is_array()) refuse(w.at(key), "expected an array, got ", excerpt(v));
  return v;
}
inline std::string type_of(const json& obj, const where& w) { return get_string(obj, w, "type"); }

// --- normalizers --------------------------------------------------------------------------

struct normalizer {
  virtual ~normalizer() = default;
  virtual void normalize(std::u32string& s) const = 0;
};

inline bool is_chinese_char(char32_t c) {  // the reference's CJK blocks (normalizers/bert.rs)
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}
// BertNormalizer's strip_accents drops non-spacing marks, the StripAccents normalizer any mark.
inline void strip_nonspacing_marks(std::u32string& s) { std::erase_if(s, is_bert_nonspacing_mark); }
inline void strip_combining_marks(std::u32string& s) { std::erase_if(s, is_combining_mark); }
inline void lowercase_all(std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (const char32_t c : s) append_lowercase(out, c);
  s = std::move(out);
}

struct bert_normalizer final : normalizer {
  bool clean_text = true, handle_chinese_chars = true, strip_accents = true, lowercase = true;
  void normalize(std::u32string& s) const override {
    if (clean_text) {
      std::u32string out;
      out.reserve(s.size());
      for (const char32_t c : s) {
        // Controls go, \t \n \r excepted (so \v, \f and U+0085 go too); white space turns to ' '.
        const bool keep_control = c == U'\t' || c == U'\n' || c == U'\r';
        if (c == 0 || c == 0xFFFD || (!keep_control && is_bert_other(c))) continue;
        out.push_back(keep_control || is_white_space(c) ? U' ' : c);
      }
      s = std::move(out);
    }
    if (handle_chinese_chars) {
      std::u32string out;
      out.reserve(s.size());
      for (const char32_t c : s) {
        if (is_chinese_char(c)) {
          out.push_back(U' ');
          out.push_back(c);
          out.push_back(U' ');
        } else {
          out.push_back(c);
        }
      }
      s = std::move(out);
    }
    if (strip_accents) {
      s = nfd(s);
      strip_nonspacing_marks(s);
    }
    if (lowercase) lowercase_all(s);
  }
};

struct function_normalizer final : normalizer {
  enum class kind { nfc, nfd, lowercase, strip_accents } what;
  explicit function_normalizer(kind k) : what(k) {}
  void normalize(std::u32string& s) const override {
    switch (what) {
      case kind::nfc:
        s = nfc(s);
        break;
      case kind::nfd:
        s = nfd(s);
        break;
      case kind::lowercase:
        lowercase_all(s);
        break;
      case kind::strip_accents:
        strip_combining_marks(s);
        break;
    }
  }
};

struct strip_normalizer final : normalizer {
  bool left = true, right = true;
  void normalize(std::u32string& s) const override {
    std::size_t b = 0, e = s.size();
    if (left)
      while (b < e && is_white_space(s[b])) ++b;
    if (right)
      while (e > b && is_white_space(s[e - 1])) --e;
    s = s.substr(b, e - b);
  }
};

struct prepend_normalizer final : normalizer {
  std::u32string text;
  void normalize(std::u32string& s) const override {
    if (!s.empty()) s.insert(0, text);
  }
};

struct replace_normalizer final : normalizer {
  std::u32string pattern, content;
  void normalize(std::u32string& s) const override {
    std::u32string out;
    std::size_t prev = 0, i = 0;
    while ((i = s.find(pattern, prev)) != std::u32string::npos) {
      out.append(s, prev, i - prev).append(content);
      prev = i + pattern.size();
    }
    out.append(s, prev, std::u32string::npos);
    s = std::move(out);
  }
};

struct sequence_normalizer final : normalizer {
  std::vector<std::unique_ptr<normalizer>> steps;
  void normalize(std::u32string& s) const override {
    for (const auto& n : steps) n->normalize(s);
  }
};

inline std::unique_ptr<normalizer> make_normalizer(const json& j, const where& w) {
  const std::string type = type_of(j, w);
  if (type == "BertNormalizer") {
    only_keys(j, w, {"type", "clean_text", "handle_chinese_chars", "strip_accents", "lowercase"});
    auto n = std::make_unique<bert_normalizer>();
    n->clean_text = get_bool(j, w, "clean_text", true);
    n->handle_chinese_chars = get_bool(j, w, "handle_chinese_chars", true);
    n->lowercase = get_bool(j, w, "lowercase", true);
    // strip_accents: null follows lowercase (the reference's rule).
    n->strip_accents = has(j, "strip_accents") && !j.at("strip_accents").is_null()
                           ? get_bool(j, w, "strip_accents")
                           : n->lowercase;
    return n;
  }
  if (type == "NFC" || type == "NFD" || type == "Lowercase" || type == "StripAccents") {
    only_keys(j, w, {"type"});
    using k = function_normalizer::kind;
    return std::make_unique<function_normalizer>(type == "NFC"         ? k::nfc
                                                 : type == "NFD"       ? k::nfd
                                                 : type == "Lowercase" ? k::lowercase
                                                                       : k::strip_accents);
  }
  if (type == "Strip") {
    only_keys(j, w, {"type", "strip_left", "strip_right"});
    auto n = std::make_unique<strip_normalizer>();
    n->left = get_bool(j, w, "strip_left", true);
    n->right = get_bool(j, w, "strip_right", true);
    return n;
  }
  if (type == "Prepend") {
    only_keys(j, w, {"type", "prepend"});
    auto n = std::make_unique<prepend_normalizer>();
    n->text = decode_utf8(get_string(j, w, "prepend"));
    return n;
  }
  if (type == "Replace") {
    only_keys(j, w, {"type", "pattern", "content"});
    const json& p = member(j, w, "pattern");
    if (!has(p, "String") || p.size() != 1)
      refuse(w.at("pattern"), "only a {\"String\": ...} pattern is supported, got ", excerpt(p));
    auto n = std::make_unique<replace_normalizer>();
    n->pattern = decode_utf8(get_string(p, w.at("pattern"), "String"));
    if (n->pattern.empty()) refuse(w.at("pattern"), "an empty pattern");
    n->content = decode_utf8(get_string(j, w, "content"));
    return n;
  }
  if (type == "Sequence") {
    only_keys(j, w, {"type", "normalizers"});
    auto n = std::make_unique<sequence_normalizer>();
    const json& list = get_array(j, w, "normalizers");
    for (std::size_t i = 0; i < list.size(); ++i)
      n->steps.push_back(make_normalizer(list[i], w.at("normalizers").at(i)));
    return n;
  }
  refuse(
      w.at("type"), "normalizer type \"", type,
      "\" is not supported (supported: BertNormalizer, NFC, NFD, Lowercase, StripAccents, Strip, "
      "Prepend, Replace with a String pattern, Sequence)");
}

// --- pre-tokenizers -----------------------------------------------------------------------

struct pre_tokenizer {
  virtual ~pre_tokenizer() = default;
  virtual void pre_tokenize(pieces& words) const = 0;
};

// Cuts every piece at `find` (a function piece -> span_piece list) per `behavior`.
template <class Find>
void split_each(pieces& words, Find&& find, split_behavior behavior) {
  pieces out;
  for (const auto& w : words) {
    for (auto& p : apply_split(w, find(w), behavior)) out.push_back(std::move(p));
  }
  words = std::move(out);
}

// Pieces at each character that satisfies pred.
template <class Pred>
std::vector<span_piece> char_matches(const std::u32string& s, Pred pred) {
  std::vector<span_piece> out;
  if (s.empty()) return {{0, 0, false}};
  std::size_t prev = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!pred(s[i])) continue;
    if (prev < i) out.push_back({prev, i, false});
    out.push_back({i, i + 1, true});
    prev = i + 1;
  }
  if (prev < s.size()) out.push_back({prev, s.size(), false});
  return out;
}

inline bool is_bert_punctuation(char32_t c) {
  const bool ascii = (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) ||
                     (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  return ascii || is_bert_punctuation_class(c);
}

struct bert_pre_tokenizer final : pre_tokenizer {
  void pre_tokenize(pieces& words) const override {
    split_each(
        words, [](const std::u32string& s) { return char_matches(s, is_white_space); },
        split_behavior::removed);
    split_each(
        words, [](const std::u32string& s) { return char_matches(s, is_bert_punctuation); },
        split_behavior::isolated);
  }
};

struct whitespace_split final : pre_tokenizer {
  void pre_tokenize(pieces& words) const override {
    split_each(
        words, [](const std::u32string& s) { return char_matches(s, is_white_space); },
        split_behavior::removed);
  }
};

// GPT-2's byte-to-character map: printable bytes stand for themselves, the rest for U+0100...
inline const std::vector<char32_t>& byte_chars() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[static_cast<std::size_t>(b)] = true;
    char32_t n = 0;
    for (std::size_t b = 0; b < 256; ++b) t[b] = direct[b] ? static_cast<char32_t>(b) : 256 + n++;
    return t;
  }();
  return table;
}

struct byte_level_pre_tokenizer final : pre_tokenizer {
  bool add_prefix_space = true, use_regex = true;
  void pre_tokenize(pieces& words) const override {
    static const split_regex gpt2 = *split_regex::of(gpt2_pattern);
    if (add_prefix_space) {
      for (auto& w : words)
        if (!w.empty() && w.front() != U' ') w.insert(w.begin(), U' ');
    }
    if (use_regex)
      split_each(
          words, [](const std::u32string& s) { return gpt2.find_matches(s); },
          split_behavior::isolated);
    const auto& table = byte_chars();
    for (auto& w : words) {
      std::u32string mapped;
      for (const unsigned char b : encode_utf8(w)) mapped.push_back(table[b]);
      w = std::move(mapped);
    }
  }
};

struct split_pre_tokenizer final : pre_tokenizer {
  std::optional<split_regex> regex;  // else the literal
  std::u32string literal;
  split_behavior behavior = split_behavior::isolated;
  bool invert = false;
  void pre_tokenize(pieces& words) const override {
    split_each(
        words,
        [this](const std::u32string& s) {
          auto m = regex ? regex->find_matches(s) : find_literal(s, literal);
          if (invert)
            for (auto& p : m) p.is_match = !p.is_match;
          return m;
        },
        behavior);
  }
};

struct sequence_pre_tokenizer final : pre_tokenizer {
  std::vector<std::unique_ptr<pre_tokenizer>> steps;
  void pre_tokenize(pieces& words) const override {
    for (const auto& p : steps) p->pre_tokenize(words);
  }
};

inline split_behavior behavior_of(const json& j, const where& w) {
  const std::string b = get_string(j, w, "behavior");
  if (b == "Removed") return split_behavior::removed;
  if (b == "Isolated") return split_behavior::isolated;
  if (b == "MergedWithPrevious") return split_behavior::merged_with_previous;
  if (b == "MergedWithNext") return split_behavior::merged_with_next;
  if (b == "Contiguous") return split_behavior::contiguous;
  refuse(w.at("behavior"), "unknown split behavior \"", b, "\"");
}

inline std::unique_ptr<pre_tokenizer> make_pre_tokenizer(const json& j, const where& w) {
  const std::string type = type_of(j, w);
  if (type == "BertPreTokenizer" || type == "WhitespaceSplit") {
    only_keys(j, w, {"type"});
    if (type == "BertPreTokenizer") return std::make_unique<bert_pre_tokenizer>();
    return std::make_unique<whitespace_split>();
  }
  if (type == "ByteLevel") {
    only_keys(j, w, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
    auto p = std::make_unique<byte_level_pre_tokenizer>();
    p->add_prefix_space = get_bool(j, w, "add_prefix_space", true);
    p->use_regex = get_bool(j, w, "use_regex", true);
    (void)get_bool(j, w, "trim_offsets", true);  // offsets only
    return p;
  }
  if (type == "Split") {
    only_keys(j, w, {"type", "pattern", "behavior", "invert"});
    auto p = std::make_unique<split_pre_tokenizer>();
    const json& pat = member(j, w, "pattern");
    const where wp = w.at("pattern");
    if (has(pat, "Regex") && pat.size() == 1) {
      const std::string re = get_string(pat, wp, "Regex");
      p->regex = split_regex::of(re);
      if (!p->regex)
        refuse(wp.at("Regex"), "the split regex \"", rolora::detail::json_io::bounded_text(re, 200),
               "\" is not one of the known patterns (GPT-2, Llama-3, Qwen2; "
               "rolora/tokenizers/split_patterns.hpp)");
    } else if (has(pat, "String") && pat.size() == 1) {
      p->literal = decode_utf8(get_string(pat, wp, "String"));
      if (p->literal.empty()) refuse(wp.at("String"), "an empty split string");
    } else {
      refuse(wp, "expected {\"Regex\": ...} or {\"String\": ...}, got ", excerpt(pat));
    }
    p->behavior = behavior_of(j, w);
    p->invert = get_bool(j, w, "invert", false);
    return p;
  }
  if (type == "Sequence") {
    only_keys(j, w, {"type", "pretokenizers"});
    auto p = std::make_unique<sequence_pre_tokenizer>();
    const json& list = get_array(j, w, "pretokenizers");
    for (std::size_t i = 0; i < list.size(); ++i)
      p->steps.push_back(make_pre_tokenizer(list[i], w.at("pretokenizers").at(i)));
    return p;
  }
  refuse(w.at("type"), "pre-tokenizer type \"", type,
         "\" is not supported (supported: BertPreTokenizer, ByteLevel, Split with a known pattern, "
         "WhitespaceSplit, Sequence)");
}

// --- models -------------------------------------------------------------------------------

struct vocabulary {
  std::unordered_map<std::string, std::int32_t> ids;
  std::vector<std::string> tokens;  // by id ("" where no token has the id)

  std::optional<std::int32_t> find(std::string_view token) const {
    const auto it = ids.find(std::string(token));
    if (it == ids.end()) return std::nullopt;
    return it->second;
  }
  std::int32_t need(const std::string& token, const where& w, const char* what) const {
    const auto id = find(token);
    if (!id)
      refuse(w, what, " \"", rolora::detail::json_io::bounded_text(token),
             "\" is not in the vocabulary");
    return *id;
  }
};

inline vocabulary read_vocab(const json& model, const where& w) {
  const json& v = member(model, w, "vocab");
  if (!v.is_object()) refuse(w.at("vocab"), "expected an object token -> id, got ", excerpt(v));
  vocabulary out;
  out.ids.reserve(v.size());
  for (const auto& [token, id_json] : v.items()) {
    const std::int32_t id = get_id(id_json, w.at("vocab").at(token));
    const auto at = static_cast<std::size_t>(id);
    if (at > 4 * v.size() + 1024)
      refuse(w.at("vocab").at(token), "id ", id, " is far beyond the vocabulary's ", v.size(),
             " tokens");
    if (out.tokens.size() <= at) out.tokens.resize(at + 1);
    if (!out.tokens[at].empty())
      refuse(w.at("vocab").at(token), "id ", id, " is also the id of \"",
             rolora::detail::json_io::bounded_text(out.tokens[at]), "\"");
    out.tokens[at] = token;
    out.ids.emplace(token, id);
  }
  return out;
}

struct model {
  vocabulary vocab;
  std::optional<std::string> unk_token;
  virtual ~model() = default;
  virtual void tokenize(const std::string& word, std::vector<std::int32_t>& out) const = 0;
};

struct wordpiece_model final : model {
  std::string prefix = "##";
  std::size_t max_chars = 100;
  std::int32_t unk_id = 0;

  void tokenize(const std::string& word, std::vector<std::int32_t>& out) const override {
    const std::u32string chars = decode_utf8(word);
    if (chars.size() > max_chars) {
      out.push_back(unk_id);
      return;
    }
    // Byte offsets of the character boundaries.
    std::vector<std::size_t> at(chars.size() + 1, 0);
    for (std::size_t i = 0; i < chars.size(); ++i) {
      std::string one;
      append_utf8(one, chars[i]);
      at[i + 1] = at[i] + one.size();
    }
    std::vector<std::int32_t> sub;
    std::size_t start = 0;
    while (start < chars.size()) {
      std::size_t end = chars.size();
      std::optional<std::int32_t> found;
      while (start < end) {
        std::string piece = word.substr(at[start], at[end] - at[start]);
        if (start > 0) piece.insert(0, prefix);
        if ((found = vocab.find(piece))) break;
        --end;
      }
      if (!found) {  // one piece not in the vocabulary: the whole word is unknown
        out.push_back(unk_id);
        return;
      }
      sub.push_back(*found);
      start = end;
    }
    out.insert(out.end(), sub.begin(), sub.end());
  }
};

struct bpe_model final : model {
  std::unordered_map<std::uint64_t, std::pair<std::uint32_t, std::int32_t>>
      merges;  // pair -> (rank, new id)
  std::optional<std::string> prefix, suffix;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  void tokenize(const std::string& word, std::vector<std::int32_t>& out) const override {
    if (word.empty()) return;
    if (ignore_merges) {
      if (const auto id = vocab.find(word)) {
        out.push_back(*id);
        return;
      }
    }
    // The symbols of the word (the reference's Word): id, links, whether merged away.
    struct symbol {
      std::int32_t id;
      std::ptrdiff_t prev, next;
      bool gone;
    };
    std::vector<symbol> syms;
    const auto add = [&](std::int32_t id) {
      const auto n = static_cast<std::ptrdiff_t>(syms.size());
      if (n > 0) syms.back().next = n;
      syms.push_back({id, n - 1, -1, false});
    };
    const std::u32string chars = decode_utf8(word);
    std::int32_t pending_unk = -1;  // an unknown character's id, not added yet (fuse_unk)
    for (std::size_t i = 0; i < chars.size(); ++i) {
      std::string s;
      append_utf8(s, chars[i]);
      if (i > 0 && prefix) s.insert(0, *prefix);
      if (i + 1 == chars.size() && suffix) s += *suffix;
      if (const auto id = vocab.find(s)) {
        if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
        add(*id);
        continue;
      }
      if (byte_fallback) {
        std::vector<std::int32_t> bytes;
        for (const unsigned char b : s) {
          static const char* hex = "0123456789ABCDEF";
          const std::string code = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
          if (const auto id = vocab.find(code))
            bytes.push_back(*id);
          else
            break;
        }
        if (bytes.size() == s.size()) {
          for (const auto id : bytes) add(id);
          continue;
        }
      }
      if (unk_token) {
        const std::int32_t unk = *vocab.find(*unk_token);  // checked at load
        if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
        pending_unk = unk;
      }
    }
    if (pending_unk >= 0) add(pending_unk);

    // Merge the lowest-ranked pair first, the leftmost among equals (the reference's merge_all).
    struct candidate {
      std::uint32_t rank;
      std::size_t pos;
      std::int32_t new_id;
      bool operator>(const candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<candidate, std::vector<candidate>, std::greater<>> queue;
    const auto push = [&](std::size_t pos) {
      if (syms[pos].next < 0) return;
      const auto it =
          merges.find(key(syms[pos].id, syms[static_cast<std::size_t>(syms[pos].next)].id));
      if (it != merges.end()) queue.push({it->second.first, pos, it->second.second});
    };
    for (std::size_t i = 0; i + 1 < syms.size(); ++i) push(i);
    while (!queue.empty()) {
      const candidate top = queue.top();
      queue.pop();
      symbol& left = syms[top.pos];
      if (left.gone || left.next < 0) continue;
      const auto right_pos = static_cast<std::size_t>(left.next);
      const auto it = merges.find(key(left.id, syms[right_pos].id));
      if (it == merges.end() || it->second.second != top.new_id) continue;  // expired
      left.id = top.new_id;
      syms[right_pos].gone = true;
      left.next = syms[right_pos].next;
      if (left.next >= 0)
        syms[static_cast<std::size_t>(left.next)].prev = static_cast<std::ptrdiff_t>(top.pos);
      if (left.prev >= 0) push(static_cast<std::size_t>(left.prev));
      push(top.pos);
    }
    for (const auto& s : syms)
      if (!s.gone) out.push_back(s.id);
  }
};

inline std::unique_ptr<model> make_model(const json& j, const where& w) {
  const std::string type = type_of(j, w);
  if (type == "WordPiece") {
    only_keys(
        j, w,
        {"type", "unk_token", "continuing_subword_prefix", "max_input_chars_per_word", "vocab"});
    auto m = std::make_unique<wordpiece_model>();
    m->vocab = read_vocab(j, w);
    m->unk_token = get_string(j, w, "unk_token");
    m->unk_id = m->vocab.need(*m->unk_token, w.at("unk_token"), "the unknown token");
    m->prefix = get_string(j, w, "continuing_subword_prefix");
    const json& mx = member(j, w, "max_input_chars_per_word");
    if (!mx.is_number_unsigned())
      refuse(w.at("max_input_chars_per_word"), "expected a count, got ", excerpt(mx));
    m->max_chars = mx.get<std::size_t>();
    return m;
  }
  if (type == "BPE") {
    only_keys(j, w,
              {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
               "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"});
    auto m = std::make_unique<bpe_model>();
    if (has(j, "dropout") && !j.at("dropout").is_null() &&
        !(j.at("dropout").is_number() && j.at("dropout").get<double>() == 0.0))
      refuse(w.at("dropout"), "BPE dropout ", excerpt(j.at("dropout")),
             " is random; only null is supported");
    m->vocab = read_vocab(j, w);
    m->unk_token = get_optional_string(j, w, "unk_token");
    if (m->unk_token) (void)m->vocab.need(*m->unk_token, w.at("unk_token"), "the unknown token");
    m->prefix = get_optional_string(j, w, "continuing_subword_prefix");
    m->suffix = get_optional_string(j, w, "end_of_word_suffix");
    m->fuse_unk = get_bool(j, w, "fuse_unk", false);
    m->byte_fallback = get_bool(j, w, "byte_fallback", false);
    m->ignore_merges = get_bool(j, w, "ignore_merges", false);
    const json& list = get_array(j, w, "merges");
    const std::size_t prefix_len = m->prefix ? m->prefix->size() : 0;
    m->merges.reserve(list.size());
    std::uint32_t rank = 0;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const where wi = w.at("merges").at(i);
      std::string a, b;
      if (list[i].is_string()) {  // "a b"
        const std::string line = list[i].get<std::string>();
        if (line.starts_with("#version")) continue;
        const auto sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
          refuse(wi, "a merge is two tokens separated by one space, got \"",
                 rolora::detail::json_io::bounded_text(line), "\"");
        a = line.substr(0, sp), b = line.substr(sp + 1);
      } else if (list[i].is_array() && list[i].size() == 2 && list[i][0].is_string() &&
                 list[i][1].is_string()) {
        a = list[i][0].get<std::string>(), b = list[i][1].get<std::string>();
      } else {
        refuse(wi, "expected \"a b\" or [\"a\", \"b\"], got ", excerpt(list[i]));
      }
      const std::int32_t ia = m->vocab.need(a, wi, "merge token");
      const std::int32_t ib = m->vocab.need(b, wi, "merge token");
      if (b.size() < prefix_len)
        refuse(wi, "merge token \"", b, "\" is shorter than the subword prefix");
      const std::int32_t merged = m->vocab.need(a + b.substr(prefix_len), wi, "merged token");
      m->merges[bpe_model::key(ia, ib)] = {rank++, merged};  // a repeated pair: the last one counts
    }
    return m;
  }
  refuse(w.at("type"), "model type \"", type, "\" is not supported (supported: WordPiece, BPE)");
}

// --- post-processors ----------------------------------------------------------------------

// One element of a template: a sequence (0: $A, 1: $B) or special token ids.
struct template_piece {
  int sequence = -1;
  std::vector<std::int32_t> ids;
};

struct post_processor {
  std::vector<template_piece> single, pair;
  bool adds_tokens = false;
};

inline std::vector<template_piece> bert_like(std::int32_t cls, std::int32_t sep, bool pair,
                                             bool roberta) {
  std::vector<template_piece> t{{-1, {cls}}, {0, {}}, {-1, {sep}}};
  if (pair) {
    if (roberta) t.push_back({-1, {sep}});
    t.push_back({1, {}});
    t.push_back({-1, {sep}});
  }
  return t;
}

inline std::vector<template_piece> read_template(const json& list, const json& specials,
                                                 const where& w, bool pair) {
  if (!list.is_array()) refuse(w, "expected an array, got ", excerpt(list));
  std::vector<template_piece> out;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const where wi = w.at(i);
    const json& item = list[i];
    if (has(item, "Sequence") && item.size() == 1) {
      const std::string id = get_string(item.at("Sequence"), wi.at("Sequence"), "id");
      if (id != "A" && (id != "B" || !pair))
        refuse(wi.at("Sequence").at("id"), "unexpected sequence \"", id, "\"");
      out.push_back({id == "A" ? 0 : 1, {}});
    } else if (has(item, "SpecialToken") && item.size() == 1) {
      const std::string name = get_string(item.at("SpecialToken"), wi.at("SpecialToken"), "id");
      if (!specials.is_object() || !specials.contains(name))
        refuse(wi.at("SpecialToken"), "special token \"", name, "\" is not in special_tokens");
      const where ws{w.file, "post_processor.special_tokens." + name};
      const json& ids = get_array(specials.at(name), ws, "ids");
      template_piece p;
      for (std::size_t k = 0; k < ids.size(); ++k)
        p.ids.push_back(get_id(ids[k], ws.at("ids").at(k)));
      out.push_back(std::move(p));
    } else {
      refuse(wi, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}, got ", excerpt(item));
    }
  }
  return out;
}

inline std::pair<std::string, std::int32_t> token_and_id(const json& j, const where& w,
                                                         const char* key) {
  const json& v = member(j, w, key);
  if (!v.is_array() || v.size() != 2 || !v[0].is_string())
    refuse(w.at(key), "expected [\"token\", id], got ", excerpt(v));
  return {v[0].get<std::string>(), get_id(v[1], w.at(key))};
}

// cls/sep come back through the out-parameters for special_ids.
inline void read_post_processor(const json& j, const where& w, post_processor& out,
                                special_ids& ids) {
  const std::string type = type_of(j, w);
  const auto set = [&](std::vector<template_piece> single, std::vector<template_piece> pair) {
    if (out.adds_tokens)
      refuse(w, "a second post-processor that adds tokens; only one is supported in a Sequence");
    out.single = std::move(single), out.pair = std::move(pair), out.adds_tokens = true;
  };
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const bool roberta = type == "RobertaProcessing";
    if (roberta)
      only_keys(j, w, {"type", "sep", "cls", "trim_offsets", "add_prefix_space"});
    else
      only_keys(j, w, {"type", "sep", "cls"});
    const auto sep = token_and_id(j, w, "sep").second;
    const auto cls = token_and_id(j, w, "cls").second;
    set(bert_like(cls, sep, false, roberta), bert_like(cls, sep, true, roberta));
    ids.cls = cls, ids.sep = sep;
    return;
  }
  if (type == "TemplateProcessing") {
    only_keys(j, w, {"type", "single", "pair", "special_tokens"});
    const json& specials = member(j, w, "special_tokens");
    auto single = read_template(member(j, w, "single"), specials, w.at("single"), false);
    auto pair = read_template(member(j, w, "pair"), specials, w.at("pair"), true);
    // cls/sep: the special tokens (of one id) just before and after $A in the single template.
    for (std::size_t i = 0; i < single.size(); ++i) {
      if (single[i].sequence != 0) continue;
      if (i > 0 && single[i - 1].ids.size() == 1) ids.cls = single[i - 1].ids[0];
      if (i + 1 < single.size() && single[i + 1].ids.size() == 1) ids.sep = single[i + 1].ids[0];
    }
    set(std::move(single), std::move(pair));
    return;
  }
  if (type == "ByteLevel") {  // trims offsets: nothing for the ids
    only_keys(j, w, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
    return;
  }
  if (type == "Sequence") {
    only_keys(j, w, {"type", "processors"});
    const json& list = get_array(j, w, "processors");
    for (std::size_t i = 0; i < list.size(); ++i)
      read_post_processor(list[i], w.at("processors").at(i), out, ids);
    return;
  }
  refuse(w.at("type"), "post-processor type \"", type,
         "\" is not supported (supported: BertProcessing, RobertaProcessing, TemplateProcessing, "
         "ByteLevel, "
         "Sequence)");
}

// --- added tokens -------------------------------------------------------------------------

struct added_token {
  std::string content;  // as matched: normalized when `normalized`
  std::int32_t id = 0;
  bool special = false, normalized = false, lstrip = false, rstrip = false;
};

// A piece of text: either an added token's id or text for the rest of the pipeline.
struct segment {
  std::optional<std::int32_t> id;
  std::string text;
};

// Cuts the added tokens of `set` out of `text`: leftmost match first, the longest there (the
// reference's Aho-Corasick LeftmostLongest), with lstrip/rstrip taking the spaces beside it.
inline std::vector<segment> cut_added(const std::string& text,
                                      const std::vector<const added_token*>& set) {
  std::vector<segment> out;
  std::size_t prev = 0, i = 0;
  const auto ws_before = [&](std::size_t end) {  // start of the white space that ends at `end`
    std::size_t b = end;
    while (b > 0) {
      std::size_t k = b - 1;
      while (k > 0 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
      if (!is_white_space(decode_utf8(std::string_view(text).substr(k, b - k))[0])) break;
      b = k;
    }
    return b;
  };
  const auto ws_after = [&](std::size_t start) {
    std::size_t e = start;
    while (e < text.size()) {
      std::size_t k = e + 1;
      while (k < text.size() && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) ++k;
      if (!is_white_space(decode_utf8(std::string_view(text).substr(e, k - e))[0])) break;
      e = k;
    }
    return e;
  };
  while (i < text.size()) {
    const added_token* best = nullptr;
    for (const auto* t : set) {
      if (t->content.empty() || (best && t->content.size() <= best->content.size())) continue;
      if (text.compare(i, t->content.size(), t->content) == 0) best = t;
    }
    if (!best) {
      ++i;
      continue;
    }
    std::size_t start = i, stop = i + best->content.size();
    if (best->lstrip) start = std::max(ws_before(start), prev);
    if (best->rstrip) stop = ws_after(stop);
    if (prev < start) out.push_back({std::nullopt, text.substr(prev, start - prev)});
    out.push_back({best->id, {}});
    prev = i = stop;
  }
  if (prev < text.size()) out.push_back({std::nullopt, text.substr(prev)});
  return out;
}

}  // namespace detail

// A tokenizer read from a Hugging Face tokenizer.json. Immutable once read; encode() is const
// and may be called from several threads at once.
class tokenizer {
 public:
  // Reads `path` (a tokenizer.json). Errors: "[rolora.io]" when it cannot be read,
  // "[rolora.tokenizer]" naming the file and field when its content is broken or unsupported.
  static tokenizer from_file(const std::filesystem::path& path) {
    const auto bytes = rolora::read_file_bytes(path, std::uint64_t{1} << 30);
    return from_json_text(std::string(bytes.begin(), bytes.end()), path.string());
  }

  // Reads dir/tokenizer.json, and the names of bos/eos/pad/unk from dir/tokenizer_config.json
  // when it is there. A directory with a SentencePiece tokenizer.model and no tokenizer.json
  // (Llama 2's era) is read through libsentencepiece (tokenizers/sentencepiece.hpp) where rolora
  // is built with it, and refused with that reason elsewhere.
  static tokenizer from_directory(const std::filesystem::path& dir) {
    if (!std::filesystem::exists(dir / "tokenizer.json") &&
        std::filesystem::exists(dir / "tokenizer.model"))
      return from_sentencepiece(dir);
    tokenizer t = from_file(dir / "tokenizer.json");
    const auto config = dir / "tokenizer_config.json";
    if (std::filesystem::exists(config)) t.read_config(config);
    return t;
  }

  // A tokenizer.json or a directory holding one.
  static tokenizer from_path(const std::filesystem::path& path) {
    return std::filesystem::is_directory(path) ? from_directory(path) : from_file(path);
  }

  // Parses the text of a tokenizer.json; `name` stands for the file in messages.
  static tokenizer from_json_text(std::string_view text, std::string name = "tokenizer.json") {
    using namespace detail;
    const auto fail = [&](rolora::detail::json_io::fault, const std::string& why) -> void {
      rolora::detail::fail<config_error>("tokenizer", name, ": ", why);
    };
    const json j = rolora::detail::json_io::parse_json<json>(
        std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()),
                                      text.size()),
        fail);
    tokenizer t;
    t.read(j, where{std::move(name), ""});
    return t;
  }

  // The ids of `text`, with the special tokens of the post-processor when add_special (as the
  // reference's encode(text, add_special_tokens=True)).
  std::vector<std::int32_t> encode(std::string_view text, bool add_special = true) const {
    return post_process(encode_sequence(text), nullptr, add_special);
  }
  // The ids of the pair (a, b) with the pair template's special tokens when add_special.
  std::vector<std::int32_t> encode_pair(std::string_view a, std::string_view b,
                                        bool add_special = true) const {
    const auto ia = encode_sequence(a), ib = encode_sequence(b);
    return post_process(ia, &ib, add_special);
  }

  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    for (const auto& t : added_)
      if (t.raw == token) return t.token.id;
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    if (sp_) return sp_->piece_to_id(token);
#endif
    return model_->vocab.find(token);
  }
  std::optional<std::string> id_to_token(std::int32_t id) const {
    for (const auto& t : added_)
      if (t.token.id == id) return t.raw;
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    if (sp_) return sp_->id_to_piece(id);
#endif
    if (id >= 0 && static_cast<std::size_t>(id) < model_->vocab.tokens.size() &&
        !model_->vocab.tokens[static_cast<std::size_t>(id)].empty())
      return model_->vocab.tokens[static_cast<std::size_t>(id)];
    return std::nullopt;
  }
  // One more than the largest id (model or added token): the rows an embedding table needs.
  std::size_t vocab_size() const {
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    std::size_t n = sp_ ? sp_->size() : model_->vocab.tokens.size();
#else
    std::size_t n = model_->vocab.tokens.size();
#endif
    for (const auto& t : added_) n = std::max(n, static_cast<std::size_t>(t.token.id) + 1);
    return n;
  }
  const special_ids& specials() const noexcept { return specials_; }
  bool is_special(std::int32_t id) const {
    for (const auto& t : added_)
      if (t.token.id == id) return t.token.special;
    return false;
  }

  // The text of `ids` through the file's decoder (ByteLevel or WordPiece); special added tokens
  // left out when skip_special. Another decoder is refused here (encode does not need one).
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = true) const {
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    if (sp_) {  // SentencePiece's own decoder; the special tokens as their text unless skipped
      std::string out;
      std::vector<std::int32_t> run;
      for (const auto id : ids) {
        if (!is_special(id)) {
          run.push_back(id);
          continue;
        }
        out += sp_->decode(run);
        run.clear();
        if (!skip_special) out += *id_to_token(id);
      }
      return out + sp_->decode(run);
    }
#endif
    std::vector<std::string> tokens;
    for (const auto id : ids) {
      if (skip_special && is_special(id)) continue;
      auto t = id_to_token(id);
      if (!t)
        rolora::detail::fail<value_error>("tokenizer", "decode: id ", id,
                                          " is not in the vocabulary");
      tokens.push_back(std::move(*t));
    }
    if (decoder_ == "ByteLevel") {
      std::u32string reverse(0x200, 0);  // char -> byte + 1
      const auto& table = detail::byte_chars();
      for (std::size_t b = 0; b < 256; ++b) reverse[table[b]] = static_cast<char32_t>(b + 1);
      std::string bytes;
      for (const auto& t : tokens) {
        for (const char32_t c : decode_utf8(t)) {
          if (c < reverse.size() && reverse[c] != 0)
            bytes.push_back(static_cast<char>(reverse[c] - 1));
          else
            append_utf8(bytes, c);  // an added token's own characters
        }
      }
      return bytes;
    }
    if (decoder_ == "WordPiece") {  // the reference's WordPiece decoder, with its cleanup
      std::string out;
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        std::string t = tokens[i];
        if (i > 0) {
          if (t.starts_with(wordpiece_prefix_))
            t.erase(0, wordpiece_prefix_.size());
          else
            t.insert(0, " ");
        }
        if (wordpiece_cleanup_) {
          for (const auto& [from, to] :
               std::initializer_list<std::pair<std::string_view, std::string_view>>{
                   {" .", "."},
                   {" ?", "?"},
                   {" !", "!"},
                   {" ,", ","},
                   {" ' ", "'"},
                   {" n't", "n't"},
                   {" 'm", "'m"},
                   {" do not", " don't"},
                   {" 's", "'s"},
                   {" 've", "'ve"},
                   {" 're", "'re"}}) {
            for (std::size_t at = t.find(from); at != std::string::npos;
                 at = t.find(from, at + to.size()))
              t.replace(at, from.size(), to);
          }
        }
        out += t;
      }
      return out;
    }
    rolora::detail::fail<config_error>("tokenizer", "decode: decoder \"", decoder_,
                                       "\" is not supported");
  }

 private:
  struct added_entry {
    detail::added_token token;
    std::string raw;  // the content as the file writes it
  };

  tokenizer() = default;

  static tokenizer from_sentencepiece(const std::filesystem::path& dir) {
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    using namespace detail;
    json c = json::object();
    const auto config = dir / "tokenizer_config.json";
    const where w{config.string(), ""};
    if (std::filesystem::exists(config)) {
      const auto bytes = rolora::read_file_bytes(config, std::uint64_t{64} << 20);
      const auto fail = [&](rolora::detail::json_io::fault, const std::string& why) -> void {
        rolora::detail::fail<config_error>("tokenizer", config.string(), ": ", why);
      };
      c = rolora::detail::json_io::parse_json<json>(bytes, fail);
      if (!c.is_object()) refuse(w, "expected an object");
    }
    const auto flag = [&](const char* key, bool otherwise) {
      if (!c.contains(key) || c.at(key).is_null()) return otherwise;
      if (!c.at(key).is_boolean())
        refuse(w.at(key), "expected true or false, got ", excerpt(c.at(key)));
      return c.at(key).get<bool>();
    };
    const auto name_of = [&](const char* key, const char* otherwise) -> std::optional<std::string> {
      if (!c.contains(key)) return otherwise ? std::optional<std::string>(otherwise) : std::nullopt;
      const json& v = c.at(key);
      if (v.is_null()) return std::nullopt;
      if (v.is_string()) return v.get<std::string>();
      if (v.is_object() && v.contains("content") && v.at("content").is_string())
        return v.at("content").get<std::string>();
      refuse(w.at(key), "expected a token or {\"content\": token}, got ", excerpt(v));
    };
    const auto unk = name_of("unk_token", "<unk>");
    tokenizer t;
    t.sp_ = std::make_shared<const sentencepiece_model>(
        dir / "tokenizer.model",
        sentencepiece_model::options{flag("legacy", true), flag("add_prefix_space", true),
                                     unk.value_or("<unk>")});
    t.sp_add_bos_ = flag("add_bos_token", true);
    t.sp_add_eos_ = flag("add_eos_token", false);
    // The special tokens LlamaTokenizer never splits: the named ones and added_tokens_decoder's.
    const auto add = [&](const std::string& content, std::int32_t id, bool lstrip, bool rstrip) {
      for (const auto& e : t.added_)
        if (e.raw == content) return;
      added_entry e;
      e.raw = content;
      e.token = {content, id, true, false, lstrip, rstrip};
      t.added_.push_back(std::move(e));
    };
    if (c.contains("added_tokens_decoder")) {
      const json& list = c.at("added_tokens_decoder");
      if (!list.is_object()) refuse(w.at("added_tokens_decoder"), "expected an object");
      for (const auto& [key, a] : list.items()) {
        const where wi = w.at("added_tokens_decoder").at(key);
        std::int32_t id = 0;
        try {
          id = std::int32_t(std::stol(key));
        } catch (const std::exception&) {
          refuse(wi, "expected an integer id as the key");
        }
        if (!a.is_object() || !a.contains("content") || !a.at("content").is_string())
          refuse(wi, "expected {\"content\": token, ...}");
        if (get_bool(a, wi, "single_word", false))
          refuse(wi.at("single_word"), "single_word = true is not supported");
        add(a.at("content").get<std::string>(), id, get_bool(a, wi, "lstrip", false),
            get_bool(a, wi, "rstrip", false));
      }
    }
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      const auto name = name_of(key, key == std::string("unk_token")   ? "<unk>"
                                     : key == std::string("bos_token") ? "<s>"
                                     : key == std::string("eos_token") ? "</s>"
                                                                       : nullptr);
      if (!name) continue;
      const auto id = t.token_to_id(*name);
      if (!id) refuse(w.at(key), "\"", *name, "\" is not a piece of tokenizer.model");
      add(*name, *id, false, false);
      auto& slot = key == std::string("bos_token")   ? t.specials_.bos
                   : key == std::string("eos_token") ? t.specials_.eos
                   : key == std::string("unk_token") ? t.specials_.unk
                                                     : t.specials_.pad;
      slot = id;
    }
    return t;
#else
    rolora::detail::fail<config_error>(
        "tokenizer", dir.string(),
        ": a SentencePiece tokenizer.model and no tokenizer.json, and this build has no "
        "SentencePiece (rolora::sentencepiece; Debian: libsentencepiece-dev)");
#endif
  }

  void read(const detail::json& j, const detail::where& w) {
    using namespace detail;
    only_keys(j, w,
              {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
               "model", "decoder", "post_processor"});
    if (has(j, "version") && (!j.at("version").is_string() || j.at("version") != "1.0"))
      refuse(w.at("version"), "expected \"1.0\", got ", excerpt(j.at("version")));
    if (has(j, "truncation") && !j.at("truncation").is_null())
      refuse(w.at("truncation"), "truncation is not supported (it must be null), got ",
             excerpt(j.at("truncation")));
    if (has(j, "padding") && !j.at("padding").is_null())
      read_padding(j.at("padding"), w.at("padding"));
    model_ = make_model(member(j, w, "model"), w.at("model"));
    if (model_->unk_token) specials_.unk = model_->vocab.find(*model_->unk_token);
    if (has(j, "normalizer") && !j.at("normalizer").is_null())
      normalizer_ = make_normalizer(j.at("normalizer"), w.at("normalizer"));
    if (has(j, "pre_tokenizer") && !j.at("pre_tokenizer").is_null())
      pre_tokenizer_ = make_pre_tokenizer(j.at("pre_tokenizer"), w.at("pre_tokenizer"));
    if (has(j, "post_processor") && !j.at("post_processor").is_null())
      read_post_processor(j.at("post_processor"), w.at("post_processor"), post_, specials_);
    specials_.bos = specials_.cls, specials_.eos = specials_.sep;
    if (has(j, "decoder") && j.at("decoder").is_object() && j.at("decoder").contains("type") &&
        j.at("decoder").at("type").is_string()) {
      decoder_ = j.at("decoder").at("type").get<std::string>();
      if (decoder_ == "WordPiece" && j.at("decoder").contains("cleanup") &&
          j.at("decoder").at("cleanup").is_boolean())
        wordpiece_cleanup_ = j.at("decoder").at("cleanup").get<bool>();
      if (decoder_ == "WordPiece" && j.at("decoder").contains("prefix") &&
          j.at("decoder").at("prefix").is_string())
        wordpiece_prefix_ = j.at("decoder").at("prefix").get<std::string>();
    }
    if (has(j, "added_tokens")) read_added(get_array(j, w, "added_tokens"), w.at("added_tokens"));
  }

  void read_padding(const detail::json& p, const detail::where& w) {
    using namespace detail;
    only_keys(
        p, w,
        {"strategy", "direction", "pad_to_multiple_of", "pad_id", "pad_type_id", "pad_token"});
    // BatchLongest pads a single encoding to its own length: nothing to do. Fixed would pad.
    if (!has(p, "strategy") || p.at("strategy") != "BatchLongest")
      refuse(w.at("strategy"), "only \"BatchLongest\" padding is supported, got ",
             has(p, "strategy") ? excerpt(p.at("strategy")) : std::string("nothing"));
    if (has(p, "pad_to_multiple_of") && !p.at("pad_to_multiple_of").is_null())
      refuse(w.at("pad_to_multiple_of"),
             "padding to a multiple is not supported (it must be null)");
    if (has(p, "pad_id")) specials_.pad = get_id(p.at("pad_id"), w.at("pad_id"));
  }

  // The reference gives each added token the model's id when the model has the token, else the
  // next id after the vocabulary and the added tokens so far; an id in the file that disagrees
  // is refused (the reference would only warn and use its own).
  void read_added(const detail::json& list, const detail::where& w) {
    using namespace detail;
    std::int64_t next = static_cast<std::int64_t>(model_->vocab.ids.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
      const where wi = w.at(i);
      const json& a = list[i];
      only_keys(a, wi,
                {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"});
      added_entry e;
      e.raw = get_string(a, wi, "content");
      e.token.special = get_bool(a, wi, "special", false);
      e.token.normalized = get_bool(a, wi, "normalized", !e.token.special);
      e.token.lstrip = get_bool(a, wi, "lstrip", false);
      e.token.rstrip = get_bool(a, wi, "rstrip", false);
      if (get_bool(a, wi, "single_word", false))
        refuse(wi.at("single_word"), "single_word = true is not supported");
      const std::int32_t file_id = get_id(member(a, wi, "id"), wi.at("id"));
      if (e.raw.empty()) refuse(wi.at("content"), "an empty added token");
      bool repeated = false;
      for (const auto& prev : added_) repeated = repeated || prev.raw == e.raw;
      if (repeated) refuse(wi.at("content"), "\"", e.raw, "\" is added twice");
      std::int64_t id = 0;
      if (const auto in_model = model_->vocab.find(e.raw)) {
        id = *in_model;
      } else {
        id = next++;
      }
      if (id != file_id)
        refuse(wi.at("id"), "\"", e.raw, "\" has id ", file_id, " in the file but would get id ",
               id, " (the model's id, or the next one after the vocabulary)");
      e.token.id = file_id;
      e.token.content = e.raw;
      if (e.token.normalized && normalizer_) {
        std::u32string s = decode_utf8(e.raw);
        normalizer_->normalize(s);
        e.token.content = encode_utf8(s);
      }
      added_.push_back(std::move(e));
    }
  }

  void read_config(const std::filesystem::path& path) {
    using namespace detail;
    const auto bytes = rolora::read_file_bytes(path, std::uint64_t{64} << 20);
    const where w{path.string(), ""};
    const auto fail = [&](rolora::detail::json_io::fault, const std::string& why) -> void {
      rolora::detail::fail<config_error>("tokenizer", path.string(), ": ", why);
    };
    const json c = rolora::detail::json_io::parse_json<json>(bytes, fail);
    if (!c.is_object()) refuse(w, "expected an object");
    const auto name_of = [&](const char* key) -> std::optional<std::int32_t> {
      if (!c.contains(key) || c.at(key).is_null()) return std::nullopt;
      const json& v = c.at(key);
      std::string name;
      if (v.is_string())
        name = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v.at("content").is_string())
        name = v.at("content").get<std::string>();
      else
        refuse(w.at(key), "expected a token or {\"content\": token}, got ", excerpt(v));
      const auto id = token_to_id(name);
      if (!id) refuse(w.at(key), "\"", name, "\" is not a token of the tokenizer");
      return id;
    };
    if (auto id = name_of("bos_token")) specials_.bos = id;
    if (auto id = name_of("eos_token")) specials_.eos = id;
    if (auto id = name_of("pad_token")) specials_.pad = id;
    if (auto id = name_of("unk_token")) specials_.unk = id;
  }

  std::vector<std::int32_t> encode_sequence(std::string_view text) const {
    using namespace detail;
    (void)decode_utf8(text);  // refuses invalid UTF-8 before anything is cut
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    if (sp_) {  // LlamaTokenizer.tokenize (tokenizers/sentencepiece.hpp)
      std::vector<const added_token*> set;
      for (const auto& e : added_) set.push_back(&e.token);
      std::vector<std::int32_t> ids;
      for (const auto& seg : cut_added(sp_->prepare(text), set)) {
        if (seg.id)
          ids.push_back(*seg.id);
        else
          sp_->encode_piece(seg.text, ids);
      }
      sp_->finish(ids, [&](std::int32_t id) { return is_special(id); });
      return ids;
    }
#endif
    std::vector<const added_token*> raw_set, normalized_set;
    for (const auto& e : added_)
      (e.token.normalized && normalizer_ ? normalized_set : raw_set).push_back(&e.token);
    std::vector<std::int32_t> ids;
    for (const auto& seg : cut_added(std::string(text), raw_set)) {
      if (seg.id) {
        ids.push_back(*seg.id);
        continue;
      }
      std::u32string s = decode_utf8(seg.text);
      if (normalizer_) normalizer_->normalize(s);
      for (const auto& sub : cut_added(encode_utf8(s), normalized_set)) {
        if (sub.id) {
          ids.push_back(*sub.id);
          continue;
        }
        pieces words{decode_utf8(sub.text)};
        if (words[0].empty()) continue;
        if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(words);
        for (const auto& word : words) model_->tokenize(encode_utf8(word), ids);
      }
    }
    return ids;
  }

  std::vector<std::int32_t> post_process(const std::vector<std::int32_t>& a,
                                         const std::vector<std::int32_t>* b,
                                         bool add_special) const {
    std::vector<std::int32_t> out;
#if defined(ROLORA_HAVE_SENTENCEPIECE)
    if (sp_) {  // LlamaTokenizer.build_inputs_with_special_tokens
      for (const auto* seq : {&a, b}) {
        if (!seq) continue;
        if (add_special && sp_add_bos_ && specials_.bos) out.push_back(*specials_.bos);
        out.insert(out.end(), seq->begin(), seq->end());
        if (add_special && sp_add_eos_ && specials_.eos) out.push_back(*specials_.eos);
      }
      return out;
    }
#endif
    if (!post_.adds_tokens || !add_special) {
      if (post_.adds_tokens) {  // the template's order of the sequences, without its tokens
        for (const auto& p : b ? post_.pair : post_.single) {
          if (p.sequence == 0) out.insert(out.end(), a.begin(), a.end());
          if (p.sequence == 1 && b) out.insert(out.end(), b->begin(), b->end());
        }
        return out;
      }
      out = a;
      if (b) out.insert(out.end(), b->begin(), b->end());
      return out;
    }
    for (const auto& p : b ? post_.pair : post_.single) {
      if (p.sequence == 0)
        out.insert(out.end(), a.begin(), a.end());
      else if (p.sequence == 1)
        out.insert(out.end(), b->begin(), b->end());
      else
        out.insert(out.end(), p.ids.begin(), p.ids.end());
    }
    return out;
  }

  std::shared_ptr<const detail::model> model_;
  std::shared_ptr<const detail::normalizer> normalizer_;
  std::shared_ptr<const detail::pre_tokenizer> pre_tokenizer_;
  detail::post_processor post_;
  std::vector<added_entry> added_;
  special_ids specials_;
  std::string decoder_;
  std::string wordpiece_prefix_ = "##";
  bool wordpiece_cleanup_ = true;
#if defined(ROLORA_HAVE_SENTENCEPIECE)
  std::shared_ptr<const detail::sentencepiece_model> sp_;  // tokenizer.model instead of model_
  bool sp_add_bos_ = true, sp_add_eos_ = false;
#endif
};

}  // namespace rolora::tokenizers
