// FedEx-LoRA's aggregation (Singhal et al. 2025): the factor-wise weighted mean (fedavg) plus the
// part of the mean delta it misses, folded into the adapters' dense residual,
//   B' = sum_i w_i B_i,  A' = sum_i w_i A_i,
//   R' = R + sum_i w_i s_i B_i A_i - s B' A',
// so that s B' A' + R' = sum_i w_i s_i B_i A_i + R: exact to rounding. (Clients of rank r_i < r
// enter zero-padded at the server's scaling.) The correction is dense and so is its download:
// out x in scalars per module per round (residual_update_scalars), on top of the factors.
// Cost: one GEMM of inner dimension sum_i r_i and one of inner dimension r, out x in each.
//
// In a round that shares one factor the factor-wise mean is already exact: no correction.
#pragma once
#include <cstddef>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/low_rank.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string>
#include <string_view>

namespace rolora {

struct fedex_residual {
  static constexpr std::string_view name = "fedex_residual";
  static constexpr bool accepts_heterogeneous_ranks = true;
  static constexpr bool mean_of_products = true;  // product_mean_aggregator: secure aggregation

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    using T = typename Backend::scalar;
    adapter_set<Backend> next = global;
    for (auto& [module, g] : next) {
      detail::average_factors(g, module, updates, weights, shared);
      if (!(shared.a && shared.b)) continue;
      const auto st = detail::stack_factors(module, updates, weights, double(g.scaling), false);
      if (!g.has_residual()) g.residual = Backend::zeros(g.out_features(), g.in_features());
      Backend::gemm(g.scaling, st.b, op::none, st.a, op::none, T(1), g.residual);  // + mean delta
      Backend::gemm(-g.scaling, g.B, op::none, g.A, op::none, T(1), g.residual);   // - s B' A'
    }
    return next;
  }

  // The same from the clients' means (product_mean_aggregator): the mean factors, and the mean
  // product minus s B' A' into the residual.
  template <backend Backend>
  adapter_set<Backend> merge_means(const adapter_set<Backend>&, const adapter_set<Backend>& mean,
                                   const std::map<std::string, typename Backend::matrix>& products,
                                   factor_set shared) const {
    using T = typename Backend::scalar;
    adapter_set<Backend> next = mean;
    if (!(shared.a && shared.b)) return next;
    for (auto& [module, g] : next) {
      if (!g.has_residual()) g.residual = Backend::zeros(g.out_features(), g.in_features());
      Backend::axpy(T(1), products.at(module), g.residual);                       // + mean delta
      Backend::gemm(-g.scaling, g.B, op::none, g.A, op::none, T(1), g.residual);  // - s B' A'
    }
    return next;
  }

  // The dense correction of every module: out x in scalars.
  template <backend Backend>
  std::size_t residual_update_scalars(const adapter_set<Backend>& global,
                                      std::span<const client_update<Backend>>,
                                      factor_set shared) const {
    if (!(shared.a && shared.b)) return 0;
    std::size_t n = 0;
    for (const auto& [module, g] : global) n += std::size_t(g.out_features() * g.in_features());
    return n;
  }
};

}  // namespace rolora
