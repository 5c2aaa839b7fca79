// Double masking (Bonawitz et al., CCS 2017, §4; over a neighbour graph as in SecAgg+): what a
// client adds to its encoded update and what the server needs to take it off again. Messages are
// plain structs here (messages.hpp puts them on the wire, round.hpp runs the rounds). Each client
// has two fresh key pairs per round: the mask key pair, whose secret is shared so that the server
// can remove a dropped client's pair masks, and the encryption key pair, which seals the share
// bundles the server routes (crypto.hpp's seal) and is never shared.
//
// Client i, with encoded input x_i (L elements of Z_{2^64}, encoding.hpp), self-mask seed b_i and
// mask key pair (sk_i, pk_i), both fresh each round, sends
//   y_i = x_i + PRG(b_i) + sum_{j in N(i), j > i} PRG(k_ij) - sum_{j in N(i), j < i} PRG(k_ij)
// (mod 2^64), with N(i) its neighbours among the clients that published keys, k_ij the pair key
// of i and j (crypto.hpp, purpose pairwise_mask, bound to the round) and PRG the ChaCha20 mask
// stream of the round. Each neighbour holds a Shamir share (threshold t) of b_i and of sk_i.
// The server sums the y_i of the survivors S; the pair masks between two survivors cancel. For a
// survivor s it asks the neighbours for shares of b_s and removes PRG(b_s); for a client d that
// published keys but sent no y_d it asks for shares of sk_d, recomputes k_ds for each surviving
// neighbour s and removes that pair mask. What is left is sum_{s in S} x_s, bit for bit.
// An honest client never hands out both kinds of share of one peer (the two together unmask
// that peer's y) and answers one request per round; the server refuses such a set of answers too.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <rolora/core/error.hpp>
#include <rolora/secagg/crypto.hpp>
#include <rolora/secagg/graph.hpp>
#include <rolora/secagg/shamir.hpp>
#include <set>
#include <span>
#include <vector>

namespace rolora::secagg {

// What every party of one round agrees on.
struct round_setup {
  std::uint64_t round = 0;
  std::size_t threshold = 1;  // t: shares needed to reconstruct a seed or a key
  neighbour_graph graph;
};

// From client `from` to its neighbour `to`: one share of from's self-mask seed and of its mask
// secret key (sealed to `to` on the wire: messages.hpp's sealed shares).
struct share_bundle {
  std::size_t from = 0, to = 0;
  share seed_share, key_share;
};

// The server's question after the masked inputs: whose seeds (survivors) and whose keys
// (dropped clients) to reveal shares of.
struct unmask_request {
  std::vector<std::size_t> survivors, dropped;
};

// A client's answer: peer id -> the share it holds of that peer's seed or key.
struct unmask_answer {
  std::size_t from = 0;
  std::map<std::size_t, share> seed_shares, key_shares;
};

using key_directory = std::map<std::size_t, public_key>;  // client -> mask public key

namespace detail {

inline void add_into(std::vector<std::uint64_t>& acc, std::span<const std::uint64_t> v) {
  for (std::size_t j = 0; j < acc.size(); ++j) acc[j] += v[j];  // mod 2^64
}
inline void sub_from(std::vector<std::uint64_t>& acc, std::span<const std::uint64_t> v) {
  for (std::size_t j = 0; j < acc.size(); ++j) acc[j] -= v[j];
}

// Refuses a request naming one client both as survivor and as dropped.
inline void check_request(const unmask_request& req) {
  const std::set<std::size_t> alive(req.survivors.begin(), req.survivors.end());
  for (std::size_t d : req.dropped) {
    if (alive.count(d)) {
      rolora::detail::raise<config_error>(
          "secagg: a request for both the self-mask seed share and the mask key share of client ",
          d, ": the two together would unmask its input");
    }
  }
}

}  // namespace detail

class client {
 public:
  // Client `id` of the round: a fresh mask key pair and self-mask seed.
  client(std::size_t id, const round_setup& setup)
      : id_(id),
        round_(setup.round),
        threshold_(setup.threshold),
        keys_(generate_keypair()),
        encryption_keys_(generate_keypair()),
        seed_(random_seed()) {
    if (id >= setup.graph.size()) {
      rolora::detail::raise<config_error>("secagg: client ", id, " of a graph of ",
                                          setup.graph.size(), " clients");
    }
    neighbours_ = setup.graph.neighbours(id);  // its own list only: O(k), not the graph
    const std::size_t deg = setup.graph.degree(id);
    if (setup.threshold < 1 || setup.threshold > deg) {
      rolora::detail::raise<config_error>("secagg: threshold t = ", setup.threshold,
                                          " must be in [1, degree] for client ", id, " of degree ",
                                          deg);
    }
  }

  std::size_t id() const noexcept { return id_; }
  const public_key& mask_public_key() const noexcept { return keys_.pk; }
  const public_key& encryption_public_key() const noexcept { return encryption_keys_.pk; }

  // `plaintext` sealed to the holder of encryption key `to`, and a box from `from` opened (its
  // secret encryption key never leaves the client).
  std::vector<std::uint8_t> seal_to(std::span<const std::uint8_t> plaintext,
                                    const public_key& to) const {
    return seal(plaintext, to, encryption_keys_.sk);
  }
  std::vector<std::uint8_t> open_from(std::span<const std::uint8_t> sealed,
                                      const public_key& from) const {
    return open_sealed(sealed, from, encryption_keys_.sk);
  }

  // One bundle per neighbour: shares (x = 1..degree, in the order of the neighbours) of the seed
  // and of the secret key.
  std::vector<share_bundle> share_out() const {
    const auto& nb = neighbours_;
    auto seeds = split(seed_, nb.size(), threshold_);
    auto keys = split(keys_.sk, nb.size(), threshold_);
    std::vector<share_bundle> out(nb.size());
    for (std::size_t l = 0; l < nb.size(); ++l) {
      out[l] = {id_, nb[l], std::move(seeds[l]), std::move(keys[l])};
    }
    return out;
  }

  // Keeps a neighbour's bundle; refuses one for another client or from a non-neighbour.
  void receive(const share_bundle& b) {
    if (b.to != id_ || !std::binary_search(neighbours_.begin(), neighbours_.end(), b.from)) {
      rolora::detail::raise<config_error>("secagg: client ", id_, " got a share bundle from ",
                                          b.from, " to ", b.to, ", expected one to ", id_,
                                          " from a neighbour");
    }
    held_[b.from] = b;
  }

  // y_i (the formula at the top) for `encoded`, masking with the neighbours found in `published`.
  std::vector<std::uint64_t> masked(std::span<const std::uint64_t> encoded,
                                    const key_directory& published) const {
    std::vector<std::uint64_t> y(encoded.begin(), encoded.end());
    detail::add_into(y, mask_words(seed_, round_, stream_domain::self_mask, y.size()));
    for (std::size_t j : neighbours_) {
      const auto it = published.find(j);
      if (it == published.end()) continue;
      const key256 k =
          pair_key(keys_.sk, keys_.pk, id_, it->second, j, round_, key_purpose::pairwise_mask);
      const auto m = mask_words(k, round_, stream_domain::pairwise_mask, y.size());
      if (j > id_) {
        detail::add_into(y, m);
      } else {
        detail::sub_from(y, m);
      }
    }
    return y;
  }

  // The shares asked for: seed shares of the survivors, key shares of the dropped, among the
  // peers whose bundles this client holds. Refuses a request naming a client in both lists, and a
  // second request in the round.
  unmask_answer answer(const unmask_request& req) {
    detail::check_request(req);
    if (answered_) {
      rolora::detail::raise<config_error>("secagg: client ", id_, " already answered round ",
                                          round_, "'s unmask request");
    }
    answered_ = true;
    unmask_answer a;
    a.from = id_;
    for (std::size_t s : req.survivors) {
      if (const auto it = held_.find(s); it != held_.end())
        a.seed_shares[s] = it->second.seed_share;
    }
    for (std::size_t d : req.dropped) {
      if (const auto it = held_.find(d); it != held_.end()) a.key_shares[d] = it->second.key_share;
    }
    return a;
  }

 private:
  std::size_t id_;
  std::uint64_t round_;
  std::size_t threshold_;
  std::vector<std::size_t> neighbours_;  // ascending
  keypair keys_;                         // the mask key pair (its secret is shared)
  keypair encryption_keys_;              // seals share bundles (never shared)
  key256 seed_;
  std::map<std::size_t, share_bundle> held_;  // neighbour -> its bundle to this client
  bool answered_ = false;
};

// The request for round: survivors = the clients with a masked input, dropped = the clients that
// published keys but sent none.
inline unmask_request make_request(
    const key_directory& published,
    const std::map<std::size_t, std::vector<std::uint64_t>>& masked) {
  unmask_request req;
  for (const auto& [id, pk] : published) {
    (masked.count(id) ? req.survivors : req.dropped).push_back(id);
  }
  return req;
}

// sum_{s in survivors} x_s (mod 2^64), L elements, from the survivors' masked inputs and the
// answers to make_request(published, masked). Refuses: a masked input from a client that did not
// publish keys or of another length; answers that reveal both kinds of share of one client;
// fewer than t shares of a needed seed or key (shamir); a key that does not match its public key.
inline std::vector<std::uint64_t> unmask_sum(
    const round_setup& setup, const key_directory& published,
    const std::map<std::size_t, std::vector<std::uint64_t>>& masked,
    std::span<const unmask_answer> answers, std::size_t length) {
  std::vector<std::uint64_t> sum(length, 0);
  for (const auto& [id, y] : masked) {
    if (!published.count(id)) {
      rolora::detail::raise<config_error>("secagg: a masked input from client ", id,
                                          ", which published no keys");
    }
    if (y.size() != length) {
      rolora::detail::raise<config_error>("secagg: the masked input of client ", id, " has ",
                                          y.size(), " elements, expected ", length);
    }
    detail::add_into(sum, y);
  }
  std::map<std::size_t, std::vector<share>> seeds, keys;
  for (const auto& a : answers) {
    for (const auto& [peer, s] : a.seed_shares) seeds[peer].push_back(s);
    for (const auto& [peer, s] : a.key_shares) keys[peer].push_back(s);
  }
  for (const auto& [peer, list] : keys) {
    if (seeds.count(peer)) {
      rolora::detail::raise<config_error>(
          "secagg: answers reveal both the self-mask seed share and the mask key share of client ",
          peer, ": the two together would unmask its input");
    }
  }
  const unmask_request req = make_request(published, masked);
  for (std::size_t s : req.survivors) {
    const auto it = seeds.find(s);
    if (it == seeds.end()) {
      rolora::detail::raise<config_error>("secagg: no share of the seed of surviving client ", s);
    }
    const auto bytes = reconstruct(it->second);
    key256 seed{};
    if (bytes.size() != seed.size()) {
      rolora::detail::raise<value_error>("secagg: the seed of client ", s, " has ", bytes.size(),
                                         " bytes, expected 32");
    }
    std::copy(bytes.begin(), bytes.end(), seed.begin());
    detail::sub_from(sum, mask_words(seed, setup.round, stream_domain::self_mask, length));
  }
  for (std::size_t d : req.dropped) {
    bool needed = false;
    for (std::size_t s : setup.graph.neighbours(d)) needed = needed || masked.count(s);
    if (!needed) continue;  // no survivor masked with d
    const auto it = keys.find(d);
    if (it == keys.end()) {
      rolora::detail::raise<config_error>("secagg: no share of the mask key of dropped client ", d);
    }
    const auto bytes = reconstruct(it->second);
    secret_key sk{};
    if (bytes.size() != sk.size()) {
      rolora::detail::raise<value_error>("secagg: the mask key of client ", d, " has ",
                                         bytes.size(), " bytes, expected 32");
    }
    std::copy(bytes.begin(), bytes.end(), sk.begin());
    const public_key& pk = published.at(d);
    if (public_of(sk) != pk) {
      rolora::detail::raise<value_error>("secagg: the reconstructed mask key of client ", d,
                                         " does not match its published public key");
    }
    for (std::size_t s : setup.graph.neighbours(d)) {
      if (!masked.count(s)) continue;
      const key256 k =
          pair_key(sk, pk, d, published.at(s), s, setup.round, key_purpose::pairwise_mask);
      const auto m = mask_words(k, setup.round, stream_domain::pairwise_mask, length);
      if (d > s) {
        detail::sub_from(sum, m);  // s added +PRG(k_sd) for its larger neighbour d
      } else {
        detail::add_into(sum, m);
      }
    }
  }
  return sum;
}

}  // namespace rolora::secagg
