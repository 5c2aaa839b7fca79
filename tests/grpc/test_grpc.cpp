// rolora::grpc (grpc/frame.hpp, grpc/options.hpp, grpc/transport.hpp): the chunk framing and its
// refusals, and federations over real gRPC streams on loopback (a server and client processes as
// threads of this test, plaintext): the in-process bits and reports, several federations in a
// row, messages split into many chunks, and the refusals a server makes at the hello. The TLS
// refusals, kills and restarts run with real processes in tests/grpc/grpc_check.sh.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <rolora/grpc/transport.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <thread>

#include "../test_support.hpp"

using namespace rolora;
using Backend = eigen_backend<double>;
namespace rg = rolora::grpc;  // not grpc::, which with "using namespace rolora" is also gRPC's

namespace {

// One chunk as a peer might send it: the header's fields as given, then `payload`.
std::vector<std::uint8_t> chunk_of(std::uint64_t number, std::uint64_t total, std::uint64_t offset,
                                   const std::vector<std::uint8_t>& payload,
                                   rg::routing route = {rg::message_kind::upload, 1, 2, 0}) {
  std::vector<std::uint8_t> out(rg::frame_header_bytes + payload.size(), 0);
  std::copy(rg::detail::frame_magic.begin(), rg::detail::frame_magic.end(), out.begin());
  out[4] = 1;
  out[5] = std::uint8_t(route.kind);
  rg::detail::put64(&out[8], number);
  rg::detail::put64(&out[16], total);
  rg::detail::put64(&out[24], offset);
  rg::detail::put64(&out[32], route.client);
  rg::detail::put64(&out[40], route.nonce);
  rg::detail::put64(&out[48], route.federation);
  std::copy(payload.begin(), payload.end(), out.begin() + rg::frame_header_bytes);
  return out;
}

theory::linear_problem<Backend> four_clients() {
  theory::linear_problem_config c;
  c.dim = 12;
  c.out_dim = 10;
  c.rank = 2;
  c.clients = 4;
  c.samples = 40;
  c.noise = 0.01;
  c.seed = 11;
  return theory::make_linear_problem<Backend>(c);
}

adapter_set<Backend> adapters() {
  lora_config c;
  c.r = 2;
  c.lora_alpha = 4.0;
  return adapter_set<Backend>({{theory::module_name, 10, 12}}, c, 5);
}

// Sampling, dropout, minibatches and AdamW moments kept by the server: every stream that a
// transport must carry bit for bit.
federation_config streams_config() {
  federation_config c;
  c.num_rounds = 4;
  c.local_steps = 2;
  c.clients_per_round = 3;
  c.client_dropout = 0.2;
  c.batch_size = 16;
  c.local_optimizer = adamw{0.05};
  c.keep_optimizer_state = true;
  c.seed = 4;
  return c;
}

rg::options loopback_server(std::size_t chunk = rg::default_chunk_bytes) {
  rg::options o;
  o.server = true;
  o.address = "127.0.0.1:0";
  o.insecure = true;
  o.chunk_bytes = chunk;
  o.fingerprint = {{"method", "fedsa"}, {"seed", "4"}};
  return o;
}

rg::options loopback_client(const rg::transport& server, std::vector<std::size_t> ids,
                            std::size_t chunk = rg::default_chunk_bytes) {
  rg::options o = loopback_server(chunk);
  o.server = false;
  o.address = server.address();
  o.client_ids = std::move(ids);
  o.connect_timeout = 10;
  return o;
}

rolora::transport_options quiet() {
  rolora::transport_options o;
  o.log = nullptr;
  return o;
}

bool same_reports(const std::vector<round_report>& x, const std::vector<round_report>& y) {
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x[i].participants != y[i].participants || x[i].dropped != y[i].dropped ||
        x[i].train_loss != y[i].train_loss || x[i].bytes_up != y[i].bytes_up ||
        x[i].bytes_down != y[i].bytes_down) {
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE(
    "frames: any message survives chunking at any chunk size and chunks are refused "
    "for every way they break the framing") {
  std::vector<std::uint8_t> bytes(1000);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::uint8_t(i * 7 + 3);
  const rg::routing route{rg::message_kind::download, 3, 0x1234567890abcdefULL, 2};
  for (std::size_t chunk : {1, 7, 999, 1000, 1001, 1 << 20}) {
    CAPTURE(chunk);
    rg::reassembler r(1 << 20);
    for (std::uint64_t number = 0; number < 3; ++number) {
      const auto message = std::span(bytes).first(std::size_t(number) * 400);  // 0, 400, 800
      std::size_t chunks = 0;
      std::optional<rg::message> got;
      rg::for_each_chunk(route, number, message, chunk, [&](auto c) {
        CHECK(!got);
        ++chunks;
        got = r.feed(c);
      });
      REQUIRE(got);
      CHECK(got->route == route);
      CHECK(got->bytes == std::vector<std::uint8_t>(message.begin(), message.end()));
      CHECK(chunks == std::max<std::size_t>(1, (message.size() + chunk - 1) / chunk));
      CHECK(!r.incomplete());
    }
  }

  const auto refusal = [](std::vector<std::vector<std::uint8_t>> chunks) {
    rg::reassembler r(100);
    return test::untagged_message_of<rg::frame_error>([&] {
      for (const auto& c : chunks) r.feed(c);
    });
  };
  const auto good = chunk_of(0, 10, 0, {1, 2, 3, 4});
  CHECK(refusal({std::vector<std::uint8_t>(good.begin(), good.begin() + 55)}) ==
        "gRPC frames: a chunk of 55 bytes, shorter than the 56-byte header");
  auto bad = good;
  bad[0] = 'X';
  CHECK(refusal({bad}) == "gRPC frames: a chunk without the magic RLGF (not a rolora frame)");
  bad = good;
  bad[4] = 2;
  CHECK(refusal({bad}) == "gRPC frames: frame version 2, expected 1");
  bad = good;
  bad[5] = 9;
  CHECK(refusal({bad}) == "gRPC frames: message kind 9, expected 1..5");
  bad = good;
  bad[7] = 1;
  CHECK(refusal({bad}) == "gRPC frames: reserved header bytes not zero");
  CHECK(refusal({chunk_of(0, 101, 0, {1})}) ==
        "gRPC frames: a declared length of 101 bytes, above the limit 100");
  CHECK(refusal({chunk_of(0, std::uint64_t(1) << 62, 0, {})}) ==
        "gRPC frames: a declared length of 4611686018427387904 bytes, above the limit 100");
  CHECK(refusal({chunk_of(1, 10, 0, {1})}) == "gRPC frames: message 1, expected message 0");
  CHECK(refusal({chunk_of(0, 10, 3, {1})}) ==
        "gRPC frames: message 0 begins at offset 3, expected 0");
  CHECK(refusal({good, chunk_of(0, 10, 5, {5})}) ==
        "gRPC frames: a chunk at offset 5, expected 4 (a gap)");
  CHECK(refusal({good, chunk_of(0, 10, 4, {5, 6, 7, 8, 9, 10, 11})}) ==
        "gRPC frames: a chunk of 7 bytes at offset 4 overruns the declared 10 bytes");
  CHECK(refusal({good, chunk_of(0, 10, 4, {})}) == "gRPC frames: an empty chunk inside message 0");
  CHECK(refusal({good, chunk_of(1, 3, 0, {1, 2, 3})}) ==
        "gRPC frames: a chunk of message 1 while message 0 is incomplete (4 of 10 bytes): "
        "interleaved messages");
  CHECK(refusal({good, chunk_of(0, 11, 4, {5})}) ==
        "gRPC frames: a chunk of message 0 whose header differs from its first chunk's");
  CHECK(refusal({good, chunk_of(0, 10, 4, {5}, {rg::message_kind::upload, 2, 2, 0})}) ==
        "gRPC frames: a chunk of message 0 whose header differs from its first chunk's");
}

TEST_CASE("options: client id lists and the default identities and rosters and fingerprints") {
  CHECK(rg::parse_client_ids("0,3,5") == std::vector<std::size_t>{0, 3, 5});
  CHECK(test::untagged_message_of<config_error>([] { rg::parse_client_ids("0,,5"); }) ==
        "client ids: '0,,5' is not a comma-separated list of ids such as 0,3,5");
  CHECK(test::untagged_message_of<config_error>([] { rg::parse_client_ids("1,1"); }) ==
        "client ids: 1 given twice");
  CHECK(rg::allowed_ids({}, "client-7") == std::vector<std::size_t>{7});
  CHECK(rg::allowed_ids({}, "client-").empty());
  CHECK(rg::allowed_ids({}, "client-7x").empty());
  CHECK(rg::allowed_ids({}, "server").empty());
  const std::map<std::string, std::vector<std::size_t>> roster{{"hospital-a", {0, 3}}};
  CHECK(rg::allowed_ids(roster, "hospital-a") == std::vector<std::size_t>{0, 3});
  CHECK(rg::allowed_ids(roster, "client-0").empty());  // a roster replaces the default

  const auto path = std::filesystem::temp_directory_path() / "rolora_roster_test.txt";
  std::ofstream(path) << "# name ids\nhospital-a 0,3\n\nbank-b 1\n";
  CHECK(rg::read_roster(path.string()) ==
        std::map<std::string, std::vector<std::size_t>>{{"bank-b", {1}}, {"hospital-a", {0, 3}}});
  std::ofstream(path) << "hospital-a 0 extra\n";
  CHECK(test::untagged_message_of<config_error>([&] { rg::read_roster(path.string()); }) ==
        "roster " + path.string() +
            " line 1: expected 'NAME ID[,ID...]', got 'hospital-a 0 extra'");
  std::filesystem::remove(path);

  const rg::fingerprint ours{{"method", "rolora"}, {"eta", "0.5"}};
  CHECK(!rg::first_difference(ours, ours));
  CHECK(rg::first_difference(ours, {{"method", "rolora"}, {"eta", "0.25"}}) ==
        "eta differs: server 0.5, client 0.25");
  CHECK(rg::first_difference(ours, {{"method", "rolora"}}) == "field eta is missing (server: 0.5)");
}

TEST_CASE(
    "transport: a federation over loopback streams gives the in-process bits and "
    "reports for messages in one chunk or many and over two federations in a row") {
  auto p = four_clients();
  const federation_config c = streams_config();
  federation<Backend, fedsa, fedavg> straight(fedsa{}, fedavg{}, c, adapters());
  const auto reference = straight.run(p.clients);

  for (std::size_t chunk : {std::size_t(97), rg::default_chunk_bytes}) {
    CAPTURE(chunk);
    rg::transport server(loopback_server(chunk), quiet());
    REQUIRE(server.address().rfind("127.0.0.1:", 0) == 0);
    REQUIRE(server.address() != "127.0.0.1:0");
    std::vector<std::thread> clients;
    std::atomic<int> served{0};
    for (const auto& ids : {std::vector<std::size_t>{0, 2}, std::vector<std::size_t>{1, 3}}) {
      clients.emplace_back([&, ids] {
        auto tasks = four_clients().clients;
        rg::transport t(loopback_client(server, ids, chunk), quiet());
        for (int federations = 0; federations < 2; ++federations) {
          t.serve<Backend>(tasks, c);
          ++served;
        }
      });
    }
    for (int run = 0; run < 2; ++run) {
      federation<Backend, fedsa, fedavg> fed(fedsa{}, fedavg{}, c, adapters());
      const auto reports = rolora::run(server, fed, p.clients);
      CHECK(same_reports(reports, reference));
      CHECK(test::bit_equal(fed.global(), straight.global()));
      for (std::size_t k = 0; k < p.clients.size(); ++k) {
        CHECK(test::bit_equal(fed.server().client_view(k), straight.server().client_view(k)));
      }
    }
    for (auto& t : clients) t.join();
    CHECK(served == 4);
  }
}

TEST_CASE(
    "transport: the server refuses at the hello another run's fingerprint and a "
    "second stream for a connected client and the client ends with the server's reason") {
  auto p = four_clients();
  federation_config c = streams_config();
  c.client_dropout = 0;
  auto timeout = quiet();
  timeout.client_timeout = 2;
  rg::transport server(loopback_server(), timeout);
  auto tasks = four_clients().clients;

  auto other_run = loopback_client(server, {0});
  other_run.fingerprint[1].second = "5";
  rg::transport mismatched(other_run, quiet());
  CHECK(test::untagged_message_of<config_error>([&] { mismatched.serve<Backend>(tasks, c); }) ==
        "gRPC: the server at " + server.address() +
            " refused this client: this client's run is not the server's: seed differs: server 4, "
            "client 5");

  // Client 1 connected (serving in a thread); a second stream claiming it is refused.
  std::thread first([&] {
    auto own = four_clients().clients;
    rg::transport t(loopback_client(server, {1, 2}), quiet());
    t.serve<Backend>(own, c);
  });
  federation<Backend, fedsa, fedavg> fed(fedsa{}, fedavg{}, c, adapters());
  const auto r0 = rolora::run_round(server, fed.server(), p.clients);  // 0 and 3 time out
  CHECK(r0.participants.size() + r0.dropped.size() == 3);
  rg::transport twin(loopback_client(server, {3, 1}), quiet());
  const auto refused =
      test::untagged_message_of<config_error>([&] { twin.serve<Backend>(tasks, c); });
  CHECK(refused.find("refused this client: client 1 is already connected (") != std::string::npos);
  server.finish();
  first.join();
}

TEST_CASE("transport: an upload over 64 MiB passes in 1 MiB chunks with the in-process bits") {
  // One client, FedIT on d = 2^22 + 4096 inputs at rank 2: the upload holds A, 2 x d doubles,
  // 64.06 MiB, and B; gRPC's receive limit is 4 MiB.
  theory::linear_problem_config pc;
  pc.dim = (index_t(1) << 22) + 4096;
  pc.out_dim = 2;
  pc.rank = 2;
  pc.clients = 1;
  pc.samples = 3;
  pc.seed = 5;
  auto p = theory::make_linear_problem<Backend>(pc);
  lora_config lc;
  lc.r = 2;
  const adapter_set<Backend> initial({{theory::module_name, pc.out_dim, pc.dim}}, lc, 6);
  federation_config c;
  c.num_rounds = 1;
  c.local_steps = 1;
  c.local_optimizer = sgd{0.1};
  federation<Backend, train_both, fedavg> straight(train_both{}, fedavg{}, c, initial);
  const auto reference = straight.run(p.clients);
  REQUIRE(reference[0].bytes_up > (std::size_t(64) << 20));

  rg::transport server(loopback_server(), quiet());
  std::thread client([&] {
    rg::transport t(loopback_client(server, {0}), quiet());
    t.serve<Backend>(p.clients, c);
  });
  federation<Backend, train_both, fedavg> fed(train_both{}, fedavg{}, c, initial);
  const auto reports = rolora::run(server, fed, p.clients);
  client.join();
  CHECK(same_reports(reports, reference));
  CHECK(test::bit_equal(fed.global(), straight.global()));
}

TEST_CASE(
    "transport: a peer sending garbage or oversized or interleaved or truncated frames or "
    "calling another method is cut off while the server goes on") {
  rg::transport server(loopback_server(), quiet());
  ::grpc::GenericStub stub(
      ::grpc::CreateChannel(server.address(), ::grpc::InsecureChannelCredentials()));
  // Sends `chunks` on a call of `method`, closes its side and returns the status the server
  // ended the call with.
  const auto answer = [&](std::vector<std::vector<std::uint8_t>> chunks,
                          std::string method = rg::detail::session_method) {
    ::grpc::CompletionQueue cq;
    ::grpc::ClientContext context;
    auto call = stub.PrepareCall(&context, method, &cq);
    void* tag = nullptr;
    bool ok = false;
    const auto next = [&] { REQUIRE(cq.Next(&tag, &ok)); };
    call->StartCall(nullptr);
    next();
    for (const auto& c : chunks) {
      call->Write(rg::detail::to_buffer(c), nullptr);
      next();
    }
    call->WritesDone(nullptr);
    next();
    ::grpc::ByteBuffer reply;
    call->Read(&reply, nullptr);
    next();
    CHECK(!ok);  // the server sent nothing and ended the call
    ::grpc::Status status;
    call->Finish(&status, nullptr);
    next();
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return std::pair(status.error_code(), status.error_message());
  };
  using code = ::grpc::StatusCode;
  const rg::routing hello{rg::message_kind::hello, 0, 0, 0};
  CHECK(answer({std::vector<std::uint8_t>(64, 0xab)}) ==
        std::pair(code::INVALID_ARGUMENT,
                  std::string("[rolora.frame_error] gRPC frames: a chunk without the magic RLGF "
                              "(not a rolora frame)")));
  CHECK(answer({chunk_of(0, std::uint64_t(1) << 62, 0, {}, hello)}).second ==
        "[rolora.frame_error] gRPC frames: a declared length of 4611686018427387904 bytes, above "
        "the limit 68719476736");
  CHECK(answer({chunk_of(0, 10, 0, {1, 2, 3, 4}, hello), chunk_of(1, 3, 0, {1, 2, 3}, hello)})
            .second.find("interleaved messages") != std::string::npos);
  CHECK(answer({chunk_of(0, 10, 0, {1, 2, 3, 4}, hello)}).first == code::OK);  // cut: stream over
  CHECK(answer({chunk_of(0, 2, 0, {'{', '}'}, hello)}) ==
        std::pair(code::INVALID_ARGUMENT,
                  std::string("an unreadable hello: [json.exception.out_of_range.403] key 'ids' "
                              "not found")));
  CHECK(answer({}, "/other.Service/Call").first == code::UNIMPLEMENTED);

  // The server goes on: a federation over it has the in-process bits.
  auto p = four_clients();
  federation_config c = streams_config();
  federation<Backend, fedsa, fedavg> straight(fedsa{}, fedavg{}, c, adapters());
  const auto reference = straight.run(p.clients);
  std::thread client([&] {
    auto tasks = four_clients().clients;
    rg::transport t(loopback_client(server, {0, 1, 2, 3}), quiet());
    t.serve<Backend>(tasks, c);
  });
  federation<Backend, fedsa, fedavg> fed(fedsa{}, fedavg{}, c, adapters());
  CHECK(same_reports(rolora::run(server, fed, p.clients), reference));
  client.join();
  CHECK(test::bit_equal(fed.global(), straight.global()));
}

TEST_CASE(
    "transport: a client gives up within its connect timeout on a peer that accepts TCP "
    "and never speaks") {
  // A listening socket nobody serves: the kernel completes TCP handshakes, nothing answers.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof at;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&at), size) == 0);
  REQUIRE(::listen(fd, 8) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&at), &size) == 0);
  const std::string address = "127.0.0.1:" + std::to_string(ntohs(at.sin_port));

  rg::options o = loopback_server();
  o.server = false;
  o.address = address;
  o.client_ids = {0};
  o.connect_timeout = 1;
  rg::transport t(o, quiet());
  auto tasks = four_clients().clients;
  const auto start = std::chrono::steady_clock::now();
  const auto why =
      test::untagged_message_of<config_error>([&] { t.serve<Backend>(tasks, streams_config()); });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(why.find("gRPC: no connection to " + address + " within --connect-timeout 1 s") == 0);
  CHECK(seconds < 5);
  ::close(fd);
}
