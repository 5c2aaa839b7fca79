// oneDNN as eigen_backend<float>'s GEMM provider (compile time: ROLORA_WITH_ONEDNN, set by the
// CMake option ROLORA_ENABLE_ONEDNN when Debian's libdnnl-dev is found; docs/backends.md).
//
// Without ROLORA_WITH_ONEDNN `onednn_gemm_available` is false and the functions are stubs that
// decline, so eigen_backend compiles the same with or without oneDNN installed.
//
// Also oneDNN's bf16 matmul for eigen_backend<float>'s frozen bf16 matrices (frozen_gemm):
// onednn_bf16_gemm below.
//
// Determinism: every call runs on the calling thread only (OpenMP's thread count set to 1 for
// the call, and while a primitive is made, and restored after). A client's GEMMs therefore never
// depend on how many clients run side by side, and the bits are the same for any --threads. On
// another machine oneDNN may pick another kernel (its ISA dispatch), as Eigen's -march=native
// does: bits are per machine, not portable.
#pragma once
#include <atomic>
#include <rolora/core/shape.hpp>
#include <string>

#if defined(ROLORA_WITH_ONEDNN)
#include <dnnl.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <vector>
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

// OpenMP's thread count is 1 while one lives: oneDNN then runs (and plans, when a primitive is
// made) on the calling thread only.
class one_omp_thread {
 public:
  one_omp_thread() : threads_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~one_omp_thread() { omp_set_num_threads(threads_); }
  one_omp_thread(const one_omp_thread&) = delete;
  one_omp_thread& operator=(const one_omp_thread&) = delete;

 private:
  int threads_;
};

// Column-major c [m, n] = alpha op_a(a) op_b(b) + beta c, with leading dimensions lda, ldb, ldc
// (rows of the stored matrices). dnnl_sgemm is row-major, and a column-major matrix is the
// row-major view of its transpose: c^T = op_b(b)^T op_a(a)^T. Returns false when oneDNN
// refuses the call (the caller then computes it).
inline bool onednn_sgemm(op op_a, op op_b, index_t m, index_t n, index_t k, float alpha,
                         const float* a, index_t lda, const float* b, index_t ldb, float beta,
                         float* c, index_t ldc) {
  const one_omp_thread single;
  return dnnl_sgemm(op_b == op::none ? 'N' : 'T', op_a == op::none ? 'N' : 'T', n, m, k, alpha, b,
                    ldb, a, lda, beta, c, ldc) == dnnl_success;
}

namespace onednn {

// A strided 2-d memory descriptor.
inline dnnl_memory_desc_t desc_2d(index_t d0, index_t d1, index_t s0, index_t s1,
                                  dnnl_data_type_t type) {
  dnnl_memory_desc_t md;
  const dnnl_dims_t dims{d0, d1}, strides{s0, s1};
  if (dnnl_memory_desc_init_by_strides(&md, 2, dims, type, strides) != dnnl_success) {
    std::memset(&md, 0, sizeof md);  // zero: primitive creation then fails and we fall back
  }
  return md;
}

// A primitive from its descriptor, or null when oneDNN has none for it; `impl` gets its kernel's
// name.
inline dnnl_primitive_t make_primitive(const_dnnl_op_desc_t op_desc,
                                       const_dnnl_primitive_attr_t attr, dnnl_engine_t engine,
                                       std::string* impl = nullptr) {
  dnnl_primitive_desc_t pd = nullptr;
  if (dnnl_primitive_desc_create(&pd, op_desc, attr, engine, nullptr) != dnnl_success)
    return nullptr;
  if (impl) {
    const char* name = nullptr;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
    *impl = name ? name : "";
  }
  dnnl_primitive_t p = nullptr;
  if (dnnl_primitive_create(&p, pd) != dnnl_success) p = nullptr;
  dnnl_primitive_desc_destroy(pd);
  return p;
}

// One shape of frozen_gemm: column-major c [m, n] = op_w(w) x (+ beta c), w bf16, x fp32 [k, n]
// rounded to bf16 first. In oneDNN's row-major terms c^T [n, m] = x^T [n, k] op_w(w)^T [k, m],
// where a column-major matrix is the row-major view of its transpose.
class bf16_matmul {
 public:
  bf16_matmul(dnnl_engine_t engine, op op_w, index_t m, index_t n, index_t k, index_t ldw,
              float beta) {
    const auto x_md = desc_2d(n, k, k, 1, dnnl_f32), x16_md = desc_2d(n, k, k, 1, dnnl_bf16);
    const auto w_md = op_w == op::none ? desc_2d(k, m, ldw, 1, dnnl_bf16)   // w [m, k]
                                       : desc_2d(k, m, 1, ldw, dnnl_bf16);  // w [k, m]
    const auto c_md = desc_2d(n, m, m, 1, dnnl_f32);
    dnnl_primitive_attr_t attr = nullptr;
    dnnl_post_ops_t post = nullptr;
    if (beta != 0.0f) {  // c = (matmul) + beta c
      dnnl_primitive_attr_create(&attr);
      dnnl_post_ops_create(&post);
      dnnl_post_ops_append_sum(post, beta);
      dnnl_primitive_attr_set_post_ops(attr, post);
    }
    dnnl_matmul_desc_t mm;
    if (dnnl_matmul_desc_init(&mm, &x16_md, &w_md, nullptr, &c_md) == dnnl_success)
      matmul_ = make_primitive(&mm, attr, engine, &impl_);
    if (post) dnnl_post_ops_destroy(post);
    if (attr) dnnl_primitive_attr_destroy(attr);
    dnnl_primitive_desc_t rpd = nullptr;
    if (dnnl_reorder_primitive_desc_create(&rpd, &x_md, engine, &x16_md, engine, nullptr) ==
        dnnl_success) {
      if (dnnl_primitive_create(&round_, rpd) != dnnl_success) round_ = nullptr;
      dnnl_primitive_desc_destroy(rpd);
    }
    const std::tuple<dnnl_memory_t*, const dnnl_memory_desc_t*> mems[] = {
        {&x_, &x_md}, {&x16_, &x16_md}, {&w_, &w_md}, {&c_, &c_md}};
    for (const auto& [mem, md] : mems) {
      if (dnnl_memory_create(mem, md, engine, DNNL_MEMORY_NONE) != dnnl_success) *mem = nullptr;
    }
  }
  ~bf16_matmul() {
    for (auto* p : {matmul_, round_}) {
      if (p) dnnl_primitive_destroy(p);
    }
    for (auto* m : {x_, x16_, w_, c_}) {
      if (m) dnnl_memory_destroy(m);
    }
  }
  bf16_matmul(const bf16_matmul&) = delete;
  bf16_matmul& operator=(const bf16_matmul&) = delete;

  bool ok() const { return matmul_ && round_ && x_ && x16_ && w_ && c_; }
  const std::string& impl() const { return impl_; }

  // x16: room for the k n rounded activations.
  bool run(dnnl_stream_t stream, const void* w, const float* x, void* x16, float* c) {
    dnnl_memory_set_data_handle(x_, const_cast<float*>(x));
    dnnl_memory_set_data_handle(x16_, x16);
    dnnl_memory_set_data_handle(w_, const_cast<void*>(w));
    dnnl_memory_set_data_handle(c_, c);
    const dnnl_exec_arg_t round_args[] = {{DNNL_ARG_FROM, x_}, {DNNL_ARG_TO, x16_}};
    const dnnl_exec_arg_t args[] = {
        {DNNL_ARG_SRC, x16_}, {DNNL_ARG_WEIGHTS, w_}, {DNNL_ARG_DST, c_}};
    return dnnl_primitive_execute(round_, stream, 2, round_args) == dnnl_success &&
           dnnl_primitive_execute(matmul_, stream, 3, args) == dnnl_success &&
           dnnl_stream_wait(stream) == dnnl_success;
  }

 private:
  dnnl_primitive_t matmul_ = nullptr, round_ = nullptr;
  dnnl_memory_t x_ = nullptr, x16_ = nullptr, w_ = nullptr, c_ = nullptr;
  std::string impl_;
};

// A thread's oneDNN engine and stream, its bf16 matmuls by shape (made once, kept: a run has a
// handful of shapes) and the workspace of rounded activations (grows, never shrinks).
class bf16_thread_state {
 public:
  bf16_thread_state() {
    if (dnnl_engine_create(&engine_, dnnl_cpu, 0) != dnnl_success) engine_ = nullptr;
    if (engine_ && dnnl_stream_create(&stream_, engine_, dnnl_stream_default_flags) != dnnl_success)
      stream_ = nullptr;
  }
  ~bf16_thread_state() {
    matmuls_.clear();
    if (stream_) dnnl_stream_destroy(stream_);
    if (engine_) dnnl_engine_destroy(engine_);
  }
  bf16_thread_state(const bf16_thread_state&) = delete;
  bf16_thread_state& operator=(const bf16_thread_state&) = delete;

  static bf16_thread_state& mine() {
    thread_local bf16_thread_state state;
    return state;
  }

  // The matmul for this shape (made on first use; null when oneDNN has none).
  bf16_matmul* matmul(op op_w, index_t m, index_t n, index_t k, index_t ldw, float beta) {
    if (!stream_) return nullptr;
    const auto key = std::make_tuple(op_w, m, n, k, ldw, beta);
    auto it = matmuls_.find(key);
    if (it == matmuls_.end()) {
      auto made = std::make_unique<bf16_matmul>(engine_, op_w, m, n, k, ldw, beta);
      it = matmuls_.emplace(key, made->ok() ? std::move(made) : nullptr).first;
    }
    return it->second.get();
  }
  dnnl_stream_t stream() const { return stream_; }
  void* workspace(std::size_t bf16_values) {
    if (workspace_.size() < bf16_values) workspace_.resize(bf16_values);
    return workspace_.data();
  }

 private:
  dnnl_engine_t engine_ = nullptr;
  dnnl_stream_t stream_ = nullptr;
  std::map<std::tuple<op, index_t, index_t, index_t, index_t, float>, std::unique_ptr<bf16_matmul>>
      matmuls_;
  std::vector<std::uint16_t> workspace_;  // bf16 bits, written and read by oneDNN only
};

}  // namespace onednn

// The name of oneDNN's bf16 matmul kernel on this CPU ("brg:avx512_core_bf16", ...), or empty
// when it has none but the reference implementation (or none at all: AVX2 machines). Probed
// once, on a small shape.
inline const std::string& onednn_bf16_kernel() {
  static const std::string name = [] {
    const one_omp_thread single;
    dnnl_engine_t engine = nullptr;
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) return std::string();
    std::string impl;
    {
      const onednn::bf16_matmul probe(engine, op::none, 64, 64, 64, 64, 0.0f);
      if (probe.ok()) impl = probe.impl();
    }
    dnnl_engine_destroy(engine);
    return impl.rfind("ref", 0) == 0 ? std::string() : impl;
  }();
  return name;
}

// Column-major c [m, n] = op_w(w) x + beta c: w bf16 (`ldw` rows as stored), x fp32 [k, n]
// contiguous, rounded to bf16 into the thread's workspace; fp32 accumulation and result. Returns
// false when oneDNN refuses (the caller then computes it).
inline bool onednn_bf16_gemm(op op_w, index_t m, index_t n, index_t k, const void* w, index_t ldw,
                             const float* x, float beta, float* c) {
  const one_omp_thread single;
  auto& state = onednn::bf16_thread_state::mine();
  auto* mm = state.matmul(op_w, m, n, k, ldw, beta);
  return mm && mm->run(state.stream(), w, x, state.workspace(std::size_t(k * n)), c);
}
#else
inline constexpr bool onednn_gemm_available = false;
inline bool onednn_preferred(index_t, index_t, index_t) { return false; }
inline bool onednn_sgemm(op, op, index_t, index_t, index_t, float, const float*, index_t,
                         const float*, index_t, float, float*, index_t) {
  return false;
}
inline const std::string& onednn_bf16_kernel() {
  static const std::string none;
  return none;
}
inline bool onednn_bf16_gemm(op, index_t, index_t, index_t, const void*, index_t, const float*,
                             float, float*) {
  return false;
}
#endif

// Whether eigen_backend<float>::gemm hands large fp32 GEMMs to oneDNN (true where this build has
// it); a test sets it to false to run Eigen's kernels (dnnl_sgemm allocates its packing buffers
// on every call, Eigen's GEMM on the stack or not at all at the step's sizes).
inline std::atomic<bool>& onednn_sgemm_enabled() {
  static std::atomic<bool> on{onednn_gemm_available};
  return on;
}

// Whether eigen_backend<float>::frozen_gemm tries oneDNN's bf16 path: true where this build has
// oneDNN and the CPU a bf16 kernel (onednn_bf16_kernel(), probed once); a test sets it to false
// to run the conversion path.
inline std::atomic<bool>& onednn_bf16_enabled() {
  static std::atomic<bool> on{!onednn_bf16_kernel().empty()};
  return on;
}

}  // namespace rolora::detail
