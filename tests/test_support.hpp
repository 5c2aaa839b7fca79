// Shared by the test translation units: the backends every generic test runs on, their
// tolerances, and small helpers. A backend-generic test is written once with
// TEST_CASE_TEMPLATE(..., Backend, ROLORA_TEST_BACKENDS).
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <rolora/rolora.hpp>
#include <string>

// A build that adds backends (the Thrust flavours) defines the list before including this file.
#ifndef ROLORA_TEST_BACKENDS
#define ROLORA_TEST_BACKENDS rolora::eigen_backend<float>, rolora::eigen_backend<double>
#endif
// The float one alone, for the slower end-to-end tests.
#ifndef ROLORA_TEST_FLOAT_BACKEND
#define ROLORA_TEST_FLOAT_BACKEND rolora::eigen_backend<float>
#endif

namespace rolora::test {

// Relative tolerance for results that are exact in exact arithmetic ("to rounding error").
template <class Backend>
constexpr double rounding_tolerance() {
  return std::is_same_v<typename Backend::scalar, float> ? 2e-5 : 1e-12;
}

// A host matrix with N(0, scale^2) entries from a test-only stream.
template <class T = double>
host_matrix<T> random_matrix(index_t rows, index_t cols, std::uint32_t tag, double scale = 1.0) {
  const random_stream rs(12345, stream::data, tag, 7);
  host_matrix<T> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<T>(scale * rs.normal(std::uint64_t(i)));
  return m;
}

template <class Backend>
typename Backend::matrix random_backend_matrix(index_t rows, index_t cols, std::uint32_t tag,
                                               double scale = 1.0) {
  return Backend::from_host(random_matrix<typename Backend::scalar>(rows, cols, tag, scale));
}

template <class Backend>
double max_abs_diff(const typename Backend::matrix& a, const typename Backend::matrix& b) {
  return (Backend::to_host(a).template cast<double>() - Backend::to_host(b).template cast<double>())
      .cwiseAbs()
      .maxCoeff();
}

template <class Backend>
bool bit_equal(const adapter_set<Backend>& x, const adapter_set<Backend>& y) {
  if (x.size() != y.size()) return false;
  for (const auto& [name, a] : x) {
    if (!y.contains(name)) return false;
    const auto& b = y.at(name);
    const auto ha = Backend::to_host(a.A), hb = Backend::to_host(b.A);
    const auto hc = Backend::to_host(a.B), hd = Backend::to_host(b.B);
    if (ha.rows() != hb.rows() || ha.cols() != hb.cols() || hc.rows() != hd.rows() ||
        hc.cols() != hd.cols() || !(ha.array() == hb.array()).all() ||
        !(hc.array() == hd.array()).all() || a.scaling != b.scaling)
      return false;
  }
  if (x.modules_to_save().size() != y.modules_to_save().size()) return false;
  for (const auto& [name, w] : x.modules_to_save()) {
    if (!y.modules_to_save().count(name)) return false;
    const auto hx = Backend::to_host(w), hy = Backend::to_host(y.modules_to_save().at(name));
    if (hx.rows() != hy.rows() || hx.cols() != hy.cols() || !(hx.array() == hy.array()).all())
      return false;
  }
  return true;
}

// The message of the exception `f` throws as type E (fails the test if it does not throw E).
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("expected an exception");
  return {};
}

// The same for a rolora error, without its "[rolora.<id>] " tag: error::message() alone.
template <class E, class F>
std::string untagged_message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return std::string(e.message());
  }
  FAIL("expected an exception");
  return {};
}

}  // namespace rolora::test
