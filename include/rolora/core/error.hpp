// Error types of rolora. Misuse of the API fails at compile time; bad data, bad shapes, bad files
// and impossible configurations throw one of these at run time. Every message names what was
// expected and what came, prefixed by an id such as "[rolora.shape_error]".
// An error about one round or one client of a federation says which in fields (round(),
// client()), set where it is raised or as it leaves the round; what() shows the round as
// "[rolora.<id>] round <t>: <message>".
#pragma once
#include <concepts>
#include <cstddef>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace rolora {

// Where an error happened, when it concerns one round or one client of a federation.
struct error_context {
  std::optional<std::size_t> round = std::nullopt;
  std::optional<std::size_t> client = std::nullopt;

  // Named forms for call sites (nvcc's front end refuses designated initialisers in a braced
  // argument of raise<E>(where, parts...)).
  static error_context of_round(std::size_t t) { return {t, std::nullopt}; }
  static error_context of_client(std::size_t c) { return {std::nullopt, c}; }
};

// Base of every exception rolora throws. Each derived type names its message id in `id`.
// what() is "[rolora.<id>] round <t>: <message>" ("round <t>: " only when round() is set);
// copies never throw (the text is std::runtime_error's, the context plain values).
class error : public std::runtime_error {
 public:
  // An error whose what() is `text` as given, with no id and no context.
  explicit error(const std::string& text) : std::runtime_error(text) {}
  explicit error(const char* text) : std::runtime_error(text) {}
  // "[rolora.<kind>] <message>" (kind: the id, or a finer one such as "cuda_error"), about
  // `where` (its round, when set, shown before the message).
  error(std::string_view kind, std::string_view message, error_context where = {})
      : std::runtime_error(compose(kind, message, where.round)),
        tag_(kind.size() + 10),
        head_(std::string_view(what()).size() - message.size()),
        round_(where.round),
        client_(where.client) {}

  static constexpr std::string_view id = "error";

  std::optional<std::size_t> round() const noexcept { return round_; }
  std::optional<std::size_t> client() const noexcept { return client_; }
  error_context context() const noexcept { return {round_, client_}; }
  // what() without the "[rolora.<id>] " tag and the "round <t>: " that follows it.
  std::string_view message() const noexcept { return std::string_view(what()).substr(head_); }

  // Names round t (what() gains "round <t>: " after its tag) unless the error names one already.
  void set_round(std::size_t t) {
    if (round_) return;
    const std::string_view text(what());
    const std::size_t body = text.size() - head_;
    std::string named(text.substr(0, tag_));
    named.append("round ").append(std::to_string(t)).append(": ").append(text.substr(tag_));
    std::runtime_error::operator=(std::runtime_error(named));
    head_ = named.size() - body;
    round_ = t;
  }
  // Names the client unless the error names one already (what() is unchanged: a message about
  // a client says so in its text).
  void set_client(std::size_t c) noexcept {
    if (!client_) client_ = c;
  }

 private:
  static std::string compose(std::string_view kind, std::string_view message,
                             std::optional<std::size_t> round) {
    std::string s = "[rolora.";
    s.append(kind).append("] ");
    if (round) s.append("round ").append(std::to_string(*round)).append(": ");
    return s.append(message);
  }

  std::size_t tag_ = 0;   // the size of what()'s "[rolora.<id>] " (0 without an id)
  std::size_t head_ = 0;  // tag_ plus the size of its "round <t>: "
  std::optional<std::size_t> round_;
  std::optional<std::size_t> client_;
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

// A differentially private federation that would spend more than its target (epsilon, delta) in
// its next round: it stops before that round (nothing changes); the message names the epsilon
// spent so far, the epsilon the round would bring it to, and the target (privacy/client_dp.hpp).
class privacy_budget_exceeded : public error {
 public:
  using error::error;
  static constexpr std::string_view id = "privacy_budget_exceeded";
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
  throw Error(Error::id, detail::concat(std::forward<Parts>(parts)...));
}
// The same, about round and/or client `where` (the error's round() and client()); a round shows
// in the message as "[rolora.<id>] round <t>: <parts...>":
//   rolora::raise<rolora::value_error>(rolora::error_context::of_round(t), "no client update");
template <class Error, class... Parts>
requires std::derived_from<Error, error>
[[noreturn]] void raise(error_context where, Parts&&... parts) {
  throw Error(Error::id, detail::concat(std::forward<Parts>(parts)...), where);
}

namespace detail {

using rolora::raise;  // the library's own call sites say detail::raise

// Throws Error with the message "[rolora.<id>] <parts...>", for an id finer than the type's
// (device_error's "cuda_error", "out_of_memory").
template <class Error, class... Parts>
[[noreturn]] void fail(const char* id, Parts&&... parts) {
  throw Error(id, concat(std::forward<Parts>(parts)...));
}

// "[rows, cols]", the shape notation used in every message.
template <class Index>
std::string shape_string(Index rows, Index cols) {
  return concat('[', rows, ", ", cols, ']');
}

}  // namespace detail
}  // namespace rolora
