// The gRPC transport of a federation across organisations (target rolora::grpc; needs Debian's
// libgrpc++-dev and nlohmann-json), a model of rolora::round_transport (core/concepts.hpp) run by
// the same loop as in-process and MPI (rolora::run / rolora::run_round). One server process
// listens; each client process dials out, authenticates with its certificate (mutual TLS) and
// serves the client ids its identity is allowed. Clients keep nothing between rounds, so the
// server's checkpoint is the whole job's, as over MPI.
//
// Wire: gRPC's generic API, no protoc. One bidirectional stream per client process, method
// /rolora.Federation/Session, carrying the frames of grpc/frame.hpp (chunks of at most
// chunk_bytes, so a message of any size passes the 4 MiB receive limit):
//   client -> hello   {"ids": [...], "fingerprint": [[field, value], ...]}   (JSON)
//   server -> welcome {"nonce": N, "federation": F}, or the stream ends with the refusal as its
//             status (PERMISSION_DENIED: identity or id; ALREADY_EXISTS: the id is connected;
//             FAILED_PRECONDITION: fingerprint): the client exits with the server's reason
//   server -> download (federated/message.hpp), routed to a client id, with the server start's
//             nonce and its count of finished federations
//   client -> upload, echoing the download's nonce and federation (uploads made for an earlier
//             server start or federation are discarded, not charged as bad updates)
//   server -> finish: federation F is over (serve() returns)
//
// Faults. Every read is guarded by keepalive pings (keepalive_ms), which the server permits at
// that rate (no too_many_pings), so long local training survives idle-connection reapers and a
// dead peer is noticed. A client that loses its stream reconnects with capped exponential backoff
// (0.1 s doubling to 5 s) and gives up after connect_timeout seconds without a stream; a refusal
// ends it at once. The server counts a client whose stream it knows to be gone as absent at once
// (dropped from the round with that reason), waits up to client_timeout for one it has not seen
// since it started, and serves a client that comes back from the next round that samples it.
// Frames that break the framing close that stream only (logged); the server goes on.
#pragma once
#include <grpc/grpc_security_constants.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <rolora/core/error.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/federated/message.hpp>
#include <rolora/federated/server.hpp>
#include <rolora/grpc/frame.hpp>
#include <rolora/grpc/options.hpp>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace rolora::grpc {

// Keepalive: a client pings an idle stream every keepalive_ms and drops it when no answer comes
// within keepalive_timeout_ms; the server pings its clients alike and accepts pings down to
// min_ping_interval_ms apart without data, never counting strikes. 60 s is well under the ~4
// minutes after which load balancers and NATs reap idle TCP (Flower uses 210 s).
inline constexpr int keepalive_ms = 60000;
inline constexpr int keepalive_timeout_ms = 20000;
inline constexpr int min_ping_interval_ms = 10000;

namespace detail {

inline constexpr const char* session_method = "/rolora.Federation/Session";
using clock = std::chrono::steady_clock;

inline std::string read_pem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) rolora::detail::raise<config_error>("gRPC: ", what, " ", path, " cannot be read");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline ::grpc::ByteBuffer to_buffer(std::span<const std::uint8_t> bytes) {
  ::grpc::Slice slice(bytes.data(), bytes.size());
  return ::grpc::ByteBuffer(&slice, 1);
}

inline std::vector<std::uint8_t> from_buffer(const ::grpc::ByteBuffer& buffer) {
  std::vector<::grpc::Slice> slices;
  std::vector<std::uint8_t> bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  bytes.reserve(buffer.Length());
  for (const auto& s : slices) bytes.insert(bytes.end(), s.begin(), s.end());
  return bytes;
}

inline std::vector<::grpc::ByteBuffer> chunks_of(const routing& route, std::uint64_t number,
                                                 std::span<const std::uint8_t> bytes,
                                                 std::size_t chunk_bytes) {
  std::vector<::grpc::ByteBuffer> out;
  for_each_chunk(route, number, bytes, chunk_bytes,
                 [&](std::span<const std::uint8_t> c) { out.push_back(to_buffer(c)); });
  return out;
}

inline std::vector<std::uint8_t> json_bytes(const nlohmann::json& j) {
  const std::string s = j.dump();
  return {s.begin(), s.end()};
}

inline void check_options(const options& o) {
  if (o.address.empty()) {
    rolora::detail::raise<config_error>("gRPC: no address (", o.server ? "--listen" : "--connect",
                                        " HOST:PORT)");
  }
  if (!o.insecure && (o.tls.ca.empty() || o.tls.cert.empty() || o.tls.key.empty())) {
    rolora::detail::raise<config_error>(
        "gRPC: mutual TLS needs --tls-ca, --tls-cert and --tls-key (scripts/make_certs.sh writes "
        "them); --insecure turns TLS off for loopback experiments");
  }
  if (o.chunk_bytes == 0 || o.chunk_bytes + frame_header_bytes > (std::size_t(4) << 20)) {
    rolora::detail::raise<config_error>("gRPC: chunk size ", o.chunk_bytes,
                                        " bytes, expected 1 .. 4 MiB - 56 (the receive limit)");
  }
  if (!o.server && o.client_ids.empty()) {
    rolora::detail::raise<config_error>("gRPC: a client process needs its --client-id");
  }
}

class server_state;

// One client process's stream, on the server. Created by gRPC for each call, deleted in OnDone.
class connection final : public ::grpc::ServerGenericBidiReactor {
 public:
  connection(server_state& state, ::grpc::GenericCallbackServerContext* context);
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override;

  // Queues a message's chunks (any thread).
  void send(const routing& route, std::span<const std::uint8_t> bytes);
  // Ends the stream with `status` (at most once; later calls do nothing).
  void end(const ::grpc::Status& status);

  const std::string& identity() const { return identity_; }
  const std::string& peer() const { return peer_; }

 private:
  server_state& state_;
  std::string identity_, peer_;
  ::grpc::ByteBuffer in_;
  reassembler reassembler_;
  std::mutex mu_;  // guards what follows
  std::deque<::grpc::ByteBuffer> out_;
  bool writing_ = false, ended_ = false;
  std::uint64_t sent_messages_ = 0;
};

// An upload as it came, before decoding.
struct inbound {
  std::size_t client;
  routing route;
  std::vector<std::uint8_t> bytes;
};

// What the server's connections share with its round loop, under one mutex.
class server_state {
 public:
  server_state(const options& o, FILE* log) : options_(o), log_(log) {
    std::random_device rd;
    nonce_ = (std::uint64_t(rd()) << 32) ^ rd();
  }

  template <class... Args>
  void log(const char* format, Args... args) {
    if (!log_) return;
    std::fprintf(log_, format, args...);
    std::fflush(log_);
  }

  // A complete message from `from`: the hello (accepted or refused) or an upload for the inbox.
  void received(connection& from, message m) {
    std::unique_lock lock(mu_);
    const bool hello_done = hosts_.count(&from) != 0;
    if (m.route.kind == message_kind::hello && !hello_done) {
      std::vector<std::size_t> ids;
      fingerprint theirs;
      try {
        const auto j = nlohmann::json::parse(m.bytes.begin(), m.bytes.end());
        ids = j.at("ids").get<std::vector<std::size_t>>();
        theirs = j.at("fingerprint").get<fingerprint>();
      } catch (const std::exception& e) {
        lock.unlock();
        refuse(from, ::grpc::StatusCode::INVALID_ARGUMENT,
               rolora::detail::concat("an unreadable hello: ", e.what()));
        return;
      }
      if (auto why = admit(from, ids, theirs)) {
        lock.unlock();
        refuse(from, why->first, why->second);
        return;
      }
      hosts_[&from] = ids;
      std::string list;
      for (std::size_t c : ids) {
        owner_[c] = &from;
        seen_.insert(c);
        list += (list.empty() ? "" : ",") + std::to_string(c);
      }
      log("grpc: %s (%s) connected as client %s\n", from.identity().c_str(), from.peer().c_str(),
          list.c_str());
      from.send({message_kind::welcome, 0, nonce_, federation_},
                json_bytes({{"nonce", nonce_}, {"federation", federation_}}));
      notify();
      return;
    }
    if (m.route.kind == message_kind::upload && hello_done) {
      const auto& ids = hosts_[&from];
      if (std::find(ids.begin(), ids.end(), std::size_t(m.route.client)) == ids.end()) {
        log("grpc: an upload for client %llu from %s, which does not hold it: discarded\n",
            (unsigned long long)m.route.client, from.identity().c_str());
        return;
      }
      inbox_.push_back({std::size_t(m.route.client), m.route, std::move(m.bytes)});
      notify();
      return;
    }
    lock.unlock();
    refuse(from, ::grpc::StatusCode::INVALID_ARGUMENT,
           rolora::detail::concat("a ", kind_name(m.route.kind), " message ",
                                  hello_done ? "after the hello" : "before the hello"));
  }

  // The stream of `from` is over: its clients are gone.
  void closed(connection& from, const char* why) {
    std::lock_guard lock(mu_);
    const auto it = hosts_.find(&from);
    if (it == hosts_.end()) return;
    std::string list;
    for (std::size_t c : it->second) {
      if (owner_[c] == &from) owner_.erase(c);
      list += (list.empty() ? "" : ",") + std::to_string(c);
    }
    hosts_.erase(it);
    log("grpc: client %s (%s) disconnected: %s\n", list.c_str(), from.identity().c_str(), why);
    notify();
  }

  // Something the round loop waits for happened (a stream opened or closed, an upload came):
  // under the lock, a new generation.
  void notify() {
    ++generation_;
    changed_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable changed_;
  std::uint64_t generation_ = 0;
  const options& options_;
  FILE* log_;
  std::uint64_t nonce_ = 0;                                // this server start's
  std::uint64_t federation_ = 0;                           // federations finished
  std::map<connection*, std::vector<std::size_t>> hosts_;  // accepted streams and their ids
  std::map<std::size_t, connection*> owner_;               // client id -> its stream
  std::set<std::size_t> seen_;  // ids that had a stream since this server started
  std::deque<inbound> inbox_;

 private:
  // Why `from` may not act as `ids`, if it may not (the lock held).
  std::optional<std::pair<::grpc::StatusCode, std::string>> admit(
      connection& from, const std::vector<std::size_t>& ids, const fingerprint& theirs) {
    if (ids.empty()) return {{::grpc::StatusCode::INVALID_ARGUMENT, "a hello with no client id"}};
    if (!options_.insecure) {
      const auto allowed = allowed_ids(options_.roster, from.identity());
      for (std::size_t c : ids) {
        if (std::find(allowed.begin(), allowed.end(), c) == allowed.end()) {
          return {
              {::grpc::StatusCode::PERMISSION_DENIED,
               rolora::detail::concat("identity '", from.identity(), "' may not act as client ", c,
                                      options_.roster.empty() ? " (without a roster, CN "
                                                                "client-<N> acts as client N)"
                                                              : " (see the server's roster)")}};
        }
      }
    }
    for (std::size_t c : ids) {
      if (owner_.count(c)) {
        return {{::grpc::StatusCode::ALREADY_EXISTS,
                 rolora::detail::concat("client ", c, " is already connected (", owner_[c]->peer(),
                                        ")")}};
      }
    }
    if (auto diff = first_difference(options_.fingerprint, theirs)) {
      return {{::grpc::StatusCode::FAILED_PRECONDITION,
               rolora::detail::concat("this client's run is not the server's: ", *diff)}};
    }
    return std::nullopt;
  }

  void refuse(connection& from, ::grpc::StatusCode code, const std::string& why) {
    log("grpc: refused %s (%s): %s\n", from.identity().c_str(), from.peer().c_str(), why.c_str());
    from.end(::grpc::Status(code, why));
  }
};

inline connection::connection(server_state& state, ::grpc::GenericCallbackServerContext* context)
    : state_(state), peer_(context->peer()), reassembler_(state.options_.max_message_bytes) {
  if (const auto auth = context->auth_context()) {
    const auto names = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
    if (!names.empty()) identity_.assign(names.front().data(), names.front().size());
  }
  if (identity_.empty()) identity_ = state.options_.insecure ? "(insecure)" : "(no certificate)";
  if (context->method() != session_method) {
    state.log("grpc: %s called unknown method %s\n", peer_.c_str(), context->method().c_str());
    end(::grpc::Status(::grpc::StatusCode::UNIMPLEMENTED, "unknown method " + context->method()));
    return;
  }
  StartRead(&in_);
}

inline void connection::OnReadDone(bool ok) {
  if (!ok) {
    state_.closed(*this,
                  reassembler_.incomplete() ? "stream cut inside a message" : "stream ended");
    end(::grpc::Status::OK);
    return;
  }
  try {
    if (auto m = reassembler_.feed(from_buffer(in_))) state_.received(*this, std::move(*m));
  } catch (const error& e) {
    state_.log("grpc: %s (%s): %s; its stream is closed\n", identity_.c_str(), peer_.c_str(),
               e.what());
    state_.closed(*this, "bad frames");
    end(::grpc::Status(::grpc::StatusCode::INVALID_ARGUMENT, e.what()));
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (ended_) return;
  }
  StartRead(&in_);
}

inline void connection::send(const routing& route, std::span<const std::uint8_t> bytes) {
  auto chunks = chunks_of(route, sent_messages_, bytes, state_.options_.chunk_bytes);
  std::lock_guard lock(mu_);
  ++sent_messages_;
  if (ended_) return;
  for (auto& c : chunks) out_.push_back(std::move(c));
  if (!writing_) {
    writing_ = true;
    StartWrite(&out_.front());
  }
}

inline void connection::OnWriteDone(bool ok) {
  std::lock_guard lock(mu_);
  out_.pop_front();
  if (!ok || ended_ || out_.empty()) {
    writing_ = false;
    if (!ok) out_.clear();
    return;
  }
  StartWrite(&out_.front());
}

inline void connection::end(const ::grpc::Status& status) {
  {
    std::lock_guard lock(mu_);
    if (ended_) return;
    ended_ = true;
  }
  Finish(status);
}

inline void connection::OnDone() {
  state_.closed(*this, "call done");
  delete this;
}

class session_service final : public ::grpc::CallbackGenericService {
 public:
  explicit session_service(server_state& state) : state_(state) {}
  ::grpc::ServerGenericBidiReactor* CreateReactor(
      ::grpc::GenericCallbackServerContext* context) override {
    return new connection(state_, context);
  }

 private:
  server_state& state_;
};

// A client process's stream to the server: one operation at a time on a completion queue, so
// the client's code reads as the sequence it is.
class client_session {
 public:
  explicit client_session(const options& o) : options_(o) {
    ::grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_timeout_ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
    std::shared_ptr<::grpc::ChannelCredentials> credentials;
    if (o.insecure) {
      credentials = ::grpc::InsecureChannelCredentials();
    } else {
      ::grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = read_pem(o.tls.ca, "--tls-ca");
      ssl.pem_cert_chain = read_pem(o.tls.cert, "--tls-cert");
      ssl.pem_private_key = read_pem(o.tls.key, "--tls-key");
      credentials = ::grpc::SslCredentials(ssl);
    }
    channel_ = ::grpc::CreateCustomChannel(o.address, credentials, args);
    stub_ = std::make_unique<::grpc::GenericStub>(channel_);
  }
  client_session(const client_session&) = delete;
  client_session& operator=(const client_session&) = delete;
  ~client_session() { close(); }

  bool open() const { return call_ != nullptr; }
  std::uint64_t nonce() const { return nonce_; }
  std::uint64_t federation() const { return federation_; }

  // Opens a stream and says hello; retries with backoff until connect_timeout seconds pass
  // (config_error with the last error) or the server refuses (config_error with its reason).
  // Each attempt, welcome included, ends by then: a peer that accepts and stays silent is no
  // server.
  void connect(std::span<const std::uint8_t> hello) {
    const auto give_up =
        clock::now() + std::chrono::duration_cast<clock::duration>(
                           std::chrono::duration<double>(options_.connect_timeout));
    auto backoff = std::chrono::milliseconds(100);
    std::string last = "no attempt";
    for (;;) {
      if (attempt(hello, give_up, last)) return;
      if (clock::now() + backoff >= give_up) {
        rolora::detail::raise<config_error>("gRPC: no connection to ", options_.address,
                                            " within --connect-timeout ", options_.connect_timeout,
                                            " s; last error: ", last);
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    }
  }

  // The next message; nothing when the stream broke (the caller reconnects). A refusal or a
  // framing error from the server is a config_error.
  std::optional<message> read(std::optional<clock::time_point> deadline = std::nullopt) {
    for (;;) {
      ::grpc::ByteBuffer buffer;
      call_->Read(&buffer, tag(op::read));
      if (!wait(op::read, deadline)) {
        ended();
        return std::nullopt;
      }
      try {
        if (auto m = reassembler_->feed(from_buffer(buffer))) return m;
      } catch (const frame_error& e) {
        close();
        throw;
      }
    }
  }

  // Sends one message; false when the stream broke.
  bool write(const routing& route, std::span<const std::uint8_t> bytes,
             std::optional<clock::time_point> deadline = std::nullopt) {
    for (auto& c : chunks_of(route, sent_messages_, bytes, options_.chunk_bytes)) {
      call_->Write(c, tag(op::write));
      if (!wait(op::write, deadline)) {
        ended();
        return false;
      }
    }
    ++sent_messages_;
    return true;
  }

  // Ends the stream, if open (TryCancel, then the status is collected).
  void close() {
    if (!call_) return;
    context_->TryCancel();
    ::grpc::Status status;
    call_->Finish(&status, tag(op::finish));
    wait(op::finish);
    call_.reset();
    context_.reset();
  }

 private:
  enum class op : std::intptr_t { start = 1, read, write, finish };
  static void* tag(op o) { return reinterpret_cast<void*>(std::intptr_t(o)); }

  // Waits for `o` to complete; its ok.
  // Waits for `o` to complete; its ok. Past `deadline` the call is cancelled (the operation
  // then completes, not ok).
  bool wait(op o, std::optional<clock::time_point> deadline = std::nullopt) {
    void* got = nullptr;
    bool ok = false;
    for (;;) {
      auto status = ::grpc::CompletionQueue::GOT_EVENT;
      if (deadline) {
        const auto left = *deadline - clock::now();
        status = cq_.AsyncNext(&got, &ok, std::chrono::system_clock::now() + left);
      } else if (!cq_.Next(&got, &ok)) {
        status = ::grpc::CompletionQueue::SHUTDOWN;
      }
      if (status == ::grpc::CompletionQueue::SHUTDOWN) return false;
      if (status == ::grpc::CompletionQueue::TIMEOUT) {
        context_->TryCancel();
        deadline.reset();
        timed_out_ = true;
        continue;
      }
      if (got == tag(o)) return ok;
    }
  }

  // The stream ended under us: its status says why. A refusal ends the client; anything else
  // (UNAVAILABLE, a server restart, a reaped connection) is for reconnecting.
  void ended() {
    ::grpc::Status status;
    call_->Finish(&status, tag(op::finish));
    wait(op::finish);
    call_.reset();
    context_.reset();
    last_status_ = timed_out_ ? "no welcome from the server in time (is it a rolora server?)"
                              : status.error_message();
    timed_out_ = false;
    switch (status.error_code()) {
      case ::grpc::StatusCode::PERMISSION_DENIED:
      case ::grpc::StatusCode::ALREADY_EXISTS:
      case ::grpc::StatusCode::FAILED_PRECONDITION:
      case ::grpc::StatusCode::INVALID_ARGUMENT:
      case ::grpc::StatusCode::UNIMPLEMENTED:
        rolora::detail::raise<config_error>("gRPC: the server at ", options_.address,
                                            " refused this client: ", status.error_message());
      default:
        break;
    }
  }

  // One stream opened and greeted before `give_up`, or false with the reason in `last`.
  bool attempt(std::span<const std::uint8_t> hello, clock::time_point give_up, std::string& last) {
    context_ = std::make_unique<::grpc::ClientContext>();
    call_ = stub_->PrepareCall(context_.get(), session_method, &cq_);
    reassembler_.emplace(options_.max_message_bytes);
    sent_messages_ = 0;
    call_->StartCall(tag(op::start));
    if (!wait(op::start, give_up)) {
      ended();
      last = last_status_;
      return false;
    }
    if (!write({message_kind::hello, 0, 0, 0}, hello, give_up)) {
      last = last_status_;
      return false;
    }
    const auto welcome = read(give_up);
    if (!welcome) {
      last = last_status_;
      return false;
    }
    if (welcome->route.kind != message_kind::welcome) {
      close();
      rolora::detail::raise<config_error>("gRPC: the server answered the hello with a ",
                                          kind_name(welcome->route.kind), " message");
    }
    nonce_ = welcome->route.nonce;
    federation_ = welcome->route.federation;
    return true;
  }

  const options& options_;
  std::shared_ptr<::grpc::Channel> channel_;
  std::unique_ptr<::grpc::GenericStub> stub_;
  ::grpc::CompletionQueue cq_;
  std::unique_ptr<::grpc::ClientContext> context_;
  std::unique_ptr<::grpc::GenericClientAsyncReaderWriter> call_;
  std::optional<reassembler> reassembler_;
  std::uint64_t sent_messages_ = 0;
  std::uint64_t nonce_ = 0, federation_ = 0;
  std::string last_status_;
  bool timed_out_ = false;  // the last wait passed its deadline
};

}  // namespace detail

// client_timeout, log and tamper (federated/federation.hpp).
using transport_options = rolora::transport_options;

class transport {
 public:
  // The server listens at once (an occupied port is a config_error; port 0 picks a free one,
  // see address()); a client process connects at its first serve().
  explicit transport(options o, transport_options t = {})
      : options_(std::move(o)), transport_(std::move(t)) {
    detail::check_options(options_);
    if (options_.server) {
      listen();
    } else {
      session_ = std::make_unique<detail::client_session>(options_);
      if (options_.insecure && transport_.log) {
        std::fprintf(transport_.log,
                     "grpc: INSECURE: no TLS, the server is not authenticated; loopback "
                     "experiments only\n");
      }
    }
  }
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;
  ~transport() {
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
      server_->Wait();
    }
  }

  bool is_server() const { return options_.server; }
  const options& settings() const { return options_; }
  // The address the server listens on, with the port it got.
  const std::string& address() const { return listening_; }

  // The server, inside rolora::run_round: delivers the downloads of `plan` to the streams of its
  // reporting clients and returns what came back, decoded as hostile input. A client whose
  // stream is gone is dropped at once; one not seen since this server started is waited for up
  // to client_timeout (0: for ever). Changes nothing in the server.
  template <class Server, class Task>
  std::vector<received_upload<typename Server::backend_type>> exchange(Server& server,
                                                                       const round_plan& plan,
                                                                       std::vector<Task>& tasks) {
    using Backend = typename Server::backend_type;
    require_server("exchange");
    (void)tasks;
    dropped_.clear();
    const bool keep = server.config().keep_optimizer_state;
    std::map<std::size_t, std::vector<std::uint8_t>> unsent;  // client -> its download
    for (std::size_t c : plan.reporting) {
      unsent[c] = encode_download(server.download(plan, c), server.upload_factors(plan), keep);
    }
    std::map<std::size_t, detail::connection*> sent_to;
    std::vector<std::size_t> waiting = plan.reporting;  // increasing
    std::optional<detail::clock::time_point> deadline;
    if (transport_.client_timeout > 0) {
      deadline =
          detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(
                                     std::chrono::duration<double>(transport_.client_timeout));
    }
    std::vector<received_upload<Backend>> got;
    auto& s = *state_;
    std::unique_lock lock(s.mu_);
    const auto drop = [&](std::size_t c, std::string why) {
      waiting.erase(std::find(waiting.begin(), waiting.end(), c));
      s.log("round %zu: client %zu dropped: %s\n", plan.round, c, why.c_str());
      dropped_.push_back({c, std::move(why)});
    };
    while (!waiting.empty()) {
      for (auto it = unsent.begin(); it != unsent.end();) {
        const auto owner = s.owner_.find(it->first);
        if (owner != s.owner_.end()) {
          owner->second->send({message_kind::download, it->first, s.nonce_, s.federation_},
                              it->second);
          sent_to[it->first] = owner->second;
          it = unsent.erase(it);
        } else if (s.seen_.count(it->first)) {
          drop(it->first, "not connected (its stream is gone)");
          it = unsent.erase(it);
        } else {
          ++it;
        }
      }
      for (const auto& [c, conn] : sent_to) {
        const auto owner = s.owner_.find(c);
        const bool waited = std::find(waiting.begin(), waiting.end(), c) != waiting.end();
        if (waited && (owner == s.owner_.end() || owner->second != conn)) {
          drop(c, "its stream was lost after its download");
        }
      }
      const std::uint64_t generation = s.generation_;
      std::deque<detail::inbound> inbox;
      inbox.swap(s.inbox_);
      lock.unlock();
      for (auto& in : inbox) accept(server, plan, in, waiting, got);
      lock.lock();
      if (waiting.empty() || (deadline && detail::clock::now() >= *deadline)) break;
      // Whatever happened while the lock was released counts: wait only if nothing did.
      const auto news = [&] { return s.generation_ != generation; };
      if (!deadline) {
        s.changed_.wait(lock, news);
      } else if (!s.changed_.wait_until(lock, *deadline, news)) {
        break;
      }
    }
    for (std::size_t c : std::vector<std::size_t>(waiting)) {
      drop(c, rolora::detail::concat("no upload within --client-timeout ",
                                     transport_.client_timeout, " s"));
    }
    return got;
  }

  // The server, after complete_round: adds the clients this exchange dropped to `report`.
  void finish_round(const round_plan& plan, round_report& report) {
    for (const auto& r : report.rejected) {
      state_->log("round %zu: client %zu dropped: %s\n", plan.round, r.client, r.reason.c_str());
    }
    for (auto& d : dropped_) report.rejected.push_back({d.first, d.second});
    std::sort(report.rejected.begin(), report.rejected.end(),
              [](const auto& a, const auto& b) { return a.client < b.client; });
  }

  // The server: this federation is over; each connected client process's serve() returns.
  void finish() {
    require_server("finish");
    std::lock_guard lock(state_->mu_);
    for (auto& [conn, ids] : state_->hosts_) {
      conn->send({message_kind::finish, 0, state_->nonce_, state_->federation_}, {});
    }
    ++state_->federation_;
  }

  // A client process: serves the downloads for its client ids (tasks[c]) with
  // train_locally(tasks[c], download, config) until the server finishes this federation. A
  // lost stream is reopened; a refusal, or no stream within connect_timeout, is a config_error.
  template <class Backend, class Task>
  void serve(std::vector<Task>& tasks, const federation_config& config) {
    if (is_server()) rolora::detail::raise<config_error>("gRPC transport: serve() on the server");
    for (std::size_t c : options_.client_ids) {
      if (c >= tasks.size()) {
        rolora::detail::raise<config_error>("gRPC transport: client id ", c, ", the run has ",
                                            tasks.size(), " clients");
      }
    }
    for (;;) {
      std::optional<message> m;
      if (pending_) {
        m = std::move(pending_);
        pending_.reset();
      } else {
        if (!session_->open()) session_->connect(hello());
        m = session_->read();
        if (!m) continue;  // lost: reconnect
      }
      const std::uint64_t f = m->route.federation;
      if (f < federation_) continue;  // an earlier federation's, replayed by a resumed server
      if (f > federation_) {          // the server is past this federation: it is over here
        pending_ = std::move(m);
        ++federation_;
        return;
      }
      if (m->route.kind == message_kind::finish) {
        ++federation_;
        return;
      }
      if (m->route.kind != message_kind::download) {
        session_->close();
        rolora::detail::raise<config_error>("gRPC: the server sent a ", kind_name(m->route.kind),
                                            " message during a federation");
      }
      const std::size_t c = std::size_t(m->route.client);
      std::vector<std::uint8_t> answer;
      std::size_t round = 0;
      try {
        if (std::find(options_.client_ids.begin(), options_.client_ids.end(), c) ==
            options_.client_ids.end()) {
          rolora::detail::raise<value_error>("a download for client ", c,
                                             ", not one this process serves");
        }
        answer = answer_download<Backend>(m->bytes, c, tasks[c], config, round);
      } catch (const error& e) {
        std::fprintf(stderr, "client %zu: %s\n", c, e.what());
        answer.clear();
      }
      if (transport_.tamper) transport_.tamper(c, round, answer);
      session_->write({message_kind::upload, c, m->route.nonce, f}, answer);
    }
  }

 private:
  void listen() {
    state_ = std::make_unique<detail::server_state>(options_, transport_.log);
    service_ = std::make_unique<detail::session_service>(*state_);
    std::shared_ptr<::grpc::ServerCredentials> credentials;
    if (options_.insecure) {
      credentials = ::grpc::InsecureServerCredentials();
    } else {
      ::grpc::SslServerCredentialsOptions ssl(
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      ssl.pem_root_certs = detail::read_pem(options_.tls.ca, "--tls-ca");
      ssl.pem_key_cert_pairs.push_back({detail::read_pem(options_.tls.key, "--tls-key"),
                                        detail::read_pem(options_.tls.cert, "--tls-cert")});
      credentials = ::grpc::SslServerCredentials(ssl);
    }
    ::grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(options_.address, credentials, &port);
    builder.RegisterCallbackGenericService(service_.get());
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_timeout_ms);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                               min_ping_interval_ms);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.SetMaxReceiveMessageSize(int(options_.chunk_bytes + frame_header_bytes));
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      rolora::detail::raise<config_error>("gRPC: cannot listen on ", options_.address,
                                          " (port in use, or not an address of this machine)");
    }
    listening_ = options_.address.substr(0, options_.address.rfind(':') + 1) + std::to_string(port);
    state_->log("grpc: listening on %s (%s)\n", listening_.c_str(),
                options_.insecure
                    ? "INSECURE: no TLS, nobody authenticated; loopback experiments only"
                    : "mutual TLS");
  }

  std::vector<std::uint8_t> hello() const {
    return detail::json_bytes(
        {{"ids", options_.client_ids}, {"fingerprint", nlohmann::json(options_.fingerprint)}});
  }

  // One upload from the inbox, decoded as hostile input, into `got` (or discarded and logged).
  template <class Server, class Backend>
  void accept(Server& server, const round_plan& plan, detail::inbound& in,
              std::vector<std::size_t>& waiting, std::vector<received_upload<Backend>>& got) {
    auto& s = *state_;
    const std::size_t c = in.client;
    if (in.route.nonce != s.nonce_ || in.route.federation != s.federation_) {
      s.log(
          "round %zu: an upload of client %zu made for an earlier server start or federation: "
          "discarded\n",
          plan.round, c);
      return;
    }
    const auto it = std::find(waiting.begin(), waiting.end(), c);
    if (it == waiting.end()) {
      s.log("round %zu: an upload from client %zu, not awaited, discarded\n", plan.round, c);
      return;
    }
    received_upload<Backend> r{c, in.bytes.size(), std::nullopt, {}};
    try {
      r.upload = decode_upload<Backend>(in.bytes, server.client_view(c));
    } catch (const error& e) {
      r.error = e.message();
    }
    if (r.upload && r.upload->round < plan.round) {
      s.log("round %zu: a late upload of round %zu from client %zu discarded\n", plan.round,
            r.upload->round, c);
      return;
    }
    waiting.erase(it);
    got.push_back(std::move(r));
  }

  void require_server(const char* what) const {
    if (!is_server()) {
      rolora::detail::raise<config_error>("gRPC transport: ", what,
                                          "() is the server's, called on a client process");
    }
  }

  options options_;
  transport_options transport_;
  // server
  std::unique_ptr<detail::server_state> state_;
  std::unique_ptr<detail::session_service> service_;
  std::unique_ptr<::grpc::Server> server_;
  std::string listening_;
  std::vector<std::pair<std::size_t, std::string>> dropped_;  // by the last exchange, and why
  // client process
  std::unique_ptr<detail::client_session> session_;
  std::optional<message> pending_;  // a message of a later federation than this serve()'s
  std::uint64_t federation_ = 0;    // the federation this process's serve() is in
};

}  // namespace rolora::grpc
