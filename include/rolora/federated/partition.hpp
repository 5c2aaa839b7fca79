// Partitioners: how a data set's samples are split across clients. Each returns, for every
// client, the indices of its samples (sorted). Seeded from the data-split stream.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <numeric>
#include <queue>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/federated/sampling.hpp>
#include <utility>
#include <vector>

namespace rolora {

using partition = std::vector<std::vector<std::size_t>>;

// partition_like's sub-stream of the data-split stream (the partitioners above draw from 0).
inline constexpr std::uint32_t partition_like_substream = 0xDA7B00u;

namespace detail {
inline void check_clients(std::size_t num_samples, std::size_t num_clients, const char* who) {
  if (num_clients == 0) raise<config_error>(who, ": num_clients must be >= 1, got 0");
  if (num_samples < num_clients) {
    raise<config_error>(who, ": ", num_samples, " samples cannot give each of ", num_clients,
                        " clients at least one");
  }
}

// log of a Gamma(shape, 1) draw: Marsaglia and Tsang (2000), boosted for shape < 1 as
// Gamma(shape) = Gamma(shape + 1) * U^(1/shape). In logs because for tiny shapes (alpha = 1e-3)
// U^(1/shape) underflows to 0 and every proportion would be 0/0.
inline double log_gamma_draw(double shape, random_engine& rng) {
  if (shape < 1.0) {
    const double u = 1.0 - rng.uniform();  // (0, 1]
    return log_gamma_draw(shape + 1.0, rng) + std::log(u) / shape;
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    const double x = rng.normal();
    const double v1 = 1.0 + c * x;
    if (v1 <= 0.0) continue;
    const double v = v1 * v1 * v1;
    const double u = 1.0 - rng.uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return std::log(d * v);
  }
}

// Proportions p ~ Dirichlet(alpha, ..., alpha) over n parts, scaled so that max p = 1 (the cut
// below normalises by the sum; the largest term is 1, so the sum is never 0).
inline std::vector<double> dirichlet_weights(std::size_t n, double alpha, random_engine& rng) {
  std::vector<double> w(n);
  for (double& x : w) x = log_gamma_draw(alpha, rng);
  const double top = *std::max_element(w.begin(), w.end());
  for (double& x : w) x = std::exp(x - top);
  return w;
}

// Cuts `members` into consecutive runs of sizes proportional to `weights`, appended to `parts`.
inline void cut_by_weights(const std::vector<std::size_t>& members,
                           const std::vector<double>& weights,
                           const std::vector<std::size_t>& owners, partition& parts) {
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  double cumulative = 0.0;
  std::size_t lo = 0;
  for (std::size_t c = 0; c < owners.size(); ++c) {
    cumulative += weights[c] / total;
    const std::size_t hi =
        c + 1 == owners.size()
            ? members.size()
            : std::min(members.size(),
                       static_cast<std::size_t>(std::llround(cumulative * double(members.size()))));
    for (std::size_t k = lo; k < std::max(lo, hi); ++k) parts[owners[c]].push_back(members[k]);
    lo = std::max(lo, hi);
  }
}

// Tops every client up to `minimum` samples by moving samples from the currently largest client
// (lowest id on ties), its most recently dealt sample first. Deterministic, and it terminates after
// at most clients * minimum moves: with sum(sizes) >= clients * minimum, whenever some client is
// short the largest holds more than `minimum`, so a donor never drops below the minimum itself.
// Returns the number of samples moved.
inline std::size_t top_up(partition& parts, std::size_t minimum) {
  std::priority_queue<std::pair<std::size_t, std::size_t>>
      largest;  // (size, -id): top = largest, lowest id
  const std::size_t n = parts.size();
  for (std::size_t c = 0; c < n; ++c) largest.emplace(parts[c].size(), n - 1 - c);
  std::size_t moved = 0;
  for (std::size_t c = 0; c < n; ++c) {
    while (parts[c].size() < minimum) {
      auto [size, key] = largest.top();
      largest.pop();
      const std::size_t donor = n - 1 - key;
      if (size != parts[donor].size()) {  // stale entry: re-queue with the current size
        largest.emplace(parts[donor].size(), key);
        continue;
      }
      parts[c].push_back(parts[donor].back());
      parts[donor].pop_back();
      largest.emplace(parts[donor].size(), key);
      ++moved;
    }
    largest.emplace(parts[c].size(), n - 1 - c);
  }
  return moved;
}

inline void check_minimum(std::size_t num_samples, std::size_t num_clients, std::size_t minimum,
                          const char* who) {
  if (minimum > num_samples / num_clients) {
    raise<config_error>(who, ": ", num_samples, " samples cannot give each of ", num_clients,
                        " clients at least ", minimum,
                        " (min_per_client must be <= ", num_samples / num_clients, ")");
  }
}

inline std::map<int, std::vector<std::size_t>> by_class(const std::vector<int>& labels) {
  std::map<int, std::vector<std::size_t>> members;
  for (std::size_t i = 0; i < labels.size(); ++i) members[labels[i]].push_back(i);
  return members;
}

inline void sort_parts(partition& parts) {
  for (auto& part : parts) std::sort(part.begin(), part.end());
}
}  // namespace detail

// IID: a seeded shuffle cut into num_clients near-equal parts.
inline partition partition_iid(std::size_t num_samples, std::size_t num_clients,
                               std::uint64_t seed) {
  detail::check_clients(num_samples, num_clients, "partition_iid");
  std::vector<std::size_t> order(num_samples);
  std::iota(order.begin(), order.end(), std::size_t{0});
  random_engine rng(random_stream(seed, stream::data_split));
  partial_shuffle(order, order.size(), rng);
  partition parts(num_clients);
  for (std::size_t c = 0; c < num_clients; ++c) {
    const std::size_t lo = c * num_samples / num_clients, hi = (c + 1) * num_samples / num_clients;
    parts[c].assign(order.begin() + std::ptrdiff_t(lo), order.begin() + std::ptrdiff_t(hi));
    std::sort(parts[c].begin(), parts[c].end());
  }
  return parts;
}

// Label skew (Hsu et al. 2019): for each class, client proportions p ~ Dirichlet(alpha) and the
// class's samples are cut by them. Small alpha: each client sees few classes. Works for any
// alpha > 0 and any num_clients * min_per_client <= samples: one draw, then clients short of
// `min_per_client` are topped up from the largest clients (detail::top_up, deterministic);
// `moved` (if given) receives how many samples that moved. min_per_client = 0: no top-up, clients
// may be empty.
inline partition partition_dirichlet(const std::vector<int>& labels, std::size_t num_clients,
                                     double alpha, std::uint64_t seed,
                                     std::size_t min_per_client = 1, std::size_t* moved = nullptr) {
  detail::check_clients(labels.size(), num_clients, "partition_dirichlet");
  detail::check_minimum(labels.size(), num_clients, min_per_client, "partition_dirichlet");
  if (!(alpha > 0.0 && std::isfinite(alpha))) {
    detail::raise<config_error>("partition_dirichlet: alpha must be > 0, got ", alpha);
  }
  std::vector<std::size_t> everyone(num_clients);
  std::iota(everyone.begin(), everyone.end(), std::size_t{0});
  random_engine rng(random_stream(seed, stream::data_split));
  partition parts(num_clients);
  for (auto [label, members] : detail::by_class(labels)) {
    partial_shuffle(members, members.size(), rng);
    detail::cut_by_weights(members, detail::dirichlet_weights(num_clients, alpha, rng), everyone,
                           parts);
  }
  const std::size_t n_moved = detail::top_up(parts, min_per_client);
  if (moved) *moved = n_moved;
  detail::sort_parts(parts);
  return parts;
}

// Pathological label skew (McMahan et al. 2017; "#C = k" in Li et al. 2022, NIID-Bench): each
// client holds `classes_per_client` distinct classes. Classes are dealt round-robin over a seeded
// permutation (client c holds perm[(c k + j) mod K], j < k), so with clients * k >= K every class
// is held; each class's samples are shuffled and cut evenly among its holders. Clients left with
// fewer than `min_per_client` (a class with fewer samples than holders) are topped up as in
// partition_dirichlet.
inline partition partition_classes(const std::vector<int>& labels, std::size_t num_clients,
                                   std::size_t classes_per_client, std::uint64_t seed,
                                   std::size_t min_per_client = 1, std::size_t* moved = nullptr) {
  detail::check_clients(labels.size(), num_clients, "partition_classes");
  detail::check_minimum(labels.size(), num_clients, min_per_client, "partition_classes");
  auto members = detail::by_class(labels);
  const std::size_t num_classes = members.size();
  if (classes_per_client == 0 || classes_per_client > num_classes) {
    detail::raise<config_error>("partition_classes: classes_per_client must be in 1..", num_classes,
                                " (the classes in the labels), got ", classes_per_client);
  }
  if (num_clients * classes_per_client < num_classes) {
    detail::raise<config_error>("partition_classes: ", num_clients, " clients holding ",
                                classes_per_client, " classes each cannot cover all ", num_classes,
                                " classes");
  }
  std::vector<std::size_t> perm(num_classes);
  std::iota(perm.begin(), perm.end(), std::size_t{0});
  random_engine rng(random_stream(seed, stream::data_split));
  partial_shuffle(perm, perm.size(), rng);
  std::vector<std::vector<std::size_t>> holders(num_classes);  // class rank -> clients holding it
  for (std::size_t c = 0; c < num_clients; ++c) {
    for (std::size_t j = 0; j < classes_per_client; ++j)
      holders[perm[(c * classes_per_client + j) % num_classes]].push_back(c);
  }
  partition parts(num_clients);
  std::size_t rank = 0;
  for (auto& [label, samples] : members) {
    partial_shuffle(samples, samples.size(), rng);
    const auto& owners = holders[rank++];
    detail::cut_by_weights(samples, std::vector<double>(owners.size(), 1.0), owners, parts);
  }
  const std::size_t n_moved = detail::top_up(parts, min_per_client);
  if (moved) *moved = n_moved;
  detail::sort_parts(parts);
  return parts;
}

// Shards (McMahan et al. 2017): sort by label, cut into num_clients * shards_per_client shards,
// deal each client `shards_per_client` random shards.
inline partition partition_shards(const std::vector<int>& labels, std::size_t num_clients,
                                  std::size_t shards_per_client, std::uint64_t seed) {
  detail::check_clients(labels.size(), num_clients, "partition_shards");
  const std::size_t num_shards = num_clients * shards_per_client;
  if (shards_per_client == 0 || num_shards > labels.size()) {
    detail::raise<config_error>("partition_shards: need 1 <= ", num_clients,
                                " * shards_per_client <= ", labels.size(),
                                " samples, got shards_per_client = ", shards_per_client);
  }
  std::vector<std::size_t> order(labels.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t i, std::size_t j) { return labels[i] < labels[j]; });
  std::vector<std::size_t> shards(num_shards);
  std::iota(shards.begin(), shards.end(), std::size_t{0});
  random_engine rng(random_stream(seed, stream::data_split));
  partial_shuffle(shards, shards.size(), rng);
  partition parts(num_clients);
  for (std::size_t k = 0; k < num_shards; ++k) {
    const std::size_t s = shards[k];
    const std::size_t lo = s * labels.size() / num_shards,
                      hi = (s + 1) * labels.size() / num_shards;
    auto& part = parts[k / shards_per_client];
    part.insert(part.end(), order.begin() + std::ptrdiff_t(lo), order.begin() + std::ptrdiff_t(hi));
  }
  detail::sort_parts(parts);
  return parts;
}

// Personalised evaluation (FedSA-LoRA and other methods with a per-client factor): an evaluation
// set with labels `labels` shared among the clients so that each client's share has the label
// mix of its own training data, `client_labels[c]`. For each class y, its samples (a seeded
// shuffle) are cut among the clients that train on y, by weights n_{c,y} (the counts in
// client_labels), as partition_dirichlet cuts by its draws: client c gets about
// T_y n_{c,y} / N_y of the class's T_y samples. The shares are disjoint; the samples of a class
// no client trains on are in none, and a client may get an empty share. Uses its own sub-stream
// of the data-split stream, so it does not move the training partition of the same seed.
inline partition partition_like(const std::vector<std::vector<int>>& client_labels,
                                const std::vector<int>& labels, std::uint64_t seed) {
  if (client_labels.empty()) raise<config_error>("partition_like: no clients");
  std::map<int, std::vector<double>> counts;  // class -> n_{c,y} per client
  for (std::size_t c = 0; c < client_labels.size(); ++c) {
    for (const int y : client_labels[c]) {
      counts.try_emplace(y, client_labels.size()).first->second[c] += 1.0;
    }
  }
  random_engine rng(random_stream(seed, stream::data_split, 0, partition_like_substream));
  partition parts(client_labels.size());
  for (auto [label, members] : detail::by_class(labels)) {
    const auto found = counts.find(label);
    if (found == counts.end()) continue;  // no client trains on it
    std::vector<std::size_t> owners;
    std::vector<double> weights;
    for (std::size_t c = 0; c < found->second.size(); ++c) {
      if (found->second[c] > 0.0) {
        owners.push_back(c);
        weights.push_back(found->second[c]);
      }
    }
    partial_shuffle(members, members.size(), rng);
    detail::cut_by_weights(members, weights, owners, parts);
  }
  detail::sort_parts(parts);
  return parts;
}

}  // namespace rolora
