// The transports by name, for programs that choose one at run time (a --transport flag):
//   "inprocess"   rolora::in_process (federated/federation.hpp): the clients are threads of this
//                 process
//   "mpi"         rolora::mpi::transport (rolora/mpi/transport.hpp): rank 0 the server, ranks
//                 1..P-1 the clients, under mpirun -np P, P >= 2; only where the program links
//                 the target rolora::mpi (which defines ROLORA_HAVE_MPI): elsewhere asking for it
//                 is a config_error saying how to build it
//   "grpc"        rolora::grpc::transport (rolora/grpc/transport.hpp): one server process that
//                 listens, client processes that dial out (mutual TLS), each started on its own;
//                 only where the program links rolora::grpc (ROLORA_HAVE_GRPC), as for MPI
// transport_by_name owns the chosen transport (and, for MPI, the MPI session) and hands it to a
// generic callable: t.visit([&](auto& transport) { return rolora::run(transport, fed, tasks); }).
// This is the only place outside rolora/mpi/ and rolora/grpc/ that knows which were built.
#pragma once
#include <array>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/grpc/options.hpp>
#include <string>
#include <string_view>
#include <utility>
#if defined(ROLORA_HAVE_MPI)
#include <rolora/mpi/transport.hpp>
#endif
#if defined(ROLORA_HAVE_GRPC)
#include <rolora/grpc/transport.hpp>
#endif

namespace rolora {

// Whether this build has the MPI transport (the program links rolora::mpi).
#if defined(ROLORA_HAVE_MPI)
inline constexpr bool has_mpi_transport = true;
#else
inline constexpr bool has_mpi_transport = false;
#endif
// Whether this build has the gRPC transport (the program links rolora::grpc).
#if defined(ROLORA_HAVE_GRPC)
inline constexpr bool has_grpc_transport = true;
#else
inline constexpr bool has_grpc_transport = false;
#endif

// The names transport_by_name accepts, the default first.
inline constexpr std::array<std::string_view, 3> transport_names{"inprocess", "mpi", "grpc"};

class transport_by_name {
 public:
  // Throws config_error for an unknown name, for "mpi" or "grpc" in a build without it, for MPI
  // under fewer than 2 ranks (after leaving MPI again, on every rank alike) and for gRPC options
  // that cannot work (grpc::transport's). argc and argv go to MPI_Init_thread; `network` is the
  // gRPC transport's.
  transport_by_name(std::string_view name, int& argc, char**& argv, transport_options options = {},
                    grpc::options network = {})
      : name_(name) {
    if (name == "inprocess") return;
    if (name == "grpc") {
#if defined(ROLORA_HAVE_GRPC)
      grpc_.emplace(std::move(network), std::move(options));
      return;
#else
      (void)network;
      detail::raise<config_error>(
          "transport 'grpc': this build has no gRPC transport (link rolora::grpc, built where "
          "pkg-config finds grpc++; Debian: libgrpc++-dev pkg-config)");
#endif
    }
    if (name != "mpi") {
      detail::raise<config_error>("unknown transport '", name,
                                  "': expected inprocess, mpi or grpc");
    }
#if defined(ROLORA_HAVE_MPI)
    session_.emplace(argc, argv);
    try {
      mpi_.emplace(MPI_COMM_WORLD, std::move(options));
    } catch (const error&) {
      session_.reset();  // every rank sees the same size: all leave
      throw;
    }
#else
    (void)argc;
    (void)argv;
    (void)options;
    detail::raise<config_error>(
        "transport 'mpi': this build has no MPI transport (configure rolora with "
        "-DROLORA_ENABLE_MPI=ON and link rolora::mpi; Debian: libopenmpi-dev openmpi-bin)");
#endif
  }
  transport_by_name(const transport_by_name&) = delete;
  transport_by_name& operator=(const transport_by_name&) = delete;

  const std::string& name() const { return name_; }
  // f(transport) with the chosen transport, as its own type; f is instantiated for every
  // transport of the build, and each must give the same result type.
  template <class F>
  decltype(auto) visit(F&& f) {
#if defined(ROLORA_HAVE_GRPC)
    if (grpc_) return std::forward<F>(f)(*grpc_);
#endif
#if defined(ROLORA_HAVE_MPI)
    if (mpi_) return std::forward<F>(f)(*mpi_);
#endif
    return std::forward<F>(f)(in_process_);
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
#if defined(ROLORA_HAVE_GRPC)
    if (grpc_) return std::forward<F>(f)(std::as_const(*grpc_));
#endif
#if defined(ROLORA_HAVE_MPI)
    if (mpi_) return std::forward<F>(f)(std::as_const(*mpi_));
#endif
    return std::forward<F>(f)(in_process_);
  }

  // Whether this process holds the server (always, in-process): the one that prints and writes.
  bool is_server() const {
    return visit([](const auto& t) { return bool(t.is_server()); });
  }

 private:
  std::string name_;
  in_process in_process_;
#if defined(ROLORA_HAVE_MPI)
  std::optional<mpi::session> session_;
  std::optional<mpi::transport> mpi_;  // destroyed before the session
#endif
#if defined(ROLORA_HAVE_GRPC)
  std::optional<grpc::transport> grpc_;
#endif
};

}  // namespace rolora
