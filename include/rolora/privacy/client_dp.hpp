// Client-level differential privacy of a federation: DP-FedAvg (McMahan, Ramage, Talwar, Zhang
// 2018, "Learning Differentially Private Recurrent Language Models", Algorithm 1 with the fixed
// denominator qN) and adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021,
// "Differentially Private Learning with Adaptive Clipping", Algorithm 1). docs/privacy.md.
//
// client_dp holds the hyper-parameters; the run-time state (the clip norm now, the rounds the
// accountant has composed) is client_dp_state, held by the server and saved in its checkpoint.
// The pieces, in the order a round uses them:
//   sampling     Poisson with rate q (each client independently; a round may sample nobody and is
//                still a round) or a fixed number m per round, accounted as Poisson with q = m/N
//   the clip     on the client, the last step of its upload (federated/client.hpp): the change
//                from the download of the round's shared factors and of the modules to save,
//                flattened over every module, scaled to L2 norm <= C (clip_update)
//   the check    the server refuses an upload whose change is above C (hostile input)
//   the noise    on the server, around the aggregator (merge_noised): the sum of the clipped
//                changes + N(0, (z' C)^2) per coordinate, divided by the EXPECTED number of
//                participants qN (m for fixed sampling), added to the global factors; the
//                aggregator then merges that one noised mean (weight 1) as it would merge a mean.
//                Seeded (experiments) or secure (deployments: an exact discrete Gaussian on a
//                grid from the OS's randomness, secure_noise.hpp): noise_source
//   adaptive C   C <- C exp(-eta (b~ - gamma)), b~ = (sum of the unclipped bits + N(0, sigma_b^2))
//                / qN (next_clip_norm)
//   the budget   before a round: the epsilon after it (accountant.hpp, the Poisson-subsampled
//                Gaussian with (q, z) composed over the rounds) must not exceed the target
// Which aggregators compose: those whose merge is a mean of the uploaded factors (the
// mean_of_factors_aggregator trait: fedavg, orthonormalize_a<fedavg>); the rest are refused at
// compile time by federation.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/privacy/accountant.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>
#if defined(ROLORA_HAVE_SECAGG)  // libsodium linked (rolora::secagg): the secure noise source
#include <rolora/privacy/secure_noise.hpp>
#endif

namespace rolora {

// No differential privacy: the federation's default (federation<B, P, A, no_privacy>).
struct no_privacy {
  static constexpr std::string_view name = "none";
  struct state {};
};

namespace privacy {

// How clients are sampled under DP. poisson: each client takes part with probability
// sampling_rate, independently (the accountant's assumption, exactly). fixed: the federation's
// clients_per_round clients, uniformly without replacement (all when 0), accounted AS IF Poisson
// with q = m / N: the approximation TensorFlow Federated and most papers make; the RDP bound is
// proved for Poisson sampling under add/remove-one adjacency, not for sampling without
// replacement (which needs the substitution bound of Wang, Balle, Kasiviswanathan 2019).
enum class client_sampling { poisson, fixed };

// Adaptive clipping (Andrew et al. 2021): after each round C <- C exp(-learning_rate (b~ -
// target_unclipped_quantile)), b~ the noised fraction of the participants whose update was NOT
// clipped. More than gamma unclipped: C shrinks; fewer: C grows.
struct adaptive_clipping {
  double target_unclipped_quantile = 0.5;  // gamma
  double learning_rate = 0.2;              // eta_C
  double bit_noise = 0.0;                  // sigma_b; 0: expected participants / 20 (the paper's)
};

// Where the noise comes from (docs/privacy.md, "Secure noise").
//   seeded  rolora's counter-based streams keyed by the federation's seed: reproducible bit for
//           bit, for experiments; it protects nothing against anyone who knows the seed (they
//           regenerate the noise and subtract it), and a floating-point Gaussian is open to
//           Mironov's (2012) least-significant-bits attack.
//   secure  for deployments: the exact discrete Gaussian (Canonne, Kamath, Steinke 2020) on a
//           grid of step relative_granularity C, from the operating system's cryptographic
//           generator (libsodium); the clients of each round are drawn from it as well
//           (secure_sample_clients). Not reproducible: two runs differ. Needs libsodium (link
//           rolora::secagg, which defines ROLORA_HAVE_SECAGG); refused with a config_error
//           otherwise.
enum class noise_source { seeded, secure };

// The refusal of every secure-noise path in a program built without libsodium.
[[noreturn]] inline void refuse_secure_noise_without_sodium() {
  raise<config_error>(
      "client_dp: secure noise draws from the system's randomness through libsodium, and this "
      "program was built without libsodium: install libsodium-dev and reconfigure (link "
      "rolora::secagg)");
}

// What a client is told to clip, in its download.
struct clip_request {
  double norm = 0.0;   // C
  factor_set factors;  // the round's shared factors; the modules to save are always clipped
};

// The server's DP state between rounds (part of its checkpoint).
struct client_dp_state {
  double clip_norm = 0.0;  // C for the next round
  std::size_t rounds = 0;  // rounds composed by the accountant (empty Poisson rounds included)
};

struct client_dp {
  static constexpr std::string_view name = "client_dp";
  using state = client_dp_state;

  double clip_norm = 1.0;         // C (the initial C under adaptive clipping)
  double noise_multiplier = 1.0;  // z: the accountant's; the update noise is z' under adaptive
  client_sampling sampling = client_sampling::poisson;
  double sampling_rate = 1.0;  // q, under poisson sampling
  std::optional<adaptive_clipping> adaptive = std::nullopt;
  // The budget: a round that would bring epsilon (at delta) above target_epsilon is refused with
  // privacy_budget_exceeded, before it starts. Unset: no limit (epsilon is still reported).
  std::optional<double> target_epsilon = std::nullopt;
  double delta = 1e-5;
  noise_source noise = noise_source::seeded;
  // Secure noise only: the grid step gamma as a fraction of C. 2^-20: the noise on the grid is
  // z' 2^20 units (exact 128-bit sampling has room up to z' ~ 2^10), rounding moves a coordinate
  // by at most 2^-21 C (10^-6 of the noise z' C at z' = 1, 1/6600 of a typical coordinate C /
  // sqrt(d) at d = 10^5), and the sensitivity grows by sqrt(d) 2^-21 C (1.5e-4 C at d = 10^5),
  // which the noise is scaled up to cover (grid_noise in secure_noise.hpp).
  double relative_granularity = 0x1p-20;

  // config_error naming the field unless every setting is usable.
  void check() const {
    if (!(clip_norm > 0.0 && std::isfinite(clip_norm)))
      raise<config_error>("client_dp: clip_norm must be finite and > 0, got ", clip_norm);
    if (!(noise_multiplier >= 0.0 && std::isfinite(noise_multiplier)))
      raise<config_error>("client_dp: noise_multiplier must be finite and >= 0, got ",
                          noise_multiplier);
    if (sampling == client_sampling::poisson && !(sampling_rate > 0.0 && sampling_rate <= 1.0))
      raise<config_error>("client_dp: the Poisson sampling rate must be in (0, 1], got ",
                          sampling_rate);
    if (!(delta > 0.0 && delta < 1.0))
      raise<config_error>("client_dp: delta must be in (0, 1), got ", delta);
    if (target_epsilon && !(*target_epsilon > 0.0))
      raise<config_error>("client_dp: the target epsilon must be > 0, got ", *target_epsilon);
    if (target_epsilon && noise_multiplier == 0.0)
      raise<config_error>("client_dp: a target epsilon needs noise (noise_multiplier > 0)");
    if (noise == noise_source::secure) {
#if !defined(ROLORA_HAVE_SECAGG)
      refuse_secure_noise_without_sodium();
#endif
      if (!(relative_granularity > 0.0 && relative_granularity <= 1.0))
        raise<config_error>("client_dp: the relative granularity must be in (0, 1], got ",
                            relative_granularity);
    }
    if (adaptive) {
      const auto& a = *adaptive;
      if (!(a.target_unclipped_quantile >= 0.0 && a.target_unclipped_quantile <= 1.0))
        raise<config_error>("client_dp: the target unclipped quantile must be in [0, 1], got ",
                            a.target_unclipped_quantile);
      if (!(a.learning_rate >= 0.0 && std::isfinite(a.learning_rate)))
        raise<config_error>("client_dp: the clip learning rate must be finite and >= 0, got ",
                            a.learning_rate);
      if (!(a.bit_noise >= 0.0 && std::isfinite(a.bit_noise)))
        raise<config_error>("client_dp: the clip-bit noise must be finite and >= 0, got ",
                            a.bit_noise);
    }
  }

  // m = clients_per_round (0: all N), capped at N.
  static double fixed_count(std::size_t num_clients, std::size_t per_round) {
    return double(per_round == 0 || per_round >= num_clients ? num_clients : per_round);
  }
  // q the accountant composes: the Poisson rate, or m / N.
  double accounting_rate(std::size_t num_clients, std::size_t per_round) const {
    if (sampling == client_sampling::poisson) return sampling_rate;
    return fixed_count(num_clients, per_round) / double(num_clients);
  }
  // The denominator of DP-FedAvg: qN (m for fixed sampling), whatever the realised count.
  double expected_participants(std::size_t num_clients, std::size_t per_round) const {
    if (sampling == client_sampling::poisson) return sampling_rate * double(num_clients);
    return fixed_count(num_clients, per_round);
  }
  // sigma_b: the noise on the count of unclipped updates (adaptive clipping only).
  double bit_noise(std::size_t num_clients, std::size_t per_round) const {
    if (!adaptive) return 0.0;
    if (adaptive->bit_noise > 0.0) return adaptive->bit_noise;
    return expected_participants(num_clients, per_round) / 20.0;
  }
  // z': the noise multiplier of the update itself. Without adaptive clipping z. With it, the
  // update and the clip bits are released together, and z' = (z^-2 - (2 sigma_b)^-2)^(-1/2)
  // makes the pair exactly as private as one Gaussian mechanism with multiplier z (Andrew et al.
  // 2021, Theorem 1), so the accountant composes z. config_error when z >= 2 sigma_b (no z'
  // exists: the bits alone would spend the whole budget).
  double update_noise_multiplier(std::size_t num_clients, std::size_t per_round) const {
    if (!adaptive || noise_multiplier == 0.0) return noise_multiplier;
    const double sb = bit_noise(num_clients, per_round);
    if (!(noise_multiplier < 2.0 * sb)) {
      raise<config_error>(
          "client_dp: adaptive clipping needs noise_multiplier < 2 sigma_b, got z = ",
          noise_multiplier, " and sigma_b = ", sb, " (raise the clip-bit noise or lower z)");
    }
    return 1.0 / std::sqrt(1.0 / (noise_multiplier * noise_multiplier) - 1.0 / (4.0 * sb * sb));
  }
};

// Which clients take part in a round under secure noise: the rules of the seeded sampling
// (federated/sampling.hpp: Poisson with rate q, or `per_round` uniformly without replacement),
// drawn from the system's randomness. The accountant's amplification by subsampling assumes that
// nobody knows who took part; with seeded sampling, whoever knows the seed knows it for every
// round. Opacus's secure_mode draws its Poisson sampling from the secure generator too. Increasing
// client order, as the seeded rules return.
inline std::vector<std::size_t> secure_sample_clients(const client_dp& dp, std::size_t num_clients,
                                                      std::size_t per_round) {
#if defined(ROLORA_HAVE_SECAGG)
  system_random source;
  std::vector<std::size_t> ids;
  if (dp.sampling == client_sampling::poisson) {
    for (std::size_t c = 0; c < num_clients; ++c)
      if (bernoulli_of(source, dp.sampling_rate)) ids.push_back(c);
    return ids;
  }
  ids.resize(num_clients);
  for (std::size_t c = 0; c < num_clients; ++c) ids[c] = c;
  const std::size_t m = std::size_t(client_dp::fixed_count(num_clients, per_round));
  for (std::size_t i = 0; i < m; ++i) {  // partial Fisher-Yates
    const auto j = i + std::size_t(source.below(std::uint64_t(num_clients - i)));
    std::swap(ids[i], ids[j]);
  }
  ids.resize(m);
  std::sort(ids.begin(), ids.end());
  return ids;
#else
  (void)dp, (void)num_clients, (void)per_round;
  refuse_secure_noise_without_sodium();
#endif
}

// epsilon after a number of rounds of one subsampled Gaussian mechanism (q, z): the one-round RDP
// is computed once, so each round's epsilon is a minimum over the orders, not a new series.
class round_accountant {
 public:
  round_accountant(double q, double noise_multiplier)
      : orders_(default_orders()),
        step_(subsampled_gaussian_rdp(q, noise_multiplier, 1, orders_)) {}

  epsilon_at_order epsilon(std::size_t rounds, double delta) const {
    if (rounds == 0) return {0.0, orders_.front()};
    std::vector<double> rdp(step_.size());
    for (std::size_t k = 0; k < rdp.size(); ++k) rdp[k] = step_[k] * double(rounds);
    return epsilon_from_rdp(orders_, rdp, delta);
  }

 private:
  std::vector<double> orders_;
  std::vector<double> step_;
};

// The result of clipping one update.
struct clip_result {
  double norm = 0.0;     // the change's L2 norm before clipping
  bool clipped = false;  // norm > C: the change was scaled to norm C
};

namespace detail {

template <backend Backend>
double squared_distance(const typename Backend::matrix& x, const typename Backend::matrix& ref) {
  const host_matrix<double> d =  // evaluated: to_host's results are temporaries
      Backend::to_host(x).template cast<double>() - Backend::to_host(ref).template cast<double>();
  return d.squaredNorm();
}

template <backend Backend>
double squared_norm(const typename Backend::matrix& x) {
  return Backend::to_host(x).template cast<double>().squaredNorm();
}

// x <- ref + s (x - ref)
template <backend Backend>
void shrink_toward(typename Backend::matrix& x, const typename Backend::matrix& ref, double s) {
  using T = typename Backend::scalar;
  Backend::axpy(T(-1), ref, x);
  Backend::scale(T(s), x);
  Backend::axpy(T(1), ref, x);
}

// Calls f(trained_matrix, reference_matrix) for every matrix the update's change is made of:
// the `factors` of every module, then every module to save, in the set's (name) order.
template <backend Backend, class Trained, class F>
void for_each_clipped(const adapter_set<Backend>& reference, Trained& trained, factor_set factors,
                      F&& f) {
  for (auto& [name, t] : trained) {
    const auto& r = reference.at(name);
    if (factors.a) f(t.A, r.A);
    if (factors.b) f(t.B, r.B);
  }
  for (auto& [name, w] : trained.modules_to_save()) f(w, reference.modules_to_save().at(name));
}

}  // namespace detail

// The L2 norm of trained - reference over the `factors` of every module and every module to
// save (the update DP clips), and of reference over the same coordinates.
template <backend Backend>
std::pair<double, double> update_norm(const adapter_set<Backend>& reference,
                                      const adapter_set<Backend>& trained, factor_set factors) {
  double change = 0.0, ref = 0.0;
  detail::for_each_clipped(reference, trained, factors, [&](const auto& x, const auto& r) {
    change += detail::squared_distance<Backend>(x, r);
    ref += detail::squared_norm<Backend>(r);
  });
  return {std::sqrt(change), std::sqrt(ref)};
}

// The client's clip (DP-FedAvg's ClipFn): when the change of `trained` from `reference` (the
// download) over the round's shared factors and the modules to save is longer than C, it is
// scaled to length C, in place; other factors are untouched.
template <backend Backend>
clip_result clip_update(const adapter_set<Backend>& reference, adapter_set<Backend>& trained,
                        const clip_request& request) {
  clip_result r;
  r.norm = update_norm(reference, trained, request.factors).first;
  if (!(r.norm > request.norm)) return r;
  r.clipped = true;
  const double s = request.norm / r.norm;
  detail::for_each_clipped(reference, trained, request.factors, [&](auto& x, const auto& ref) {
    detail::shrink_toward<Backend>(x, ref, s);
  });
  return r;
}

// What the server allows above C for rounding: the clip's own rounding in the backend's
// precision (each coordinate ref + s d rounds by at most eps |ref + s d|).
template <backend Backend>
double clip_tolerance(double clip_norm, double reference_norm) {
  const double eps = std::numeric_limits<typename Backend::scalar>::epsilon();
  return 1e-9 * clip_norm + 4.0 * eps * (reference_norm + clip_norm);
}

// One round of the mechanism on the server, with its parameters.
struct noised_round {
  double clip_norm = 0.0;                // C
  double update_noise_multiplier = 0.0;  // z'
  double expected_participants = 0.0;    // qN
  std::uint64_t seed = 0;
  std::size_t round = 0;
  noise_source source = noise_source::seeded;  // secure: seed unused, the OS's randomness
  double relative_granularity = 0x1p-20;       // secure only: gamma / C
};

// Draw i of the update noise of round t is random_stream(seed, dp_noise, t, 0).normal(i), i the
// coordinate's position in the flattened update (modules in name order, A then B, column-major,
// then the modules to save); the clip bits' noise is sub-stream 1, draw 0.
inline random_stream update_noise_stream(std::uint64_t seed, std::size_t round) {
  return random_stream(seed, stream::dp_noise, static_cast<std::uint32_t>(round), 0);
}
inline double clip_bit_noise(std::uint64_t seed, std::size_t round) {
  return random_stream(seed, stream::dp_noise, static_cast<std::uint32_t>(round), 1).normal(0);
}

// The noised mean of the clipped updates as the one update the aggregator merges:
//   U = G + (sum_i (X_i - G) + N(0, (z' C)^2 I)) / qN
// over the `shared` factors and the modules to save (the other factors are G's). With no update
// at all (an empty Poisson round), U = G + noise / qN. Under secure noise (r.source), the same
// mean on the grid gamma Z^d with discrete Gaussian noise: detail::secure_noised_mean.
template <backend Backend>
client_update<Backend> noised_mean(const adapter_set<Backend>& global,
                                   std::span<const client_update<Backend>> updates,
                                   factor_set shared, const noised_round& r);

namespace detail {

// Calls step(out, g, member) for every matrix of the update, in the flattened order of
// noised_mean: the `shared` factors of every module (name order, A then B), then the modules to
// save; member(u) is the update u's matrix at that place.
template <backend Backend, class Step>
void for_each_noised(client_update<Backend>& mean, const adapter_set<Backend>& global,
                     factor_set shared, Step&& step) {
  // Named entries, not structured bindings: clang before 16 cannot capture those in a lambda.
  for (auto& entry : mean.adapters) {
    const std::string& name = entry.first;
    auto& m = entry.second;
    const auto& g = global.at(name);
    if (shared.a) step(m.A, g.A, [&](const auto& u) { return u.adapters.at(name).A; });
    if (shared.b) step(m.B, g.B, [&](const auto& u) { return u.adapters.at(name).B; });
  }
  for (auto& entry : mean.adapters.modules_to_save()) {
    const std::string& name = entry.first;
    const auto& g = global.modules_to_save().at(name);
    step(entry.second, g, [&](const auto& u) { return u.adapters.modules_to_save().at(name); });
  }
}

#if defined(ROLORA_HAVE_SECAGG)
// noised_mean with secure noise (secure_noise.hpp's grid_noise has the argument): each client's
// change rounded to the grid gamma Z^d, the integers summed exactly, N_Z(0, sigma_g^2) added per
// coordinate from the OS's randomness, and U = G + gamma (sum + noise) / qN. The integer vector
// (sum + noise) is what the mechanism releases; the float arithmetic after it is
// post-processing. Not reproducible.
template <backend Backend>
client_update<Backend> secure_noised_mean(const adapter_set<Backend>& global,
                                          std::span<const client_update<Backend>> updates,
                                          factor_set shared, const noised_round& r) {
  using T = typename Backend::scalar;
  client_update<Backend> mean;
  mean.num_samples = 1.0;
  mean.round = r.round;
  mean.adapters = global;
  std::size_t coordinates = 0;  // d: the sensitivity's sqrt(d) term needs it before any noise
  for_each_noised(mean, global, shared, [&](auto&, const auto& g, auto) {
    coordinates += std::size_t(Backend::rows(g)) * std::size_t(Backend::cols(g));
  });
  const grid_noise grid = grid_noise::for_update(r.clip_norm, r.update_noise_multiplier,
                                                 coordinates, r.relative_granularity);
  system_random source;
  for_each_noised(mean, global, shared, [&](auto& out, const auto& g, auto member) {
    const host_matrix<double> gh = Backend::to_host(g).template cast<double>();
    std::vector<std::int64_t> sum(std::size_t(gh.size()), 0);  // sum_i n_i, exact
    for (const auto& u : updates) {
      const host_matrix<double> x = Backend::to_host(member(u)).template cast<double>();
      for (index_t i = 0; i < gh.size(); ++i)
        sum[std::size_t(i)] += grid.to_grid(x.data()[i] - gh.data()[i]);  // |n| < 2^52 each
    }
    host_matrix<T> h(gh.rows(), gh.cols());
    for (index_t i = 0; i < gh.size(); ++i) {
      const std::int64_t k = grid.noise ? (*grid.noise)(source) : 0;
      h.data()[i] = T(grid.granularity * double(sum[std::size_t(i)] + k) / r.expected_participants);
    }
    out = Backend::from_host(h);
    Backend::axpy(T(1), g, out);
  });
  return mean;
}
#endif

}  // namespace detail

template <backend Backend>
client_update<Backend> noised_mean(const adapter_set<Backend>& global,
                                   std::span<const client_update<Backend>> updates,
                                   factor_set shared, const noised_round& r) {
  if (r.source == noise_source::secure) {
#if defined(ROLORA_HAVE_SECAGG)
    return detail::secure_noised_mean(global, updates, shared, r);
#else
    refuse_secure_noise_without_sodium();
#endif
  }
  using T = typename Backend::scalar;
  client_update<Backend> mean;
  mean.num_samples = 1.0;
  mean.round = r.round;
  mean.adapters = global;
  const random_stream noise = update_noise_stream(r.seed, r.round);
  const double stddev = r.update_noise_multiplier * r.clip_norm;
  std::uint64_t next = 0;
  const auto step = [&](typename Backend::matrix& out, const typename Backend::matrix& g,
                        auto member) {
    auto sum = Backend::zeros(Backend::rows(g), Backend::cols(g));  // sum_i (X_i - G)
    for (const auto& u : updates) {  // client-id order: the same bits every run
      auto d = member(u);
      Backend::axpy(T(-1), g, d);
      Backend::axpy(T(1), d, sum);
    }
    auto h = Backend::to_host(sum);
    if (stddev > 0.0) {
      for (index_t i = 0; i < h.size(); ++i) h.data()[i] += T(stddev * noise.normal(next++));
    } else {
      next += std::uint64_t(h.size());
    }
    h /= T(r.expected_participants);
    out = Backend::from_host(h);
    Backend::axpy(T(1), g, out);
  };
  detail::for_each_noised(mean, global, shared, step);
  return mean;
}

// The server's DP merge: the aggregator merges the noised mean of the clipped updates (one
// update of weight 1), so what it computes is post-processing of the Gaussian mechanism's output.
// Only aggregators whose merge of one update is that update (a mean of factors, possibly
// post-processed) may run here: mean_of_factors_aggregator.
template <backend Backend, class Aggregator>
aggregation_result merge_noised(const Aggregator& aggregator, adapter_set<Backend>& global,
                                std::span<const client_update<Backend>> updates, factor_set shared,
                                aggregation_options options, const noised_round& r) {
  static_assert(mean_of_factors_aggregator<Aggregator>,
                "rolora::privacy::merge_noised: client-level DP needs an aggregator whose result "
                "is a mean of the uploaded factors (declare `static constexpr bool "
                "mean_of_factors = true` only if it is)");
  const client_update<Backend> mean = noised_mean(global, updates, shared, r);
  options.client_weighting = weighting::uniform;
  return rolora::detail::merge_checked(
      aggregator, global, std::span<const client_update<Backend>>(&mean, 1), shared, options);
}

// Adaptive clipping's step (Andrew et al. 2021, Algorithm 1): b~ = (number of unclipped updates
// + sigma_b N(0, 1)) / qN, C' = C exp(-eta (b~ - gamma)). Returns C (unchanged) without
// adaptive clipping. `unclipped`: the number of the round's updates that were not clipped (under
// secure aggregation the sum of the clients' bits, which the server learns only as a sum).
inline double next_clip_norm(const client_dp& dp, double clip_norm, double unclipped,
                             double expected, double bit_noise, std::uint64_t seed,
                             std::size_t round) {
  if (!dp.adaptive) return clip_norm;
  double noise = 0.0;  // sigma_b N(0, 1), or under secure noise N_Z(0, sigma_b^2)
  if (dp.noise == noise_source::secure) {
    // The count has sensitivity 1 and is an integer already: the grid is Z, no rounding.
#if defined(ROLORA_HAVE_SECAGG)
    if (bit_noise > 0.0) {
      system_random source;
      noise = double(discrete_gaussian(
          rational_at_least(bit_noise * bit_noise * (1.0 + 0x1p-40), "sigma_b^2"))(source));
    }
#else
    refuse_secure_noise_without_sodium();
#endif
  } else {
    noise = bit_noise * clip_bit_noise(seed, round);
  }
  const double b = (unclipped + noise) / expected;
  return clip_norm *
         std::exp(-dp.adaptive->learning_rate * (b - dp.adaptive->target_unclipped_quantile));
}

// The number of `updates` that were not clipped: adaptive clipping's count.
template <backend Backend>
double unclipped_count(std::span<const client_update<Backend>> updates) {
  double unclipped = 0.0;
  for (const auto& u : updates) unclipped += u.clipped ? 0.0 : 1.0;
  return unclipped;
}

// The same step, counting the unclipped updates among `updates`.
template <backend Backend>
double next_clip_norm(const client_dp& dp, double clip_norm,
                      std::span<const client_update<Backend>> updates, double expected,
                      double bit_noise, std::uint64_t seed, std::size_t round) {
  return next_clip_norm(dp, clip_norm, unclipped_count(updates), expected, bit_noise, seed, round);
}

}  // namespace privacy
}  // namespace rolora
