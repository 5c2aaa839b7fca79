// The server side of a round: check the clients' uploads, weight them, let an aggregator merge
// them, measure how far the merged adapters are from the mean of the clients' deltas, and
// commit. Either the whole round is applied or, on any error, nothing is.
// The aggregator contract and its optional members are in core/concepts.hpp.
#pragma once
#include <cmath>
#include <cstddef>
#include <limits>
#include <map>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora {

// What a client sends back after local training (client -> server, answering the download of
// round `round`), and what aggregators merge: the one upload type, from train_locally through
// encode_upload / decode_upload and the server's checks to the aggregator. Aggregators read
// client, num_samples and the factors of `adapters` the policy shares this round; the server
// also reads round, loss and optimizer.
template <backend Backend>
struct client_update {
  std::size_t client = 0;                   // client id, used in messages
  double num_samples = 0.0;                 // n_i, for sample weighting
  adapter_set<Backend> adapters;            // after local training (in simulation: all its factors)
  std::size_t round = 0;                    // the round it answers
  double loss = 0.0;                        // mean loss over its local steps
  optimizer_state<Backend> optimizer = {};  // after local training (kept on request)
  // Client-level DP: whether the client's clip scaled its change (adaptive clipping's bit).
  bool clipped = false;
};

// w_i = n_i / sum n (by_samples) or 1 / K (uniform).
enum class weighting { by_samples, uniform };

struct aggregation_result {
  std::vector<double> weights;  // the normalised w_i, in update order
  // The aggregation error in weight units (the delta s B A added to W0), over all modules (root
  // of the sum of squares):
  //   ||sum_i w_i (s_i B_i A_i + R) - (s' B' A' + R')||_F
  // with (B_i, A_i, s_i) client i's upload, R the residual before the round, and s' B' A' + R' the
  // delta a client holds after the round at the server's rank (for FedSA's local B:
  // sum_i w_i s B_i A' + R'). For scaling 1 and no residual: ||sum_i w_i B_i A_i - B'A'||_F.
  // Zero for an exact aggregation; NaN when not measured.
  double error = std::nan("");
  double relative_error = std::nan("");  // error / ||sum_i w_i s_i B_i A_i||_F
  std::map<std::string, double> module_error;
  // Scalars one client needs to receive to bring its residuals up to date with this round (the
  // aggregator's residual_update_scalars; 0 when the strategy keeps no residual).
  std::size_t residual_scalars = 0;
};

// What check_update holds an update to besides `expected`'s modules and shapes.
struct update_rules {
  // Ranks r_i <= r (aggregators that accept heterogeneous ranks): lora_A [r_i, in] and lora_B
  // [out, r_i] with 1 <= r_i <= r, and a finite non-zero scaling.
  bool lower_ranks = false;
  bool same_scaling = false;          // each module's scaling is exactly the expected one
  std::optional<double> min_samples;  // num_samples finite and >= this (unset: not checked)
  double max_abs_entry = std::numeric_limits<double>::infinity();  // bound on |entry|
};

namespace detail {

// `got` is [rows, cols] with finite entries of magnitude at most `bound` (client `at.client`).
template <backend Backend>
void check_matrix(const std::string& module, error_context at, const char* what, index_t rows,
                  index_t cols, const typename Backend::matrix& got, double bound) {
  if (Backend::rows(got) != rows || Backend::cols(got) != cols) {
    raise<shape_error>(at, "module '", module, "' client ", *at.client, ": ", what, " expected ",
                       shape_string(rows, cols), ", got ",
                       shape_string(Backend::rows(got), Backend::cols(got)));
  }
  if (!Backend::all_finite(got)) {
    raise<value_error>(at, "module '", module, "' client ", *at.client, ": ", what,
                       " holds non-finite values (NaN or inf)");
  }
  if (bound < std::numeric_limits<double>::infinity()) {
    const auto host = Backend::to_host(got);
    const double largest = host.size() ? double(host.cwiseAbs().maxCoeff()) : 0.0;
    if (largest > bound) {
      raise<value_error>(at, "module '", module, "' client ", *at.client, ": ", what,
                         " holds an entry of magnitude ", largest,
                         ", above max_abs_entry = ", bound);
    }
  }
}

// The one check of an update, as hostile input: throws (shape_error or value_error naming the
// module and the client, with the client in error::client()) unless `u` has exactly the modules
// and modules to save of `expected`, at their shapes (or lower ranks, by `rules`), with finite
// entries, and the sample count and scalings `rules` asks for.
template <backend Backend>
void check_update(const adapter_set<Backend>& expected, const client_update<Backend>& u,
                  const update_rules& rules) {
  const std::size_t c = u.client;
  const error_context at = error_context::of_client(c);
  const double bound = rules.max_abs_entry;
  if (rules.min_samples && !(std::isfinite(u.num_samples) && u.num_samples >= *rules.min_samples)) {
    raise<value_error>(at, "client ", c,
                       ": sample count must be finite and >= ", *rules.min_samples, ", got ",
                       u.num_samples);
  }
  for (const auto& [name, a] : u.adapters) {
    if (!expected.contains(name)) {
      raise<shape_error>(at, "module '", name, "' client ", c,
                         ": not a module of the global adapters");
    }
  }
  for (const auto& [name, e] : expected) {
    if (!u.adapters.contains(name)) {
      raise<shape_error>(at, "module '", name, "' client ", c, ": missing from the update");
    }
    const auto& a = u.adapters.at(name);
    index_t r = e.rank();
    if (rules.lower_ranks) {
      r = a.rank();
      if (r < 1 || r > e.rank() || a.in_features() != e.in_features()) {
        raise<shape_error>(at, "module '", name, "' client ", c, ": lora_A expected [r_i, ",
                           e.in_features(), "] with 1 <= r_i <= ", e.rank(), ", got ",
                           shape_string(r, a.in_features()));
      }
    }
    check_matrix<Backend>(name, at, "lora_A", r, e.in_features(), a.A, bound);
    check_matrix<Backend>(name, at, "lora_B", e.out_features(), r, a.B, bound);
    if (rules.same_scaling && a.scaling != e.scaling) {
      raise<value_error>(at, "module '", name, "' client ", c, ": scaling ", double(a.scaling),
                         ", expected the downloaded ", double(e.scaling));
    }
    if (rules.lower_ranks && (!std::isfinite(double(a.scaling)) || a.scaling == 0)) {
      raise<value_error>(at, "module '", name, "' client ", c,
                         ": scaling must be finite and non-zero, got ", double(a.scaling));
    }
  }
  const auto& mine = u.adapters.modules_to_save();
  for (const auto& [name, w] : mine) {
    if (!expected.modules_to_save().count(name)) {
      raise<shape_error>(at, "module to save '", name, "' client ", c,
                         ": not a module of the global state");
    }
  }
  for (const auto& [name, w] : expected.modules_to_save()) {
    const auto it = mine.find(name);
    if (it == mine.end()) {
      raise<shape_error>(at, "module to save '", name, "' client ", c, ": missing from the update");
    }
    check_matrix<Backend>(name, at, "weight", Backend::rows(w), Backend::cols(w), it->second,
                          bound);
  }
}

// A round's updates for rolora::aggregate: at least one, each passing check_update against the
// global adapters.
template <backend Backend>
void check_updates(const adapter_set<Backend>& global,
                   std::span<const client_update<Backend>> updates,
                   const update_rules& rules = {}) {
  if (updates.empty()) {
    raise<value_error>(
        "aggregate: the round has no client update (no client was "
        "sampled, or every sampled client dropped out)");
  }
  for (const auto& u : updates) check_update(global, u, rules);
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
  if (how == weighting::by_samples) {  // each count finite and >= 0: check_update
    for (std::size_t i = 0; i < updates.size(); ++i) w[i] = updates[i].num_samples;
  }
  double total = 0.0;
  for (double x : w) total += x;
  if (!(total > 0.0)) {
    raise<value_error>("aggregate: client weights sum to ", total,
                       "; at least one update must carry samples");
  }
  for (double& x : w) x /= total;
  return w;
}

// The error and the norm of aggregation_result for one module, formed densely as [out, in] in
// the backend's precision: client i's delta before is s_i B_i A_i + R (R = before.residual), after
// the round s' B' A' + R' (from `next`), or its own factor for one it keeps local (with the other
// one truncated to its rank, as it will download it).
template <backend Backend>
std::pair<double, double> module_aggregation_error(const std::string& module,
                                                   std::span<const client_update<Backend>> updates,
                                                   std::span<const double> w,
                                                   const lora_adapter<Backend>& before,
                                                   const lora_adapter<Backend>& next,
                                                   factor_set keeps_local) {
  using T = typename Backend::scalar;
  auto mean_delta = Backend::zeros(next.out_features(), next.in_features());  // [out, in]
  auto after = Backend::zeros(next.out_features(), next.in_features());       // [out, in]
  for (std::size_t i = 0; i < updates.size(); ++i) {
    const auto& a = updates[i].adapters.at(module);
    Backend::gemm(T(w[i]) * a.scaling, a.B, op::none, a.A, op::none, T(1), mean_delta);
    if (keeps_local.any()) {
      auto [na, nb] =
          resize_rank<Backend>(next.A, next.B, double(next.scaling), a.rank(), double(a.scaling));
      Backend::gemm(T(w[i]) * a.scaling, keeps_local.b ? a.B : nb, op::none,
                    keeps_local.a ? a.A : na, op::none, T(1), after);
    }
  }
  if (!keeps_local.any())
    Backend::gemm(next.scaling, next.B, op::none, next.A, op::none, T(0), after);
  if (next.has_residual()) Backend::axpy(T(1), next.residual, after);
  if (before.has_residual()) Backend::axpy(T(-1), before.residual, after);
  const double norm = std::sqrt(double(Backend::dot(mean_delta, mean_delta)));
  Backend::axpy(T(-1), after, mean_delta);
  return {std::sqrt(double(Backend::dot(mean_delta, mean_delta))), norm};
}

}  // namespace detail

// How rolora::aggregate weighs, measures and labels a round (every field has a default).
struct aggregation_options {
  weighting client_weighting = weighting::by_samples;
  factor_set keeps_local = no_factors;  // factors the clients keep: enter only the error measure
  bool measure_error = true;            // false: aggregation_result::error stays NaN
  std::size_t round = 0;                // passed to round-aware aggregators
};

namespace detail {

// Refuses a merge with a non-finite factor or residual, naming the module and the aggregator.
template <class Aggregator, backend Backend>
void check_finite_merge(const adapter_set<Backend>& next) {
  for (const auto& [name, a] : next) {
    if (!Backend::all_finite(a.A) || !Backend::all_finite(a.B) ||
        (a.has_residual() && !Backend::all_finite(a.residual))) {
      raise<value_error>("module '", name, "': aggregator '", Aggregator::name,
                         "' produced non-finite values");
    }
  }
}

// rolora::aggregate on updates already checked (check_updates, or the server's checks).
template <backend Backend, class Aggregator>
aggregation_result merge_checked(const Aggregator& aggregator, adapter_set<Backend>& global,
                                 std::span<const client_update<Backend>> updates, factor_set shared,
                                 const aggregation_options& options) {
  aggregation_result result;
  result.weights = normalised_weights(updates, options.client_weighting);
  const std::span<const double> w(result.weights);
  adapter_set<Backend> next = [&] {
    if constexpr (round_aware_aggregator<Aggregator, Backend>) {
      return aggregator.merge(global, updates, w, shared, options.round);
    } else {
      return aggregator.merge(global, updates, w, shared);
    }
  }();
  if constexpr (residual_tracking_aggregator<Aggregator, Backend>) {
    result.residual_scalars = aggregator.residual_update_scalars(global, updates, shared);
  }
  if (shared.any()) average_modules_to_save(next, updates, result.weights);
  check_finite_merge<Aggregator>(next);
  if (options.measure_error) {
    double err2 = 0.0, norm2 = 0.0;
    for (const auto& [name, a] : next) {
      const auto [err, norm] =
          module_aggregation_error(name, updates, w, global.at(name), a, options.keeps_local);
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

}  // namespace detail

// Runs one server aggregation. On success `global` holds the merged adapters (and, when any factor
// was shared, the weighted mean of the modules to save); if anything throws
// (bad shapes, non-finite values, no update, weights summing to 0), `global` is left exactly as
// it was. `shared` are the factors the clients uploaded. Each update passes detail::check_update
// against `global` (heterogeneous-rank aggregators: at ranks r_i <= r; weighting by samples:
// counts finite and >= 0).
template <backend Backend, class Aggregator>
aggregation_result aggregate(const Aggregator& aggregator, adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates, factor_set shared,
                             const aggregation_options& options = {}) {
  static_assert(aggregator_for<Aggregator, Backend>,
                "rolora::aggregate: the Aggregator type does not model rolora::aggregator_for: it "
                "needs `static constexpr std::string_view name` and a const member "
                "`adapter_set<B> merge(const adapter_set<B>&, std::span<const client_update<B>>, "
                "std::span<const double>, factor_set) const` (see core/concepts.hpp)");
  update_rules rules;
  rules.lower_ranks = heterogeneous_rank_aggregator<Aggregator>;
  if (options.client_weighting == weighting::by_samples) rules.min_samples = 0.0;
  detail::check_updates(global, updates, rules);
  return detail::merge_checked(aggregator, global, updates, shared, options);
}

}  // namespace rolora
