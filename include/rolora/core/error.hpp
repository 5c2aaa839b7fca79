// Error types of rolora. Misuse of the API fails at compile time; bad data, bad shapes, bad files
// and impossible configurations throw one of these at run time. Every message names what was
// expected and what came, prefixed by an id such as "[rolora.shape_error]".
#pragma once
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace rolora {

// Base of every exception rolora throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A matrix or an update whose shape does not match what it is combined with.
class shape_error : public error {
 public:
  using error::error;
};

// A value that cannot be used: non-finite numbers, weights that sum to zero, an empty round.
class value_error : public error {
 public:
  using error::error;
};

// A configuration that cannot work: r = 0, r > min(in, out), a missing module, ...
class config_error : public error {
 public:
  using error::error;
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// Throws Error with the message "[rolora.<id>] <parts...>".
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
