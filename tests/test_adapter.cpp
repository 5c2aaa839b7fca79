// adapter/: LoRA initialisation, scaling, forward and backward (against finite differences),
// merge/unmerge, and the adapter set.
#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

TEST_CASE("scaling follows PEFT: alpha / r, alpha / sqrt(r) with rsLoRA, per-module patterns") {
  lora_config c;
  c.r = 8;
  c.lora_alpha = 16;
  CHECK(c.scaling_for("q") == 2.0);
  c.use_rslora = true;
  CHECK(c.scaling_for("q") == doctest::Approx(16.0 / std::sqrt(8.0)));
  c.use_rslora = false;
  c.rank_pattern["v"] = 4;
  c.alpha_pattern["v"] = 32;
  CHECK(c.rank_for("v") == 4);
  CHECK(c.scaling_for("v") == 8.0);
  CHECK(c.rank_for("q") == 8);
}

TEST_CASE_TEMPLATE("make_lora: PEFT shapes, B = 0, A from the init stream", Backend,
                   ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  const auto l = make_lora<Backend>("q", 48, 64, 4, 2.0, lora_init::kaiming_uniform, 11);
  CHECK(l.rank() == 4);
  CHECK(l.in_features() == 64);
  CHECK(l.out_features() == 48);
  CHECK(l.scaling == T(2));
  const auto a = Backend::to_host(l.A), b = Backend::to_host(l.B);
  CHECK(a.rows() == 4);
  CHECK(a.cols() == 64);
  CHECK(b.rows() == 48);
  CHECK(b.cols() == 4);
  CHECK(b.cwiseAbs().maxCoeff() == T(0));
  // Kaiming-uniform with a = sqrt(5) on [r, in] is U(-1/sqrt(in), 1/sqrt(in)).
  CHECK(double(a.cwiseAbs().maxCoeff()) <= 1.0 / 8.0);
  CHECK(double(a.cwiseAbs().maxCoeff()) > 0.9 / 8.0);
  // Same seed, same values; float gets the double draws rounded, so the backends agree.
  const auto again = make_lora<Backend>("q", 48, 64, 4, 2.0, lora_init::kaiming_uniform, 11);
  CHECK((Backend::to_host(again.A).array() == a.array()).all());
  const auto in_double =
      make_lora<eigen_backend<double>>("q", 48, 64, 4, 2.0, lora_init::kaiming_uniform, 11);
  CHECK((in_double.A.template cast<T>().array() == a.array()).all());
  // Gaussian: std 1 / r, as PEFT's init_lora_weights="gaussian".
  const auto g =
      Backend::to_host(make_lora<Backend>("q", 8, 4096, 8, 1.0, lora_init::gaussian, 3).A);
  const double var = g.template cast<double>().squaredNorm() / double(g.size());
  CHECK(std::sqrt(var) == doctest::Approx(1.0 / 8.0).epsilon(0.02));
}

TEST_CASE_TEMPLATE("impossible ranks are refused with the allowed range", Backend,
                   ROLORA_TEST_BACKENDS) {
  auto msg = message_of<config_error>(
      [] { make_lora<Backend>("layers.0.q", 16, 8, 0, 1.0, lora_init::gaussian, 0); });
  CHECK(msg.find("layers.0.q") != std::string::npos);
  CHECK(msg.find("[1, 8]") != std::string::npos);
  CHECK(msg.find("r = 0") != std::string::npos);
  msg = message_of<config_error>(
      [] { make_lora<Backend>("v", 16, 8, 9, 1.0, lora_init::gaussian, 0); });
  CHECK(msg.find("r = 9") != std::string::npos);
}

namespace {
// A non-trivial adapter (B != 0) on a random base weight.
template <class Backend>
lora_adapter<Backend> test_adapter(index_t out, index_t in, index_t r) {
  auto l = make_lora<Backend>("m", out, in, r, 1.5, lora_init::gaussian, 5);
  l.B = test::random_backend_matrix<Backend>(out, r, 21, 0.5);
  return l;
}
}  // namespace

TEST_CASE_TEMPLATE("lora_forward computes W0 x + s B (A x)", Backend, ROLORA_TEST_BACKENDS) {
  const auto l = test_adapter<Backend>(6, 5, 2);
  const auto w0 = test::random_backend_matrix<Backend>(6, 5, 22);
  const auto x = test::random_backend_matrix<Backend>(5, 7, 23);
  lora_cache<Backend> cache;
  typename Backend::matrix y;
  lora_forward<Backend>(&w0, l, x, cache, y);
  const auto h = [](const auto& m) -> Eigen::MatrixXd {
    return Backend::to_host(m).template cast<double>();
  };
  const Eigen::MatrixXd expected = h(w0) * h(x) + double(l.scaling) * h(l.B) * (h(l.A) * h(x));
  CHECK((h(y) - expected).cwiseAbs().maxCoeff() < 100 * test::rounding_tolerance<Backend>());
  // Without a base weight: the adapter alone.
  lora_forward<Backend>(nullptr, l, x, cache, y);
  CHECK((h(y) - (expected - h(w0) * h(x))).cwiseAbs().maxCoeff() <
        100 * test::rounding_tolerance<Backend>());
  const auto wrong = test::random_backend_matrix<Backend>(4, 7, 24);
  CHECK_THROWS_AS(lora_forward<Backend>(&w0, l, wrong, cache, y), shape_error);
}

TEST_CASE("lora_backward matches central finite differences of L = sum(G .* y)") {
  using B = eigen_backend<double>;
  const index_t out = 5, in = 4, r = 2, n = 3;
  auto l = test_adapter<B>(out, in, r);
  auto w0 = test::random_matrix(out, in, 31);
  auto x = test::random_matrix(in, n, 32);
  const auto g = test::random_matrix(out, n, 33);  // upstream gradient dL/dy
  const auto loss = [&] {
    lora_cache<B> cache;
    B::matrix y;
    lora_forward<B>(&w0, l, x, cache, y);
    return y.cwiseProduct(g).sum();
  };
  lora_cache<B> cache;
  B::matrix y, dx;
  lora_forward<B>(&w0, l, x, cache, y);
  lora_gradients<B> grads;
  lora_backward<B>(&w0, l, x, cache, g, both_factors, grads, &dx);
  const double h = 1e-6;
  const auto fd = [&](Eigen::MatrixXd& m, const Eigen::MatrixXd& analytic) {
    for (index_t i = 0; i < m.size(); ++i) {
      const double keep = m.data()[i];
      m.data()[i] = keep + h;
      const double up = loss();
      m.data()[i] = keep - h;
      const double down = loss();
      m.data()[i] = keep;
      CHECK(analytic.data()[i] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-7));
    }
  };
  fd(l.A, grads.dA);
  fd(l.B, grads.dB);
  fd(x, dx);
  // A frozen factor costs nothing: its gradient is not touched.
  lora_gradients<B> only_b_grads;
  lora_backward<B>(&w0, l, x, cache, g, only_b, only_b_grads);
  CHECK(only_b_grads.dA.size() == 0);
  CHECK((only_b_grads.dB - grads.dB).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE_TEMPLATE("merge and unmerge: merged outputs equal adapted outputs", Backend,
                   ROLORA_TEST_BACKENDS) {
  const auto l = test_adapter<Backend>(6, 5, 2);
  const auto w0 = test::random_backend_matrix<Backend>(6, 5, 41);
  const auto x = test::random_backend_matrix<Backend>(5, 4, 42);
  lora_cache<Backend> cache;
  typename Backend::matrix y_adapted, y_merged;
  lora_forward<Backend>(&w0, l, x, cache, y_adapted);
  auto merged = w0;
  merge_into_base(merged, l);
  Backend::gemm(typename Backend::scalar(1), merged, op::none, x, op::none,
                typename Backend::scalar(0), y_merged);
  const double tol = 100 * test::rounding_tolerance<Backend>();
  CHECK(test::max_abs_diff<Backend>(y_adapted, y_merged) < tol);
  auto d = w0;
  Backend::axpy(typename Backend::scalar(1), delta(l), d);
  CHECK(test::max_abs_diff<Backend>(d, merged) < tol);  // merge adds delta() = s B A
  unmerge_from_base(merged, l);
  CHECK(test::max_abs_diff<Backend>(merged, w0) < tol);
  auto wrong = Backend::zeros(5, 6);
  CHECK_THROWS_AS(merge_into_base(wrong, l), shape_error);
}

TEST_CASE_TEMPLATE("adapter_set: one adapter per module, deterministic order and init", Backend,
                   ROLORA_TEST_BACKENDS) {
  lora_config c;
  c.r = 4;
  c.lora_alpha = 8;
  c.rank_pattern["v"] = 2;
  const std::vector<module_shape> modules{{"v", 16, 32}, {"q", 16, 32}, {"fc1", 64, 32}};
  const adapter_set<Backend> set(modules, c, 99);
  std::vector<std::string> names;
  for (const auto& [name, a] : set) names.push_back(name);
  CHECK(names == std::vector<std::string>{"fc1", "q", "v"});
  CHECK(set.at("v").rank() == 2);
  CHECK(double(set.at("v").scaling) == 4.0);
  CHECK(set.at("fc1").out_features() == 64);
  CHECK(set.num_parameters(only_a) == std::size_t(4 * 32 + 4 * 32 + 2 * 32));
  CHECK(set.num_parameters(only_b) == std::size_t(64 * 4 + 16 * 4 + 16 * 2));
  CHECK(set.bytes(both_factors) ==
        set.num_parameters(both_factors) * sizeof(typename Backend::scalar));
  // Listing order does not matter: the same names give the same adapters.
  const adapter_set<Backend> reordered({{"fc1", 64, 32}, {"q", 16, 32}, {"v", 16, 32}}, c, 99);
  CHECK(test::bit_equal(set, reordered));
  // Modules draw from distinct sub-streams.
  CHECK(test::max_abs_diff<Backend>(set.at("q").A, reordered.at("fc1").A) > 0.0);
  CHECK_THROWS_AS(adapter_set<Backend>({{"q", 4, 4}, {"q", 4, 4}}, c, 1), config_error);
  CHECK(message_of<config_error>([&] { (void)set.at("k"); }).find("'k'") != std::string::npos);
}
