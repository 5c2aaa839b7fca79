// Secure noise for client-level DP (docs/privacy.md, "Secure noise"): the exact discrete Gaussian
// of Canonne, Kamath, Steinke 2020 ("The Discrete Gaussian for Differential Privacy", NeurIPS,
// Algorithms 1-3, Python reference: IBM/discrete-gaussian-differential-privacy, discretegauss.py)
// drawn from the operating system's cryptographic generator through libsodium.
//
// Why not the seeded N(0, sigma^2) of random_stream: (1) whoever knows the seed regenerates the
// noise and subtracts it; (2) even with a secret seed, a floating-point Gaussian sampler (Box-
// Muller, polar, inversion) does not produce every double, and which doubles it can produce
// around x + noise depends on x: Mironov 2012 ("On significance of the least significant bits for
// differential privacy", CCS; the Laplace case) and Jin et al. 2022 (the Gaussian) read x back
// from the low bits of the release. Here the sampler is integer arithmetic throughout (sigma^2 an
// exact rational, Bernoulli(exp(-gamma)) by CKS's alternating-series trick), and the mechanism
// releases granularity * (integer + integer noise): nothing float-random is left to attack.
//
// Only usable where libsodium is linked (CMake target rolora::secagg, which defines
// ROLORA_HAVE_SECAGG=1); client_dp.hpp includes it only then and refuses noise_source::secure
// otherwise. It needs unsigned __int128 (GCC and Clang on 64-bit targets).
#pragma once
#include <sodium.h>

#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <rolora/core/error.hpp>
#include <string>

#if !defined(__SIZEOF_INT128__)
#error "rolora/privacy/secure_noise.hpp needs unsigned __int128 (GCC or Clang on a 64-bit target)"
#endif

namespace rolora::privacy {

__extension__ typedef unsigned __int128 uint128;  // __extension__: no -Wpedantic warning

// A source of uniform random integers, as the samplers below use it.
//   below(n)  uniform in [0, n), n >= 1, for n of 64 and of 128 bits
//   bit()     a fair bit
template <class S>
concept uniform_source = requires(S& s, std::uint64_t n64, uint128 n128) {
  { s.below(n64) } -> std::same_as<std::uint64_t>;
  { s.below(n128) } -> std::same_as<uint128>;
  { s.bit() } -> std::same_as<bool>;
};

namespace detail {

inline std::string to_string(uint128 v) {
  if (v == 0) return "0";
  std::string s;
  while (v > 0) {
    s.insert(s.begin(), char('0' + int(v % 10)));
    v /= 10;
  }
  return s;
}

// sodium_init() once per process (thread-safe, idempotent).
inline void ensure_sodium_for_noise() {
  static const int status = sodium_init();  // 0: initialised now, 1: already, -1: failed
  if (status < 0) {
    rolora::detail::raise<config_error>("secure noise: sodium_init() failed (returned ", status,
                                        "); the system's randomness cannot be used");
  }
}

// a * b, or false when it does not fit in 128 bits.
inline bool mul_fits(uint128 a, uint128 b, uint128& out) {
  if (a != 0 && b > std::numeric_limits<uint128>::max() / a) return false;
  out = a * b;
  return true;
}

// floor(sqrt(v)): the double's root corrected by whole steps (x < 2^33, so x^2 fits).
inline uint128 isqrt(std::uint64_t v) {
  uint128 x = uint128(std::sqrt(double(v)));
  while (x * x > v) --x;
  while ((x + 1) * (x + 1) <= v) ++x;
  return x;
}

// A 256-bit unsigned value as (hi, lo), for the acceptance test's (|Y| d t - n)^2 when it does not
// fit in 128 bits (|Y| thousands of sigmas out: never in practice, handled exactly all the same).
struct uint256 {
  uint128 hi = 0, lo = 0;
};
inline uint256 mul_wide(uint128 a, uint128 b) {
  const uint128 mask = (uint128(1) << 64) - 1;
  const uint128 a0 = a & mask, a1 = a >> 64, b0 = b & mask, b1 = b >> 64;
  const uint128 p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const uint128 mid = (p00 >> 64) + (p01 & mask) + (p10 & mask);
  uint256 r;
  r.lo = (p00 & mask) | (mid << 64);
  r.hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
  return r;
}

}  // namespace detail

// The operating system's cryptographic generator, through libsodium's randombytes_buf (keyed from
// getrandom(2) / the OS; never from a user's seed). Debian's libsodium uses its "sysrandom"
// implementation, a getrandom(2) call per request (about 126 MB/s here), so bytes are drawn 4096
// at a time and spent bit by bit: a uniform integer below n takes only the bit length of n - 1
// (rejection, no modulo bias: under 2 tries on average), and Bernoulli(num / den) two bits on
// average (bernoulli below). The buffer is wiped on destruction. randombytes_uniform is not used:
// its bound is 32 bits, and the samplers need up to 128. Not copyable (a copy would replay the
// buffered bytes); not thread-safe (one per thread).
class system_random {
 public:
  system_random() { detail::ensure_sodium_for_noise(); }
  ~system_random() {
    sodium_memzero(buffer_.data(), buffer_.size());
    sodium_memzero(&pool_, sizeof pool_);
  }
  system_random(const system_random&) = delete;
  system_random& operator=(const system_random&) = delete;

  std::uint64_t next64() {
    if (used_ + 8 > buffer_.size()) {
      randombytes_buf(buffer_.data(), buffer_.size());
      used_ = 0;
    }
    std::uint64_t v = 0;
    std::memcpy(&v, buffer_.data() + used_, 8);  // any byte order: the bytes are uniform
    used_ += 8;
    return v;
  }
  // k uniform bits, 0 <= k <= 64, as the low bits of the result.
  std::uint64_t bits(int k) {
    if (k == 0) return 0;
    if (k <= pool_bits_) {
      const std::uint64_t v = k == 64 ? pool_ : pool_ & ((std::uint64_t(1) << k) - 1);
      pool_ = k == 64 ? 0 : pool_ >> k;
      pool_bits_ -= k;
      return v;
    }
    const int have = pool_bits_;  // the pool's bits, then the rest from a fresh word
    const std::uint64_t low = pool_;
    pool_ = next64();
    pool_bits_ = 64;
    return low | (bits(k - have) << have);
  }
  bool bit() { return bits(1) != 0; }
  std::uint64_t below(std::uint64_t n) {
    if (n == 0) rolora::detail::raise<config_error>("system_random::below: n must be >= 1, got 0");
    if (n == 1) return 0;
    const int k = 64 - __builtin_clzll(n - 1);  // the bit length of n - 1
    for (;;) {
      const std::uint64_t v = bits(k);
      if (v < n) return v;
    }
  }
  uint128 below(uint128 n) {
    if (n == 0) rolora::detail::raise<config_error>("system_random::below: n must be >= 1, got 0");
    if ((n >> 64) == 0) return below(std::uint64_t(n));
    const int k = 64 - __builtin_clzll(std::uint64_t((n - 1) >> 64));  // bits above the low 64
    for (;;) {
      const uint128 v = (uint128(bits(k)) << 64) | bits(64);
      if (v < n) return v;
    }
  }

 private:
  std::array<unsigned char, 4096> buffer_{};
  std::size_t used_ = 4096;  // empty: the first draw fills it
  std::uint64_t pool_ = 0;   // unspent random bits, the low pool_bits_ of them
  int pool_bits_ = 0;
};

// ----- Exact Bernoulli samplers (CKS 2020, Algorithm 1) -----

// Bernoulli(num / den), 0 <= num <= den, den >= 1: compare a uniform U = 0.b1 b2 ... in [0, 1),
// drawn bit by bit, with the binary expansion of p = num / den, and stop at the first bit where
// they differ (U < p: true). Exact, and 2 bits on average whatever den is (drawing U below den
// would take its whole bit length, the cost that dominates with the OS's randomness).
template <uniform_source S>
bool bernoulli(S& src, uint128 num, uint128 den) {
  if (num >= den) return true;
  uint128 r = num;  // p's remaining fraction, r / den in [0, 1)
  while (r != 0) {
    // The next binary digit of r / den: 2r >= den, written without overflowing 2r.
    const bool digit = r >= den - r;
    r = digit ? r - (den - r) : r + r;
    const bool b = src.bit();
    if (b != digit) return digit;  // b < digit: U < p; b > digit: U > p
  }
  return false;  // p's expansion ended and U matched it so far: U >= p (U = p has probability 0)
}

// Bernoulli(p) for a double p, exactly: p = (m / 2^53) 2^e with m < 2^53 an integer and e <= 0,
// so Bernoulli(p) = (-e fair bits all 0) AND Bernoulli(m / 2^53). p <= 0 (or NaN): false; p >= 1:
// true. For Poisson client sampling at the very rate the accountant is given.
template <uniform_source S>
bool bernoulli_of(S& src, double p) {
  if (!(p > 0.0)) return false;
  if (p >= 1.0) return true;
  int e = 0;
  const double f = std::frexp(p, &e);  // p = f 2^e, f in [0.5, 1), e <= 0
  for (int i = 0; i < -e; ++i)
    if (src.bit()) return false;
  return bernoulli(src, uint128(std::ldexp(f, 53)), uint128(1) << 53);
}

namespace detail {

// Bernoulli(exp(-num/den)) for 0 <= num/den <= 1: with K the first k >= 1 at which
// Bernoulli(gamma / k) fails, P(K odd) = sum_j (-1)^j gamma^j / j! = exp(-gamma). Bernoulli(gamma
// / k) is drawn as Bernoulli(gamma) AND Bernoulli(1 / k), so den * k never has to fit anywhere.
template <uniform_source S>
bool bernoulli_exp_neg_le1(S& src, uint128 num, uint128 den) {
  std::uint64_t k = 1;
  while (bernoulli(src, num, den) && src.below(k) == 0) ++k;
  return (k & 1u) != 0;
}

// exp(-1)^count: `count` independent Bernoulli(exp(-1)) all true (stops at the first false).
template <uniform_source S>
bool bernoulli_exp_neg_whole(S& src, uint256 count) {
  while (count.hi != 0 || count.lo != 0) {
    if (!bernoulli_exp_neg_le1(src, 1, 1)) return false;
    if (count.lo == 0) --count.hi;
    --count.lo;
  }
  return true;
}

}  // namespace detail

// Bernoulli(exp(-num/den)) for any num >= 0, den >= 1: exp(-gamma) = exp(-1)^floor(gamma)
// exp(-(gamma - floor(gamma))) (CKS Algorithm 1, second branch).
template <uniform_source S>
bool bernoulli_exp_neg(S& src, uint128 num, uint128 den) {
  if (den == 0) rolora::detail::raise<config_error>("bernoulli_exp_neg: den must be >= 1, got 0");
  if (num <= den) return detail::bernoulli_exp_neg_le1(src, num, den);  // no 128-bit division
  if (!detail::bernoulli_exp_neg_whole(src, {0, num / den})) return false;
  return detail::bernoulli_exp_neg_le1(src, num % den, den);
}

namespace detail {

// Bernoulli(exp(-N/den)) with a 256-bit N = (hi, lo) and den < 2^127: long division, one bit at a
// time (the rare path: only for |Y| far in the tail).
template <uniform_source S>
bool bernoulli_exp_neg_wide(S& src, uint256 num, uint128 den) {
  uint256 q;
  uint128 r = 0;  // < den < 2^127, so 2 r + 1 fits
  for (int i = 255; i >= 0; --i) {
    const uint128 word = i >= 128 ? num.hi : num.lo;
    const int bit = i % 128;
    r = (r << 1) | ((word >> bit) & 1u);
    const bool one = r >= den;
    if (one) r -= den;
    if (one) (i >= 128 ? q.hi : q.lo) |= uint128(1) << bit;
  }
  if (!bernoulli_exp_neg_whole(src, q)) return false;
  return bernoulli_exp_neg_le1(src, r, den);
}

}  // namespace detail

// ----- sigma^2 as an exact rational -----

// num / den, both >= 1.
struct exact_rational {
  std::uint64_t num = 1;
  std::uint64_t den = 1;
};

// A dyadic rational n / 2^k >= x with n < 2^62 and k <= 62, in lowest terms: exactly x for every
// double x >= 2^-9 (its last bit is then at or above 2^-62), else x rounded up, so that a sigma^2
// computed in floating point is never made smaller.
// config_error for x not finite, x <= 0, or x >= 2^62 (no such rational).
inline exact_rational rational_at_least(double x, const char* what = "sigma^2") {
  if (!(std::isfinite(x) && x > 0.0)) {
    rolora::detail::raise<config_error>("secure noise: ", what, " must be finite and > 0, got ", x);
  }
  if (!(x < 0x1p62)) {
    rolora::detail::raise<config_error>("secure noise: ", what, " must be < 2^62, got ", x,
                                        " (use a coarser granularity)");
  }
  int e = 0;
  const double m = std::frexp(x, &e);                  // x = m 2^e, m in [0.5, 1)
  std::uint64_t n = std::uint64_t(std::ldexp(m, 53));  // x = n 2^(e - 53), n < 2^53 exactly
  int k = 53 - e;                                      // x = n / 2^k
  if (k < 0) {  // x >= 2^53: an integer, n 2^-k < 2^62 exactly
    return {n << (-k), 1};
  }
  while (k > 62) {  // den too large: drop low bits of n, rounding up
    const bool lost = (n & 1u) != 0;
    n = (n >> 1) + (lost ? 1 : 0);
    --k;
  }
  if (n == 0) n = 1;
  while (k > 0 && (n & 1u) == 0) {  // lowest terms
    n >>= 1;
    --k;
  }
  return {n, std::uint64_t(1) << k};
}

// ----- The discrete Laplace and the discrete Gaussian (CKS 2020, Algorithms 2 and 3) -----

// The discrete Laplace with scale t: P(Y = y) proportional to exp(-|y| / t), t >= 1 (CKS
// Algorithm 2 with s = 1). Y = U + t V with U uniform in [0, t) kept with probability exp(-U/t)
// and V geometric (Bernoulli(exp(-1)) successes), a random sign, and -0 rejected.
// config_error if a sample does not fit in 63 bits (probability below exp(-2^23) for t < 2^40).
template <uniform_source S>
std::int64_t discrete_laplace(S& src, std::uint64_t t) {
  if (t == 0) rolora::detail::raise<config_error>("discrete_laplace: t must be >= 1, got 0");
  for (;;) {
    const std::uint64_t u = src.below(t);
    if (!bernoulli_exp_neg(src, u, t)) continue;
    std::uint64_t v = 0;
    while (detail::bernoulli_exp_neg_le1(src, 1, 1)) ++v;
    uint128 x = 0;
    if (!detail::mul_fits(t, v, x) || (x += u) >= (uint128(1) << 63)) {
      rolora::detail::raise<config_error>("discrete_laplace: a sample of scale ", t,
                                          " does not fit in 63 bits (t V = ", t, " * ", v, ")");
    }
    const bool negative = src.bit();
    if (negative && x == 0) continue;
    return negative ? -std::int64_t(x) : std::int64_t(x);
  }
}

// The discrete Gaussian N_Z(0, sigma^2): P(Y = y) = exp(-y^2 / (2 sigma^2)) / sum_z exp(-z^2 /
// (2 sigma^2)) over the integers, sigma^2 = num / den exactly (CKS 2020, Algorithm 3): draw Y from
// the discrete Laplace with t = floor(sigma) + 1 and keep it with probability
//   exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2)) = exp(-(|Y| d t - n)^2 / (2 n d t^2)),
// all in integers. The construction checks that 2 n d t^2 < 2^127 and d t < 2^64 (so that every
// product below fits) and refuses otherwise, naming sigma^2. The expected number of Laplace draws
// per sample is a constant independent of sigma (CKS 2020); measured here: 107 random bits per
// sample at sigma 2^20, 19 at sigma 1.5 (docs/privacy.md, "Secure noise").
class discrete_gaussian {
 public:
  explicit discrete_gaussian(exact_rational sigma2) : n_(sigma2.num), d_(sigma2.den) {
    if (n_ == 0 || d_ == 0) {
      rolora::detail::raise<config_error>("discrete_gaussian: sigma^2 = ", n_, "/", d_,
                                          " must be > 0 with a denominator >= 1");
    }
    t_ = detail::isqrt(n_ / d_) + 1;  // floor(sqrt(n/d)) = isqrt(floor(n/d))
    uint128 dt = 0, b = 0;
    const bool ok = detail::mul_fits(d_, t_, dt) && (dt >> 64) == 0 &&
                    detail::mul_fits(2 * uint128(n_), uint128(d_), b) &&
                    detail::mul_fits(b, t_ * t_, b) && (b >> 127) == 0;
    if (!ok) {
      rolora::detail::raise<config_error>(
          "discrete_gaussian: sigma^2 = ", n_, "/", d_,
          " is too large for exact 128-bit arithmetic (needs 2 n d t^2 < 2^127 with t = "
          "floor(sigma) + 1 = ",
          detail::to_string(t_), "); use a coarser granularity or a smaller denominator");
    }
    dt_ = dt;
    b_ = b;
  }
  // From a floating-point sigma^2, rounded up to an exact rational (rational_at_least).
  static discrete_gaussian with_variance(double sigma2) {
    return discrete_gaussian(rational_at_least(sigma2));
  }

  exact_rational variance() const { return {n_, d_}; }
  std::uint64_t laplace_scale() const { return std::uint64_t(t_); }

  template <uniform_source S>
  std::int64_t operator()(S& src) const {
    for (;;) {
      const std::int64_t y = discrete_laplace(src, std::uint64_t(t_));
      const uint128 ay = y < 0 ? uint128(-(y + 1)) + 1 : uint128(y);
      const uint128 ydt = ay * dt_;  // |Y| < 2^63 and d t < 2^64
      const uint128 diff = ydt >= n_ ? ydt - n_ : n_ - ydt;
      const bool keep = (diff >> 64) == 0
                            ? bernoulli_exp_neg(src, diff * diff, b_)
                            : detail::bernoulli_exp_neg_wide(src, detail::mul_wide(diff, diff), b_);
      if (keep) return y;
    }
  }

 private:
  std::uint64_t n_, d_;
  uint128 t_ = 0, dt_ = 0, b_ = 0;  // t, d t, 2 n d t^2
};

// ----- The mechanism: noise on a grid (docs/privacy.md, "Secure noise") -----
//
// The server puts each client's change on the grid gamma Z^d BEFORE summing: n_i = round((X_i -
// G) / gamma) coordinate-wise, an integer vector; sums the integers exactly; adds k ~ N_Z(0,
// sigma_g^2) per coordinate; releases gamma (sum_i n_i + k), then divides by qN and adds G
// (post-processing of an integer vector: no float randomness left to attack).
//
// Sensitivity in grid units. ||X_i - G|| <= C, and rounding moves each coordinate by at most 1/2
// (plus the division's own rounding, under 2^-30 of a unit here), so
//     ||n_i||_2 <= C / gamma + sqrt(d) (1/2 + 2^-30) = Delta_g.
// Adding or removing client i changes the integer sum by exactly n_i, so Delta_g is the L2
// sensitivity. Rounding the SUM instead (after summing the floats) is not better: round(S + x) -
// round(S) differs from x by up to 1 per coordinate (two half-units that need not cancel), a
// sensitivity of C / gamma + sqrt(d). The discrete Gaussian on an integer-valued query of L2
// sensitivity Delta_g with sigma_g = z' Delta_g has the continuous Gaussian's Renyi divergence
// bound alpha / (2 z'^2) (CKS 2020, §2, the multivariate discrete Gaussian with independent
// coordinates: (1/2) (Delta/sigma)^2-concentrated DP); so
// sigma_g = z' Delta_g keeps the accountant's multiplier. In units of the update:
//     sigma = z' (C + sqrt(d) gamma (1/2 + 2^-30)),
// slightly above z' C: with gamma = 2^-20 C and d = 10^5 coordinates, by 1.5e-4 relative.
struct grid_noise {
  double granularity = 0.0;                // gamma, in units of the update
  double sensitivity = 0.0;                // Delta_g, in grid units
  std::optional<discrete_gaussian> noise;  // N_Z(0, (z' Delta_g)^2); none when z' = 0

  // For a change of L2 norm <= clip_norm over `coordinates` values, gamma = relative_granularity C.
  // config_error when sigma_g^2 cannot be sampled exactly (too fine a grid for the noise).
  static grid_noise for_update(double clip_norm, double noise_multiplier, std::size_t coordinates,
                               double relative_granularity) {
    if (!(relative_granularity > 0.0 && relative_granularity <= 1.0)) {
      rolora::detail::raise<config_error>(
          "secure noise: the relative granularity gamma / C must be in (0, 1], got ",
          relative_granularity);
    }
    grid_noise g;
    g.granularity = relative_granularity * clip_norm;
    g.sensitivity = 1.0 / relative_granularity + std::sqrt(double(coordinates)) * (0.5 + 0x1p-30);
    if (noise_multiplier > 0.0) {
      const double s = noise_multiplier * g.sensitivity;
      // Rounded up: (s * s) is within 2^-52 of the true square, far below the 2^-40 added.
      g.noise = discrete_gaussian(rational_at_least(s * s * (1.0 + 0x1p-40), "sigma_g^2"));
    }
    return g;
  }

  // round(v / gamma): value_error when v is not finite or too far out for the grid (|v / gamma|
  // >= 2^52: impossible for a clipped change, whose coordinates are at most C = 2^20 gamma).
  std::int64_t to_grid(double v) const {
    const double q = v / granularity;
    if (!(std::fabs(q) < 0x1p52)) {
      rolora::detail::raise<value_error>("secure noise: an update coordinate ", v,
                                         " is not finite or is beyond the grid of step ",
                                         granularity, " (|v / gamma| must be < 2^52)");
    }
    return std::llround(q);
  }
};

}  // namespace rolora::privacy
