// The server's share of a round at scale (docs/distributed.md, "Measured"): decode + check +
// aggregate of 1,000 clients' uploads of the federated_finetune example's adapters (d_model 128,
// 2 layers, LoRA rank 2 on q and v, the classifier head as a module to save; float), and the
// encoding of the downloads, per method. No MPI: the messages are the bytes a transport carries.
// Build: cmake -DROLORA_BUILD_BENCHMARKS=ON, target rolora_bench_server.
#include <benchmark/benchmark.h>

#include <rolora/federated/message.hpp>
#include <rolora/nn.hpp>
#include <rolora/rolora.hpp>
#include <vector>

namespace {

using B = rolora::eigen_backend<float>;

rolora::adapter_set<B> example_adapters() {
  rolora::transformer_config c;  // the example's default model
  rolora::lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 8;
  rolora::adapter_set<B> a(rolora::lora_target_modules(c, {"q", "v"}), lc, 1);
  a.add_module_to_save("classifier.weight",
                       B::from_host(rolora::host_matrix<float>::Constant(3, 128, 0.01f)));
  a.add_module_to_save("classifier.bias",
                       B::from_host(rolora::host_matrix<float>::Constant(3, 1, 0.0f)));
  return a;
}

// Uploads of `clients` clients for round 0 of `Policy` (the download plus a small per-client
// change, so that the merge has something to average), encoded.
template <class Policy>
struct round_fixture {
  rolora::federation_server<B, Policy, rolora::fedavg> server;
  rolora::round_plan plan;
  std::vector<std::vector<std::uint8_t>> messages;

  explicit round_fixture(std::size_t clients)
      : server(Policy{}, rolora::fedavg{}, rolora::federation_config{}, example_adapters()) {
    plan = server.begin_round(clients);
    for (std::size_t c : plan.reporting) {
      auto d = server.download(plan, c);
      rolora::client_update<B> up{c, 10.0 + double(c % 7), d.adapters, plan.round, 0.5, {}};
      for (auto& [name, a] : up.adapters) {
        auto h = B::to_host(a.B);
        h.array() += float(c % 13) * 1e-3f;
        a.B = B::from_host(h);
      }
      messages.push_back(rolora::encode_upload(up, plan.shares));
    }
  }
};

// Decode (as hostile input) + check + aggregate of every client's upload, on a copy of the
// server so that each iteration merges the same round.
template <class Policy>
void BM_server_round(benchmark::State& state) {
  const std::size_t clients = std::size_t(state.range(0));
  round_fixture<Policy> f(clients);
  std::size_t bytes = 0;
  for (const auto& m : f.messages) bytes += m.size();
  for (auto _ : state) {
    state.PauseTiming();
    auto server = f.server;
    state.ResumeTiming();
    std::vector<rolora::received_upload<B>> got;
    got.reserve(clients);
    for (std::size_t c = 0; c < clients; ++c) {
      got.push_back({c,
                     f.messages[c].size(),
                     rolora::decode_upload<B>(f.messages[c], server.client_view(c)),
                     {}});
    }
    benchmark::DoNotOptimize(server.complete_round(f.plan, std::move(got)));
  }
  state.counters["upload_bytes_per_client"] = double(bytes) / double(clients);
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
}
BENCHMARK(BM_server_round<rolora::train_both>)
    ->Name("server_round/fedit")
    ->Arg(1000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_server_round<rolora::alternating>)
    ->Name("server_round/rolora")
    ->Arg(1000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Encoding every client's download (what rank 0 sends each round).
template <class Policy>
void BM_encode_downloads(benchmark::State& state) {
  const std::size_t clients = std::size_t(state.range(0));
  rolora::federation_server<B, Policy, rolora::fedavg> server(
      Policy{}, rolora::fedavg{}, rolora::federation_config{}, example_adapters());
  const auto plan = server.begin_round(clients);
  std::size_t bytes = 0;
  for (auto _ : state) {
    bytes = 0;
    for (std::size_t c = 0; c < clients; ++c) {
      bytes += rolora::encode_download(server.download(plan, c), plan.shares, false).size();
    }
    benchmark::DoNotOptimize(bytes);
  }
  state.counters["download_bytes_per_client"] = double(bytes) / double(clients);
}
BENCHMARK(BM_encode_downloads<rolora::train_both>)
    ->Name("encode_downloads/fedit")
    ->Arg(1000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
