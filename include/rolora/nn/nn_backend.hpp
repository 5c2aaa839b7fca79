// The nn_backend contract (the transformer's primitives a backend provides through
// nn_primitives<B>) is declared with every other contract in core/concepts.hpp; the Eigen
// implementation is backend/eigen/nn_primitives.hpp. This header brings both, and the models'
// shared helper assign_from_host.
#pragma once
#include <rolora/backend/eigen/nn_primitives.hpp>
#include <rolora/core/concepts.hpp>
#include <type_traits>

namespace rolora::detail::nn {

// dst = host, into dst's storage (no allocation once sized) where the backend's matrix is the
// host type or the backend has an assign_from_host(dst, host), else through from_host.
template <nn_backend B>
void assign_from_host(typename B::matrix& dst, const host_matrix<typename B::scalar>& host) {
  if constexpr (std::is_same_v<typename B::matrix, host_matrix<typename B::scalar>>) {
    dst = host;
  } else if constexpr (requires { B::assign_from_host(dst, host); }) {
    B::assign_from_host(dst, host);
  } else {
    dst = B::from_host(host);
  }
}

}  // namespace rolora::detail::nn
