// expect: static assertion failed: rolora::federation: secure aggregation needs an aggregator whose result is a mean of the uploaded factors
// Secure aggregation over a coordinate-wise median: the server sees only the sum of the clients'
// inputs, and a median needs each client's factors, so the composition is refused at compile time.
#include <rolora/rolora.hpp>

#include "coordinate_median.hpp"

using cpu = rolora::eigen_backend<double>;

rolora::round_report merge(rolora::federation_server<cpu, rolora::train_both,
                                                     rolora::factorwise<coordinate_median>>& server,
                           const rolora::round_plan& plan) {
  return server.complete_round(plan, rolora::secure_sum{});
}
