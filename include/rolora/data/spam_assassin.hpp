// The SpamAssassin public mail corpus as fetched by scripts/fetch_data.sh: 6046 raw messages in
// five groups, read into (group, 3-class label, text to classify). See docs/data.md.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <rolora/core/error.hpp>
#include <rolora/data/email.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::data {

// The three classes: easy ham (easy-ham-1/2), hard ham (hard-ham-1), spam (spam-1/2).
enum class email_class : int { easy_ham = 0, hard_ham = 1, spam = 2 };
inline constexpr int num_email_classes = 3;
inline constexpr std::array<std::string_view, 3> email_class_names = {"easy_ham", "hard_ham",
                                                                      "spam"};

struct spam_assassin_group {
  std::string_view name;
  email_class label;
  std::size_t count;  // messages in the published corpus
};
// In reading order.
inline constexpr std::array<spam_assassin_group, 5> spam_assassin_groups = {{
    {"easy-ham-1", email_class::easy_ham, 2500},
    {"easy-ham-2", email_class::easy_ham, 1400},
    {"hard-ham-1", email_class::hard_ham, 250},
    {"spam-1", email_class::spam, 500},
    {"spam-2", email_class::spam, 1396},
}};

struct email_record {
  std::string group;  // e.g. "easy-ham-2"
  std::string file;   // file name inside the group directory
  int label = 0;      // email_class as int
  std::string text;   // email_text(): Subject + body, no other header
};

// Where fetch_data.sh puts the messages under its cache directory.
inline std::filesystem::path spam_assassin_dir(const std::filesystem::path& cache) {
  return cache / "spam-assassin" / "data";
}

// The whole bytes of a file; throws rolora::error when it cannot be read.
inline std::string read_file_bytes(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) rolora::detail::fail<error>("data.read", "cannot open ", file.string());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) rolora::detail::fail<error>("data.read", "error while reading ", file.string());
  return bytes;
}

// Reads every message under `dir` (the directory holding the group directories, see
// spam_assassin_dir): groups in the order of spam_assassin_groups, files sorted by name, only
// `*.txt` files (the package also ships a .json copy of each message). A missing group directory
// throws; the counts are not checked here (the fetch script does, and a test).
inline std::vector<email_record> read_spam_assassin(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::vector<email_record> out;
  for (const auto& g : spam_assassin_groups) {
    const fs::path gdir = dir / std::string(g.name);
    if (!fs::is_directory(gdir)) {
      rolora::detail::fail<error>("data.corpus", "expected the group directory ", gdir.string(),
                                  " of the SpamAssassin corpus; run scripts/fetch_data.sh");
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(gdir)) {
      if (entry.is_regular_file() && entry.path().extension() == ".txt")
        files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      out.push_back({std::string(g.name), f.filename().string(), static_cast<int>(g.label),
                     email_text(read_file_bytes(f))});
    }
  }
  return out;
}

// The labels of `records`, in order: the input of partition_dirichlet / partition_shards.
inline std::vector<int> labels_of(const std::vector<email_record>& records) {
  std::vector<int> labels;
  labels.reserve(records.size());
  for (const auto& r : records) labels.push_back(r.label);
  return labels;
}

// The texts of `records`, in order: the input of encode_batch.
inline std::vector<std::string> texts_of(const std::vector<email_record>& records) {
  std::vector<std::string> texts;
  texts.reserve(records.size());
  for (const auto& r : records) texts.push_back(r.text);
  return texts;
}

}  // namespace rolora::data
