// core/: the counter-based RNG, error messages, the concepts, the Eigen backend's algebra,
// client sampling and the partitioners.
#include <algorithm>
#include <numeric>
#include <set>
#include <thread>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
  using words = std::array<std::uint32_t, 4>;
  CHECK(detail::philox4x32({0, 0, 0, 0}, {0, 0}) ==
        words{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(detail::philox4x32({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}) ==
        words{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(detail::philox4x32({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                           {0xa4093822u, 0x299f31d0u}) ==
        words{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("random streams are pure functions of (seed, stream, a, b, index)") {
  const random_stream s(42, stream::adapter_init, 3, 5);
  CHECK(s.bits(17) == random_stream(42, stream::adapter_init, 3, 5).bits(17));
  CHECK(s.bits(17) != s.bits(18));
  CHECK(s.bits(17) != random_stream(43, stream::adapter_init, 3, 5).bits(17));
  CHECK(s.bits(17) != random_stream(42, stream::batching, 3, 5).bits(17));
  CHECK(s.bits(17) != random_stream(42, stream::adapter_init, 4, 5).bits(17));
  CHECK(s.bits(17) != random_stream(42, stream::adapter_init, 3, 6).bits(17));
  // The sequential engine replays the same draws.
  random_engine e(s);
  CHECK(e.uniform() == s.uniform(0));
  CHECK(e.normal() == s.normal(1));
}

TEST_CASE("uniform and normal draws have the right moments") {
  const random_stream s(7, stream::data);
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0, umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    const double u = s.uniform(std::uint64_t(i)), z = s.normal(std::uint64_t(i));
    su += u, su2 += u * u, sn += z, sn2 += z * z;
    umin = std::min(umin, u), umax = std::max(umax, u);
  }
  CHECK(umin >= 0.0);
  CHECK(umax < 1.0);
  CHECK(su / n == doctest::Approx(0.5).epsilon(0.01));
  CHECK(su2 / n - (su / n) * (su / n) == doctest::Approx(1.0 / 12).epsilon(0.02));
  CHECK(std::abs(sn / n) < 0.01);  // 4.5 standard errors
  CHECK(sn2 / n == doctest::Approx(1.0).epsilon(0.015));
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 50000; ++i) ++counts[s.below(std::uint64_t(i), 5)];
  for (int c : counts) CHECK(std::abs(c - 10000) < 500);
}

TEST_CASE("errors carry an id and say what was expected and what came") {
  using B = eigen_backend<double>;
  B::matrix a = B::zeros(2, 3), b = B::zeros(4, 2), c;
  const auto msg = message_of<shape_error>([&] { B::gemm(1.0, a, op::none, b, op::none, 0.0, c); });
  CHECK(msg.find("[rolora.shape_error]") == 0);
  CHECK(msg.find("[2, 3]") != std::string::npos);
  CHECK(msg.find("[4, 2]") != std::string::npos);
  CHECK_THROWS_AS(B::axpy(1.0, a, b), shape_error);
  CHECK_THROWS_AS(B::axpy(1.0, a, b), rolora::error);  // all derive from rolora::error
}

namespace {
struct runtime_name {  // a name that is not a constant expression
  std::string_view name = "runtime_name";
};
struct static_but_not_constexpr_name {
  static inline std::string_view name = "not_constexpr";
};
struct constexpr_name {
  static constexpr std::string_view name = "constexpr_name";
};
}  // namespace

TEST_CASE("a name is a constant expression: named_by_constant") {
  static_assert(named_by_constant<constexpr_name> && named_by_constant<fedavg>);
  static_assert(!named_by_constant<runtime_name> &&
                !named_by_constant<static_but_not_constexpr_name>);
  static_assert(!named_by_constant<int>);
}

TEST_CASE("raise takes the message id from the error type") {
  const auto msg =
      message_of<config_error>([] { detail::raise<config_error>("r must be >= ", 1); });
  CHECK(msg == "[rolora.config_error] r must be >= 1");
  CHECK(message_of<value_error>([] { detail::raise<value_error>("x"); }) ==
        "[rolora.value_error] x");
  CHECK(message_of<shape_error>([] { detail::raise<shape_error>("x"); }) ==
        "[rolora.shape_error] x");
}

TEST_CASE("the library's types model the concepts they claim") {
  static_assert(backend<eigen_backend<float>> && backend<eigen_backend<double>>);
  static_assert(round_aware_aggregator<flora_stack, eigen_backend<double>> &&
                !round_aware_aggregator<fedavg, eigen_backend<double>>);
  static_assert(heterogeneous_rank_aggregator<svd_resplit> &&
                !heterogeneous_rank_aggregator<fedavg>);
  static_assert(residual_tracking_aggregator<fedex_residual, eigen_backend<float>> &&
                !residual_tracking_aggregator<procrustes, eigen_backend<float>>);
  static_assert(backend_factor_reducer<weighted_mean, eigen_backend<float>> &&
                factor_reducer<weighted_mean, eigen_backend<float>>);
  static_assert(update_policy<alternating> && update_policy<fedsa>);
  static_assert(aggregator_for<fedavg, eigen_backend<double>>);
  static_assert(aggregator_for<orthonormalize_a<fedavg>, eigen_backend<float>>);
  static_assert(
      client_task<theory::linear_regression_task<eigen_backend<double>>, eigen_backend<double>>);
  static_assert(closed_form_b_task<theory::linear_regression_task<eigen_backend<double>>,
                                   eigen_backend<double>>);
  static_assert(!backend<int> && !update_policy<int> &&
                !aggregator_for<int, eigen_backend<double>>);
}

TEST_CASE_TEMPLATE("gemm computes alpha op(a) op(b) + beta c for every transposition", Backend,
                   ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  const auto a = test::random_matrix<T>(4, 3, 1), b = test::random_matrix<T>(3, 5, 2);
  const auto c0 = test::random_matrix<T>(4, 5, 3);
  const host_matrix<T> expected = T(2) * a * b + T(0.5) * c0;
  const host_matrix<T> at = a.transpose(), bt = b.transpose();
  for (auto [x, ox, y, oy] :
       {std::tuple{a, op::none, b, op::none}, std::tuple{at, op::transpose, b, op::none},
        std::tuple{a, op::none, bt, op::transpose},
        std::tuple{at, op::transpose, bt, op::transpose}}) {
    auto c = Backend::from_host(c0);
    Backend::gemm(T(2), Backend::from_host(x), ox, Backend::from_host(y), oy, T(0.5), c);
    CHECK((Backend::to_host(c) - expected).cwiseAbs().maxCoeff() <
          10 * test::rounding_tolerance<Backend>());
  }
  typename Backend::matrix wrong = Backend::zeros(2, 2);
  CHECK_THROWS_AS(Backend::gemm(T(1), Backend::from_host(a), op::none, Backend::from_host(b),
                                op::none, T(1), wrong),
                  shape_error);
}

// Above oneDNN's crossover (backend/eigen/onednn_gemm.hpp) eigen_backend<float> calls oneDNN when
// built with it, Eigen otherwise: both must match a double-precision product to within
// |error| <= 1e-6 k (entries N(0, 1), k the inner dimension), beta = 0 must never read c (NaN
// there), and the bits must not depend on how many threads multiply at once.
TEST_CASE(
    "fp32 gemm above the provider crossover: accurate, never reads c at beta 0, same bits "
    "on any thread") {
  using B = eigen_backend<float>;
  const index_t m = 96, n = 80, k = 64;
  CHECK(double(m) * n * k >= 64.0 * 64 * 64);  // really above the crossover when oneDNN is built
  const auto a = test::random_matrix<float>(m, k, 11), b = test::random_matrix<float>(k, n, 12);
  const auto c0 = test::random_matrix<float>(m, n, 13);
  const host_matrix<float> at = a.transpose(), bt = b.transpose();
  const Eigen::MatrixXd expected =
      0.5 * a.cast<double>() * b.cast<double>() - 2.0 * c0.cast<double>();
  std::vector<host_matrix<float>> serial;
  for (auto [x, ox, y, oy] :
       {std::tuple{a, op::none, b, op::none}, std::tuple{at, op::transpose, b, op::none},
        std::tuple{a, op::none, bt, op::transpose},
        std::tuple{at, op::transpose, bt, op::transpose}}) {
    host_matrix<float> c = c0;
    B::gemm(0.5f, x, ox, y, oy, -2.0f, c);
    CHECK((c.cast<double>() - expected).cwiseAbs().maxCoeff() <= 1e-6 * k);
    host_matrix<float> fresh = host_matrix<float>::Constant(m, n, std::nanf(""));
    B::gemm(1.0f, x, ox, y, oy, 0.0f, fresh);
    CHECK(fresh.allFinite());
    CHECK((fresh.cast<double>() - a.cast<double>() * b.cast<double>()).cwiseAbs().maxCoeff() <=
          1e-6 * k);
    serial.push_back(fresh);
  }
  // Two threads multiplying at once (as two clients of a round do) give the serial bits.
  std::vector<host_matrix<float>> side(2);
  {
    std::vector<std::jthread> pool;
    for (std::size_t t = 0; t < 2; ++t) {
      pool.emplace_back([&, t] {
        for (int rep = 0; rep < 20; ++rep) B::gemm(1.0f, a, op::none, b, op::none, 0.0f, side[t]);
      });
    }
  }
  for (const auto& s : side) CHECK((s.array() == serial[0].array()).all());
}

TEST_CASE_TEMPLATE("orthonormalize_rows gives orthonormal rows and the factor that undoes it",
                   Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  const auto a0 = test::random_matrix<T>(3, 9, 4);
  auto a = Backend::from_host(a0);
  const auto l = Backend::to_host(Backend::orthonormalize_rows(a));
  const auto q = Backend::to_host(a);
  const double tol = 10 * test::rounding_tolerance<Backend>();
  CHECK((q * q.transpose() - host_matrix<T>::Identity(3, 3)).cwiseAbs().maxCoeff() < tol);
  CHECK((l * q - a0).cwiseAbs().maxCoeff() < tol);
  for (index_t i = 0; i < 3; ++i) {
    CHECK(l(i, i) > T(0));
    for (index_t j = i + 1; j < 3; ++j) CHECK(l(i, j) == T(0));
  }
  auto wide = Backend::from_host(test::random_matrix<T>(4, 3, 5));
  CHECK_THROWS_AS(Backend::orthonormalize_rows(wide), shape_error);
}

TEST_CASE_TEMPLATE("solve_spd_right solves x g = rhs and rejects a singular g", Backend,
                   ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  const auto m = test::random_matrix<T>(3, 8, 6);
  const host_matrix<T> g = m * m.transpose();  // SPD [3, 3]
  const auto rhs = test::random_matrix<T>(5, 3, 7);
  auto x = Backend::from_host(rhs);
  Backend::solve_spd_right(Backend::from_host(g), x);
  CHECK((Backend::to_host(x) * g - rhs).cwiseAbs().maxCoeff() <
        100 * test::rounding_tolerance<Backend>());
  const host_matrix<T> singular = host_matrix<T>::Zero(3, 3);
  const auto msg =
      message_of<value_error>([&] { Backend::solve_spd_right(Backend::from_host(singular), x); });
  CHECK(msg.find("not positive definite") != std::string::npos);
}

TEST_CASE_TEMPLATE("adamw_update follows torch.optim.AdamW", Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  host_matrix<T> p(1, 2), g(1, 2);
  p << T(1.0), T(-2.0);
  g << T(0.5), T(-0.25);
  auto pb = Backend::from_host(p), m = Backend::zeros(1, 2), v = Backend::zeros(1, 2);
  const double lr = 0.1, b1 = 0.9, b2 = 0.99, eps = 1e-8, wd = 0.1;
  // Two steps by hand, in double.
  double ph[2] = {1.0, -2.0}, mh[2] = {0, 0}, vh[2] = {0, 0};
  for (int t = 1; t <= 2; ++t) {
    Backend::adamw_update(
        pb, Backend::from_host(g), m, v,
        {T(lr), T(b1), T(b2), T(eps), T(wd), T(1 - std::pow(b1, t)), T(1 - std::pow(b2, t))});
    for (int i = 0; i < 2; ++i) {
      ph[i] *= 1 - lr * wd;
      mh[i] = b1 * mh[i] + (1 - b1) * double(g(0, i));
      vh[i] = b2 * vh[i] + (1 - b2) * double(g(0, i)) * double(g(0, i));
      ph[i] -=
          lr * (mh[i] / (1 - std::pow(b1, t))) / (std::sqrt(vh[i] / (1 - std::pow(b2, t))) + eps);
    }
  }
  const auto out = Backend::to_host(pb);
  CHECK(double(out(0, 0)) == doctest::Approx(ph[0]).epsilon(1e-6));
  CHECK(double(out(0, 1)) == doctest::Approx(ph[1]).epsilon(1e-6));
}

TEST_CASE("parallel_for: every item once, the same thread for the same slot across calls") {
  const std::size_t n = 7, threads = 3;
  std::vector<std::thread::id> first(n), second(n);
  std::vector<int> calls(n, 0);
  detail::parallel_for(n, threads, [&](std::size_t i) {
    first[i] = std::this_thread::get_id();
    ++calls[i];
  });
  detail::parallel_for(n, threads, [&](std::size_t i) { second[i] = std::this_thread::get_id(); });
  CHECK(calls == std::vector<int>(n, 1));
  // Items i and i + threads share a slot; a slot's thread is kept from call to call, which is
  // what keeps per-thread workspaces warm across rounds.
  CHECK(first == second);
  CHECK(first[0] == std::this_thread::get_id());
  CHECK(std::set<std::thread::id>(first.begin(), first.end()).size() == threads);
  for (std::size_t i = 0; i + threads < n; ++i) CHECK(first[i] == first[i + threads]);
}

TEST_CASE("parallel_for: nested and concurrent calls finish; the lowest item's error is thrown") {
  std::vector<std::vector<int>> seen(4, std::vector<int>(5, 0));
  // Nested: the inner calls get threads of their own.
  detail::parallel_for(4, 2, [&](std::size_t i) {
    detail::parallel_for(5, 2, [&](std::size_t j) { seen[i][j] += 1; });
  });
  CHECK(seen == std::vector<std::vector<int>>(4, std::vector<int>(5, 1)));
  // Two callers at once: one gets the pool, the other runs on threads of its own.
  std::vector<long> sums(2, 0);
  {
    std::vector<std::jthread> callers;
    for (std::size_t c = 0; c < 2; ++c) {
      callers.emplace_back([&, c] {
        std::vector<long> parts(100, 0);
        for (int repeat = 0; repeat < 50; ++repeat)
          detail::parallel_for(100, 2, [&](std::size_t i) { parts[i] += long(i); });
        sums[c] = std::accumulate(parts.begin(), parts.end(), 0L);
      });
    }
  }
  CHECK(sums == std::vector<long>(2, 50L * 4950));
  std::vector<int> done(6, 0);
  auto failing = [&] {
    detail::parallel_for(6, 2, [&](std::size_t i) {
      done[i] = 1;
      if (i == 3 || i == 4) throw std::runtime_error("item " + std::to_string(i));
    });
  };
  CHECK_THROWS_WITH_AS(failing(), "item 3", std::runtime_error);
  CHECK(done == std::vector<int>(6, 1));  // an error does not stop the other items
}

TEST_CASE("client sampling is seeded, sorted, without replacement and changes with the round") {
  const auto r0 = sample_clients(9, 0, 50, 10);
  CHECK(r0.size() == 10);
  CHECK(std::is_sorted(r0.begin(), r0.end()));
  CHECK(std::set<std::size_t>(r0.begin(), r0.end()).size() == 10);
  CHECK(r0.back() < 50);
  CHECK(r0 == sample_clients(9, 0, 50, 10));
  CHECK(r0 != sample_clients(9, 1, 50, 10));
  CHECK(r0 != sample_clients(10, 0, 50, 10));
  CHECK(sample_clients(9, 0, 5, 0).size() == 5);  // 0: everyone
  // Every client is equally likely: over 2000 rounds each of 20 is picked ~ 2000 * 5 / 20 times.
  std::vector<int> picks(20, 0);
  for (std::size_t t = 0; t < 2000; ++t)
    for (auto c : sample_clients(3, t, 20, 5)) ++picks[c];
  for (int p : picks) CHECK(std::abs(p - 500) < 90);
  int dropped = 0;
  for (std::size_t c = 0; c < 10000; ++c) dropped += drops_out(1, 0, c, 0.3);
  CHECK(std::abs(dropped - 3000) < 200);
}

TEST_CASE("batch sampler: every pass over the data is a permutation") {
  batch_sampler s(5, 2, 3, 10, 5);
  std::vector<std::size_t> seen;
  for (int k = 0; k < 2; ++k)
    for (auto i : s.next()) seen.push_back(i);
  std::sort(seen.begin(), seen.end());
  std::vector<std::size_t> all(10);
  std::iota(all.begin(), all.end(), std::size_t{0});
  CHECK(seen == all);
  batch_sampler full(5, 2, 3, 10, 0);
  CHECK(full.next().size() == 10);
}

namespace {
void check_covers(const partition& parts, std::size_t n) {
  std::vector<std::size_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  std::sort(all.begin(), all.end());
  std::vector<std::size_t> expected(n);
  std::iota(expected.begin(), expected.end(), std::size_t{0});
  CHECK(all == expected);  // every sample exactly once
}
std::vector<int> ten_classes(std::size_t n) {
  std::vector<int> labels(n);
  for (std::size_t i = 0; i < n; ++i) labels[i] = int(i % 10);
  return labels;
}
double mean_classes_per_client(const partition& parts, const std::vector<int>& labels) {
  double total = 0;
  for (const auto& p : parts) {
    std::set<int> classes;
    for (auto i : p) classes.insert(labels[i]);
    total += double(classes.size());
  }
  return total / double(parts.size());
}
}  // namespace

TEST_CASE("partition_iid: balanced, complete, seeded") {
  const auto parts = partition_iid(103, 10, 1);
  check_covers(parts, 103);
  for (const auto& p : parts) CHECK((p.size() == 10 || p.size() == 11));
  CHECK(parts == partition_iid(103, 10, 1));
  CHECK(parts != partition_iid(103, 10, 2));
  CHECK_THROWS_AS(partition_iid(5, 10, 1), config_error);
}

TEST_CASE("partition_dirichlet: small alpha skews labels, large alpha does not") {
  const auto labels = ten_classes(5000);
  const auto skewed = partition_dirichlet(labels, 20, 0.1, 1);
  const auto mixed = partition_dirichlet(labels, 20, 100.0, 1);
  check_covers(skewed, 5000);
  check_covers(mixed, 5000);
  CHECK(skewed == partition_dirichlet(labels, 20, 0.1, 1));
  CHECK(mean_classes_per_client(skewed, labels) < 7.0);
  CHECK(mean_classes_per_client(mixed, labels) == doctest::Approx(10.0));
  CHECK_THROWS_AS(partition_dirichlet(labels, 20, 0.0, 1), config_error);
  CHECK_THROWS_AS(partition_dirichlet(labels, 20, -1.0, 1), config_error);
}

TEST_CASE("partition_dirichlet: any alpha > 0 gives every client its minimum") {
  const auto labels = ten_classes(5000);
  SUBCASE("alpha 1e-3: one class per client, no 0/0 from underflowing proportions") {
    std::size_t moved = 0;
    const auto parts = partition_dirichlet(labels, 20, 1e-3, 1, 1, &moved);
    check_covers(parts, 5000);
    for (const auto& p : parts) CHECK(p.size() >= 1);
    CHECK(parts == partition_dirichlet(labels, 20, 1e-3, 1));
    // Each class lands (almost) whole on one client: the 10 classes cover at most 10 clients,
    // the other clients hold what the top-up moved to them (from the largest client's last class).
    CHECK(moved >= 10);
    CHECK(mean_classes_per_client(parts, labels) <= 1.5);
  }
  SUBCASE("a minimum that needs many moves: 240 of the 250 per client at alpha 0.01") {
    std::size_t moved = 0;
    const auto parts = partition_dirichlet(labels, 20, 0.01, 1, 240, &moved);
    check_covers(parts, 5000);
    for (const auto& p : parts) CHECK(p.size() >= 240);
    CHECK(moved > 0);
    const auto msg =
        message_of<config_error>([&] { partition_dirichlet(labels, 20, 0.01, 1, 251); });
    CHECK(msg.find("at least 251") != std::string::npos);
    CHECK(msg.find("<= 250") != std::string::npos);
  }
  SUBCASE("100 clients on 150 samples at alpha 0.1") {
    const auto few = ten_classes(150);
    const auto parts = partition_dirichlet(few, 100, 0.1, 7);
    check_covers(parts, 150);
    for (const auto& p : parts) CHECK(p.size() >= 1);
  }
  SUBCASE("as many clients as samples: one each") {
    const auto few = ten_classes(64);
    for (const double alpha : {1e-3, 0.1, 100.0}) {
      const auto parts = partition_dirichlet(few, 64, alpha, 3);
      check_covers(parts, 64);
      for (const auto& p : parts) CHECK(p.size() == 1);
    }
    CHECK_THROWS_AS(partition_dirichlet(few, 65, 0.1, 3), config_error);
  }
  SUBCASE("min_per_client 0: the raw draw, empty clients allowed") {
    const auto parts = partition_dirichlet(labels, 50, 1e-3, 1, 0);
    check_covers(parts, 5000);
    CHECK(std::count_if(parts.begin(), parts.end(), [](const auto& p) { return p.empty(); }) > 0);
  }
}

TEST_CASE("top_up: the largest client gives its last-dealt samples, lowest id on ties") {
  partition parts{{0, 1, 2, 3, 4, 5}, {}, {6, 7, 8}, {9}};
  CHECK(detail::top_up(parts, 2) == 3);
  // client 1 takes 5 then 4 from client 0 (6 -> 5 -> 4 left); client 3 then takes from the largest:
  // client 0 (4 samples) over client 2 (3).
  CHECK(parts == partition{{0, 1, 2}, {5, 4}, {6, 7, 8}, {9, 3}});
  CHECK(detail::top_up(parts, 2) == 0);
}

TEST_CASE("partition_classes: each client holds k classes, every class is held") {
  const auto labels = ten_classes(1000);
  for (const std::size_t k : {std::size_t{1}, std::size_t{2}, std::size_t{3}}) {
    const auto parts = partition_classes(labels, 10, k, 5);
    check_covers(parts, 1000);
    for (const auto& p : parts) {
      std::set<int> classes;
      for (auto i : p) classes.insert(labels[i]);
      CHECK(classes.size() == k);
      // 10 clients x k classes: every class has k holders and is cut evenly, 100/k each
      CHECK(p.size() >= k * (100 / k));
      CHECK(p.size() <= k * ((100 + k - 1) / k));
    }
    CHECK(parts == partition_classes(labels, 10, k, 5));
  }
  SUBCASE("more holders than samples of a class: topped up to one each") {
    const auto few = ten_classes(30);
    const auto parts = partition_classes(few, 30, 1, 2);
    check_covers(parts, 30);
    for (const auto& p : parts) CHECK(p.size() == 1);
  }
  CHECK(message_of<config_error>([&] {
          partition_classes(labels, 4, 2, 5);
        }).find("cannot cover all 10") != std::string::npos);
  CHECK_THROWS_AS(partition_classes(labels, 10, 0, 5), config_error);
  CHECK(message_of<config_error>([&] { partition_classes(labels, 10, 11, 5); }).find("1..10") !=
        std::string::npos);
}

TEST_CASE("partition_shards: each client gets its shards of label-sorted data") {
  const auto labels = ten_classes(1000);
  const auto parts = partition_shards(labels, 10, 2, 3);
  check_covers(parts, 1000);
  for (const auto& p : parts) CHECK(p.size() == 100);
  CHECK(mean_classes_per_client(parts, labels) <= 2.0);
  CHECK_THROWS_AS(partition_shards(labels, 10, 0, 3), config_error);
}
