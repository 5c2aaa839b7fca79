// expect: static assertion failed: rolora::federation: the Aggregator type does not model rolora::aggregator_for
// An aggregator whose name is a data member, not a constant expression: refused at the federation,
// not deep inside rolora::aggregate.
#include <rolora/rolora.hpp>

struct runtime_named_aggregator {
  std::string_view name = "runtime_named";
  template <class Backend>
  rolora::adapter_set<Backend> merge(const rolora::adapter_set<Backend>& global,
                                     std::span<const rolora::client_update<Backend>>,
                                     std::span<const double>, rolora::factor_set) const {
    return global;
  }
};

template class rolora::federation<rolora::eigen_backend<float>, rolora::alternating,
                                  runtime_named_aggregator>;
