// Masked-byte LM pretraining of the transformer and its checkpoint file, shared by the pretrain
// and federated_finetune applications (the latter builds the checkpoint on first use).
//
// Deterministic: each step's batch is cut into a fixed number of micro-batches whatever the
// thread count; threads only run them side by side, and their gradients are added in
// micro-batch order. Same seed, same checkpoint bits, for any --threads.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/core/parallel.hpp>
#include <rolora/io/safetensors.hpp>
#include <rolora/nn/transformer.hpp>
#include <string>
#include <vector>

namespace rolora::apps {

struct pretraining_config {
  std::size_t steps = 1500;
  std::size_t batch = 32;         // sequences per step
  std::size_t micro_batches = 4;  // fixed split of each step's batch (not the thread count)
  double lr = 1e-3, warmup_fraction = 0.05, weight_decay = 0.01;
  std::uint64_t seed = 1;
  std::size_t threads = 2;
  std::size_t print_every = 50;
};

// One masked-LM micro-batch: inputs and targets (original id at masked positions, -1 elsewhere).
struct mlm_batch {
  token_batch inputs;
  std::vector<std::int32_t> targets;
};
// Makes micro-batch `micro` of step `step` (deterministically from the step and micro index).
using mlm_batch_source =
    std::function<mlm_batch(std::size_t step, std::size_t micro, std::size_t sequences)>;

// AdamW over every weight of the transformer (torch.optim.AdamW semantics).
template <nn_backend B>
class full_adamw {
 public:
  explicit full_adamw(const transformer_weights<B>& w) : m_(w.zeros_like()), v_(w.zeros_like()) {}
  void step(transformer_weights<B>& w, const transformer_weights<B>& g, double lr,
            double weight_decay) {
    using T = typename B::scalar;
    ++t_;
    const adamw_coefficients<T> k{T(lr),
                                  T(0.9),
                                  T(0.999),
                                  T(1e-8),
                                  T(weight_decay),
                                  T(1.0 - std::pow(0.9, double(t_))),
                                  T(1.0 - std::pow(0.999, double(t_)))};
    for (std::size_t p = 0; p < w.size(); ++p)
      B::adamw_update(w.value(p), g.value(p), m_.value(p), v_.value(p), k);
  }

 private:
  transformer_weights<B> m_, v_;
  std::size_t t_ = 0;
};

// Pretrains `w` in place; returns the mean masked-LM loss of each step.
template <nn_backend B>
std::vector<double> pretrain(transformer_weights<B>& w, const pretraining_config& pc,
                             const mlm_batch_source& source) {
  using T = typename B::scalar;
  const std::size_t micro = pc.micro_batches;
  std::vector<transformer_weights<B>> grads(micro, w.zeros_like());
  std::vector<transformer_workspace<B>> ws(micro);
  std::vector<double> losses(micro), masked(micro), history;
  full_adamw<B> opt(w);
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t step = 0; step < pc.steps; ++step) {
    rolora::parallel_for(micro, pc.threads, [&](std::size_t m) {
      const std::size_t n = pc.batch / micro + (m < pc.batch % micro ? 1 : 0);
      const auto b = source(step, m, n);
      masked[m] = 0;
      for (auto t : b.targets) masked[m] += t >= 0;
      losses[m] = mlm_loss_and_grad(w, b.inputs, b.targets, grads[m], ws[m]);
    });
    // Each micro-batch's gradient is its mean over its masked positions: weight by their count.
    double total = 0, loss = 0;
    for (std::size_t m = 0; m < micro; ++m) total += masked[m];
    if (total == 0) continue;
    for (std::size_t m = 0; m < micro; ++m) loss += losses[m] * masked[m] / total;
    for (std::size_t p = 0; p < w.size(); ++p) {
      B::scale(T(masked[0] / total), grads[0].value(p));
      for (std::size_t m = 1; m < micro; ++m)
        B::axpy(T(masked[m] / total), grads[m].value(p), grads[0].value(p));
    }
    // Linear warm-up, then linear decay to 10% of lr.
    const double warm = std::max(1.0, pc.warmup_fraction * double(pc.steps)), s = double(step) + 1;
    const double lr =
        pc.lr *
        (s < warm ? s / warm : 1.0 - 0.9 * (s - warm) / std::max(1.0, double(pc.steps) - warm));
    opt.step(w, grads[0], lr, pc.weight_decay);
    history.push_back(loss);
    if (pc.print_every && ((step + 1) % pc.print_every == 0 || step + 1 == pc.steps)) {
      double recent = 0;
      const std::size_t k = std::min<std::size_t>(pc.print_every, history.size());
      for (std::size_t i = history.size() - k; i < history.size(); ++i)
        recent += history[i] / double(k);
      std::printf("pretrain step %5zu/%zu  mlm loss %.4f  lr %.2e  %.1f s\n", step + 1, pc.steps,
                  recent, lr,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      std::fflush(stdout);
    }
  }
  return history;
}

// The checkpoint is a safetensors file of every weight (F32; [k, 1] vectors stored 1-D like
// torch) whose metadata hold the model configuration and a description of how it was made.
inline std::string config_json(const transformer_config& c) {
  return nlohmann::json{{"vocab_size", c.vocab_size},
                        {"max_len", c.max_len},
                        {"d_model", c.d_model},
                        {"n_heads", c.n_heads},
                        {"n_layers", c.n_layers},
                        {"d_ff", c.d_ff},
                        {"num_classes", c.num_classes},
                        {"pooling", c.pool == pooling::mean ? "mean" : "first"},
                        {"layer_norm_eps", c.layer_norm_eps},
                        {"pad_id", c.pad_id}}
      .dump();
}

template <nn_backend B>
void save_checkpoint(const std::filesystem::path& file, const transformer_weights<B>& w,
                     const std::string& recipe) {
  std::map<std::string, tensor_data> tensors;
  for (const auto& [name, h] : w.to_host_map()) {
    const auto hf = h.template cast<float>().eval();
    if (hf.cols() == 1) {
      tensors.emplace(name,
                      make_tensor<float>(std::span<const float>(hf.data(), std::size_t(hf.size())),
                                         {std::uint64_t(hf.rows())}));
    } else {
      tensors.emplace(name, make_tensor(hf));
    }
  }
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  write_safetensors(
      file, tensors,
      {{"rolora.transformer_config", config_json(w.config())}, {"rolora.recipe", recipe}});
}

// The checkpoint at `file` if it exists and was made for `config` by `recipe`; nothing otherwise.
// A file that exists but is broken throws (never silently replaced).
template <nn_backend B>
std::optional<transformer_weights<B>> load_checkpoint(const std::filesystem::path& file,
                                                      const transformer_config& config,
                                                      const std::string& recipe) {
  using T = typename B::scalar;
  if (!std::filesystem::exists(file)) return std::nullopt;
  const auto st = read_safetensors(file);
  const auto& meta = st.metadata();
  const auto c = meta.find("rolora.transformer_config"), r = meta.find("rolora.recipe");
  if (c == meta.end() || c->second != config_json(config) || r == meta.end() || r->second != recipe)
    return std::nullopt;
  std::map<std::string, host_matrix<T>> tensors;
  for (const auto& name : st.names()) tensors.emplace(name, to_host_matrix<T>(st.tensor(name)));
  return transformer_weights<B>::from_host_map(config, tensors);
}

}  // namespace rolora::apps
