// Seeded choices of a round: which clients take part, which drop out, which samples form a batch.
// All are pure functions of (seed, round, client), independent of thread count.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <rolora/core/rng.hpp>
#include <span>
#include <vector>

namespace rolora {

// The first `count` entries of a random permutation of `items` (partial Fisher-Yates).
template <class Item>
void partial_shuffle(std::vector<Item>& items, std::size_t count, random_engine& rng) {
  count = std::min(count, items.size());
  for (std::size_t i = 0; i < count; ++i) {
    const auto j = i + static_cast<std::size_t>(rng.below(items.size() - i));
    std::swap(items[i], items[j]);
  }
}

// `per_round` of `num_clients` clients, uniformly without replacement, in increasing order
// (aggregation order is fixed by client id). per_round = 0 or >= num_clients: everyone.
inline std::vector<std::size_t> sample_clients(std::uint64_t seed, std::size_t round,
                                               std::size_t num_clients, std::size_t per_round) {
  std::vector<std::size_t> ids(num_clients);
  std::iota(ids.begin(), ids.end(), std::size_t{0});
  if (per_round == 0 || per_round >= num_clients) return ids;
  random_engine rng(
      random_stream(seed, stream::client_sampling, static_cast<std::uint32_t>(round)));
  partial_shuffle(ids, per_round, rng);
  ids.resize(per_round);
  std::sort(ids.begin(), ids.end());
  return ids;
}

// Poisson sampling (differential privacy's assumption, privacy/accountant.hpp): each of the
// `num_clients` clients takes part in round `round` independently with probability `rate`, in
// increasing order. May return no client at all (with rate 0.01 and 100 clients, 37% of rounds).
// Sub-stream 1 of the client-sampling stream (sample_clients draws from sub-stream 0).
inline std::vector<std::size_t> poisson_sample_clients(std::uint64_t seed, std::size_t round,
                                                       std::size_t num_clients, double rate) {
  std::vector<std::size_t> ids;
  const random_stream rs(seed, stream::client_sampling, static_cast<std::uint32_t>(round), 1);
  for (std::size_t c = 0; c < num_clients; ++c) {
    if (rs.uniform(c) < rate) ids.push_back(c);
  }
  return ids;
}

// Whether client `client` fails to report in round `round`, with probability `rate`.
inline bool drops_out(std::uint64_t seed, std::size_t round, std::size_t client, double rate) {
  if (rate <= 0.0) return false;
  const random_stream rs(seed, stream::dropout, static_cast<std::uint32_t>(round));
  return rs.uniform(client) < rate;
}

// Minibatches for one client in one round: consecutive slices of a seeded permutation of its
// samples, reshuffled after each pass. batch_size = 0 or >= n: the full local batch every step.
class batch_sampler {
 public:
  batch_sampler(std::uint64_t seed, std::size_t round, std::size_t client, std::size_t n,
                std::size_t batch_size)
      : rng_(random_stream(seed, stream::batching, static_cast<std::uint32_t>(round),
                           static_cast<std::uint32_t>(client))),
        order_(n),
        batch_size_(batch_size == 0 || batch_size >= n ? n : batch_size),
        next_(n) {
    std::iota(order_.begin(), order_.end(), std::size_t{0});
    if (batch_size_ == n) next_ = 0;  // full batch: no shuffling needed
  }

  std::span<const std::size_t> next() {
    if (batch_size_ == order_.size()) return order_;
    if (next_ + batch_size_ > order_.size()) {
      partial_shuffle(order_, order_.size(), rng_);
      next_ = 0;
    }
    const std::span<const std::size_t> batch(order_.data() + next_, batch_size_);
    next_ += batch_size_;
    return batch;
  }

 private:
  random_engine rng_;
  std::vector<std::size_t> order_;
  std::size_t batch_size_;
  std::size_t next_;
};

}  // namespace rolora
