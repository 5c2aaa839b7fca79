// One LoRA adapter over a frozen base weight: y = W0 x + s * B (A x)   (Hu et al. 2021).
//
// Shapes follow PEFT: W0 [out, in], A [r, in], B [out, r]. Activations are column-major with one
// sample per column: x [in, n], y [out, n].
//
// An adapter may carry a dense `residual` [out, in]: a frozen correction of the base weight that
// the server maintains (FedEx-LoRA's residual, FLoRA's merged updates) and every client applies,
// y = (W0 + residual) x + s B (A x). Empty (0 x 0, the default) means none. It never trains, and
// it is part of delta, merge_into_base, unmerge_from_base, lora_forward and lora_backward's dx
// whenever it is non-empty.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <rolora/adapter/config.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <string>

namespace rolora {

template <backend Backend>
struct lora_adapter {
  using backend_type = Backend;
  using matrix = typename Backend::matrix;
  using scalar = typename Backend::scalar;

  matrix A;  // [r, in]
  matrix B;  // [out, r]
  scalar scaling = scalar(1);
  matrix residual{};  // [out, in] frozen dense correction of W0, or empty (0 x 0) for none

  bool has_residual() const { return Backend::rows(residual) != 0; }
  index_t rank() const { return Backend::rows(A); }
  index_t in_features() const { return Backend::cols(A); }
  index_t out_features() const { return Backend::rows(B); }
};

// Checks that 1 <= r <= min(in, out); `what` names the module in the message.
inline void check_rank(const std::string& what, index_t out, index_t in, index_t r) {
  if (out < 1 || in < 1) {
    detail::raise<config_error>("module '", what, "': base weight must be non-empty, got ",
                                detail::shape_string(out, in));
  }
  if (r < 1 || r > std::min(in, out)) {
    detail::raise<config_error>("module '", what, "': rank r must be in [1, min(in, out)] = [1, ",
                                std::min(in, out), "], got r = ", r);
  }
}

// A new adapter for a base weight [out, in], initialised as PEFT does: A by `init` from the
// adapter-init stream (sub-stream (module_index, generation)), B = 0. Generation 0 is the
// initial adapter; strategies that re-initialise (FLoRA, aggregate/stack.hpp) draw generation
// t + 1 after round t.
template <backend Backend>
lora_adapter<Backend> make_lora(const std::string& name, index_t out, index_t in, index_t r,
                                double scaling, lora_init init, std::uint64_t seed,
                                std::uint32_t module_index = 0, std::uint32_t generation = 0) {
  using T = typename Backend::scalar;
  check_rank(name, out, in, r);
  const random_stream rs(seed, stream::adapter_init, module_index, generation);
  host_matrix<T> a(r, in);
  for (index_t i = 0; i < a.size(); ++i) {
    const auto k = static_cast<std::uint64_t>(i);
    // kaiming_uniform_(a = sqrt(5)) on a [r, in] weight: bound = gain * sqrt(3 / fan_in) with
    // gain = sqrt(2 / (1 + 5)), i.e. U(-1/sqrt(in), 1/sqrt(in)). gaussian: std = 1 / r as PEFT.
    a.data()[i] = init == lora_init::kaiming_uniform
                      ? static_cast<T>((2.0 * rs.uniform(k) - 1.0) / std::sqrt(double(in)))
                      : static_cast<T>(rs.normal(k) / double(r));
  }
  return {Backend::from_host(a), Backend::zeros(out, r), static_cast<T>(scaling)};
}

namespace detail {
template <backend Backend>
void check_residual(const lora_adapter<Backend>& l) {
  if (l.has_residual() && (Backend::rows(l.residual) != l.out_features() ||
                           Backend::cols(l.residual) != l.in_features())) {
    raise<shape_error>("residual expected ", shape_string(l.out_features(), l.in_features()),
                       " for this adapter, got ",
                       shape_string(Backend::rows(l.residual), Backend::cols(l.residual)));
  }
}
}  // namespace detail

// delta W = s B A (+ residual)  [out, in]: what the adapter adds to the base weight.
template <backend Backend>
typename Backend::matrix delta(const lora_adapter<Backend>& l) {
  using T = typename Backend::scalar;
  detail::check_residual(l);
  if (l.has_residual()) {
    auto d = l.residual;
    Backend::gemm(l.scaling, l.B, op::none, l.A, op::none, T(1), d);
    return d;
  }
  auto d = Backend::zeros(l.out_features(), l.in_features());
  Backend::gemm(l.scaling, l.B, op::none, l.A, op::none, T(0), d);
  return d;
}

namespace detail {
template <backend Backend>
void check_base(const typename Backend::matrix& w0, const lora_adapter<Backend>& l) {
  if (Backend::rows(w0) != l.out_features() || Backend::cols(w0) != l.in_features()) {
    raise<shape_error>("base weight expected ", shape_string(l.out_features(), l.in_features()),
                       " for this adapter, got ",
                       shape_string(Backend::rows(w0), Backend::cols(w0)));
  }
}
}  // namespace detail

// W0 += s B A (+ residual): the merged layer computes the same outputs with no adapter overhead.
template <backend Backend>
void merge_into_base(typename Backend::matrix& w0, const lora_adapter<Backend>& l) {
  using T = typename Backend::scalar;
  detail::check_base(w0, l);
  detail::check_residual(l);
  Backend::gemm(l.scaling, l.B, op::none, l.A, op::none, T(1), w0);
  if (l.has_residual()) Backend::axpy(T(1), l.residual, w0);
}

// W0 -= s B A (+ residual): undoes merge_into_base (up to rounding).
template <backend Backend>
void unmerge_from_base(typename Backend::matrix& w0, const lora_adapter<Backend>& l) {
  using T = typename Backend::scalar;
  detail::check_base(w0, l);
  detail::check_residual(l);
  Backend::gemm(-l.scaling, l.B, op::none, l.A, op::none, T(1), w0);
  if (l.has_residual()) Backend::axpy(T(-1), l.residual, w0);
}

// What forward keeps for backward.
template <backend Backend>
struct lora_cache {
  typename Backend::matrix ax;  // [r, n] = A x
};

// y = W0 x + s B (A x) (+ residual x). `w0` may be null for an adapter without base weight
// (y = s B A x (+ residual x)). x [in, n] -> y [out, n].
template <backend Backend>
void lora_forward(const typename Backend::matrix* w0, const lora_adapter<Backend>& l,
                  const typename Backend::matrix& x, lora_cache<Backend>& cache,
                  typename Backend::matrix& y) {
  using T = typename Backend::scalar;
  if (w0) detail::check_base(*w0, l);
  detail::check_residual(l);
  if (Backend::rows(x) != l.in_features()) {
    detail::raise<shape_error>("lora_forward: x expected [", l.in_features(), ", n], got ",
                               detail::shape_string(Backend::rows(x), Backend::cols(x)));
  }
  Backend::gemm(T(1), l.A, op::none, x, op::none, T(0), cache.ax);  // [r, n]
  if (w0) {
    Backend::gemm(T(1), *w0, op::none, x, op::none, T(0), y);
    Backend::gemm(l.scaling, l.B, op::none, cache.ax, op::none, T(1), y);
  } else {
    Backend::gemm(l.scaling, l.B, op::none, cache.ax, op::none, T(0), y);
  }
  if (l.has_residual()) Backend::gemm(T(1), l.residual, op::none, x, op::none, T(1), y);
}

// Gradients of one adapter, shaped like it.
template <backend Backend>
struct lora_gradients {
  typename Backend::matrix dA;  // [r, in]
  typename Backend::matrix dB;  // [out, r]
};

// Backward of lora_forward for an upstream gradient dy [out, n]:
//   dB = s dy (A x)^T,   dA = s B^T dy x^T,   dx = W0^T dy + s A^T (B^T dy) (+ residual^T dy).
// Only the factors in `wanted` are computed (a frozen factor gets no gradient and costs nothing);
// dx is computed when `dx` is not null.
template <backend Backend>
void lora_backward(const typename Backend::matrix* w0, const lora_adapter<Backend>& l,
                   const typename Backend::matrix& x, const lora_cache<Backend>& cache,
                   const typename Backend::matrix& dy, factor_set wanted,
                   lora_gradients<Backend>& grads, typename Backend::matrix* dx = nullptr) {
  using T = typename Backend::scalar;
  if (wanted.b) Backend::gemm(l.scaling, dy, op::none, cache.ax, op::transpose, T(0), grads.dB);
  if (!wanted.a && !dx) return;
  typename Backend::matrix bt_dy;  // [r, n] = B^T dy
  Backend::gemm(T(1), l.B, op::transpose, dy, op::none, T(0), bt_dy);
  if (wanted.a) Backend::gemm(l.scaling, bt_dy, op::none, x, op::transpose, T(0), grads.dA);
  if (dx) {
    Backend::gemm(l.scaling, l.A, op::transpose, bt_dy, op::none, T(0), *dx);
    if (w0) Backend::gemm(T(1), *w0, op::transpose, dy, op::none, T(1), *dx);
    if (l.has_residual()) Backend::gemm(T(1), l.residual, op::transpose, dy, op::none, T(1), *dx);
  }
}

}  // namespace rolora
