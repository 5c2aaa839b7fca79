// The privacy accountant: Renyi differential privacy (RDP) of the Poisson-subsampled Gaussian
// mechanism, composed over steps and converted to (epsilon, delta), and the inverse (the
// smallest noise multiplier that meets a target (epsilon, delta)). Pure math on the standard
// library; docs/privacy.md gives the formulas, the rule followed and the test vectors.
//
// The mechanism: each step, every record (a client in client-level DP, an example in DP-SGD) is
// included independently with probability q; the sum of the included contributions, each of L2
// norm at most C, gets N(0, (z C)^2) noise per coordinate; z is the noise multiplier. Neighbours
// differ by adding or removing one record.
//
// Sources, ported line by line (docs/privacy.md names the commits):
//  - per-order RDP: Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled
//    Gaussian Mechanism", arXiv:1908.10530, Sec. 3.3: RDP(alpha) = log(A_alpha) / (alpha - 1),
//    A_alpha an exact binomial sum at integer orders and a two-part series at fractional orders;
//    Google's dp_accounting (rdp/rdp_privacy_accountant.py) is the code this follows.
//  - (epsilon, delta): Balle et al. 2020 (arXiv:1905.09982, Thm. 21) / Canonne, Kamath, Steinke
//    2020 (arXiv:2004.00010, Prop. 12): eps = rdp + log1p(-1/a) - log(delta a) / (a - 1),
//    minimised over the orders, as dp_accounting's compute_epsilon and Opacus's get_privacy_spent.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numbers>
#include <rolora/core/error.hpp>
#include <span>
#include <utility>
#include <vector>

namespace rolora::privacy {

// An (epsilon, delta) guarantee's epsilon and the RDP order that gave it.
struct epsilon_at_order {
  double epsilon = 0;
  double order = 0;
};

// An (epsilon, delta) guarantee's delta and the RDP order that gave it.
struct delta_at_order {
  double delta = 0;
  double order = 0;
};

// dp_accounting's DEFAULT_RDP_ORDERS: 1.1, 1.2, ..., 10.9 (computed as 1 + x / 10.0, the same
// doubles as Python's, so 2.0, 3.0, ..., 10.0 are integer orders), 11, ..., 63, 128, 256, 512,
// 1024.
inline std::vector<double> default_orders() {
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1.0 + x / 10.0);
  for (int a = 11; a < 64; ++a) orders.push_back(a);
  for (double a : {128.0, 256.0, 512.0, 1024.0}) orders.push_back(a);
  return orders;
}

namespace detail {

// The series are summed in log space, in long double where the platform has it (x86: 64-bit
// mantissa), as dp_accounting sums them in log space in double.
using real = long double;
inline constexpr real minus_inf = -std::numeric_limits<real>::infinity();
// dp_accounting's _MAX_STEPS_LOG_A_FRAC: a fractional order whose series has not converged after
// this many terms has infinite RDP (it is then never the optimal order).
inline constexpr int max_fractional_terms = 1000;

// log(exp(a) + exp(b)).
inline real log_add(real a, real b) {
  if (a < b) std::swap(a, b);
  if (b == minus_inf) return a;
  return a + std::log1p(std::exp(b - a));
}

// log(erfc(x)), accurate where erfc(x) underflows: the Laurent series at infinity
// (dp_accounting's _log_erfc fallback) once erfc(x) nears the smallest normal number.
inline real log_erfc(real x) {
  const real e = std::erfc(x);
  if (x < 5 || e > std::numeric_limits<real>::min() * real(1e30)) return std::log(e);
  const real r = 1 / (x * x);
  return -std::log(std::numbers::pi_v<real>) / 2 - std::log(x) - x * x - real(0.5) * r +
         real(0.625) * r * r - 37.0L / 24.0L * r * r * r + 353.0L / 64.0L * r * r * r * r;
}

inline bool is_integer_order(double alpha) { return std::floor(alpha) == alpha; }

// log(A_alpha) at an integer order, 0 < q < 1 (MTZ19 Sec. 3.3):
//   A_alpha = sum_{i=0}^{alpha} C(alpha, i) q^i (1 - q)^(alpha - i) exp((i^2 - i) / (2 sigma^2)).
// Every term is positive: an exact sum. C(alpha, i) by the recurrence C(a, i) = C(a, i - 1)
// (a - i + 1) / i, in log space.
inline real log_a_integer(real q, real sigma, std::uint64_t alpha) {
  const real log_q = std::log(q), log_1mq = std::log1p(-q), two_s2 = 2 * sigma * sigma;
  const real a = real(alpha);
  real log_a = minus_inf, log_coef = 0;
  for (std::uint64_t k = 0; k <= alpha; ++k) {
    const real i = real(k);
    if (k > 0) log_coef += std::log((a - i + 1) / i);
    log_a = log_add(log_a, log_coef + i * log_q + (a - i) * log_1mq + (i * i - i) / two_s2);
  }
  return log_a;
}

// log(A_alpha) at a fractional order, 0 < q < 1 (MTZ19 Sec. 3.3): A_alpha = A_0 + A_1, the
// integrals over (-inf, z0] and [z0, inf) with z0 = sigma^2 log(1/q - 1) + 1/2, each a series in
// the generalised binomial coefficients C(alpha, i):
//   A_0 = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)) erfc((i - z0) /
//         (sqrt(2) sigma)) / 2
//   A_1 = sum_i C(alpha, i) q^(alpha-i) (1-q)^i exp((j^2 - j) / (2 sigma^2)) erfc((z0 - j) /
//         (sqrt(2) sigma)) / 2,  j = alpha - i.
// C(alpha, i) changes sign for i > alpha + 1. The rule followed is current dp_accounting's
// ("absolute"): every term is added with |C(alpha, i)|, which bounds A_alpha from above (the
// triangle inequality), has no cancellation and cannot go negative; Opacus (and dp_accounting
// before 2024-04-26) adds the signed terms. Stops as dp_accounting does: when both terms
// decrease and are below e^-30 of the total; +inf when that has not happened in 1000 terms.
inline real log_a_fractional(real q, real sigma, real alpha) {
  const real log_q = std::log(q), log_1mq = std::log1p(-q), s2 = sigma * sigma;
  const real z0 = s2 * std::log(1 / q - 1) + real(0.5);
  const real root2_sigma = std::numbers::sqrt2_v<real> * sigma,
             log_half = -std::numbers::ln2_v<real>;
  real log_a0 = minus_inf, log_a1 = minus_inf, last_s0 = minus_inf, last_s1 = minus_inf;
  real log_coef = 0;  // log|C(alpha, i)|
  for (int k = 0; k < max_fractional_terms; ++k) {
    const real i = real(k), j = alpha - i;
    if (k > 0) log_coef += std::log(std::fabs((alpha - i + 1) / i));
    const real log_t0 = log_coef + i * log_q + j * log_1mq;
    const real log_t1 = log_coef + j * log_q + i * log_1mq;
    const real log_e0 = log_half + log_erfc((i - z0) / root2_sigma);
    const real log_e1 = log_half + log_erfc((z0 - j) / root2_sigma);
    const real log_s0 = log_t0 + (i * i - i) / (2 * s2) + log_e0;
    const real log_s1 = log_t1 + (j * j - j) / (2 * s2) + log_e1;
    log_a0 = log_add(log_a0, log_s0);
    log_a1 = log_add(log_a1, log_s1);
    const real total = log_add(log_a0, log_a1);
    if (log_s0 < last_s0 && log_s1 < last_s1 && std::max(log_s0, log_s1) < total - 30) {
      return total;
    }
    last_s0 = log_s0;
    last_s1 = log_s1;
  }
  return std::numeric_limits<real>::infinity();
}

// log(A_alpha), 0 < q < 1, 0 < sigma < inf, finite alpha > 1.
inline real log_a(double q, double sigma, double alpha) {
  if (is_integer_order(alpha)) return log_a_integer(q, sigma, std::uint64_t(alpha));
  return log_a_fractional(q, sigma, alpha);
}

inline void check_sampling_rate(double q) {
  if (!(q >= 0 && q <= 1)) {
    raise<config_error>("the sampling rate q must be in [0, 1], got ", q);
  }
}

inline void check_noise_multiplier(double sigma) {
  if (!(sigma >= 0)) {
    raise<config_error>("the noise multiplier must be >= 0 (0: no noise, inf: no release), got ",
                        sigma);
  }
}

inline void check_order(double alpha) {
  if (!(alpha > 1)) {
    raise<config_error>("an RDP order must be > 1 (a number, +inf allowed), got ", alpha);
  }
}

inline void check_delta(double delta) {
  if (!(delta > 0 && delta < 1)) raise<config_error>("delta must be in (0, 1), got ", delta);
}

}  // namespace detail

// RDP of one step of the Poisson-subsampled Gaussian mechanism at order `alpha` (> 1, +inf
// allowed), the edge cases as dp_accounting's _compute_rdp_poisson_subsampled_gaussian and
// Opacus's _compute_rdp: q = 0 -> 0 (nobody is sampled; also when sigma = 0); sigma = 0 or
// alpha = inf -> inf; q = 1 -> alpha / (2 sigma^2), the Gaussian mechanism's; sigma = inf -> 0
// (the limit of every formula: nothing is released).
inline double subsampled_gaussian_rdp(double q, double noise_multiplier, double alpha) {
  detail::check_sampling_rate(q);
  detail::check_noise_multiplier(noise_multiplier);
  detail::check_order(alpha);
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (q == 0) return 0;
  if (noise_multiplier == inf) return 0;
  if (std::isinf(alpha) || noise_multiplier == 0) return inf;
  if (q == 1) return alpha / (2 * noise_multiplier * noise_multiplier);
  return double(detail::log_a(q, noise_multiplier, alpha) / (detail::real(alpha) - 1));
}

// RDP of `steps` steps at each order: the one-step RDP times steps (RDP composes additively).
inline std::vector<double> subsampled_gaussian_rdp(double q, double noise_multiplier,
                                                   std::uint64_t steps,
                                                   std::span<const double> orders) {
  std::vector<double> rdp;
  rdp.reserve(orders.size());
  for (double alpha : orders) {
    const double one = subsampled_gaussian_rdp(q, noise_multiplier, alpha);
    rdp.push_back(steps == 0 ? 0.0 : one * double(steps));
  }
  return rdp;
}

namespace detail {

inline void check_curve(std::span<const double> orders, std::span<const double> rdp) {
  if (orders.size() != rdp.size()) {
    raise<config_error>("RDP needs one value per order: ", orders.size(), " orders, ", rdp.size(),
                        " values");
  }
  if (orders.empty()) raise<config_error>("RDP conversion needs at least one order, got none");
  for (std::size_t k = 0; k < orders.size(); ++k) {
    check_order(orders[k]);
    if (std::isnan(rdp[k])) raise<config_error>("RDP at order ", orders[k], " is NaN");
  }
}

}  // namespace detail

// (epsilon, delta) from RDP curve (orders, rdp) and delta in (0, 1): the smallest over the orders
// of dp_accounting's compute_epsilon (Balle et al. 2020 Thm. 21 / CKS20 Prop. 12):
//   eps(a) = rdp(a) + log1p(-1/a) - log(delta a) / (a - 1)   for a > 1.01,
//   eps(a) = 0 where delta^2 + expm1(-rdp(a)) > 0 (the KL bound delta <= sqrt(1 - exp(-rdp))),
//   eps(a) = inf for 1 < a <= 1.01 (the bound is unstable there), or rdp(a) = inf,
//   eps(inf) = rdp(inf) (the limit of the bound),
// negative RDP (rounding) counting as 0; the first order attaining the minimum is reported, and
// epsilon is clamped at 0.
inline epsilon_at_order epsilon_from_rdp(std::span<const double> orders,
                                         std::span<const double> rdp, double delta) {
  detail::check_delta(delta);
  detail::check_curve(orders, rdp);
  epsilon_at_order best{std::numeric_limits<double>::infinity(), orders[0]};
  for (std::size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k], r = rdp[k];
    double eps = std::numeric_limits<double>::infinity();
    if (r < 0 || delta * delta + std::expm1(-r) > 0) {
      eps = 0;
    } else if (std::isinf(a)) {
      eps = r;  // the limit a -> inf of the bound below
    } else if (a > 1.01) {
      eps = r + std::log1p(-1 / a) - std::log(delta * a) / (a - 1);
    }
    if (eps < best.epsilon) best = {eps, a};
  }
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

// delta for a given epsilon (>= 0) from RDP curve (orders, rdp): dp_accounting's compute_delta,
// the smallest over the orders of min(sqrt(1 - exp(-rdp)), exp((a - 1)(rdp - eps + log1p(-1/a))
// - log a)) (the second for a > 1.01 only), capped at 1.
inline delta_at_order delta_from_rdp(std::span<const double> orders, std::span<const double> rdp,
                                     double epsilon) {
  if (!(epsilon >= 0)) raise<config_error>("epsilon must be >= 0, got ", epsilon);
  detail::check_curve(orders, rdp);
  double best_log = std::numeric_limits<double>::infinity(), best_order = orders[0];
  for (std::size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k], r = rdp[k];
    double log_delta = 0;
    if (r <= 0) {
      log_delta = -std::numeric_limits<double>::infinity();
    } else {
      log_delta = std::isinf(r) ? 0.0 : 0.5 * std::log1p(-std::exp(-r));
    }
    if (a > 1.01 && !std::isinf(a) && !std::isinf(r) && r > 0) {
      log_delta = std::min(log_delta, (a - 1) * (r - epsilon + std::log1p(-1 / a)) - std::log(a));
    }
    if (log_delta < best_log) {
      best_log = log_delta;
      best_order = a;
    }
  }
  return {std::min(std::exp(best_log), 1.0), best_order};
}

// epsilon after `steps` steps of the Poisson-subsampled Gaussian mechanism with rate q and noise
// multiplier z, at delta, minimised over `orders` (default: dp_accounting's).
inline epsilon_at_order subsampled_gaussian_epsilon(double q, double noise_multiplier,
                                                    std::uint64_t steps, double delta,
                                                    std::span<const double> orders) {
  detail::check_delta(delta);
  const auto rdp = subsampled_gaussian_rdp(q, noise_multiplier, steps, orders);
  return epsilon_from_rdp(orders, rdp, delta);
}

inline epsilon_at_order subsampled_gaussian_epsilon(double q, double noise_multiplier,
                                                    std::uint64_t steps, double delta) {
  const auto orders = default_orders();
  return subsampled_gaussian_epsilon(q, noise_multiplier, steps, delta, orders);
}

// The inverse: the smallest noise multiplier z with epsilon(q, z, steps, delta) <= target, found
// by doubling from z = 1 to a z that meets the target and then bisecting until the bracket
// [lo, hi] (lo fails, hi meets) is narrower than relative_tolerance * hi; returns hi, so the
// result always meets the target and is at most relative_tolerance above the smallest z on the
// orders' grid. q = 0, steps = 0 or target = inf need no noise: 0. A target no z <= 1e6 meets
// (below what the orders can certify at this delta) is a config_error.
inline double noise_multiplier_for(double target_epsilon, double delta, double q,
                                   std::uint64_t steps, std::span<const double> orders,
                                   double relative_tolerance = 1e-6) {
  if (!(target_epsilon > 0)) {
    raise<config_error>("the target epsilon must be > 0, got ", target_epsilon);
  }
  if (!(relative_tolerance > 0 && relative_tolerance < 0.1)) {
    raise<config_error>("the relative tolerance must be in (0, 0.1), got ", relative_tolerance);
  }
  detail::check_delta(delta);
  detail::check_sampling_rate(q);
  if (q == 0 || steps == 0 || std::isinf(target_epsilon)) return 0;
  const auto meets = [&](double z) {
    return subsampled_gaussian_epsilon(q, z, steps, delta, orders).epsilon <= target_epsilon;
  };
  constexpr double max_noise = 1e6;  // Opacus's MAX_SIGMA
  double lo = 0, hi = 1;
  while (!meets(hi)) {
    lo = hi;
    hi *= 2;
    if (hi > max_noise) {
      raise<config_error>("no noise multiplier up to ", max_noise, " reaches epsilon ",
                          target_epsilon, " at delta ", delta, " (q ", q, ", ", steps,
                          " steps): the target is below what these RDP orders can certify");
    }
  }
  while (hi - lo > relative_tolerance * hi) {
    const double mid = lo + (hi - lo) / 2;
    (meets(mid) ? hi : lo) = mid;
  }
  return hi;
}

inline double noise_multiplier_for(double target_epsilon, double delta, double q,
                                   std::uint64_t steps) {
  const auto orders = default_orders();
  return noise_multiplier_for(target_epsilon, delta, q, steps, orders);
}

// A running RDP account over orders: each compose() adds the RDP of `steps` steps of one
// subsampled Gaussian mechanism (rate and noise may change between calls, e.g. per round). The
// one-step RDP of the last (q, noise) is kept, so composing step by step with the same mechanism
// (as Opacus's accountant is driven) costs one series evaluation, not one per step.
class rdp_accountant {
 public:
  rdp_accountant() : rdp_accountant(default_orders()) {}
  explicit rdp_accountant(std::vector<double> orders)
      : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {
    if (orders_.empty()) raise<config_error>("an RDP accountant needs at least one order");
    for (double a : orders_) detail::check_order(a);
  }

  void compose(double q, double noise_multiplier, std::uint64_t steps = 1) {
    if (!(step_rdp_.size() == orders_.size() && q == last_q_ && noise_multiplier == last_noise_)) {
      step_rdp_ = subsampled_gaussian_rdp(q, noise_multiplier, 1, orders_);
      last_q_ = q;
      last_noise_ = noise_multiplier;
    }
    if (steps == 0) return;
    for (std::size_t k = 0; k < rdp_.size(); ++k) rdp_[k] += step_rdp_[k] * double(steps);
  }
  epsilon_at_order epsilon(double delta) const { return epsilon_from_rdp(orders_, rdp_, delta); }
  delta_at_order delta(double epsilon) const { return delta_from_rdp(orders_, rdp_, epsilon); }

  const std::vector<double>& orders() const noexcept { return orders_; }
  const std::vector<double>& rdp() const noexcept { return rdp_; }

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;       // one value per order, composed so far
  std::vector<double> step_rdp_;  // one step of the last mechanism composed
  double last_q_ = 0, last_noise_ = 0;
};

}  // namespace rolora::privacy
