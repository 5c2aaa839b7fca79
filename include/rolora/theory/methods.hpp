// The federated methods of the paper's linear-regression analysis, and the other aggregation
// strategies on the same footing, run through rolora::federation:
//   RoLoRA-linear  = federation<B, alternating, orthonormalize_a<fedavg>>: a B round where each
//                    client solves B exactly (least squares given A), then an A round of tau
//                    gradient steps with step eta; the server averages A and orthonormalises
//                    its rows (Chen et al. 2024, Algorithm 2).
//   FFA-LoRA-linear = federation<B, freeze_a, fedavg>: A stays at its initialisation, B solved
//                    exactly each round.
//   FedIT-linear   = federation<B, train_both, fedavg>: tau gradient steps on both factors,
//                    factor-wise averaging.
//   FedSA-LoRA, FlexLoRA, FLoRA, FedEx-LoRA, FedRot-LoRA: FedIT's local steps with the fedsa
//                    policy (B stays local), or with the svd_resplit, stack, residual and
//                    procrustes aggregators (docs/aggregators.md).
// One iteration is one B round plus one A round for RoLoRA and one round for the others, so that
// every method uploads both factors' worth of numbers per iteration (FFA and FedSA: one factor).
// Measurements use what the clients hold: the mean of their deltas s B A + residual (FedSA: each
// with its own B), and for sin theta the row space of A, or, once a residual carries part of the
// model, the top-r right singular vectors of that mean delta.
#pragma once
#include <cmath>
#include <cstddef>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/procrustes.hpp>
#include <rolora/aggregate/residual.hpp>
#include <rolora/aggregate/stack.hpp>
#include <rolora/aggregate/svd_resplit.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/policy/policies.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::theory {

enum class method { rolora, ffa, fedit, fedsa, flexlora, flora, fedex, fedrot };

inline constexpr method all_methods[] = {method::rolora, method::ffa,      method::fedit,
                                         method::fedsa,  method::flexlora, method::flora,
                                         method::fedex,  method::fedrot};

inline std::string_view method_name(method m) {
  switch (m) {
    case method::rolora:
      return "rolora";
    case method::ffa:
      return "ffa";
    case method::fedit:
      return "fedit";
    case method::fedsa:
      return "fedsa";
    case method::flexlora:
      return "flexlora";
    case method::flora:
      return "flora";
    case method::fedex:
      return "fedex";
    case method::fedrot:
      return "fedrot";
  }
  return "?";
}

struct method_options {
  std::size_t iterations = 30;
  double eta = 0.5;                  // gradient step on A (and on B for FedIT)
  std::size_t local_steps = 1;       // tau
  std::optional<double> init_angle;  // sin theta(A0, reference); default: A0 random
  std::size_t threads = 1;
  std::uint64_t seed = 0;  // adapter init (A0) and the federation's streams
  bad_update_policy on_bad_update = bad_update_policy::fail;
  std::size_t min_clients = 1;
  // Client-level DP (privacy/client_dp.hpp): every method whose aggregate is a mean of factors
  // (RoLoRA, FFA-LoRA, FedIT, FedSA-LoRA's A); the others are refused with a config_error.
  std::optional<privacy::client_dp> dp = std::nullopt;
  // Sample-level DP-SGD inside each client (privacy/dp_sgd.hpp), with minibatches of
  // batch_size (0: all m samples; q = batch_size / m). Every method composes (the server only
  // post-processes DP uploads); RoLoRA's and FFA-LoRA's B rounds then take gradient steps, since
  // the exact least-squares B sees every example unclipped.
  std::optional<privacy::sample_dp> sample_dp = std::nullopt;
  std::size_t batch_size = 0;
  // Secure aggregation (federated/secure_sum.hpp): carried by hooks.run_round over
  // rolora::secagg::in_process; RoLoRA, FFA-LoRA and FedIT (the means of factors).
  std::optional<secagg_config> secure_aggregation = std::nullopt;
};

// Rounds per iteration: 2 for RoLoRA (a B round and an A round), 1 for the others.
inline std::size_t rounds_per_iteration(method m) { return m == method::rolora ? 2 : 1; }

// The state after each iteration (iteration 0: the initial state).
struct iteration_record {
  std::size_t iteration = 0;
  double sin_theta = 0.0;          // subspace distance of A's rows to the reference rows
  double loss = 0.0;               // global training loss sum_i w_i f_i
  double aggregation_error = 0.0;  // largest of the iteration's rounds (weight units)
  double gap_to_optimum = 0.0;     // ||B A - optimum||_F / ||optimum||_F
  std::size_t bytes_up = 0;        // cumulative upload, all clients
  std::size_t bytes_down = 0;      // cumulative download, all clients (residual updates included)
  std::optional<double> epsilon = std::nullopt;  // client DP: spent after the iteration's rounds
};

// A0 [r, d]: orthonormal rows, random, or at sin theta = init_angle from `reference` (every
// principal angle equal): A0 = sqrt(1 - delta^2) A_ref + delta U with U orthonormal rows
// orthogonal to A_ref.
inline host initial_a(const host& reference, std::optional<double> init_angle, std::uint64_t seed) {
  const index_t r = reference.rows(), d = reference.cols();
  const host g = detail::gaussian(r, d, random_stream(seed, stream::adapter_init));
  if (!init_angle) return detail::orthonormal_rows(g);
  const double delta = *init_angle;
  if (!(delta >= 0.0 && delta <= 1.0) || 2 * r > d) {
    rolora::detail::raise<config_error>("init_angle must be in [0, 1] and needs 2 r <= d, got ",
                                        delta, " with r = ", r, ", d = ", d);
  }
  const host q_ref = detail::orthonormal_rows(reference);
  const host u = detail::orthonormal_rows(g - (g * q_ref.transpose()) * q_ref);
  return std::sqrt(1.0 - delta * delta) * q_ref + delta * u;
}

namespace detail {

template <backend Backend, class Federation>
iteration_record measure(const linear_problem<Backend>& p,
                         std::vector<linear_regression_task<Backend>>& clients,
                         const Federation& fed, std::size_t iteration) {
  const auto& g = fed.global().at(module_name);
  iteration_record rec;
  rec.iteration = iteration;
  host mean_delta = host::Zero(p.config.out_dim, p.config.dim);  // sum_i w_i (s B_i A_i + R) [k, d]
  for (std::size_t i = 0; i < clients.size(); ++i) {
    const auto view = fed.client_view(i);
    rec.loss += p.weights[i] * clients[i].loss(view);
    mean_delta +=
        p.weights[i] * Backend::to_host(delta(view.at(module_name))).template cast<double>();
  }
  const host rows = g.has_residual() ? best_rank_r(mean_delta, p.config.rank).right_vectors
                                     : host(Backend::to_host(g.A).template cast<double>());
  rec.sin_theta = subspace_distance(rows, p.reference_rows());
  rec.gap_to_optimum = (mean_delta - p.optimum.matrix).norm() / p.optimum.matrix.norm();
  return rec;
}

template <backend Backend, class Policy, class Aggregator, class Privacy, class Hooks>
std::vector<iteration_record> run_with(linear_problem<Backend>& p, Policy policy,
                                       Aggregator aggregator, federation_config config,
                                       std::size_t rounds_per_iteration, std::size_t iterations,
                                       const host& a0, Hooks& hooks, Privacy privacy) {
  using T = typename Backend::scalar;
  adapter_set<Backend> initial;
  const index_t r = p.config.rank;
  initial.insert(module_name,
                 {Backend::from_host(a0.cast<T>()), Backend::zeros(p.config.out_dim, r), T(1)});
  config.num_rounds = iterations * rounds_per_iteration;
  if constexpr (requires { hooks.serve_clients(config, p.clients); }) {
    if (hooks.serve_clients(config, p.clients)) return {};
  }
  federation<Backend, Policy, Aggregator, Privacy> fed(policy, aggregator, config,
                                                       std::move(initial), std::move(privacy));
  std::vector<iteration_record> records{measure(p, p.clients, fed, 0)};
  if constexpr (requires { hooks.resume(fed.server(), records); })
    hooks.resume(fed.server(), records);
  for (std::size_t it = records.size(); it <= iterations; ++it) {
    double error = 0.0;
    std::size_t up = 0, down = 0;
    std::optional<double> epsilon;
    for (std::size_t k = 0; k < rounds_per_iteration; ++k) {
      const auto report = [&] {
        if constexpr (requires { hooks.run_round(fed, p.clients); }) {
          return hooks.run_round(fed, p.clients);
        } else {
          return fed.run_round(p.clients);
        }
      }();
      // NaN (not available: secure aggregation) stays NaN.
      error = std::isnan(report.aggregation_error) ? report.aggregation_error
                                                   : std::max(error, report.aggregation_error);
      up = report.total_bytes_up;
      down = report.total_bytes_down;
      epsilon = report.epsilon;
    }
    auto rec = measure(p, p.clients, fed, it);
    rec.aggregation_error = error;
    rec.bytes_up = up;
    rec.bytes_down = down;
    rec.epsilon = epsilon;
    records.push_back(rec);
    if constexpr (requires { hooks.iteration_done(fed.server(), records); }) {
      hooks.iteration_done(fed.server(), records);
    }
  }
  return records;
}

// Without DP, or with client-level DP where the aggregator is a mean of factors.
template <backend Backend, class Policy, class Aggregator, class Hooks>
std::vector<iteration_record> run(linear_problem<Backend>& p, Policy policy, Aggregator aggregator,
                                  federation_config config, std::size_t rounds_per_iteration,
                                  std::size_t iterations, const host& a0, Hooks& hooks,
                                  const std::optional<privacy::client_dp>& dp) {
  if (!dp) {
    return run_with(p, policy, aggregator, config, rounds_per_iteration, iterations, a0, hooks,
                    no_privacy{});
  }
  if constexpr (mean_of_factors_aggregator<Aggregator>) {
    return run_with(p, policy, aggregator, config, rounds_per_iteration, iterations, a0, hooks,
                    *dp);
  } else {
    rolora::detail::raise<config_error>(
        "client-level DP needs an aggregator whose result is a mean of the uploaded factors; '",
        Aggregator::name, "' is not (docs/privacy.md: what composes with DP)");
  }
}

}  // namespace detail

struct no_hooks {};

// Runs one method on the problem; all methods start from the same A0 (and B0 = 0).
// Optional hooks, detected (for checkpoints, apps/linear_regression_theory.cpp):
//   hooks.resume(server, records)          once, before the first iteration: may restore the
//                                          federation's server and the records so far (the
//                                          iterations already in `records` are not run again)
//   hooks.iteration_done(server, records)  after every iteration
//   hooks.run_round(federation, clients)   carries one round instead of federation.run_round
//                                          (e.g. rolora::run_round over a transport of
//                                          rolora/transports.hpp) -> round_report
//   hooks.serve_clients(config, clients)   first: true when this process only hosts clients (an
//                                          MPI client rank); the run then returns no records
template <backend Backend, class Hooks = no_hooks>
std::vector<iteration_record> run_method(linear_problem<Backend>& p, method m,
                                         const method_options& o, Hooks&& hooks = {}) {
  const host a0 = initial_a(p.reference_rows(), o.init_angle, o.seed);
  federation_config config;
  config.local_steps = o.local_steps;
  config.local_optimizer = sgd{o.eta, 0.0, 0.0};
  config.threads = o.threads;
  config.seed = o.seed;
  config.client_weighting = weighting::uniform;
  config.on_bad_update = o.on_bad_update;
  config.min_clients = o.min_clients;
  config.batch_size = o.batch_size;
  config.sample_dp = o.sample_dp;
  config.secure_aggregation = o.secure_aggregation;
  const bool exact_b = !o.sample_dp;
  switch (m) {
    case method::rolora:
      config.closed_form_b = exact_b;
      return detail::run(p, alternating{}, orthonormalize_a<fedavg>{}, config,
                         rounds_per_iteration(m), o.iterations, a0, hooks, o.dp);
    case method::ffa:
      config.closed_form_b = exact_b;
      return detail::run(p, freeze_a{}, fedavg{}, config, 1, o.iterations, a0, hooks, o.dp);
    case method::fedit:
      return detail::run(p, train_both{}, fedavg{}, config, 1, o.iterations, a0, hooks, o.dp);
    case method::fedsa:
      return detail::run(p, fedsa{}, fedavg{}, config, 1, o.iterations, a0, hooks, o.dp);
    case method::flexlora:
      return detail::run(p, train_both{}, svd_resplit{}, config, 1, o.iterations, a0, hooks, o.dp);
    case method::flora:
      return detail::run(p, train_both{}, flora_stack{o.seed, lora_init::kaiming_uniform}, config,
                         1, o.iterations, a0, hooks, o.dp);
    case method::fedex:
      return detail::run(p, train_both{}, fedex_residual{}, config, 1, o.iterations, a0, hooks,
                         o.dp);
    case method::fedrot:
      return detail::run(p, train_both{}, procrustes{}, config, 1, o.iterations, a0, hooks, o.dp);
  }
  return {};
}

}  // namespace rolora::theory
