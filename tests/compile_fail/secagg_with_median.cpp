// expect: static assertion failed: rolora::federation: secure aggregation needs an aggregator whose result is a mean of the uploaded factors
// Secure aggregation over a coordinate-wise median: the server sees only the sum of the clients'
// inputs, and a median needs each client's factors, so the composition is refused at compile time.
#include <algorithm>
#include <rolora/rolora.hpp>

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

using cpu = rolora::eigen_backend<double>;

rolora::round_report merge(rolora::federation_server<cpu, rolora::train_both,
                                                     rolora::factorwise<coordinate_median>>& server,
                           const rolora::round_plan& plan) {
  return server.complete_round(plan, rolora::secure_sum{});
}
