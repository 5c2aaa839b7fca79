// The four contracts of rolora: backend, adapter, update policy and aggregator.
//
// Each concept lists every member a type must provide and what it must mean. Templates that take
// such a type check it with a static_assert whose message says which contract is not met, so a
// type that does not fit fails to compile with a sentence instead of a page of template errors.
#pragma once
#include <concepts>
#include <cstddef>
#include <span>
#include <string_view>

#include <Eigen/Core>

#include <rolora/core/shape.hpp>

namespace rolora {

// Matrices on the host, the common currency between backends and with users (column-major).
template <class T>
using host_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// Coefficients of one AdamW step (Loshchilov & Hutter), bias corrections included.
template <class T>
struct adamw_coefficients {
  T lr, beta1, beta2, eps, weight_decay;
  T bias_correction1, bias_correction2;  // 1 - beta1^t, 1 - beta2^t
};

// ---------------------------------------------------------------------------------------------
// backend: where matrices live and how the algebra runs on them.
//
// A backend is a stateless type with
//   scalar                      float or double
//   matrix                      owning, copyable, movable, column-major storage of scalars
//   name                        static constexpr std::string_view, e.g. "eigen"
//   zeros(rows, cols)           a new matrix of zeros
//   rows(m), cols(m)            its extents
//   gemm(alpha, a, op_a, b, op_b, beta, c)
//                               c = alpha * op_a(a) * op_b(b) + beta * c; c must not alias a or b;
//                               when beta == 0, c is resized and its old values are never read
//   axpy(alpha, x, y)           y += alpha * x (same shape)
//   scale(alpha, x)             x *= alpha
//   dot(x, y)                   sum_ij x_ij y_ij
//   all_finite(x)               no NaN and no infinity
//   to_host(x), from_host(h)    copies to and from host_matrix<scalar>
//   orthonormalize_rows(a)      a [r, n] with r <= n becomes Q^T with orthonormal rows such that
//                               a_old = L * a_new; returns L [r, r] (lower triangular, positive
//                               diagonal, so the result is unique)
//   solve_spd_right(g, x)       x <- x * g^{-1} for a symmetric positive definite g [n, n];
//                               throws value_error if g is not positive definite
//   adamw_update(p, g, m, v, coefficients)
//                               one fused AdamW step on parameter p with gradient g and moments
// ---------------------------------------------------------------------------------------------
template <class B>
concept backend =
    requires { typename B::scalar; typename B::matrix; } &&
    std::floating_point<typename B::scalar> && std::copyable<typename B::matrix> &&
    requires(typename B::matrix& m, const typename B::matrix& c, typename B::scalar s,
             const host_matrix<typename B::scalar>& h,
             const adamw_coefficients<typename B::scalar>& k, index_t n) {
      { B::name } -> std::convertible_to<std::string_view>;
      { B::zeros(n, n) } -> std::same_as<typename B::matrix>;
      { B::rows(c) } -> std::convertible_to<index_t>;
      { B::cols(c) } -> std::convertible_to<index_t>;
      B::gemm(s, c, op::none, c, op::transpose, s, m);
      B::axpy(s, c, m);
      B::scale(s, m);
      { B::dot(c, c) } -> std::convertible_to<typename B::scalar>;
      { B::all_finite(c) } -> std::same_as<bool>;
      { B::to_host(c) } -> std::same_as<host_matrix<typename B::scalar>>;
      { B::from_host(h) } -> std::same_as<typename B::matrix>;
      { B::orthonormalize_rows(m) } -> std::same_as<typename B::matrix>;
      B::solve_spd_right(c, m);
      B::adamw_update(m, c, m, m, k);
    };

// Which LoRA factors a statement is about: trained, uploaded, or kept on the client.
struct factor_set {
  bool a = false;
  bool b = false;
  friend constexpr bool operator==(factor_set, factor_set) = default;
  constexpr bool any() const { return a || b; }
  // "A", "B", "AB" or "-": used in progress lines and logs.
  constexpr std::string_view label() const { return a ? (b ? "AB" : "A") : (b ? "B" : "-"); }
};
inline constexpr factor_set no_factors{false, false};
inline constexpr factor_set only_a{true, false};
inline constexpr factor_set only_b{false, true};
inline constexpr factor_set both_factors{true, true};

// ---------------------------------------------------------------------------------------------
// update_policy: which LoRA factors a client trains and uploads in round t = 0, 1, 2, ...
//
// A policy is a small value type holding only hyper-parameters, with
//   name                        static constexpr std::string_view, e.g. "alternating"
//   trains(t) -> factor_set     the factors clients optimise in round t (at least one)
//   shares(t) -> factor_set     the factors clients upload and the server aggregates in round t;
//                               a subset of trains(t)
//   keeps_local() -> factor_set factors that never travel: each client keeps its own copy across
//                               rounds and the server's copy is not used by clients (FedSA's B);
//                               disjoint from shares(t) for every t
// Factors that are neither shared nor kept local are synchronised from the server each round.
// ---------------------------------------------------------------------------------------------
template <class P>
concept update_policy = std::copyable<P> && requires(const P& p, std::size_t t) {
  { P::name } -> std::convertible_to<std::string_view>;
  { p.trains(t) } -> std::same_as<factor_set>;
  { p.shares(t) } -> std::same_as<factor_set>;
  { p.keeps_local() } -> std::same_as<factor_set>;
};

}  // namespace rolora

namespace rolora {

template <backend B>
class adapter_set;
template <backend B>
struct client_update;

// ---------------------------------------------------------------------------------------------
// adapter: one low-rank adapter y = W0 x + scaling * B (A x), in PEFT's shapes.
//
//   backend_type                the backend its matrices live on
//   A                           backend_type::matrix [r, in]   (lora_A, down-projection)
//   B                           backend_type::matrix [out, r]  (lora_B, up-projection)
//   scaling                     backend_type::scalar, lora_alpha / r (or / sqrt(r) for rsLoRA)
//   rank(), in_features(), out_features()
// ---------------------------------------------------------------------------------------------
template <class L>
concept adapter = backend<typename L::backend_type> && requires(const L& l) {
  { l.A } -> std::convertible_to<const typename L::backend_type::matrix&>;
  { l.B } -> std::convertible_to<const typename L::backend_type::matrix&>;
  { l.scaling } -> std::convertible_to<typename L::backend_type::scalar>;
  { l.rank() } -> std::convertible_to<index_t>;
  { l.in_features() } -> std::convertible_to<index_t>;
  { l.out_features() } -> std::convertible_to<index_t>;
};

// ---------------------------------------------------------------------------------------------
// aggregator: how the server merges the clients' uploads into the next global adapters.
//
//   name                        static constexpr std::string_view, e.g. "fedavg"
//   merge(global, updates, weights, shared) -> adapter_set<B>
//                               returns the next global adapters. `updates` are the clients'
//                               adapters after local training, already checked by the caller
//                               (same modules and shapes as `global`, finite values); `weights`
//                               are non-negative and sum to 1; `shared` names the factors the
//                               clients uploaded this round: the merge must read only those from
//                               the updates and keep the others as they are in `global`.
//                               It must not modify its arguments, so that a throw leaves the
//                               server's state as it was. Modules to save (dense trainable
//                               modules) are not its business: rolora::aggregate averages them.
// Aggregators are generic over the backend: merge is a member template (or an overload set).
// ---------------------------------------------------------------------------------------------
template <class G, class B>
concept aggregator_for =
    backend<B> && std::copyable<G> &&
    requires(const G& g, const adapter_set<B>& global, std::span<const client_update<B>> updates,
             std::span<const double> weights, factor_set shared) {
      { G::name } -> std::convertible_to<std::string_view>;
      { g.merge(global, updates, weights, shared) } -> std::same_as<adapter_set<B>>;
    };

}  // namespace rolora
