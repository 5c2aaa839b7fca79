// expect: static assertion failed: rolora::factorwise: the Reduce type does not model rolora::factor_reducer
// A reducer that takes one copy instead of all of them: factorwise must name the reducer contract.
#include <rolora/rolora.hpp>

struct one_copy_reducer {
  static constexpr std::string_view name = "one_copy";
  template <class T>
  rolora::host_matrix<T> operator()(const rolora::host_matrix<T>& copy) const {
    return copy;
  }
};

using cpu = rolora::eigen_backend<double>;

void aggregate_with_it(rolora::adapter_set<cpu>& global,
                       std::span<const rolora::client_update<cpu>> updates) {
  rolora::aggregate(rolora::factorwise<one_copy_reducer>{}, global, updates, rolora::both_factors);
}
