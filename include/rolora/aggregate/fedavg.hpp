// FedAvg of LoRA factors (McMahan et al. 2017 applied factor-wise): the weighted mean of each
// uploaded factor. Exact (mean of products) exactly when at most one factor varies across clients.
#pragma once
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/factorwise.hpp>
#include <rolora/aggregate/low_rank.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string_view>

namespace rolora {

// The weighted mean of each shared factor, factor by factor (aggregate/factorwise.hpp).
struct fedavg : factorwise<weighted_mean> {
  static constexpr std::string_view name = "fedavg";
};

// HetLoRA's aggregation (Cho et al. 2024): clients of rank r_i <= r upload, the server zero-pads
// their factors to r at its own scaling (B_pad = (s_i / s) [B_i, 0], A_pad = [A_i; 0], exact on
// each client's delta) and takes the weighted mean of each factor, as fedavg. Clients download
// the first r_i components back (truncate_rank). With every r_i = r it is fedavg, bit for bit.
struct padded_fedavg {
  static constexpr std::string_view name = "padded_fedavg";
  static constexpr bool accepts_heterogeneous_ranks = true;

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    adapter_set<Backend> next = global;
    for (auto& [module, g] : next) detail::average_factors(g, module, updates, weights, shared);
    return next;
  }
};

// Wraps another aggregator: after it merged A, the rows of A are made orthonormal (QR) and the
// triangular factor is moved into B, so that B A is unchanged: with A_old = L A_new,
// B_new = B L. RoLoRA's server step for the linear model (Chen et al. 2024, Algorithm 2), made
// product-preserving.
template <class Inner = fedavg>
struct orthonormalize_a {
  static constexpr std::string_view name = "orthonormalize_a";
  static constexpr bool accepts_heterogeneous_ranks = heterogeneous_rank_aggregator<Inner>;
  // Post-processing of the inner merge: a mean of factors when the inner one is (client DP).
  static constexpr bool mean_of_factors = mean_of_factors_aggregator<Inner>;
  Inner inner{};

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    using T = typename Backend::scalar;
    adapter_set<Backend> next = inner.merge(global, updates, weights, shared);
    if (!shared.a) return next;
    for (auto& [module, g] : next) {
      const auto l = Backend::orthonormalize_rows(g.A);  // [r, r]: A_old = L A_new
      auto b = g.B;                                      // [out, r]
      Backend::gemm(T(1), b, op::none, l, op::none, T(0), g.B);
    }
    return next;
  }
};

}  // namespace rolora
