// expect: static assertion failed: rolora::federation: the UpdatePolicy type does not model rolora::update_policy
// A policy that forgot keeps_local(): the federation must say which contract is not met.
#include <rolora/rolora.hpp>

struct half_a_policy {
  static constexpr std::string_view name = "half_a_policy";
  rolora::factor_set trains(std::size_t) const { return rolora::only_b; }
  rolora::factor_set shares(std::size_t) const { return rolora::only_b; }
};

template class rolora::federation<rolora::eigen_backend<double>, half_a_policy, rolora::fedavg>;
