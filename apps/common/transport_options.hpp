// The applications' transport options (--transport inprocess|mpi|grpc, --client-timeout,
// --on-bad-update, --min-clients, and gRPC's --role, --listen, --connect, --client-id, --tls-*,
// --insecure, --roster, --connect-timeout) and the transport they choose by name through
// rolora::transport_by_name (rolora/transports.hpp): the in-process one, MPI (rank 0 the server,
// ranks 1..P-1 the clients) or gRPC (a server process and client processes started on their
// own, across machines), see docs/distributed.md. Every round runs through the
// library's one loop, rolora::run / rolora::run_round. Only rank 0 (or the single process) writes
// files and prints progress.
#pragma once
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/transports.hpp>
#if defined(ROLORA_HAVE_SECAGG)
#include <rolora/secagg/round.hpp>
#if defined(ROLORA_HAVE_MPI)
#include <rolora/secagg/mpi.hpp>
#endif
#endif
#include <memory>
#include <rolora/version.hpp>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace rolora::apps {

// gRPC's flags, as given.
struct network_flags {
  std::string role = "server";
  std::string listen = "0.0.0.0:50051";
  std::string connect;
  std::string client_ids;
  std::string tls_ca, tls_cert, tls_key, roster;
  bool insecure = false;
  double connect_timeout = 60.0;
  std::size_t chunk_kib = 1024;
};

struct transport_options {
  std::string kind = "inprocess";
  network_flags network;
  // The fields that change the run's bits, set by the application: a gRPC client process whose
  // fingerprint differs from the server's is refused with the first differing field named.
  rolora::grpc::fingerprint fingerprint;

  double client_timeout = 0.0;  // seconds; 0: wait for ever
  std::string on_bad_update = "fail";
  std::size_t min_clients = 1;
  long garbage_client = -1;  // testing: this client uploads garbage bytes (MPI, gRPC)
  long slow_client = -1;     // testing: this client answers round 0 3 x client_timeout late
  // --secure-aggregation and its --secagg-* settings (rolora/secagg/round.hpp, in-process;
  // rolora/secagg/mpi.hpp over MPI).
  bool secure_aggregation = false;
  rolora::secagg_config secagg;
  // testing: "CLIENT:STAGE" entries, each client silent from that protocol stage on in every
  // round (advertise, share_keys, masked_input, unmask)
  std::vector<std::string> secagg_drop;

  // Into a federation_config or theory::method_options.
  template <class Config>
  void apply(Config& c) const {
    c.on_bad_update = on_bad_update == "drop" ? bad_update_policy::drop : bad_update_policy::fail;
    c.min_clients = min_clients;
    if (secure_aggregation) c.secure_aggregation = secagg;
  }
};

inline void add_transport_options(CLI::App& app, transport_options& t) {
  app.add_option("--transport", t.kind,
                 "how clients and server talk: inprocess (threads), mpi (under mpirun -np P, "
                 "P >= 2: rank 0 the server, ranks 1..P-1 the clients) or grpc (a server process "
                 "and client processes started on their own: --role, docs/distributed.md)")
      ->check(CLI::IsMember(
          std::vector<std::string>(rolora::transport_names.begin(), rolora::transport_names.end())))
      ->capture_default_str();
  app.add_option("--client-timeout", t.client_timeout,
                 "mpi, grpc: seconds a round waits for the uploads; a client late or silent is "
                 "dropped from that round (0: wait for ever)")
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
  const char* secagg_group = "Secure aggregation (in-process and MPI; needs libsodium)";
  app.add_flag("--secure-aggregation", t.secure_aggregation,
               "the server learns only the sum of each round's updates (Bonawitz et al. 2017 "
               "double masking over a SecAgg+ neighbour graph, docs/privacy.md); FedIT, "
               "FFA-LoRA, RoLoRA, the head-only control, and FlexLoRA and FedEx-LoRA with "
               "dense uploads of their products; refused for the other methods")
      ->group(secagg_group);
  app.add_option("--secagg-range", t.secagg.range,
                 "each coordinate of a client's weighted change is clipped to [-R, R]")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(secagg_group);
  app.add_option("--secagg-bits", t.secagg.bits,
                 "2^bits fixed-point levels over [-R, R], stochastically rounded")
      ->check(CLI::Range(2, 62))
      ->capture_default_str()
      ->group(secagg_group);
  app.add_option("--secagg-threshold", t.secagg.threshold,
                 "t: shares that rebuild a client's mask secrets; fewer answering neighbours fail "
                 "the round (0: a majority of the neighbours)")
      ->capture_default_str()
      ->group(secagg_group);
  app.add_option("--secagg-neighbours", t.secagg.neighbours,
                 "k: neighbours per client, a random k-regular graph as in SecAgg+ (0: every "
                 "client masks with every other)")
      ->capture_default_str()
      ->group(secagg_group);
  app.add_flag(
         "--secagg-no-masks", [&t](std::int64_t) { t.secagg.masks = false; },
         "the same fixed-point encoding summed in the clear, without the protocol: the "
         "reference a masked run equals bit for bit")
      ->group(secagg_group);
  auto& n = t.network;
  const char* grpc_group = "gRPC transport (--transport grpc)";
  app.add_option("--role", n.role,
                 "server (listens, runs the rounds, writes the results) or client (dials the "
                 "server and trains the --client-id clients)")
      ->check(CLI::IsMember({"server", "client"}))
      ->capture_default_str()
      ->group(grpc_group);
  app.add_option("--listen", n.listen,
                 "server: HOST:PORT to listen on (port 0: a free one, printed)")
      ->capture_default_str()
      ->group(grpc_group);
  app.add_option("--connect", n.connect, "client: the server's HOST:PORT")->group(grpc_group);
  app.add_option("--client-id", n.client_ids,
                 "client: the ids this process trains, e.g. 0 or 0,3,5 (each one its certificate "
                 "may act as)")
      ->group(grpc_group);
  app.add_option("--tls-ca", n.tls_ca, "the federation's CA certificate (PEM)")->group(grpc_group);
  app.add_option("--tls-cert", n.tls_cert, "this party's certificate (PEM)")->group(grpc_group);
  app.add_option("--tls-key", n.tls_key, "this party's private key (PEM)")->group(grpc_group);
  app.add_flag("--insecure", n.insecure,
               "no TLS and nobody authenticated: loopback experiments only")
      ->group(grpc_group);
  app.add_option("--roster", n.roster,
                 "server: file of 'NAME ID[,ID...]' lines, the ids each certificate common name "
                 "may act as (default: CN client-<N> acts as client N)")
      ->group(grpc_group);
  app.add_option("--connect-timeout", n.connect_timeout,
                 "client: seconds without a connection to the server before giving up")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(grpc_group);
  app.add_option("--chunk-kib", n.chunk_kib, "testing: gRPC chunk size, KiB")
      ->check(CLI::Range(1, 4000))
      ->group("");
  app.add_option("--garbage-client", t.garbage_client,
                 "testing: client C uploads garbage (mpi, grpc)")
      ->group("");
  app.add_option("--slow-client", t.slow_client,
                 "testing: client C answers round 0 three client timeouts late (mpi, grpc)")
      ->group("");
  app.add_option("--secagg-drop", t.secagg_drop,
                 "testing: CLIENT:STAGE,... each client silent from that stage on in every "
                 "round (advertise, share_keys, masked_input, unmask)")
      ->delimiter(',')
      ->check([](const std::string& v) -> std::string {
        const auto colon = v.find(':');
        const std::string st = colon == std::string::npos ? "" : v.substr(colon + 1);
        if (colon == 0 || colon == std::string::npos ||
            v.find_first_not_of("0123456789") != colon ||
            (st != "advertise" && st != "share_keys" && st != "masked_input" && st != "unmask"))
          return "expected CLIENT:STAGE with STAGE advertise, share_keys, masked_input or "
                 "unmask, got '" +
                 v + "'";
        return "";
      })
      ->group("");
}

// The flags that are each process's own (where it listens or dials, its certificates, threads,
// output and checkpoint files, test hooks, the server's drop policies) and do not change the bits
// a client computes.
inline const std::set<std::string> local_flags{"help",        "transport",      "role",
                                               "listen",      "connect",        "client-id",
                                               "tls-ca",      "tls-cert",       "tls-key",
                                               "insecure",    "roster",         "connect-timeout",
                                               "chunk-kib",   "garbage-client", "slow-client",
                                               "secagg-drop", "client-timeout", "on-bad-update",
                                               "min-clients", "threads",        "quiet",
                                               "csv",         "plot",           "npy",
                                               "out",         "checkpoint-dir", "checkpoint-every",
                                               "resume",      "crash-after"};

// 64-bit FNV-1a over 8-byte words of a file's bytes (empty when it cannot be read): a content
// fingerprint, not a cryptographic hash.
inline std::string content_hash(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return "unreadable";
  std::uint64_t h = 1469598103934665603ULL;
  std::vector<char> block(std::size_t(1) << 20);
  while (in.read(block.data(), std::streamsize(block.size())) || in.gcount() > 0) {
    const std::size_t n = std::size_t(in.gcount());
    for (std::size_t i = 0; i < n; i += 8) {
      std::uint64_t word = 0;
      std::memcpy(&word, block.data() + i, std::min<std::size_t>(8, n - i));
      h = (h ^ word) * 1099511628211ULL;
    }
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", (unsigned long long)h);
  return text;
}

// The run's fingerprint for a gRPC client process (see transport_options::fingerprint): rolora's
// version, then every option of `app` but local_flags and `also_local`, as given ("(default)"
// where not given and no default was captured). Call after parsing.
inline rolora::grpc::fingerprint fingerprint_of(const CLI::App& app,
                                                const std::set<std::string>& also_local = {}) {
  rolora::grpc::fingerprint f{{"rolora", std::string(rolora::version)}};
  for (const CLI::Option* o : app.get_options()) {
    const std::string name = o->get_single_name();
    if (name.empty() || local_flags.count(name) || also_local.count(name)) continue;
    std::string value;
    for (const auto& r : o->results()) value += (value.empty() ? "" : ",") + r;
    if (o->count() == 0) value = o->get_default_str().empty() ? "(default)" : o->get_default_str();
    f.emplace_back("--" + name, value);
  }
  return f;
}

// The transport a run uses, chosen by name (rolora::transport_by_name); what the applications
// call on it is the same for every transport.
class app_transport {
 public:
  // A transport that cannot be had (no MPI in this build, fewer than 2 ranks) ends the program
  // with the error and exit code 2.
  app_transport(int& argc, char**& argv, const transport_options& o)
      : t_(make(argc, argv, o)), secure_(o.secure_aggregation) {
#if defined(ROLORA_HAVE_SECAGG)
    for (const auto& entry : o.secagg_drop) {
      const auto colon = entry.find(':');
      const std::string st = entry.substr(colon + 1);
      drops_.emplace_back(std::stoul(entry.substr(0, colon)),
                          st == "advertise"      ? secagg::stage::advertise
                          : st == "share_keys"   ? secagg::stage::share_keys
                          : st == "masked_input" ? secagg::stage::masked_input
                                                 : secagg::stage::unmask);
    }
#if defined(ROLORA_HAVE_MPI)
    if (secure_) {
      t_.visit([&](auto& carrier) {
        if constexpr (std::is_same_v<std::remove_cvref_t<decltype(carrier)>,
                                     rolora::mpi::transport>)
          secure_mpi_ = std::make_unique<secagg::mpi_transport>(carrier);
      });
      if (secure_mpi_) secure_mpi_->drop = drop_hook();
    }
#endif
#endif
  }

  // Rank 0 under MPI, the server under gRPC, always in-process: the one that prints and writes.
  bool is_server() const { return t_.is_server(); }

  // rolora::run over this transport (client ranks serve and get no reports).
  template <class Federation, class Task, class... Callbacks>
  std::vector<round_report> run(Federation& fed, std::vector<Task>& tasks,
                                Callbacks&&... callbacks) {
    if (secure_) {
      return secure<Federation>([&](auto& t) { return rolora::run(t, fed, tasks, callbacks...); });
    }
    return t_.visit([&](auto& t) { return rolora::run(t, fed, tasks, callbacks...); });
  }
  // One round of `fed` (rank 0 or in-process): rolora::run_round.
  template <class Federation, class Task>
  round_report run_round(Federation& fed, std::vector<Task>& tasks) {
    if (secure_) {
      return secure<Federation>([&](auto& t) { return rolora::run_round(t, fed.server(), tasks); });
    }
    return t_.visit([&](auto& t) { return rolora::run_round(t, fed.server(), tasks); });
  }
  // Client ranks: serve `tasks` until rank 0's finish(); false (nothing done) elsewhere.
  template <class Backend, class Task>
  bool serve(std::vector<Task>& tasks, const federation_config& config) {
    if (is_server()) return false;
#if defined(ROLORA_HAVE_SECAGG) && defined(ROLORA_HAVE_MPI)
    if (secure_mpi_) {
      secure_mpi_->template serve<Backend>(tasks, config);
      return true;
    }
#endif
    t_.visit([&](auto& t) { t.template serve<Backend>(tasks, config); });
    return true;
  }
  // Rank 0: this federation is over.
  void finish() {
    if (!is_server()) return;
#if defined(ROLORA_HAVE_SECAGG) && defined(ROLORA_HAVE_MPI)
    if (secure_mpi_) return secure_mpi_->finish();
#endif
    t_.visit([](auto& t) { t.finish(); });
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
    if (o.secure_aggregation && o.kind == "grpc") {
      std::fprintf(stderr,
                   "error: --secure-aggregation runs in-process and over MPI so far (got "
                   "--transport grpc)\n");
      std::exit(2);
    }
#if !defined(ROLORA_HAVE_SECAGG)
    if (o.secure_aggregation) {
      std::fprintf(stderr,
                   "error: --secure-aggregation: this build has no libsodium (rolora::secagg)\n");
      std::exit(2);
    }
#endif
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
      if (o.network.role == "client" && o.kind != "grpc") {
        rolora::raise<config_error>("--role client is for --transport grpc");
      }
      return rolora::transport_by_name(o.kind, argc, argv, std::move(m), network(o));
    } catch (const error& e) {
      std::fprintf(stderr, "error: --transport %s: %s\n", o.kind.c_str(), e.what());
      std::exit(2);
    }
  }

  static rolora::grpc::options network(const transport_options& o) {
    const auto& n = o.network;
    rolora::grpc::options g;
    g.server = n.role == "server";
    g.address = g.server ? n.listen : n.connect;
    if (!g.server && o.kind == "grpc") g.client_ids = rolora::grpc::parse_client_ids(n.client_ids);
    g.tls = {n.tls_ca, n.tls_cert, n.tls_key};
    g.insecure = n.insecure;
    if (!n.roster.empty()) g.roster = rolora::grpc::read_roster(n.roster);
    g.connect_timeout = n.connect_timeout;
    g.chunk_bytes = n.chunk_kib * 1024;
    g.fingerprint = o.fingerprint;
    return g;
  }

  // f(secagg::in_process) where Federation's aggregator is a mean of factors; else the refusal.
  template <class Federation, class F>
  decltype(auto) secure(F&& f) {
    using aggregator = typename std::remove_cvref_t<
        decltype(std::declval<Federation&>().server())>::aggregator_type;
#if defined(ROLORA_HAVE_SECAGG)
    if constexpr (mean_of_factors_aggregator<aggregator> || product_mean_aggregator<aggregator>) {
#if defined(ROLORA_HAVE_MPI)
      if (secure_mpi_) return std::forward<F>(f)(*secure_mpi_);
#endif
      rolora::secagg::in_process t;
      t.drop = drop_hook();
      return std::forward<F>(f)(t);
    }
#endif
    refusing<aggregator> t;
    return std::forward<F>(f)(t);
  }
#if defined(ROLORA_HAVE_SECAGG)
  // --secagg-drop as the protocol's drop hook: silent from the stage on.
  std::function<bool(std::size_t, std::size_t, secagg::stage)> drop_hook() const {
    if (drops_.empty()) return {};
    return [drops = drops_](std::size_t client, std::size_t, secagg::stage s) {
      for (const auto& [c, from] : drops) {
        if (c == client && s >= from) return true;
      }
      return false;
    };
  }
#endif
  // The transport of a composition secure aggregation cannot run: refuses its first round.
  template <class Aggregator>
  struct refusing : rolora::in_process {
    template <class Server, class Task>
    auto exchange(Server& server, const round_plan& plan, std::vector<Task>& tasks) const {
      rolora::raise<config_error>("--secure-aggregation: aggregator '", Aggregator::name,
                                  "' needs each client's factors, and the server would see only "
                                  "their sum (docs/privacy.md: what composes)");
      return rolora::in_process::exchange(server, plan, tasks);
    }
  };

  rolora::transport_by_name t_;
  bool secure_ = false;
#if defined(ROLORA_HAVE_SECAGG)
  std::vector<std::pair<std::size_t, secagg::stage>> drops_;
#if defined(ROLORA_HAVE_MPI)
  // --secure-aggregation over MPI, over t_'s transport (declared after it: destroyed first).
  std::unique_ptr<secagg::mpi_transport> secure_mpi_;
#endif
#endif
};

}  // namespace rolora::apps
