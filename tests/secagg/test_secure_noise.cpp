// privacy/secure_noise.hpp and client DP's secure noise (noise_source::secure): the exact
// Bernoulli(exp(-gamma)) and discrete Gaussian of Canonne, Kamath, Steinke 2020 drawn from
// libsodium's system randomness, checked against their exact distributions (chi-square on the
// pmf, moments, and a pmf a rounded continuous Gaussian would fail); the refusals of what cannot
// be sampled exactly; and the mechanism: not reproducible where seeded noise is bit for bit, its
// release on the grid gamma Z^d, its spread, the clip bits' integer noise, the clients of a round
// drawn in secret, and the checkpoint's record of the noise source. Links libsodium
// (rolora::secagg), like every test that needs ROLORA_HAVE_SECAGG.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/policy/policies.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <rolora/privacy/secure_noise.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "../test_support.hpp"

#if !defined(ROLORA_HAVE_SECAGG)
#error "test_secure_noise.cpp is built with libsodium (rolora::secagg defines ROLORA_HAVE_SECAGG)"
#endif

using namespace rolora;
using namespace rolora::privacy;

namespace {

constexpr int samples = 100000;

// The exact pmf of N_Z(0, sigma2) on [-span, span] (the mass beyond is below 1e-300 for the spans
// used), from its definition exp(-x^2 / (2 sigma^2)) / sum_z exp(-z^2 / (2 sigma^2)).
std::vector<double> exact_pmf(double sigma2, int span) {
  std::vector<double> p(std::size_t(2 * span + 1));
  double z = 0.0;
  for (int x = -span; x <= span; ++x) z += std::exp(-double(x) * x / (2.0 * sigma2));
  for (int x = -span; x <= span; ++x)
    p[std::size_t(x + span)] = std::exp(-double(x) * x / (2.0 * sigma2)) / z;
  return p;
}

// The chi-square statistic's 1 - 1e-6 quantile for `df` degrees of freedom (Wilson-Hilferty; 4.753
// is the standard normal's 1 - 1e-6 quantile): a correct sampler fails it once in a million runs.
double chi2_threshold(int df) {
  const double k = df, a = 2.0 / (9.0 * k);
  return k * std::pow(1.0 - a + 4.753 * std::sqrt(a), 3.0);
}

// Draws `samples` values of N_Z(0, sigma2) and tests them against the exact pmf: bins [lo + w j,
// lo + w (j + 1)) between lo and hi, each tail beyond one more bin; chi-square below the 1e-6
// threshold; mean and variance within 5 standard errors of the exact moments.
void check_discrete_gaussian(exact_rational sigma2, int lo, int hi, int width, int span) {
  const double s2 = double(sigma2.num) / double(sigma2.den);
  const auto pmf = exact_pmf(s2, span);
  const int bins = (hi - lo) / width + 2;  // the two tails included
  const auto bin_of = [&](std::int64_t x) {
    if (x < lo) return 0;
    if (x >= hi) return bins - 1;
    return 1 + int((x - lo) / width);
  };
  std::vector<double> expected(std::size_t(bins), 0.0);
  double var = 0.0, fourth = 0.0;
  for (int x = -span; x <= span; ++x) {
    const double p = pmf[std::size_t(x + span)];
    expected[std::size_t(bin_of(x))] += p * samples;
    var += p * double(x) * x;
    fourth += p * std::pow(double(x), 4);
  }
  system_random source;
  const discrete_gaussian dg(sigma2);
  std::vector<double> observed(std::size_t(bins), 0.0);
  double sum = 0.0, sq = 0.0;
  for (int i = 0; i < samples; ++i) {
    const std::int64_t x = dg(source);
    observed[std::size_t(bin_of(x))] += 1.0;
    sum += double(x);
    sq += double(x) * double(x);
  }
  double chi2 = 0.0;
  for (int b = 0; b < bins; ++b) {
    REQUIRE(expected[std::size_t(b)] >= 5.0);  // the test's own validity
    const double d = observed[std::size_t(b)] - expected[std::size_t(b)];
    chi2 += d * d / expected[std::size_t(b)];
  }
  CAPTURE(s2);
  CAPTURE(chi2);
  CHECK(chi2 < chi2_threshold(bins - 1));
  const double mean = sum / samples, sample_var = sq / samples - mean * mean;
  CAPTURE(mean);
  CAPTURE(sample_var);
  CAPTURE(var);
  CHECK(std::fabs(mean) < 5.0 * std::sqrt(var / samples));
  CHECK(std::fabs(sample_var - var) < 5.0 * std::sqrt((fourth - var * var) / samples));
}

using dp_backend = eigen_backend<double>;
using dset = adapter_set<dp_backend>;

dset zeros_set(index_t rows_a, index_t cols_a, index_t rows_b) {
  dset s;
  s.insert("m", {host_matrix<double>::Zero(rows_a, cols_a),
                 host_matrix<double>::Zero(rows_b, rows_a), 1.0});
  s.add_module_to_save("head", host_matrix<double>::Zero(3, 4));
  return s;
}

std::vector<double> flattened(const dset& s) {
  std::vector<double> v;
  const auto& m = s.at("m");
  for (const auto* x : {&m.A, &m.B, &s.modules_to_save().at("head")})
    for (index_t i = 0; i < x->size(); ++i) v.push_back(x->data()[i]);
  return v;
}

// A small linear-regression federation for the server's wiring (as in tests/test_privacy.cpp).
theory::linear_problem<dp_backend> small_problem() {
  theory::linear_problem_config c;
  c.dim = 8;
  c.out_dim = 6;
  c.rank = 2;
  c.clients = 4;
  c.samples = 40;
  c.noise = 0.01;
  c.seed = 11;
  return theory::make_linear_problem<dp_backend>(c);
}

dset linear_start() {
  lora_config c;
  c.r = 2;
  c.lora_alpha = 2;
  return dset({{theory::module_name, 6, 8}}, c, 5);
}

federation_config two_rounds() {
  federation_config c;
  c.num_rounds = 2;
  c.local_steps = 2;
  c.local_optimizer = sgd{0.1, 0.0, 0.0};
  c.client_weighting = weighting::uniform;
  c.seed = 21;
  return c;
}

}  // namespace

TEST_CASE("secure noise: Bernoulli(exp(-gamma)) has its exact frequency at gamma 1/3 and 7/3") {
  system_random source;
  for (const auto& [num, den] : {std::pair<int, int>{1, 3}, {7, 3}, {0, 5}}) {
    int ones = 0;
    for (int i = 0; i < samples; ++i) ones += bernoulli_exp_neg(source, num, den) ? 1 : 0;
    const double p = std::exp(-double(num) / den), f = double(ones) / samples;
    CAPTURE(num);
    CAPTURE(den);
    CAPTURE(f);
    if (num == 0) {
      CHECK(ones == samples);  // exp(0) = 1 exactly
    } else {
      CHECK(std::fabs(f - p) < 5.0 * std::sqrt(p * (1 - p) / samples));
    }
  }
  // Bernoulli(num / den) itself, and a fair bit.
  int ones = 0, bits = 0;
  for (int i = 0; i < samples; ++i) {
    ones += bernoulli(source, 2, 7) ? 1 : 0;
    bits += source.bit() ? 1 : 0;
  }
  CHECK(std::fabs(ones / double(samples) - 2.0 / 7) < 5.0 * std::sqrt(2.0 / 7 * 5 / 7 / samples));
  CHECK(std::fabs(bits / double(samples) - 0.5) < 5.0 * std::sqrt(0.25 / samples));
}

TEST_CASE("secure noise: uniform integers below n are uniform, for 64- and 128-bit n") {
  system_random source;
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 60000; ++i) ++counts[std::size_t(source.below(std::uint64_t(6)))];
  double chi2 = 0.0;
  for (int c : counts) chi2 += (c - 10000.0) * (c - 10000.0) / 10000.0;
  CHECK(chi2 < chi2_threshold(5));
  // 3 * 2^100: the top third of the range must come up a third of the time, and never beyond n.
  const uint128 n = uint128(3) << 100, third = uint128(1) << 101;
  int top = 0;
  for (int i = 0; i < 30000; ++i) {
    const uint128 v = source.below(n);
    REQUIRE(v < n);
    top += v >= third ? 1 : 0;
  }
  CHECK(std::fabs(top / 30000.0 - 1.0 / 3) < 5.0 * std::sqrt(2.0 / 9 / 30000));
}

TEST_CASE("secure noise: the discrete Gaussian at sigma 1.5 matches the exact pmf") {
  check_discrete_gaussian({9, 4}, -5, 6, 1, 60);  // bins -5 .. 5 and the two tails
}

TEST_CASE("secure noise: the discrete Gaussian at sigma 100 matches the exact pmf") {
  check_discrete_gaussian({10000, 1}, -300, 300, 10, 3000);  // 60 bins of width 10, 2 tails
}

TEST_CASE("secure noise: the discrete Gaussian at sigma 0.5 is not a rounded continuous Gaussian") {
  // At sigma 0.5 the two differ visibly: N_Z(0, 1/4) puts 1 / (1 + 2 e^-2 + 2 e^-8 + ...) = 0.786
  // at 0, round(N(0, 1/4)) puts P(|N(0, 1)| < 1) = 0.683 there.
  const auto pmf = exact_pmf(0.25, 20);
  const double discrete0 = pmf[20], rounded0 = std::erf(1.0 / std::sqrt(2.0));
  const double se = std::sqrt(discrete0 * (1 - discrete0) / samples);
  REQUIRE(std::fabs(discrete0 - rounded0) > 50.0 * se);  // the test can tell them apart
  system_random source;
  const discrete_gaussian dg({1, 4});
  int zeros = 0;
  for (int i = 0; i < samples; ++i) zeros += dg(source) == 0 ? 1 : 0;
  const double f = double(zeros) / samples;
  CAPTURE(f);
  CHECK(std::fabs(f - discrete0) < 5.0 * se);
  CHECK(std::fabs(f - rounded0) > 20.0 * se);
  // Check check_discrete_gaussian's own power: the full pmf at sigma 0.5 as well.
  check_discrete_gaussian({1, 4}, -1, 2, 1, 20);
}

TEST_CASE("secure noise: sigma^2 becomes an exact rational, never smaller") {
  const auto r = rational_at_least(2.25);
  CHECK(r.num == 9);
  CHECK(r.den == 4);
  const auto big = rational_at_least(0x1p40 * 1.5);  // an integer: denominator 1
  CHECK(big.num == (std::uint64_t(3) << 39));
  CHECK(big.den == 1);
  for (double x : {0.1, 1.0 / 3.0, 1e-30, 12345.678, 0x1p-70}) {
    const auto q = rational_at_least(x);
    CAPTURE(x);
    CHECK(q.num >= 1);
    // n / d >= x, compared exactly: n >= x d, both sides exact in long double for these values.
    CHECK((long double)q.num >= (long double)x * (long double)q.den);
    if (x >= 0x1p-9) CHECK((long double)q.num == (long double)x * (long double)q.den);  // exact
  }
}

TEST_CASE("secure noise: what cannot be sampled exactly is refused, naming the value") {
  for (double bad : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity(), 0x1p62}) {
    const auto why = test::message_of<config_error>([&] { (void)rational_at_least(bad); });
    CAPTURE(bad);
    CHECK(why.find("sigma^2") != std::string::npos);
    CHECK(why.find(bad == 0x1p62 ? "< 2^62" : "finite and > 0") != std::string::npos);
  }
  CHECK(test::message_of<config_error>([] {
          discrete_gaussian({0, 1});
        }).find("sigma^2 = 0/1 must be > 0") != std::string::npos);
  CHECK(test::message_of<config_error>([] {
          discrete_gaussian({1, 0});
        }).find("a denominator >= 1") != std::string::npos);
  // 2 n d t^2 >= 2^127: the acceptance test would overflow 128 bits.
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  const auto why = test::message_of<config_error>([&] { discrete_gaussian({huge, 1}); });
  CHECK(why.find("sigma^2 = 18446744073709551615/1 is too large") != std::string::npos);
  // d t >= 2^64: sigma^2 = 1 written with a 64-bit denominator.
  CHECK(test::message_of<config_error>([&] {
          discrete_gaussian({huge, huge});
        }).find("too large for exact 128-bit arithmetic") != std::string::npos);
  CHECK_NOTHROW(discrete_gaussian({1, std::uint64_t(1) << 62}));  // tiny sigma: fine
  // The mechanism: a grid too fine for the noise, and a granularity outside (0, 1].
  CHECK(test::message_of<config_error>([] {
          grid_noise::for_update(1.0, 1e4, 100, 0x1p-40);
        }).find("sigma_g^2 must be < 2^62") != std::string::npos);
  CHECK(test::message_of<config_error>([] {
          grid_noise::for_update(1.0, 1.0, 100, 0.0);
        }).find("relative granularity gamma / C must be in (0, 1], got 0") != std::string::npos);
  const auto grid = grid_noise::for_update(1.0, 1.0, 100, 0x1p-20);
  CHECK(test::message_of<value_error>([&] {
          (void)grid.to_grid(std::nan(""));
        }).find("not finite or is beyond the grid") != std::string::npos);
  client_dp dp;
  dp.noise = noise_source::secure;
  CHECK_NOTHROW(dp.check());
  dp.relative_granularity = 2.0;
  CHECK(test::message_of<config_error>([&] {
          dp.check();
        }).find("relative granularity must be in (0, 1], got 2") != std::string::npos);
}

TEST_CASE("secure noise: noised_mean differs run to run where seeded noise repeats bit for bit") {
  const dset global = zeros_set(4, 5, 6);
  const auto none = std::span<const client_update<dp_backend>>();
  noised_round seeded{2.0, 1.5, 5.0, 7, 3};
  CHECK(test::bit_equal(noised_mean(global, none, both_factors, seeded).adapters,
                        noised_mean(global, none, both_factors, seeded).adapters));
  noised_round secure = seeded;
  secure.source = noise_source::secure;
  const auto a = noised_mean(global, none, both_factors, secure);
  const auto b = noised_mean(global, none, both_factors, secure);
  CHECK_FALSE(test::bit_equal(a.adapters, b.adapters));
  // Not the seeded bits either: the seed plays no part in secure noise.
  CHECK_FALSE(
      test::bit_equal(a.adapters, noised_mean(global, none, both_factors, seeded).adapters));
}

TEST_CASE("secure noise: the release is the rounded sum plus an integer multiple of gamma") {
  // G = 0 and qN = 1, so U = gamma (sum_i round(x_i / gamma) + k) exactly (gamma = C 2^-20 and
  // the integers < 2^53: no rounding in double). Each released coordinate minus the rounded sum
  // must be an integer multiple of gamma; a float Gaussian would almost never be.
  const dset global = zeros_set(4, 5, 6);
  std::vector<client_update<dp_backend>> ups(3);
  for (std::size_t i = 0; i < ups.size(); ++i) {
    ups[i].client = i;
    ups[i].num_samples = 1.0;
    ups[i].adapters = global;
    auto& m = ups[i].adapters.at("m");
    m.A = test::random_matrix(4, 5, std::uint32_t(10 + i), 0.1);
    m.B = test::random_matrix(6, 4, std::uint32_t(20 + i), 0.1);
    ups[i].adapters.modules_to_save().at("head") =
        test::random_matrix(3, 4, std::uint32_t(30 + i), 0.1);
  }
  const double c = 3.0, gamma = c * 0x1p-20;
  noised_round r{c, 1.0, 1.0, 0, 0, noise_source::secure, 0x1p-20};
  const auto mean =
      noised_mean(global, std::span<const client_update<dp_backend>>(ups), both_factors, r);
  const auto released = flattened(mean.adapters);
  std::vector<double> rounded(released.size(), 0.0);
  for (const auto& u : ups) {
    const auto x = flattened(u.adapters);
    for (std::size_t i = 0; i < x.size(); ++i) rounded[i] += std::round(x[i] / gamma);
  }
  int nonzero = 0;
  for (std::size_t i = 0; i < released.size(); ++i) {
    const double k = released[i] / gamma - rounded[i];
    CAPTURE(i);
    CAPTURE(k);
    CHECK(k == std::round(k));
    nonzero += k != 0.0 ? 1 : 0;
  }
  CHECK(nonzero > int(released.size()) / 2);  // noise of about 2^20 units is there
  // Without noise (z = 0) the release is exactly the rounded sum.
  r.update_noise_multiplier = 0.0;
  const auto plain = flattened(
      noised_mean(global, std::span<const client_update<dp_backend>>(ups), both_factors, r)
          .adapters);
  for (std::size_t i = 0; i < plain.size(); ++i) CHECK(plain[i] == gamma * rounded[i]);
}

TEST_CASE("secure noise: the noise has mean 0 and standard deviation z' (C + sqrt(d) gamma / 2)") {
  // An empty round over d = 20,012 coordinates at z 1.5, C 2, qN 5 (the seeded test's setting).
  const dset global = zeros_set(40, 300, 200);
  const double z = 1.5, c = 2.0, expected = 5.0;
  const noised_round r{c, z, expected, 7, 3, noise_source::secure, 0x1p-20};
  const auto v = flattened(
      noised_mean(global, std::span<const client_update<dp_backend>>(), both_factors, r).adapters);
  double sum = 0, sq = 0;
  for (double x : v) sum += x, sq += x * x;
  const double n = double(v.size()), mu = sum / n, sd = std::sqrt(sq / n - mu * mu);
  const double want = z * (c + std::sqrt(n) * c * 0x1p-20 * (0.5 + 0x1p-30)) / expected;
  CAPTURE(mu);
  CAPTURE(sd);
  CHECK(want > z * c / expected);  // the rounding's share of the sensitivity is noised too
  CHECK(std::fabs(mu) < 4 * want / std::sqrt(n));
  CHECK(std::fabs(sd - want) < 4 * want / std::sqrt(2 * n));
}

TEST_CASE("secure noise: the clip bits get integer noise and the federation uses the OS's noise") {
  // Adaptive clipping's b~ = (#unclipped + k) / qN with k ~ N_Z(0, sigma_b^2): recover k from C'.
  client_dp dp{.clip_norm = 1.0, .noise_multiplier = 0.0, .sampling_rate = 1.0};
  dp.adaptive = adaptive_clipping{0.5, 0.2, 3.0};
  dp.noise = noise_source::secure;
  std::vector<client_update<dp_backend>> ups(8);
  for (std::size_t i = 0; i < ups.size(); ++i) ups[i].clipped = i % 2 == 0;  // 4 unclipped
  std::vector<double> ks;
  for (int i = 0; i < 200; ++i) {
    const double next =
        next_clip_norm(dp, 1.0, std::span<const client_update<dp_backend>>(ups), 8.0, 3.0, 21, 0);
    const double b = 0.5 - std::log(next) / 0.2, k = b * 8.0 - 4.0;
    CHECK(std::fabs(k - std::round(k)) < 1e-9);  // an integer count of noise
    ks.push_back(std::round(k));
  }
  double mean = 0, sq = 0;
  for (double k : ks) mean += k / 200, sq += k * k / 200;
  CHECK(std::fabs(mean) < 5 * 3.0 / std::sqrt(200.0));
  CHECK(sq > 4.0);  // sigma_b^2 = 9: not the noiseless count
  // The server hands the noise source to the round: two secure federations differ, two seeded
  // ones agree bit for bit.
  auto p = small_problem();
  const auto run = [&](noise_source source) {
    client_dp d{.clip_norm = 0.5, .noise_multiplier = 1.0, .sampling_rate = 1.0};
    d.noise = source;
    federation<dp_backend, train_both, fedavg, client_dp> fed(train_both{}, fedavg{}, two_rounds(),
                                                              linear_start(), d);
    fed.run(p.clients);
    return fed.global();
  };
  CHECK(test::bit_equal(run(noise_source::seeded), run(noise_source::seeded)));
  CHECK_FALSE(test::bit_equal(run(noise_source::secure), run(noise_source::secure)));
}

TEST_CASE("secure noise: a checkpoint names it, and a resume that switches the noise is refused") {
  auto p = small_problem();
  const auto path = std::filesystem::temp_directory_path() /
                    ("rolora_secure_noise_" + std::to_string(::getpid()));
  std::filesystem::remove_all(path);
  using dp_fed = federation<dp_backend, train_both, fedavg, client_dp>;
  client_dp secure{.clip_norm = 0.5, .noise_multiplier = 1.0, .sampling_rate = 1.0};
  secure.noise = noise_source::secure;
  dp_fed first(train_both{}, fedavg{}, two_rounds(), linear_start(), secure);
  first.run_round(p.clients);
  save_checkpoint(path, first.server());
  dp_fed again(train_both{}, fedavg{}, two_rounds(), linear_start(), secure);
  load_checkpoint(path, again.server());
  CHECK(again.server().privacy_state().rounds == 1);
  client_dp seeded = secure;
  seeded.noise = noise_source::seeded;
  dp_fed switched(train_both{}, fedavg{}, two_rounds(), linear_start(), seeded);
  const auto why =
      test::message_of<config_error>([&] { load_checkpoint(path, switched.server()); });
  CAPTURE(why);
  CHECK(why.find("privacy.noise") != std::string::npos);
  CHECK(switched.next_round() == 0);
  client_dp coarser = secure;
  coarser.relative_granularity = 0x1p-10;
  dp_fed regridded(train_both{}, fedavg{}, two_rounds(), linear_start(), coarser);
  CHECK(test::message_of<config_error>([&] {
          load_checkpoint(path, regridded.server());
        }).find("privacy.relative_granularity") != std::string::npos);
  std::filesystem::remove_all(path);
}

TEST_CASE("secure noise: Bernoulli of a double is exact, down to rates below 2^-9") {
  system_random source;
  for (double p : {0.3, 0.75, 1e-3, 0.0, 1.0}) {
    int ones = 0;
    for (int i = 0; i < samples; ++i) ones += bernoulli_of(source, p) ? 1 : 0;
    CAPTURE(p);
    CAPTURE(ones);
    if (p == 0.0 || p == 1.0) {
      CHECK(ones == int(p) * samples);
    } else {
      CHECK(std::fabs(ones - p * samples) < 5.0 * std::sqrt(p * (1 - p) * samples));
    }
  }
}

TEST_CASE("secure noise: the clients of a round are drawn from the system's randomness") {
  // Poisson: 40,000 clients at q = 0.25.
  client_dp dp{.clip_norm = 1.0, .noise_multiplier = 1.0, .sampling_rate = 0.25};
  dp.noise = noise_source::secure;
  const auto a = secure_sample_clients(dp, 40000, 0), b = secure_sample_clients(dp, 40000, 0);
  CHECK(std::fabs(double(a.size()) - 10000.0) < 5.0 * std::sqrt(40000 * 0.25 * 0.75));
  CHECK(std::is_sorted(a.begin(), a.end()));
  CHECK(a != b);  // secret and fresh: not a function of the seed
  // Fixed: 7 of 20, distinct, sorted, each client equally likely (chi-square over 20,000 draws).
  dp.sampling = client_sampling::fixed;
  std::vector<double> counts(20, 0.0);
  for (int i = 0; i < 20000; ++i) {
    const auto ids = secure_sample_clients(dp, 20, 7);
    REQUIRE(ids.size() == 7);
    REQUIRE(std::adjacent_find(ids.begin(), ids.end(), [](auto x, auto y) { return x >= y; }) ==
            ids.end());
    for (auto c : ids) counts[c] += 1.0;
  }
  double chi2 = 0.0;
  for (double c : counts) chi2 += (c - 7000.0) * (c - 7000.0) / 7000.0;
  CHECK(chi2 < chi2_threshold(19));
  CHECK(secure_sample_clients(dp, 20, 0).size() == 20);  // 0: everyone
  // In the federation: at q = 0.5 over 16 clients, two secure runs sample differently (the same
  // 2 rounds twice has probability 2^-32), two seeded runs the same.
  auto p = small_problem();
  for (int i = 4; i < 16; ++i) p.clients.push_back(p.clients[std::size_t(i % 4)]);
  const auto participants = [&](noise_source source) {
    client_dp d{.clip_norm = 0.5, .noise_multiplier = 1.0, .sampling_rate = 0.5};
    d.noise = source;
    federation<dp_backend, train_both, fedavg, client_dp> fed(train_both{}, fedavg{}, two_rounds(),
                                                              linear_start(), d);
    std::vector<std::vector<std::size_t>> who;
    for (const auto& report : fed.run(p.clients)) who.push_back(report.participants);
    return who;
  };
  CHECK(participants(noise_source::seeded) == participants(noise_source::seeded));
  CHECK(participants(noise_source::secure) != participants(noise_source::secure));
}

TEST_CASE("secure noise: the discrete Laplace and the 256-bit acceptance path are exact too") {
  system_random source;
  // discrete_laplace(t = 3): P(y) = (1 - e^(-1/3)) / (1 + e^(-1/3)) e^(-|y|/3); bins -10..10 and
  // the two tails, chi-square below its 1 - 1e-6 quantile.
  const double r = std::exp(-1.0 / 3.0), norm = (1 - r) / (1 + r);
  std::vector<double> expected(23, 0.0), observed(23, 0.0);
  const auto bin = [](std::int64_t y) { return y < -10 ? 0 : y > 10 ? 22 : int(y + 11); };
  for (int y = -200; y <= 200; ++y)
    expected[std::size_t(bin(y))] += norm * std::pow(r, std::abs(y)) * samples;
  for (int i = 0; i < samples; ++i) observed[std::size_t(bin(discrete_laplace(source, 3)))] += 1;
  double chi2 = 0.0;
  for (std::size_t b = 0; b < expected.size(); ++b) {
    REQUIRE(expected[b] >= 5.0);
    chi2 += (observed[b] - expected[b]) * (observed[b] - expected[b]) / expected[b];
  }
  CAPTURE(chi2);
  CHECK(chi2 < chi2_threshold(22));
  // The acceptance test's square in 256 bits (taken only far in the tail): exp(-7/3) with the
  // numerator as (hi 0, lo 7), and exp(-4) as 2^128 / 2^126, whose numerator needs the high word.
  for (const auto& [num, den, p] :
       {std::tuple{privacy::detail::uint256{0, 7}, uint128(3), std::exp(-7.0 / 3)},
        std::tuple{privacy::detail::uint256{1, 0}, uint128(1) << 126, std::exp(-4.0)}}) {
    int ones = 0;
    for (int i = 0; i < samples; ++i)
      ones += privacy::detail::bernoulli_exp_neg_wide(source, num, den) ? 1 : 0;
    CAPTURE(p);
    CHECK(std::fabs(ones - p * samples) < 5.0 * std::sqrt(p * (1 - p) * samples));
  }
  // And the product it squares: mul_wide against a known value, (2^100 + 3)^2 = 2^200 + 6 2^100
  // + 9.
  const auto sq = privacy::detail::mul_wide((uint128(1) << 100) + 3, (uint128(1) << 100) + 3);
  CHECK(sq.hi == (uint128(1) << 72));
  CHECK(sq.lo == (uint128(6) << 100) + 9);
}
