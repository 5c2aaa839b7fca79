// Shamir secret sharing (Shamir, CACM 1979) for secure aggregation's self-mask seeds and mask
// secret keys. libsodium has none, so it is written here, over the prime field GF(p) with the
// Mersenne prime p = 2^61 - 1; the polynomials' random coefficients are libsodium's
// (randombytes_buf, rejection-sampled below p).
//
// A secret of B bytes is cut into E = ceil(B / 7) field elements, 7 bytes (56 bits < 61) each,
// little-endian, the last one shorter; each element is shared by its own random polynomial
//   f_e(X) = secret_e + a_{e,1} X + ... + a_{e,t-1} X^{t-1}   (mod p)
// and share x (x = 1..n) holds f_e(x) for e = 0..E-1. Any t shares give f_e(0) by Lagrange
// interpolation at 0; t - 1 shares are consistent with every secret (tests/secagg).
// A 32-byte seed or key: 5 elements, 40 bytes of share values.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <rolora/core/error.hpp>
#include <rolora/secagg/crypto.hpp>
#include <span>
#include <vector>

namespace rolora::secagg {

namespace field {

inline constexpr std::uint64_t p = (std::uint64_t(1) << 61) - 1;

__extension__ using u128 = unsigned __int128;

// Elements are in [0, p).
inline std::uint64_t add(std::uint64_t a, std::uint64_t b) {
  const std::uint64_t s = a + b;  // < 2^62: no overflow
  return s >= p ? s - p : s;
}
inline std::uint64_t sub(std::uint64_t a, std::uint64_t b) { return a >= b ? a - b : a + p - b; }
inline std::uint64_t mul(std::uint64_t a, std::uint64_t b) {
  const u128 prod = u128(a) * b;  // < 2^122
  // 2^61 = 1 (mod p): fold the high bits onto the low ones, twice.
  std::uint64_t r = std::uint64_t(prod & p) + std::uint64_t(prod >> 61);  // < 2^62
  r = (r & p) + (r >> 61);
  return r >= p ? r - p : r;
}
inline std::uint64_t pow(std::uint64_t a, std::uint64_t e) {
  std::uint64_t r = 1;
  while (e) {
    if (e & 1) r = mul(r, a);
    a = mul(a, a);
    e >>= 1;
  }
  return r;
}
// a^(p-2) = a^-1 for a != 0 (Fermat).
inline std::uint64_t inv(std::uint64_t a) { return pow(a, p - 2); }

// A uniform element from libsodium's randomness (61 random bits, redrawn when >= p).
inline std::uint64_t random_element() {
  rolora::secagg::detail::ensure_sodium();
  for (;;) {
    std::uint64_t v = 0;
    randombytes_buf(&v, sizeof v);
    v &= p;  // the low 61 bits
    if (v < p) return v;
  }
}

// The value at 0 of the polynomial of degree < points.size() through the points (xs distinct,
// non-zero): sum_i y_i prod_{j != i} x_j / (x_j - x_i).
inline std::uint64_t interpolate_at_zero(std::span<const std::uint64_t> xs,
                                         std::span<const std::uint64_t> ys) {
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    std::uint64_t num = 1, den = 1;
    for (std::size_t j = 0; j < xs.size(); ++j) {
      if (j == i) continue;
      num = mul(num, xs[j]);
      den = mul(den, sub(xs[j], xs[i]));
    }
    acc = add(acc, mul(ys[i], mul(num, inv(den))));
  }
  return acc;
}

}  // namespace field

inline constexpr std::size_t shamir_bytes_per_element = 7;

// One share of a secret: the point x, the values f_e(x), and what reconstruction needs to know.
struct share {
  std::uint64_t x = 0;                // 1..n
  std::size_t threshold = 0;          // t: shares needed
  std::size_t secret_bytes = 0;       // B
  std::vector<std::uint64_t> values;  // ceil(B / 7) field elements
};

inline std::size_t shamir_elements(std::size_t secret_bytes) {
  return (secret_bytes + shamir_bytes_per_element - 1) / shamir_bytes_per_element;
}

// n shares of `secret` (x = 1..n), any t of which reconstruct it. Refuses t = 0, t > n.
inline std::vector<share> split(std::span<const std::uint8_t> secret, std::size_t n,
                                std::size_t t) {
  if (t < 1 || t > n) {
    rolora::detail::raise<config_error>("shamir: threshold t must be in [1, n], got t = ", t,
                                        " with n = ", n);
  }
  if (n >= field::p) rolora::detail::raise<config_error>("shamir: n = ", n, " shares is too many");
  const std::size_t elements = shamir_elements(secret.size());
  std::vector<share> shares(n);
  for (std::size_t k = 0; k < n; ++k) {
    shares[k].x = k + 1;
    shares[k].threshold = t;
    shares[k].secret_bytes = secret.size();
    shares[k].values.resize(elements);
  }
  std::vector<std::uint64_t> coeffs(t);  // coeffs[0] = the secret element, the rest random
  for (std::size_t e = 0; e < elements; ++e) {
    std::uint64_t s = 0;
    const std::size_t begin = e * shamir_bytes_per_element;
    const std::size_t end = std::min(secret.size(), begin + shamir_bytes_per_element);
    for (std::size_t b = end; b > begin; --b) s = (s << 8) | secret[b - 1];
    coeffs[0] = s;
    for (std::size_t c = 1; c < t; ++c) coeffs[c] = field::random_element();
    for (auto& sh : shares) {
      std::uint64_t y = 0;  // Horner
      for (std::size_t c = t; c > 0; --c) y = field::add(field::mul(y, sh.x), coeffs[c - 1]);
      sh.values[e] = y;
    }
  }
  for (auto& c : coeffs) c = 0;
  return shares;
}

// The secret of `shares` (at least t of them, all of one split; the first t are used). Refuses
// fewer than t shares, shares of different splits' shapes, a repeated or zero x, values outside
// the field, and a result that is no secret of that length (shares of different secrets).
inline std::vector<std::uint8_t> reconstruct(std::span<const share> shares) {
  if (shares.empty()) rolora::detail::raise<config_error>("shamir: no share to reconstruct from");
  const std::size_t t = shares[0].threshold;
  const std::size_t bytes = shares[0].secret_bytes;
  const std::size_t elements = shamir_elements(bytes);
  if (shares.size() < t) {
    rolora::detail::raise<config_error>("shamir: reconstruction needs t = ", t, " shares, got ",
                                        shares.size());
  }
  for (std::size_t k = 0; k < shares.size(); ++k) {
    const share& s = shares[k];
    if (s.threshold != t || s.secret_bytes != bytes || s.values.size() != elements) {
      rolora::detail::raise<config_error>(
          "shamir: share ", k, " is of a different split: threshold ", s.threshold, ", secret of ",
          s.secret_bytes, " bytes, ", s.values.size(), " values (expected ", t, ", ", bytes, ", ",
          elements, ")");
    }
    if (s.x == 0 || s.x >= field::p) {
      rolora::detail::raise<config_error>("shamir: share ", k, " has x = ", s.x,
                                          ", expected 1..p-1");
    }
    for (std::size_t j = 0; j < k; ++j) {
      if (shares[j].x == s.x) {
        rolora::detail::raise<config_error>("shamir: shares ", j, " and ", k,
                                            " have the same x = ", s.x);
      }
    }
    for (std::uint64_t v : s.values) {
      if (v >= field::p) {
        rolora::detail::raise<config_error>("shamir: share ", k, " holds ", v,
                                            ", not an element of GF(2^61 - 1)");
      }
    }
  }
  std::vector<std::uint64_t> xs(t), ys(t);
  for (std::size_t k = 0; k < t; ++k) xs[k] = shares[k].x;
  std::vector<std::uint8_t> secret(bytes);
  for (std::size_t e = 0; e < elements; ++e) {
    for (std::size_t k = 0; k < t; ++k) ys[k] = shares[k].values[e];
    std::uint64_t s = field::interpolate_at_zero(xs, ys);
    const std::size_t begin = e * shamir_bytes_per_element;
    const std::size_t end = std::min(bytes, begin + shamir_bytes_per_element);
    for (std::size_t b = begin; b < end; ++b) {
      secret[b] = std::uint8_t(s);
      s >>= 8;
    }
    if (s != 0) {
      rolora::detail::raise<value_error>("shamir: element ", e,
                                         " reconstructs to more bits than its bytes hold: the "
                                         "shares are not of one secret");
    }
  }
  return secret;
}

}  // namespace rolora::secagg
