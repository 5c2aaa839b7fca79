// FlexLoRA's aggregation (Bai et al. 2024): the weighted mean of the clients' deltas,
//   dW = sum_i w_i s_i B_i A_i,
// truncated to the server's rank r by SVD and split evenly between the factors,
//   s B' = U_r sqrt(S_r),  A' = sqrt(S_r) V_r^T   (dW = U S V^T),
// so s B' A' is the best rank-r approximation of dW (Eckart-Young): exact when sum_i r_i <= r.
// The dense out x in SVD is never taken while R = sum_i r_i <= min(out, in): QRs of the stacked
// factors and an SVD of the R x R core give the same factors (detail::best_rank_r_factors).
// Components come in decreasing singular value, so a client of rank r_i < r that downloads the
// first r_i of them (truncate_rank) gets the best rank-r_i approximation: FlexLoRA's per-client
// SVD truncation. Accepts heterogeneous ranks.
//
// Only when both factors are shared is there a product to re-split; in a round that shares one
// factor, the mean of that factor is already the mean of the products (the other is common), and
// svd_resplit takes it (zero-padded as padded_fedavg).
#pragma once
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/low_rank.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string>
#include <string_view>

namespace rolora {

struct svd_resplit {
  static constexpr std::string_view name = "svd_resplit";
  static constexpr bool accepts_heterogeneous_ranks = true;
  static constexpr bool mean_of_products = true;  // product_mean_aggregator: secure aggregation

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    adapter_set<Backend> next = global;
    for (auto& [module, g] : next) {
      if (!(shared.a && shared.b)) {
        detail::average_factors(g, module, updates, weights, shared);
        continue;
      }
      auto st = detail::stack_factors(module, updates, weights, double(g.scaling), true);
      auto [a, b] =
          detail::best_rank_r_factors<Backend>(std::move(st.b), std::move(st.a), g.rank());
      g.A = std::move(a);  // [r, in]
      g.B = std::move(b);  // [out, r]
    }
    return next;
  }

  // The same from the clients' means (product_mean_aggregator): the best rank-r factors of the
  // mean product, by a dense SVD (the stacked factors are not there to be had).
  template <backend Backend>
  adapter_set<Backend> merge_means(const adapter_set<Backend>&, const adapter_set<Backend>& mean,
                                   const std::map<std::string, typename Backend::matrix>& products,
                                   factor_set shared) const {
    adapter_set<Backend> next = mean;
    if (!(shared.a && shared.b)) return next;
    for (auto& [module, g] : next) {
      auto [a, b] = detail::best_rank_r_of_dense<Backend>(
          Backend::to_host(products.at(module)).template cast<double>() / double(g.scaling),
          g.rank());
      g.A = std::move(a);  // [r, in]
      g.B = std::move(b);  // [out, r]
    }
    return next;
  }
};

}  // namespace rolora
