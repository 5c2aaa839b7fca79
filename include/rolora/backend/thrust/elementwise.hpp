// Element-wise work and reductions of the Thrust backend, as functors that run on the host
// (cpp/omp) or the device (cuda). Internal to rolora/backend/thrust/backend.hpp.
#pragma once
// clang-format off
#include <rolora/backend/thrust/system.hpp>  // first: it picks the Thrust device system
// clang-format on
#include <thrust/copy.h>
#include <thrust/functional.h>
#include <thrust/inner_product.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/logical.h>
#include <thrust/transform.h>
#include <thrust/tuple.h>

#include <cmath>
#include <cstddef>
#include <rolora/core/concepts.hpp>
#include <rolora/core/shape.hpp>
#include <vector>

namespace rolora::detail {

// y <- alpha x + y
template <class T>
struct axpy_fn {
  T alpha;
  ROLORA_HOST_DEVICE T operator()(T x, T y) const { return alpha * x + y; }
};

// x <- alpha x
template <class T>
struct scale_fn {
  T alpha;
  ROLORA_HOST_DEVICE T operator()(T x) const { return alpha * x; }
};

template <class T>
struct is_finite_fn {
  ROLORA_HOST_DEVICE bool operator()(T x) const {
#if defined(__CUDA_ARCH__)
    return ::isfinite(x);
#else
    return std::isfinite(x);
#endif
  }
};

// One AdamW step on a tuple (p, g, m, v), in the order of eigen_backend::adamw_update.
template <class T>
struct adamw_fn {
  adamw_coefficients<T> k;
  T decay, step, root_bc2;  // 1 - lr wd, lr / (1 - beta1^t), sqrt(1 - beta2^t)

  template <class Tuple>
  ROLORA_HOST_DEVICE void operator()(Tuple t) const {
    T& p = thrust::get<0>(t);
    const T g = thrust::get<1>(t);
    T& m = thrust::get<2>(t);
    T& v = thrust::get<3>(t);
    p *= decay;  // decoupled weight decay, as torch.optim.AdamW
    m = k.beta1 * m + (T(1) - k.beta1) * g;
    v = k.beta2 * v + (T(1) - k.beta2) * (g * g);
#if defined(__CUDA_ARCH__)
    p -= step * m / (::sqrt(v) / root_bc2 + k.eps);
#else
    p -= step * m / (std::sqrt(v) / root_bc2 + k.eps);
#endif
  }
};

// Host systems: element-wise work on fewer elements than this runs on the calling thread.
inline constexpr std::size_t host_parallel_min = std::size_t(1) << 16;

// Fixed-size chunks of sum_i x_i y_i for the host systems: each chunk is summed in index order
// by one thread and the chunk sums are added in chunk order, so the result does not depend on
// the number of threads (a plain parallel reduce would split by thread count).
inline constexpr std::size_t dot_chunk = 4096;

template <class T>
struct chunk_dot_fn {
  const T* x;
  const T* y;
  std::size_t n;
  T operator()(std::size_t chunk) const {
    const std::size_t begin = chunk * dot_chunk, end = std::min(n, begin + dot_chunk);
    T s = T(0);
    for (std::size_t i = begin; i < end; ++i) s += x[i] * y[i];
    return s;
  }
};

template <class System, class T>
T host_dot(const T* x, const T* y, std::size_t n) {
  const std::size_t chunks = (n + dot_chunk - 1) / dot_chunk;
  std::vector<T> partial(chunks);
  const thrust::counting_iterator<std::size_t> first(0);
  if (n < host_parallel_min) {
    thrust::transform(thrust::cpp::par, first, first + chunks, partial.begin(),
                      chunk_dot_fn<T>{x, y, n});
  } else {
    thrust::transform(System{}, first, first + chunks, partial.begin(), chunk_dot_fn<T>{x, y, n});
  }
  T s = T(0);
  for (const T p : partial) s += p;
  return s;
}

}  // namespace rolora::detail
