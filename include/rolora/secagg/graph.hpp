// Who masks with whom. Bonawitz et al. pair every two clients (the complete graph: O(n) masks and
// shares per client); SecAgg+ (Bell et al., CCS 2020, "Secure Single-Server Aggregation with
// (Poly)Logarithmic Overhead") pairs each client with k = O(log n) neighbours of a random
// k-regular graph that every party derives from one shared seed.
//
// The random graph is a Harary graph on a random ring: a permutation pi of 0..n-1 drawn from the
// ChaCha20 stream of the seed (crypto.hpp, domain graph, Fisher-Yates with rejection sampling);
// the client at ring position r is joined to those at r +- 1, ..., r +- k/2; for odd k (n must
// then be even) also to the one at r + n/2. Symmetric, no self loops, every degree exactly k.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <rolora/core/error.hpp>
#include <rolora/secagg/crypto.hpp>
#include <vector>

namespace rolora::secagg {

class neighbour_graph {
 public:
  neighbour_graph() = default;  // no clients
  explicit neighbour_graph(std::vector<std::vector<std::size_t>> adjacency)
      : adj_(std::move(adjacency)) {
    for (auto& a : adj_) std::sort(a.begin(), a.end());
  }

  std::size_t size() const noexcept { return adj_.size(); }
  // The neighbours of client i, ascending.
  const std::vector<std::size_t>& neighbours(std::size_t i) const { return adj_.at(i); }
  std::size_t degree(std::size_t i) const { return adj_.at(i).size(); }
  bool adjacent(std::size_t i, std::size_t j) const {
    const auto& a = adj_.at(i);
    return std::binary_search(a.begin(), a.end(), j);
  }

 private:
  std::vector<std::vector<std::size_t>> adj_;
};

// Every client a neighbour of every other (Bonawitz et al.).
inline neighbour_graph complete_graph(std::size_t n) {
  std::vector<std::vector<std::size_t>> adj(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      if (j != i) adj[i].push_back(j);
    }
  }
  return neighbour_graph(std::move(adj));
}

// An even k near 2 ceil(log2 n), at most n - 1 (then the complete graph): SecAgg+'s O(log n).
inline std::size_t logarithmic_degree(std::size_t n) {
  if (n <= 1) return 0;
  const auto k = 2 * std::size_t(std::ceil(std::log2(double(n))));
  return std::min(k, n - 1);
}

// The k-regular graph of `seed` on n clients (the construction at the top). Refuses k >= n
// (except n = 1, k = 0), and odd k with odd n (no k-regular graph exists).
inline neighbour_graph random_regular_graph(std::size_t n, std::size_t k, const key256& seed) {
  if (n == 0) rolora::detail::raise<config_error>("secagg graph: n must be >= 1, got 0");
  if (k >= n && !(n == 1 && k == 0)) {
    rolora::detail::raise<config_error>("secagg graph: degree k must be < n, got k = ", k,
                                        " with n = ", n);
  }
  if (k % 2 == 1 && n % 2 == 1) {
    rolora::detail::raise<config_error>("secagg graph: an odd degree k = ", k,
                                        " needs an even n, got n = ", n);
  }
  // The permutation pi (ring position -> client), from 64-bit words of the seed's stream.
  std::vector<std::size_t> ring(n);
  for (std::size_t i = 0; i < n; ++i) ring[i] = i;
  std::vector<std::uint64_t> words;
  std::size_t next = 0;
  auto draw = [&]() {
    if (next == words.size()) {  // refill: 4 words per position, more if rejections need them
      const std::size_t have = words.size();
      words = mask_words(seed, 0, stream_domain::graph, have + 4 * n + 16);
      next = have;
    }
    return words[next++];
  };
  for (std::size_t i = n; i > 1; --i) {  // Fisher-Yates: a uniform j in [0, i)
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % i;
    std::uint64_t w = draw();
    while (w >= limit) w = draw();
    std::swap(ring[i - 1], ring[w % i]);
  }
  std::vector<std::vector<std::size_t>> adj(n);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t d = 1; d <= k / 2; ++d) {
      adj[ring[r]].push_back(ring[(r + d) % n]);
      adj[ring[r]].push_back(ring[(r + n - d) % n]);
    }
    if (k % 2 == 1) adj[ring[r]].push_back(ring[(r + n / 2) % n]);
  }
  return neighbour_graph(std::move(adj));
}

}  // namespace rolora::secagg
