// The Thrust backend: matrices in Thrust vectors, element-wise work through Thrust algorithms,
// GEMM through cuBLAS on CUDA and through a blocked Thrust kernel on the cpp/omp systems.
//
//   rolora::thrust_backend<T, System>   T float or double; System a Thrust system tag
//   rolora::thrust_omp_backend<T>       System = thrust::system::omp::tag   (g++ -fopenmp)
//   rolora::thrust_cpp_backend<T>       System = thrust::system::cpp::tag   (sequential)
//   rolora::thrust_cuda_backend<T>      System = thrust::system::cuda::tag  (nvcc, cuBLAS)
//
// Not included by rolora/rolora.hpp: include it yourself and link rolora::thrust_omp or
// rolora::thrust_cuda (see docs/backends.md). Results agree with eigen_backend to rounding: the
// initial adapters are bit-identical (both draw from rolora's counter-based RNG on the host);
// orthonormalize_rows and solve_spd_right act on small r x r systems and run Eigen's host code
// on a copy, so they give eigen_backend's bits for the same input.
#pragma once
// clang-format off
#include <rolora/backend/thrust/system.hpp>  // first: it picks the Thrust device system
// clang-format on
// First: it picks Thrust's device system before any Thrust header is seen.
#include <thrust/copy.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/inner_product.h>
#include <thrust/iterator/zip_iterator.h>
#include <thrust/logical.h>
#include <thrust/transform.h>

#include <cmath>
#include <cstddef>
#include <new>
#include <rolora/backend/eigen/backend.hpp>  // the host helpers for the small r x r factorisations
#include <rolora/backend/thrust/elementwise.hpp>
#include <rolora/backend/thrust/error.hpp>
#include <rolora/backend/thrust/gemm.hpp>
#include <rolora/backend/thrust/matrix.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <string_view>

namespace rolora {

template <class T, class System = thrust::device_system_tag>
struct thrust_backend {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "rolora::thrust_backend<T, System>: T must be float or double");
  using scalar = T;
  using system = System;
  using matrix = thrust_matrix<T, System>;  // column-major
  static constexpr std::string_view name = detail::thrust_system_traits<System>::name;

  static matrix zeros(index_t rows, index_t cols) { return matrix(rows, cols); }
  static index_t rows(const matrix& m) { return m.rows(); }
  static index_t cols(const matrix& m) { return m.cols(); }

  // c = alpha op(a) op(b) + beta c, as eigen_backend::gemm (beta == 0: c is resized, not read).
  static void gemm(T alpha, const matrix& a, op op_a, const matrix& b, op op_b, T beta, matrix& c) {
    const bool ta = op_a == op::transpose, tb = op_b == op::transpose;
    const index_t m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols();
    const index_t kb = tb ? b.cols() : b.rows(), n = tb ? b.rows() : b.cols();
    if (k != kb) {
      detail::raise<shape_error>("gemm: inner dimensions differ: op(a) is ",
                                 detail::shape_string(m, k), ", op(b) is ",
                                 detail::shape_string(kb, n));
    }
    if (beta == T(0)) {
      if (c.rows() != m || c.cols() != n) c = matrix(m, n);
    } else if (c.rows() != m || c.cols() != n) {
      detail::raise<shape_error>("gemm: c expected ", detail::shape_string(m, n), ", got ",
                                 detail::shape_string(c.rows(), c.cols()));
    }
    if constexpr (detail::thrust_system_traits<System>::is_cuda) {
#if defined(__CUDACC__)
      detail::cublas_gemm(a.data(), a.rows(), ta, b.data(), b.rows(), tb, m, n, k, alpha, beta,
                          c.data());
#endif
    } else {
      detail::host_gemm<System>(a.data(), a.rows(), ta, b.data(), b.rows(), tb, m, n, k, alpha,
                                beta, c.data());
    }
  }

  static void axpy(T alpha, const matrix& x, matrix& y) {
    check_same_shape("axpy", x, y);
    on_system(x.values().size(), [&](auto policy) {
      thrust::transform(policy, x.values().begin(), x.values().end(), y.values().begin(),
                        y.values().begin(), detail::axpy_fn<T>{alpha});
    });
  }
  static void scale(T alpha, matrix& x) {
    on_system(x.values().size(), [&](auto policy) {
      thrust::transform(policy, x.values().begin(), x.values().end(), x.values().begin(),
                        detail::scale_fn<T>{alpha});
    });
  }
  // Host systems: fixed chunks, the same bits for any thread count. CUDA: Thrust's reduction
  // (deterministic for a given device and size).
  static T dot(const matrix& x, const matrix& y) {
    check_same_shape("dot", x, y);
    if constexpr (detail::thrust_system_traits<System>::is_cuda) {
      return thrust::inner_product(System{}, x.values().begin(), x.values().end(),
                                   y.values().begin(), T(0));
    } else {
      return detail::host_dot<System>(x.data(), y.data(), x.values().size());
    }
  }
  static bool all_finite(const matrix& x) {
    return on_system(x.values().size(), [&](auto policy) {
      return thrust::all_of(policy, x.values().begin(), x.values().end(),
                            detail::is_finite_fn<T>{});
    });
  }

  static host_matrix<T> to_host(const matrix& x) {
    host_matrix<T> h(x.rows(), x.cols());
    thrust::copy(x.values().begin(), x.values().end(), h.data());
    return h;
  }
  static matrix from_host(const host_matrix<T>& h) {
    matrix m;
    assign_from_host(m, h);
    return m;
  }
  // dst = h, into dst's storage when it already has h's shape (no allocation once sized).
  static void assign_from_host(matrix& dst, const host_matrix<T>& h) {
    if (dst.rows() != h.rows() || dst.cols() != h.cols()) dst = matrix(h.rows(), h.cols());
    thrust::copy(h.data(), h.data() + h.size(), dst.values().begin());
  }

  // Small r x r work (r = LoRA rank): Eigen on a host copy, eigen_backend's bits.
  static matrix orthonormalize_rows(matrix& a) {
    host_matrix<T> h = to_host(a);
    const host_matrix<T> l = detail::orthonormalize_rows_host(h);  // throws before a changes
    a = from_host(h);
    return from_host(l);
  }
  static void solve_spd_right(const matrix& g, matrix& x) {
    host_matrix<T> h = to_host(x);
    detail::solve_spd_right_host(to_host(g), h);  // throws before x changes
    x = from_host(h);
  }

  static void adamw_update(matrix& p, const matrix& g, matrix& m, matrix& v,
                           const adamw_coefficients<T>& k) {
    check_same_shape("adamw_update", p, g);
    check_same_shape("adamw_update", p, m);
    check_same_shape("adamw_update", p, v);
    using std::sqrt;
    const detail::adamw_fn<T> step{k, T(1) - k.lr * k.weight_decay, k.lr / k.bias_correction1,
                                   sqrt(k.bias_correction2)};
    auto first = thrust::make_zip_iterator(thrust::make_tuple(
        p.values().begin(), g.values().begin(), m.values().begin(), v.values().begin()));
    on_system(p.values().size(),
              [&](auto policy) { thrust::for_each_n(policy, first, p.values().size(), step); });
  }

 private:
  // Runs f(policy) on System; on the host systems, arrays of fewer than host_parallel_min
  // elements stay on the calling thread (an OpenMP region costs more than it saves there, and
  // these element-wise results do not depend on where they are computed).
  template <class F>
  static decltype(auto) on_system(std::size_t n, F&& f) {
    if constexpr (!detail::thrust_system_traits<System>::is_cuda) {
      if (n < detail::host_parallel_min) return f(thrust::cpp::par);
    }
    return f(System{});
  }

  static void check_same_shape(const char* what, const matrix& x, const matrix& y) {
    if (x.rows() != y.rows() || x.cols() != y.cols()) {
      detail::raise<shape_error>(what,
                                 ": shapes differ: ", detail::shape_string(x.rows(), x.cols()),
                                 " vs ", detail::shape_string(y.rows(), y.cols()));
    }
  }
};

template <class T>
using thrust_cpp_backend = thrust_backend<T, thrust::system::cpp::tag>;
static_assert(backend<thrust_cpp_backend<float>> && backend<thrust_cpp_backend<double>>);

#if defined(_OPENMP)
template <class T>
using thrust_omp_backend = thrust_backend<T, thrust::system::omp::tag>;
static_assert(backend<thrust_omp_backend<float>> && backend<thrust_omp_backend<double>>);
#endif

#if defined(__CUDACC__)
template <class T>
using thrust_cuda_backend = thrust_backend<T, thrust::system::cuda::tag>;
static_assert(backend<thrust_cuda_backend<float>> && backend<thrust_cuda_backend<double>>);
#endif

}  // namespace rolora
