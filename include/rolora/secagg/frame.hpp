// The frames secagg::mpi_transport (mpi.hpp) carries the protocol's stage messages in, one per
// MPI message: a kind (one byte: D, C, S, K, R, U from the server; r, x, a, s, m, u from a
// client, mpi.hpp lists them), the round and the client (u64 each), the number of parts (u64),
// then each part as its length (u64) and its bytes; integers little-endian. The parts are the
// stage messages of messages.hpp (checked by their own decoders) and a few u64 numbers. A frame
// is hostile input: decode refuses (value_error) a truncated one, one whose lengths run past its
// end and trailing bytes. No MPI here: the fuzz target reads frames too.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <rolora/core/error.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora::secagg {

namespace frames {

struct frame {
  char kind = 0;
  std::uint64_t round = 0, client = 0;
  std::vector<std::vector<std::uint8_t>> parts;
};

inline void put_u64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int b = 0; b < 8; ++b) out.push_back(std::uint8_t(v >> (8 * b)));
}
inline std::uint64_t get_u64(std::span<const std::uint8_t> in, std::size_t at) {
  std::uint64_t v = 0;
  for (int b = 0; b < 8; ++b) v |= std::uint64_t(in[at + std::size_t(b)]) << (8 * b);
  return v;
}

inline std::vector<std::uint8_t> encode(const frame& f) {
  std::vector<std::uint8_t> out{std::uint8_t(f.kind)};
  put_u64(out, f.round);
  put_u64(out, f.client);
  put_u64(out, f.parts.size());
  for (const auto& p : f.parts) {
    put_u64(out, p.size());
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// Hostile input: every length is checked against what is left.
inline frame decode(std::span<const std::uint8_t> in) {
  constexpr std::size_t head = 1 + 3 * 8;
  if (in.size() < head) {
    rolora::detail::raise<value_error>("secagg frame: ", in.size(), " bytes, expected at least ",
                                       head);
  }
  frame f;
  f.kind = char(in[0]);
  f.round = get_u64(in, 1);
  f.client = get_u64(in, 9);
  const std::uint64_t count = get_u64(in, 17);
  std::size_t at = head;
  if (count > (in.size() - at) / 8) {
    rolora::detail::raise<value_error>("secagg frame: ", count, " parts in ", in.size() - at,
                                       " bytes");
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    if (in.size() - at < 8) rolora::detail::raise<value_error>("secagg frame: truncated");
    const std::uint64_t n = get_u64(in, at);
    at += 8;
    if (n > in.size() - at) {
      rolora::detail::raise<value_error>("secagg frame: part ", i, " of ", n, " bytes, ",
                                         in.size() - at, " left");
    }
    f.parts.emplace_back(in.begin() + std::ptrdiff_t(at), in.begin() + std::ptrdiff_t(at + n));
    at += n;
  }
  if (at != in.size()) {
    rolora::detail::raise<value_error>("secagg frame: ", in.size() - at, " bytes after the parts");
  }
  return f;
}

inline std::vector<std::uint8_t> numbers(std::initializer_list<std::uint64_t> values) {
  std::vector<std::uint8_t> out;
  for (auto v : values) put_u64(out, v);
  return out;
}
inline std::vector<std::uint8_t> number_list(const std::vector<std::size_t>& values) {
  std::vector<std::uint8_t> out;
  for (auto v : values) put_u64(out, v);
  return out;
}
// Part `i` of `f` as `count` u64 (0: any multiple of 8 bytes).
inline std::vector<std::uint64_t> numbers_of(const frame& f, std::size_t i, std::size_t count) {
  if (i >= f.parts.size() || f.parts[i].size() % 8 != 0 ||
      (count && f.parts[i].size() != 8 * count)) {
    rolora::detail::raise<value_error>("secagg frame '", f.kind, "': part ", i, " must hold ",
                                       count ? std::to_string(count) : std::string("whole"),
                                       " u64 numbers");
  }
  std::vector<std::uint64_t> out;
  for (std::size_t at = 0; at < f.parts[i].size(); at += 8) out.push_back(get_u64(f.parts[i], at));
  return out;
}
// Part `i` as text (an x frame's reason); empty when there is none.
inline std::string text_of(const frame& f, std::size_t i) {
  return i < f.parts.size() ? std::string(f.parts[i].begin(), f.parts[i].end()) : std::string();
}
inline const std::vector<std::uint8_t>& part(const frame& f, std::size_t i) {
  if (i >= f.parts.size()) {
    rolora::detail::raise<value_error>("secagg frame '", f.kind, "': ", f.parts.size(),
                                       " parts, expected at least ", i + 1);
  }
  return f.parts[i];
}

}  // namespace frames

}  // namespace rolora::secagg
