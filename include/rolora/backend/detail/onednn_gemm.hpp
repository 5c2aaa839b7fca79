// oneDNN as eigen_backend<float>'s GEMM provider (compile time: ROLORA_WITH_ONEDNN, set by the
// CMake option ROLORA_ENABLE_ONEDNN when Debian's libdnnl-dev is found; docs/backends.md).
//
// Without ROLORA_WITH_ONEDNN `onednn_gemm_available` is false and the functions are stubs that
// decline, so eigen_backend compiles the same with or without oneDNN installed.
//
// Determinism: every call runs on the calling thread only (OpenMP's thread count set to 1 for the
// call and restored after). A client's GEMMs therefore never depend on how many clients run side
// by side, and the bits are the same for any --threads. On another machine oneDNN may pick another
// kernel (its ISA dispatch), as Eigen's -march=native does: bits are per machine, not portable.
#pragma once
#include <rolora/core/shape.hpp>

#if defined(ROLORA_WITH_ONEDNN)
#include <dnnl.h>
// The compiler's <omp.h> declares the two calls below (libgomp, linked by CMake); declaring them
// ourselves would clash with it in a TU that also includes it (Thrust-OMP does).
#if __has_include(<omp.h>)
#include <omp.h>
#else
extern "C" {
int omp_get_max_threads(void);
void omp_set_num_threads(int);
}
#endif
#endif

namespace rolora::detail {

#if defined(ROLORA_WITH_ONEDNN)
inline constexpr bool onednn_gemm_available = true;

// oneDNN's fp32 GEMM is ahead of Eigen's from about 64^3 multiply-adds up (bench/bench_gemm.cpp,
// one AVX2 core: 1.2 to 1.7x at the step's [128 | 512] x [128 | 512] x 2048 shapes, even at
// 64^3 and at attention's 128 x 32 x 128; Eigen ahead at 32^3 and below, where oneDNN's call
// overhead dominates). docs/benchmarks.md has the table.
inline constexpr double onednn_min_mnk = 64.0 * 64.0 * 64.0;

inline bool onednn_preferred(index_t m, index_t n, index_t k) {
  return m > 0 && n > 0 && k > 0 && double(m) * double(n) * double(k) >= onednn_min_mnk;
}

// Column-major c [m, n] = alpha op_a(a) op_b(b) + beta c, with leading dimensions lda, ldb, ldc
// (rows of the stored matrices). dnnl_sgemm is row-major, and a column-major matrix is the
// row-major view of its transpose: c^T = op_b(b)^T op_a(a)^T. Returns false when oneDNN
// refuses the call (the caller then computes it).
inline bool onednn_sgemm(op op_a, op op_b, index_t m, index_t n, index_t k, float alpha,
                         const float* a, index_t lda, const float* b, index_t ldb, float beta,
                         float* c, index_t ldc) {
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const dnnl_status_t s = dnnl_sgemm(op_b == op::none ? 'N' : 'T', op_a == op::none ? 'N' : 'T', n,
                                     m, k, alpha, b, ldb, a, lda, beta, c, ldc);
  omp_set_num_threads(threads);
  return s == dnnl_success;
}
#else
inline constexpr bool onednn_gemm_available = false;
inline bool onednn_preferred(index_t, index_t, index_t) { return false; }
inline bool onednn_sgemm(op, op, index_t, index_t, index_t, float, const float*, index_t,
                         const float*, index_t, float, float*, index_t) {
  return false;
}
#endif

}  // namespace rolora::detail
