// What the benchmark suites share: reproducible operands, shape labels, rate counters and the
// GEMM shapes every suite measures its reference at (so the ratios of two suites compare like
// with like).
#pragma once
#include <benchmark/benchmark.h>

#include <cstdint>
#include <rolora/core/concepts.hpp>  // host_matrix, index_t
#include <rolora/core/rng.hpp>
#include <string>

namespace rolora::bench {

inline constexpr std::uint64_t seed = 20240611;

// A [rows, cols] matrix with entries U(-1, 1) from rolora's Philox stream (seed, data, tag):
// the same bits on every run and every machine.
template <class T>
host_matrix<T> random_matrix(index_t rows, index_t cols, std::uint32_t tag) {
  const random_stream rs(seed, stream::data, tag, 0);
  host_matrix<T> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) {
    m.data()[i] = static_cast<T>(2.0 * rs.uniform(std::uint64_t(i)) - 1.0);
  }
  return m;
}

// "rowsxcols", the label notation of every suite.
inline std::string shape(index_t rows, index_t cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

// Counter that prints `per_iteration * iterations / seconds`; with per_iteration in units of 1e9
// it reads directly as GFLOP/s or GB/s.
inline benchmark::Counter per_second(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// The GEMM shapes C [m, n] = A [m, k] B [k, n] of the references: square, the frozen base W0 x
// at d = 768 and 4096, A x at r = 16, and B A at r = 8 (the aggregation error's product).
inline void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "k", "n"});
  for (index_t s : {256, 768, 1024}) b->Args({s, s, s});
  for (index_t n : {32, 128, 512}) b->Args({768, 768, n});
  for (index_t n : {32, 128}) b->Args({4096, 4096, n});
  b->Args({16, 768, 512});
  b->Args({768, 8, 768});
}

}  // namespace rolora::bench
