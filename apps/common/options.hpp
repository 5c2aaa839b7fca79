// The command-line options the research drivers share, each declared once here: its name, its
// check and its help. A driver binds an option to its own field; the field's value at that moment
// is the default --help shows, so drivers keep their own defaults (30 rounds for the toy, 20 for
// fine-tuning) under one spelling. A new shared flag (differential privacy, secure aggregation)
// is one more member of `shared_options`, and each driver that supports it adds one call.
#pragma once
#include <CLI/CLI.hpp>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <rolora/federated/methods.hpp>
#include <rolora/privacy/accountant.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <rolora/privacy/dp_sgd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint_options.hpp"
#include "client_split.hpp"

namespace rolora::apps {

// Local learning rates: --lr for every method, else the rate tuned for the method on the
// validation split (docs/results.md), else `otherwise`.
struct learning_rates {
  std::map<std::string, double, std::less<>> tuned;
  double otherwise = 1e-3;
  std::optional<double> all = std::nullopt;  // --lr

  double operator()(std::string_view method) const {
    if (all) return *all;
    const auto it = tuned.find(method);
    return it != tuned.end() ? it->second : otherwise;
  }
};

// Differential privacy as the flags set it (--dp client|sample and the rest); to_client_dp turns
// it into the federation's privacy::client_dp for a run of `rounds` rounds, to_sample_dp into
// federation_config::sample_dp (DP-SGD inside each client, privacy/dp_sgd.hpp).
struct dp_settings {
  std::string mode = "none";               // --dp: none | client | sample
  double clip_norm = 1.0;                  // --clip-norm
  std::optional<double> noise_multiplier;  // --noise-multiplier (else from --target-epsilon)
  std::optional<double> target_epsilon;    // --target-epsilon: the budget, fail-closed
  double delta = 1e-5;                     // --delta
  double sampling_rate = 1.0;              // --sampling-rate: Poisson q
  bool adaptive_clip = false;              // --adaptive-clip
  double clip_quantile = 0.5;              // --clip-quantile: gamma
  double clip_lr = 0.2;                    // --clip-lr: eta_C
  double clip_bit_noise = 0.0;             // --clip-bit-noise: sigma_b (0: qN / 20)
  bool secure_noise = false;               // --secure-noise: privacy::noise_source::secure
  std::string batch_sampling = "poisson";  // --batch-sampling (--dp sample): poisson | fixed

  bool on() const { return mode == "client"; }  // client-level DP
  bool sample() const { return mode == "sample"; }
  bool any() const { return on() || sample(); }  // an epsilon to report
  // Sample-level DP-SGD for a run in which a client takes at most `steps` local steps, sampled
  // at rate at most q (B / the smallest client's n): without --noise-multiplier, z is the
  // smallest that meets --target-epsilon for that client.
  privacy::sample_dp to_sample_dp(std::size_t steps, double q) const {
    privacy::sample_dp dp;
    dp.clip_norm = clip_norm;
    dp.sampling = batch_sampling == "fixed" ? privacy::batch_sampling::fixed
                                            : privacy::batch_sampling::poisson;
    dp.delta = delta;
    dp.target_epsilon = target_epsilon;
    if (noise_multiplier) {
      dp.noise_multiplier = *noise_multiplier;
    } else if (target_epsilon) {
      dp.noise_multiplier = privacy::noise_multiplier_for(*target_epsilon, delta, q, steps);
    } else {
      raise<config_error>("--dp sample needs --noise-multiplier or --target-epsilon");
    }
    dp.check();
    return dp;
  }
  // config_error when neither or an unusable pair of --noise-multiplier / --target-epsilon.
  privacy::client_dp to_client_dp(std::size_t rounds) const {
    privacy::client_dp dp;
    dp.clip_norm = clip_norm;
    dp.sampling = privacy::client_sampling::poisson;
    dp.sampling_rate = sampling_rate;
    dp.delta = delta;
    dp.target_epsilon = target_epsilon;
    if (adaptive_clip)
      dp.adaptive = privacy::adaptive_clipping{clip_quantile, clip_lr, clip_bit_noise};
    // check() refuses it in a program built without libsodium (rolora::secagg not linked).
    if (secure_noise) dp.noise = privacy::noise_source::secure;
    if (noise_multiplier) {
      dp.noise_multiplier = *noise_multiplier;
    } else if (target_epsilon) {
      dp.noise_multiplier =
          privacy::noise_multiplier_for(*target_epsilon, delta, sampling_rate, rounds);
    } else {
      raise<config_error>("--dp client needs --noise-multiplier or --target-epsilon");
    }
    dp.check();
    return dp;
  }
};

// The one-line refusal of a method that --dp client or --secure-aggregation cannot run
// (rolora::composition_of), so that a run refuses its method list before any round instead of
// after the methods listed before the refused one; empty when every method composes. "head", the
// head-only control, is FedAvg of the head: it composes with both.
inline std::string refusal_of(const std::vector<std::string>& methods, bool client_dp,
                              bool secure_aggregation) {
  const auto composes = [&](const std::string& name) {
    const auto c = composition_of(name == "head" ? "fedit" : name);
    return (!client_dp || c.client_dp) && (!secure_aggregation || c.secure_aggregation);
  };
  std::string usable;
  for (const auto& name : method_names()) {
    if (composes(name)) usable += (usable.empty() ? "" : ", ") + name;
  }
  for (const auto& name : methods) {
    if (composes(name)) continue;
    const auto c = composition_of(name);
    const std::string flag = client_dp && !c.client_dp ? "--dp client" : "--secure-aggregation";
    const std::string why =
        flag == "--dp client"
            ? "'s aggregate is not a mean of the uploaded factors, so clipping does not bound "
              "one client's influence"
        : !c.client_dp
            ? "'s aggregate is neither a mean of the uploaded factors nor of their products, so "
              "it needs each client's factors and the server would see only their sum"
            : " keeps a factor per client, which the server would hold in the clear";
    return flag + ": " + name + why + "; use " + usable + " (docs/privacy.md: what composes)";
  }
  return {};
}

class shared_options {
 public:
  explicit shared_options(CLI::App& app) : app_(app) {}

  CLI::Option* clients(std::size_t& n, const std::string& help = "number of clients") {
    return app_.add_option("--clients", n, help)
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
  }
  // --split, --alpha, --classes-per-client; `what`: the data being split ("training e-mails").
  void split(client_split& s, const std::string& what) { add_split_options(app_, s, what); }
  CLI::Option* rounds(std::size_t& n, const std::string& help = "communication rounds") {
    return app_.add_option("--rounds", n, help)
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
  }
  CLI::Option* local_steps(std::size_t& n,
                           const std::string& help = "local optimizer steps per round") {
    return app_.add_option("--local-steps", n, help)
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
  }
  CLI::Option* batch(std::size_t& n, const std::string& help = "local batch size") {
    return app_.add_option("--batch", n, help)->check(CLI::Range(1, 100000))->capture_default_str();
  }
  CLI::Option* clients_per_round(std::size_t& n) {
    return app_.add_option("--clients-per-round", n, "clients sampled per round (0: all)")
        ->capture_default_str();
  }
  CLI::Option* seed(
      std::uint64_t& s,
      const std::string& help = "seed of the split, the adapters, sampling and batching") {
    return app_.add_option("--seed", s, help)->capture_default_str();
  }
  CLI::Option* threads(
      std::size_t& n,
      const std::string& help = "clients trained in parallel (results do not depend on it)") {
    return app_.add_option("--threads", n, help)->check(CLI::Range(1, 1024))->capture_default_str();
  }
  // --lr: one rate for every method (default: each method's tuned rate, listed in `help`).
  CLI::Option* lr(learning_rates& lr, const std::string& help) {
    return app_
        .add_option_function<double>(
            "--lr", [&lr](double v) { lr.all = v; }, help)
        ->check(CLI::PositiveNumber);
  }
  // --lr for a single run (pretraining): a plain value with its default shown.
  CLI::Option* lr(double& lr, const std::string& help) {
    return app_.add_option("--lr", lr, help)->check(CLI::PositiveNumber)->capture_default_str();
  }
  // --methods: names of method_list (the paper's three when paper_only) and `extra` ("head").
  CLI::Option* methods(std::vector<std::string>& chosen, bool paper_only,
                       const std::vector<std::string>& extra, const std::string& note) {
    auto names = method_names(paper_only);
    std::string help = "methods to run:";
    for (const auto& n : names) help += " " + n + " (" + std::string(method_title(n)) + "),";
    help.pop_back();
    if (!note.empty()) help += "; " + note;
    names.insert(names.end(), extra.begin(), extra.end());
    return app_.add_option("--methods", chosen, help)
        ->delimiter(',')
        ->check(CLI::IsMember(names))
        ->capture_default_str();
  }
  CLI::Option* eval_every(std::size_t& n) {
    return app_.add_option("--eval-every", n, "evaluate every N rounds")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
  }
  CLI::Option* validation(bool& on, const std::string& help) {
    return app_.add_flag("--validation", on, help);
  }
  CLI::Option* out(std::string& dir, const std::string& help = "output folder") {
    return app_.add_option("--out", dir, help)->capture_default_str();
  }
  // Client-level differential privacy (privacy/client_dp.hpp, docs/privacy.md).
  CLI::Option* dp(dp_settings& d) {
    return app_
        .add_option("--dp", d.mode,
                    "differential privacy: none, client (DP-FedAvg: each client's update "
                    "clipped, Gaussian noise on the sum, divided by the expected count qN), or "
                    "sample (DP-SGD in each client: every example's gradient clipped to "
                    "--clip-norm, Gaussian noise on each step's sum, q = batch size / n_c)")
        ->check(CLI::IsMember({"none", "client", "sample"}))
        ->capture_default_str();
  }
  CLI::Option* clip_norm(dp_settings& d) {
    return app_
        .add_option("--clip-norm", d.clip_norm,
                    "DP: L2 clip norm C of a client's update (--dp sample: of one example's "
                    "gradient)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
  }
  CLI::Option* noise_multiplier(dp_settings& d) {
    return app_
        .add_option_function<double>(
            "--noise-multiplier", [&d](double z) { d.noise_multiplier = z; },
            "DP: noise multiplier z (noise std z C on the sum); default: the smallest z that "
            "meets --target-epsilon over the run's rounds")
        ->check(CLI::NonNegativeNumber);
  }
  CLI::Option* target_epsilon(dp_settings& d) {
    return app_
        .add_option_function<double>(
            "--target-epsilon", [&d](double e) { d.target_epsilon = e; },
            "DP: the budget; the run stops before a round that would exceed it")
        ->check(CLI::PositiveNumber);
  }
  CLI::Option* delta(dp_settings& d) {
    return app_.add_option("--delta", d.delta, "DP: delta of the (epsilon, delta) guarantee")
        ->check(CLI::Range(1e-300, 0.5))
        ->capture_default_str();
  }
  CLI::Option* sampling_rate(dp_settings& d) {
    return app_
        .add_option("--sampling-rate", d.sampling_rate,
                    "DP: Poisson client sampling rate q (each client joins a round with "
                    "probability q; a round may have nobody)")
        ->check(CLI::Range(1e-9, 1.0))
        ->capture_default_str();
  }
  CLI::Option* adaptive_clip(dp_settings& d) {
    return app_.add_flag("--adaptive-clip", d.adaptive_clip,
                         "DP: adaptive clipping (Andrew et al. 2021): C follows the "
                         "--clip-quantile of the update norms");
  }
  CLI::Option* clip_quantile(dp_settings& d) {
    return app_
        .add_option("--clip-quantile", d.clip_quantile,
                    "DP, adaptive clipping: target fraction gamma of unclipped updates")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
  }
  CLI::Option* clip_lr(dp_settings& d) {
    return app_
        .add_option("--clip-lr", d.clip_lr,
                    "DP, adaptive clipping: rate eta of C <- C exp(-eta (b - gamma))")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
  }
  CLI::Option* clip_bit_noise(dp_settings& d) {
    return app_
        .add_option("--clip-bit-noise", d.clip_bit_noise,
                    "DP, adaptive clipping: noise std sigma_b on the count of unclipped updates "
                    "(0: qN / 20); needs z < 2 sigma_b")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
  }
  // Refused unless --dp client (checked when the flags are processed: --dp is declared first,
  // so its value is in place); refused by to_client_dp where libsodium is not linked.
  CLI::Option* secure_noise(dp_settings& d) {
    return app_.add_flag_callback(
        "--secure-noise",
        [&d] {
          if (!d.on()) throw CLI::ValidationError("--secure-noise", "needs --dp client");
          d.secure_noise = true;
        },
        "DP, for deployments: the noise an exact discrete Gaussian and the round's clients "
        "drawn from the system's randomness (libsodium); not reproducible. Without it both are "
        "seeded, for experiments only: whoever knows --seed can subtract the noise "
        "(docs/privacy.md)");
  }
  CLI::Option* batch_sampling(dp_settings& d) {
    return app_
        .add_option("--batch-sampling", d.batch_sampling,
                    "--dp sample: poisson (each example joins a step with probability q = batch "
                    "size / n_c) or fixed (batches of the batch size, accounted as Poisson at q)")
        ->check(CLI::IsMember({"poisson", "fixed"}))
        ->capture_default_str();
  }
  // Every DP flag above, for a driver that supports client-level DP.
  void client_dp(dp_settings& d) {
    dp(d);
    clip_norm(d);
    noise_multiplier(d);
    target_epsilon(d);
    delta(d);
    sampling_rate(d);
    adaptive_clip(d);
    clip_quantile(d);
    clip_lr(d);
    clip_bit_noise(d);
    secure_noise(d);
    batch_sampling(d);
  }
  // --checkpoint-dir, --checkpoint-every, --resume; `unit`: "rounds" or "iterations".
  void checkpoint(checkpoint_options& c, const std::string& unit) {
    add_checkpoint_options(app_, c, unit);
  }

 private:
  CLI::App& app_;
};

}  // namespace rolora::apps
