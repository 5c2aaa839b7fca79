// The matrix of the Thrust backend: column-major values in a Thrust vector on one system, plus
// its extents. Internal to rolora/backend/thrust/backend.hpp.
#pragma once
// clang-format off
#include <rolora/backend/thrust/system.hpp>  // first: it picks the Thrust device system
// clang-format on
#include <cstddef>
#include <limits>
#include <new>
#include <rolora/backend/thrust/error.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <string_view>
#include <type_traits>

namespace rolora {

// [rows, cols], element (i, j) at values()[i + j * rows]. Copies are deep (on the same system).
template <class T, class System>
class thrust_matrix {
 public:
  using value_type = T;
  using system = System;
  using vector_type = detail::thrust_vector_t<T, System>;

  thrust_matrix() = default;

  // A [rows, cols] matrix of zeros. Throws shape_error for negative extents and device_error
  // (id out_of_memory, with the byte count) when the system cannot allocate it.
  thrust_matrix(index_t rows, index_t cols) : rows_(rows), cols_(cols) {
    const std::size_t n = checked_size(rows, cols);
    try {
      values_ = vector_type(n, T(0));
    } catch (const std::bad_alloc& e) {
      detail::fail_allocation(detail::thrust_system_traits<System>::name, rows, cols, n * sizeof(T),
                              scalar_name(), e);
    }
  }

  // Takes `values` (size rows * cols, column-major) as the matrix's storage.
  thrust_matrix(index_t rows, index_t cols, vector_type values)
      : rows_(rows), cols_(cols), values_(std::move(values)) {
    if (checked_size(rows, cols) != values_.size()) {
      detail::raise<shape_error>("thrust_matrix: ", values_.size(), " values cannot form a ",
                                 detail::shape_string(rows, cols), " matrix");
    }
  }

  index_t rows() const { return rows_; }
  index_t cols() const { return cols_; }
  index_t size() const { return rows_ * cols_; }
  vector_type& values() { return values_; }
  const vector_type& values() const { return values_; }

  // Raw pointer to the first element: host memory for cpp/omp, device memory for cuda.
  T* data() { return thrust::raw_pointer_cast(values_.data()); }
  const T* data() const { return thrust::raw_pointer_cast(values_.data()); }

  static constexpr std::string_view scalar_name() {
    return std::is_same_v<T, float> ? "float" : std::is_same_v<T, double> ? "double" : "scalar";
  }

 private:
  static std::size_t checked_size(index_t rows, index_t cols) {
    if (rows < 0 || cols < 0) {
      detail::raise<shape_error>("thrust_matrix: extents must be non-negative, got ",
                                 detail::shape_string(rows, cols));
    }
    const auto r = static_cast<std::size_t>(rows), c = static_cast<std::size_t>(cols);
    if (c != 0 && r > std::numeric_limits<std::size_t>::max() / sizeof(T) / c) {
      detail::fail<device_error>("out_of_memory", detail::thrust_system_traits<System>::name,
                                 ": a ", detail::shape_string(rows, cols), " matrix of ",
                                 scalar_name(), " needs more bytes than size_t can count");
    }
    return r * c;
  }

  index_t rows_ = 0, cols_ = 0;
  vector_type values_;
};

}  // namespace rolora
