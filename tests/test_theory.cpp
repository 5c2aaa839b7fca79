// theory/: the linear-regression model of the RoLoRA paper and the four properties of DESIGN
// section 1 that must hold, asserted with numbers the tests compute.
#include "test_support.hpp"

using namespace rolora;
using namespace rolora::theory;

namespace {

template <class Backend>
double sin_floor() {  // below this, sin theta is rounding noise of the backend's precision
  return std::is_same_v<typename Backend::scalar, float> ? 1e-4 : 1e-10;
}

linear_problem_config homogeneous(index_t rank, std::size_t samples) {
  linear_problem_config c;
  c.dim = 40;
  c.out_dim = 10;
  c.rank = rank;
  c.clients = 5;
  c.samples = samples;
  c.seed = 11;
  return c;
}

}  // namespace

TEST_CASE("subspace distance keeps its digits for tiny angles and matches constructed angles") {
  const auto ref = theory::detail::orthonormal_rows(test::random_matrix(3, 20, 1));
  for (double delta : {0.9, 0.3, 1e-4, 1e-9, 1e-13}) {
    const auto a = initial_a(ref, delta, 4);
    CHECK(subspace_distance(a, ref) == doctest::Approx(delta).epsilon(1e-6));
    // The row space is what counts: any invertible mix of the rows has the same distance.
    const Eigen::MatrixXd mixed = test::random_matrix(3, 3, 2) * a;
    CHECK(subspace_distance(mixed, ref) == doctest::Approx(delta).epsilon(1e-3));
  }
  CHECK(subspace_distance(ref, ref) < 1e-15);
}

TEST_CASE_TEMPLATE("linear task: gradients match finite differences, solve_b is least squares",
                   Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  linear_problem_config c = homogeneous(2, 30);
  c.dim = 6;
  c.out_dim = 4;
  c.noise = 0.1;
  auto p = make_linear_problem<Backend>(c);
  auto& task = p.clients[0];
  adapter_set<Backend> set;
  set.insert(module_name, {test::random_backend_matrix<Backend>(2, 6, 3),
                           test::random_backend_matrix<Backend>(4, 2, 4), T(1)});
  std::vector<std::size_t> batch{0, 3, 7, 8, 20};
  gradient_set<Backend> grads;
  const double value = task.loss_and_grad(set, batch, both_factors, grads);
  // Finite differences, in double on the host, of the minibatch loss.
  const Eigen::MatrixXd x = Backend::to_host(task.inputs()).template cast<double>();
  const Eigen::MatrixXd y = Backend::to_host(task.targets()).template cast<double>();
  Eigen::MatrixXd a = Backend::to_host(set.at(module_name).A).template cast<double>();
  Eigen::MatrixXd b = Backend::to_host(set.at(module_name).B).template cast<double>();
  const auto loss = [&] {
    double sum = 0;
    for (auto j : batch) sum += (b * a * x.col(index_t(j)) - y.col(index_t(j))).squaredNorm();
    return sum / (2.0 * double(batch.size()));
  };
  const double tol = std::is_same_v<T, float> ? 1e-3 : 1e-7;
  CHECK(value == doctest::Approx(loss()).epsilon(tol));
  const auto fd = [&](Eigen::MatrixXd& m, const typename Backend::matrix& analytic) {
    const Eigen::MatrixXd g = Backend::to_host(analytic).template cast<double>();
    for (index_t i = 0; i < m.size(); ++i) {
      const double keep = m.data()[i], h = 1e-6;
      m.data()[i] = keep + h;
      const double up = loss();
      m.data()[i] = keep - h;
      const double down = loss();
      m.data()[i] = keep;
      CHECK(g.data()[i] == doctest::Approx((up - down) / (2 * h)).epsilon(tol));
    }
  };
  fd(a, grads[module_name].dA);
  fd(b, grads[module_name].dB);
  // solve_b: the normal equations B (A X)(A X)^T = Y (A X)^T hold.
  task.solve_b(set);
  b = Backend::to_host(set.at(module_name).B).template cast<double>();
  const Eigen::MatrixXd z = a * x;
  const Eigen::MatrixXd residual = b * z * z.transpose() - y * z.transpose();
  CHECK(residual.cwiseAbs().maxCoeff() <
        (std::is_same_v<T, float> ? 1e-3 : 1e-10) * (y * z.transpose()).cwiseAbs().maxCoeff());
}

// (1) RoLoRA: sin theta contracts at least as fast as Theorem 4.5's bound, and reaches 1e-6.
TEST_CASE_TEMPLATE("RoLoRA-linear contracts at least as fast as the Theorem 4.5 bound", Backend,
                   ROLORA_TEST_BACKENDS) {
  for (index_t rank : {1, 3}) {
    for (std::optional<double> angle : {std::optional<double>(0.9), std::optional<double>()}) {
      auto p = make_linear_problem<Backend>(homogeneous(rank, 400));
      method_options o;
      o.iterations = 60;
      o.eta = 0.9;  // sigma_max(B*) = 1: any eta <= 1 is a safe step
      o.init_angle = angle;
      const auto records = run_method(p, method::rolora, o);
      const double delta0 = records[0].sin_theta;
      const double bound = theorem_4_5_rate(o.eta, delta0, sigma_min(p.b_star));
      double worst = 0;
      std::size_t reached = 0;
      for (std::size_t t = 0; t + 1 < records.size(); ++t) {
        if (records[t].sin_theta > sin_floor<Backend>()) {
          worst = std::max(worst, records[t + 1].sin_theta / records[t].sin_theta);
        }
        if (!reached && records[t + 1].sin_theta < 1e-6) reached = t + 1;
      }
      MESSAGE("rank ", rank, ", delta0 ", delta0, ": bound ", bound,
              ", worst measured contraction ", worst, ", final sin theta ",
              records.back().sin_theta, ", below 1e-6 at iteration ", reached);
      CHECK(worst <= bound);
      CHECK(worst < 1.0);
      if constexpr (std::is_same_v<typename Backend::scalar, double>) {
        CHECK(records.back().sin_theta < 1e-8);
        CHECK(reached > 0);
        CHECK(reached <= 50);
      } else {
        CHECK(records.back().sin_theta < 1e-5);
      }
    }
  }
}

// (2) FFA-LoRA: the loss stalls at ||B*||^2 (1 - cos^2 theta(A0, A*)) / 2 and the error stays.
TEST_CASE("FFA-LoRA-linear stalls at the closed-form floor of Proposition 4.6") {
  using B = eigen_backend<double>;
  linear_problem_config c = homogeneous(1, 4000);
  c.dim = 20;
  c.out_dim = 5;
  auto p = make_linear_problem<B>(c);
  method_options o;
  o.iterations = 10;
  const auto records = run_method(p, method::ffa, o);
  const auto a0 = initial_a(p.reference_rows(), o.init_angle, o.seed);
  // r = 1 form of the floor, from the angle directly, against the general projection form.
  const double cos_theta = std::abs(a0.row(0).dot(p.a_star.row(0)));
  const double floor_r1 = p.b_star.squaredNorm() * (1 - cos_theta * cos_theta) / 2;
  const double floor = ffa_loss_floor(p, a0);
  CHECK(floor == doctest::Approx(floor_r1).epsilon(1e-12));
  MESSAGE("FFA floor ", floor, ", final loss ", records.back().loss, ", ratio ",
          records.back().loss / floor);
  CHECK(records.back().loss == doctest::Approx(floor).epsilon(0.03));
  for (const auto& r : records) {
    CHECK(r.sin_theta == doctest::Approx(records[0].sin_theta).epsilon(1e-12));  // A never moves
    if (r.iteration > 0) CHECK(r.loss > 0.9 * floor);
  }
  // RoLoRA on the same problem goes far below that floor.
  o.iterations = 30;
  CHECK(run_method(p, method::rolora, o).back().loss < 1e-6 * floor);
}

// (3) Heterogeneous targets: RoLoRA approaches the Eckart-Young optimum (gap ~ 1/sqrt(m)); FedIT
// with several local steps ends measurably farther from it.
TEST_CASE("heterogeneous targets: RoLoRA reaches the best rank-r approximation, FedIT does not") {
  using B = eigen_backend<double>;
  double rolora_gap[2] = {0, 0}, fedit_gap = 0;
  const std::size_t samples[2] = {500, 8000};
  for (int k = 0; k < 2; ++k) {
    linear_problem_config c;
    c.dim = 30;
    c.out_dim = 10;
    c.rank = 2;
    c.clients = 10;
    c.samples = samples[k];
    c.heterogeneous = true;
    c.heterogeneity = 1.0;
    c.seed = 5;
    auto p = make_linear_problem<B>(c);
    method_options o;
    o.iterations = 60;
    o.eta = 0.5;
    o.local_steps = 5;
    rolora_gap[k] = run_method(p, method::rolora, o).back().gap_to_optimum;
    if (k == 1) fedit_gap = run_method(p, method::fedit, o).back().gap_to_optimum;
  }
  MESSAGE("gap to Eckart-Young: RoLoRA m=500 ", rolora_gap[0], ", m=8000 ", rolora_gap[1],
          "; FedIT (tau=5) m=8000 ", fedit_gap);
  CHECK(rolora_gap[1] < rolora_gap[0] / 2.5);  // 1/sqrt(m): a factor 4 for 16x the samples
  CHECK(rolora_gap[1] < 0.05);
  CHECK(fedit_gap > 2 * rolora_gap[1]);
}

// (4) Exactness along whole runs: RoLoRA's and FFA-LoRA's aggregated products equal the mean of
// the clients' products to rounding; FedIT's do not.
TEST_CASE_TEMPLATE(
    "aggregation error along whole runs: zero for RoLoRA and FFA-LoRA, not for FedIT", Backend,
    ROLORA_TEST_BACKENDS) {
  auto p = make_linear_problem<Backend>(homogeneous(2, 200));
  method_options o;
  o.iterations = 8;
  o.local_steps = 3;
  const auto worst = [&](method m) {
    double e = 0;
    for (const auto& r : run_method(p, m, o)) e = std::max(e, r.aggregation_error);
    return e;
  };
  const double scale = p.b_star.norm();  // the products are O(||B*||)
  const double tol = test::rounding_tolerance<Backend>() * scale;
  CHECK(worst(method::rolora) < tol);
  CHECK(worst(method::ffa) < tol);
  CHECK(worst(method::fedit) > 1e-3 * scale);
}

TEST_CASE("bad theory configurations are refused") {
  using B = eigen_backend<double>;
  linear_problem_config c;
  c.rank = 0;
  CHECK_THROWS_AS(make_linear_problem<B>(c), config_error);
  c.rank = 20;
  c.out_dim = 10;
  CHECK_THROWS_AS(make_linear_problem<B>(c), config_error);
  c.rank = 1;
  c.noise = -1;
  CHECK_THROWS_AS(make_linear_problem<B>(c), config_error);
  CHECK_THROWS_AS(initial_a(test::random_matrix(1, 10, 3), 1.5, 0), config_error);
}

TEST_CASE("users' data: the reference is the exact rank-r minimiser of the empirical loss") {
  using backend = eigen_backend<double>;
  // Anisotropic inputs (so the whitening matters), 3 clients with different sample counts.
  std::vector<host> xs, ys;
  const host mix = 0.2 * test::random_matrix<double>(6, 6, 40) + host::Identity(6, 6);
  const host w_true = 0.3 * test::random_matrix<double>(4, 6, 41);
  for (std::uint32_t i = 0; i < 3; ++i) {
    const host x = mix * test::random_matrix<double>(6, index_t(30 + 10 * i), 42 + i);
    xs.push_back(x);
    ys.push_back(w_true * x + 0.1 * test::random_matrix<double>(4, x.cols(), 50 + i));
  }
  const auto p = linear_problem_from_data<backend>(xs, ys, 2);
  CHECK(p.from_data);
  CHECK(p.config.samples == 30);
  const auto loss_at = [&](const host& w) {
    double f = 0;
    for (std::size_t i = 0; i < 3; ++i)
      f += (ys[i] - w * xs[i]).squaredNorm() / (2.0 * double(xs[i].cols())) / 3.0;
    return f;
  };
  const host& w_opt = p.optimum.matrix;
  CHECK(Eigen::JacobiSVD<host>(w_opt).singularValues()(2) < 1e-10);  // rank 2
  CHECK(optimal_loss(p) == doctest::Approx(loss_at(w_opt)).epsilon(1e-12));
  // No rank-2 matrix near it does better (first- and second-order optimality along the rank-2
  // manifold), and the unwhitened truncation of the least-squares fit is worse.
  const Eigen::JacobiSVD<host> svd(w_opt, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const host u = svd.matrixU().leftCols(2) * svd.singularValues().head(2).asDiagonal(),
             v = svd.matrixV().leftCols(2);
  for (std::uint32_t k = 0; k < 8; ++k) {
    const host du = 1e-3 * test::random_matrix<double>(4, 2, 60 + k),
               dv = 1e-3 * test::random_matrix<double>(6, 2, 70 + k);
    CHECK(loss_at((u + du) * (v + dv).transpose()) >= loss_at(w_opt) - 1e-13);
  }
  CHECK(loss_at(best_rank_r(p.mean_target, 2).matrix) > loss_at(w_opt) + 1e-6);
  CHECK(subspace_distance(best_rank_r(w_opt, 2).right_vectors, p.reference_rows()) < 1e-10);

  // No method gets below that optimum; RoLoRA ends near it (not at it: each client's exact B is
  // fitted to its own data, and their mean is not the global least-squares B).
  method_options o;
  o.iterations = 60;
  o.eta = 0.5;
  for (const auto m : {method::rolora, method::ffa, method::fedit}) {
    auto q = p;
    const auto h = run_method(q, m, o);
    CHECK(h.back().loss >= optimal_loss(p) - 1e-12);
    if (m == method::rolora) {
      CHECK(h.back().gap_to_optimum < 0.05);
      CHECK(h.back().sin_theta < 0.05);
    }
  }

  std::vector<host> collinear{host::Ones(3, 10)}, one_target{host::Ones(1, 10)};
  const auto msg = test::message_of<config_error>(
      [&] { linear_problem_from_data<backend>(collinear, one_target, 1); });
  CHECK(msg.find("do not span all 3 dimensions") != std::string::npos);
  std::vector<host> wrong{host::Ones(1, 9)};
  CHECK_THROWS_AS(linear_problem_from_data<backend>(collinear, wrong, 1), shape_error);
}
