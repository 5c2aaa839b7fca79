// rolora::secagg (secagg/*.hpp): Shamir sharing over GF(2^61 - 1), libsodium's key agreement and
// mask streams bound to the round and the pair, the fixed-point encoding and its wrap bound, the
// neighbour graphs, and double masking with dropouts: the server's result is the plain sum of the
// survivors' encodings bit for bit, and the refusals that keep a client's input masked.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <rolora/secagg/frame.hpp>
#include <rolora/secagg/messages.hpp>
#include <rolora/secagg/secagg.hpp>
#include <set>
#include <string>
#include <vector>

#include "../test_support.hpp"

using namespace rolora;
using namespace rolora::secagg;

namespace {

std::vector<std::uint8_t> bytes_of(std::size_t n, std::uint32_t tag) {
  std::mt19937 rng(tag);
  std::vector<std::uint8_t> b(n);
  for (auto& v : b) v = std::uint8_t(rng());
  return b;
}

// Pearson's chi-square of counts against a uniform expectation.
double chi_square(const std::vector<double>& counts) {
  double total = 0;
  for (double c : counts) total += c;
  const double expected = total / double(counts.size());
  double chi = 0;
  for (double c : counts) chi += (c - expected) * (c - expected) / expected;
  return chi;
}

// Chi-square of the top byte of each word over 256 bins.
double top_byte_chi_square(const std::vector<std::uint64_t>& words) {
  std::vector<double> counts(256, 0);
  for (std::uint64_t w : words) counts[w >> 56] += 1;
  return chi_square(counts);
}

// A chi-square threshold of df degrees of freedom, 6 standard deviations above the mean.
double chi_square_threshold(double df) { return df + 6 * std::sqrt(2 * df); }

key256 key_of(std::uint8_t fill) {
  key256 k{};
  k.fill(fill);
  return k;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Shamir
// ---------------------------------------------------------------------------------------------

TEST_CASE("field arithmetic of GF(2^61 - 1) matches 128-bit remainders") {
  std::mt19937_64 rng(11);
  for (int i = 0; i < 2000; ++i) {
    const std::uint64_t a = rng() % field::p, b = rng() % field::p;
    CHECK(field::mul(a, b) == std::uint64_t((field::u128(a) * b) % field::p));
    CHECK(field::add(a, b) == (a + b) % field::p);
    CHECK(field::sub(a, b) == (a + field::p - b) % field::p);
    if (a != 0) CHECK(field::mul(a, field::inv(a)) == 1);
  }
  CHECK(field::mul(field::p - 1, field::p - 1) == 1);  // (-1)^2
}

TEST_CASE("shamir reconstructs secrets of 1 to 40 bytes from any t of n shares") {
  for (std::size_t bytes : {1u, 7u, 8u, 32u, 40u}) {
    const auto secret = bytes_of(bytes, std::uint32_t(bytes));
    const auto shares = split(secret, 7, 4);
    REQUIRE(shares.size() == 7);
    CHECK(shares[0].values.size() == (bytes + 6) / 7);
    CHECK(reconstruct(std::span(shares).first(4)) == secret);
    CHECK(reconstruct(std::span(shares).last(4)) == secret);
    std::vector<share> picked{shares[6], shares[1], shares[4], shares[2]};
    CHECK(reconstruct(picked) == secret);
    CHECK(reconstruct(shares) == secret);  // all 7
  }
  // t = 1: every share is the secret; t = n: all are needed.
  const auto s = bytes_of(32, 5);
  const auto t1 = split(s, 3, 1);
  CHECK(reconstruct(std::span(t1).subspan(2, 1)) == s);
  CHECK(reconstruct(split(s, 5, 5)) == s);
}

TEST_CASE("shamir refuses fewer than t shares") {
  const auto shares = split(bytes_of(32, 1), 6, 4);
  const std::string m = test::untagged_message_of<config_error>(
      [&] { (void)reconstruct(std::span(shares).first(3)); });
  CHECK(m == "shamir: reconstruction needs t = 4 shares, got 3");
  CHECK(test::untagged_message_of<config_error>([&] { (void)split(bytes_of(4, 1), 3, 4); }) ==
        "shamir: threshold t must be in [1, n], got t = 4 with n = 3");
  CHECK(test::untagged_message_of<config_error>([&] { (void)split(bytes_of(4, 1), 3, 0); }) ==
        "shamir: threshold t must be in [1, n], got t = 0 with n = 3");
}

TEST_CASE("shamir refuses repeated x and shares of different shapes") {
  const auto shares = split(bytes_of(32, 2), 5, 3);
  std::vector<share> dup{shares[0], shares[1], shares[1]};
  CHECK(test::untagged_message_of<config_error>([&] { (void)reconstruct(dup); }) ==
        "shamir: shares 1 and 2 have the same x = 2");
  std::vector<share> shorter{shares[0], shares[1], shares[2]};
  shorter[2].values.pop_back();
  CHECK(test::untagged_message_of<config_error>([&] {
          (void)reconstruct(shorter);
        }).starts_with("shamir: share 2 is of a different split"));
  std::vector<share> other_t{shares[0], shares[1], shares[2]};
  other_t[1].threshold = 2;
  CHECK(test::untagged_message_of<config_error>([&] {
          (void)reconstruct(other_t);
        }).starts_with("shamir: share 1 is of a different split: threshold 2"));
  std::vector<share> zero_x{shares[0], shares[1], shares[2]};
  zero_x[0].x = 0;
  CHECK(test::untagged_message_of<config_error>([&] { (void)reconstruct(zero_x); }) ==
        "shamir: share 0 has x = 0, expected 1..p-1");
  std::vector<share> outside{shares[0], shares[1], shares[2]};
  outside[0].values[0] = field::p;
  CHECK(test::untagged_message_of<config_error>([&] {
          (void)reconstruct(outside);
        }).starts_with("shamir: share 0 holds 2305843009213693951"));
}

// t - 1 shares leave the secret open: for every candidate c there is a polynomial of degree
// t - 1 through them and (0, c). Build it (its value at a further x by Lagrange) and check that
// reconstruction from the t - 1 shares and that point gives c, and that the point is a field
// element like any share.
TEST_CASE("shamir t-1 shares are consistent with every secret") {
  const std::size_t t = 4;
  const std::vector<std::uint8_t> secret{0x5a, 0x01, 0x00, 0x7f, 0x33};  // one element (5 bytes)
  const auto shares = split(secret, 6, t);
  const std::vector<share> few(shares.begin(), shares.begin() + (t - 1));
  std::vector<std::uint64_t> xs{0}, ys{0};
  for (const auto& s : few) {
    xs.push_back(s.x);
    ys.push_back(s.values[0]);
  }
  const std::uint64_t x_new = 6;  // a point none of the t - 1 shares has
  int matched = 0;
  for (std::uint64_t c : {std::uint64_t(0), std::uint64_t(1), std::uint64_t(0x7f00015a),
                          std::uint64_t(0x33'7f00'015a), std::uint64_t(0xff'ffff'ffff)}) {
    ys[0] = c;
    // f(x_new) = sum_i ys[i] prod_{j != i} (x_new - x_j) / (x_i - x_j)
    std::uint64_t y_new = 0;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      std::uint64_t num = 1, den = 1;
      for (std::size_t j = 0; j < xs.size(); ++j) {
        if (j == i) continue;
        num = field::mul(num, field::sub(x_new, xs[j]));
        den = field::mul(den, field::sub(xs[i], xs[j]));
      }
      y_new = field::add(y_new, field::mul(ys[i], field::mul(num, field::inv(den))));
    }
    std::vector<share> completed = few;
    completed.push_back({x_new, t, secret.size(), {y_new}});
    const auto got = reconstruct(completed);
    std::uint64_t value = 0;
    for (std::size_t b = got.size(); b > 0; --b) value = (value << 8) | got[b - 1];
    CHECK(value == c);
    matched += value == c;
  }
  CHECK(matched == 5);
}

// One share (t = 2) of a fixed secret is uniform in the field: chi-square of its top 4 bits
// over 4096 splits. A split whose coefficients were not random would put every share in one bin.
TEST_CASE("shamir single shares of a fixed secret are uniform") {
  const std::vector<std::uint8_t> secret(7, 0);
  std::vector<double> counts(16, 0);
  for (int i = 0; i < 4096; ++i) counts[split(secret, 2, 2)[0].values[0] >> 57] += 1;
  const double chi = chi_square(counts);
  CHECK(chi < chi_square_threshold(15));
}

// ---------------------------------------------------------------------------------------------
// Keys and mask streams
// ---------------------------------------------------------------------------------------------

TEST_CASE("mask stream is ChaCha20 IETF read little-endian") {
  // RFC 8439 A.1 test vector 1: key 0, nonce 0, counter 0 -> 76 b8 e0 ad a0 f1 3d 90 40 5d ...
  // (round 0 and domain 0 make the nonce zero).
  const auto w = mask_words(key_of(0), 0, stream_domain(0), 2);
  CHECK(w[0] == 0x903df1a0ade0b876ull);
  CHECK(w[1] == 0x28bd8653e56a5d40ull);
}

TEST_CASE("pair keys agree on both sides and differ across rounds pairs and peers") {
  const keypair a = generate_keypair(), b = generate_keypair(), c = generate_keypair();
  CHECK(public_of(a.sk) == a.pk);
  const key256 ab = pair_key(a.sk, a.pk, 3, b.pk, 8, 5, key_purpose::pairwise_mask);
  const key256 ba = pair_key(b.sk, b.pk, 8, a.pk, 3, 5, key_purpose::pairwise_mask);
  CHECK(ab == ba);
  std::set<key256> distinct{ab};
  distinct.insert(pair_key(a.sk, a.pk, 3, b.pk, 8, 6, key_purpose::pairwise_mask));  // round
  distinct.insert(pair_key(a.sk, a.pk, 3, b.pk, 9, 5, key_purpose::pairwise_mask));  // ids
  distinct.insert(pair_key(a.sk, a.pk, 3, c.pk, 8, 5, key_purpose::pairwise_mask));  // peer
  CHECK(distinct.size() == 4);
  CHECK(test::untagged_message_of<config_error>([&] {
          (void)pair_key(a.sk, a.pk, 4, b.pk, 4, 0, key_purpose::pairwise_mask);
        }) == "secagg: a pair key needs two clients, got client 4 twice");
  const public_key low_order{};  // all zero: X25519 gives the all-zero secret
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)pair_key(a.sk, a.pk, 1, low_order, 2, 0, key_purpose::pairwise_mask);
        }) == "secagg: the public key of client 2 is a low-order point (shared secret all zero)");
}

TEST_CASE("mask stream is reproducible and bound to round key and domain") {
  const key256 k = random_seed();
  const auto s = mask_words(k, 7, stream_domain::pairwise_mask, 1000);
  CHECK(s == mask_words(k, 7, stream_domain::pairwise_mask, 1000));
  const auto prefix = mask_words(k, 7, stream_domain::pairwise_mask, 10);
  CHECK(std::equal(prefix.begin(), prefix.end(), s.begin()));
  auto equal_words = [&](const std::vector<std::uint64_t>& o) {
    std::size_t same = 0;
    for (std::size_t i = 0; i < s.size(); ++i) same += s[i] == o[i];
    return same;
  };
  CHECK(equal_words(mask_words(k, 8, stream_domain::pairwise_mask, 1000)) == 0);
  CHECK(equal_words(mask_words(k, 7, stream_domain::self_mask, 1000)) == 0);
  CHECK(equal_words(mask_words(random_seed(), 7, stream_domain::pairwise_mask, 1000)) == 0);
  CHECK(top_byte_chi_square(mask_words(k, 7, stream_domain::pairwise_mask, 25600)) <
        chi_square_threshold(255));
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

TEST_CASE("decode of encode is within one level of the clipped value") {
  const codec c(1.5, 16, 10);
  CHECK(c.level() == doctest::Approx(1.5 / 32768).epsilon(1e-15));
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  std::vector<double> x(5000);
  for (auto& v : x) v = u(rng);
  x[0] = 1.5;
  x[1] = -1.5;
  x[2] = 0;
  const auto back = c.decode(c.encode(x, 42));
  double worst = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    worst = std::max(worst, std::abs(back[j] - std::clamp(x[j], -1.5, 1.5)));
  }
  CHECK(worst < c.level());
  CHECK(back[0] == 1.5);
  CHECK(back[1] == -1.5);
  CHECK(back[2] == 0);
  CHECK(c.encode(x, 42) == c.encode(x, 42));
  CHECK(c.encode(x, 42) != c.encode(x, 43));
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)c.encode(std::vector<double>{0.0, NAN}, 1);
        }).starts_with("secagg codec: coordinate 1 is "));
}

// The mean of N decodings of x sits at x within 6 standard errors, the standard deviation of one
// rounding being level * sqrt(f (1 - f)) with f the fractional part; rounding to nearest would be
// 0.3 levels off, far outside.
TEST_CASE("stochastic rounding is unbiased") {
  const codec c(1.0, 8, 4);
  const double f = 0.3;
  const double x = (17 + f) * c.level();
  const int draws = 20000;
  double total = 0;
  for (int i = 0; i < draws; ++i) total += c.decode(c.encode(std::vector<double>{x}, i))[0];
  const double mean = total / draws;
  const double tolerance = 6 * c.level() * std::sqrt(f * (1 - f)) / std::sqrt(double(draws));
  CHECK(tolerance < 0.05 * c.level());
  CHECK(std::abs(mean - x) < tolerance);
}

TEST_CASE("codec refuses a client count whose sum could wrap") {
  CHECK_NOTHROW(codec(1.0, 62, 3));  // 3 * 2^61 < 2^63
  CHECK(test::untagged_message_of<config_error>([] { codec(2.5, 62, 4); }) ==
        "secagg codec: the sum of n = 4 encodings (range 2.5, bits 62, each of magnitude up to "
        "2^61) could wrap modulo M = 2^64: n * 2^(bits-1) must be <= 2^63 - 1, so n <= 3 at "
        "these bits");
  CHECK(test::untagged_message_of<config_error>([] {
          codec(1.0, 32, std::size_t(1) << 32);
        }).find("so n <= 4294967295") != std::string::npos);
  CHECK(test::untagged_message_of<config_error>([] { codec(1.0, 63, 1); }) ==
        "secagg codec: bits must be in [1, 62], got 63");
  CHECK(test::untagged_message_of<config_error>([] { codec(0.0, 8, 1); }) ==
        "secagg codec: range must be finite and > 0, got 0");
  const codec c(1.0, 62, 3);
  const std::vector<std::uint64_t> one{0};
  CHECK(test::untagged_message_of<config_error>([&] { (void)c.decode_sum(one, 4); }) ==
        "secagg codec: a sum of n = 4 encodings, expected 1..3 (the codec's max_clients)");
}

TEST_CASE("sums at the wrap bound decode exactly") {
  const codec c(1.0, 62, 3);
  const std::vector<double> x{1.0, -1.0, 0.5, -7.0};
  std::vector<std::uint64_t> sum(4, 0);
  for (int i = 0; i < 3; ++i) {
    const auto e = c.encode(x, i);
    for (std::size_t j = 0; j < 4; ++j) sum[j] += e[j];
  }
  const auto d = c.decode_sum(sum, 3);
  CHECK(d[0] == 3.0);
  CHECK(d[1] == -3.0);
  CHECK(d[2] == 1.5);
  CHECK(d[3] == -3.0);  // clipped to -1 each
}

TEST_CASE("weighted decoding divides by the summed weight") {
  const codec c(4.0, 40, 3);
  const std::vector<std::vector<double>> xs{{1.0, -2.0}, {0.5, 3.0}, {-1.0, 0.25}};
  const std::vector<double> w{0.2, 0.5, 0.3};
  std::vector<std::uint64_t> sum(3, 0);
  for (int i = 0; i < 3; ++i) {
    const auto e = c.encode_weighted(xs[i], w[i], 100 + i);
    REQUIRE(e.size() == 3);
    for (std::size_t j = 0; j < 3; ++j) sum[j] += e[j];
  }
  const auto mean = c.decode_weighted_sum(sum, 3);
  REQUIRE(mean.size() == 2);
  // Numerator and denominator are each within 3 levels; the weights sum to 1.
  const double tolerance = 3 * c.level() * (1 + 3.0) / (1 - 3 * c.level());
  CHECK(std::abs(mean[0] - (0.2 * 1.0 + 0.5 * 0.5 - 0.3)) < tolerance);
  CHECK(std::abs(mean[1] - (0.2 * -2.0 + 0.5 * 3.0 + 0.3 * 0.25)) < tolerance);
  CHECK(tolerance < 1e-10);
  CHECK(test::untagged_message_of<value_error>([&] { (void)c.encode_weighted(xs[0], 0.0, 1); }) ==
        "secagg codec: a weight must be finite and > 0, got 0");
}

// ---------------------------------------------------------------------------------------------
// Neighbour graphs
// ---------------------------------------------------------------------------------------------

namespace {

// Every degree k, symmetric, no self loops; returns the number of edges.
std::size_t check_regular(const neighbour_graph& g, std::size_t k) {
  std::size_t ends = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    CHECK(g.degree(i) == k);
    CHECK_FALSE(g.adjacent(i, i));
    const auto& nb = g.neighbours(i);
    CHECK(std::adjacent_find(nb.begin(), nb.end()) == nb.end());  // no repeats
    for (std::size_t j : nb) CHECK(g.adjacent(j, i));
    ends += nb.size();
  }
  return ends / 2;
}

}  // namespace

TEST_CASE("random regular graphs have degree k and are symmetric without self loops") {
  const key256 seed = key_of(9);
  CHECK(check_regular(complete_graph(6), 5) == 15);
  CHECK(check_regular(random_regular_graph(5, 2, seed), 2) == 5);
  CHECK(check_regular(random_regular_graph(10, 4, seed), 4) == 20);
  CHECK(check_regular(random_regular_graph(10, 3, seed), 3) == 15);  // odd k, even n
  CHECK(check_regular(random_regular_graph(10, 9, seed), 9) == 45);  // complete
  CHECK(check_regular(random_regular_graph(9, 8, seed), 8) == 36);
  const std::size_t k = logarithmic_degree(100);
  CHECK(k == 14);
  CHECK(check_regular(random_regular_graph(100, k, seed), k) == 700);
  CHECK(logarithmic_degree(5) == 4);
}

TEST_CASE("random regular graphs are determined by their seed") {
  auto edges = [](const neighbour_graph& g) {
    std::vector<std::vector<std::size_t>> e;
    for (std::size_t i = 0; i < g.size(); ++i) e.push_back(g.neighbours(i));
    return e;
  };
  const auto a = edges(random_regular_graph(50, 6, key_of(1)));
  CHECK(a == edges(random_regular_graph(50, 6, key_of(1))));
  CHECK(a != edges(random_regular_graph(50, 6, key_of(2))));
  // Not the unpermuted ring: some client has a neighbour more than 3 ids away.
  std::size_t far = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t j : a[i]) far += std::min((i + 50 - j) % 50, (j + 50 - i) % 50) > 3;
  }
  CHECK(far > 0);
}

TEST_CASE("random regular graphs refuse impossible degrees") {
  CHECK(test::untagged_message_of<config_error>([] {
          (void)random_regular_graph(5, 5, key_of(0));
        }) == "secagg graph: degree k must be < n, got k = 5 with n = 5");
  CHECK(test::untagged_message_of<config_error>([] {
          (void)random_regular_graph(7, 3, key_of(0));
        }) == "secagg graph: an odd degree k = 3 needs an even n, got n = 7");
}

// ---------------------------------------------------------------------------------------------
// Double masking
// ---------------------------------------------------------------------------------------------

namespace {

struct run_result {
  std::vector<std::uint64_t> unmasked, plain, masked_sum;
};

// One round of n clients on `graph`: every client but those in `silent` publishes keys and
// shares (the silent never take part); the clients in `before` drop before sending their masked
// input, those in `after` after it (they answer no request). Returns the server's unmasked sum
// and the plain sum of the survivors' encodings.
run_result run_round(const neighbour_graph& graph, std::size_t t, std::uint64_t round,
                     const std::set<std::size_t>& before, const std::set<std::size_t>& after,
                     const std::set<std::size_t>& silent = {}, std::size_t length = 257) {
  const std::size_t n = graph.size();
  const round_setup setup{round, t, graph};
  const codec c(1.0, 20, n);
  std::vector<client> clients;
  key_directory published;
  for (std::size_t i = 0; i < n; ++i) {
    clients.emplace_back(i, setup);
    if (!silent.count(i)) published[i] = clients[i].mask_public_key();
  }
  for (const auto& cl : clients) {
    if (silent.count(cl.id())) continue;
    for (const auto& b : cl.share_out()) clients[b.to].receive(b);
  }
  std::map<std::size_t, std::vector<std::uint64_t>> masked;
  run_result r;
  r.plain.assign(length, 0);
  r.masked_sum.assign(length, 0);
  for (std::size_t i = 0; i < n; ++i) {
    if (before.count(i) || silent.count(i)) continue;
    std::vector<double> x(length);
    for (std::size_t j = 0; j < length; ++j) x[j] = std::sin(double(i * length + j));
    const auto e = c.encode(x, i);
    masked[i] = clients[i].masked(e, published);
    for (std::size_t j = 0; j < length; ++j) {
      r.plain[j] += e[j];
      r.masked_sum[j] += masked[i][j];
    }
  }
  const unmask_request req = make_request(published, masked);
  std::vector<unmask_answer> answers;
  for (std::size_t i = 0; i < n; ++i) {
    if (!before.count(i) && !after.count(i) && !silent.count(i))
      answers.push_back(clients[i].answer(req));
  }
  r.unmasked = unmask_sum(setup, published, masked, answers, length);
  return r;
}

}  // namespace

TEST_CASE("unmasked sum equals the plain sum of the survivors bit for bit") {
  SUBCASE("complete graph of 5 without dropouts") {
    const auto r = run_round(complete_graph(5), 3, 1, {}, {});
    CHECK(r.unmasked == r.plain);
    CHECK(r.masked_sum != r.plain);
  }
  SUBCASE("complete graph of 8 with 2 dropped before masking and 1 after") {
    const auto r = run_round(complete_graph(8), 4, 2, {1, 6}, {3});
    CHECK(r.unmasked == r.plain);
    CHECK(r.masked_sum != r.plain);
  }
  SUBCASE("12 clients of degree 4 with 2 dropped before masking") {
    const auto r = run_round(random_regular_graph(12, 4, key_of(3)), 2, 3, {0, 11}, {});
    CHECK(r.unmasked == r.plain);
  }
  SUBCASE("30 clients of logarithmic degree with 4 dropped before masking and 3 after") {
    const std::size_t k = logarithmic_degree(30);
    CHECK(k == 10);
    const auto r =
        run_round(random_regular_graph(30, k, key_of(4)), 5, 4, {2, 9, 17, 25}, {5, 13, 29});
    CHECK(r.unmasked == r.plain);
    CHECK(r.masked_sum != r.plain);
  }
  SUBCASE("16 clients of degree 6 with 2 that never published keys and 1 dropped before") {
    const auto r = run_round(random_regular_graph(16, 6, key_of(6)), 3, 6, {4}, {}, {1, 10});
    CHECK(r.unmasked == r.plain);
  }
  SUBCASE("10 clients of odd degree 3 with 1 dropped after masking") {
    const auto r = run_round(random_regular_graph(10, 3, key_of(5)), 2, 5, {}, {7});
    CHECK(r.unmasked == r.plain);
  }
}

TEST_CASE("unmasking refuses fewer than t answering neighbours") {
  // Client 0 of a complete graph of 4 with t = 3: after 2 of its neighbours drop after masking,
  // one share of its seed is left.
  CHECK(test::untagged_message_of<config_error>([] {
          (void)run_round(complete_graph(4), 3, 1, {}, {1, 2});
        }) == "shamir: reconstruction needs t = 3 shares, got 1");
}

TEST_CASE("a request for both kinds of share of one client is refused") {
  const round_setup setup{9, 2, complete_graph(4)};
  std::vector<client> clients;
  key_directory published;
  for (std::size_t i = 0; i < 4; ++i) {
    clients.emplace_back(i, setup);
    published[i] = clients[i].mask_public_key();
  }
  for (const auto& cl : clients) {
    for (const auto& b : cl.share_out()) clients[b.to].receive(b);
  }
  // Client side: survivors and dropped both name client 2.
  const unmask_request bad{{0, 1, 2}, {2, 3}};
  CHECK(test::untagged_message_of<config_error>([&] { (void)clients[0].answer(bad); }) ==
        "secagg: a request for both the self-mask seed share and the mask key share of client "
        "2: the two together would unmask its input");
  // Server side: answers to two different requests, which together reveal both kinds for 2.
  const unmask_request honest{{0, 1, 2}, {3}};
  const unmask_request lying{{0, 1}, {2, 3}};
  const std::vector<unmask_answer> answers{clients[0].answer(honest), clients[1].answer(lying)};
  REQUIRE(answers[0].seed_shares.count(2) == 1);
  REQUIRE(answers[1].key_shares.count(2) == 1);
  std::map<std::size_t, std::vector<std::uint64_t>> masked;
  for (std::size_t i = 0; i < 3; ++i) {
    masked[i] = clients[i].masked(std::vector<std::uint64_t>(8, i), published);
  }
  CHECK(test::untagged_message_of<config_error>(
            [&] { (void)unmask_sum(setup, published, masked, answers, 8); }) ==
        "secagg: answers reveal both the self-mask seed share and the mask key share of "
        "client 2: the two together would unmask its input");
  // And a client answers once per round.
  CHECK(test::untagged_message_of<config_error>([&] { (void)clients[0].answer(honest); }) ==
        "secagg: client 0 already answered round 9's unmask request");
}

// A client's masked vector is uniform in Z_{2^64}: chi-square of the top byte over 25600
// coordinates is below the threshold; the unmasked encoding of the same values (small numbers in
// two's complement: top byte 0x00 or 0xff) is far above it.
TEST_CASE("a masked vector looks uniform and its encoding does not") {
  const round_setup setup{3, 2, complete_graph(3)};
  std::vector<client> clients{client(0, setup), client(1, setup), client(2, setup)};
  key_directory published;
  for (const auto& cl : clients) published[cl.id()] = cl.mask_public_key();
  const codec c(1.0, 20, 3);
  std::vector<double> x(25600);
  for (std::size_t j = 0; j < x.size(); ++j) x[j] = std::cos(double(j));
  const auto e = c.encode(x, 1);
  const double threshold = chi_square_threshold(255);
  const double plain = top_byte_chi_square(e);
  const double masked = top_byte_chi_square(clients[1].masked(e, published));
  CHECK(plain > threshold);
  CHECK(masked < threshold);
}

// Masks are bound to the round: the pair key and every stream take the round as input, so the
// same keys in another round give another mask (no word in common over 4096).
TEST_CASE("the same keys give unrelated masks in another round") {
  const keypair a = generate_keypair(), b = generate_keypair();
  const key256 seed = random_seed();
  auto mask = [&](std::uint64_t round) {
    const key256 k = pair_key(a.sk, a.pk, 0, b.pk, 1, round, key_purpose::pairwise_mask);
    auto m = mask_words(k, round, stream_domain::pairwise_mask, 4096);
    const auto self = mask_words(seed, round, stream_domain::self_mask, 4096);
    for (std::size_t j = 0; j < m.size(); ++j) m[j] += self[j];
    return m;
  };
  const auto r1 = mask(1), r2 = mask(2);
  std::size_t same = 0;
  std::vector<std::uint64_t> diff(r1.size());
  for (std::size_t j = 0; j < r1.size(); ++j) {
    same += r1[j] == r2[j];
    diff[j] = r1[j] - r2[j];
  }
  CHECK(same == 0);
  CHECK(r1 == mask(1));
  // y_1 - y_2 of one input would be r1 - r2: uniform too, nothing of the input left in it.
  std::vector<double> counts(16, 0);
  for (std::uint64_t d : diff) counts[d >> 60] += 1;
  CHECK(chi_square(counts) < chi_square_threshold(15));
}

// ---------------------------------------------------------------------------------------------
// The stage messages (messages.hpp)
// ---------------------------------------------------------------------------------------------

TEST_CASE("a round whose every stage message goes through its encoding gives the plain sum") {
  const std::size_t n = 6, length = 33;
  const std::uint64_t round = 7;
  const round_setup setup{round, 2, random_regular_graph(n, 4, key_of(8))};
  const codec c(1.0, 20, n);
  std::vector<client> clients;
  key_directory published, sealing;
  for (std::size_t i = 0; i < n; ++i) {
    clients.emplace_back(i, setup);
    const auto a = decode_advertise(
        encode_advertise({i, clients[i].mask_public_key(), clients[i].encryption_public_key()},
                         round),
        round);
    CHECK(a.client == i);
    published[a.client] = a.mask_public_key;
    sealing[a.client] = a.encryption_public_key;
  }
  CHECK(published.at(2) == clients[2].mask_public_key());
  CHECK(sealing.at(2) == clients[2].encryption_public_key());
  CHECK(sealing.at(2) != published.at(2));  // two key pairs
  for (const auto& cl : clients) {
    for (const auto& b : cl.share_out()) {
      const auto back = decode_sealed_shares(encode_sealed_shares(cl, b, sealing.at(b.to), round),
                                             round, clients[b.to], sealing);
      CHECK(back.seed_share.values == b.seed_share.values);
      CHECK(back.key_share.x == b.key_share.x);
      clients[back.to].receive(back);
    }
  }
  std::map<std::size_t, std::vector<std::uint64_t>> masked;
  std::vector<std::uint64_t> plain(length, 0);
  for (std::size_t i = 0; i < n; ++i) {
    if (i == 4) continue;  // drops before its masked input
    std::vector<double> x(length);
    for (std::size_t j = 0; j < length; ++j) x[j] = std::cos(double(i + 3 * j));
    const auto e = c.encode(x, i);
    for (std::size_t j = 0; j < length; ++j) plain[j] += e[j];
    auto [who, y] = decode_masked_input(
        encode_masked_input(i, clients[i].masked(e, published), round), round, length);
    masked[who] = std::move(y);
  }
  const auto req =
      decode_unmask_request(encode_unmask_request(make_request(published, masked), round), round);
  CHECK(req.dropped == std::vector<std::size_t>{4});
  std::vector<unmask_answer> answers;
  for (std::size_t i = 0; i < n; ++i) {
    if (i == 4 || i == 1) continue;  // 1 drops after its masked input
    answers.push_back(
        decode_unmask_answer(encode_unmask_answer(clients[i].answer(req), round), round));
  }
  CHECK(unmask_sum(setup, published, masked, answers, length) == plain);
}

TEST_CASE(
    "stage messages refuse other stages and replays and misaddressed shares and every "
    "truncation") {
  const std::uint64_t round = 3;
  const round_setup setup{round, 2, complete_graph(3)};
  client a(0, setup), b(1, setup);
  const auto bundle = a.share_out().at(0);  // from 0 to 1
  REQUIRE(bundle.to == 1);
  const auto shares = encode_shares(bundle, round);
  const auto advert = encode_advertise({0, a.mask_public_key(), a.encryption_public_key()}, round);
  const std::vector<std::uint64_t> y{1, 2, 3};
  const auto input = encode_masked_input(0, y, round);

  CHECK(test::untagged_message_of<value_error>([&] { (void)decode_advertise(shares, round); }) ==
        "secagg message: expected a secagg.advertise message, got 'secagg.shares'");
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_advertise(advert, round + 1);
        }) == "secagg.advertise message of round 3 in round 4 (a replay or a late message)");
  CHECK(test::untagged_message_of<value_error>([&] { (void)decode_shares(shares, round, 2); }) ==
        "secagg.shares message for client 1 delivered to client 2");
  CHECK(test::untagged_message_of<shape_error>([&] {
          (void)decode_masked_input(input, round, 4);
        }) == "secagg.masked_input message: tensor 'y' has shape [3], expected [4]");
  CHECK(decode_masked_input(input, round, 3).second == y);

  // A share value outside the field, and a peer listed twice in an answer.
  auto outside = bundle;
  outside.seed_share.values[0] = field::p;
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_shares(encode_shares(outside, round), round, 1);
        }) == "secagg.shares message: a share value is not < 2^61 - 1");
  unmask_answer twice{1, {{0, bundle.seed_share}}, {}};
  auto bytes = encode_unmask_answer(twice, round);
  const auto f = parse_safetensors(bytes);
  std::map<std::string, tensor_data> tensors;
  for (const auto& name : f.names()) {
    const auto t = f.tensor(name);
    tensors[name] = {t.dtype, t.shape, {t.bytes.begin(), t.bytes.end()}};
  }
  auto& seed = tensors.at("seed");
  seed.shape[0] = 2;
  seed.bytes.insert(seed.bytes.end(), seed.bytes.begin(), seed.bytes.end());
  tensors.at("seed_peers") =
      secagg::detail::wire::u64_tensor(std::vector<std::uint64_t>{0, 0}, {2});
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_unmask_answer(serialize_safetensors(tensors, f.metadata()), round);
        }) == "secagg.unmask_answer message: peer 0 listed twice");

  // Sealed shares: only the recipient opens them, and nothing altered opens.
  client c(2, setup);
  const key_directory sealing{{0, a.encryption_public_key()},
                              {1, b.encryption_public_key()},
                              {2, c.encryption_public_key()}};
  const auto sealed = encode_sealed_shares(a, bundle, b.encryption_public_key(), round);
  CHECK(decode_sealed_shares(sealed, round, b, sealing).seed_share.values ==
        bundle.seed_share.values);
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_sealed_shares(sealed, round, c, sealing);
        }) == "secagg.sealed_shares message for client 1 delivered to client 2");
  CHECK_THROWS_AS((void)decode_sealed_shares(sealed, round + 1, b, sealing), value_error);
  auto envelope = parse_safetensors(sealed);
  const auto rebuild = [&](std::vector<std::uint8_t> box, std::string from) {
    auto meta = envelope.metadata();
    meta["from"] = std::move(from);
    const std::uint64_t size = box.size();
    return serialize_safetensors({{"box", {tensor_dtype::u8, {size}, std::move(box)}}}, meta);
  };
  const auto box_view = envelope.tensor("box").bytes;
  std::vector<std::uint8_t> box(box_view.begin(), box_view.end());
  auto flipped = box;
  flipped[flipped.size() / 2] ^= 1;
  const std::string forged =
      "secagg: a sealed message does not open (forged, altered, or not from that sender to this "
      "recipient)";
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_sealed_shares(rebuild(flipped, "0"), round, b, sealing);
        }) == forged);
  // An envelope claiming another sender: the box does not open under that sender's key.
  CHECK(test::untagged_message_of<value_error>(
            [&] { (void)decode_sealed_shares(rebuild(box, "2"), round, b, sealing); }) == forged);
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_sealed_shares(rebuild(box, "7"), round, b, sealing);
        }) == "secagg.sealed_shares message from client 7, which advertised no encryption key");
  CHECK(test::untagged_message_of<value_error>([&] {
          (void)decode_sealed_shares(
              rebuild(std::vector<std::uint8_t>(box.begin(), box.begin() + 20), "0"), round, b,
              sealing);
        }).find("shorter than its nonce and tag") != std::string::npos);

  // Every truncation of every stage's message is a rolora error, never a crash or a hang.
  const auto answer = encode_unmask_answer(b.answer({{0}, {}}), round);
  const auto request = encode_unmask_request({{0, 1}, {2}}, round);
  for (const auto* m : {&advert, &shares, &sealed, &input, &request, &answer}) {
    for (std::size_t cut = 0; cut < m->size(); cut += 3) {
      const std::span<const std::uint8_t> part(m->data(), cut);
      CHECK_THROWS_AS((void)decode_advertise(part, round), rolora::error);
      CHECK_THROWS_AS((void)decode_shares(part, round, 1), rolora::error);
      CHECK_THROWS_AS((void)decode_sealed_shares(part, round, b, sealing), rolora::error);
      CHECK_THROWS_AS((void)decode_masked_input(part, round, 3), rolora::error);
      CHECK_THROWS_AS((void)decode_unmask_request(part, round), rolora::error);
      CHECK_THROWS_AS((void)decode_unmask_answer(part, round), rolora::error);
    }
  }
}

TEST_CASE("a dropped client's rebuilt mask key does not open the shares sealed to it") {
  // The server rebuilds the mask secret key of a client that dropped after sharing (to remove
  // its pair masks). Were shares sealed under that key pair, the server could then open every
  // bundle sent to that client, survivors' self-mask seeds included, and unmask them.
  const std::uint64_t round = 4;
  const round_setup setup{round, 2, complete_graph(4)};
  std::vector<client> clients;
  key_directory sealing;
  for (std::size_t i = 0; i < 4; ++i) {
    clients.emplace_back(i, setup);
    sealing[i] = clients[i].encryption_public_key();
  }
  std::vector<std::uint8_t> to_dropped;  // client 0's bundle to client 3, as the server routed it
  for (const auto& cl : clients) {
    for (const auto& b : cl.share_out()) {
      const auto sealed = encode_sealed_shares(cl, b, sealing.at(b.to), round);
      if (b.from == 0 && b.to == 3) to_dropped = sealed;
      clients[b.to].receive(decode_sealed_shares(sealed, round, clients[b.to], sealing));
    }
  }
  // Client 3 drops; the survivors answer the server's request for its key shares.
  const unmask_request req{{0, 1, 2}, {3}};
  std::vector<share> key_shares;
  for (std::size_t i = 0; i < 3; ++i) key_shares.push_back(clients[i].answer(req).key_shares.at(3));
  const auto bytes = reconstruct(key_shares);
  secret_key rebuilt{};
  std::copy(bytes.begin(), bytes.end(), rebuilt.begin());
  REQUIRE(public_of(rebuilt) == clients[3].mask_public_key());  // the server holds 3's mask key
  const auto envelope = parse_safetensors(to_dropped);
  const auto box = envelope.tensor("box").bytes;
  CHECK_THROWS_AS((void)open_sealed(box, sealing.at(0), rebuilt), value_error);
  CHECK(decode_sealed_shares(to_dropped, round, clients[3], sealing).from == 0);  // 3 itself can
}

TEST_CASE("secagg: the MPI transport's frames round-trip and refuse what does not fit") {
  const frames::frame f{'R', 7, 3, {{1, 2, 3}, {}, std::vector<std::uint8_t>(300, 9)}};
  const auto bytes = frames::encode(f);
  CHECK(bytes.size() == 25 + 3 * 8 + 3 + 300);
  const auto back = frames::decode(bytes);
  CHECK(back.kind == 'R');
  CHECK(back.round == 7);
  CHECK(back.client == 3);
  CHECK(back.parts == f.parts);
  const auto refusal = [](std::vector<std::uint8_t> b) {
    return test::untagged_message_of<value_error>([&] { (void)frames::decode(b); });
  };
  CHECK(refusal({bytes.begin(), bytes.begin() + 24}) ==
        "secagg frame: 24 bytes, expected at least 25");
  CHECK(refusal({bytes.begin(), bytes.end() - 1}) == "secagg frame: part 2 of 300 bytes, 299 left");
  auto trailing = bytes;
  trailing.push_back(0);
  CHECK(refusal(trailing) == "secagg frame: 1 bytes after the parts");
  auto many = bytes;
  many[17 + 7] = 0x7f;  // a part count of about 2^62: refused before any allocation
  CHECK(refusal(many).find("parts in 327 bytes") != std::string::npos);
  // The numbers parts: exactly the count asked for.
  const frames::frame n{'S', 1, 0, {frames::numbers({4, 5, 6})}};
  CHECK(frames::numbers_of(n, 0, 3) == std::vector<std::uint64_t>{4, 5, 6});
  CHECK(test::untagged_message_of<value_error>([&] { (void)frames::numbers_of(n, 0, 2); }) ==
        "secagg frame 'S': part 0 must hold 2 u64 numbers");
}
