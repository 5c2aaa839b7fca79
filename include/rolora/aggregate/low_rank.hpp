// Building blocks the product-level aggregators share (svd_resplit, stack, residual, procrustes,
// padded_fedavg): the clients' factors brought to the server's rank and scaling, their weighted
// mean, their stacked rank-R factorisation, and the best rank-r factorisation of a stacked product
// without ever forming the dense out x in matrix.
#pragma once
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <rolora/adapter/lora.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string>
#include <utility>

namespace rolora::detail {

// g.A / g.B <- sum_i w_i of the clients' factors named in `shared`, each first zero-padded to
// g's rank and brought to g's scaling (exact: s B_pad A_pad = s_i B_i A_i). With equal ranks and
// scalings this is fedavg's weighted mean, bit for bit.
template <backend Backend>
void average_factors(lora_adapter<Backend>& g, const std::string& module,
                     std::span<const client_update<Backend>> updates, std::span<const double> w,
                     factor_set shared) {
  using T = typename Backend::scalar;
  if (shared.a) Backend::scale(T(0), g.A);
  if (shared.b) Backend::scale(T(0), g.B);
  for (std::size_t i = 0; i < updates.size(); ++i) {  // fixed order: same bits every run
    const auto& u = updates[i].adapters.at(module);
    if (u.rank() == g.rank() && u.scaling == g.scaling) {
      if (shared.a) Backend::axpy(T(w[i]), u.A, g.A);  // [r, in]
      if (shared.b) Backend::axpy(T(w[i]), u.B, g.B);  // [out, r]
      continue;
    }
    const auto [a, b] =
        resize_rank<Backend>(u.A, u.B, double(u.scaling), g.rank(), double(g.scaling));
    if (shared.a) Backend::axpy(T(w[i]), a, g.A);
    if (shared.b) Backend::axpy(T(w[i]), b, g.B);
  }
}

// The clients' deltas of one module as one factorisation of rank R = sum of the ranks r_i of the
// clients with w_i > 0, at the server's scaling s:
//   s b a = sum_i w_i s_i B_i A_i,  b = [B_1 ... B_K] [out, R],  a = [c_1 A_1; ...; c_K A_K] [R,
//   in]
// with c_i = w_i s_i / s (FLoRA's stacking). With `b_transposed`, b holds b^T [R, out] instead
// (the layout a QR of rows needs). Assembled on the host: one copy of each factor.
template <backend Backend>
struct stacked_factors {
  typename Backend::matrix b;  // [out, R], or [R, out] when transposed
  typename Backend::matrix a;  // [R, in]
  index_t rank = 0;            // R
};

template <backend Backend>
stacked_factors<Backend> stack_factors(const std::string& module,
                                       std::span<const client_update<Backend>> updates,
                                       std::span<const double> w, double s, bool b_transposed) {
  using T = typename Backend::scalar;
  index_t total = 0, out = 0, in = 0;
  for (std::size_t i = 0; i < updates.size(); ++i) {
    const auto& u = updates[i].adapters.at(module);
    out = u.out_features();
    in = u.in_features();
    if (w[i] > 0.0) total += u.rank();
  }
  host_matrix<T> b = b_transposed ? host_matrix<T>(total, out) : host_matrix<T>(out, total);
  host_matrix<T> a(total, in);
  index_t at = 0;
  for (std::size_t i = 0; i < updates.size(); ++i) {
    if (!(w[i] > 0.0)) continue;
    const auto& u = updates[i].adapters.at(module);
    const index_t r_i = u.rank();
    const auto hb = Backend::to_host(u.B);  // [out, r_i]
    if (b_transposed) {
      b.middleRows(at, r_i) = hb.transpose();
    } else {
      b.middleCols(at, r_i) = hb;
    }
    a.middleRows(at, r_i) = T(w[i] * double(u.scaling) / s) * Backend::to_host(u.A);
    at += r_i;
  }
  return {Backend::from_host(b), Backend::from_host(a), total};
}

// The best rank-r factorisation of a dense [out, in] matrix by its SVD: (A' [r, in], B' [out, r])
// with B' = U_r sqrt(S_r), A' = sqrt(S_r) V_r^T, components in decreasing singular value, zero
// beyond min(out, in).
template <backend Backend>
std::pair<typename Backend::matrix, typename Backend::matrix> best_rank_r_of_dense(
    const host_matrix<double>& h, index_t r) {
  using T = typename Backend::scalar;
  Eigen::BDCSVD<host_matrix<double>> svd(h, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const index_t out = h.rows(), in = h.cols(), kd = std::min(r, std::min(out, in));
  const Eigen::VectorXd root = svd.singularValues().head(kd).cwiseSqrt();
  host_matrix<T> b_host = host_matrix<T>::Zero(out, r), a_host = host_matrix<T>::Zero(r, in);
  b_host.leftCols(kd) = (svd.matrixU().leftCols(kd) * root.asDiagonal()).template cast<T>();
  a_host.topRows(kd) =
      (root.asDiagonal() * svd.matrixV().leftCols(kd).transpose()).template cast<T>();
  return {Backend::from_host(a_host), Backend::from_host(b_host)};
}

// The best rank-r factorisation (Eckart-Young) of the product bt^T a, bt [R, out], a [R, in]:
// returns (A' [r, in], B' [out, r]) with B' A' = U_r S_r V_r^T, split as B' = U_r sqrt(S_r),
// A' = sqrt(S_r) V_r^T, components in decreasing singular value (so that the first r_i of them
// are the best rank-r_i approximation). Components beyond R are zero.
//
// When R <= min(out, in) the dense product is never formed: with the thin QRs
//   bt = L_b Q_b^T,  a = L_a Q_a^T   (Q_b [out, R], Q_a [in, R] orthonormal columns)
// bt^T a = Q_b (L_b^T L_a) Q_a^T, so an SVD of the R x R core L_b^T L_a = U S V^T gives
// B' = Q_b U_r sqrt(S_r), A' = sqrt(S_r) V_r^T Q_a^T, at O((out + in) R^2 + R^3) instead of the
// O(out in min(out, in)) of a dense SVD. Otherwise the product is formed and its SVD taken.
// Both bt and a are consumed. The core's SVD runs on the host in double.
template <backend Backend>
std::pair<typename Backend::matrix, typename Backend::matrix> best_rank_r_factors(
    typename Backend::matrix bt, typename Backend::matrix a, index_t r) {
  using T = typename Backend::scalar;
  using hostd = host_matrix<double>;
  const index_t rank = Backend::rows(a), out = Backend::cols(bt), in = Backend::cols(a);
  if (rank <= std::min(out, in)) {
    const index_t k = std::min(r, rank);  // components that can be non-zero
    const hostd lb = Backend::to_host(Backend::orthonormalize_rows(bt))
                         .template cast<double>();  // bt = L_b Q_b^T
    const hostd la =
        Backend::to_host(Backend::orthonormalize_rows(a)).template cast<double>();  // a = L_a Q_a^T
    const hostd core = lb.transpose() * la;                                         // [R, R]
    Eigen::BDCSVD<hostd> svd(core, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const Eigen::VectorXd root = svd.singularValues().head(k).cwiseSqrt();
    host_matrix<T> left = host_matrix<T>::Zero(rank, r);   // U_k sqrt(S_k), padded
    host_matrix<T> right = host_matrix<T>::Zero(r, rank);  // sqrt(S_k) V_k^T, padded
    left.leftCols(k) = (svd.matrixU().leftCols(k) * root.asDiagonal()).template cast<T>();
    right.topRows(k) =
        (root.asDiagonal() * svd.matrixV().leftCols(k).transpose()).template cast<T>();
    typename Backend::matrix b_new, a_new;
    Backend::gemm(T(1), bt, op::transpose, Backend::from_host(left), op::none, T(0),
                  b_new);                                                                // [out, r]
    Backend::gemm(T(1), Backend::from_host(right), op::none, a, op::none, T(0), a_new);  // [r, in]
    return {std::move(a_new), std::move(b_new)};
  }
  typename Backend::matrix dense;  // [out, in]
  Backend::gemm(T(1), bt, op::transpose, a, op::none, T(0), dense);
  return best_rank_r_of_dense<Backend>(Backend::to_host(dense).template cast<double>(), r);
}

}  // namespace rolora::detail
