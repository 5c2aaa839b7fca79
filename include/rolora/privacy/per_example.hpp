// Pieces shared by the tasks' exact per-example clipping (core/concepts.hpp,
// per_example_clip_task): the clip factors min(1, C / ||g_i||), the zero gradients of an empty
// batch, host views of backend matrices and column scaling. docs/privacy.md, "Sample-level
// DP-SGD".
#pragma once
#include <cmath>
#include <cstddef>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <type_traits>
#include <vector>

namespace rolora::privacy {

// How a per-example gradient norm of a LoRA factor's gradient M_i = sum_t a_t b_t^T (a_t [p],
// b_t [q], over the example's T tokens) is computed:
//   direct  form M_i [p, q] and take its squared Frobenius norm: cost ~ T p q
//   gram    ||M_i||_F^2 = sum_{t,t'} (a_t . a_t') (b_t . b_t'), from the two [T, T] token Gram
//           matrices: cost ~ T^2 (p + q), and M_i is never formed
//   automatic  the cheaper of the two: direct iff p q <= T (p + q)
enum class per_example_norm { automatic, direct, gram };

inline bool use_direct_norm(per_example_norm method, double p, double q, double tokens) {
  if (method == per_example_norm::automatic) return p * q <= tokens * (p + q);
  return method == per_example_norm::direct;
}

inline void check_clip_norm(double clip_norm, const char* who) {
  if (!(clip_norm > 0.0 && std::isfinite(clip_norm)))
    rolora::detail::raise<config_error>(who, ": the clip norm must be finite and > 0, got ",
                                        clip_norm);
}

// c_i = min(1, C / ||g_i||) from the squared norms; counts the clipped examples (norm > C).
inline std::vector<double> clip_factors(const std::vector<double>& squared_norms, double clip_norm,
                                        std::size_t& clipped) {
  std::vector<double> c(squared_norms.size(), 1.0);
  clipped = 0;
  for (std::size_t i = 0; i < c.size(); ++i) {
    const double norm = std::sqrt(squared_norms[i]);
    if (norm > clip_norm) {
      c[i] = clip_norm / norm;
      ++clipped;
    }
  }
  return c;
}

// The gradients of an empty batch: zeros shaped like every trained factor and, when any factor
// trains, every module to save.
template <backend B>
void zero_gradients(const adapter_set<B>& adapters, factor_set trains, gradient_set<B>& grads) {
  for (const auto& [name, l] : adapters) {
    auto& g = grads[name];
    if (trains.a) g.dA = B::zeros(B::rows(l.A), B::cols(l.A));
    if (trains.b) g.dB = B::zeros(B::rows(l.B), B::cols(l.B));
  }
  if (!trains.any()) return;
  for (const auto& [name, m] : adapters.modules_to_save())
    grads.modules_to_save[name] = B::zeros(B::rows(m), B::cols(m));
}

namespace detail {

// A backend matrix as a host matrix: a reference where the backend's matrix is the host type
// (Eigen), else a copy.
template <backend B>
decltype(auto) on_host(const typename B::matrix& m) {
  if constexpr (std::is_same_v<typename B::matrix, host_matrix<typename B::scalar>>) {
    return (m);
  } else {
    return B::to_host(m);
  }
}

// m with column j scaled by c[j / group] (group: columns per example): [rows, n * group].
template <backend B>
typename B::matrix scale_column_groups(const typename B::matrix& m, const std::vector<double>& c,
                                       index_t group) {
  using T = typename B::scalar;
  host_matrix<T> h = on_host<B>(m);
  for (index_t j = 0; j < h.cols(); ++j) h.col(j) *= T(c[std::size_t(j / group)]);
  if constexpr (std::is_same_v<typename B::matrix, host_matrix<T>>) {
    return h;
  } else {
    return B::from_host(h);
  }
}

// Adds s^2 ||sum_{t in example i} a_t b_t^T||_F^2 to sq[i] for every example i: a [p, n T],
// b [q, n T], T = `tokens` columns per example; direct or by token Grams (per_example_norm).
template <class T>
void add_outer_norms(const host_matrix<T>& a, const host_matrix<T>& b, index_t tokens, double s,
                     per_example_norm method, std::vector<double>& sq) {
  const index_t n = a.cols() / tokens;
  const bool direct = use_direct_norm(method, double(a.rows()), double(b.rows()), double(tokens));
  host_matrix<T> m;
  for (index_t i = 0; i < n; ++i) {
    const auto ai = a.middleCols(i * tokens, tokens);
    const auto bi = b.middleCols(i * tokens, tokens);
    double v = 0.0;
    if (direct) {
      m.noalias() = ai * bi.transpose();  // [p, q]: the example's gradient (up to s)
      v = double(m.squaredNorm());
    } else {
      const host_matrix<T> ga = ai.transpose() * ai, gb = bi.transpose() * bi;  // [T, T] each
      v = double(ga.cwiseProduct(gb).sum());
    }
    sq[std::size_t(i)] += s * s * v;
  }
}

}  // namespace detail
}  // namespace rolora::privacy
