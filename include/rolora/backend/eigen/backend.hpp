// The CPU backend: column-major Eigen matrices, GEMM through Eigen's blocked kernels, or through
// oneDNN for fp32 when built with it (backend/eigen/onednn_gemm.hpp; always on the calling
// thread). eigen_backend<float> also holds frozen bf16 matrices (frozen_bf16_backend).
#pragma once
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <map>
#include <rolora/backend/eigen/onednn_gemm.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace rolora {

namespace detail {

// Thin QR of a^T for a [r, n]: returns Q^T [r, n] with orthonormal rows and L = R^T [r, r] with
// a = L Q^T, signs chosen so that diag(L) > 0 (Householder QR leaves them arbitrary).
template <class T>
host_matrix<T> orthonormalize_rows_host(host_matrix<T>& a) {
  const index_t r = a.rows(), n = a.cols();
  if (r > n) {
    raise<shape_error>("orthonormalize_rows: a [r, n] needs r <= n, got ", shape_string(r, n));
  }
  Eigen::HouseholderQR<host_matrix<T>> qr(a.transpose());
  host_matrix<T> q = qr.householderQ() * host_matrix<T>::Identity(n, r);  // [n, r]
  host_matrix<T> upper =
      qr.matrixQR().topRows(r).template triangularView<Eigen::Upper>();  // [r, r]
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
    raise<shape_error>("solve_spd_right: expected g [n, n] and x [m, n], got g ",
                       shape_string(g.rows(), g.cols()), " and x ",
                       shape_string(x.rows(), x.cols()));
  }
  Eigen::LLT<host_matrix<T>> llt(g);
  if (llt.info() != Eigen::Success) {
    raise<value_error>("solve_spd_right: the ", shape_string(g.rows(), g.cols()),
                       " matrix is not positive definite (rank-deficient data or factor?)");
  }
  x = llt.solve(x.transpose()).transpose();  // g symmetric: (g^{-1} x^T)^T = x g^{-1}
}

// out [cols, N] column j = (or += when accumulate) row ids[j] of table [V, cols], in T: an
// embedding lookup, from a table of T or of bf16.
template <class T, class Table>
void gather_rows(const Table& table, std::span<const std::int32_t> ids, bool accumulate,
                 host_matrix<T>& out) {
  const auto n = static_cast<index_t>(ids.size());
  if (!accumulate) out.resize(table.cols(), n);
  for (index_t j = 0; j < n; ++j) {
    const auto row = table.row(ids[std::size_t(j)]).transpose().template cast<T>();
    if (accumulate) {
      out.col(j) += row;
    } else {
      out.col(j) = row;
    }
  }
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
      detail::raise<shape_error>("gemm: inner dimensions differ: op(a) is ",
                                 detail::shape_string(m, k), ", op(b) is ",
                                 detail::shape_string(kb, n));
    }
    if constexpr (detail::onednn_gemm_available && std::is_same_v<T, float>) {
      if (detail::onednn_preferred(m, n, k) && detail::onednn_sgemm_enabled() &&
          (beta == T(0) || (c.rows() == m && c.cols() == n))) {
        if (beta == T(0)) c.resize(m, n);  // beta = 0: c is written, never read (BLAS rule)
        if (detail::onednn_sgemm(op_a, op_b, m, n, k, alpha, a.data(), a.rows(), b.data(), b.rows(),
                                 beta, c.data(), m)) {
          return;
        }
      }
    }
    if (beta == T(0)) {
      c.setZero(m, n);
    } else if (c.rows() != m || c.cols() != n) {
      detail::raise<shape_error>("gemm: c expected ", detail::shape_string(m, n), ", got ",
                                 detail::shape_string(c.rows(), c.cols()));
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

  // Frozen bf16 matrices (frozen_bf16_backend, core/concepts.hpp), T = float: a frozen base held
  // at half the memory. frozen_gemm takes oneDNN's bf16 matmul where the build has oneDNN and the
  // CPU a bf16 kernel (detail::onednn_bf16_enabled(): activations rounded to bf16 into a
  // per-thread workspace, fp32 accumulation, on the calling thread); elsewhere it converts w to
  // fp32 in blocks of at most frozen_block_scalars into a per-thread buffer and runs gemm.
  using frozen_matrix = host_matrix<Eigen::bfloat16>;
  static constexpr index_t frozen_block_scalars = index_t(1) << 20;  // 4 MiB of fp32

  static frozen_matrix to_frozen(const matrix& m) requires std::same_as<T, float> {
    return m.template cast<Eigen::bfloat16>();  // round to nearest even
  }
  static matrix to_matrix(const frozen_matrix& f) requires std::same_as<T, float> {
    return f.template cast<T>();
  }
  static index_t rows(const frozen_matrix& f) { return f.rows(); }
  static index_t cols(const frozen_matrix& f) { return f.cols(); }

  static void frozen_gemm(const frozen_matrix& w, op op_w, const matrix& x, T beta,
                          matrix& c) requires std::same_as<T, float> {
    const index_t m = op_w == op::none ? w.rows() : w.cols();
    const index_t k = op_w == op::none ? w.cols() : w.rows();
    const index_t n = x.cols();
    if (x.rows() != k) {
      detail::raise<shape_error>("frozen_gemm: inner dimensions differ: op(w) is ",
                                 detail::shape_string(m, k), ", x is ",
                                 detail::shape_string(x.rows(), n));
    }
    if (beta != T(0) && (c.rows() != m || c.cols() != n)) {
      detail::raise<shape_error>("frozen_gemm: c expected ", detail::shape_string(m, n), ", got ",
                                 detail::shape_string(c.rows(), c.cols()));
    }
    if (beta == T(0)) c.resize(m, n);
    if (detail::onednn_bf16_enabled() &&
        detail::onednn_bf16_gemm(op_w, m, n, k, w.data(), w.rows(), x.data(), beta, c.data())) {
      return;
    }
    // Rows [r0, r0 + rb) of op_w(w) at a time: [rb, k] (rows of w) or [k, rb] (columns of w).
    // One fp32 buffer per block shape, kept per thread: the few weight shapes of a step then
    // convert without allocating once warmed up.
    thread_local std::map<std::pair<index_t, index_t>, matrix> blocks;
    thread_local matrix part;
    const auto block_of = [&](index_t rows, index_t cols) -> matrix& {
      matrix& b = blocks[{rows, cols}];
      b.resize(rows, cols);
      return b;
    };
    const index_t rows_per_block =
        std::max<index_t>(1, frozen_block_scalars / std::max<index_t>(k, 1));
    if (rows_per_block >= m) {
      matrix& block = block_of(w.rows(), w.cols());
      block = w.template cast<T>();
      gemm(T(1), block, op_w, x, op::none, beta, c);
      return;
    }
    for (index_t r0 = 0; r0 < m; r0 += rows_per_block) {
      const index_t rb = std::min(rows_per_block, m - r0);
      matrix& block = op_w == op::none ? block_of(rb, w.cols()) : block_of(w.rows(), rb);
      if (op_w == op::none) {
        block = w.middleRows(r0, rb).template cast<T>();
      } else {
        block = w.middleCols(r0, rb).template cast<T>();
      }
      gemm(T(1), block, op_w, x, op::none, T(0), part);  // [rb, n]
      if (beta == T(0)) {
        c.middleRows(r0, rb) = part;
      } else {
        c.middleRows(r0, rb) = beta * c.middleRows(r0, rb) + part;
      }
    }
  }

  // What frozen_gemm runs on in this process, for logs.
  static std::string frozen_gemm_path() requires std::same_as<T, float> {
    if (detail::onednn_bf16_enabled())
      return "oneDNN bf16 matmul, fp32 accumulation (" + detail::onednn_bf16_kernel() + ")";
    return "bf16 converted to fp32 in blocks, then the fp32 GEMM (no oneDNN bf16 kernel here)";
  }

  static void frozen_gather_rows(const frozen_matrix& table, std::span<const std::int32_t> ids,
                                 bool accumulate, matrix& out) requires std::same_as<T, float> {
    detail::gather_rows(table, ids, accumulate, out);
  }

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

 private:
  static void check_same_shape(const char* what, const matrix& x, const matrix& y) {
    if (x.rows() != y.rows() || x.cols() != y.cols()) {
      detail::raise<shape_error>(what,
                                 ": shapes differ: ", detail::shape_string(x.rows(), x.cols()),
                                 " vs ", detail::shape_string(y.rows(), y.cols()));
    }
  }
};

static_assert(backend<eigen_backend<float>> && backend<eigen_backend<double>>);
static_assert(frozen_bf16_backend<eigen_backend<float>> &&
              !frozen_bf16_backend<eigen_backend<double>>);

}  // namespace rolora
