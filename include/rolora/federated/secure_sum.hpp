// What the server of a secure-aggregation round sees instead of the clients' uploads: one sum.
// No cryptography here (that is rolora/secagg/, with libsodium); this header fixes the vector a
// client puts under its masks and how the server reads the sum back (federated/server.hpp).
//
// A client's input, flattened (secure_input): its weighted change w (X - G) over the factors the
// round shares (every module in name order, A then B) and the modules to save, in the order of
// privacy::detail::for_each_noised, then for an aggregator that needs the products
// (product_mean_aggregator: FlexLoRA, FedEx-LoRA) in a round that shares both factors the dense
// change of each module's product w s (B A - B_G A_G) [out, in] (name order, column-major),
// then its weight w (its sample count, or 1 under uniform
// weighting), then under adaptive clipping its unclipped bit (1 when its update was not clipped;
// federation_server::secure_clip_bits). The server gets sum_c w_c (X_c - G), sum_c w_c and the
// count of unclipped updates over the clients whose masked input arrived, and nothing about any
// one of them: the merged update is G + sum / sum w, or under client-level DP the noised mean of
// the summed clipped changes, and adaptive clipping's step reads the count.
#pragma once
#include <cstddef>
#include <map>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora {

// What a secure-aggregation round hands the server's complete_round.
struct secure_sum {
  std::vector<std::size_t> summed;  // clients whose masked input is in the sum, increasing
  std::vector<double> sum;          // sum of the summed clients' secure_input vectors, decoded
  // Each summed client's mean training loss: travels in the clear (docs/privacy.md).
  std::vector<double> losses;
  std::vector<rejected_update> rejected;  // clients whose own checks refused their update
  std::size_t clipped = 0;  // coordinates the encoding's range clipped, summed over the clients
  secagg_traffic bytes;
};

namespace detail {

// The number of coordinates of a client's change under `shared` (the length of secure_input
// minus the weight), without the products.
template <backend Backend>
std::size_t change_length(const adapter_set<Backend>& global, factor_set shared) {
  client_update<Backend> scratch;
  scratch.adapters = global;
  std::size_t n = 0;
  privacy::detail::for_each_noised(scratch, global, shared, [&](auto&, const auto& g, auto) {
    n += std::size_t(Backend::rows(g)) * std::size_t(Backend::cols(g));
  });
  return n;
}
// The number of coordinates of the products' change: out x in for every module.
template <backend Backend>
std::size_t products_length(const adapter_set<Backend>& global) {
  std::size_t n = 0;
  for (const auto& [name, g] : global) n += std::size_t(g.out_features() * g.in_features());
  return n;
}
// s B A of one module, on the host in double [out, in].
template <backend Backend>
host_matrix<double> scaled_product(const lora_adapter<Backend>& a) {
  return double(a.scaling) * (Backend::to_host(a.B).template cast<double>() *
                              Backend::to_host(a.A).template cast<double>());
}

}  // namespace detail

// A client's input to the secure sum: w (X - G) flattened, with `products` the change of the
// products, then w, then with `clip_bit` its unclipped bit (the layout at the top). `download`
// is the client's view G, `u` its checked upload.
template <backend Backend>
std::vector<double> secure_input(const adapter_set<Backend>& download,
                                 const client_update<Backend>& u, factor_set shared, double w,
                                 bool clip_bit = false, bool products = false) {
  std::vector<double> v;
  client_update<Backend> scratch;
  scratch.adapters = download;
  privacy::detail::for_each_noised(
      scratch, download, shared, [&](auto&, const auto& g, auto member) {
        const host_matrix<double> gh = Backend::to_host(g).template cast<double>();
        const host_matrix<double> xh = Backend::to_host(member(u)).template cast<double>();
        for (index_t i = 0; i < gh.size(); ++i) v.push_back(w * (xh.data()[i] - gh.data()[i]));
      });
  if (products) {
    for (const auto& [name, g] : download) {
      const host_matrix<double> d =
          detail::scaled_product(u.adapters.at(name)) - detail::scaled_product(g);
      for (index_t i = 0; i < d.size(); ++i) v.push_back(w * d.data()[i]);
    }
  }
  v.push_back(w);
  if (clip_bit) v.push_back(u.clipped ? 0.0 : 1.0);
  return v;
}

// The update G + scale * change, `change` in the flattened order of secure_input (without the
// weight): the one update the server merges.
template <backend Backend>
client_update<Backend> update_from_change(const adapter_set<Backend>& global, factor_set shared,
                                          std::span<const double> change, double scale,
                                          std::size_t round) {
  using T = typename Backend::scalar;
  if (change.size() != detail::change_length(global, shared)) {
    detail::raise<shape_error>("secure sum: ", change.size(), " coordinates, expected ",
                               detail::change_length(global, shared));
  }
  client_update<Backend> mean;
  mean.num_samples = 1.0;
  mean.round = round;
  mean.adapters = global;
  std::size_t k = 0;
  privacy::detail::for_each_noised(mean, global, shared, [&](auto& out, const auto& g, auto) {
    const host_matrix<double> gh = Backend::to_host(g).template cast<double>();
    host_matrix<T> h(gh.rows(), gh.cols());
    for (index_t i = 0; i < gh.size(); ++i) h.data()[i] = T(gh.data()[i] + scale * change[k++]);
    out = Backend::from_host(h);
  });
  return mean;
}

// The mean products s_G B_G A_G + scale * change per module, `change` in secure_input's order
// of the products: what product_mean_aggregator::merge_means reads.
template <backend Backend>
std::map<std::string, typename Backend::matrix> products_from_change(
    const adapter_set<Backend>& global, std::span<const double> change, double scale) {
  using T = typename Backend::scalar;
  if (change.size() != detail::products_length(global)) {
    detail::raise<shape_error>("secure sum: ", change.size(), " product coordinates, expected ",
                               detail::products_length(global));
  }
  std::map<std::string, typename Backend::matrix> out;
  std::size_t k = 0;
  for (const auto& [name, g] : global) {
    host_matrix<double> p = detail::scaled_product(g);
    for (index_t i = 0; i < p.size(); ++i) p.data()[i] += scale * change[k++];
    out.emplace(name, Backend::from_host(host_matrix<T>(p.template cast<T>())));
  }
  return out;
}

}  // namespace rolora
