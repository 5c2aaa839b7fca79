// Thrust-only tests of the OpenMP flavour: GEMM against a long-double reference for every
// transposition and odd sizes, the same bits for any thread count, bit-identical initialisation,
// sampling and r x r factorisations against Eigen, element-wise ops, and the errors.
//
// Tolerances: GEMM, per element, |c - c_ref| <= 2 (k + 2) eps_T (|alpha| (|op(a)| |op(b)|)_ij
// + |beta c0_ij|), the classical bound for a sum of k products in T (Higham, Thm 3.5) with a
// factor 2 of slack; a federated run against Eigen: 1e-4 (float) / 1e-10 (double) relative, the
// two summation orders compounded over rounds.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

#define ROLORA_THRUST_OMP_TYPES \
  rolora::thrust_omp_backend<float>, rolora::thrust_omp_backend<double>

namespace {

// alpha op(a) op(b) + beta c0 in long double, and the error bound of each element.
struct gemm_reference {
  Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> value, bound;
  long double k;

  template <class T>
  gemm_reference(T alpha, const host_matrix<T>& opa, const host_matrix<T>& opb, T beta,
                 const host_matrix<T>& c0)
      : k((long double)opa.cols()) {
    const auto wa = opa.template cast<long double>(), wb = opb.template cast<long double>();
    value = (long double)alpha * wa * wb;
    bound = std::abs((long double)alpha) * wa.cwiseAbs() * wb.cwiseAbs();
    if (beta != T(0)) {
      value += (long double)beta * c0.template cast<long double>();
      bound += std::abs((long double)beta) * c0.template cast<long double>().cwiseAbs();
    }
  }

  // Checks c within 2 (k + 2) eps_T bound, element by element.
  template <class T>
  void check(const host_matrix<T>& c) const {
    const long double eps = std::numeric_limits<T>::epsilon();
    REQUIRE(c.rows() == value.rows());
    REQUIRE(c.cols() == value.cols());
    long double worst = 0;  // largest error / tolerance
    for (index_t i = 0; i < c.size(); ++i) {
      const long double err = std::abs((long double)c.data()[i] - value.data()[i]);
      const long double tol = 2 * (k + 2) * eps * bound.data()[i];
      worst = std::max(worst, tol > 0 ? err / tol : (err > 0 ? 1e30L : 0.0L));
    }
    CHECK(double(worst) <= 1.0);
  }
};

}  // namespace

TEST_CASE("thrust_omp: the Thrust backends model the backend concept") {
  static_assert(backend<thrust_omp_backend<float>> && backend<thrust_omp_backend<double>>);
  static_assert(backend<thrust_cpp_backend<float>> && backend<thrust_backend<double>>);
  CHECK(thrust_omp_backend<float>::name == "thrust_omp");
  CHECK(thrust_cpp_backend<double>::name == "thrust_cpp");
  // THRUST_DEVICE_SYSTEM is OMP in this build: the default system is the OpenMP one.
  CHECK(thrust_backend<float>::name == "thrust_omp");
}

TEST_CASE_TEMPLATE(
    "thrust_omp: gemm matches a long-double reference for every transposition and odd sizes",
    Backend, ROLORA_THRUST_OMP_TYPES) {
  using T = typename Backend::scalar;
  // {m, k, n}: tiny, odd, across every tile edge (tile_m 128/64, tile_n 96, tile_k 256), k = 0,
  // and empty results.
  const std::vector<std::array<index_t, 3>> sizes{
      {1, 1, 1}, {37, 53, 29}, {129, 257, 97}, {200, 600, 13}, {5, 0, 3}, {0, 4, 3}, {3, 4, 0}};
  std::uint32_t tag = 0;
  for (const auto& [m, k, n] : sizes) {
    const host_matrix<T> opa = test::random_matrix<T>(m, k, ++tag);
    const host_matrix<T> opb = test::random_matrix<T>(k, n, ++tag);
    const host_matrix<T> c0 = test::random_matrix<T>(m, n, ++tag);
    const gemm_reference beta0(T(1.5), opa, opb, T(0), c0), beta1(T(-0.5), opa, opb, T(1), c0),
        beta_other(T(-0.5), opa, opb, T(-0.75), c0);
    for (const op op_a : {op::none, op::transpose}) {
      for (const op op_b : {op::none, op::transpose}) {
        CAPTURE(m);
        CAPTURE(k);
        CAPTURE(n);
        CAPTURE(int(op_a));
        CAPTURE(int(op_b));
        const auto a = Backend::from_host(op_a == op::none ? opa : host_matrix<T>(opa.transpose()));
        const auto b = Backend::from_host(op_b == op::none ? opb : host_matrix<T>(opb.transpose()));
        // beta = 0: c of the wrong shape, full of NaN, is resized and never read.
        auto c =
            Backend::from_host(host_matrix<T>::Constant(2, 7, std::numeric_limits<T>::quiet_NaN()));
        Backend::gemm(T(1.5), a, op_a, b, op_b, T(0), c);
        beta0.check(Backend::to_host(c));
        // beta = 1 and beta = -0.75 accumulate into c.
        c = Backend::from_host(c0);
        Backend::gemm(T(-0.5), a, op_a, b, op_b, T(1), c);
        beta1.check(Backend::to_host(c));
        c = Backend::from_host(c0);
        Backend::gemm(T(-0.5), a, op_a, b, op_b, T(-0.75), c);
        beta_other.check(Backend::to_host(c));
      }
    }
  }
}

TEST_CASE_TEMPLATE(
    "thrust_omp: gemm and dot give the same bits for 1 and 2 threads and on the cpp system",
    Backend, ROLORA_THRUST_OMP_TYPES) {
  using T = typename Backend::scalar;
  using Cpp = thrust_cpp_backend<T>;
  // Large enough to run in parallel (m n k > 2^20 multiply-adds, many tiles), odd on purpose.
  const host_matrix<T> a = test::random_matrix<T>(301, 517, 1),
                       b = test::random_matrix<T>(203, 517, 2);
  const host_matrix<T> x = test::random_matrix<T>(777, 55, 3),
                       y = test::random_matrix<T>(777, 55, 4);
  const int threads_before = omp_get_max_threads();
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    typename Backend::matrix c;
    Backend::gemm(T(1), Backend::from_host(a), op::none, Backend::from_host(b), op::transpose, T(0),
                  c);
    const T d = Backend::dot(Backend::from_host(x), Backend::from_host(y));
    return std::pair{Backend::to_host(c), d};
  };
  const auto [c1, d1] = run(1);
  const auto [c2, d2] = run(2);
  const auto [c3, d3] = run(3);
  omp_set_num_threads(threads_before);
  typename Cpp::matrix c_cpp;
  Cpp::gemm(T(1), Cpp::from_host(a), op::none, Cpp::from_host(b), op::transpose, T(0), c_cpp);
  CHECK((c1.array() == c2.array()).all());
  CHECK((c1.array() == c3.array()).all());
  CHECK((c1.array() == Cpp::to_host(c_cpp).array()).all());
  CHECK(d1 == d2);
  CHECK(d1 == d3);
  CHECK(d1 == Cpp::dot(Cpp::from_host(x), Cpp::from_host(y)));
  gemm_reference(T(1), a, host_matrix<T>(b.transpose()), T(0), c1).check(c1);
  CHECK(double(d1) ==
        doctest::Approx(
            double(x.template cast<double>().cwiseProduct(y.template cast<double>()).sum()))
            .epsilon(1e-5));
}

TEST_CASE_TEMPLATE("thrust_omp: element-wise ops, dot and all_finite agree with Eigen", Backend,
                   ROLORA_THRUST_OMP_TYPES) {
  using T = typename Backend::scalar;
  using E = eigen_backend<T>;
  const host_matrix<T> x = test::random_matrix<T>(13, 7, 1), y = test::random_matrix<T>(13, 7, 2);
  auto ty = Backend::from_host(y);
  auto ey = y;
  Backend::axpy(T(0.3), Backend::from_host(x), ty);
  E::axpy(T(0.3), x, ey);
  CHECK((Backend::to_host(ty).array() == ey.array()).all());  // one multiply-add per element
  Backend::scale(T(-2.5), ty);
  E::scale(T(-2.5), ey);
  CHECK((Backend::to_host(ty).array() == ey.array()).all());
  CHECK(double(Backend::dot(Backend::from_host(x), Backend::from_host(y))) ==
        doctest::Approx(double(E::dot(x, y))).epsilon(test::rounding_tolerance<Backend>()));
  CHECK(Backend::all_finite(Backend::from_host(x)));
  for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                      -std::numeric_limits<T>::infinity()}) {
    host_matrix<T> h = x;
    h(12, 6) = bad;
    CHECK_FALSE(Backend::all_finite(Backend::from_host(h)));
  }
  CHECK(Backend::all_finite(Backend::zeros(0, 3)));

  // AdamW against eigen_backend, several steps (both compute the same formula in T).
  auto tp = Backend::from_host(x), tm = Backend::zeros(13, 7), tv = Backend::zeros(13, 7);
  host_matrix<T> ep = x, em = E::zeros(13, 7), ev = E::zeros(13, 7);
  for (int t = 1; t <= 3; ++t) {
    const adamw_coefficients<T> k{T(0.01),
                                  T(0.9),
                                  T(0.999),
                                  T(1e-8),
                                  T(0.1),
                                  T(1 - std::pow(0.9, t)),
                                  T(1 - std::pow(0.999, t))};
    const host_matrix<T> g = test::random_matrix<T>(13, 7, std::uint32_t(10 + t));
    Backend::adamw_update(tp, Backend::from_host(g), tm, tv, k);
    E::adamw_update(ep, g, em, ev, k);
  }
  CHECK(test::max_abs_diff<E>(Backend::to_host(tp), ep) <= 4 * std::numeric_limits<T>::epsilon());
}

TEST_CASE_TEMPLATE("thrust_omp: orthonormalize_rows and solve_spd_right give Eigen's bits", Backend,
                   ROLORA_THRUST_OMP_TYPES) {
  using T = typename Backend::scalar;
  using E = eigen_backend<T>;
  const host_matrix<T> a = test::random_matrix<T>(3, 11, 5);
  auto ta = Backend::from_host(a);
  host_matrix<T> ea = a;
  const auto tl = Backend::orthonormalize_rows(ta);
  const auto el = E::orthonormalize_rows(ea);
  CHECK((Backend::to_host(ta).array() == ea.array()).all());
  CHECK((Backend::to_host(tl).array() == el.array()).all());
  CHECK((el.diagonal().array() > T(0)).all());

  const host_matrix<T> m = test::random_matrix<T>(3, 5, 6);
  const host_matrix<T> g = m * m.transpose();
  const host_matrix<T> rhs = test::random_matrix<T>(4, 3, 7);
  auto tx = Backend::from_host(rhs);
  host_matrix<T> ex = rhs;
  Backend::solve_spd_right(Backend::from_host(g), tx);
  E::solve_spd_right(g, ex);
  CHECK((Backend::to_host(tx).array() == ex.array()).all());
  // Not positive definite: value_error, x unchanged.
  const auto before = Backend::to_host(tx);
  CHECK_THROWS_AS(Backend::solve_spd_right(Backend::zeros(3, 3), tx), value_error);
  CHECK((Backend::to_host(tx).array() == before.array()).all());
  // r > n: shape_error, a unchanged.
  auto wide_a = Backend::from_host(test::random_matrix<T>(4, 3, 8));
  const auto wide_before = Backend::to_host(wide_a);
  CHECK_THROWS_AS(Backend::orthonormalize_rows(wide_a), shape_error);
  CHECK((Backend::to_host(wide_a).array() == wide_before.array()).all());
}

namespace {

template <class Backend>
std::vector<round_report> run_linear(adapter_set<Backend>* final_state) {
  theory::linear_problem_config pc;
  pc.dim = 12;
  pc.out_dim = 10;
  pc.rank = 2;
  pc.clients = 8;
  pc.samples = 40;
  pc.noise = 0.01;
  pc.seed = 3;
  auto problem = theory::make_linear_problem<Backend>(pc);
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 2.0;
  federation_config config;
  config.num_rounds = 6;
  config.local_steps = 3;
  config.batch_size = 16;
  config.clients_per_round = 5;
  config.client_dropout = 0.2;
  config.local_optimizer = adamw{0.05};
  config.seed = 77;
  federation<Backend, alternating, fedavg> fed(
      alternating{}, fedavg{}, config,
      adapter_set<Backend>({{theory::module_name, pc.out_dim, pc.dim}}, lc, 5));
  auto reports = fed.run(problem.clients);
  *final_state = fed.global();
  return reports;
}

}  // namespace

TEST_CASE_TEMPLATE(
    "thrust_omp: same seed as Eigen: bit-identical adapters and client sampling, close results",
    Backend, ROLORA_THRUST_OMP_TYPES) {
  using T = typename Backend::scalar;
  using E = eigen_backend<T>;
  lora_config c;
  c.r = 4;
  c.lora_alpha = 8.0;
  c.init_lora_weights = lora_init::gaussian;
  const std::vector<module_shape> modules{{"q", 24, 16}, {"v", 24, 16}, {"o", 16, 24}};
  for (const auto init : {lora_init::kaiming_uniform, lora_init::gaussian}) {
    c.init_lora_weights = init;
    const adapter_set<Backend> t(modules, c, 2024);
    const adapter_set<E> e(modules, c, 2024);
    for (const auto& [name, l] : e) {
      CHECK((Backend::to_host(t.at(name).A).array() == l.A.array()).all());
      CHECK((Backend::to_host(t.at(name).B).array() == l.B.array()).all());
      CHECK(t.at(name).scaling == l.scaling);
    }
  }

  adapter_set<Backend> t_final;
  adapter_set<E> e_final;
  const auto t_reports = run_linear<Backend>(&t_final);
  const auto e_reports = run_linear<E>(&e_final);
  REQUIRE(t_reports.size() == e_reports.size());
  for (std::size_t r = 0; r < t_reports.size(); ++r) {
    CHECK(t_reports[r].participants == e_reports[r].participants);
    CHECK(t_reports[r].dropped == e_reports[r].dropped);
    CHECK(
        t_reports[r].train_loss ==
        doctest::Approx(e_reports[r].train_loss).epsilon(std::is_same_v<T, float> ? 1e-4 : 1e-10));
  }
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  for (const auto& [name, l] : e_final) {
    const host_matrix<double> ea = l.A.template cast<double>(), eb = l.B.template cast<double>();
    CHECK((Backend::to_host(t_final.at(name).A).template cast<double>() - ea).norm() <=
          tol * ea.norm());
    CHECK((Backend::to_host(t_final.at(name).B).template cast<double>() - eb).norm() <=
          tol * eb.norm());
  }
}

TEST_CASE_TEMPLATE("thrust_omp: errors name what was expected and what came", Backend,
                   ROLORA_THRUST_OMP_TYPES) {
  using T = typename Backend::scalar;
  const auto a = Backend::zeros(3, 4), b = Backend::zeros(5, 2);
  auto c = Backend::zeros(3, 2);
  CHECK(message_of<shape_error>([&] { Backend::gemm(T(1), a, op::none, b, op::none, T(0), c); }) ==
        "[rolora.shape_error] gemm: inner dimensions differ: op(a) is [3, 4], op(b) is [5, 2]");
  auto wrong = Backend::zeros(2, 2);
  CHECK(message_of<shape_error>([&] {
          Backend::gemm(T(1), a, op::transpose, a, op::none, T(1), wrong);
        }) == "[rolora.shape_error] gemm: c expected [4, 4], got [2, 2]");
  CHECK(message_of<shape_error>([&] { Backend::axpy(T(1), a, c); }) ==
        "[rolora.shape_error] axpy: shapes differ: [3, 4] vs [3, 2]");
  CHECK(message_of<shape_error>([] { Backend::zeros(-1, 2); }) ==
        "[rolora.shape_error] thrust_matrix: extents must be non-negative, got [-1, 2]");
  // 2^20 x 2^20 elements: terabytes, more than this machine has; the message gives the bytes.
  const index_t huge = index_t(1) << 20;
  const std::string bytes = std::to_string((std::uint64_t(1) << 40) * sizeof(T));
  const std::string oom = message_of<device_error>([&] { Backend::zeros(huge, huge); });
  CHECK(oom.find("[rolora.out_of_memory] thrust_omp: allocating a [1048576, 1048576] matrix of") ==
        0);
  CHECK(oom.find("(" + bytes + " bytes) failed") != std::string::npos);
  // More bytes than size_t can count.
  CHECK(message_of<device_error>([&] {
          Backend::zeros(huge << 22, huge << 20);
        }).find("needs more bytes than size_t can count") != std::string::npos);
  CHECK(std::is_base_of_v<error, device_error>);
}
