// The one way rolora runs independent work items side by side: clients in a round, evaluation
// chunks, pretraining micro-batches. Each item's result must depend only on the item, so the
// thread count never changes a bit.
//
// The threads are kept: a process-wide pool of workers that sleep between calls. Work that keeps
// per-thread state (the transformer's activation workspaces, oneDNN's primitive caches) then finds
// it warm in the next round instead of faulting fresh pages in a new thread every round.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace rolora::detail {

class worker_pool {
 public:
  // Never destroyed: at exit its workers still wait on its condition variable.
  static worker_pool& shared() {
    static worker_pool* const pool = new worker_pool;
    return *pool;
  }

  // Calls work(k) for every k in [0, threads): k = 0 on the calling thread, the others on the
  // pool's workers k = 1, 2, ... (the same worker for the same k on every call), and returns when
  // all have returned. `work` must not throw. Returns false without calling anything when the
  // pool is in use: by another thread, or by this call's own work (a nested parallel_for); the
  // caller then runs the work on threads of its own.
  template <class Work>
  bool try_run(std::size_t threads, Work& work) {
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    struct release {
      std::atomic<bool>& busy;
      ~release() { busy.store(false, std::memory_order_release); }
    } release_when_done{busy_};
    {
      std::lock_guard lock(mutex_);
      while (workers_.size() + 1 < threads) {
        workers_.emplace_back(&worker_pool::serve, this, workers_.size() + 1, generation_);
      }
      job_ = [](void* w, std::size_t k) { (*static_cast<Work*>(w))(k); };
      context_ = &work;
      active_ = threads;
      pending_ = threads - 1;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    return true;
  }

 private:
  worker_pool() = default;

  void serve(std::size_t k, std::uint64_t seen) {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (k >= active_) continue;
      lock.unlock();
      job_(context_, k);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::atomic<bool> busy_{false};  // set while the pool serves a caller
  std::mutex mutex_;               // guards everything below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;  // worker k is workers_[k - 1]
  void (*job_)(void*, std::size_t) = nullptr;
  void* context_ = nullptr;
  std::size_t active_ = 0, pending_ = 0;
  std::uint64_t generation_ = 0;
};

// Calls fn(i) for every i in [0, n) on up to `threads` threads (thread k takes k, k + threads,
// ...). An exception thrown for an item does not stop the others; when all are done, the one of
// the lowest item is rethrown.
template <class F>
void parallel_for(std::size_t n, std::size_t threads, F&& fn) {
  std::vector<std::exception_ptr> errors(n);
  threads = std::max<std::size_t>(1, std::min(threads, n));
  auto work = [&](std::size_t k) noexcept {
    for (std::size_t i = k; i < n; i += threads) {
      try {
        fn(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  if (threads == 1) {
    work(0);
  } else if (!worker_pool::shared().try_run(threads, work)) {
    std::vector<std::jthread> own;
    for (std::size_t k = 0; k < threads; ++k) own.emplace_back(work, k);
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace rolora::detail

namespace rolora {
// Public: applications run their own independent items (micro-batches, evaluation chunks) on
// the same kept pool, with the same guarantee (the thread count changes no bit).
using detail::parallel_for;
}  // namespace rolora
