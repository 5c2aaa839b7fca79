// The in-process federated simulation: federation<Backend, UpdatePolicy, Aggregator>.
//
// One round t: the server samples clients -> each downloads the global adapters (all factors but
// those it keeps local) -> trains the factors policy.trains(t) for `local_steps` steps on its own
// data -> uploads the factors policy.shares(t) and its sample count -> the server checks the
// uploads and merges them with the aggregator (rolora::aggregate) -> callbacks see the report.
// A failed round (bad upload, every client dropped, ...) throws and changes nothing.
//
// Heterogeneous ranks (federation_config::client_ranks): client c trains every module at rank
// r_c = min(client_ranks[c], r), downloading the first r_c components of the server's adapters at
// its own scaling (truncate_rank, aggregate/ranks.hpp); the aggregator must accept heterogeneous
// ranks (padded_fedavg, svd_resplit, stack, residual, procrustes).
//
// Communication, per client and round, in uncompressed scalars of the backend: up, the shared
// factors at the client's rank (+ modules to save); down, the synced factors at its rank (+
// modules to save) plus what its residuals need to catch up with the rounds since it last
// downloaded: the aggregator's residual increments of those rounds, at most the dense residual.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/parallel.hpp>
#include <rolora/federated/optimizer.hpp>
#include <rolora/federated/sampling.hpp>
#include <rolora/federated/task.hpp>

namespace rolora {

struct federation_config {
  std::size_t num_rounds = 10;
  std::size_t clients_per_round = 0;  // 0: every client, every round
  double client_dropout = 0.0;        // probability that a sampled client never reports back
  std::size_t local_steps = 1;
  std::size_t batch_size = 0;         // 0: the full local data set each step
  optimizer local_optimizer = sgd{};
  bool keep_optimizer_state = false;  // false: fresh moments every round (the paper's code)
  weighting client_weighting = weighting::by_samples;
  bool closed_form_b = false;         // B-only rounds: the task's exact least squares, if it has one
  bool measure_aggregation_error = true;
  // Heterogeneous ranks: client c's rank for every module (capped at the module's rank); empty:
  // every client at the server's rank. Its scaling follows client_rank_scaling.
  std::vector<index_t> client_ranks;
  rank_scaling client_rank_scaling = rank_scaling::alpha_over_r;
  std::size_t threads = 1;            // clients trained in parallel; results do not depend on it
  std::uint64_t seed = 0;             // client sampling, dropout and batching streams
};

// What happened in one round.
struct round_report {
  std::size_t round = 0;
  factor_set trained, shared;
  std::vector<std::size_t> participants;  // sampled clients that reported back, increasing
  std::vector<std::size_t> dropped;       // sampled clients that did not
  double train_loss = 0.0;  // sample-weighted mean over participants of their mean step loss
  double aggregation_error = 0.0;           // see aggregation_result::error
  double relative_aggregation_error = 0.0;  // see aggregation_result::relative_error
  std::size_t bytes_up = 0;           // this round, all participants
  std::size_t bytes_down = 0;         // this round, all sampled clients
  std::size_t bytes_up_per_client = 0;    // mean over participants (exact for equal ranks)
  std::size_t bytes_down_per_client = 0;  // mean over sampled clients
  std::size_t residual_bytes_down = 0;    // the part of bytes_down that brings residuals up to date
  std::size_t total_bytes_up = 0;     // since round 0
  std::size_t total_bytes_down = 0;
  double seconds = 0.0;
};

// Callbacks implement only the events they care about (detected, not required):
//   on_round_begin(std::size_t round)
//   on_round_end(const round_report&, const adapter_set<B>& global) -> void or bool
// Returning true from on_round_end stops the run after that round.
namespace detail {
template <class Callback, class Backend>
bool notify_round_end(Callback& cb, const round_report& report, const adapter_set<Backend>& g) {
  if constexpr (requires { { cb.on_round_end(report, g) } -> std::convertible_to<bool>; }) {
    return static_cast<bool>(cb.on_round_end(report, g));
  } else if constexpr (requires { cb.on_round_end(report, g); }) {
    cb.on_round_end(report, g);
  }
  return false;
}
template <class Callback>
void notify_round_begin(Callback& cb, std::size_t round) {
  if constexpr (requires { cb.on_round_begin(round); }) cb.on_round_begin(round);
}
}  // namespace detail

template <class Backend, class UpdatePolicy, class Aggregator = fedavg>
class federation {
  static_assert(backend<Backend>,
                "rolora::federation: the Backend type does not model rolora::backend; use "
                "rolora::eigen_backend<float> or <double>, or provide every member listed in "
                "core/concepts.hpp");
  static_assert(update_policy<UpdatePolicy>,
                "rolora::federation: the UpdatePolicy type does not model rolora::update_policy: "
                "it needs `static constexpr std::string_view name` and const members "
                "`factor_set trains(std::size_t)`, `factor_set shares(std::size_t)` and "
                "`factor_set keeps_local()` (see core/concepts.hpp)");
  static_assert(aggregator_for<Aggregator, Backend>,
                "rolora::federation: the Aggregator type does not model rolora::aggregator_for: "
                "it needs `static constexpr std::string_view name` and a const member template "
                "`adapter_set<B> merge(const adapter_set<B>&, std::span<const client_update<B>>, "
                "std::span<const double>, factor_set) const` (see core/concepts.hpp)");

 public:
  using backend_type = Backend;
  using adapters_type = adapter_set<Backend>;

  federation(UpdatePolicy policy, Aggregator aggregator, federation_config config,
             adapters_type initial)
      : policy_(std::move(policy)),
        aggregator_(std::move(aggregator)),
        config_(std::move(config)),
        global_(std::move(initial)) {
    if (global_.empty()) {
      detail::fail<config_error>("config_error", "federation: the initial adapter set is empty");
    }
    if (config_.local_steps == 0) {
      detail::fail<config_error>("config_error", "federation: local_steps must be >= 1");
    }
    if (!(config_.client_dropout >= 0.0 && config_.client_dropout < 1.0)) {
      detail::fail<config_error>("config_error", "federation: client_dropout must be in [0, 1), got ",
                                 config_.client_dropout);
    }
    if (!config_.client_ranks.empty()) {
      if (!heterogeneous_rank_aggregator<Aggregator>) {
        detail::fail<config_error>("config_error", "federation: client_ranks is set but aggregator '",
                                   Aggregator::name,
                                   "' does not accept heterogeneous ranks (use padded_fedavg, "
                                   "svd_resplit, stack, residual or procrustes)");
      }
      for (std::size_t c = 0; c < config_.client_ranks.size(); ++c) {
        if (config_.client_ranks[c] < 1) {
          detail::fail<config_error>("config_error", "federation: client_ranks[", c,
                                     "] must be >= 1, got ", config_.client_ranks[c]);
        }
      }
    }
  }

  const adapters_type& global() const { return global_; }
  const federation_config& config() const { return config_; }
  const UpdatePolicy& policy() const { return policy_; }
  std::size_t next_round() const { return round_; }
  // A client's adapters as it would use them: the global ones at its rank, with its local factors.
  adapters_type client_view(std::size_t client) const {
    adapters_type view = global_;
    for (auto& [name, a] : view) {
      const index_t r = rank_of(client, a);
      if (r != a.rank()) {
        a = truncate_rank(a, r, scaling_at_rank(double(a.scaling), a.rank(), r, config_.client_rank_scaling));
      }
    }
    if (client < clients_.size()) apply_local(clients_[client], view);
    return view;
  }
  // The rank client `client` trains module adapter `a` at.
  index_t rank_of(std::size_t client, const typename adapters_type::adapter_type& a) const {
    if (client >= config_.client_ranks.size()) return a.rank();
    return std::min(config_.client_ranks[client], a.rank());
  }

  // Runs round next_round() over `tasks` (one per client; the same clients every round).
  template <class Task>
  round_report run_round(std::vector<Task>& tasks) {
    static_assert(client_task<Task, Backend>,
                  "rolora::federation::run_round: the Task type does not model "
                  "rolora::client_task: it needs num_samples(), loss(adapters) and "
                  "loss_and_grad(adapters, batch, trains, grads) (see federated/task.hpp)");
    const auto start = std::chrono::steady_clock::now();
    if (tasks.empty()) detail::fail<config_error>("config_error", "federation: no clients");
    if (clients_.empty()) clients_.resize(tasks.size());
    if (clients_.size() != tasks.size()) {
      detail::fail<config_error>("config_error", "federation: expected ", clients_.size(),
                                 " clients (as in earlier rounds), got ", tasks.size());
    }
    if (!config_.client_ranks.empty() && config_.client_ranks.size() != tasks.size()) {
      detail::fail<config_error>("config_error", "federation: client_ranks has ",
                                 config_.client_ranks.size(), " entries for ", tasks.size(), " clients");
    }
    const std::size_t t = round_;
    check_policy_round(policy_, t);
    round_report report;
    report.round = t;
    report.trained = policy_.trains(t);
    report.shared = policy_.shares(t);
    const factor_set local = policy_.keeps_local();

    const auto sampled = sample_clients(config_.seed, t, tasks.size(), config_.clients_per_round);
    for (std::size_t c : sampled) {
      (drops_out(config_.seed, t, c, config_.client_dropout) ? report.dropped : report.participants)
          .push_back(c);
    }
    if (report.participants.empty()) {
      detail::fail<value_error>("value_error", "round ", t, ": no client update arrived (",
                                sampled.size(), " sampled, all dropped out)");
    }

    std::vector<outcome> outcomes(report.participants.size());
    train_participants(tasks, report.participants, report.trained, outcomes);

    // What the sampled clients downloaded, from the state before the round.
    const factor_set synced{!local.a, !local.b};
    std::size_t down = 0, residual_down = 0;
    for (std::size_t c : sampled) {
      down += client_bytes(c, synced);
      residual_down += residual_catch_up_bytes(c);
    }

    std::vector<client_update<Backend>> updates;
    updates.reserve(outcomes.size());
    for (std::size_t i = 0; i < outcomes.size(); ++i) {
      updates.push_back({report.participants[i], double(tasks[report.participants[i]].num_samples()),
                         std::move(outcomes[i].adapters)});
    }
    const auto result = aggregate(aggregator_, global_, std::span<const client_update<Backend>>(updates),
                                  report.shared, {config_.client_weighting, local,
                                  config_.measure_aggregation_error, t});
    // Committed: the global state changed; now the clients' own state follows.
    double loss = 0.0, samples = 0.0;
    for (std::size_t i = 0; i < outcomes.size(); ++i) {
      auto& client = clients_[report.participants[i]];
      if (local.any()) client.local = std::move(updates[i].adapters);
      if (config_.keep_optimizer_state) client.optimizer = std::move(outcomes[i].optimizer);
      loss += outcomes[i].loss * updates[i].num_samples;
      samples += updates[i].num_samples;
    }
    report.train_loss = loss / samples;
    report.aggregation_error = result.error;
    report.relative_aggregation_error = result.relative_error;
    residual_increments_.push_back(result.residual_scalars);
    for (std::size_t c : sampled) clients_[c].residual_synced = t;
    for (std::size_t c : report.participants) report.bytes_up += client_bytes(c, report.shared);
    report.bytes_down = down + residual_down;
    report.residual_bytes_down = residual_down;
    report.bytes_up_per_client = report.bytes_up / report.participants.size();
    report.bytes_down_per_client = report.bytes_down / sampled.size();
    total_up_ += report.bytes_up;
    total_down_ += report.bytes_down;
    report.total_bytes_up = total_up_;
    report.total_bytes_down = total_down_;
    ++round_;
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  // Runs rounds until config.num_rounds or until a callback asks to stop; returns the reports.
  template <class Task, class... Callbacks>
  std::vector<round_report> run(std::vector<Task>& tasks, Callbacks&&... callbacks) {
    std::vector<round_report> reports;
    while (round_ < config_.num_rounds) {
      (detail::notify_round_begin(callbacks, round_), ...);
      reports.push_back(run_round(tasks));
      const bool stop = (detail::notify_round_end(callbacks, reports.back(), global_) | ... | false);
      if (stop) break;
    }
    return reports;
  }

 private:
  struct client_state {
    std::optional<adapters_type> local;  // adapters after its last round (for kept factors)
    optimizer_state<Backend> optimizer;
    std::size_t residual_synced = 0;     // its residuals include the increments of rounds < this
  };

  // Bytes of the factors `which` at client c's ranks (+ the modules to save when any factor).
  std::size_t client_bytes(std::size_t c, factor_set which) const {
    std::size_t n = 0;
    for (const auto& [name, a] : global_) {
      const auto r = std::size_t(rank_of(c, a));
      if (which.a) n += r * std::size_t(a.in_features());
      if (which.b) n += std::size_t(a.out_features()) * r;
    }
    if (which.any()) {
      for (const auto& [name, w] : global_.modules_to_save()) {
        n += std::size_t(Backend::rows(w) * Backend::cols(w));
      }
    }
    return n * sizeof(typename Backend::scalar);
  }

  // Bytes client c needs for its residuals to catch up: the increments of the rounds it missed,
  // at most the dense residuals themselves.
  std::size_t residual_catch_up_bytes(std::size_t c) const {
    std::size_t missed = 0, dense = 0;
    for (std::size_t k = clients_[c].residual_synced; k < residual_increments_.size(); ++k) {
      missed += residual_increments_[k];
    }
    for (const auto& [name, a] : global_) {
      if (a.has_residual()) dense += std::size_t(a.out_features() * a.in_features());
    }
    return std::min(missed, dense) * sizeof(typename Backend::scalar);
  }
  struct outcome {
    adapters_type adapters;
    optimizer_state<Backend> optimizer;
    double loss = 0.0;
  };

  void apply_local(const client_state& client, adapters_type& view) const {
    const factor_set local = policy_.keeps_local();
    if (!client.local || !local.any()) return;
    for (auto& [name, a] : view) {
      const auto& mine = client.local->at(name);
      if (local.a) a.A = mine.A;
      if (local.b) a.B = mine.B;
    }
  }

  template <class Task>
  void train_one(Task& task, std::size_t client, factor_set trains, outcome& out) const {
    out.adapters = client_view(client);
    if (config_.keep_optimizer_state) out.optimizer = clients_[client].optimizer;
    if constexpr (closed_form_b_task<Task, Backend>) {
      if (config_.closed_form_b && trains == only_b) {
        task.solve_b(out.adapters);
        out.loss = task.loss(out.adapters);
        return;
      }
    }
    batch_sampler batches(config_.seed, round_, client, task.num_samples(), config_.batch_size);
    gradient_set<Backend> grads;
    double loss = 0.0;
    for (std::size_t step = 0; step < config_.local_steps; ++step) {
      loss += task.loss_and_grad(out.adapters, batches.next(), trains, grads);
      out.optimizer.step(config_.local_optimizer, out.adapters, grads, trains);
    }
    out.loss = loss / double(config_.local_steps);
  }

  // Local training of every participant, on up to config.threads threads. Each client's result
  // depends only on its own data and streams, so the thread count changes no bit.
  template <class Task>
  void train_participants(std::vector<Task>& tasks, const std::vector<std::size_t>& participants,
                          factor_set trains, std::vector<outcome>& outcomes) const {
    detail::parallel_for(participants.size(), config_.threads, [&](std::size_t i) {
      train_one(tasks[participants[i]], participants[i], trains, outcomes[i]);
    });
  }

  UpdatePolicy policy_;
  Aggregator aggregator_;
  federation_config config_;
  adapters_type global_;
  std::vector<client_state> clients_;
  std::vector<std::size_t> residual_increments_;  // per round: aggregation_result::residual_scalars
  std::size_t round_ = 0;
  std::size_t total_up_ = 0, total_down_ = 0;
};

}  // namespace rolora
