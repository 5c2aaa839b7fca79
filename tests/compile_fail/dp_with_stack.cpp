// expect: static assertion failed: rolora::federation: client-level DP \(privacy::client_dp\) needs an aggregator whose result is a mean of the uploaded factors
// Client-level DP over FLoRA's stacking: the stacked factors are not a mean of the uploads, so
// the composition is refused at compile time.
#include <rolora/rolora.hpp>

using cpu = rolora::eigen_backend<double>;

void build(rolora::adapter_set<cpu> initial) {
  rolora::federation_config config;
  config.client_weighting = rolora::weighting::uniform;
  rolora::federation<cpu, rolora::train_both, rolora::flora_stack, rolora::privacy::client_dp> fed(
      rolora::train_both{}, rolora::flora_stack{}, config, initial, rolora::privacy::client_dp{});
}
