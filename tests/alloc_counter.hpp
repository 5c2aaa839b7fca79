// Counts the heap allocations of the calling thread, whoever makes them: Eigen (its aligned
// malloc), the standard library (operator new), Thrust's OpenMP system, oneDNN (posix_memalign).
//
// It replaces the C allocation functions of the whole test executable with ones that count and
// forward to glibc's own (__libc_*), so include it in exactly ONE translation unit per binary.
// Under AddressSanitizer, whose runtime replaces the same functions, it counts nothing and
// `alloc_counter::available` is false: a test then skips instead of asserting.
#pragma once
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__) || !defined(__GLIBC__)
#define ROLORA_TEST_COUNTS_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ROLORA_TEST_COUNTS_ALLOCATIONS 0
#endif
#endif
#ifndef ROLORA_TEST_COUNTS_ALLOCATIONS
#define ROLORA_TEST_COUNTS_ALLOCATIONS 1
#endif

namespace rolora::test {

// Allocations made by this thread while an alloc_counter lives (counters do not nest).
class alloc_counter {
 public:
  static constexpr bool available = ROLORA_TEST_COUNTS_ALLOCATIONS;
  alloc_counter() {
    count_ = 0;
    on_ = true;
  }
  ~alloc_counter() { on_ = false; }
  alloc_counter(const alloc_counter&) = delete;
  alloc_counter& operator=(const alloc_counter&) = delete;
  std::size_t count() const { return count_; }

  static void note() {
    if (on_) ++count_;
  }

 private:
  static inline thread_local bool on_ = false;
  static inline thread_local std::size_t count_ = 0;
};

}  // namespace rolora::test

#if ROLORA_TEST_COUNTS_ALLOCATIONS
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t n) {
  rolora::test::alloc_counter::note();
  return __libc_malloc(n);
}
void* calloc(std::size_t count, std::size_t n) {
  rolora::test::alloc_counter::note();
  return __libc_calloc(count, n);
}
void* realloc(void* p, std::size_t n) {
  rolora::test::alloc_counter::note();
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  rolora::test::alloc_counter::note();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** p, std::size_t alignment, std::size_t n) {
  rolora::test::alloc_counter::note();
  *p = __libc_memalign(alignment, n);
  return *p ? 0 : 12;  // ENOMEM
}
}
#endif
