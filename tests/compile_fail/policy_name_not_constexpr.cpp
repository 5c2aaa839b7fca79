// expect: static assertion failed: rolora::federation: the UpdatePolicy type does not model rolora::update_policy
// A policy whose static name is not constexpr: its name is not a constant expression.
#include <rolora/rolora.hpp>

struct mutable_name_policy {
  static inline std::string_view name = "mutable_name_policy";
  rolora::factor_set trains(std::size_t) const { return rolora::only_b; }
  rolora::factor_set shares(std::size_t) const { return rolora::only_b; }
  rolora::factor_set keeps_local() const { return rolora::no_factors; }
};

template class rolora::federation<rolora::eigen_backend<double>, mutable_name_policy,
                                  rolora::fedavg>;
