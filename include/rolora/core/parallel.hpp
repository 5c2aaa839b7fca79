// The one way rolora runs independent work items side by side: clients in a round, evaluation
// chunks, pretraining micro-batches. Each item's result must depend only on the item, so the
// thread count never changes a bit.
#pragma once
#include <algorithm>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace rolora::detail {

// Calls fn(i) for every i in [0, n) on up to `threads` threads (thread k takes k, k + threads,
// ...). An exception thrown for an item does not stop the others; when all are done, the one of
// the lowest item is rethrown.
template <class F>
void parallel_for(std::size_t n, std::size_t threads, F&& fn) {
  std::vector<std::exception_ptr> errors(n);
  auto work = [&](std::size_t first, std::size_t stride) {
    for (std::size_t i = first; i < n; i += stride) {
      try {
        fn(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  threads = std::max<std::size_t>(1, std::min(threads, n));
  if (threads == 1) {
    work(0, 1);
  } else {
    std::vector<std::jthread> pool;
    for (std::size_t k = 0; k < threads; ++k) pool.emplace_back(work, k, threads);
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace rolora::detail
