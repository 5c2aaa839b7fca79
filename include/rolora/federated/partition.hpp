// Partitioners: how a data set's samples are split across clients. Each returns, for every
// client, the indices of its samples (sorted). Seeded from the data-split stream.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <numeric>
#include <vector>

#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/federated/sampling.hpp>

namespace rolora {

using partition = std::vector<std::vector<std::size_t>>;

namespace detail {
inline void check_clients(std::size_t num_samples, std::size_t num_clients, const char* who) {
  if (num_clients == 0) raise<config_error>(who, ": num_clients must be >= 1, got 0");
  if (num_samples < num_clients) {
    raise<config_error>(who, ": ", num_samples, " samples cannot give each of ",
                       num_clients, " clients at least one");
  }
}

// Gamma(shape, 1) by Marsaglia and Tsang (2000), boosted for shape < 1.
inline double gamma_draw(double shape, random_engine& rng) {
  if (shape < 1.0) {
    const double u = 1.0 - rng.uniform();  // (0, 1]
    return gamma_draw(shape + 1.0, rng) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    const double x = rng.normal();
    const double v1 = 1.0 + c * x;
    if (v1 <= 0.0) continue;
    const double v = v1 * v1 * v1;
    const double u = 1.0 - rng.uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
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
// class's samples are cut by them. Small alpha: each client sees few classes. Redrawn (up to 100
// times, each draw from its own sub-stream) until every client has at least `min_per_client`.
inline partition partition_dirichlet(const std::vector<int>& labels, std::size_t num_clients,
                                     double alpha, std::uint64_t seed,
                                     std::size_t min_per_client = 1) {
  detail::check_clients(labels.size(), num_clients, "partition_dirichlet");
  if (!(alpha > 0.0 && std::isfinite(alpha))) {
    detail::raise<config_error>("partition_dirichlet: alpha must be > 0, got ", alpha);
  }
  std::map<int, std::vector<std::size_t>> by_class;
  for (std::size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(i);
  for (std::uint32_t attempt = 0; attempt < 100; ++attempt) {
    random_engine rng(random_stream(seed, stream::data_split, attempt));
    partition parts(num_clients);
    for (auto [label, members] : by_class) {
      partial_shuffle(members, members.size(), rng);
      std::vector<double> p(num_clients);
      double total = 0.0;
      for (double& x : p) total += (x = detail::gamma_draw(alpha, rng));
      double cumulative = 0.0;
      std::size_t lo = 0;
      for (std::size_t c = 0; c < num_clients; ++c) {
        cumulative += p[c] / total;
        const std::size_t hi = c + 1 == num_clients
                                   ? members.size()
                                   : std::min(members.size(), static_cast<std::size_t>(std::llround(
                                                                  cumulative * double(members.size()))));
        for (std::size_t k = lo; k < std::max(lo, hi); ++k) parts[c].push_back(members[k]);
        lo = std::max(lo, hi);
      }
    }
    const bool enough = std::all_of(parts.begin(), parts.end(), [&](const auto& part) {
      return part.size() >= min_per_client;
    });
    if (enough) {
      for (auto& part : parts) std::sort(part.begin(), part.end());
      return parts;
    }
  }
  detail::raise<config_error>("partition_dirichlet: no split with at least ",
                             min_per_client, " samples per client in 100 draws (alpha = ", alpha,
                             ", ", num_clients, " clients, ", labels.size(),
                             " samples); raise alpha or lower the minimum");
}

// Shards (McMahan et al. 2017): sort by label, cut into num_clients * shards_per_client shards,
// deal each client `shards_per_client` random shards.
inline partition partition_shards(const std::vector<int>& labels, std::size_t num_clients,
                                  std::size_t shards_per_client, std::uint64_t seed) {
  detail::check_clients(labels.size(), num_clients, "partition_shards");
  const std::size_t num_shards = num_clients * shards_per_client;
  if (shards_per_client == 0 || num_shards > labels.size()) {
    detail::raise<config_error>("partition_shards: need 1 <= ", num_clients,
                               " * shards_per_client <= ", labels.size(), " samples, got shards_per_client = ",
                               shards_per_client);
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
    const std::size_t lo = s * labels.size() / num_shards, hi = (s + 1) * labels.size() / num_shards;
    auto& part = parts[k / shards_per_client];
    part.insert(part.end(), order.begin() + std::ptrdiff_t(lo), order.begin() + std::ptrdiff_t(hi));
  }
  for (auto& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

}  // namespace rolora
