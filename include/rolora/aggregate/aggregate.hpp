// The server side of a round: check the clients' uploads, weight them, let an aggregator merge
// them, measure how far the merged adapters are from the mean of the clients' products, and
// commit. Either the whole round is applied or, on any error, nothing is.
#pragma once
#include <cmath>
#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>

namespace rolora {

// What a client sends back after local training. In simulation it carries the client's whole
// adapter set; aggregators read only the factors the policy shares this round.
template <backend Backend>
struct client_update {
  std::size_t client = 0;    // client id, used in messages
  double num_samples = 0.0;  // n_i, for sample weighting
  adapter_set<Backend> adapters;
};

// w_i = n_i / sum n (by_samples) or 1 / K (uniform).
enum class weighting { by_samples, uniform };

struct aggregation_result {
  std::vector<double> weights;  // the normalised w_i, in update order
  // ||sum_i w_i B_i A_i - B'A'||_F over all modules (root of the sum of squares), where B'A' is
  // the product a client holds after the round (for FedSA's local B: sum_i w_i B_i A'). Zero for
  // an exact aggregation; NaN when not measured.
  double error = std::nan("");
  double relative_error = std::nan("");  // error / ||sum_i w_i B_i A_i||_F
  std::map<std::string, double> module_error;
};

namespace detail {

template <backend Backend>
void check_factor(const std::string& module, std::size_t client, const char* factor,
                  const typename Backend::matrix& expected, const typename Backend::matrix& got) {
  if (Backend::rows(got) != Backend::rows(expected) ||
      Backend::cols(got) != Backend::cols(expected)) {
    fail<shape_error>("shape_error", "module '", module, "' client ", client, ": ", factor,
                      " expected ", shape_string(Backend::rows(expected), Backend::cols(expected)),
                      ", got ", shape_string(Backend::rows(got), Backend::cols(got)));
  }
  if (!Backend::all_finite(got)) {
    fail<value_error>("value_error", "module '", module, "' client ", client, ": ", factor,
                      " holds non-finite values (NaN or inf)");
  }
}

// Every update has exactly the modules of `global`, with the same shapes and finite values.
template <backend Backend>
void check_updates(const adapter_set<Backend>& global,
                   std::span<const client_update<Backend>> updates) {
  if (updates.empty()) {
    fail<value_error>("value_error", "aggregate: the round has no client update (no client was "
                                     "sampled, or every sampled client dropped out)");
  }
  for (const auto& u : updates) {
    if (u.adapters.size() != global.size()) {
      for (const auto& [name, a] : u.adapters) {
        if (!global.contains(name)) {
          fail<shape_error>("shape_error", "module '", name, "' client ", u.client,
                            ": not a module of the global adapters");
        }
      }
    }
    for (const auto& [name, g] : global) {
      if (!u.adapters.contains(name)) {
        fail<shape_error>("shape_error", "module '", name, "' client ", u.client,
                          ": missing from the update");
      }
      const auto& a = u.adapters.at(name);
      check_factor<Backend>(name, u.client, "lora_A", g.A, a.A);
      check_factor<Backend>(name, u.client, "lora_B", g.B, a.B);
    }
    const auto& mine = u.adapters.modules_to_save();
    for (const auto& [name, w] : global.modules_to_save()) {
      const auto it = mine.find(name);
      if (it == mine.end()) {
        fail<shape_error>("shape_error", "module to save '", name, "' client ", u.client,
                          ": missing from the update");
      }
      check_factor<Backend>(name, u.client, "weight", w, it->second);
    }
    if (mine.size() != global.modules_to_save().size()) {
      for (const auto& [name, w] : mine) {
        if (!global.modules_to_save().count(name)) {
          fail<shape_error>("shape_error", "module to save '", name, "' client ", u.client,
                            ": not a module of the global state");
        }
      }
    }
  }
}

// The sample-weighted mean of the clients' modules to save (PEFT's modules_to_save), in place.
template <backend Backend>
void average_modules_to_save(adapter_set<Backend>& next,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> w) {
  using T = typename Backend::scalar;
  for (auto& [name, weight] : next.modules_to_save()) {
    Backend::scale(T(0), weight);
    for (std::size_t i = 0; i < updates.size(); ++i) {  // fixed order: same bits every run
      Backend::axpy(T(w[i]), updates[i].adapters.modules_to_save().at(name), weight);
    }
  }
}

template <backend Backend>
std::vector<double> normalised_weights(std::span<const client_update<Backend>> updates,
                                       weighting how) {
  std::vector<double> w(updates.size(), 1.0);
  if (how == weighting::by_samples) {
    for (std::size_t i = 0; i < updates.size(); ++i) {
      w[i] = updates[i].num_samples;
      if (!(std::isfinite(w[i]) && w[i] >= 0.0)) {
        fail<value_error>("value_error", "client ", updates[i].client,
                          ": sample count must be finite and >= 0, got ", w[i]);
      }
    }
  }
  double total = 0.0;
  for (double x : w) total += x;
  if (!(total > 0.0)) {
    fail<value_error>("value_error", "aggregate: client weights sum to ", total,
                      "; at least one update must carry samples");
  }
  for (double& x : w) x /= total;
  return w;
}

// ||sum_i w_i B_i A_i - sum_i w_i B'_i A'_i||_F for one module, formed densely as [out, in] in
// the backend's precision, where client i holds (B'_i, A'_i) after the round: the new global
// factors, or its own for factors it keeps local.
template <backend Backend>
std::pair<double, double> module_aggregation_error(const std::string& module,
                                                   std::span<const client_update<Backend>> updates,
                                                   std::span<const double> w,
                                                   const lora_adapter<Backend>& next,
                                                   factor_set keeps_local) {
  using T = typename Backend::scalar;
  auto mean_product = Backend::zeros(next.out_features(), next.in_features());  // [out, in]
  auto after = Backend::zeros(next.out_features(), next.in_features());         // [out, in]
  for (std::size_t i = 0; i < updates.size(); ++i) {
    const auto& a = updates[i].adapters.at(module);
    Backend::gemm(T(w[i]), a.B, op::none, a.A, op::none, T(1), mean_product);
    if (keeps_local.any()) {
      Backend::gemm(T(w[i]), keeps_local.b ? a.B : next.B, op::none,
                    keeps_local.a ? a.A : next.A, op::none, T(1), after);
    }
  }
  if (!keeps_local.any()) Backend::gemm(T(1), next.B, op::none, next.A, op::none, T(0), after);
  const double norm = std::sqrt(double(Backend::dot(mean_product, mean_product)));
  Backend::axpy(T(-1), after, mean_product);
  return {std::sqrt(double(Backend::dot(mean_product, mean_product))), norm};
}

}  // namespace detail

// Runs one server aggregation. On success `global` holds the merged adapters (and, when any factor
// was shared, the weighted mean of the modules to save); if anything throws
// (bad shapes, non-finite values, no update, weights summing to 0), `global` is left exactly as
// it was. `shared` are the factors the clients uploaded, `keeps_local` those they keep (they
// enter only the error measurement).
template <backend Backend, class Aggregator>
aggregation_result aggregate(const Aggregator& aggregator, adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates, factor_set shared,
                             weighting how = weighting::by_samples,
                             factor_set keeps_local = no_factors, bool measure_error = true) {
  static_assert(aggregator_for<Aggregator, Backend>,
                "rolora::aggregate: the Aggregator type does not model rolora::aggregator_for: it "
                "needs `static constexpr std::string_view name` and a const member "
                "`adapter_set<B> merge(const adapter_set<B>&, std::span<const client_update<B>>, "
                "std::span<const double>, factor_set) const` (see core/concepts.hpp)");
  detail::check_updates(global, updates);
  aggregation_result result;
  result.weights = detail::normalised_weights(updates, how);
  adapter_set<Backend> next = aggregator.merge(global, updates, result.weights, shared);
  if (shared.any()) detail::average_modules_to_save(next, updates, result.weights);
  for (const auto& [name, a] : next) {
    if (!Backend::all_finite(a.A) || !Backend::all_finite(a.B)) {
      detail::fail<value_error>("value_error", "module '", name, "': aggregator '",
                                Aggregator::name, "' produced non-finite values");
    }
  }
  if (measure_error) {
    double err2 = 0.0, norm2 = 0.0;
    for (const auto& [name, a] : next) {
      const auto [err, norm] =
          detail::module_aggregation_error(name, updates, result.weights, a, keeps_local);
      result.module_error[name] = err;
      err2 += err * err;
      norm2 += norm * norm;
    }
    result.error = std::sqrt(err2);
    result.relative_error = norm2 > 0.0 ? result.error / std::sqrt(norm2) : 0.0;
  }
  global = std::move(next);
  return result;
}

}  // namespace rolora
