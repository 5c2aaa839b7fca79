// The federation of one method, with or without client-level differential privacy (--dp client,
// apps/common/options.hpp's dp_settings): the transformer applications hand the method's policy
// and aggregator here and run `body` on the federation, whichever of the two types it is.
#pragma once
#include <cstddef>
#include <rolora/federated/federation.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <string>
#include <utility>

#include "options.hpp"

namespace rolora::apps {

// body(fed) on federation<Backend, Policy, Aggregator>, or, with --dp client, on
// federation<..., privacy::client_dp> with uniform client weighting (DP-FedAvg's: sample-count
// weighting leaks the counts and breaks the sensitivity bound). A method whose aggregate is not
// a mean of the uploaded factors is refused in one line before any round. `rounds` sizes the
// noise when only --target-epsilon is given.
template <class Backend, class Policy, class Aggregator, class Body>
auto with_federation(Policy policy, Aggregator aggregator, federation_config config,
                     adapter_set<Backend> initial, const dp_settings& dp, const std::string& method,
                     Body&& body) {
  if (!dp.on()) {
    federation<Backend, Policy, Aggregator> fed(std::move(policy), std::move(aggregator),
                                                std::move(config), std::move(initial));
    return body(fed);
  }
  if constexpr (mean_of_factors_aggregator<Aggregator>) {
    const auto privacy = dp.to_client_dp(config.num_rounds);
    config.client_weighting = weighting::uniform;
    federation<Backend, Policy, Aggregator, privacy::client_dp> fed(
        std::move(policy), std::move(aggregator), std::move(config), std::move(initial), privacy);
    return body(fed);
  } else {
    raise<config_error>("--dp client: ", method,
                        "'s aggregate is not a mean of the uploaded factors, so clipping does not "
                        "bound one client's influence; use fedit, ffa, rolora or fedsa "
                        "(docs/privacy.md)");
  }
}

}  // namespace rolora::apps
