// expect: rolora sample compile-fail check
// Sample proving the compile-fail mechanism works: this file must fail to compile, and the
// compiler output must match the regex on line 1. Safe to delete once real ones exist.
#include <rolora/rolora.hpp>

template <class T>
inline constexpr bool rolora_always_false = false;

template <class T>
void rolora_sample_reject() {
  static_assert(rolora_always_false<T>, "rolora sample compile-fail check");
}

void rolora_sample_instantiate() { rolora_sample_reject<int>(); }
