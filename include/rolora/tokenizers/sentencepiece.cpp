// The calls into libsentencepiece of tokenizers/sentencepiece.hpp, compiled into each program
// that links rolora::sentencepiece (an INTERFACE source; see the header for why it is not inline).
#include <sentencepiece_processor.h>

#include <rolora/core/error.hpp>
#include <rolora/io/file.hpp>
#include <rolora/tokenizers/sentencepiece.hpp>

namespace rolora::tokenizers::detail {

struct sentencepiece_model::processor {
  sentencepiece::SentencePieceProcessor sp;
};

sentencepiece_model::sentencepiece_model(const std::filesystem::path& path, options o)
    : o_(std::move(o)) {
  const auto bytes = rolora::read_file_bytes(path, std::uint64_t{1} << 30);
  std::string proto(bytes.begin(), bytes.end());
  if (!o_.legacy) {
    // transformers' get_spm_processor merges NormalizerSpec{add_dummy_prefix: false} into the
    // model; the same on the wire: field 3 (normalizer_spec, length 2) holding field 3
    // (add_dummy_prefix) = 0, which the protobuf parser merges into the spec already there.
    proto += std::string("\x1a\x02\x18\x00", 4);
  }
  auto p = std::make_shared<processor>();
  const auto status = p->sp.LoadFromSerializedProto(proto);
  if (!status.ok()) {
    rolora::detail::fail<config_error>("tokenizer", path.string(),
                                       ": SentencePiece cannot load it: ", status.ToString());
  }
  sp_ = std::move(p);
  if (!o_.legacy) unk_length_ = raw(o_.unk_token).size();
}

std::vector<std::int32_t> sentencepiece_model::raw(std::string_view text) const {
  std::vector<int> out;
  const auto status = sp_->sp.Encode(text, &out);
  if (!status.ok()) {
    rolora::detail::fail<value_error>("tokenizer", "SentencePiece: ", status.ToString());
  }
  return {out.begin(), out.end()};
}

std::optional<std::int32_t> sentencepiece_model::piece_to_id(std::string_view piece) const {
  const int id = sp_->sp.PieceToId(piece);
  if (id == sp_->sp.unk_id() && sp_->sp.IdToPiece(id) != piece) return std::nullopt;
  return id;
}

std::optional<std::string> sentencepiece_model::id_to_piece(std::int32_t id) const {
  if (id < 0 || id >= sp_->sp.GetPieceSize()) return std::nullopt;
  return sp_->sp.IdToPiece(id);
}

std::size_t sentencepiece_model::size() const { return std::size_t(sp_->sp.GetPieceSize()); }

std::string sentencepiece_model::decode(const std::vector<std::int32_t>& ids) const {
  std::string out;
  const auto status = sp_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
  if (!status.ok()) {
    rolora::detail::fail<value_error>("tokenizer", "SentencePiece: ", status.ToString());
  }
  return out;
}

}  // namespace rolora::tokenizers::detail
