// How every application's main ends: the exit code of its body, or, when the body throws, the
// message on stderr and exit code 2 for a rolora::error (bad input, an impossible configuration:
// the message says which) or 1 for anything else.
#pragma once
#include <cstdio>
#include <exception>
#include <functional>
#include <rolora/core/error.hpp>

namespace rolora::apps {

// `failed(code)` runs after the message (an MPI transport takes the job down with it) and gives
// the code to exit with.
template <class Body, class Failed = std::identity>
int exit_code_of(Body&& body, Failed&& failed = {}) {
  try {
    return body();
  } catch (const rolora::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return failed(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return failed(1);
  }
}

}  // namespace rolora::apps
