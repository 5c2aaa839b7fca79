// A labelled corpus cut three ways, stratified by class and seeded: a test split no client ever
// trains on, a set-aside part for pretraining, and the fine-tuning pool that the partitioners of
// federated/partition.hpp share among clients.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/federated/partition.hpp>
#include <rolora/federated/sampling.hpp>
#include <vector>

namespace rolora::data {

struct split_fractions {
  double test = 0.20;      // of each class
  double pretrain = 0.15;  // of each class; the fine-tuning pool gets the rest
};

// Indices into the corpus, each sorted; disjoint, and together every index exactly once.
struct corpus_split {
  std::vector<std::size_t> test, pretrain, finetune;
};

// The data-split sub-stream of the corpus split (b = 0xDA7A00 + class), apart from the one the
// partitioners draw from (b = 0), so the same seed can drive both without correlation.
inline constexpr std::uint32_t corpus_split_substream = 0xDA7A00u;

// For each class c with n_c samples: a seeded shuffle, then round(test * n_c) to test,
// round(pretrain * n_c) to pretrain, the rest to fine-tuning. Depends only on (labels, seed,
// fractions).
inline corpus_split split_corpus(const std::vector<int>& labels, std::uint64_t seed,
                                 split_fractions f = {}) {
  const bool ok = f.test >= 0.0 && f.pretrain >= 0.0 && f.test + f.pretrain < 1.0;
  if (!ok) {
    rolora::detail::fail<config_error>(
        "data.split",
        "split_corpus: need test >= 0, pretrain >= 0 and test + pretrain < 1, got test = ", f.test,
        ", pretrain = ", f.pretrain);
  }
  std::map<int, std::vector<std::size_t>> by_class;
  for (std::size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(i);
  corpus_split s;
  std::uint32_t class_rank = 0;
  for (auto& [label, members] : by_class) {
    random_engine rng(
        random_stream(seed, stream::data_split, 0, corpus_split_substream + class_rank++));
    partial_shuffle(members, members.size(), rng);
    const double n = static_cast<double>(members.size());
    const auto n_test = static_cast<std::size_t>(std::llround(f.test * n));
    const auto n_pre =
        std::min(members.size() - n_test, static_cast<std::size_t>(std::llround(f.pretrain * n)));
    s.test.insert(s.test.end(), members.begin(), members.begin() + std::ptrdiff_t(n_test));
    s.pretrain.insert(s.pretrain.end(), members.begin() + std::ptrdiff_t(n_test),
                      members.begin() + std::ptrdiff_t(n_test + n_pre));
    s.finetune.insert(s.finetune.end(), members.begin() + std::ptrdiff_t(n_test + n_pre),
                      members.end());
  }
  std::sort(s.test.begin(), s.test.end());
  std::sort(s.pretrain.begin(), s.pretrain.end());
  std::sort(s.finetune.begin(), s.finetune.end());
  return s;
}

// values[indices[k]] for k = 0..: e.g. the labels of the fine-tuning pool, to hand to
// partition_dirichlet / partition_shards.
template <class T>
std::vector<T> gather(const std::vector<T>& values, const std::vector<std::size_t>& indices) {
  std::vector<T> out;
  out.reserve(indices.size());
  for (const std::size_t i : indices) {
    if (i >= values.size()) {
      rolora::detail::fail<value_error>("data.split", "gather: index ", i, " is outside the ",
                                        values.size(), " values");
    }
    out.push_back(values[i]);
  }
  return out;
}

// A partition of the pool (positions 0..pool.size()-1, as the partitioners return) turned into
// corpus indices: client c gets pool[p] for each p in parts[c].
inline partition to_corpus_indices(const partition& parts, const std::vector<std::size_t>& pool) {
  partition out(parts.size());
  for (std::size_t c = 0; c < parts.size(); ++c) out[c] = gather(pool, parts[c]);
  return out;
}

}  // namespace rolora::data
