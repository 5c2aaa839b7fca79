// Byte-level tokenizer: ids 0..255 are the bytes of the text, 256.. are special tokens. Needs
// no vocabulary file, and any charset goes through unchanged.
//
// Batches are sequence-major: n sequences of length L are one std::vector<std::int32_t> of
// n * L ids with token t of sequence s at [s * L + t] (row-major [n, L]; the layout of
// rolora::token_batch in nn/transformer.hpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <rolora/core/error.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::data {

struct byte_tokenizer {
  static constexpr std::int32_t pad = 256;   // fills a sequence to its fixed length
  static constexpr std::int32_t cls = 257;   // first token of every sequence (classification)
  static constexpr std::int32_t mask = 258;  // masked-byte LM: a hidden byte
  static constexpr std::int32_t vocab_size = 259;
  static constexpr std::int32_t num_bytes = 256;
};

// A fixed-length encoding: `ids` has exactly max_len entries; `length` counts the real ones
// (CLS and bytes), the rest are PAD.
struct encoded_text {
  std::vector<std::int32_t> ids;
  std::size_t length = 0;
};

// A batch of encoded texts, sequence-major: ids[s * seq_len + t], lengths[s].
struct encoded_batch {
  std::size_t seq_len = 0;
  std::vector<std::int32_t> ids;     // [n, seq_len]
  std::vector<std::size_t> lengths;  // [n]
  std::size_t size() const { return lengths.size(); }
};

namespace detail {
inline void check_max_len(std::size_t max_len, const char* who) {
  if (max_len < 1)
    rolora::detail::fail<config_error>("data.tokenizer", who,
                                       ": max_len must be >= 1 (room for CLS), got 0");
}
}  // namespace detail

// CLS, then the first max_len - 1 bytes of `text`, then PAD up to max_len; written to `out`
// (max_len entries). Returns the real length.
inline std::size_t encode_into(std::string_view text, std::span<std::int32_t> out) {
  detail::check_max_len(out.size(), "encode");
  out[0] = byte_tokenizer::cls;
  const std::size_t n = std::min(text.size(), out.size() - 1);
  for (std::size_t i = 0; i < n; ++i)
    out[i + 1] = static_cast<std::int32_t>(static_cast<unsigned char>(text[i]));
  for (std::size_t i = n + 1; i < out.size(); ++i) out[i] = byte_tokenizer::pad;
  return n + 1;
}

inline encoded_text encode(std::string_view text, std::size_t max_len) {
  detail::check_max_len(max_len, "encode");
  encoded_text e;
  e.ids.resize(max_len);
  e.length = encode_into(text, e.ids);
  return e;
}

// The texts `texts[indices[k]]`, k = 0.., encoded one per row.
inline encoded_batch encode_batch(const std::vector<std::string>& texts,
                                  std::span<const std::size_t> indices, std::size_t max_len) {
  detail::check_max_len(max_len, "encode_batch");
  encoded_batch b;
  b.seq_len = max_len;
  b.ids.resize(indices.size() * max_len);
  b.lengths.resize(indices.size());
  for (std::size_t k = 0; k < indices.size(); ++k) {
    if (indices[k] >= texts.size()) {
      rolora::detail::fail<value_error>("data.tokenizer", "encode_batch: index ", indices[k],
                                        " at position ", k, " is outside the ", texts.size(),
                                        " texts");
    }
    b.lengths[k] = encode_into(texts[indices[k]], std::span(b.ids).subspan(k * max_len, max_len));
  }
  return b;
}

// The bytes of `ids` (special tokens skipped). Throws value_error on an id outside the vocabulary.
inline std::string decode(std::span<const std::int32_t> ids) {
  std::string out;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int32_t id = ids[i];
    if (id < 0 || id >= byte_tokenizer::vocab_size) {
      rolora::detail::fail<value_error>("data.tokenizer", "decode: id ", id, " at position ", i,
                                        " is outside the vocabulary [0, ",
                                        byte_tokenizer::vocab_size, ")");
    }
    if (id < byte_tokenizer::num_bytes) out += static_cast<char>(static_cast<unsigned char>(id));
  }
  return out;
}

}  // namespace rolora::data
