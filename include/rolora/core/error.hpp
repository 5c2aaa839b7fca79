// Error types of rolora. Misuse of the API fails at compile time; bad data, bad shapes, bad files
// and impossible configurations throw one of these at run time. Every message names what was
// expected and what came, prefixed by an id such as "[rolora.shape_error]".
#pragma once
#include <concepts>
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace rolora {

// Base of every exception rolora throws. Each derived type names its message id in `id`.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  static constexpr std::string_view id = "error";
};

// A matrix or an update whose shape does not match what it is combined with.
class shape_error : public error {
 public:
  using error::error;
  static constexpr std::string_view id = "shape_error";
};

// A value that cannot be used: non-finite numbers, weights that sum to zero, an empty round.
class value_error : public error {
 public:
  using error::error;
  static constexpr std::string_view id = "value_error";
};

// A configuration that cannot work: r = 0, r > min(in, out), a missing module, ...
class config_error : public error {
 public:
  using error::error;
  static constexpr std::string_view id = "config_error";
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

}  // namespace detail

// Throws Error with the message "[rolora.<Error::id>] <parts...>": the id is the type's own.
// Applications and user extensions raise rolora's errors through it, as the library does:
//   rolora::raise<rolora::config_error>("--rank must be >= 1, got ", rank);
template <class Error, class... Parts>
requires std::derived_from<Error, error>
[[noreturn]] void raise(Parts&&... parts) {
  throw Error(detail::concat("[rolora.", Error::id, "] ", std::forward<Parts>(parts)...));
}

namespace detail {

using rolora::raise;  // the library's own call sites say detail::raise

// Throws Error with the message "[rolora.<id>] <parts...>", for an id finer than the type's
// (device_error's "cuda_error", "out_of_memory").
template <class Error, class... Parts>
[[noreturn]] void fail(const char* id, Parts&&... parts) {
  throw Error(concat("[rolora.", id, "] ", std::forward<Parts>(parts)...));
}

// "[rows, cols]", the shape notation used in every message.
template <class Index>
std::string shape_string(Index rows, Index cols) {
  return concat('[', rows, ", ", cols, ']');
}

}  // namespace detail
}  // namespace rolora
