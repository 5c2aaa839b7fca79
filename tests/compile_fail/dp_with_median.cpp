// expect: static assertion failed: rolora::federation: client-level DP \(privacy::client_dp\) needs an aggregator whose result is a mean of the uploaded factors
// Client-level DP over a coordinate-wise median: clipping the uploads does not bound what one
// client changes in a median, so the composition is refused at compile time.
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

void build(rolora::adapter_set<cpu> initial) {
  rolora::federation_config config;
  config.client_weighting = rolora::weighting::uniform;
  rolora::federation<cpu, rolora::train_both, rolora::factorwise<coordinate_median>,
                     rolora::privacy::client_dp>
      fed(rolora::train_both{}, {}, config, initial, rolora::privacy::client_dp{});
}
