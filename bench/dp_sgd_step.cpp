// One sample-level DP-SGD step of rolora's transformer against one plain step, timed: the C++
// side of bench/dp_sgd_cost.sh (its PyTorch peer is bench/pytorch_dp_sgd_step.py: same shapes,
// LoRA placement, batch and data as bench/pytorch_reference.py).
//
//   plain step    classification_task::loss_and_grad (mean loss, one forward and backward) and
//                 the optimizer's step
//   private step  classification_task::clipped_grad_sum (exact per-example clip: one forward and
//                 backward, per-example norms, the clipped sum), privacy::noise_and_average
//                 (N(0, (z C)^2) per trained coordinate, divided by the batch size) and the
//                 optimizer's step: what train_locally runs under federation_config::sample_dp
// Prints `plain_step_seconds S` and `private_step_seconds S` (medians over --steps, the two kinds
// alternating step by step so that both see the same machine load).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <rolora/nn/classification_task.hpp>
#include <rolora/privacy/dp_sgd.hpp>
#include <rolora/rolora.hpp>
#include <string>
#include <vector>

using backend = rolora::eigen_backend<float>;

int main(int argc, char** argv) {
  CLI::App app{"Time one DP-SGD step of rolora's transformer against one plain step."};
  rolora::transformer_config c;
  c.vocab_size = 259;
  c.pad_id = 256;
  c.num_classes = 3;
  std::size_t seq_len = 128, batch = 16, steps = 10;
  int rank = 2;
  double alpha = 8, clip = 1.0, z = 1.0;
  std::string targets = "q,v", factors = "AB", norm = "automatic";
  app.add_option("--d-model", c.d_model)->capture_default_str();
  app.add_option("--heads", c.n_heads)->capture_default_str();
  app.add_option("--layers", c.n_layers)->capture_default_str();
  app.add_option("--d-ff", c.d_ff)->capture_default_str();
  app.add_option("--vocab", c.vocab_size)->capture_default_str();
  app.add_option("--classes", c.num_classes)->capture_default_str();
  app.add_option("--seq-len", seq_len)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--rank", rank)->capture_default_str();
  app.add_option("--alpha", alpha)->capture_default_str();
  app.add_option("--targets", targets)->capture_default_str();
  app.add_option("--factors", factors, "factors trained: A, B or AB")
      ->check(CLI::IsMember({"A", "B", "AB"}))
      ->capture_default_str();
  app.add_option("--clip-norm", clip)->capture_default_str();
  app.add_option("--noise-multiplier", z)->capture_default_str();
  app.add_option("--norm", norm, "per-example norms: automatic, direct or gram")
      ->check(CLI::IsMember({"automatic", "direct", "gram"}))
      ->capture_default_str();
  app.add_option("--steps", steps, "timed steps of each kind")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  c.max_len = rolora::index_t(seq_len);
  c.pad_id = std::min<std::int32_t>(c.pad_id, std::int32_t(c.vocab_size) - 1);

  rolora::transformer_weights<backend> model(c, 0);
  std::vector<std::string> target_list;
  for (std::size_t p = 0; p <= targets.size();) {
    const auto q = std::min(targets.find(',', p), targets.size());
    target_list.push_back(targets.substr(p, q - p));
    p = q + 1;
  }
  rolora::lora_config lc;
  lc.r = rank;
  lc.lora_alpha = alpha;
  rolora::adapter_set<backend> adapters(rolora::lora_target_modules(c, target_list), lc, 0);
  adapters.add_module_to_save("classifier.weight", model.at("classifier.weight"));
  adapters.add_module_to_save("classifier.bias", model.at("classifier.bias"));
  for (auto& [name, a] : adapters)  // an A step needs B != 0, as after a B round
    a.B = rolora::host_matrix<float>::Constant(a.out_features(), a.rank(), 0.01f);

  // batch random sequences, real length uniform in [seq_len / 4, seq_len] (as the reference).
  rolora::labelled_sequences d;
  d.tokens.seq_len = rolora::index_t(seq_len);
  const rolora::random_stream rs(0, rolora::stream::data, 0xD95, 0);
  std::uint64_t k = 0;
  for (std::size_t s = 0; s < batch; ++s) {
    const std::size_t length = seq_len / 4 + rs.below(k++, seq_len - seq_len / 4 + 1);
    for (std::size_t j = 0; j < seq_len; ++j) {
      d.tokens.ids.push_back(j < length ? std::int32_t(rs.below(k++, std::uint64_t(c.pad_id)))
                                        : c.pad_id);
    }
    d.labels.push_back(std::int32_t(rs.below(k++, std::uint64_t(c.num_classes))));
  }
  rolora::classification_task<backend> task(model, std::move(d));
  std::vector<std::size_t> rows(batch);
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  const rolora::factor_set trains{factors.find('A') != std::string::npos,
                                  factors.find('B') != std::string::npos};
  const auto method = norm == "direct" ? rolora::privacy::per_example_norm::direct
                      : norm == "gram" ? rolora::privacy::per_example_norm::gram
                                       : rolora::privacy::per_example_norm::automatic;
  const rolora::optimizer opt = rolora::sgd{1e-3};
  rolora::optimizer_state<backend> state;
  rolora::gradient_set<backend> grads;
  const auto noise = rolora::privacy::step_noise_stream(0, 0, 0);
  std::size_t step = 0, clipped = 0;

  const auto plain = [&] {
    task.loss_and_grad(adapters, rows, trains, grads);
    state.step(opt, adapters, grads, trains);
  };
  const auto private_step = [&] {
    clipped += task.clipped_grad_sum(adapters, rows, trains, clip, grads, method).clipped;
    rolora::privacy::noise_and_average(adapters, trains, grads, z * clip, double(batch), noise,
                                       step++);
    state.step(opt, adapters, grads, trains);
  };
  // The two kinds alternate, step by step, so that both see the same machine load.
  plain();  // warm-up: buffers sized
  private_step();
  std::vector<double> t_plain, t_private;
  const auto timed = [](const auto& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (std::size_t i = 0; i < steps; ++i) {
    t_plain.push_back(timed(plain));
    t_private.push_back(timed(private_step));
  }
  const auto median = [](std::vector<double> t) {
    std::nth_element(t.begin(), t.begin() + std::ptrdiff_t(t.size() / 2), t.end());
    return t[t.size() / 2];
  };
  std::size_t trainable = 0;
  for (const auto& [name, a] : adapters)
    trainable += std::size_t((trains.a ? a.A.size() : 0) + (trains.b ? a.B.size() : 0));
  for (const auto& [name, m] : adapters.modules_to_save()) trainable += std::size_t(m.size());
  std::printf(
      "rolora fp32 (%s GEMM), batch %zu x %zu tokens, d %td, r %d on %s, factors %s, %zu "
      "trainable scalars, norms %s\n",
#if defined(ROLORA_WITH_ONEDNN)
      "oneDNN",
#else
      "Eigen",
#endif
      batch, seq_len, c.d_model, rank, targets.c_str(), factors.c_str(), trainable, norm.c_str());
  std::printf("plain_step_seconds %.6f\n", median(t_plain));
  std::printf("private_step_seconds %.6f\n", median(t_private));
  std::printf("examples clipped per private step: %.1f of %zu\n",
              double(clipped) / double(steps + 1), batch);
}
