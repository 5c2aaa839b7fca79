// Sample-level differential privacy inside each client: DP-SGD (Abadi, Chu, Goodfellow, McMahan,
// Mironov, Talwar, Zhang 2016, "Deep Learning with Differential Privacy", Algorithm 1), the
// setting of FFA-LoRA's experiments. docs/privacy.md, "Sample-level DP-SGD".
//
// The unit protected is one training example of one client. Each local step of client c (n_c
// examples, federation_config::batch_size B):
//   the batch    poisson: each of the n_c examples independently with probability q_c = B / n_c
//                (the accountant's assumption; the batch may be empty and is still a step), drawn
//                from random_stream(seed, dp_sgd_batch, round, client) at index step n_c + i;
//                fixed: the federation's batch_sampler (B examples without replacement), accounted
//                AS IF Poisson with q_c = B / n_c (the usual approximation, as for client DP)
//   the clip     sum_i min(1, C / ||g_i||) g_i over the batch (the task's clipped_grad_sum,
//                per_example_clip_task), g_i example i's gradient over every trained factor and
//                module to save, flattened
//   the noise    + N(0, (z C)^2) per trained coordinate, draw step P + k of random_stream(seed,
//                dp_sgd_noise, round, client) for coordinate k of P (modules in name order, A then
//                B, column-major, then the modules to save): the bits depend on nothing but
//                (seed, round, client, step), not on threads or transport
//   the mean     divided by the EXPECTED batch size q_c n_c (= B; fixed: the batch size), not
//                the realised one (which would leak it), then the optimizer's step
// The accountant (accountant.hpp) composes client c's steps at q_c: every round c reports in
// adds local_steps steps. The server keeps the per-client step counts (and its checkpoint does);
// a round report's epsilon is the largest over the clients.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/privacy/accountant.hpp>
#include <rolora/privacy/client_dp.hpp>  // round_accountant
#include <rolora/privacy/per_example.hpp>
#include <string_view>
#include <vector>

namespace rolora::privacy {

enum class batch_sampling { poisson, fixed };

struct sample_dp {
  static constexpr std::string_view name = "sample_dp";

  double clip_norm = 1.0;         // C, on each example's gradient
  double noise_multiplier = 1.0;  // z: noise N(0, (z C)^2) per coordinate of each step's sum
  batch_sampling sampling = batch_sampling::poisson;
  double delta = 1e-5;
  // The budget of every client: a round that would bring some reporting client's epsilon (at
  // delta) above it is refused before it starts (privacy_budget_exceeded). Unset: no limit.
  std::optional<double> target_epsilon = std::nullopt;

  // config_error naming the field unless every setting is usable.
  void check() const {
    using rolora::detail::raise;
    check_clip_norm(clip_norm, "sample_dp");
    if (!(noise_multiplier >= 0.0 && std::isfinite(noise_multiplier)))
      raise<config_error>("sample_dp: noise_multiplier must be finite and >= 0, got ",
                          noise_multiplier);
    if (!(delta > 0.0 && delta < 1.0))
      raise<config_error>("sample_dp: delta must be in (0, 1), got ", delta);
    if (target_epsilon && !(*target_epsilon > 0.0))
      raise<config_error>("sample_dp: the target epsilon must be > 0, got ", *target_epsilon);
    if (target_epsilon && noise_multiplier == 0.0)
      raise<config_error>("sample_dp: a target epsilon needs noise (noise_multiplier > 0)");
  }

  // q_c = B / n_c (B = 0: the full local data set, q = 1); B > n_c is refused.
  static double sampling_rate(std::size_t batch_size, std::size_t num_samples) {
    if (num_samples == 0)
      rolora::detail::raise<config_error>("sample_dp: a client without samples");
    if (batch_size > num_samples) {
      rolora::detail::raise<config_error>("sample_dp: the batch size ", batch_size,
                                          " is above the client's ", num_samples,
                                          " samples (the sampling rate B / n_c must be <= 1)");
    }
    return batch_size == 0 ? 1.0 : double(batch_size) / double(num_samples);
  }
  // The denominator of each step: q_c n_c = B (n_c when B = 0), for both samplings.
  static double expected_batch(std::size_t batch_size, std::size_t num_samples) {
    return double(batch_size == 0 ? num_samples : batch_size);
  }
};

inline random_stream batch_stream(std::uint64_t seed, std::size_t round, std::size_t client) {
  return random_stream(seed, stream::dp_sgd_batch, static_cast<std::uint32_t>(round),
                       static_cast<std::uint32_t>(client));
}
inline random_stream step_noise_stream(std::uint64_t seed, std::size_t round, std::size_t client) {
  return random_stream(seed, stream::dp_sgd_noise, static_cast<std::uint32_t>(round),
                       static_cast<std::uint32_t>(client));
}

// The Poisson batch of one step: example i (< n) with probability q, increasing.
inline std::vector<std::size_t> poisson_batch(std::uint64_t seed, std::size_t round,
                                              std::size_t client, std::size_t step, std::size_t n,
                                              double q) {
  const random_stream rs = batch_stream(seed, round, client);
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < n; ++i) {
    if (rs.uniform(std::uint64_t(step) * n + i) < q) out.push_back(i);
  }
  return out;
}

// grads <- (grads + N(0, stddev^2) per coordinate) / denominator over the trained coordinates
// (the order of the header comment), draws from step `step` of `noise`.
template <backend B>
void noise_and_average(const adapter_set<B>& adapters, factor_set trains, gradient_set<B>& grads,
                       double stddev, double denominator, const random_stream& noise,
                       std::size_t step) {
  using T = typename B::scalar;
  std::uint64_t coords = 0;
  for (const auto& [name, l] : adapters) {
    if (trains.a) coords += std::uint64_t(B::rows(l.A) * B::cols(l.A));
    if (trains.b) coords += std::uint64_t(B::rows(l.B) * B::cols(l.B));
  }
  if (trains.any()) {
    for (const auto& [name, m] : adapters.modules_to_save())
      coords += std::uint64_t(B::rows(m) * B::cols(m));
  }
  std::uint64_t next = coords * std::uint64_t(step);
  const auto apply = [&](typename B::matrix& g) {
    host_matrix<T> h = B::to_host(g);
    for (index_t i = 0; i < h.size(); ++i) {
      const double v = double(h.data()[i]) + stddev * noise.normal(next++);
      h.data()[i] = T(v / denominator);
    }
    g = B::from_host(h);
  };
  for (const auto& [name, l] : adapters) {
    auto& g = grads[name];
    if (trains.a) apply(g.dA);
    if (trains.b) apply(g.dB);
  }
  if (!trains.any()) return;
  for (const auto& [name, m] : adapters.modules_to_save()) apply(grads.modules_to_save.at(name));
}

// Epsilon of client-side DP-SGD: each client's steps composed at its own q_c, the largest over
// the clients. One accountant per distinct q (the one-step RDP is computed once).
class step_accountant {
 public:
  explicit step_accountant(double noise_multiplier) : z_(noise_multiplier) {}

  epsilon_at_order epsilon(double q, std::size_t steps, double delta) const {
    if (steps == 0) return {0.0, default_orders().front()};
    auto it = by_rate_.find(q);
    if (it == by_rate_.end()) it = by_rate_.emplace(q, round_accountant(q, z_)).first;
    return it->second.epsilon(steps, delta);
  }

 private:
  double z_;
  mutable std::map<double, round_accountant> by_rate_;
};

}  // namespace rolora::privacy
