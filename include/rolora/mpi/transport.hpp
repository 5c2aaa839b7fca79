// The MPI transport of a federation (target rolora::mpi; needs an MPI library and nlohmann-json),
// a model of rolora::round_transport (core/concepts.hpp): the round loop is rolora::run /
// rolora::run_round (federated/federation.hpp), the same as in-process. Rank 0 is the server,
// ranks 1..P-1 host the clients, client c on rank 1 + c mod (P - 1). Every rank builds the same
// tasks from the same flags; only rank 0 holds the server's state, client ranks keep nothing
// between rounds (what a client keeps -- FedSA's B, its moments -- comes down in its download),
// so a checkpoint of rank 0 is the whole job's.
//
// One round on rank 0 (exchange, then finish_round): one download message per reporting client,
// sent without waiting (MPI_Isend, tag 1 + c) -> uploads collected as they come (MPI_Iprobe with
// a sleep between polls, so that an idle rank leaves its core to the others) until every
// reporting client answered or `client_timeout` passed -> each decoded as hostile input (an
// undecodable one is that client's bad upload; one of a past round is discarded by its round
// number) -> the loop's federation_server::complete_round merges in client-id order whatever the
// arrival order -> finish_round adds the clients that did not answer in time to the report
// (dropped from the round) and logs every drop with the client's id and the reason. Client ranks
// (serve): wait for a download, train with train_locally, answer with the upload message, until
// rank 0 says the federation is over (tag 0; finish()).
// Messages: federated/message.hpp (download and upload, safetensors). A dead rank aborts the MPI
// job (MPI's own fault model): checkpoints (federated/checkpoint.hpp) are the answer to that.
#pragma once
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <list>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/federated/message.hpp>
#include <rolora/federated/server.hpp>
#include <string>
#include <thread>
#include <vector>

namespace rolora::mpi {

namespace detail {

inline void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, text, &n);
  rolora::detail::raise<error>("MPI: ", what, " failed: ", std::string(text, std::size_t(n)));
}

using clock = std::chrono::steady_clock;

// Probes for a message from `source` with `tag` (wildcards allowed) until one is there (true)
// or `deadline` passes (false). Between polls it sleeps, from 20 us growing to 2 ms: a blocking
// MPI_Probe spins, which on an oversubscribed machine steals the core a client trains on.
inline bool poll(MPI_Comm comm, int source, int tag, MPI_Status& status,
                 std::optional<clock::time_point> deadline) {
  auto nap = std::chrono::microseconds(20);
  for (;;) {
    int flag = 0;
    check(MPI_Iprobe(source, tag, comm, &flag, &status), "MPI_Iprobe");
    if (flag) return true;
    if (deadline && clock::now() >= *deadline) return false;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(2000));
  }
}

// Receives the message `status` announced.
inline std::vector<std::uint8_t> receive(MPI_Comm comm, const MPI_Status& status) {
  int count = 0;
  check(MPI_Get_count(&status, MPI_BYTE, &count), "MPI_Get_count");
  std::vector<std::uint8_t> bytes(std::size_t(std::max(count, 0)));
  check(MPI_Recv(bytes.data(), count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, comm,
                 MPI_STATUS_IGNORE),
        "MPI_Recv");
  return bytes;
}

// Messages posted with MPI_Isend, whose bytes must live until MPI has read them.
class pending_sends {
 public:
  void post(std::vector<std::uint8_t> bytes, int rank, int tag, MPI_Comm comm) {
    sends_.push_back({std::move(bytes), MPI_REQUEST_NULL});
    auto& s = sends_.back();
    check(MPI_Isend(s.bytes.data(), int(s.bytes.size()), MPI_BYTE, rank, tag, comm, &s.request),
          "MPI_Isend");
  }
  // Forgets the sends that completed. `all`: also those still in flight to a rank that never
  // took them (gone or stuck): their requests are freed and their bytes left allocated, since
  // MPI may still read them.
  void release(bool all) {
    for (auto it = sends_.begin(); it != sends_.end();) {
      int done = 0;
      MPI_Test(&it->request, &done, MPI_STATUS_IGNORE);
      if (done) {
        it = sends_.erase(it);
      } else if (all) {
        MPI_Request_free(&it->request);
        new std::vector<std::uint8_t>(std::move(it->bytes));  // NOLINT: deliberately leaked
        it = sends_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  struct pending {
    std::vector<std::uint8_t> bytes;
    MPI_Request request = MPI_REQUEST_NULL;
  };
  std::list<pending> sends_;
};

}  // namespace detail

// MPI_Init_thread (funneled) on construction unless MPI is initialised, MPI_Finalize on
// destruction when it initialised it.
class session {
 public:
  session(int& argc, char**& argv) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      detail::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided),
                    "MPI_Init_thread");
      owner_ = true;
    }
  }
  session(const session&) = delete;
  session& operator=(const session&) = delete;
  ~session() {
    if (owner_) MPI_Finalize();
  }

 private:
  bool owner_ = false;
};

// Where rank 0's time in the last round went, seconds.
struct round_timing {
  double send = 0;    // encoding the downloads and posting them
  double wait = 0;    // waiting for uploads: the clients' training plus the transfers
  double decode = 0;  // decoding the uploads
  double merge = 0;   // complete_round: checks, aggregation, commit
};

// client_timeout, log and tamper (federated/federation.hpp).
using transport_options = rolora::transport_options;

class transport {
 public:
  explicit transport(MPI_Comm comm = MPI_COMM_WORLD, transport_options options = {})
      : comm_(comm), options_(std::move(options)) {
    detail::check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    detail::check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    if (size_ < 2) {
      rolora::detail::raise<config_error>(
          "MPI transport: needs at least 2 ranks (rank 0 the server, ranks 1.. the clients), got ",
          size_, "; run it under mpirun -np P with P >= 2");
    }
    int* ub = nullptr;
    int found = 0;
    detail::check(MPI_Comm_get_attr(comm_, MPI_TAG_UB, &ub, &found), "MPI_Comm_get_attr");
    tag_ub_ = found && ub ? *ub : 32767;
  }
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;
  ~transport() { sends_.release(true); }

  MPI_Comm comm() const { return comm_; }
  // The largest tag this MPI allows (MPI_TAG_UB): client c's messages use tag c + 1.
  int tag_upper_bound() const { return tag_ub_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_server() const { return rank_ == 0; }
  const transport_options& options() const { return options_; }
  const round_timing& last_round_timing() const { return timing_; }
  // The rank hosting client c: a fixed assignment, round-robin over ranks 1..P-1.
  int host_of(std::size_t client) const { return 1 + int(client % std::size_t(size_ - 1)); }

  // Rank 0, inside rolora::run_round: delivers the downloads of `plan` to the ranks hosting its
  // reporting clients and returns what came back within client_timeout, decoded as hostile input
  // (an undecodable upload is that client's bad upload). The clients that did not answer are
  // remembered for finish_round. Changes nothing in the server.
  template <class Server, class Task>
  std::vector<received_upload<typename Server::backend_type>> exchange(Server& server,
                                                                       const round_plan& plan,
                                                                       std::vector<Task>& tasks) {
    using Backend = typename Server::backend_type;
    require_server("exchange");
    const std::size_t num_clients = tasks.size();
    if (num_clients + 1 > std::size_t(tag_ub_)) {
      rolora::detail::raise<config_error>("MPI transport: ", num_clients,
                                          " clients need tags up to ", num_clients,
                                          ", this MPI allows ", tag_ub_);
    }
    timing_ = {};
    lap_ = detail::clock::now();
    timed_out_.clear();
    const bool keep = server.config().keep_optimizer_state;
    sends_.release(false);
    for (std::size_t c : plan.reporting) {
      sends_.post(encode_download(server.download(plan, c), server.upload_factors(plan), keep),
                  host_of(c), int(c + 1), comm_);
    }
    split(timing_.send);

    std::vector<received_upload<Backend>> got;
    std::vector<std::size_t> waiting = plan.reporting;  // increasing
    std::optional<detail::clock::time_point> deadline;
    if (options_.client_timeout > 0) {
      deadline = detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(
                                            std::chrono::duration<double>(options_.client_timeout));
    }
    MPI_Status status;
    while (!waiting.empty() && detail::poll(comm_, MPI_ANY_SOURCE, MPI_ANY_TAG, status, deadline)) {
      auto bytes = detail::receive(comm_, status);
      split(timing_.wait);
      const int tag = status.MPI_TAG;
      if (tag < 1 || std::size_t(tag) > num_clients ||
          host_of(std::size_t(tag - 1)) != status.MPI_SOURCE) {
        log("round %zu: a message with tag %d from rank %d discarded (no client of it)\n",
            plan.round, tag, status.MPI_SOURCE);
        continue;
      }
      const std::size_t c = std::size_t(tag - 1);
      received_upload<Backend> r{c, bytes.size(), std::nullopt, {}};
      try {
        r.upload = decode_upload<Backend>(bytes, server.client_view(c));
      } catch (const error& e) {
        r.error = e.message();
      }
      split(timing_.decode);
      const auto it = std::lower_bound(waiting.begin(), waiting.end(), c);
      const bool expected = it != waiting.end() && *it == c;
      if (r.upload && r.upload->round < plan.round) {
        log("round %zu: a late upload of round %zu from client %zu discarded\n", plan.round,
            r.upload->round, c);
        forget_late(c);
        continue;
      }
      if (!r.upload && !expected) {
        log("round %zu: an undecodable message from client %zu, not awaited, discarded\n",
            plan.round, c);
        continue;
      }
      if (expected) waiting.erase(it);
      got.push_back(std::move(r));  // unexpected but decodable: the server refuses it
    }
    for (std::size_t c : waiting) {
      log("round %zu: client %zu dropped: no upload within --client-timeout %g s\n", plan.round, c,
          options_.client_timeout);
      late_.push_back(c);
    }
    timed_out_ = std::move(waiting);
    split(timing_.wait);
    return got;
  }

  // Rank 0, inside rolora::run_round after complete_round: logs the clients the server dropped
  // and adds those that timed out to `report` (dropped from the round, in `rejected` with their
  // reason, which is sorted by client).
  void finish_round(const round_plan& plan, round_report& report) {
    split(timing_.merge);
    for (const auto& r : report.rejected) {
      log("round %zu: client %zu dropped: %s\n", plan.round, r.client, r.reason.c_str());
    }
    for (std::size_t c : timed_out_) {
      report.rejected.push_back({c, concat_timeout()});
    }
    std::sort(report.rejected.begin(), report.rejected.end(),
              [](const auto& a, const auto& b) { return a.client < b.client; });
  }

  // Rank 0: the federation is over; every client rank's serve() returns. The uploads of clients
  // that timed out and have not answered yet are awaited (up to client_timeout) and discarded,
  // so that no client rank is left blocked sending them.
  void finish() {
    require_server("finish");
    for (int r = 1; r < size_; ++r) {
      detail::check(MPI_Send(nullptr, 0, MPI_BYTE, r, 0, comm_), "MPI_Send");
    }
    const auto deadline =
        detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(
                                   std::chrono::duration<double>(options_.client_timeout));
    MPI_Status status;
    while (!late_.empty() && detail::poll(comm_, MPI_ANY_SOURCE, MPI_ANY_TAG, status, deadline)) {
      detail::receive(comm_, status);
      forget_late(std::size_t(status.MPI_TAG - 1));
    }
    late_.clear();
    sends_.release(true);
  }

  // Every rank: waits until every rank of the communicator is here.
  void barrier() { detail::check(MPI_Barrier(comm_), "MPI_Barrier"); }
  // After an error on any rank: ends the whole job (the other ranks may be waiting on this one),
  // stdout and stderr flushed first. Returns `code` only where MPI_Abort returns.
  int abort(int code) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(comm_, code);
    return code;
  }

  // Ranks 1..P-1: answers each download for a client it hosts (tasks[c]) with the upload of
  // train_locally(tasks[c], download, config), until rank 0 calls finish(). A download that
  // cannot be decoded is answered by an empty message (the server drops that client).
  template <class Backend, class Task>
  void serve(std::vector<Task>& tasks, const federation_config& config) {
    if (is_server()) rolora::detail::raise<config_error>("MPI transport: serve() on rank 0");
    MPI_Status status;
    for (;;) {
      detail::poll(comm_, 0, MPI_ANY_TAG, status, std::nullopt);
      const auto bytes = detail::receive(comm_, status);
      if (status.MPI_TAG == 0) return;
      const std::size_t c = std::size_t(status.MPI_TAG - 1);
      std::vector<std::uint8_t> answer;
      std::size_t round = 0;
      try {
        if (c >= tasks.size() || host_of(c) != rank_) {
          rolora::detail::raise<value_error>("a download for client ", c,
                                             ", not hosted on this rank");
        }
        answer = answer_download<Backend>(bytes, c, tasks[c], config, round);
      } catch (const error& e) {
        std::fprintf(stderr, "rank %d: client %zu: %s\n", rank_, c, e.what());
        answer.clear();
      }
      if (options_.tamper) options_.tamper(c, round, answer);
      detail::check(MPI_Send(answer.data(), int(answer.size()), MPI_BYTE, 0, int(c + 1), comm_),
                    "MPI_Send");
    }
  }

 private:
  void require_server(const char* what) const {
    if (!is_server()) {
      rolora::detail::raise<config_error>("MPI transport: ", what,
                                          "() is rank 0's, called on rank ", rank_);
    }
  }
  void forget_late(std::size_t client) {
    const auto it = std::find(late_.begin(), late_.end(), client);
    if (it != late_.end()) late_.erase(it);
  }
  std::string concat_timeout() const {
    return rolora::detail::concat("no upload within --client-timeout ", options_.client_timeout,
                                  " s");
  }

  // Adds the time since the last split to `into`.
  void split(double& into) {
    const auto now = detail::clock::now();
    into += std::chrono::duration<double>(now - lap_).count();
    lap_ = now;
  }

  template <class... Args>
  void log(const char* format, Args... args) const {
    if (options_.log) {
      std::fprintf(options_.log, format, args...);
      std::fflush(options_.log);
    }
  }

  MPI_Comm comm_;
  transport_options options_;
  int rank_ = 0, size_ = 0, tag_ub_ = 32767;
  detail::pending_sends sends_;         // the downloads in flight
  std::vector<std::size_t> late_;       // clients that timed out and have not answered since
  std::vector<std::size_t> timed_out_;  // those of the last exchange
  round_timing timing_;
  detail::clock::time_point lap_{};
};

}  // namespace rolora::mpi
