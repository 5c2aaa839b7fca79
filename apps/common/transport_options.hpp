// The examples' transport options (--transport inprocess|mpi, --client-timeout, --on-bad-update,
// --min-clients) and the transport they choose: the in-process federation, or the MPI transport
// (rolora/mpi/transport.hpp; rank 0 the server, ranks 1..P-1 the clients), see
// docs/distributed.md. Only rank 0 (or the single process) writes files and prints progress.
#pragma once
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/round_config.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#ifdef ROLORA_HAVE_MPI
#include <rolora/mpi/transport.hpp>
#endif

namespace rolora::examples {

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
      ->check(CLI::IsMember({"inprocess", "mpi"}))
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

// The transport a run uses. In-process it is nothing: the federation runs its rounds itself.
class example_transport {
 public:
  example_transport(int& argc, char**& argv, const transport_options& o) {
    if (o.kind != "mpi") return;
#ifdef ROLORA_HAVE_MPI
    session_.emplace(argc, argv);
    mpi::transport_options m;
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
      mpi_.emplace(MPI_COMM_WORLD, std::move(m));
    } catch (const error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      session_.reset();  // every rank sees the same size: all leave
      std::exit(2);
    }
#else
    (void)argc;
    (void)argv;
    std::fprintf(stderr,
                 "error: --transport mpi: this build has no MPI transport (configure with "
                 "-DROLORA_ENABLE_MPI=ON; Debian: libopenmpi-dev openmpi-bin)\n");
    std::exit(2);
#endif
  }

  bool mpi() const {
#ifdef ROLORA_HAVE_MPI
    return mpi_.has_value();
#else
    return false;
#endif
  }
  // Rank 0 under MPI, always in-process: the one that prints and writes.
  bool is_server() const {
#ifdef ROLORA_HAVE_MPI
    return !mpi_ || mpi_->is_server();
#else
    return true;
#endif
  }

  // federation::run over this transport (client ranks serve and get no reports).
  template <class Federation, class Task, class... Callbacks>
  std::vector<round_report> run(Federation& fed, std::vector<Task>& tasks,
                                Callbacks&&... callbacks) {
#ifdef ROLORA_HAVE_MPI
    if (mpi_) return mpi::run(*mpi_, fed, tasks, std::forward<Callbacks>(callbacks)...);
#endif
    return fed.run(tasks, std::forward<Callbacks>(callbacks)...);
  }
  // One round of `fed` (rank 0 or in-process).
  template <class Federation, class Task>
  round_report run_round(Federation& fed, std::vector<Task>& tasks) {
#ifdef ROLORA_HAVE_MPI
    if (mpi_) return mpi_->run_round(fed.server(), tasks.size());
#endif
    return fed.run_round(tasks);
  }
  // Client ranks: serve `tasks` until rank 0's finish(); false (nothing done) elsewhere.
  template <class Backend, class Task>
  bool serve(std::vector<Task>& tasks, const federation_config& config) {
#ifdef ROLORA_HAVE_MPI
    if (mpi_ && !mpi_->is_server()) {
      mpi_->serve<Backend>(tasks, config);
      return true;
    }
#else
    (void)tasks;
    (void)config;
#endif
    return false;
  }
  // Rank 0: this federation is over.
  void finish() {
#ifdef ROLORA_HAVE_MPI
    if (mpi_ && mpi_->is_server()) mpi_->finish();
#endif
  }
  void barrier() {
#ifdef ROLORA_HAVE_MPI
    if (mpi_) MPI_Barrier(MPI_COMM_WORLD);
#endif
  }
  // After an error: under MPI the whole job ends (the other ranks may be waiting on this one).
  int fail(int code) {
#ifdef ROLORA_HAVE_MPI
    if (mpi_) {
      std::fflush(stdout);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, code);
    }
#endif
    return code;
  }

 private:
#ifdef ROLORA_HAVE_MPI
  std::optional<mpi::session> session_;
  std::optional<mpi::transport> mpi_;  // destroyed before the session
#endif
};

}  // namespace rolora::examples
