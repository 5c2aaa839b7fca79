// The in-process federation, federation<Backend, UpdatePolicy, Aggregator> (the composition of
// the server, federated/server.hpp, and the clients, federated/client.hpp, in one process), and
// the one round loop every transport runs: rolora::run_round and rolora::run over a model of
// round_transport (core/concepts.hpp), in_process here, mpi::transport in rolora/mpi/.
//
// One round t (run_round): the server samples clients -> the transport delivers each its
// download (the global adapters, all factors but those it keeps local) -> the client trains the
// factors policy.trains(t) for `local_steps` steps on its own data (in_process: on up to
// config.threads threads) -> uploads the factors policy.shares(t) and its sample count -> the
// server checks the uploads and merges them with the aggregator (rolora::aggregate) ->
// callbacks see the report. A failed round throws an error whose message names the round and
// changes nothing; run() attaches the reports of the rounds before it (rolora::failed_run).
// Bad uploads fail the round, or with on_bad_update = drop are dropped from it (round_report::
// rejected) while at least min_clients good ones remain.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
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

// Settings of the transports that carry messages out of the process (mpi::transport; in_process
// needs none).
struct transport_options {
  double client_timeout = 0.0;  // seconds a round waits for the uploads; 0: for ever
  std::FILE* log = stderr;      // the server's drop lines (nullptr: none)
  // Testing: called on a client's process with each upload's bytes before they are sent.
  std::function<void(std::size_t client, std::size_t round, std::vector<std::uint8_t>&)> tamper;
};

// The in-process transport, the default model of round_transport: every client of the round
// trains in this process with train_locally, on up to config.threads threads. Each client's
// upload depends only on its download, data and streams, so the thread count changes no bit.
struct in_process {
  bool is_server() const { return true; }

  template <class Server, class Task>
  auto exchange(Server& server, const round_plan& plan, std::vector<Task>& tasks) const {
    using upload = decltype(train_locally(tasks[0], server.download(plan, 0), server.config()));
    std::vector<upload> uploads(plan.reporting.size());
    detail::parallel_for(plan.reporting.size(), server.config().threads, [&](std::size_t i) {
      const std::size_t c = plan.reporting[i];
      uploads[i] = train_locally(tasks[c], server.download(plan, c), server.config());
    });
    return uploads;
  }

  // Every process is the server's: there are no client-only processes to serve or to stop.
  template <class Backend, class Task>
  void serve(std::vector<Task>&, const federation_config&) {
    detail::raise<config_error>("in_process transport: serve() has no clients to host");
  }
  void finish() {}
};

namespace detail {
// run() takes a federation (its server()) or a federation_server.
template <class Federation>
auto& server_of(Federation& f) {
  if constexpr (requires { f.server(); }) {
    return f.server();
  } else {
    return f;
  }
}

template <class Transport, class Server, class Task>
constexpr void check_transport() {
  static_assert(client_task<Task, typename Server::backend_type>,
                "rolora::run: the Task type does not model rolora::client_task: it needs "
                "num_samples(), loss(adapters) and loss_and_grad(adapters, batch, trains, grads) "
                "(see federated/task.hpp)");
  static_assert(round_transport<Transport, Server, Task>,
                "rolora::run: the Transport type does not model rolora::round_transport: it "
                "needs const `bool is_server()`, `exchange(server, plan, tasks)` returning uploads "
                "that server.complete_round(plan, .) accepts, `serve<Backend>(tasks, config)` and "
                "`finish()` (see core/concepts.hpp)");
}
}  // namespace detail

// Round server.next_round() over `tasks` (one per client; the same clients every round), carried
// by `transport`, on the server's process: begin_round -> transport.exchange -> complete_round ->
// transport.finish_round when it has one. Errors name the round; the server changes only on
// success. report.seconds is the round's wall time.
template <class Transport, class Server, class Task>
round_report run_round(Transport& transport, Server& server, std::vector<Task>& tasks) {
  detail::check_transport<Transport, Server, Task>();
  const auto start = std::chrono::steady_clock::now();
  try {
    if (server.config().sample_dp) {  // q_c = B / n_c: the accountant needs each n_c
      std::vector<std::size_t> counts;
      for (auto& t : tasks) counts.push_back(std::size_t(t.num_samples()));
      server.note_sample_counts(counts);
    }
    const round_plan plan = server.begin_round(tasks.size());
    round_report report = server.complete_round(plan, transport.exchange(server, plan, tasks));
    if constexpr (requires { transport.finish_round(plan, report); }) {
      transport.finish_round(plan, report);
    }
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  } catch (const error&) {
    detail::rethrow_in_round(server.next_round());
  }
}

// The round loop. On the server's process: rounds until config.num_rounds or until a callback
// asks to stop, then transport.finish(); returns the reports. On a client-only process
// (!transport.is_server()): serves `tasks` until the server's process finishes; returns nothing.
// `fed` is a federation or its federation_server. When a round throws, the exception (still of
// its rolora type) also derives from rolora::failed_run, which holds the reports of the rounds
// completed before it; finish() is not called then.
template <class Transport, class Federation, class Task, class... Callbacks>
std::vector<round_report> run(Transport& transport, Federation& fed, std::vector<Task>& tasks,
                              Callbacks&&... callbacks) {
  auto& server = detail::server_of(fed);
  using Server = std::remove_cvref_t<decltype(server)>;
  detail::check_transport<Transport, Server, Task>();
  if (!transport.is_server()) {
    transport.template serve<typename Server::backend_type>(tasks, server.config());
    return {};
  }
  std::vector<round_report> reports;
  try {
    while (server.next_round() < server.config().num_rounds) {
      (detail::notify_round_begin(callbacks, server.next_round()), ...);
      reports.push_back(rolora::run_round(transport, server, tasks));
      const bool stop =
          (detail::notify_round_end(callbacks, reports.back(), server.global()) | ... | false);
      if (stop) break;
    }
  } catch (const error&) {
    detail::rethrow_with_reports(std::move(reports));
  }
  transport.finish();
  return reports;
}

// Privacy: no_privacy, or privacy::client_dp for client-level differential privacy
// (privacy/client_dp.hpp; only with an aggregator that is a mean of factors).
template <class Backend, class UpdatePolicy, class Aggregator = fedavg, class Privacy = no_privacy>
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
  using server_type = federation_server<Backend, UpdatePolicy, Aggregator, Privacy>;

  federation(UpdatePolicy policy, Aggregator aggregator, federation_config config,
             adapters_type initial, Privacy privacy = {})
      : server_(std::move(policy), std::move(aggregator), std::move(config), std::move(initial),
                std::move(privacy)) {}

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

  // Runs round next_round() over `tasks` (one per client; the same clients every round) in this
  // process: rolora::run_round over the in_process transport.
  template <class Task>
  round_report run_round(std::vector<Task>& tasks) {
    in_process transport;
    return rolora::run_round(transport, server_, tasks);
  }

  // Runs rounds until config.num_rounds or until a callback asks to stop; returns the reports:
  // rolora::run over the in_process transport. When a round throws, the exception (still of its
  // rolora type) also derives from rolora::failed_run, which holds the reports of the rounds
  // completed before it.
  template <class Task, class... Callbacks>
  std::vector<round_report> run(std::vector<Task>& tasks, Callbacks&&... callbacks) {
    in_process transport;
    return rolora::run(transport, server_, tasks, std::forward<Callbacks>(callbacks)...);
  }

 private:
  server_type server_;
};

}  // namespace rolora
