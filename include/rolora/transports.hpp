// The transports by name, for programs that choose one at run time (a --transport flag):
//   "inprocess"   rolora::in_process (federated/federation.hpp): the clients are threads of this
//                 process
//   "mpi"         rolora::mpi::transport (rolora/mpi/transport.hpp): rank 0 the server, ranks
//                 1..P-1 the clients, under mpirun -np P, P >= 2; only where the program links
//                 the target rolora::mpi (which defines ROLORA_HAVE_MPI): elsewhere asking for it
//                 is a config_error saying how to build it
// transport_by_name owns the chosen transport (and, for MPI, the MPI session) and hands it to a
// generic callable: t.visit([&](auto& transport) { return rolora::run(transport, fed, tasks); }).
// This is the only place outside rolora/mpi/ that knows whether MPI was built.
#pragma once
#include <array>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/federation.hpp>
#include <string>
#include <string_view>
#include <utility>
#if defined(ROLORA_HAVE_MPI)
#include <rolora/mpi/transport.hpp>
#endif

namespace rolora {

// Whether this build has the MPI transport (the program links rolora::mpi).
#if defined(ROLORA_HAVE_MPI)
inline constexpr bool has_mpi_transport = true;
#else
inline constexpr bool has_mpi_transport = false;
#endif

// The names transport_by_name accepts, the default first.
inline constexpr std::array<std::string_view, 2> transport_names{"inprocess", "mpi"};

class transport_by_name {
 public:
  // Throws config_error for an unknown name, for "mpi" in a build without MPI, and for MPI under
  // fewer than 2 ranks (after leaving MPI again, on every rank alike). argc and argv go to
  // MPI_Init_thread.
  transport_by_name(std::string_view name, int& argc, char**& argv, transport_options options = {})
      : name_(name) {
    if (name == "inprocess") return;
    if (name != "mpi") {
      detail::raise<config_error>("unknown transport '", name, "': expected inprocess or mpi");
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
#if defined(ROLORA_HAVE_MPI)
    if (mpi_) return std::forward<F>(f)(*mpi_);
#endif
    return std::forward<F>(f)(in_process_);
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
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
};

}  // namespace rolora
