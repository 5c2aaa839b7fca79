// The pretraining side: a plain-text corpus (Debian's fortunes plus the set-aside e-mails) cut
// into fixed-length byte windows, and masked-byte LM batches drawn from them (BERT's recipe on
// bytes). Everything is a pure function of (seed, step, position): the same seed gives the same
// batches whatever the thread count or the way a step's batch is cut into micro-batches.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/data/email.hpp>
#include <rolora/data/spam_assassin.hpp>
#include <rolora/data/tokenizer.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::data {

// Where Debian's `fortunes` and `fortunes-min` packages put their text files.
inline const std::filesystem::path default_fortunes_dir = "/usr/share/games/fortunes";

// The fortunes of one strfile text file: entries separated by lines holding only "%", each
// trimmed; empty entries dropped.
inline std::vector<std::string> parse_fortunes(std::string_view file_text) {
  const std::string text = normalize_newlines(file_text);
  const std::string_view s = text;
  std::vector<std::string> out;
  std::string current;
  std::size_t pos = 0;
  auto flush = [&] {
    const std::string_view t = detail::trim(current);
    if (!t.empty()) out.emplace_back(t);
    current.clear();
  };
  while (pos < s.size()) {
    const std::string_view line = detail::next_line(s, pos);
    if (line == "%") {
      flush();
    } else {
      current += line;
      current += '\n';
    }
  }
  flush();
  return out;
}

// Every fortune under `dir` (not recursive): regular files only, skipping the strfile indexes
// (*.dat) and the *.u8 links; files in name order. Throws rolora::error when `dir` is missing.
inline std::vector<std::string> read_fortunes(
    const std::filesystem::path& dir = default_fortunes_dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) {
    rolora::detail::fail<error>(
        "data.fortunes", "expected the fortunes directory ", dir.string(),
        " (Debian packages fortunes and fortunes-min; scripts/setup.sh installs them)");
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto ext = entry.path().extension();
    if (entry.is_regular_file() && !entry.is_symlink() && ext != ".dat" && ext != ".u8")
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> out;
  for (const auto& f : files) {
    auto entries = parse_fortunes(read_file_bytes(f));
    out.insert(out.end(), std::make_move_iterator(entries.begin()),
               std::make_move_iterator(entries.end()));
  }
  return out;
}

// The pretraining documents: every fortune under `fortunes_dir`, then the e-mails `set_aside`
// (indices into `emails`, e.g. corpus_split::pretrain), in that order.
inline std::vector<std::string> pretraining_documents(
    const std::vector<email_record>& emails, const std::vector<std::size_t>& set_aside,
    const std::filesystem::path& fortunes_dir = default_fortunes_dir) {
  std::vector<std::string> docs = read_fortunes(fortunes_dir);
  for (const std::size_t i : set_aside) {
    if (i >= emails.size()) {
      rolora::detail::fail<value_error>("data.windows", "pretraining_documents: index ", i,
                                        " is outside the ", emails.size(), " e-mails");
    }
    docs.push_back(emails[i].text);
  }
  return docs;
}

// Fixed-length training windows, sequence-major: ids[w * seq_len + t]; each window is CLS then
// seq_len - 1 bytes of the corpus (no padding).
struct token_windows {
  std::size_t seq_len = 0;
  std::vector<std::int32_t> ids;  // [count, seq_len]
  std::size_t count() const { return seq_len ? ids.size() / seq_len : 0; }
  std::span<const std::int32_t> window(std::size_t w) const {
    return std::span(ids).subspan(w * seq_len, seq_len);
  }
};

// The documents joined by "\n" into one byte stream, cut into consecutive non-overlapping
// pieces of seq_len - 1 bytes; the last, shorter piece is dropped. Windows cross document
// borders, as in BERT's and GPT's packing: the "\n" marks the border.
inline token_windows make_windows(const std::vector<std::string>& documents, std::size_t seq_len) {
  if (seq_len < 2) {
    rolora::detail::fail<config_error>(
        "data.windows", "make_windows: seq_len must be >= 2 (CLS and one byte), got ", seq_len);
  }
  std::string stream;
  for (const auto& d : documents) {
    if (!stream.empty()) stream += '\n';
    stream += d;
  }
  const std::size_t piece = seq_len - 1, count = stream.size() / piece;
  token_windows w;
  w.seq_len = seq_len;
  w.ids.resize(count * seq_len);
  for (std::size_t k = 0; k < count; ++k) {
    encode_into(std::string_view(stream).substr(k * piece, piece),
                std::span(w.ids).subspan(k * seq_len, seq_len));
  }
  return w;
}

// BERT's masking: each candidate position (not PAD, not CLS) is chosen with probability `rate`;
// a chosen one becomes MASK with probability mask_fraction, a uniform random byte with
// probability random_fraction, and stays as it is otherwise.
struct masking_config {
  double rate = 0.15;
  double mask_fraction = 0.8;
  double random_fraction = 0.1;
};

// Masked inputs and targets, both sequence-major [n, seq_len]: targets[i] is the original id at
// a chosen position and -1 elsewhere.
struct mlm_example_batch {
  std::size_t seq_len = 0;
  std::vector<std::int32_t> inputs;
  std::vector<std::int32_t> targets;
};

// The batching sub-streams used here (b values); batch_sampler uses b = client id, far below.
inline constexpr std::uint32_t masking_substream = 0xFFFFFFu;
inline constexpr std::uint32_t window_choice_substream = 0xFFFFFEu;

// Masks `ids` ([n, seq_len], sequence-major). The draws of sequence s, position t are those of
// (seed, step, first_sequence + s, t): a step's batch cut into micro-batches (first_sequence =
// the micro-batch's offset in the step's batch) is masked exactly as the whole batch would be.
// step must be below 2^32 and (first_sequence + n) * seq_len below 2^64.
inline mlm_example_batch mask_tokens(std::span<const std::int32_t> ids, std::size_t seq_len,
                                     std::uint64_t seed, std::uint64_t step,
                                     std::size_t first_sequence = 0, masking_config m = {}) {
  if (seq_len == 0 || ids.size() % seq_len != 0) {
    rolora::detail::fail<shape_error>(
        "data.mask", "mask_tokens: ids must hold n * seq_len ids with seq_len >= 1, got ",
        ids.size(), " ids and seq_len = ", seq_len);
  }
  const bool ok = m.rate >= 0.0 && m.rate <= 1.0 && m.mask_fraction >= 0.0 &&
                  m.random_fraction >= 0.0 && m.mask_fraction + m.random_fraction <= 1.0;
  if (!ok) {
    rolora::detail::fail<config_error>("data.mask",
                                       "mask_tokens: need 0 <= rate <= 1 and mask_fraction, "
                                       "random_fraction >= 0 with sum <= 1, got rate = ",
                                       m.rate, ", mask_fraction = ", m.mask_fraction,
                                       ", random_fraction = ", m.random_fraction);
  }
  if (step >= (std::uint64_t{1} << 32)) {
    rolora::detail::fail<config_error>("data.mask", "mask_tokens: step must be below 2^32, got ",
                                       step);
  }
  const random_stream rs(seed, stream::batching, static_cast<std::uint32_t>(step),
                         masking_substream);
  mlm_example_batch b;
  b.seq_len = seq_len;
  b.inputs.assign(ids.begin(), ids.end());
  b.targets.assign(ids.size(), -1);
  // Thresholds on 32 uniform bits for the 80/10/10 choice (exact to 2^-32).
  const auto to_bits = [](double p) { return static_cast<std::uint64_t>(p * 4294967296.0); };
  const std::uint64_t mask_below = to_bits(m.mask_fraction),
                      random_below = to_bits(m.mask_fraction + m.random_fraction);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int32_t id = ids[i];
    if (id == byte_tokenizer::pad || id == byte_tokenizer::cls) continue;
    const std::uint64_t draw = static_cast<std::uint64_t>(first_sequence) * seq_len + i;
    if (!(rs.uniform(draw) < m.rate)) continue;  // words 0-1 of the draw
    const auto w = rs.bits(draw);                // words 2-3: what happens to it
    b.targets[i] = id;
    if (w[2] < mask_below) {
      b.inputs[i] = byte_tokenizer::mask;
    } else if (w[2] < random_below) {
      b.inputs[i] = static_cast<std::int32_t>(w[3] & 0xFFu);
    }
  }
  return b;
}

// Sequences first_sequence .. first_sequence + count - 1 of step `step`'s pretraining batch:
// windows drawn uniformly with replacement, from (seed, step, sequence index), then masked.
inline mlm_example_batch pretraining_batch(const token_windows& windows, std::uint64_t seed,
                                           std::uint64_t step, std::size_t first_sequence,
                                           std::size_t count, masking_config m = {}) {
  if (windows.count() == 0)
    rolora::detail::fail<value_error>("data.windows", "pretraining_batch: no windows to draw from");
  if (step >= (std::uint64_t{1} << 32)) {
    rolora::detail::fail<config_error>("data.windows",
                                       "pretraining_batch: step must be below 2^32, got ", step);
  }
  const random_stream pick(seed, stream::batching, static_cast<std::uint32_t>(step),
                           window_choice_substream);
  std::vector<std::int32_t> ids(count * windows.seq_len);
  for (std::size_t k = 0; k < count; ++k) {
    const auto w = windows.window(pick.below(first_sequence + k, windows.count()));
    std::copy(w.begin(), w.end(), ids.begin() + std::ptrdiff_t(k * windows.seq_len));
  }
  return mask_tokens(ids, windows.seq_len, seed, step, first_sequence, m);
}

}  // namespace rolora::data
