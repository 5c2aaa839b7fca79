// The linear-regression model of the RoLoRA paper (Chen et al. 2024, section 4), generalised to
// rank r, and its closed-form references.
//
// Client i holds X_i with m i.i.d. N(0, I_d) samples and targets Y_i = W*_i X_i (+ noise), where
// W*_i = B*_i A*_i, A* [r, d] has orthonormal rows and B* [k, r]. Homogeneous: every W*_i = B* A*.
// The model is one adapter with no base weight and scaling 1: prediction B A x.
// Loss f_i(A, B) = ||Y_i - B A X_i||_F^2 / (2 m) (samples as columns), global f = sum_i w_i f_i.
// With isotropic X, the population loss is f_i = ||W*_i - B A||_F^2 / 2 (+ k sigma^2 / 2).
#pragma once
#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/backend/eigen/backend.hpp>  // detail::orthonormalize_rows_host
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/privacy/per_example.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora::theory {

inline const std::string module_name = "linear";

struct linear_problem_config {
  index_t dim = 100;          // d, input features
  index_t out_dim = 10;       // k, outputs
  index_t rank = 1;           // r, of the targets and of the adapter
  std::size_t clients = 10;   // K
  std::size_t samples = 500;  // m, per client
  double noise = 0.0;         // sigma of the additive N(0, sigma^2) noise on Y
  bool heterogeneous = false;
  double heterogeneity = 1.0;  // how far each client's A*_i and B*_i stray from A*, B*
  std::uint64_t seed = 0;
};

using host = host_matrix<double>;

namespace detail {

inline host gaussian(index_t rows, index_t cols, const random_stream& rs, double scale = 1.0) {
  host g(rows, cols);
  for (index_t i = 0; i < g.size(); ++i) g.data()[i] = scale * rs.normal(std::uint64_t(i));
  return g;
}

// Rows orthonormalised (Householder QR of the transpose).
inline host orthonormal_rows(const host& a) {
  host q = a;
  rolora::detail::orthonormalize_rows_host(q);
  return q;
}

}  // namespace detail

// sin of the largest principal angle between the row spaces of a [r, d] and a_ref [r, d]:
// ||(I - Q_ref^T Q_ref) Q^T||_2 with Q, Q_ref orthonormal row bases. Formed from the projection,
// never as sqrt(1 - cos^2), so it keeps its digits down to ~1e-16.
inline double subspace_distance(const host& a, const host& a_ref) {
  const host q = detail::orthonormal_rows(a), q_ref = detail::orthonormal_rows(a_ref);
  const host residual = q.transpose() - q_ref.transpose() * (q_ref * q.transpose());  // [d, r]
  return Eigen::JacobiSVD<host>(residual).singularValues()(0);
}

// The best rank-r approximation of w (Eckart-Young), and its top-r right singular vectors as
// rows [r, in].
struct low_rank {
  host matrix;
  host right_vectors;
};
inline low_rank best_rank_r(const host& w, index_t r) {
  Eigen::JacobiSVD<host> svd(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const host u = svd.matrixU().leftCols(r), v = svd.matrixV().leftCols(r);
  return {u * svd.singularValues().head(r).asDiagonal() * v.transpose(), v.transpose()};
}

// One client's data and loss; models rolora::client_task, closed_form_b_task and
// per_example_clip_task.
template <backend Backend>
class linear_regression_task {
 public:
  using matrix = typename Backend::matrix;
  using T = typename Backend::scalar;

  linear_regression_task(const host& x, const host& y)  // x [d, m], y [k, m]
      : x_(Backend::from_host(x.cast<T>())), y_(Backend::from_host(y.cast<T>())), m_(x.cols()) {}

  std::size_t num_samples() const { return std::size_t(m_); }
  const matrix& inputs() const { return x_; }   // [d, m]
  const matrix& targets() const { return y_; }  // [k, m]

  double loss(const adapter_set<Backend>& adapters) const {
    lora_cache<Backend> cache;
    matrix r;
    residual(adapters.at(module_name), x_, y_, cache, r);
    return double(Backend::dot(r, r)) / (2.0 * double(m_));
  }

  double loss_and_grad(const adapter_set<Backend>& adapters, std::span<const std::size_t> batch,
                       factor_set trains, gradient_set<Backend>& grads) const {
    const auto& l = adapters.at(module_name);
    const bool full = batch.size() == std::size_t(m_);
    matrix xb, yb;
    if (!full) gather(batch, xb, yb);
    const matrix& x = full ? x_ : xb;
    const matrix& y = full ? y_ : yb;
    lora_cache<Backend> cache;
    matrix r;  // [k, n] = B A x - y
    residual(l, x, y, cache, r);
    const double n = double(batch.size());
    const double value = double(Backend::dot(r, r)) / (2.0 * n);
    Backend::scale(T(1.0 / n), r);  // d loss / d prediction
    lora_backward<Backend>(nullptr, l, x, cache, r, trains, grads[module_name]);
    return value;
  }

  // Sample-level DP-SGD's clipped sum (core/concepts.hpp, per_example_clip_task). Example j's
  // loss is ||r_j||^2 / 2 with r_j = s B A x_j - y_j [k], so its gradients are rank one:
  //   dB_j = s r_j u_j^T [k, r] (u_j = A x_j),   dA_j = s (B^T r_j) x_j^T [r, d],
  //   ||g_j||^2 = s^2 (||r_j||^2 ||u_j||^2 [B trains] + ||B^T r_j||^2 ||x_j||^2 [A trains]),
  // and sum_j c_j g_j is the batch backward with r's columns scaled by c_j: one pass, exact.
  clipped_sum clipped_grad_sum(const adapter_set<Backend>& adapters,
                               std::span<const std::size_t> batch, factor_set trains,
                               double clip_norm, gradient_set<Backend>& grads) const {
    privacy::check_clip_norm(clip_norm, "linear_regression_task::clipped_grad_sum");
    if (batch.empty()) {
      privacy::zero_gradients(adapters, trains, grads);
      return {};
    }
    const auto& l = adapters.at(module_name);
    matrix xb, yb;
    gather(batch, xb, yb);
    lora_cache<Backend> cache;
    matrix r;  // [k, n]
    residual(l, xb, yb, cache, r);
    const auto& rh = privacy::detail::on_host<Backend>(r);
    const auto& uh = privacy::detail::on_host<Backend>(cache.ax);  // [r, n]
    const auto& xh = privacy::detail::on_host<Backend>(xb);        // [d, n]
    const host_matrix<T> btr =
        privacy::detail::on_host<Backend>(l.B).transpose() * rh;  // [r, n] = B^T r
    const double s = double(l.scaling);
    std::vector<double> sq(batch.size(), 0.0);
    double loss_sum = 0.0;
    for (std::size_t j = 0; j < batch.size(); ++j) {
      const auto c = index_t(j);
      const double rr = double(rh.col(c).squaredNorm());
      loss_sum += rr / 2.0;
      if (trains.b) sq[j] += s * s * rr * double(uh.col(c).squaredNorm());
      if (trains.a)
        sq[j] += s * s * double(btr.col(c).squaredNorm()) * double(xh.col(c).squaredNorm());
    }
    clipped_sum out{loss_sum, 0};
    const std::vector<double> factor = privacy::clip_factors(sq, clip_norm, out.clipped);
    const matrix rc = privacy::detail::scale_column_groups<Backend>(r, factor, 1);
    lora_backward<Backend>(nullptr, l, xb, cache, rc, trains, grads[module_name]);
    return out;
  }

  // B = argmin_B ||Y - s B A X||^2 = Y Z^T (Z Z^T)^{-1} with Z = s A X [r, m].
  void solve_b(adapter_set<Backend>& adapters) const {
    auto& l = adapters.at(module_name);
    matrix z, gram, rhs;
    Backend::gemm(l.scaling, l.A, op::none, x_, op::none, T(0), z);  // [r, m]
    Backend::gemm(T(1), z, op::none, z, op::transpose, T(0), gram);  // [r, r]
    Backend::gemm(T(1), y_, op::none, z, op::transpose, T(0), rhs);  // [k, r]
    Backend::solve_spd_right(gram, rhs);
    l.B = std::move(rhs);
  }

 private:
  static void residual(const lora_adapter<Backend>& l, const matrix& x, const matrix& y,
                       lora_cache<Backend>& cache, matrix& r) {
    lora_forward<Backend>(nullptr, l, x, cache, r);
    Backend::axpy(T(-1), y, r);
  }
  void gather(std::span<const std::size_t> batch, matrix& xb, matrix& yb) const {
    const auto xh = Backend::to_host(x_), yh = Backend::to_host(y_);
    host_matrix<T> xs(xh.rows(), index_t(batch.size())), ys(yh.rows(), index_t(batch.size()));
    for (std::size_t j = 0; j < batch.size(); ++j) {
      xs.col(index_t(j)) = xh.col(index_t(batch[j]));
      ys.col(index_t(j)) = yh.col(index_t(batch[j]));
    }
    xb = Backend::from_host(xs);
    yb = Backend::from_host(ys);
  }

  matrix x_, y_;
  index_t m_;
};

// A generated problem: ground truth on the host in double, client data on the backend.
template <backend Backend>
struct linear_problem {
  linear_problem_config config;
  host a_star;                  // [r, d], orthonormal rows
  host b_star;                  // [k, r]
  std::vector<host> targets;    // W*_i [k, d]
  std::vector<double> weights;  // w_i = m / (K m): uniform, all clients hold m samples
  host mean_target;             // sum_i w_i W*_i [k, d]
  low_rank optimum;             // best rank-r approximation of mean_target
  std::vector<linear_regression_task<Backend>> clients;
  bool from_data = false;  // users' data (linear_problem_from_data): no ground truth, targets empty

  // The reference row space for sin theta: A* (homogeneous) or the optimum's (heterogeneous).
  const host& reference_rows() const {
    return config.heterogeneous ? optimum.right_vectors : a_star;
  }
};

inline void check(const linear_problem_config& c) {
  if (c.dim < 1 || c.out_dim < 1 || c.rank < 1 || c.rank > std::min(c.dim, c.out_dim)) {
    rolora::detail::raise<config_error>(
        "linear problem: need 1 <= rank <= min(dim, out_dim), got rank = ", c.rank,
        ", dim = ", c.dim, ", out_dim = ", c.out_dim);
  }
  if (c.clients < 1 || std::size_t(c.rank) > c.samples) {
    rolora::detail::raise<config_error>(
        "linear problem: need >= 1 client and samples >= rank, got ", c.clients, " clients, ",
        c.samples, " samples");
  }
  if (!(c.noise >= 0.0) || !(c.heterogeneity >= 0.0)) {
    rolora::detail::raise<config_error>("linear problem: noise and heterogeneity must be >= 0");
  }
}

// B* = U diag(1, ..., 1 - (r-1)/(2r)) with U [k, r] orthonormal columns: sigma_max(B*) = 1, so a
// step eta <= 1 is safe, and distinct singular values make the rank-r optimum unique.
template <backend Backend>
linear_problem<Backend> make_linear_problem(const linear_problem_config& c) {
  check(c);
  const index_t d = c.dim, k = c.out_dim, r = c.rank;
  linear_problem<Backend> p;
  p.config = c;
  p.a_star =
      detail::orthonormal_rows(detail::gaussian(r, d, random_stream(c.seed, stream::data, 0, 0)));
  const host u =
      detail::orthonormal_rows(detail::gaussian(r, k, random_stream(c.seed, stream::data, 0, 1)))
          .transpose();  // [k, r]
  Eigen::VectorXd s(r);
  for (index_t j = 0; j < r; ++j) s(j) = 1.0 - double(j) / (2.0 * double(r));
  p.b_star = u * s.asDiagonal();
  p.mean_target = host::Zero(k, d);
  for (std::size_t i = 0; i < c.clients; ++i) {
    const auto client = std::uint32_t(i + 1);
    host w = p.b_star * p.a_star;
    if (c.heterogeneous) {
      const host a_i = detail::orthonormal_rows(
          p.a_star + detail::gaussian(r, d, random_stream(c.seed, stream::data, client, 2),
                                      c.heterogeneity / std::sqrt(double(d))));
      const host b_i =
          p.b_star + detail::gaussian(k, r, random_stream(c.seed, stream::data, client, 3),
                                      c.heterogeneity / std::sqrt(double(k)));
      w = b_i * a_i;
    }
    const host x =
        detail::gaussian(d, index_t(c.samples), random_stream(c.seed, stream::data, client, 0));
    host y = w * x;
    if (c.noise > 0.0) {
      y += detail::gaussian(k, index_t(c.samples), random_stream(c.seed, stream::data, client, 1),
                            c.noise);
    }
    p.weights.push_back(1.0 / double(c.clients));
    p.mean_target += w / double(c.clients);
    p.targets.push_back(std::move(w));
    p.clients.emplace_back(x, y);
  }
  p.optimum = best_rank_r(p.mean_target, r);
  return p;
}

// A problem on users' data: client i holds inputs x_i [d, m_i] and targets y_i [k, m_i], one
// column per sample; clients weigh equally, f = (1/K) sum_i f_i, as in the paper's analysis.
// There is no ground truth, so the reference is the exact rank-r minimiser of that empirical f:
// with S = sum_i w_i X_i X_i^T / m_i [d, d] and the full-rank least-squares fit
// W_ls = (sum_i w_i Y_i X_i^T / m_i) S^-1, f(W) = f(W_ls) + tr((W - W_ls) S (W - W_ls)^T) / 2, so
// (Eckart-Young on (W - W_ls) S^1/2) W_opt = [W_ls S^1/2]_r S^-1/2, and its row space is the
// reference for sin theta. Needs S positive definite: inputs spanning all d directions.
template <backend Backend>
linear_problem<Backend> linear_problem_from_data(const std::vector<host>& xs,
                                                 const std::vector<host>& ys, index_t rank) {
  using rolora::detail::raise;
  if (xs.empty() || xs.size() != ys.size()) {
    raise<config_error>("linear problem from data: need >= 1 client with inputs and targets, got ",
                        xs.size(), " inputs and ", ys.size(), " targets");
  }
  const index_t d = xs[0].rows(), k = ys[0].rows();
  std::size_t fewest = std::size_t(xs[0].cols());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (xs[i].rows() != d || ys[i].rows() != k || xs[i].cols() != ys[i].cols() ||
        xs[i].cols() == 0) {
      raise<shape_error>("linear problem from data: client ", i, " has inputs ",
                         rolora::detail::shape_string(xs[i].rows(), xs[i].cols()), " and targets ",
                         rolora::detail::shape_string(ys[i].rows(), ys[i].cols()), ", expected [",
                         d, ", m] and [", k, ", m] with the same m >= 1 (client 0's d and k)");
    }
    fewest = std::min(fewest, std::size_t(xs[i].cols()));
  }
  linear_problem<Backend> p;
  p.from_data = true;
  p.config.dim = d;
  p.config.out_dim = k;
  p.config.rank = rank;
  p.config.clients = xs.size();
  p.config.samples = fewest;
  p.config.heterogeneous = true;  // the reference is the optimum's row space, not a planted A*
  check(p.config);
  const double w = 1.0 / double(xs.size());
  host s = host::Zero(d, d), c = host::Zero(k, d);
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double scale = w / double(xs[i].cols());
    s.noalias() += scale * xs[i] * xs[i].transpose();
    c.noalias() += scale * ys[i] * xs[i].transpose();
    p.weights.push_back(w);
    p.clients.emplace_back(xs[i], ys[i]);
  }
  const Eigen::SelfAdjointEigenSolver<host> eig(s);
  const auto& lambda = eig.eigenvalues();  // increasing
  if (!(lambda(0) > 1e-12 * std::max(lambda(d - 1), 1e-300))) {
    raise<config_error>("linear problem from data: the inputs do not span all ", d,
                        " dimensions (smallest eigenvalue of the input covariance ", lambda(0),
                        ", largest ", lambda(d - 1),
                        "); need more samples than features and no collinear features");
  }
  const host& q = eig.eigenvectors();
  const host root = q * lambda.cwiseSqrt().asDiagonal() * q.transpose();  // S^1/2
  const host inverse_root =
      q * lambda.cwiseSqrt().cwiseInverse().asDiagonal() * q.transpose();  // S^-1/2
  const host w_ls = c * inverse_root * inverse_root;
  const low_rank whitened = best_rank_r(host(w_ls * root), rank);
  p.mean_target = w_ls;
  p.optimum.matrix = whitened.matrix * inverse_root;
  p.optimum.right_vectors = detail::orthonormal_rows(host(whitened.right_vectors * inverse_root));
  return p;
}

// ---- closed-form references ------------------------------------------------------------------

// Theorem 4.5 (Chen et al. 2024): per iteration of RoLoRA-linear,
//   sin theta_{t+1} <= sqrt(1 - eta (1 - delta0^2) sigma^2) sin theta_t,
// with delta0 the initial sin theta and sigma = ||b*|| (rank 1; for rank r we use sigma_min(B*)).
inline double theorem_4_5_rate(double eta, double delta0, double sigma_min_b_star) {
  const double x = 1.0 - eta * (1.0 - delta0 * delta0) * sigma_min_b_star * sigma_min_b_star;
  return std::sqrt(std::max(0.0, x));
}

inline double sigma_min(const host& m) {
  const auto sv = Eigen::JacobiSVD<host>(m).singularValues();
  return sv(sv.size() - 1);
}

// FFA-LoRA's floor (Proposition 4.6): with A frozen at a0 [r, d] and P its row-space projector,
// each client's exact B is W*_i a0^T, the server's mean is W_mean a0^T, and the population loss
// stays at sum_i w_i ||W*_i - W_mean P||_F^2 / 2 + k sigma^2 / 2. Homogeneous targets give
// ||W* (I - P)||_F^2 / 2, for r = 1 and W* = b* a*^T: ||b*||^2 (1 - cos^2 theta(a0, a*)) / 2.
template <backend Backend>
double ffa_loss_floor(const linear_problem<Backend>& p, const host& a0) {
  const host q = detail::orthonormal_rows(a0);
  const host reached = (p.mean_target * q.transpose()) * q;  // W_mean P, the best FFA can do
  double floor = 0.0;
  for (std::size_t i = 0; i < p.targets.size(); ++i) {
    floor += p.weights[i] * 0.5 * (p.targets[i] - reached).squaredNorm();
  }
  return floor + 0.5 * double(p.config.out_dim) * p.config.noise * p.config.noise;
}

// The population loss at the Eckart-Young optimum: the least any rank-r model can reach.
// On users' data: the empirical loss at W_opt.
template <backend Backend>
double optimal_loss(const linear_problem<Backend>& p) {
  double loss = 0.0;
  if (p.from_data) {
    for (std::size_t i = 0; i < p.clients.size(); ++i) {
      const host x = Backend::to_host(p.clients[i].inputs()).template cast<double>();
      const host y = Backend::to_host(p.clients[i].targets()).template cast<double>();
      loss += p.weights[i] * 0.5 * (y - p.optimum.matrix * x).squaredNorm() / double(x.cols());
    }
    return loss;
  }
  for (std::size_t i = 0; i < p.targets.size(); ++i) {
    loss += p.weights[i] * 0.5 * (p.targets[i] - p.optimum.matrix).squaredNorm();
  }
  return loss + 0.5 * double(p.config.out_dim) * p.config.noise * p.config.noise;
}

}  // namespace rolora::theory
