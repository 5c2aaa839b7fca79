// GEMM providers at the shapes of the default transformer's training step (d = 128, d_ff = 512,
// 16 x 128 tokens: N = 2048), all in one run: Eigen fp32 (eigen_backend's default), oneDNN fp32
// (dnnl_sgemm and the matmul primitive) and oneDNN matmul with bf16 operands and fp32
// accumulation. Column-major operands, as eigen_backend holds them.
//
//   threads:1  one GEMM at a time on one thread
//   threads:2  two independent GEMMs at once, one per thread: how a round uses two cores (each
//              client's GEMMs run on its own thread, so the bits never depend on --threads)
// GFLOP/s = 2 m n k per GEMM over CPU time (threads:1) or wall time summed over threads
// (threads:2). The label of the matmul cases
// names the kernel oneDNN picked (e.g. brg:avx512_core_bf16, gemm:jit, ref: no fast kernel here).
//
// Build: -DROLORA_BUILD_BENCHMARKS=ON, target rolora_bench_gemm (only when oneDNN is found).
#define EIGEN_DONT_PARALLELIZE  // eigen_backend's GEMM runs on the calling thread
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <Eigen/Core>
#include <dnnl.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/backend/eigen/onednn_gemm.hpp>
#include <string>
#include <vector>

namespace {

using matrix = Eigen::MatrixXf;
using rolora::index_t;

// c [m, n] = op_a(a) op_b(b), k the inner dimension; op_a = 'T' reads a [k, m], op_b = 'T' b [n,
// k].
struct shape {
  index_t m, n, k;
  char op_a, op_b = 'N';
};
// Forward: W x for q/k/v/o ([128,128] x [128,2048]), fc1 ([512,128] x ...), fc2 ([128,512] x
// ...). Backward input gradients: W^T dy for the same three weights. Attention: one head's scores
// q_h^T k_h ([32,128]^T x [32,128]).
const std::vector<shape> shapes = {{128, 2048, 128, 'N'},
                                   {512, 2048, 128, 'N'},
                                   {128, 2048, 512, 'N'},
                                   {128, 2048, 128, 'T'},
                                   {128, 2048, 512, 'T'},
                                   {512, 2048, 128, 'T'},
                                   {128, 128, 32, 'T'},
                                   // Smaller: attention context v_h p ([32,128] x [128,128]),
                                   // LoRA at r = 2 (A x, B (A x), A^T t, dB = s dy (A x)^T,
                                   // dA = s t x^T), the classifier head; for the crossover.
                                   {32, 128, 128, 'N'},
                                   {2, 2048, 128, 'N'},
                                   {128, 2048, 2, 'N'},
                                   {128, 2048, 2, 'T'},
                                   {128, 2, 2048, 'N', 'T'},
                                   {2, 128, 2048, 'N', 'T'},
                                   {3, 16, 128, 'N'},
                                   {16, 16, 16, 'N'},
                                   {32, 32, 32, 'N'},
                                   {64, 64, 64, 'N'},
                                   // A fused q/k/v projection: [W_q; W_k; W_v] x ([384,128] x
                                   // [128,2048]) and its input gradient W_qkv^T dqkv, against
                                   // three of the first and fourth shapes above.
                                   {384, 2048, 128, 'N'},
                                   {128, 2048, 384, 'T'}};

struct operands {
  matrix a, b, c;
  explicit operands(const shape& s)
      : a(s.op_a == 'N' ? matrix::Random(s.m, s.k) : matrix::Random(s.k, s.m)),
        b(s.op_b == 'N' ? matrix::Random(s.k, s.n) : matrix::Random(s.n, s.k)),
        c(matrix::Zero(s.m, s.n)) {}
};

void set_counters(benchmark::State& state, const shape& s, const std::string& kernel = "") {
  state.counters["GFLOP/s"] =
      rolora::bench::per_second(2e-9 * double(s.m) * double(s.n) * double(s.k));
  state.SetLabel(std::to_string(s.m) + "x" + std::to_string(s.k) + (s.op_a == 'T' ? "^T" : "") +
                 " * " + std::to_string(s.k) + "x" + std::to_string(s.n) +
                 (s.op_b == 'T' ? "^T " : " ") + kernel);
}

// Plain Eigen, as eigen_backend::gemm computes it without oneDNN.
void BM_eigen(benchmark::State& state) {
  const shape s = shapes[std::size_t(state.range(0))];
  operands o(s);
  for (auto _ : state) {
    if (s.op_a == 'N' && s.op_b == 'N') {
      o.c.noalias() = o.a * o.b;
    } else if (s.op_a == 'T' && s.op_b == 'N') {
      o.c.noalias() = o.a.transpose() * o.b;
    } else {
      o.c.noalias() = o.a * o.b.transpose();
    }
    benchmark::DoNotOptimize(o.c.data());
  }
  set_counters(state, s);
}

// eigen_backend<float>::gemm as built: oneDNN above the crossover, Eigen below.
void BM_provider(benchmark::State& state) {
  const shape s = shapes[std::size_t(state.range(0))];
  operands o(s);
  const auto op = [](char t) { return t == 'T' ? rolora::op::transpose : rolora::op::none; };
  for (auto _ : state) {
    rolora::eigen_backend<float>::gemm(1.0f, o.a, op(s.op_a), o.b, op(s.op_b), 0.0f, o.c);
    benchmark::DoNotOptimize(o.c.data());
  }
  set_counters(state, s, rolora::detail::onednn_preferred(s.m, s.n, s.k) ? "onednn" : "eigen");
}

// Column-major c = op(a) b through row-major dnnl_sgemm: c^T = b^T op(a)^T.
void BM_onednn_sgemm(benchmark::State& state) {
  omp_set_num_threads(1);
  const shape s = shapes[std::size_t(state.range(0))];
  operands o(s);
  for (auto _ : state) {
    dnnl_sgemm(s.op_b, s.op_a, s.n, s.m, s.k, 1.0f, o.b.data(), o.b.rows(), o.a.data(), o.a.rows(),
               0.0f, o.c.data(), o.c.rows());
    benchmark::DoNotOptimize(o.c.data());
  }
  set_counters(state, s);
}

// A column-major [rows, cols] matrix (or its transpose) as a oneDNN memory descriptor.
dnnl::memory::desc col_major(index_t rows, index_t cols, bool transposed,
                             dnnl::memory::data_type t) {
  if (transposed) return dnnl::memory::desc({cols, rows}, t, {rows, 1});
  return dnnl::memory::desc({rows, cols}, t, {1, rows});
}

template <bool Bf16>
void BM_onednn_matmul(benchmark::State& state) {
  omp_set_num_threads(1);
  const shape s = shapes[std::size_t(state.range(0))];
  operands o(s);
  using dt = dnnl::memory::data_type;
  const dt in = Bf16 ? dt::bf16 : dt::f32;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  // oneDNN's fast matmul kernels want a row-major destination: compute c^T [n, m] = b^T op(a)^T.
  const auto a_md = col_major(o.a.rows(), o.a.cols(), s.op_a != 'T', in);  // op(a)^T [k, m]
  const auto b_md = col_major(o.b.rows(), o.b.cols(), s.op_b != 'T', in);  // op(b)^T [n, k]
  const auto c_md = col_major(s.m, s.n, true, dt::f32);                    // c^T [n, m]
  dnnl::matmul::primitive_desc pd;
  try {
    pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(b_md, a_md, c_md), eng);
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
    return;
  }
  dnnl::matmul prim(pd);
  // bf16 operands converted once outside the loop (a frozen weight stored in bf16).
  std::vector<std::uint16_t> a16(std::size_t(o.a.size())), b16(std::size_t(o.b.size()));
  void* a_ptr = o.a.data();
  void* b_ptr = o.b.data();
  if (Bf16) {
    dnnl::memory af(col_major(o.a.rows(), o.a.cols(), false, dt::f32), eng, o.a.data());
    dnnl::memory ab(col_major(o.a.rows(), o.a.cols(), false, dt::bf16), eng, a16.data());
    dnnl::reorder(af, ab).execute(strm, af, ab);
    dnnl::memory bf(col_major(o.b.rows(), o.b.cols(), false, dt::f32), eng, o.b.data());
    dnnl::memory bb(col_major(o.b.rows(), o.b.cols(), false, dt::bf16), eng, b16.data());
    dnnl::reorder(bf, bb).execute(strm, bf, bb);
    strm.wait();
    a_ptr = a16.data();
    b_ptr = b16.data();
  }
  dnnl::memory am(a_md, eng, a_ptr), bm(b_md, eng, b_ptr), cm(c_md, eng, o.c.data());
  for (auto _ : state) {
    prim.execute(strm, {{DNNL_ARG_SRC, bm}, {DNNL_ARG_WEIGHTS, am}, {DNNL_ARG_DST, cm}});
    strm.wait();
    benchmark::DoNotOptimize(o.c.data());
  }
  set_counters(state, s, pd.impl_info_str());
}

// One thread: rates per CPU second (the machine is shared; wall time counts other jobs). Two
// threads: per wall second, the throughput of two GEMMs side by side.
void one_thread(benchmark::internal::Benchmark* b) {
  for (std::size_t i = 0; i < shapes.size(); ++i) b->Arg(index_t(i));
  b->Unit(benchmark::kMicrosecond)->Threads(1);
}
void two_threads(benchmark::internal::Benchmark* b) {
  for (std::size_t i = 0; i < shapes.size(); ++i) b->Arg(index_t(i));
  b->Unit(benchmark::kMicrosecond)->Threads(2)->UseRealTime();
}

BENCHMARK(BM_eigen)->Apply(one_thread);
BENCHMARK(BM_onednn_sgemm)->Apply(one_thread);
BENCHMARK(BM_provider)->Apply(one_thread);
BENCHMARK(BM_onednn_matmul<false>)->Apply(one_thread);
BENCHMARK(BM_onednn_matmul<true>)->Apply(one_thread);
BENCHMARK(BM_eigen)->Apply(two_threads);
BENCHMARK(BM_onednn_sgemm)->Apply(two_threads);
BENCHMARK(BM_provider)->Apply(two_threads);
BENCHMARK(BM_onednn_matmul<false>)->Apply(two_threads);
BENCHMARK(BM_onednn_matmul<true>)->Apply(two_threads);

}  // namespace

BENCHMARK_MAIN();
