// expect: static assertion failed: rolora::federation: the Aggregator type does not model rolora::aggregator_for
// An aggregator whose merge returns nothing: the federation must name the aggregator contract.
#include <rolora/rolora.hpp>

struct forgetful_aggregator {
  static constexpr std::string_view name = "forgetful";
  template <class Backend>
  void merge(const rolora::adapter_set<Backend>&, std::span<const rolora::client_update<Backend>>,
             std::span<const double>, rolora::factor_set) const {}
};

template class rolora::federation<rolora::eigen_backend<float>, rolora::alternating,
                                  forgetful_aggregator>;
