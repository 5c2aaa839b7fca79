// The transformer's primitives on the CPU: nn_primitives<eigen_backend<T>>, the nn_backend
// contract (core/concepts.hpp, shapes there) for the Eigen backend. They live on the nn side, not
// in eigen_backend, so that a user of the core (adapters, policies, aggregators, federation)
// compiles no transformer code and not <unsupported/Eigen/SpecialFunctions>.
#pragma once
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>  // Array::erf for GELU

namespace rolora {

template <class T>
struct nn_primitives<eigen_backend<T>> {
  using matrix = host_matrix<T>;

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
    thread_local Eigen::Array<T, Eigen::Dynamic, 1> g;  // dL/dxhat of one column; kept, so a
    g.resize(d);                                        // step allocates nothing
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
    detail::gather_rows(table, ids, accumulate, out);
  }
  static void embedding_backward(const matrix& dout, std::span<const std::int32_t> ids,
                                 matrix& dtable) {
    for (index_t j = 0; j < dout.cols(); ++j)
      dtable.row(ids[std::size_t(j)]) += dout.col(j).transpose();
  }

  // c = alpha op_a(a) op_b(b) on blocks of column-major matrices (c sized already): the
  // backend's GEMM provider (oneDNN above its crossover, on this thread) or Eigen.
  template <class X, class Y, class Z>
  static void block_gemm(T alpha, const X& a, op op_a, const Y& b, op op_b, Z&& c) {
    const index_t k = op_a == op::none ? a.cols() : a.rows();
    if constexpr (std::is_same_v<T, float>) {
      if (detail::onednn_preferred(c.rows(), c.cols(), k) &&
          detail::onednn_sgemm(op_a, op_b, c.rows(), c.cols(), k, alpha, a.data(), a.outerStride(),
                               b.data(), b.outerStride(), T(0), c.data(), c.outerStride())) {
        return;
      }
    }
    if (op_a == op::none && op_b == op::none) {
      c.noalias() = alpha * a * b;
    } else if (op_a == op::none) {
      c.noalias() = alpha * a * b.transpose();
    } else if (op_b == op::none) {
      c.noalias() = alpha * a.transpose() * b;
    } else {
      c.noalias() = alpha * a.transpose() * b.transpose();
    }
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
        block_gemm(scale, k.block(h * dh, s * len, dh, len), op::transpose,
                   q.block(h * dh, s * len, dh, len), op::none, p);
        for (index_t j = 0; j < len; ++j) {
          auto c = p.col(j).array();
          const T m = (valid > T(0)).select(c, std::numeric_limits<T>::lowest()).maxCoeff();
          c = (c - m).exp() * valid;
          c /= c.sum();
        }
        block_gemm(T(1), v.block(h * dh, s * len, dh, len), op::none, p, op::none,
                   ctx.block(h * dh, s * len, dh, len));
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
    thread_local matrix ds;  // dL/dscores of one (sequence, head), kept: no allocation a step
    ds.resize(len, len);
    for (index_t s = 0; s < n; ++s) {
      for (index_t h = 0; h < n_heads; ++h) {
        const auto p = probs.middleCols((s * n_heads + h) * len, len);
        const auto dc = dctx.block(h * dh, s * len, dh, len);
        block_gemm(T(1), dc, op::none, p, op::transpose, dv.block(h * dh, s * len, dh, len));
        block_gemm(T(1), v.block(h * dh, s * len, dh, len), op::transpose, dc, op::none,
                   ds);  // dL/dp
        for (index_t j = 0; j < len; ++j) {
          const T pd = p.col(j).dot(ds.col(j));
          ds.col(j).array() = p.col(j).array() * (ds.col(j).array() - pd);
        }
        block_gemm(scale, k.block(h * dh, s * len, dh, len), op::none, ds, op::none,
                   dq.block(h * dh, s * len, dh, len));
        block_gemm(scale, q.block(h * dh, s * len, dh, len), op::none, ds, op::transpose,
                   dk.block(h * dh, s * len, dh, len));
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
};

static_assert(nn_backend<eigen_backend<float>> && nn_backend<eigen_backend<double>>);

}  // namespace rolora
