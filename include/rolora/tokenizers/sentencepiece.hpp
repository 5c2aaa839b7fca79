// A SentencePiece `tokenizer.model` (Llama 2 and the models of its time that ship no
// tokenizer.json) through libsentencepiece (Debian: libsentencepiece-dev; the CMake target
// rolora::sentencepiece defines ROLORA_HAVE_SENTENCEPIECE). tokenizer::from_directory reads one
// when the directory has no tokenizer.json; this header is the model it holds then.
//
// What transformers' LlamaTokenizer (the slow tokenizer, the reference for such a directory)
// does, and so what this does: the text is cut at the special tokens (those tokenizer_config.json
// names as bos/eos/unk/pad and its added_tokens_decoder), which become their ids; every piece in
// between is encoded by SentencePiece itself. With "legacy": true (transformers' default when
// the file does not say) each piece gets SentencePiece's dummy prefix ("▁") as the model's
// normalizer spec says; with "legacy": false only the text's start does (add_dummy_prefix off,
// a piece after a special token is encoded as it is). add_bos_token (default true) and
// add_eos_token (default false) say what encode(text) adds.
//
// The calls into libsentencepiece are in sentencepiece.cpp, which rolora::sentencepiece compiles
// into each program that links it (an INTERFACE source): libsentencepiece's header declares its
// own absl::string_view, which clashes with Abseil's (gRPC's) in one translation unit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rolora::tokenizers::detail {

class sentencepiece_model {
 public:
  struct options {
    bool legacy = true;            // tokenizer_config.json's "legacy" (transformers' default)
    bool add_prefix_space = true;  // its "add_prefix_space" (legacy false only)
    std::string unk_token = "<unk>";
  };

  // Reads `path`; a file SentencePiece cannot load is a config_error naming it.
  sentencepiece_model(const std::filesystem::path& path, options o);

  // The text as LlamaTokenizer.tokenize hands it on before the special tokens are cut out: with
  // legacy false, "▁" read as a space and one "▁" before it all.
  std::string prepare(std::string_view text) const {
    std::string t(text);
    if (o_.legacy || t.empty()) return t;
    for (std::size_t at = t.find(underline); at != std::string::npos; at = t.find(underline, at))
      t.replace(at, underline.size(), " ");
    return o_.add_prefix_space ? std::string(underline) + t : t;
  }
  // A piece between special tokens (LlamaTokenizer._tokenize): SentencePiece's ids; with legacy
  // false a piece that starts with a space is encoded after the unk token, whose ids are then
  // dropped, so that the space survives the model's normalizer.
  void encode_piece(std::string_view piece, std::vector<std::int32_t>& ids) const {
    if (o_.legacy || !(piece.starts_with(underline) || piece.starts_with(' '))) {
      const auto out = raw(piece);
      ids.insert(ids.end(), out.begin(), out.end());
      return;
    }
    const auto out = raw(o_.unk_token + std::string(piece));
    const std::size_t skip = out.size() >= unk_length_ ? unk_length_ : 0;
    ids.insert(ids.end(), out.begin() + std::ptrdiff_t(skip), out.end());
  }
  // The end of LlamaTokenizer.tokenize: with legacy false a lone "▁" before a special token at
  // the start is dropped.
  template <class IsSpecial>
  void finish(std::vector<std::int32_t>& ids, IsSpecial&& is_special) const {
    if (!o_.legacy && ids.size() > 1 && id_to_piece(ids[0]) == std::string(underline) &&
        is_special(ids[1]))
      ids.erase(ids.begin());
  }

  std::optional<std::int32_t> piece_to_id(std::string_view piece) const;
  std::optional<std::string> id_to_piece(std::int32_t id) const;
  std::size_t size() const;
  std::string decode(const std::vector<std::int32_t>& ids) const;

 private:
  static constexpr std::string_view underline = "\xe2\x96\x81";  // U+2581, SentencePiece's space
  struct processor;  // sentencepiece::SentencePieceProcessor (sentencepiece.cpp)

  std::vector<std::int32_t> raw(std::string_view text) const;

  std::shared_ptr<const processor> sp_;
  options o_;
  std::size_t unk_length_ = 0;
};

}  // namespace rolora::tokenizers::detail
