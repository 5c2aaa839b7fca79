// factorwise<Reduce>: a whole aggregator from a reducer of one factor's client copies.
//
// Most robust or weighted aggregators treat each factor of each module on its own: the next
// global A of a module is some function of the clients' A (the same for B). factorwise writes
// the rest once -- the loop over modules and shared factors, the gathering of the copies, the
// host round trip when wanted, keeping the factors that were not shared -- so a new aggregator
// is just its reducer (the factor_reducer contract, core/concepts.hpp):
//
//   on the host:     host_matrix<T> operator()(std::span<const host_matrix<T>> copies,
//                                              std::span<const double> weights) const
//   on the backend:  template <backend B>
//                    void operator()(std::span<const typename B::matrix* const> copies,
//                                    std::span<const double> weights, typename B::matrix& out)
//                                    const
//                    (out holds the global factor; the reducer overwrites it)
//
// copies are the clients' copies of one factor, in update order, all of the global factor's
// shape (rolora::aggregate checked them); weights are the clients' w_i. The reducer's static
// constexpr `name` names the aggregator. fedavg is factorwise<weighted_mean>.
#pragma once
#include <cstddef>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace rolora {

struct weighted_mean;

template <class Reduce>
struct factorwise {
  static constexpr std::string_view name = Reduce::name;
  // A mean of the uploaded factors (mean_of_factors_aggregator, client-level DP) only for the
  // weighted mean; a median or trimmed mean is not.
  static constexpr bool mean_of_factors = std::is_same_v<Reduce, weighted_mean>;
  Reduce reduce{};

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    static_assert(factor_reducer<Reduce, Backend>,
                  "rolora::factorwise: the Reduce type does not model rolora::factor_reducer: it "
                  "needs `static constexpr std::string_view name` and a const call operator, "
                  "`host_matrix<T>(std::span<const host_matrix<T>>, std::span<const double>)` "
                  "or `template <backend B> void(std::span<const typename B::matrix* const>, "
                  "std::span<const double>, typename B::matrix&)` (see core/concepts.hpp)");
    adapter_set<Backend> next = global;
    for (auto& [module, g] : next) {
      if (shared.a) reduce_factor(module, &lora_adapter<Backend>::A, updates, weights, g.A);
      if (shared.b) reduce_factor(module, &lora_adapter<Backend>::B, updates, weights, g.B);
    }
    return next;
  }

 private:
  template <backend Backend>
  void reduce_factor(const std::string& module,
                     typename Backend::matrix lora_adapter<Backend>::*factor,
                     std::span<const client_update<Backend>> updates,
                     std::span<const double> weights, typename Backend::matrix& out) const {
    using T = typename Backend::scalar;
    if constexpr (backend_factor_reducer<Reduce, Backend>) {
      std::vector<const typename Backend::matrix*> copies;
      copies.reserve(updates.size());
      for (const auto& u : updates) copies.push_back(&(u.adapters.at(module).*factor));
      reduce.template operator()<Backend>(std::span<const typename Backend::matrix* const>(copies),
                                          weights, out);
    } else {
      std::vector<host_matrix<T>> copies;
      copies.reserve(updates.size());
      for (const auto& u : updates)
        copies.push_back(Backend::to_host(u.adapters.at(module).*factor));
      out = Backend::from_host(reduce(std::span<const host_matrix<T>>(copies), weights));
    }
  }
};

// The weighted mean sum_i w_i X_i, on the backend, clients summed in update order (the same bits
// on every run). factorwise<weighted_mean> is fedavg.
struct weighted_mean {
  static constexpr std::string_view name = "weighted_mean";

  template <backend Backend>
  void operator()(std::span<const typename Backend::matrix* const> copies,
                  std::span<const double> weights, typename Backend::matrix& out) const {
    using T = typename Backend::scalar;
    Backend::scale(T(0), out);
    for (std::size_t i = 0; i < copies.size(); ++i) Backend::axpy(T(weights[i]), *copies[i], out);
  }
};

}  // namespace rolora
