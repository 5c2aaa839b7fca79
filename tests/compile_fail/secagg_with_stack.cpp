// expect: static assertion failed: rolora::federation: secure aggregation needs an aggregator whose result is a mean of the uploaded factors
// Secure aggregation over FLoRA's stacking: the server sees only the sum of the clients' inputs,
// and stacking needs each client's factors, so the composition is refused at compile time.
#include <rolora/rolora.hpp>

using cpu = rolora::eigen_backend<double>;

rolora::round_report merge(
    rolora::federation_server<cpu, rolora::train_both, rolora::flora_stack>& server,
    const rolora::round_plan& plan) {
  return server.complete_round(plan, rolora::secure_sum{});
}
