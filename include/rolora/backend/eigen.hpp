// The CPU backend: column-major Eigen matrices, GEMM through Eigen's blocked kernels.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/QR>
#include <unsupported/Eigen/SpecialFunctions>  // Array::erf for GELU

#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>

namespace rolora {

namespace detail {

// Thin QR of a^T for a [r, n]: returns Q^T [r, n] with orthonormal rows and L = R^T [r, r] with
// a = L Q^T, signs chosen so that diag(L) > 0 (Householder QR leaves them arbitrary).
template <class T>
host_matrix<T> orthonormalize_rows_host(host_matrix<T>& a) {
  const index_t r = a.rows(), n = a.cols();
  if (r > n) {
    fail<shape_error>("shape_error", "orthonormalize_rows: a [r, n] needs r <= n, got ",
                      shape_string(r, n));
  }
  Eigen::HouseholderQR<host_matrix<T>> qr(a.transpose());
  host_matrix<T> q = qr.householderQ() * host_matrix<T>::Identity(n, r);        // [n, r]
  host_matrix<T> upper = qr.matrixQR().topRows(r).template triangularView<Eigen::Upper>();  // [r, r]
  for (index_t j = 0; j < r; ++j) {
    if (upper(j, j) < T(0)) {
      upper.row(j) *= T(-1);
      q.col(j) *= T(-1);
    }
  }
  a = q.transpose();
  return upper.transpose();
}

// x <- x g^{-1} for g symmetric positive definite, by Cholesky.
template <class T>
void solve_spd_right_host(const host_matrix<T>& g, host_matrix<T>& x) {
  if (g.rows() != g.cols() || x.cols() != g.rows()) {
    fail<shape_error>("shape_error", "solve_spd_right: expected g [n, n] and x [m, n], got g ",
                      shape_string(g.rows(), g.cols()), " and x ", shape_string(x.rows(), x.cols()));
  }
  Eigen::LLT<host_matrix<T>> llt(g);
  if (llt.info() != Eigen::Success) {
    fail<value_error>("value_error", "solve_spd_right: the ", shape_string(g.rows(), g.cols()),
                      " matrix is not positive definite (rank-deficient data or factor?)");
  }
  x = llt.solve(x.transpose()).transpose();  // g symmetric: (g^{-1} x^T)^T = x g^{-1}
}

}  // namespace detail

template <class T>
struct eigen_backend {
  using scalar = T;
  using matrix = host_matrix<T>;  // column-major
  static constexpr std::string_view name = "eigen";

  static matrix zeros(index_t rows, index_t cols) { return matrix::Zero(rows, cols); }
  static index_t rows(const matrix& m) { return m.rows(); }
  static index_t cols(const matrix& m) { return m.cols(); }

  static void gemm(T alpha, const matrix& a, op op_a, const matrix& b, op op_b, T beta, matrix& c) {
    const index_t m = op_a == op::none ? a.rows() : a.cols();
    const index_t k = op_a == op::none ? a.cols() : a.rows();
    const index_t kb = op_b == op::none ? b.rows() : b.cols();
    const index_t n = op_b == op::none ? b.cols() : b.rows();
    if (k != kb) {
      detail::fail<shape_error>("shape_error", "gemm: inner dimensions differ: op(a) is ",
                                detail::shape_string(m, k), ", op(b) is ",
                                detail::shape_string(kb, n));
    }
    if (beta == T(0)) {
      c.setZero(m, n);
    } else if (c.rows() != m || c.cols() != n) {
      detail::fail<shape_error>("shape_error", "gemm: c expected ", detail::shape_string(m, n),
                                ", got ", detail::shape_string(c.rows(), c.cols()));
    } else if (beta != T(1)) {
      c *= beta;
    }
    if (op_a == op::none && op_b == op::none) {
      c.noalias() += alpha * a * b;
    } else if (op_a == op::none) {
      c.noalias() += alpha * a * b.transpose();
    } else if (op_b == op::none) {
      c.noalias() += alpha * a.transpose() * b;
    } else {
      c.noalias() += alpha * a.transpose() * b.transpose();
    }
  }

  static void axpy(T alpha, const matrix& x, matrix& y) {
    check_same_shape("axpy", x, y);
    y += alpha * x;
  }
  static void scale(T alpha, matrix& x) { x *= alpha; }
  static T dot(const matrix& x, const matrix& y) {
    check_same_shape("dot", x, y);
    return x.cwiseProduct(y).sum();
  }
  // x * 0 is 0 for every finite x and NaN for NaN and +-inf: one vectorised pass (Eigen's
  // allFinite() is not vectorised, and dominated the time of fedavg's upload checks).
  static bool all_finite(const matrix& x) { return !std::isnan((x.array() * T(0)).sum()); }

  static host_matrix<T> to_host(const matrix& x) { return x; }
  static matrix from_host(const host_matrix<T>& h) { return h; }

  static matrix orthonormalize_rows(matrix& a) { return detail::orthonormalize_rows_host(a); }
  static void solve_spd_right(const matrix& g, matrix& x) { detail::solve_spd_right_host(g, x); }

  static void adamw_update(matrix& p, const matrix& g, matrix& m, matrix& v,
                           const adamw_coefficients<T>& k) {
    check_same_shape("adamw_update", p, g);
    p *= T(1) - k.lr * k.weight_decay;  // decoupled weight decay, as torch.optim.AdamW
    m = k.beta1 * m + (T(1) - k.beta1) * g;
    v = k.beta2 * v + (T(1) - k.beta2) * g.cwiseAbs2();
    const T step = k.lr / k.bias_correction1;
    const T root_bc2 = std::sqrt(k.bias_correction2);
    p.array() -= step * m.array() / (v.array().sqrt() / root_bc2 + k.eps);
  }

  // ---- nn primitives: the nn_backend contract of rolora/nn/nn_backend.hpp (shapes there) ----
  static void set_zero(matrix& m, index_t rows, index_t cols) { m.setZero(rows, cols); }
  static void add_bias(matrix& y, const matrix& b) { y.colwise() += b.col(0); }
  static void row_sums(const matrix& x, matrix& out) { out = x.rowwise().sum(); }

  static void layer_norm_forward(const matrix& x, const matrix& gamma, const matrix& beta, T eps,
                                 matrix& y, matrix& xhat, matrix& rstd) {
    const index_t d = x.rows(), n = x.cols();
    y.resize(d, n);
    xhat.resize(d, n);
    rstd.resize(n, 1);
    for (index_t j = 0; j < n; ++j) {
      const T mean = x.col(j).mean();
      xhat.col(j) = x.col(j).array() - mean;
      const T r = T(1) / std::sqrt(xhat.col(j).squaredNorm() / T(d) + eps);
      rstd(j, 0) = r;
      xhat.col(j) *= r;
      y.col(j) = gamma.col(0).cwiseProduct(xhat.col(j)) + beta.col(0);
    }
  }

  static void layer_norm_backward(const matrix& dy, const matrix& xhat, const matrix& rstd,
                                  const matrix& gamma, matrix& dx, bool accumulate, matrix* dgamma,
                                  matrix* dbeta) {
    const index_t d = dy.rows(), n = dy.cols();
    if (!accumulate) dx.resize(d, n);
    Eigen::Array<T, Eigen::Dynamic, 1> g(d);  // dL/dxhat of one column
    for (index_t j = 0; j < n; ++j) {
      g = dy.col(j).array() * gamma.col(0).array();
      const T m1 = g.mean();
      const T m2 = (g * xhat.col(j).array()).mean();
      if (accumulate) {
        dx.col(j).array() += rstd(j, 0) * (g - m1 - xhat.col(j).array() * m2);
      } else {
        dx.col(j).array() = rstd(j, 0) * (g - m1 - xhat.col(j).array() * m2);
      }
    }
    if (dgamma) *dgamma = dy.cwiseProduct(xhat).rowwise().sum();
    if (dbeta) *dbeta = dy.rowwise().sum();
  }

  // GELU, erf form (torch.nn.GELU() default): x Phi(x) = x (1 + erf(x / sqrt 2)) / 2.
  static void gelu_forward(const matrix& x, matrix& y) {
    y = (T(0.5) * x.array() * (T(1) + (x.array() * T(0.70710678118654752440)).erf())).matrix();
  }
  // dx = dy * (Phi(x) + x phi(x)).
  static void gelu_backward(const matrix& x, const matrix& dy, matrix& dx) {
    const auto a = x.array();
    dx = (dy.array() * (T(0.5) * (T(1) + (a * T(0.70710678118654752440)).erf()) +
                        a * (T(-0.5) * a.square()).exp() * T(0.39894228040143267794)))
             .matrix();
  }

  static void embedding_forward(const matrix& table, std::span<const std::int32_t> ids,
                                bool accumulate, matrix& out) {
    const auto n = static_cast<index_t>(ids.size());
    if (!accumulate) out.resize(table.cols(), n);
    for (index_t j = 0; j < n; ++j) {
      if (accumulate) {
        out.col(j) += table.row(ids[std::size_t(j)]).transpose();
      } else {
        out.col(j) = table.row(ids[std::size_t(j)]).transpose();
      }
    }
  }
  static void embedding_backward(const matrix& dout, std::span<const std::int32_t> ids,
                                 matrix& dtable) {
    for (index_t j = 0; j < dout.cols(); ++j) dtable.row(ids[std::size_t(j)]) += dout.col(j).transpose();
  }

  // Masked multi-head self-attention, one small GEMM per sequence and head on strided blocks.
  static void attention_forward(const matrix& q, const matrix& k, const matrix& v,
                                const matrix& key_valid, index_t n_heads, T scale, matrix& probs,
                                matrix& ctx) {
    const index_t d = q.rows(), len = key_valid.rows(), n = key_valid.cols(), dh = d / n_heads;
    probs.resize(len, len * n_heads * n);
    ctx.resize(d, len * n);
    for (index_t s = 0; s < n; ++s) {
      const auto valid = key_valid.col(s).array();
      if (valid.sum() == T(0)) {  // nothing to attend to: the context is zero
        probs.middleCols(s * n_heads * len, n_heads * len).setZero();
        ctx.middleCols(s * len, len).setZero();
        continue;
      }
      for (index_t h = 0; h < n_heads; ++h) {
        auto p = probs.middleCols((s * n_heads + h) * len, len);  // [L keys, L queries]
        p.noalias() = scale * k.block(h * dh, s * len, dh, len).transpose() *
                      q.block(h * dh, s * len, dh, len);
        for (index_t j = 0; j < len; ++j) {
          auto c = p.col(j).array();
          const T m = (valid > T(0)).select(c, std::numeric_limits<T>::lowest()).maxCoeff();
          c = (c - m).exp() * valid;
          c /= c.sum();
        }
        ctx.block(h * dh, s * len, dh, len).noalias() = v.block(h * dh, s * len, dh, len) * p;
      }
    }
  }
  static void attention_backward(const matrix& q, const matrix& k, const matrix& v,
                                 const matrix& probs, const matrix& dctx, index_t n_heads, T scale,
                                 matrix& dq, matrix& dk, matrix& dv) {
    const index_t d = q.rows(), len = probs.rows(), n = q.cols() / len, dh = d / n_heads;
    dq.resize(d, len * n);
    dk.resize(d, len * n);
    dv.resize(d, len * n);
    matrix ds(len, len);  // dL/dscores of one (sequence, head)
    for (index_t s = 0; s < n; ++s) {
      for (index_t h = 0; h < n_heads; ++h) {
        const auto p = probs.middleCols((s * n_heads + h) * len, len);
        const auto dc = dctx.block(h * dh, s * len, dh, len);
        dv.block(h * dh, s * len, dh, len).noalias() = dc * p.transpose();
        ds.noalias() = v.block(h * dh, s * len, dh, len).transpose() * dc;  // dL/dp
        for (index_t j = 0; j < len; ++j) {
          const T pd = p.col(j).dot(ds.col(j));
          ds.col(j).array() = p.col(j).array() * (ds.col(j).array() - pd);
        }
        dq.block(h * dh, s * len, dh, len).noalias() = scale * k.block(h * dh, s * len, dh, len) * ds;
        dk.block(h * dh, s * len, dh, len).noalias() =
            scale * q.block(h * dh, s * len, dh, len) * ds.transpose();
      }
    }
  }

  static void weighted_pool(const matrix& h, const matrix& w, matrix& out) {
    const index_t len = w.rows(), n = w.cols();
    out.resize(h.rows(), n);
    for (index_t s = 0; s < n; ++s) out.col(s).noalias() = h.middleCols(s * len, len) * w.col(s);
  }
  static void weighted_pool_backward(const matrix& dout, const matrix& w, matrix& dh) {
    const index_t len = w.rows(), n = w.cols();
    dh.resize(dout.rows(), len * n);
    for (index_t s = 0; s < n; ++s) {
      dh.middleCols(s * len, len).noalias() = dout.col(s) * w.col(s).transpose();
    }
  }

  static void softmax_columns(matrix& x) {
    for (index_t j = 0; j < x.cols(); ++j) {
      auto c = x.col(j).array();
      c = (c - c.maxCoeff()).exp();
      c /= c.sum();
    }
  }

  static double softmax_cross_entropy(const matrix& logits, std::span<const std::int32_t> targets,
                                      T grad_scale, matrix* dlogits) {
    const index_t n = logits.cols();
    if (dlogits) dlogits->resize(logits.rows(), n);
    double loss = 0.0;
    for (index_t j = 0; j < n; ++j) {
      const std::int32_t t = targets[std::size_t(j)];
      if (t < 0) {
        if (dlogits) dlogits->col(j).setZero();
        continue;
      }
      const auto z = logits.col(j).array();
      const T m = z.maxCoeff();
      T sum;
      if (dlogits) {
        auto g = dlogits->col(j).array();
        g = (z - m).exp();
        sum = g.sum();
        g *= grad_scale / sum;
        g(t) -= grad_scale;
      } else {
        sum = (z - m).exp().sum();
      }
      loss += double(std::log(sum) + m - z(t));
    }
    return loss;
  }

 private:
  static void check_same_shape(const char* what, const matrix& x, const matrix& y) {
    if (x.rows() != y.rows() || x.cols() != y.cols()) {
      detail::fail<shape_error>("shape_error", what, ": shapes differ: ",
                                detail::shape_string(x.rows(), x.cols()), " vs ",
                                detail::shape_string(y.rows(), y.cols()));
    }
  }
};

static_assert(backend<eigen_backend<float>> && backend<eigen_backend<double>>);

}  // namespace rolora
