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
  // Grouped-query attention (kv_heads < n_heads; 0: n_heads): query head h reads key/value head
  // h / (n_heads / kv_heads). Causal: query j attends to keys 0 .. j only.
  static void attention_forward(const matrix& q, const matrix& k, const matrix& v,
                                const matrix& key_valid, index_t n_heads, T scale, matrix& probs,
                                matrix& ctx, index_t kv_heads = 0, bool causal = false) {
    const index_t d = q.rows(), len = key_valid.rows(), n = key_valid.cols(), dh = d / n_heads;
    const index_t group = n_heads / (kv_heads > 0 ? kv_heads : n_heads);
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
        const index_t g = h / group;
        auto p = probs.middleCols((s * n_heads + h) * len, len);  // [L keys, L queries]
        block_gemm(scale, k.block(g * dh, s * len, dh, len), op::transpose,
                   q.block(h * dh, s * len, dh, len), op::none, p);
        for (index_t j = 0; j < len; ++j) {
          const index_t keys = causal ? j + 1 : len;
          auto c = p.col(j).head(keys).array();
          const auto allowed = valid.head(keys) > T(0);
          p.col(j).tail(len - keys).setZero();
          if (!allowed.any()) {  // a query with no key to attend to: a zero context
            c.setZero();
            continue;
          }
          const T m = allowed.select(c, std::numeric_limits<T>::lowest()).maxCoeff();
          c = allowed.select((c - m).exp(), T(0));
          c /= c.sum();
        }
        block_gemm(T(1), v.block(g * dh, s * len, dh, len), op::none, p, op::none,
                   ctx.block(h * dh, s * len, dh, len));
      }
    }
  }
  // The gradients of attention_forward; dk, dv of a key/value head sum over its query heads (in
  // head order).
  static void attention_backward(const matrix& q, const matrix& k, const matrix& v,
                                 const matrix& probs, const matrix& dctx, index_t n_heads, T scale,
                                 matrix& dq, matrix& dk, matrix& dv, index_t kv_heads = 0) {
    const index_t d = q.rows(), len = probs.rows(), n = q.cols() / len, dh = d / n_heads;
    const index_t group = n_heads / (kv_heads > 0 ? kv_heads : n_heads);
    dq.resize(d, len * n);
    dk.resize(k.rows(), len * n);
    dv.resize(v.rows(), len * n);
    thread_local matrix ds;  // dL/dscores of one (sequence, head), kept: no allocation a step
    ds.resize(len, len);
    for (index_t s = 0; s < n; ++s) {
      for (index_t h = 0; h < n_heads; ++h) {
        const index_t g = h / group;
        const bool first = h % group == 0;  // writes dk, dv of head g; the others add
        const auto p = probs.middleCols((s * n_heads + h) * len, len);
        const auto dc = dctx.block(h * dh, s * len, dh, len);
        auto dv_g = dv.block(g * dh, s * len, dh, len);
        auto dk_g = dk.block(g * dh, s * len, dh, len);
        if (first) {
          block_gemm(T(1), dc, op::none, p, op::transpose, dv_g);
        } else {
          dv_g.noalias() += dc * p.transpose();
        }
        block_gemm(T(1), v.block(g * dh, s * len, dh, len), op::transpose, dc, op::none,
                   ds);  // dL/dp
        for (index_t j = 0; j < len; ++j) {
          const T pd = p.col(j).dot(ds.col(j));
          ds.col(j).array() = p.col(j).array() * (ds.col(j).array() - pd);
        }
        block_gemm(scale, k.block(g * dh, s * len, dh, len), op::none, ds, op::none,
                   dq.block(h * dh, s * len, dh, len));
        if (first) {
          block_gemm(scale, q.block(h * dh, s * len, dh, len), op::none, ds, op::transpose, dk_g);
        } else {
          dk_g.noalias() += scale * q.block(h * dh, s * len, dh, len) * ds.transpose();
        }
      }
    }
  }

  // RMSNorm (LlamaRMSNorm): per column xhat = x rstd, rstd = 1 / sqrt(mean(x^2) + eps),
  // y = w * xhat.
  static void rms_norm_forward(const matrix& x, const matrix& w, T eps, matrix& y, matrix& xhat,
                               matrix& rstd) {
    const index_t d = x.rows(), n = x.cols();
    y.resize(d, n);
    xhat.resize(d, n);
    rstd.resize(n, 1);
    for (index_t j = 0; j < n; ++j) {
      const T r = T(1) / std::sqrt(x.col(j).squaredNorm() / T(d) + eps);
      rstd(j, 0) = r;
      xhat.col(j) = x.col(j) * r;
      y.col(j) = w.col(0).cwiseProduct(xhat.col(j));
    }
  }
  // dx (+)= rstd (g - xhat mean(g * xhat)) with g = dy * w (the weight is frozen).
  static void rms_norm_backward(const matrix& dy, const matrix& xhat, const matrix& rstd,
                                const matrix& w, matrix& dx, bool accumulate) {
    const index_t d = dy.rows(), n = dy.cols();
    if (!accumulate) dx.resize(d, n);
    thread_local Eigen::Array<T, Eigen::Dynamic, 1> g;
    g.resize(d);
    for (index_t j = 0; j < n; ++j) {
      g = dy.col(j).array() * w.col(0).array();
      const T m = (g * xhat.col(j).array()).sum() / T(d);
      if (accumulate) {
        dx.col(j).array() += rstd(j, 0) * (g - xhat.col(j).array() * m);
      } else {
        dx.col(j).array() = rstd(j, 0) * (g - xhat.col(j).array() * m);
      }
    }
  }

  // In place on x [heads hd, N]: the rotate-half rotary embedding (apply_rotary_pos_emb) at each
  // token's position j (column s L + j) with cos, sin [hd / 2, L]; inverse applies the transpose
  // (the backward).
  static void rotary(matrix& x, index_t heads, index_t head_dim, const matrix& cos,
                     const matrix& sin, bool inverse) {
    const index_t half = head_dim / 2, len = cos.cols();
    for (index_t t = 0; t < x.cols(); ++t) {
      const index_t j = t % len;
      for (index_t h = 0; h < heads; ++h) {
        T* col = x.col(t).data() + h * head_dim;
        for (index_t i = 0; i < half; ++i) {
          const T c = cos(i, j), sn = inverse ? -sin(i, j) : sin(i, j);
          const T a = col[i], b = col[i + half];
          col[i] = a * c - b * sn;
          col[i + half] = b * c + a * sn;
        }
      }
    }
  }

  // SwiGLU (LlamaMLP's act_fn(gate) * up): m = silu(gate) * up.
  static void swiglu_forward(const matrix& gate, const matrix& up, matrix& m) {
    m = (gate.array() / (T(1) + (-gate.array()).exp()) * up.array()).matrix();
  }
  // dgate = dm up sig (1 + gate (1 - sig)), dup = dm silu(gate), sig = sigmoid(gate).
  static void swiglu_backward(const matrix& gate, const matrix& up, const matrix& dm, matrix& dgate,
                              matrix& dup) {
    const auto sig = (T(1) / (T(1) + (-gate.array()).exp())).eval();
    dgate = (dm.array() * up.array() * sig * (T(1) + gate.array() * (T(1) - sig))).matrix();
    dup = (dm.array() * gate.array() * sig).matrix();
  }

  // y = tanh(x) (y may be x); dx = dy (1 - y^2) (dx may be dy).
  static void tanh_forward(const matrix& x, matrix& y) { y = x.array().tanh().matrix(); }
  static void tanh_backward(const matrix& y, const matrix& dy, matrix& dx) {
    dx = (dy.array() * (T(1) - y.array().square())).matrix();
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

static_assert(hf_nn_backend<eigen_backend<float>> && hf_nn_backend<eigen_backend<double>>);

}  // namespace rolora
