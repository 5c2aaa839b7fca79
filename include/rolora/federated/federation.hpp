// The in-process federation: federation<Backend, UpdatePolicy, Aggregator>, the composition of
// the server (federated/server.hpp) and the clients (federated/client.hpp) in one process.
//
// One round t: the server samples clients -> each downloads the global adapters (all factors but
// those it keeps local) -> trains the factors policy.trains(t) for `local_steps` steps on its own
// data, on up to config.threads threads -> uploads the factors policy.shares(t) and its sample
// count -> the server checks the uploads and merges them with the aggregator (rolora::aggregate)
// -> callbacks see the report. A failed round throws an error whose message names the round and
// changes nothing; run() attaches the reports of the rounds before it (rolora::failed_run).
// Bad uploads fail the round, or with on_bad_update = drop are dropped from it (round_report::
// rejected) while at least min_clients good ones remain.
#pragma once
#include <chrono>
#include <cstddef>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/parallel.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/federated/server.hpp>
#include <rolora/federated/task.hpp>
#include <type_traits>
#include <utility>
#include <vector>

namespace rolora {

// What federation::run throws besides the round's own error type: the reports of the rounds
// that completed before the failing one. Catch it as `const rolora::failed_run&`.
struct failed_run {
  explicit failed_run(std::vector<round_report> completed) : reports(std::move(completed)) {}
  virtual ~failed_run() = default;
  std::vector<round_report> reports;
};

namespace detail {
template <class Error>
struct failed_run_error final : Error, failed_run {
  failed_run_error(const Error& e, std::vector<round_report> completed)
      : Error(e), failed_run(std::move(completed)) {}
};

// Rethrows the rolora error in flight as the same type, carrying `completed`.
[[noreturn]] inline void rethrow_with_reports(std::vector<round_report> completed) {
  rethrow_remade([&](const auto& e) {
    return failed_run_error<std::remove_cvref_t<decltype(e)>>(e, std::move(completed));
  });
}
}  // namespace detail

// Callbacks implement only the events they care about (detected, not required):
//   on_round_begin(std::size_t round)
//   on_round_end(const round_report&, const adapter_set<B>& global) -> void or bool
// Returning true from on_round_end stops the run after that round.
namespace detail {
template <class Callback, class Backend>
bool notify_round_end(Callback& cb, const round_report& report, const adapter_set<Backend>& g) {
  if constexpr (requires {
                  { cb.on_round_end(report, g) } -> std::convertible_to<bool>;
                }) {
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
  using server_type = federation_server<Backend, UpdatePolicy, Aggregator>;

  federation(UpdatePolicy policy, Aggregator aggregator, federation_config config,
             adapters_type initial)
      : server_(std::move(policy), std::move(aggregator), std::move(config), std::move(initial)) {}

  const adapters_type& global() const { return server_.global(); }
  const federation_config& config() const { return server_.config(); }
  const UpdatePolicy& policy() const { return server_.policy(); }
  std::size_t next_round() const { return server_.next_round(); }
  // A client's adapters as it would use them: the global ones at its rank, with its local factors.
  adapters_type client_view(std::size_t client) const { return server_.client_view(client); }
  // The rank client `client` trains module adapter `a` at.
  index_t rank_of(std::size_t client, const typename adapters_type::adapter_type& a) const {
    return server_.rank_of(client, a);
  }
  // The server half, for checkpoints and for driving clients elsewhere.
  server_type& server() { return server_; }
  const server_type& server() const { return server_; }

  // Runs round next_round() over `tasks` (one per client; the same clients every round).
  template <class Task>
  round_report run_round(std::vector<Task>& tasks) {
    static_assert(client_task<Task, Backend>,
                  "rolora::federation::run_round: the Task type does not model "
                  "rolora::client_task: it needs num_samples(), loss(adapters) and "
                  "loss_and_grad(adapters, batch, trains, grads) (see federated/task.hpp)");
    const auto start = std::chrono::steady_clock::now();
    try {
      const round_plan plan = server_.begin_round(tasks.size());
      // Each client's upload depends only on its download, data and streams, so the thread count
      // changes no bit.
      std::vector<client_update<Backend>> uploads(plan.reporting.size());
      detail::parallel_for(plan.reporting.size(), server_.config().threads, [&](std::size_t i) {
        const std::size_t c = plan.reporting[i];
        uploads[i] = train_locally(tasks[c], server_.download(plan, c), server_.config());
      });
      round_report report = server_.complete_round(plan, std::move(uploads));
      report.seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return report;
    } catch (const error&) {
      detail::rethrow_in_round(server_.next_round());
    }
  }

  // Runs rounds until config.num_rounds or until a callback asks to stop; returns the reports.
  // When a round throws, the exception (still of its rolora type) also derives from
  // rolora::failed_run, which holds the reports of the rounds completed before it.
  template <class Task, class... Callbacks>
  std::vector<round_report> run(std::vector<Task>& tasks, Callbacks&&... callbacks) {
    std::vector<round_report> reports;
    try {
      while (server_.next_round() < server_.config().num_rounds) {
        (detail::notify_round_begin(callbacks, server_.next_round()), ...);
        reports.push_back(run_round(tasks));
        const bool stop =
            (detail::notify_round_end(callbacks, reports.back(), global()) | ... | false);
        if (stop) break;
      }
    } catch (const error&) {
      detail::rethrow_with_reports(std::move(reports));
    }
    return reports;
  }

 private:
  server_type server_;
};

}  // namespace rolora
