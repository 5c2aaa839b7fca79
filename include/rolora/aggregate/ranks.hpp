// Heterogeneous ranks (HetLoRA, Cho et al. 2024; FlexLoRA, Bai et al. 2024): a client may train its
// adapter at a rank r_i below the server's rank r. Moving between the two is exact on the delta:
//   truncate_rank: the first r_i components, A_i = A[:r_i, :], B_i = (s / s_i) B[:, :r_i], so that
//                  s_i B_i A_i is the sum of the first r_i rank-one terms of s B A (the whole of it
//                  when the other components are zero; FlexLoRA's per-client SVD truncation when
//                  the components are singular triplets in decreasing order);
//   pad_rank:      zero rows and columns, A_pad = [A_i; 0], B_pad = (s_i / s) [B_i, 0], so that
//                  s B_pad A_pad = s_i B_i A_i exactly (HetLoRA's zero padding).
// The scaling factor s / s_i keeps the delta the same when a client's scaling follows its own rank
// (PEFT: s_i = lora_alpha / r_i): the client and the server always mean the same s B A.
#pragma once
#include <cmath>
#include <cstddef>
#include <rolora/adapter/lora.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <string>
#include <utility>

namespace rolora {

// How a client's scaling follows from its rank r_i when the server's adapter has rank r and
// scaling s: alpha_over_r (PEFT's lora_alpha / r_i, i.e. s r / r_i), alpha_over_sqrt_r (rsLoRA,
// s sqrt(r / r_i)) or fixed (s).
enum class rank_scaling { alpha_over_r, alpha_over_sqrt_r, fixed };

inline double scaling_at_rank(double s, index_t r, index_t r_i, rank_scaling rule) {
  switch (rule) {
    case rank_scaling::alpha_over_r:
      return s * double(r) / double(r_i);
    case rank_scaling::alpha_over_sqrt_r:
      return s * std::sqrt(double(r) / double(r_i));
    case rank_scaling::fixed:
      return s;
  }
  return s;
}

// Aggregators that accept uploads of ranks r_i <= r declare it with `static constexpr bool
// accepts_heterogeneous_ranks = true` (heterogeneous_rank_aggregator, core/concepts.hpp).

namespace detail {

// (A, B) of scaling s_from moved to rank r_to and scaling s_to with the same delta on the first
// min(r_from, r_to) components: A_to = E^T A, B_to = (s_from / s_to) B E, E = I [r_from, r_to].
template <backend Backend>
std::pair<typename Backend::matrix, typename Backend::matrix> resize_rank(
    const typename Backend::matrix& a, const typename Backend::matrix& b, double s_from,
    index_t r_to, double s_to) {
  using T = typename Backend::scalar;
  const index_t r_from = Backend::rows(a);
  const T c = T(s_from / s_to);
  if (r_from == r_to) {
    auto b_to = b;
    if (c != T(1)) Backend::scale(c, b_to);
    return {a, std::move(b_to)};
  }
  const auto e = Backend::from_host(host_matrix<T>::Identity(r_from, r_to));  // [r_from, r_to]
  typename Backend::matrix a_to, b_to;
  Backend::gemm(T(1), e, op::transpose, a, op::none, T(0), a_to);  // [r_to, in]
  Backend::gemm(c, b, op::none, e, op::none, T(0), b_to);          // [out, r_to]
  return {std::move(a_to), std::move(b_to)};
}

template <backend Backend>
void check_target_rank(const char* what, const lora_adapter<Backend>& l, index_t r, double s,
                       bool up) {
  if (r < 1 || (up ? r < l.rank() : r > l.rank()) || !std::isfinite(s) || s == 0.0) {
    raise<config_error>(
        what, ": rank ", r, " and scaling ", s, " cannot hold an adapter of rank ", l.rank(),
        " (need 1 <= ", up ? "rank of the adapter <= r" : "r <= rank of the adapter",
        " and a finite non-zero scaling)");
  }
}

}  // namespace detail

// The first r_i components of `l` at scaling s_i (see the file comment); residual kept.
template <backend Backend>
lora_adapter<Backend> truncate_rank(const lora_adapter<Backend>& l, index_t r_i, double s_i) {
  detail::check_target_rank("truncate_rank", l, r_i, s_i, false);
  auto [a, b] = detail::resize_rank<Backend>(l.A, l.B, double(l.scaling), r_i, s_i);
  return {std::move(a), std::move(b), typename Backend::scalar(s_i), l.residual};
}

// `l` zero-padded to rank r >= l.rank() at scaling s, with the same delta; residual kept.
template <backend Backend>
lora_adapter<Backend> pad_rank(const lora_adapter<Backend>& l, index_t r, double s) {
  detail::check_target_rank("pad_rank", l, r, s, true);
  auto [a, b] = detail::resize_rank<Backend>(l.A, l.B, double(l.scaling), r, s);
  return {std::move(a), std::move(b), typename Backend::scalar(s), l.residual};
}

}  // namespace rolora
