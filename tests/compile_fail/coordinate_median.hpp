// A coordinate-wise median reducer for factorwise<>, the robust aggregator that the compile-fail
// tests combine with client-level DP and with secure aggregation (both need a mean of factors).
#pragma once
#include <algorithm>
#include <rolora/rolora.hpp>
#include <span>
#include <string_view>
#include <vector>

struct coordinate_median {
  static constexpr std::string_view name = "coordinate_median";
  template <class T>
  rolora::host_matrix<T> operator()(std::span<const rolora::host_matrix<T>> copies,
                                    std::span<const double>) const {
    rolora::host_matrix<T> out = copies[0];
    std::vector<T> v(copies.size());
    for (rolora::index_t i = 0; i < out.size(); ++i) {
      for (std::size_t k = 0; k < copies.size(); ++k) v[k] = copies[k].data()[i];
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      out.data()[i] = v[v.size() / 2];
    }
    return out;
  }
};
