// GEMM of the Thrust backend. On the cpp/omp systems: a blocked kernel run as one Thrust
// for_each over output tiles (in parallel under OpenMP); on CUDA: cuBLAS.
// Internal to rolora/backend/thrust/backend.hpp.
//
// Host kernel, for c [m, n] = alpha op(a) [m, k] op(b) [k, n] + beta c:
//   - c is cut into tiles of tile_m x tile_n; each tile is computed by one thread, so the
//     work split never changes a result;
//   - for each tile, k is walked in blocks of tile_k: op(a)'s and op(b)'s blocks are packed into
//     contiguous buffers (which also turns transposes into plain reads) and a register-blocked
//     micro-kernel (micro_m x micro_n accumulators) adds them into the tile's accumulator;
//   - every accumulator is loaded, updated for k = k0, k0 + 1, ... and stored back, so each
//     element of c is the sum over k in increasing order: the same bits for any thread count,
//     on the cpp and the omp systems alike.
#pragma once
// clang-format off
#include <rolora/backend/thrust/system.hpp>  // first: it picks the Thrust device system
// clang-format on
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <rolora/backend/thrust/error.hpp>
#include <rolora/core/shape.hpp>
#include <type_traits>
#include <vector>

// (nvcc's front end does not know the GCC pragma; the CUDA flavour does not use this kernel.)
#if defined(__GNUC__) && !defined(__CUDACC__)
#define ROLORA_UNROLL _Pragma("GCC unroll 16")
#else
#define ROLORA_UNROLL
#endif

namespace rolora::detail {

template <class T>
struct host_gemm_blocking {
  // 16 x 12 floats / 8 x 12 doubles of accumulators: measured best of {8, 16, 32} x {4, 6, 12}
  // on this project's AVX-512 machines, with and without -march=native (docs/backends.md).
  static constexpr index_t micro_m = 64 / sizeof(T);
  static constexpr index_t micro_n = 12;
  static constexpr index_t tile_m = 8 * micro_m;
  static constexpr index_t tile_n = 8 * micro_n;
  static constexpr index_t tile_k = 256;
  // Below this many multiply-adds the product runs on the calling thread: starting a parallel
  // region costs more than it saves. (The tiles, hence the bits, are the same either way.)
  static constexpr index_t serial_work = index_t(1) << 20;
};

// One tile of c per call; the operand layouts are column-major with leading dimensions lda/ldb.
template <class T>
struct host_gemm_tile {
  using blocking = host_gemm_blocking<T>;
  static constexpr index_t mr = blocking::micro_m, nr = blocking::micro_n;

  const T* a;
  const T* b;
  T* c;
  index_t m, n, k, lda, ldb;
  bool trans_a, trans_b;
  T alpha, beta;
  index_t tiles_m;
  index_t ldc;  // c's leading dimension (>= m): c may be a block of a larger matrix

  void operator()(index_t tile) const {
    const index_t i0 = (tile % tiles_m) * blocking::tile_m;
    const index_t j0 = (tile / tiles_m) * blocking::tile_n;
    const index_t mb = std::min(blocking::tile_m, m - i0), nb = std::min(blocking::tile_n, n - j0);
    const index_t mp = (mb + mr - 1) / mr * mr, np = (nb + nr - 1) / nr * nr;  // padded extents

    // Per-thread buffers, reused across tiles and calls.
    thread_local std::vector<T> acc_buf, a_buf, b_buf;
    acc_buf.assign(static_cast<std::size_t>(mp * np), T(0));  // [mp, np], column-major
    a_buf.resize(static_cast<std::size_t>(blocking::tile_k * mp));
    b_buf.resize(static_cast<std::size_t>(blocking::tile_k * np));
    T* acc = acc_buf.data();
    T* ap = a_buf.data();
    T* bp = b_buf.data();

    for (index_t k0 = 0; k0 < k; k0 += blocking::tile_k) {
      const index_t kb = std::min(blocking::tile_k, k - k0);
      // ap [kb][mp]: ap[kk * mp + ii] = op(a)(i0 + ii, k0 + kk), zero in the padding rows.
      for (index_t kk = 0; kk < kb; ++kk) {
        T* dst = ap + kk * mp;
        if (!trans_a) {
          const T* src = a + i0 + (k0 + kk) * lda;
          for (index_t ii = 0; ii < mb; ++ii) dst[ii] = src[ii];
        } else {
          const T* src = a + (k0 + kk) + i0 * lda;
          for (index_t ii = 0; ii < mb; ++ii) dst[ii] = src[ii * lda];
        }
        for (index_t ii = mb; ii < mp; ++ii) dst[ii] = T(0);
      }
      // bp [np / nr][kb][nr]: bp[(jp * kb + kk) * nr + jj] = op(b)(k0 + kk, j0 + jp * nr + jj).
      for (index_t jp = 0; jp < np / nr; ++jp) {
        for (index_t kk = 0; kk < kb; ++kk) {
          T* dst = bp + (jp * kb + kk) * nr;
          for (index_t jj = 0; jj < nr; ++jj) {
            const index_t j = jp * nr + jj;
            dst[jj] = j >= nb    ? T(0)
                      : !trans_b ? b[(k0 + kk) + (j0 + j) * ldb]
                                 : b[(j0 + j) + (k0 + kk) * ldb];
          }
        }
      }
      for (index_t jp = 0; jp < np / nr; ++jp) {
        for (index_t ip = 0; ip < mp / mr; ++ip) {
          micro_kernel(kb, ap + ip * mr, mp, bp + jp * kb * nr, acc + ip * mr + jp * nr * mp, mp);
        }
      }
    }

    // c tile = alpha acc + beta c; with beta == 0, c is never read (it may hold anything).
    for (index_t jj = 0; jj < nb; ++jj) {
      T* cj = c + i0 + (j0 + jj) * ldc;
      const T* accj = acc + jj * mp;
      if (beta == T(0)) {
        for (index_t ii = 0; ii < mb; ++ii) cj[ii] = alpha * accj[ii];
      } else {
        for (index_t ii = 0; ii < mb; ++ii) cj[ii] = alpha * accj[ii] + beta * cj[ii];
      }
    }
  }

  // acc[mr, nr] (leading dimension ldc) += ap[kb][mr] (stride lda_p) * bp[kb][nr], k in order.
  // Fully unrolled so that the mr x nr accumulators stay in registers (GCC vectorises the i loop).
  static void micro_kernel(index_t kb, const T* __restrict ap, index_t lda_p,
                           const T* __restrict bp, T* __restrict acc, index_t ldc) {
    T r[nr][mr];
    ROLORA_UNROLL
    for (int j = 0; j < int(nr); ++j) {
      ROLORA_UNROLL
      for (int i = 0; i < int(mr); ++i) r[j][i] = acc[i + j * ldc];
    }
    for (index_t kk = 0; kk < kb; ++kk) {
      const T* av = ap + kk * lda_p;
      const T* bv = bp + kk * nr;
      T a_col[mr];
      ROLORA_UNROLL
      for (int i = 0; i < int(mr); ++i) a_col[i] = av[i];
      ROLORA_UNROLL
      for (int j = 0; j < int(nr); ++j) {
        const T bj = bv[j];
        ROLORA_UNROLL
        for (int i = 0; i < int(mr); ++i) r[j][i] += a_col[i] * bj;
      }
    }
    ROLORA_UNROLL
    for (int j = 0; j < int(nr); ++j) {
      ROLORA_UNROLL
      for (int i = 0; i < int(mr); ++i) acc[i + j * ldc] = r[j][i];
    }
  }
};

// c [m, n] = alpha op(a) op(b) + beta c on a host system (cpp or omp), c already [m, n] with
// leading dimension ldc (0: m, a whole matrix).
template <class System, class T>
void host_gemm(const T* a, index_t lda, bool trans_a, const T* b, index_t ldb, bool trans_b,
               index_t m, index_t n, index_t k, T alpha, T beta, T* c, index_t ldc = 0) {
  using blocking = host_gemm_blocking<T>;
  if (m == 0 || n == 0) return;
  const index_t tiles_m = (m + blocking::tile_m - 1) / blocking::tile_m;
  const index_t tiles_n = (n + blocking::tile_n - 1) / blocking::tile_n;
  const host_gemm_tile<T> tile{a,   b,       c,       m,     n,    k,       lda,
                               ldb, trans_a, trans_b, alpha, beta, tiles_m, ldc > 0 ? ldc : m};
  const thrust::counting_iterator<index_t> first(0);
  if (tiles_m * tiles_n == 1 || m * n * k < blocking::serial_work) {
    thrust::for_each_n(thrust::cpp::par, first, tiles_m * tiles_n, tile);
  } else {
    thrust::for_each_n(System{}, first, tiles_m * tiles_n, tile);
  }
}

}  // namespace rolora::detail

#if defined(__CUDACC__)
namespace rolora::detail {

// One cuBLAS handle per host thread (cuBLAS handles must not be shared by concurrent threads),
// made on first use on the device current at that time, destroyed when the thread ends.
class cublas_handle {
 public:
  static cublasHandle_t get() {
    thread_local cublas_handle h;
    return h.handle_;
  }
  cublas_handle(const cublas_handle&) = delete;
  cublas_handle& operator=(const cublas_handle&) = delete;

 private:
  cublas_handle() { ROLORA_CUBLAS_CHECK(cublasCreate(&handle_)); }
  ~cublas_handle() { cublasDestroy(handle_); }  // at thread exit the context may be gone: no check
  cublasHandle_t handle_ = nullptr;
};

inline void check_cublas_extent(index_t extent) {
  if (extent > std::numeric_limits<int>::max()) {
    raise<shape_error>("thrust_cuda gemm: extent ", extent, " exceeds cuBLAS's int range");
  }
}

// c [m, n] = alpha op(a) op(b) + beta c through cuBLAS (column-major, as rolora's matrices).
template <class T>
void cublas_gemm(const T* a, index_t lda, bool trans_a, const T* b, index_t ldb, bool trans_b,
                 index_t m, index_t n, index_t k, T alpha, T beta, T* c) {
  if (m == 0 || n == 0) return;
  for (index_t e : {m, n, k, lda, ldb}) check_cublas_extent(e);
  const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int im = int(m), in = int(n), ik = int(k);
  const int ila = int(std::max<index_t>(lda, 1)), ilb = int(std::max<index_t>(ldb, 1));
  if constexpr (std::is_same_v<T, float>) {
    ROLORA_CUBLAS_CHECK(cublasSgemm(cublas_handle::get(), oa, ob, im, in, ik, &alpha, a, ila, b,
                                    ilb, &beta, c, im));
  } else {
    ROLORA_CUBLAS_CHECK(cublasDgemm(cublas_handle::get(), oa, ob, im, in, ik, &alpha, a, ila, b,
                                    ilb, &beta, c, im));
  }
}

// count products c_i [m, n] = alpha op(a_i) op(b_i) + beta c_i, operand i at pointer + i stride,
// leading dimensions lda, ldb, ldc (blocks of larger matrices), through one strided batched
// cuBLAS call (the attention's per-sequence products, backend/thrust/nn_primitives.hpp).
template <class T>
void cublas_gemm_strided_batched(const T* a, index_t lda, index_t stride_a, bool trans_a,
                                 const T* b, index_t ldb, index_t stride_b, bool trans_b, index_t m,
                                 index_t n, index_t k, T alpha, T beta, T* c, index_t ldc,
                                 index_t stride_c, index_t count) {
  if (m == 0 || n == 0 || count == 0) return;
  for (index_t e : {m, n, k, lda, ldb, ldc, count}) check_cublas_extent(e);
  const cublasOperation_t oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int ila = int(std::max<index_t>(lda, 1)), ilb = int(std::max<index_t>(ldb, 1));
  if constexpr (std::is_same_v<T, float>) {
    ROLORA_CUBLAS_CHECK(cublasSgemmStridedBatched(
        cublas_handle::get(), oa, ob, int(m), int(n), int(k), &alpha, a, ila, stride_a, b, ilb,
        stride_b, &beta, c, int(ldc), stride_c, int(count)));
  } else {
    ROLORA_CUBLAS_CHECK(cublasDgemmStridedBatched(
        cublas_handle::get(), oa, ob, int(m), int(n), int(k), &alpha, a, ila, stride_a, b, ilb,
        stride_b, &beta, c, int(ldc), stride_c, int(count)));
  }
}

}  // namespace rolora::detail
#endif
