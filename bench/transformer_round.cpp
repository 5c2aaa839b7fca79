// One federated LoRA round of rolora's transformer, timed: the C++ side of the comparison with
// bench/pytorch_reference.py (same flags, same shapes, LoRA placement, batch and steps; random
// tokens with random real lengths, as there). bench/run_round.sh runs both and prints the ratio.
//
// Prints one line per timed round and a final `seconds_per_round <median>`. With
// `--transport mpi` (under mpirun, when built with rolora::mpi) rank 0 runs the server and ranks
// 1..P-1 the clients (docs/distributed.md); `adapters_fnv1a` hashes the final adapters' bits so
// that runs over both transports can be compared. Built as rolora_transformer_round (GEMM provider
// as configured) and, with oneDNN, rolora_transformer_round_eigen (ROLORA_BENCH_EIGEN_ONLY: Eigen's
// GEMM only).
#if defined(ROLORA_BENCH_EIGEN_ONLY)
#undef ROLORA_WITH_ONEDNN
#endif
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <rolora/nn/classification_task.hpp>
#include <rolora/rolora.hpp>
#include <rolora/transports.hpp>
#include <string>
#include <vector>

// bench/CMakeLists.txt builds this file once per backend: rolora_transformer_round (Eigen),
// rolora_transformer_round_thrust_omp and rolora_transformer_round_cuda
// (backend/thrust/nn_primitives.hpp force-included, ROLORA_ROUND_BACKEND set).
#ifndef ROLORA_ROUND_BACKEND
#define ROLORA_ROUND_BACKEND rolora::eigen_backend<float>
#endif
using backend = ROLORA_ROUND_BACKEND;

// The factors of the round being timed, every round.
struct fixed_policy {
  static constexpr std::string_view name = "fixed";
  rolora::factor_set f;
  rolora::factor_set trains(std::size_t) const { return f; }
  rolora::factor_set shares(std::size_t) const { return f; }
  rolora::factor_set keeps_local() const { return rolora::no_factors; }
};

// --base-precision: the frozen base (every linear's W0, the embeddings) in fp32 or bf16; returns
// what the header line says about it.
template <class B>
std::string hold_base(rolora::transformer_weights<B>& model, const std::string& precision) {
  if (precision == "fp32") return "fp32";
  if constexpr (rolora::frozen_bf16_backend<B>) {
    model.convert_base_to_bf16();
    return "bf16 (" + B::frozen_gemm_path() + ")";
  }
  rolora::detail::raise<rolora::config_error>("--base-precision bf16: backend '", B::name,
                                              "' cannot hold bf16 matrices (eigen can)");
}

int main(int argc, char** argv) {
  CLI::App app{
      "Time one federated LoRA round of rolora's transformer (see bench/pytorch_reference.py)."};
  rolora::transformer_config c;
  c.vocab_size = 259;
  c.pad_id = 256;
  c.num_classes = 3;
  std::size_t seq_len = 128, clients = 20, local_steps = 2, batch = 16, rounds = 3, threads = 2;
  int rank = 2;
  double alpha = 16, lr = 1e-3;
  std::string targets = "q,v", factors = "B", optimizer = "adamw", base_precision = "fp32";
  std::uint64_t seed = 0;
  app.add_option("--d-model", c.d_model)->capture_default_str();
  app.add_option("--heads", c.n_heads)->capture_default_str();
  app.add_option("--layers", c.n_layers)->capture_default_str();
  app.add_option("--d-ff", c.d_ff)->capture_default_str();
  app.add_option("--vocab", c.vocab_size)->capture_default_str();
  app.add_option("--classes", c.num_classes)->capture_default_str();
  app.add_option("--seq-len", seq_len)->capture_default_str();
  app.add_option("--clients", clients)->capture_default_str();
  app.add_option("--local-steps", local_steps)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--rank", rank)->capture_default_str();
  app.add_option("--alpha", alpha)->capture_default_str();
  app.add_option("--targets", targets)->capture_default_str();
  app.add_option("--factors", factors, "factors trained this round: A, B or AB")
      ->check(CLI::IsMember({"A", "B", "AB"}))
      ->capture_default_str();
  app.add_option("--optimizer", optimizer)
      ->check(CLI::IsMember({"sgd", "adamw"}))
      ->capture_default_str();
  app.add_option("--lr", lr)->capture_default_str();
  app.add_option("--rounds", rounds, "timed rounds (after one warm-up)")->capture_default_str();
  app.add_option("--base-precision", base_precision,
                 "fp32, or bf16: the frozen base (every linear's W0, the embeddings) in bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  std::string transport = "inprocess";
  app.add_option("--transport", transport, "inprocess or mpi (under mpirun, P >= 2)")
      ->check(CLI::IsMember({"inprocess", "mpi"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::optional<rolora::transport_by_name> carrier;  // rolora/transports.hpp
  try {
    carrier.emplace(transport, argc, argv);
  } catch (const rolora::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  const bool server = carrier->is_server();
  c.max_len = rolora::index_t(seq_len);
  c.pad_id = std::min<std::int32_t>(c.pad_id, std::int32_t(c.vocab_size) - 1);

  rolora::transformer_weights<backend> model(c, seed);
  std::string base;
  try {
    base = hold_base(model, base_precision);
  } catch (const rolora::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  std::vector<std::string> target_list;
  for (std::size_t p = 0; p <= targets.size();) {
    const auto q = std::min(targets.find(',', p), targets.size());
    target_list.push_back(targets.substr(p, q - p));
    p = q + 1;
  }
  rolora::lora_config lc;
  lc.r = rank;
  lc.lora_alpha = alpha;
  rolora::adapter_set<backend> initial(rolora::lora_target_modules(c, target_list), lc, seed);
  initial.add_module_to_save("classifier.weight", model.at("classifier.weight"));
  initial.add_module_to_save("classifier.bias", model.at("classifier.bias"));
  if (factors != "B") {  // an A round needs B != 0 to have a gradient, as after a B round
    for (auto& [name, a] : initial)
      a.B = backend::from_host(
          rolora::host_matrix<float>::Constant(a.out_features(), a.rank(), 0.01f));
  }

  // Each client: batch * local_steps random sequences, real length uniform in [seq_len / 4,
  // seq_len].
  std::vector<rolora::classification_task<backend>> tasks;
  const rolora::random_stream rs(seed, rolora::stream::data, 0xBE7C, 0);
  std::uint64_t k = 0;
  for (std::size_t i = 0; i < clients; ++i) {
    rolora::labelled_sequences d;
    d.tokens.seq_len = rolora::index_t(seq_len);
    for (std::size_t s = 0; s < batch * local_steps; ++s) {
      const std::size_t length = seq_len / 4 + rs.below(k++, seq_len - seq_len / 4 + 1);
      for (std::size_t j = 0; j < seq_len; ++j) {
        d.tokens.ids.push_back(j < length ? std::int32_t(rs.below(k++, std::uint64_t(c.pad_id)))
                                          : c.pad_id);
      }
      d.labels.push_back(std::int32_t(rs.below(k++, std::uint64_t(c.num_classes))));
    }
    tasks.emplace_back(model, std::move(d));
  }

  rolora::federation_config fc;
  fc.num_rounds = rounds + 1;
  fc.local_steps = local_steps;
  fc.batch_size = batch;
  fc.threads = threads;
  fc.measure_aggregation_error = false;  // the reference does not measure it either
  if (optimizer == "sgd") {
    fc.local_optimizer = rolora::sgd{lr};
  } else {
    fc.local_optimizer = rolora::adamw{lr, 0.9, 0.999, 1e-8, 0.01};
  }
  const rolora::factor_set trained{factors.find('A') != std::string::npos,
                                   factors.find('B') != std::string::npos};
  rolora::federation<backend, fixed_policy> fed(fixed_policy{trained}, rolora::fedavg{}, fc,
                                                initial);
  if (!server) {
    carrier->visit([&](auto& t) { t.template serve<backend>(tasks, fc); });
    return 0;
  }
  std::printf("rolora (%s), %zu threads, GEMM %s, base %s, %zu trainable scalars\n",
              std::string(backend::name).c_str(), threads,
              rolora::detail::onednn_gemm_available ? "oneDNN above 64^3, else Eigen" : "Eigen",
              base.c_str(), initial.num_parameters(trained));
  std::vector<double> times;
  for (std::size_t r = 0; r <= rounds; ++r) {
    const auto start = std::chrono::steady_clock::now();
    const auto report =
        carrier->visit([&](auto& t) { return rolora::run_round(t, fed.server(), tasks); });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r > 0) times.push_back(seconds);
    std::printf("round %zu%s: %.3f s, train loss %.17g, bytes up %zu down %zu\n", r,
                r == 0 ? " (warm-up)" : "", seconds, report.train_loss, report.bytes_up,
                report.bytes_down);
    carrier->visit([](auto& t) {
      if constexpr (requires { t.last_round_timing(); }) {  // MPI
        const auto& s = t.last_round_timing();
        std::printf("  rank 0: send %.4f s, wait %.4f s, decode %.4f s, merge %.4f s\n", s.send,
                    s.wait, s.decode, s.merge);
      }
    });
  }
  carrier->visit([](auto& t) { t.finish(); });
  std::uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a over every factor's and weight's bits
  const auto mix = [&](const rolora::host_matrix<float>& m) {
    for (float v : m.reshaped()) {
      std::uint32_t bits;
      std::memcpy(&bits, &v, 4);
      for (int b = 0; b < 4; ++b) hash = (hash ^ ((bits >> (8 * b)) & 0xff)) * 0x100000001b3ull;
    }
  };
  for (const auto& [name, a] : fed.global()) {
    mix(backend::to_host(a.A));
    mix(backend::to_host(a.B));
  }
  for (const auto& [name, w] : fed.global().modules_to_save()) mix(backend::to_host(w));
  std::printf("adapters_fnv1a %016llx\n", static_cast<unsigned long long>(hash));
  std::sort(times.begin(), times.end());
  std::printf("seconds_per_round %.6f\n", times[times.size() / 2]);
  return 0;
}
