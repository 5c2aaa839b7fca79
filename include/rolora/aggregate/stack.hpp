// FLoRA's aggregation (Wang et al. 2024): stack the clients' factors,
//   B_stack = [B_1 ... B_K] [out, R],  A_stack = [c_1 A_1; ...; c_K A_K] [R, in],  c_i = w_i s_i /
//   s,
// so that s B_stack A_stack = sum_i w_i s_i B_i A_i exactly (any ranks r_i, R = sum_i r_i), merge
// that product into the base weight -- here the adapters' dense residual, which every client
// applies -- and re-initialise the adapters: A from the adapter-init stream (sub-stream
// (module index, round + 1), `init` as at the start), B = 0. Exact to rounding.
//
// Wire: FLoRA sends the stacked factors, (out + in) R scalars per module, so a client's download
// grows with the number of clients K (residual_update_scalars; the federation charges a client
// the increments it missed, at most the dense residual). The re-initialised A and B = 0 could be
// regenerated from the seed, but are counted as downloaded like any synced factor.
//
// In a round that shares one factor the mean of that factor is exact and is taken instead
// (zero-padded as padded_fedavg); nothing is merged or re-initialised then.
#pragma once
#include <cstddef>
#include <cstdint>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/config.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/low_rank.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string_view>

namespace rolora {

struct flora_stack {
  static constexpr std::string_view name = "flora_stack";
  static constexpr bool accepts_heterogeneous_ranks = true;

  std::uint64_t seed = 0;  // adapter-init seed of the re-initialisations (use the initial one's)
  lora_init init = lora_init::kaiming_uniform;

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared,
                             std::size_t round) const {
    using T = typename Backend::scalar;
    adapter_set<Backend> next = global;
    std::uint32_t k = 0;  // module index in name order, as adapter_set's constructor draws
    for (auto& [module, g] : next) {
      if (!(shared.a && shared.b)) {
        detail::average_factors(g, module, updates, weights, shared);
        continue;
      }
      const auto st = detail::stack_factors(module, updates, weights, double(g.scaling), false);
      if (!g.has_residual()) g.residual = Backend::zeros(g.out_features(), g.in_features());
      Backend::gemm(g.scaling, st.b, op::none, st.a, op::none, T(1), g.residual);  // [out, in]
      auto fresh =
          make_lora<Backend>(module, g.out_features(), g.in_features(), g.rank(), double(g.scaling),
                             init, seed, k++, static_cast<std::uint32_t>(round + 1));
      g.A = std::move(fresh.A);
      g.B = std::move(fresh.B);
    }
    return next;
  }

  // Called without a round (outside a federation): the re-initialisation of round 0.
  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    return merge(global, updates, weights, shared, 0);
  }

  // The stacked factors of every module: (out + in) sum_i r_i scalars.
  template <backend Backend>
  std::size_t residual_update_scalars(const adapter_set<Backend>& global,
                                      std::span<const client_update<Backend>> updates,
                                      factor_set shared) const {
    if (!(shared.a && shared.b)) return 0;
    std::size_t n = 0;
    for (const auto& [module, g] : global) {
      for (const auto& u : updates) {
        n += std::size_t((g.out_features() + g.in_features()) * u.adapters.at(module).rank());
      }
    }
    return n;
  }
};

}  // namespace rolora
