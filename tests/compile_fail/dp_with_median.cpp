// expect: static assertion failed: rolora::federation: client-level DP \(privacy::client_dp\) needs an aggregator whose result is a mean of the uploaded factors
// Client-level DP over a coordinate-wise median: clipping the uploads does not bound what one
// client changes in a median, so the composition is refused at compile time.
#include <rolora/rolora.hpp>

#include "coordinate_median.hpp"

using cpu = rolora::eigen_backend<double>;

void build(rolora::adapter_set<cpu> initial) {
  rolora::federation_config config;
  config.client_weighting = rolora::weighting::uniform;
  rolora::federation<cpu, rolora::train_both, rolora::factorwise<coordinate_median>,
                     rolora::privacy::client_dp>
      fed(rolora::train_both{}, {}, config, initial, rolora::privacy::client_dp{});
}
