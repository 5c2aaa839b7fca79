// Secure aggregation in the federation's rounds: secagg::in_process, a round_transport
// (core/concepts.hpp) whose exchange runs the protocol of masking.hpp among the round's clients in
// this process, every stage message through its encoding and checked decoder (messages.hpp), and
// hands the server one secure_sum (federated/secure_sum.hpp) instead of the uploads.
//
// One round t, its reporting clients numbered 0..m-1 in client-id order (the protocol's ids):
//   train        each client trains as in the plain round (train_locally) and checks its own
//                update as the server would (detail::check_update: modules, shapes, finite,
//                max_abs_entry): the server cannot see it any more. A refused update: the client
//                drops out, its reason in round_report::rejected
//   encode       secure_input (w (X - G), w) in fixed point: the change with codec(range, bits),
//                the integer weight exactly; stochastic rounding from the seeded stream
//                secagg_rounding (round, client), so a run is reproducible
//   advertise    each client's fresh mask and encryption public keys -> the server's directory
//   share keys   each client's share bundles to its neighbours (the round's graph: complete, or
//                random k-regular from the public stream secagg_graph), each sealed to its
//                recipient's encryption key -> routed by the server, which cannot open them;
//                the clients that completed this stage are the masking set
//   masked input y_c = encoding + masks (with the masking set), and its loss in the clear
//   unmask       the server's request (survivors, dropped); each answering client's shares
//   sum          unmask_sum, decoded: sum_c w_c (X_c - G) and sum_c w_c
// A client dropped before a stage sends nothing from it on (`drop`, for tests): before the masked
// input it is absent from the sum; after it, its input is in the sum and its masks come off with
// the survivors' shares. Fewer than t answering neighbours for a needed seed or key fail the
// round, changing nothing. A round with one party sums nothing (the sum would be its update):
// it fails on min_clients, or under client DP it is a round of noise only. With masks = false the
// same encodings are summed in the clear (the reference: a masked run equals it bit for bit).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <rolora/core/error.hpp>
#include <rolora/core/parallel.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/federated/secure_sum.hpp>
#include <rolora/secagg/encoding.hpp>
#include <rolora/secagg/graph.hpp>
#include <rolora/secagg/masking.hpp>
#include <rolora/secagg/messages.hpp>
#include <string>
#include <vector>

namespace rolora::secagg {

// The protocol's stages, in order.
enum class stage { advertise, share_keys, masked_input, unmask };

// The fixed-point encoding of a client's input under `config` for rounds of at most `clients`
// summed inputs: the change's codec and the integers' (one level = 1, 32 bits whatever the
// change's: they travel exactly). The integers are those that end secure_input (the weight, and
// under adaptive clipping the unclipped bit: `integers` of them) and the number of the change's
// coordinates the range clipped, which the server learns only as a sum
// (round_report::secagg_clipped: whether R is too small).
struct input_codec {
  codec change, weight;
  std::size_t integers = 1;
  input_codec(const secagg_config& config, std::size_t clients, std::size_t integers_in = 1)
      : change(config.range, config.bits, clients),
        weight(std::ldexp(1.0, integer_bits - 1), integer_bits, clients),
        integers(integers_in) {}
  static constexpr int integer_bits = 32;

  // secure_input's (w (X - G), w[, bit]) -> (its encoding, w[, bit], clipped) in Z_{2^64}:
  // L + integers + 1 elements; w must be an integer in [1, 2^31] (the count saturates there).
  std::vector<std::uint64_t> encode(const std::vector<double>& input, std::uint64_t seed) const {
    const std::span<const double> x(input.data(), input.size() - integers);
    std::vector<double> exact(input.end() - std::ptrdiff_t(integers), input.end());
    const double w = exact.front();
    if (!(w >= 1.0 && w <= weight.range() && w == std::floor(w))) {
      rolora::detail::raise<value_error>("secagg: a client's weight must be an integer in [1, ",
                                         weight.range(), "], got ", w);
    }
    double clipped = 0;
    for (double v : x) clipped += std::abs(v) > change.range() ? 1.0 : 0.0;
    exact.push_back(std::min(clipped, weight.range()));
    auto out = change.encode(x, seed);
    for (std::uint64_t e : weight.encode(exact, 0)) out.push_back(e);  // exact: no draw
    return out;
  }
  // The sum of n encodings -> (sum w (X - G), sum w[, sum bit], sum clipped).
  std::vector<double> decode_sum(std::span<const std::uint64_t> sum, std::size_t n) const {
    auto out = change.decode_sum(sum.first(sum.size() - integers - 1), n);
    for (double v : weight.decode_sum(sum.last(integers + 1), n)) out.push_back(v);
    return out;
  }
};

// The round's public graph over m clients: complete for k = 0 or k >= m - 1, else random
// k-regular (odd k with odd m: k - 1), seeded by the federation's seed and the round.
inline neighbour_graph round_graph(std::size_t m, std::size_t k, std::uint64_t seed,
                                   std::uint64_t round) {
  if (k == 0 || k + 1 >= m) return complete_graph(m);
  if (k % 2 == 1 && m % 2 == 1) --k;
  const random_stream s(seed, stream::secagg_graph, std::uint32_t(round));
  key256 key{};
  for (std::size_t i = 0; i < 2; ++i) {
    const auto w = s.bits(i);
    for (std::size_t j = 0; j < 16; ++j) key[16 * i + j] = std::uint8_t(w[j / 4] >> (8 * (j % 4)));
  }
  return random_regular_graph(m, k, key);
}

// A threshold t for a graph: the configured one, or a majority of the smallest degree.
inline std::size_t round_threshold(const neighbour_graph& g, std::size_t configured) {
  std::size_t least = g.size();
  for (std::size_t i = 0; i < g.size(); ++i) least = std::min(least, g.degree(i));
  return configured ? configured : least / 2 + 1;
}

// A client's side of the train stage: train from `download`, check the update as the server
// would (a refused update: `refused` holds the reason, naming the client), encode secure_input
// (the change over `shares`) with `codec`, rounding from the stream secagg_rounding (round,
// client). The same on every transport.
struct trained_input {
  std::vector<std::uint64_t> encoding;
  double loss = 0.0;
  std::string refused;
};
template <class Task, class Backend>
trained_input train_and_encode(Task& task, client_download<Backend> download,
                               const federation_config& config, const input_codec& codec,
                               factor_set shares, bool clip_bits, bool products) {
  const std::size_t c = download.client;
  const std::uint64_t t = download.round;
  const auto view = download.adapters;
  const auto u = train_locally(task, std::move(download), config);
  trained_input out;
  try {
    rolora::detail::check_update(view, u,
                                 {.lower_ranks = false,
                                  .same_scaling = true,
                                  .min_samples = 1.0,
                                  .max_abs_entry = config.max_abs_entry});
    const double w =
        config.client_weighting == weighting::uniform ? 1.0 : std::round(u.num_samples);
    const random_stream rounding(config.seed, stream::secagg_rounding, std::uint32_t(t),
                                 std::uint32_t(c));
    const auto b = rounding.bits(0);
    out.encoding = codec.encode(secure_input(view, u, shares, w, clip_bits, products),
                                (std::uint64_t(b[1]) << 32) | b[0]);
    out.loss = u.loss;
  } catch (const error& e) {  // check_update names the client; the encoding does not
    const std::string why(e.message());
    out.refused = why.starts_with("client ") ? why : "client " + std::to_string(c) + ": " + why;
  }
  return out;
}

// The secure-aggregation settings of `server`'s federation, for the transport `transport` (a
// name for the message): a composition the protocol cannot run fails to compile, a federation
// without config.secure_aggregation is a config_error.
template <class Server>
const secagg_config& secure_config_of(const Server& server, const char* transport) {
  static_assert(mean_of_factors_aggregator<typename Server::aggregator_type> ||
                    product_mean_aggregator<typename Server::aggregator_type>,
                "rolora::secagg: secure aggregation needs an aggregator whose result is a mean of "
                "the uploaded factors (fedavg, orthonormalize_a<fedavg>) or of the factors and "
                "products (svd_resplit, fedex_residual): the server sees only the sum");
  if (!server.config().secure_aggregation) {
    rolora::detail::raise<config_error>("secagg::", transport,
                                        ": the federation's config.secure_aggregation is not set");
  }
  return *server.config().secure_aggregation;
}

// The length of a client's encoded input in round `plan`: the change's coordinates (and the
// products' for FlexLoRA and FedEx-LoRA), w, the unclipped bit under adaptive clipping, and the
// clipped count (secure_sum.hpp, input_codec).
template <class Server>
std::size_t encoded_length(const Server& server, const round_plan& plan) {
  return rolora::detail::change_length(server.global(), plan.shares) +
         (server.secure_products(plan) ? rolora::detail::products_length(server.global()) : 0) + 2 +
         (server.secure_clip_bits() ? 1 : 0);
}

// The in-process transport with secure aggregation: in_process's training, then the protocol.
struct in_process : rolora::in_process {
  // Testing: whether client `client` (the federation's id) is gone before stage `s` of `round`.
  std::function<bool(std::size_t client, std::size_t round, stage s)> drop;

  template <class Server, class Task>
  secure_sum exchange(Server& server, const round_plan& plan, std::vector<Task>& tasks) const {
    const secagg_config& sa = secure_config_of(server, "in_process");
    const federation_config& config = server.config();
    const std::uint64_t t = plan.round;
    const auto gone = [&](std::size_t c, stage s) { return drop && drop(c, t, s); };
    secure_sum out;

    // Train, check and encode (the clients' side; in parallel, as in_process).
    const std::size_t m = plan.reporting.size();
    const bool clip_bits = server.secure_clip_bits();    // adaptive clipping's bit, summed too
    const bool products = server.secure_products(plan);  // FlexLoRA, FedEx-LoRA: dense B A
    const input_codec codec(sa, std::max<std::size_t>(m, 1), clip_bits ? 2 : 1);
    std::vector<trained_input> inputs(m);
    rolora::detail::parallel_for(m, config.threads, [&](std::size_t i) {
      const std::size_t c = plan.reporting[i];
      inputs[i] = train_and_encode(tasks[c], server.download(plan, c), config, codec, plan.shares,
                                   clip_bits, products);
    });
    // The protocol's parties: the clients that checked their update and did not drop.
    std::vector<std::size_t> party;  // protocol id -> index into plan.reporting
    for (std::size_t i = 0; i < m; ++i) {
      if (!inputs[i].refused.empty()) {
        out.rejected.push_back({plan.reporting[i], inputs[i].refused});
      } else if (!gone(plan.reporting[i], stage::advertise)) {
        party.push_back(i);
      }
    }
    if (party.size() == 1) {  // the sum would be its update: it keeps it to itself
      out.rejected.push_back({plan.reporting[party[0]],
                              "the only client of the round under secure aggregation (the sum "
                              "would be its update)"});
      party.clear();
    }
    const std::size_t n = party.size();
    const std::size_t length = encoded_length(server, plan);
    const auto finish = [&](const std::vector<std::uint64_t>& sum,
                            const std::vector<std::size_t>& in_sum) {
      for (std::size_t p : in_sum) {
        out.summed.push_back(plan.reporting[party[p]]);
        out.losses.push_back(inputs[party[p]].loss);
      }
      out.sum =
          in_sum.empty() ? std::vector<double>(length, 0.0) : codec.decode_sum(sum, in_sum.size());
      out.clipped = std::size_t(out.sum.back());
      out.sum.pop_back();
      return out;
    };

    if (!sa.masks) {  // the reference: the same encodings summed in the clear
      std::vector<std::uint64_t> sum(length, 0);
      std::vector<std::size_t> in_sum;
      for (std::size_t p = 0; p < n; ++p) {
        const std::size_t c = plan.reporting[party[p]];
        if (gone(c, stage::share_keys) || gone(c, stage::masked_input)) continue;
        rolora::secagg::detail::add_into(sum, inputs[party[p]].encoding);
        out.bytes.masked_input +=
            encode_masked_input(p, inputs[party[p]].encoding, t).size();  // in clear
        in_sum.push_back(p);
      }
      return finish(sum, in_sum);
    }
    if (n == 0) return finish({}, {});

    round_setup setup{t, 0, round_graph(n, sa.neighbours, config.seed, t)};
    setup.threshold = round_threshold(setup.graph, sa.threshold);
    std::vector<client> clients;
    clients.reserve(n);
    for (std::size_t p = 0; p < n; ++p) clients.emplace_back(p, setup);
    const auto federation_id = [&](std::size_t p) { return plan.reporting[party[p]]; };

    // Advertise: every party's public key, through its message.
    key_directory keys, encryption_keys;
    std::vector<std::size_t> advertise_bytes(n);
    for (std::size_t p = 0; p < n; ++p) {
      const auto bytes = encode_advertise(
          {p, clients[p].mask_public_key(), clients[p].encryption_public_key()}, t);
      advertise_bytes[p] = bytes.size();
      out.bytes.advertise += bytes.size();
      const advertisement a = decode_advertise(bytes, t);
      if (a.client != p) {
        rolora::detail::raise<value_error>("secagg: client ", federation_id(p),
                                           "'s advertisement names protocol id ", a.client);
      }
      keys[p] = a.mask_public_key;
      encryption_keys[p] = a.encryption_public_key;
    }
    // The server forwards each party its neighbours' advertisements.
    for (std::size_t p = 0; p < n; ++p) {
      for (std::size_t j : setup.graph.neighbours(p)) out.bytes.key_directory += advertise_bytes[j];
    }

    // Share keys: each bundle sealed to its recipient, up to the server, routed down to it.
    std::vector<bool> shared(n, false);
    for (std::size_t p = 0; p < n; ++p) {
      if (gone(federation_id(p), stage::share_keys)) continue;
      for (const auto& bundle : clients[p].share_out()) {
        const auto bytes =
            encode_sealed_shares(clients[p], bundle, encryption_keys.at(bundle.to), t);
        out.bytes.shares += bytes.size();  // once up to the server, once down to the recipient
        if (gone(federation_id(bundle.to), stage::share_keys)) continue;
        clients[bundle.to].receive(
            decode_sealed_shares(bytes, t, clients[bundle.to], encryption_keys));
      }
      shared[p] = true;
    }
    key_directory masking_set;  // the clients that completed the share stage
    for (std::size_t p = 0; p < n; ++p) {
      if (shared[p]) masking_set[p] = keys[p];
    }

    // Masked inputs.
    std::map<std::size_t, std::vector<std::uint64_t>> masked;
    for (std::size_t p = 0; p < n; ++p) {
      if (!shared[p] || gone(federation_id(p), stage::masked_input)) continue;
      const auto bytes =
          encode_masked_input(p, clients[p].masked(inputs[party[p]].encoding, masking_set), t);
      out.bytes.masked_input += bytes.size();
      auto [from, y] = decode_masked_input(bytes, t, length);
      if (from != p) {
        rolora::detail::raise<value_error>("secagg: client ", federation_id(p),
                                           "'s masked input names protocol id ", from);
      }
      masked[p] = std::move(y);
    }

    // Unmask: the request to every party whose masked input came (the server cannot know who
    // else is gone), the answers of those still there back.
    const unmask_request request = make_request(masking_set, masked);
    const auto request_bytes = encode_unmask_request(request, t);
    std::vector<unmask_answer> answers;
    for (const auto& [p, y] : masked) {
      out.bytes.unmask_request += request_bytes.size();
      if (gone(federation_id(p), stage::unmask)) continue;
      const auto bytes =
          encode_unmask_answer(clients[p].answer(decode_unmask_request(request_bytes, t)), t);
      out.bytes.unmask_answer += bytes.size();
      answers.push_back(decode_unmask_answer(bytes, t));
      if (answers.back().from != p) {
        rolora::detail::raise<value_error>("secagg: client ", federation_id(p),
                                           "'s unmask answer names protocol id ",
                                           answers.back().from);
      }
    }
    const auto sum = unmask_sum(setup, masking_set, masked, answers, length);
    std::vector<std::size_t> in_sum;
    for (const auto& [p, y] : masked) in_sum.push_back(p);
    return finish(sum, in_sum);
  }
};

}  // namespace rolora::secagg
