// The applications' transport options (--transport inprocess|mpi, --client-timeout,
// --on-bad-update, --min-clients) and the transport they choose by name through
// rolora::transport_by_name (rolora/transports.hpp): the in-process one, or MPI (rank 0
// the server, ranks 1..P-1 the clients), see docs/distributed.md. Every round runs through the
// library's one loop, rolora::run / rolora::run_round. Only rank 0 (or the single process) writes
// files and prints progress.
#pragma once
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/transports.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace rolora::apps {

struct transport_options {
  std::string kind = "inprocess";
  double client_timeout = 0.0;  // seconds; 0: wait for ever
  std::string on_bad_update = "fail";
  std::size_t min_clients = 1;
  long garbage_client = -1;  // testing: this client uploads garbage bytes (MPI only)
  long slow_client = -1;     // testing: this client answers round 0 3 x client_timeout late

  // Into a federation_config or theory::method_options.
  template <class Config>
  void apply(Config& c) const {
    c.on_bad_update = on_bad_update == "drop" ? bad_update_policy::drop : bad_update_policy::fail;
    c.min_clients = min_clients;
  }
};

inline void add_transport_options(CLI::App& app, transport_options& t) {
  app.add_option("--transport", t.kind,
                 "how clients and server talk: inprocess (threads) or mpi (under mpirun -np P, "
                 "P >= 2: rank 0 the server, ranks 1..P-1 the clients)")
      ->check(CLI::IsMember(
          std::vector<std::string>(rolora::transport_names.begin(), rolora::transport_names.end())))
      ->capture_default_str();
  app.add_option("--client-timeout", t.client_timeout,
                 "mpi: seconds a round waits for the uploads; a client late or silent is dropped "
                 "from that round (0: wait for ever)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--on-bad-update", t.on_bad_update,
                 "an upload that fails the server's checks: fail the round, or drop that client")
      ->check(CLI::IsMember({"fail", "drop"}))
      ->capture_default_str();
  app.add_option("--min-clients", t.min_clients,
                 "a round with fewer usable updates fails, changing nothing")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--garbage-client", t.garbage_client, "testing: client C uploads garbage (mpi)")
      ->group("");
  app.add_option("--slow-client", t.slow_client,
                 "testing: client C answers round 0 three client timeouts late (mpi)")
      ->group("");
}

// The transport a run uses, chosen by name (rolora::transport_by_name); what the applications
// call on it is the same for every transport.
class app_transport {
 public:
  // A transport that cannot be had (no MPI in this build, fewer than 2 ranks) ends the program
  // with the error and exit code 2.
  app_transport(int& argc, char**& argv, const transport_options& o) : t_(make(argc, argv, o)) {}

  // Rank 0 under MPI, always in-process: the one that prints and writes.
  bool is_server() const { return t_.is_server(); }

  // rolora::run over this transport (client ranks serve and get no reports).
  template <class Federation, class Task, class... Callbacks>
  std::vector<round_report> run(Federation& fed, std::vector<Task>& tasks,
                                Callbacks&&... callbacks) {
    return t_.visit([&](auto& t) { return rolora::run(t, fed, tasks, callbacks...); });
  }
  // One round of `fed` (rank 0 or in-process): rolora::run_round.
  template <class Federation, class Task>
  round_report run_round(Federation& fed, std::vector<Task>& tasks) {
    return t_.visit([&](auto& t) { return rolora::run_round(t, fed.server(), tasks); });
  }
  // Client ranks: serve `tasks` until rank 0's finish(); false (nothing done) elsewhere.
  template <class Backend, class Task>
  bool serve(std::vector<Task>& tasks, const federation_config& config) {
    if (is_server()) return false;
    t_.visit([&](auto& t) { t.template serve<Backend>(tasks, config); });
    return true;
  }
  // Rank 0: this federation is over.
  void finish() {
    if (is_server()) t_.visit([](auto& t) { t.finish(); });
  }
  // Waits for every process of the job (a no-op in-process).
  void barrier() {
    t_.visit([](auto& t) {
      if constexpr (requires { t.barrier(); }) t.barrier();
    });
  }
  // After an error: under MPI the whole job ends (the other ranks may be waiting on this one).
  int fail(int code) {
    return t_.visit([code](auto& t) {
      if constexpr (requires { t.abort(code); }) return t.abort(code);
      return code;
    });
  }

 private:
  static rolora::transport_by_name make(int& argc, char**& argv, const transport_options& o) {
    rolora::transport_options m;
    m.client_timeout = o.client_timeout;
    if (o.garbage_client >= 0 || o.slow_client >= 0) {
      m.tamper = [o](std::size_t client, std::size_t round, std::vector<std::uint8_t>& bytes) {
        if (long(client) == o.garbage_client) bytes.assign(64, 0xab);
        if (long(client) == o.slow_client && round == 0) {
          std::this_thread::sleep_for(std::chrono::duration<double>(3 * o.client_timeout));
        }
      };
    }
    try {
      return rolora::transport_by_name(o.kind, argc, argv, std::move(m));
    } catch (const error& e) {
      std::fprintf(stderr, "error: --transport %s: %s\n", o.kind.c_str(), e.what());
      std::exit(2);
    }
  }

  rolora::transport_by_name t_;
};

}  // namespace rolora::apps
