// privacy_budget: the accountant on the command line, in the style of TF-Privacy's
// compute_dp_sgd_privacy and Opacus's accountant. The (epsilon, delta) spent by `steps` steps
// of the Poisson-subsampled Gaussian mechanism (rate q, noise multiplier z), minimised over RDP
// orders (default: dp_accounting's), or the smallest noise multiplier meeting a target epsilon.
//   privacy_budget --sampling-rate 0.0025 --noise-multiplier 1.3 --steps 6000 --delta 1e-5
//     -> epsilon 0.724223403 order 19
//   privacy_budget --sampling-rate 0.04 --target-epsilon 8 --steps 2000 --delta 1e-5
//     -> noise_multiplier 1.35624... epsilon ... order ...
// docs/privacy.md has the formulas and the rule for fractional orders.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/privacy/accountant.hpp>
#include <vector>

#include "common/exit_code.hpp"

namespace apps = rolora::apps;

int main(int argc, char** argv) {
  CLI::App app{
      "Privacy budget of the Poisson-subsampled Gaussian mechanism (DP-SGD, DP-FedAvg) by RDP "
      "accounting: prints `epsilon E order A`, or with --target-epsilon the smallest noise "
      "multiplier that meets it (`noise_multiplier Z epsilon E order A`)."};
  double q = 0, delta = 0;
  std::uint64_t steps = 0;
  std::optional<double> noise, target;
  std::vector<double> orders = rolora::privacy::default_orders();
  double tolerance = 1e-6;
  app.add_option("--sampling-rate", q,
                 "probability q that a record (client or example) is in a step, in [0, 1]")
      ->required();
  app.add_option("--steps", steps, "steps (rounds) composed")->required();
  app.add_option("--delta", delta, "delta of the (epsilon, delta) guarantee, in (0, 1)")
      ->required();
  auto* z = app.add_option("--noise-multiplier", noise,
                           "noise standard deviation over the clipping norm (>= 0)");
  auto* t = app.add_option("--target-epsilon", target,
                           "print the smallest noise multiplier reaching this epsilon (> 0)");
  z->excludes(t);
  t->excludes(z);
  app.add_option("--orders", orders, "RDP orders, each > 1 (default: dp_accounting's)")
      ->delimiter(',');
  app.add_option("--tolerance", tolerance,
                 "relative width of the bisection bracket of --target-epsilon")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return apps::exit_code_of([&] {
    if (!noise && !target) {
      rolora::raise<rolora::config_error>(
          "give --noise-multiplier (to get epsilon) or --target-epsilon (to get the noise "
          "multiplier), got neither");
    }
    if (target) {
      const double found =
          rolora::privacy::noise_multiplier_for(*target, delta, q, steps, orders, tolerance);
      const auto e = rolora::privacy::subsampled_gaussian_epsilon(q, found, steps, delta, orders);
      std::printf("noise_multiplier %.9g epsilon %.9g order %.9g\n", found, e.epsilon, e.order);
    } else {
      const auto e = rolora::privacy::subsampled_gaussian_epsilon(q, *noise, steps, delta, orders);
      std::printf("epsilon %.9g order %.9g\n", e.epsilon, e.order);
    }
    return 0;
  });
}
