// Fixed-point encoding of a client's update for secure aggregation: masks are added in the ring
// Z_M, M = 2^64 (uint64 arithmetic wraps by itself), so the doubles become ring elements first.
//
// With `bits` in [1, 62] and `range` > 0, one level is range / 2^(bits-1). A coordinate x is
// clipped to [-range, range], scaled to v = x / level in [-2^(bits-1), 2^(bits-1)], rounded
// stochastically (floor(v) + 1 with probability v - floor(v), else floor(v): unbiased, so
// E[decode(encode(x))] = clip(x)) and stored as the two's complement of that integer in Z_M.
// The uniforms come from std::mt19937_64 seeded by the caller, so an encoding is reproducible.
//
// No wrap: a sum of n encodings has magnitude at most n * 2^(bits-1), and decoding reads it as a
// signed integer, exact while n * 2^(bits-1) <= 2^63 - 1 (< M/2). A codec refuses (config_error)
// a client count above that bound.
//
// Weighted: encode_weighted(x, w) encodes the L + 1 coordinates (w x_1, ..., w x_L, w); the server
// divides the summed first L by the summed last (decode_weighted_sum). `range` must then cover
// |w x_j| and w.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <rolora/core/error.hpp>
#include <span>
#include <vector>

namespace rolora::secagg {

class codec {
 public:
  // range: the clipping bound; bits: levels = 2^bits over [-range, range]; max_clients: the most
  // encodings that will be summed (checked against the wrap bound above).
  codec(double range, unsigned bits, std::size_t max_clients)
      : range_(range), bits_(bits), max_clients_(max_clients) {
    if (!(range > 0) || !std::isfinite(range)) {
      rolora::detail::raise<config_error>("secagg codec: range must be finite and > 0, got ",
                                          range);
    }
    if (bits < 1 || bits > 62) {
      rolora::detail::raise<config_error>("secagg codec: bits must be in [1, 62], got ", bits);
    }
    if (max_clients < 1) {
      rolora::detail::raise<config_error>("secagg codec: max_clients must be >= 1, got 0");
    }
    const std::uint64_t magnitude = max_magnitude();
    if (max_clients > std::uint64_t(INT64_MAX) / magnitude) {
      rolora::detail::raise<config_error>(
          "secagg codec: the sum of n = ", max_clients, " encodings (range ", range, ", bits ",
          bits, ", each of magnitude up to 2^", bits - 1,
          ") could wrap modulo M = 2^64: n * 2^(bits-1) must be <= 2^63 - 1, so n <= ",
          std::uint64_t(INT64_MAX) / magnitude, " at these bits");
    }
    level_ = range / double(magnitude);
  }

  double range() const noexcept { return range_; }
  unsigned bits() const noexcept { return bits_; }
  std::size_t max_clients() const noexcept { return max_clients_; }
  // The largest encoded magnitude, 2^(bits-1).
  std::uint64_t max_magnitude() const noexcept { return std::uint64_t(1) << (bits_ - 1); }
  // One level: the value of one unit of the encoding.
  double level() const noexcept { return level_; }

  // x (L doubles, finite) -> L elements of Z_{2^64}; `seed` drives the stochastic rounding.
  std::vector<std::uint64_t> encode(std::span<const double> x, std::uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::vector<std::uint64_t> out(x.size());
    const double top = double(max_magnitude());
    for (std::size_t j = 0; j < x.size(); ++j) {
      if (!std::isfinite(x[j])) {
        rolora::detail::raise<value_error>("secagg codec: coordinate ", j, " is ", x[j],
                                           ", expected a finite number");
      }
      const double v = std::clamp(x[j], -range_, range_) / level_;  // in [-top, top]
      const double fl = std::floor(v);
      const double u = double(rng() >> 11) * 0x1.0p-53;  // uniform in [0, 1)
      double q = fl + (u < v - fl ? 1.0 : 0.0);
      q = std::clamp(q, -top, top);
      out[j] = std::uint64_t(std::int64_t(q));  // two's complement in Z_{2^64}
    }
    return out;
  }

  // (w x, w) as described at the top: L + 1 elements.
  std::vector<std::uint64_t> encode_weighted(std::span<const double> x, double w,
                                             std::uint64_t seed) const {
    if (!(w > 0) || !std::isfinite(w)) {
      rolora::detail::raise<value_error>("secagg codec: a weight must be finite and > 0, got ", w);
    }
    std::vector<double> scaled(x.begin(), x.end());
    for (double& v : scaled) v *= w;
    scaled.push_back(w);
    return encode(scaled, seed);
  }

  // The sum of n clients' encodings (mod 2^64) -> the sum of their values. Refuses n above
  // max_clients (the sum could have wrapped).
  std::vector<double> decode_sum(std::span<const std::uint64_t> sum, std::size_t n) const {
    check_count(n);
    std::vector<double> out(sum.size());
    for (std::size_t j = 0; j < sum.size(); ++j) out[j] = double(std::int64_t(sum[j])) * level_;
    return out;
  }
  // One encoding -> its values (decode_sum with n = 1).
  std::vector<double> decode(std::span<const std::uint64_t> encoded) const {
    return decode_sum(encoded, 1);
  }

  // The sum of n weighted encodings (L + 1 elements) -> sum_i w_i x_i / sum_i w_i (L values).
  std::vector<double> decode_weighted_sum(std::span<const std::uint64_t> sum, std::size_t n) const {
    if (sum.empty()) {
      rolora::detail::raise<config_error>(
          "secagg codec: a weighted sum has L + 1 >= 1 "
          "elements, got 0");
    }
    std::vector<double> v = decode_sum(sum, n);
    const double total = v.back();
    if (!(total > 0)) {
      rolora::detail::raise<value_error>("secagg codec: the summed weight of ", n,
                                         " clients decodes to ", total, ", expected > 0");
    }
    v.pop_back();
    for (double& e : v) e /= total;
    return v;
  }

 private:
  void check_count(std::size_t n) const {
    if (n < 1 || n > max_clients_) {
      rolora::detail::raise<config_error>("secagg codec: a sum of n = ", n,
                                          " encodings, expected 1..", max_clients_,
                                          " (the codec's max_clients)");
    }
  }

  double range_;
  unsigned bits_;
  std::size_t max_clients_;
  double level_ = 0;
};

}  // namespace rolora::secagg
