// FedRot-LoRA's aggregation: align the clients' factors by rotations before averaging them.
// B A = (B R)(R^T A) for every orthogonal R [r, r], so clients whose factors differ only by such a
// rotation hold the same delta, yet fedavg of their factors can cancel. Each client's R_i solves
// the orthogonal Procrustes problem against the server's factors before the round (B_g, A_g):
//   R_i = argmin_{R^T R = I} ||B_i R - B_g||_F^2 + ||R^T A_i - A_g||_F^2 = U V^T,
//   with U S V^T = M_i = B_i^T B_g + A_i A_g^T   [r, r],
// then B' = sum_i w_i B_i R_i, A' = sum_i w_i R_i^T A_i. Exact when the clients differ only by
// rotations (and M_i is non-singular): every B_i R_i is then the same matrix. Otherwise
// approximate, like fedavg, but never misled by a rotation. Clients of rank r_i < r are
// zero-padded at the server's scaling first. Cost: O((out + in) r^2) per client plus an r x r SVD.
//
// In a round that shares one factor the factor-wise mean is already exact and is taken as is.
#pragma once
#include <Eigen/SVD>
#include <cstddef>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/low_rank.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/core/concepts.hpp>
#include <span>
#include <string_view>

namespace rolora {

// The rotation R [r, r] that best maps (b, a) onto (b_ref, a_ref) as above.
template <backend Backend>
typename Backend::matrix procrustes_rotation(const typename Backend::matrix& b,
                                             const typename Backend::matrix& a,
                                             const typename Backend::matrix& b_ref,
                                             const typename Backend::matrix& a_ref) {
  using T = typename Backend::scalar;
  using hostd = host_matrix<double>;
  typename Backend::matrix m;
  Backend::gemm(T(1), b, op::transpose, b_ref, op::none, T(0), m);  // B^T B_ref [r, r]
  Backend::gemm(T(1), a, op::none, a_ref, op::transpose, T(1), m);  // + A A_ref^T
  const hostd mh = Backend::to_host(m).template cast<double>();
  Eigen::JacobiSVD<hostd> svd(mh, Eigen::ComputeFullU | Eigen::ComputeFullV);
  const hostd rotation = svd.matrixU() * svd.matrixV().transpose();
  return Backend::from_host(rotation.template cast<T>());
}

struct procrustes {
  static constexpr std::string_view name = "procrustes";
  static constexpr bool accepts_heterogeneous_ranks = true;

  template <backend Backend>
  adapter_set<Backend> merge(const adapter_set<Backend>& global,
                             std::span<const client_update<Backend>> updates,
                             std::span<const double> weights, factor_set shared) const {
    using T = typename Backend::scalar;
    adapter_set<Backend> next = global;
    for (auto& [module, g] : next) {
      if (!(shared.a && shared.b)) {
        detail::average_factors(g, module, updates, weights, shared);
        continue;
      }
      const auto& ref = global.at(module);
      Backend::scale(T(0), g.A);
      Backend::scale(T(0), g.B);
      typename Backend::matrix rotated;
      for (std::size_t i = 0; i < updates.size(); ++i) {  // fixed order: same bits every run
        const auto& u = updates[i].adapters.at(module);
        const auto [a, b] = detail::resize_rank<Backend>(u.A, u.B, double(u.scaling), ref.rank(),
                                                         double(ref.scaling));
        const auto rot = procrustes_rotation<Backend>(b, a, ref.B, ref.A);  // [r, r]
        Backend::gemm(T(1), b, op::none, rot, op::none, T(0), rotated);     // B_i R_i [out, r]
        Backend::axpy(T(weights[i]), rotated, g.B);
        Backend::gemm(T(1), rot, op::transpose, a, op::none, T(0), rotated);  // R_i^T A_i [r, in]
        Backend::axpy(T(weights[i]), rotated, g.A);
      }
    }
    return next;
  }
};

}  // namespace rolora
