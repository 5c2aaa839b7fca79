// Benchmarks of the Thrust backend (Google Benchmark): the LoRA forward/backward and fedavg cases
// of bench_rolora.cpp, run on a Thrust flavour, with the references measured in the same run.
//
// Two builds of this one file:
//   rolora_bench_thrust_omp   g++ -fopenmp, thrust_omp_backend: the blocked GEMM on all cores.
//                             References: Eigen's GEMM (one thread, as in bench_rolora) and a
//                             plain streaming read/copy, so ratios are "Thrust-OMP vs Eigen".
//   rolora_bench_thrust_cuda  nvcc (a copy of this file as .cu), thrust_cuda_backend. References:
//                             cuBLAS SGEMM (BM_thrust_gemm<float> is exactly cublasSgemm through
//                             the backend) and device bandwidth (thrust::copy and a reduction
//                             over device memory): adapter forward/backward reads as a fraction
//                             of SGEMM's rate, fedavg as a fraction of device bandwidth.
// Every case uses wall time (UseRealTime): OpenMP threads and GPU kernels are not in the calling
// thread's CPU time. On CUDA each iteration ends with cudaDeviceSynchronize.
//
// Build: cmake -DROLORA_BUILD_BENCHMARKS=ON -DROLORA_ENABLE_THRUST_OMP=ON [-DROLORA_ENABLE_CUDA=ON]
//        then the targets above; see docs/backends.md for the figures.
#include <benchmark/benchmark.h>

#include <thrust/reduce.h>
#include "bench_common.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/backend/thrust/backend.hpp>
#include <rolora/core/rng.hpp>
#include <span>
#include <string>
#include <vector>

namespace {

using rolora::index_t;

#if defined(__CUDACC__)
template <class T>
using tb = rolora::thrust_cuda_backend<T>;
void sync() { ROLORA_CUDA_CHECK(cudaDeviceSynchronize()); }
#else
template <class T>
using tb = rolora::thrust_omp_backend<T>;
void sync() {}
#endif

using rolora::bench::per_second;
using rolora::bench::random_matrix;
using rolora::bench::shape;
constexpr std::uint64_t kSeed = rolora::bench::seed;

void gemm_args(benchmark::internal::Benchmark* b) {
  rolora::bench::gemm_shapes(b);
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// ---- references --------------------------------------------------------------------------------

// C [m, n] = A [m, k] B [k, n] through the backend: the blocked kernel on OpenMP, cublas<T>gemm
// on CUDA (the SGEMM reference there).
template <class T>
void BM_thrust_gemm(benchmark::State& state) {
  using B = tb<T>;
  const index_t m = state.range(0), k = state.range(1), n = state.range(2);
  const auto a = B::from_host(random_matrix<T>(m, k, 1)),
             b = B::from_host(random_matrix<T>(k, n, 2));
  auto c = B::zeros(m, n);
  for (auto _ : state) {
    B::gemm(T(1), a, rolora::op::none, b, rolora::op::none, T(0), c);
    sync();
  }
  state.SetLabel(std::string(B::name) + " " + shape(m, k) + " * " + shape(k, n));
  state.counters["GFLOP/s"] = per_second(2.0 * double(m) * double(k) * double(n) * 1e-9);
}
BENCHMARK_TEMPLATE(BM_thrust_gemm, float)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_thrust_gemm, double)
    ->ArgNames({"m", "k", "n"})
    ->Args({768, 768, 768})
    ->Args({768, 768, 128})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

#if !defined(__CUDACC__)
// Eigen's GEMM on one thread, exactly bench_rolora.cpp's reference.
template <class T>
void BM_eigen_gemm(benchmark::State& state) {
  const index_t m = state.range(0), k = state.range(1), n = state.range(2);
  const rolora::host_matrix<T> a = random_matrix<T>(m, k, 1), b = random_matrix<T>(k, n, 2);
  rolora::host_matrix<T> c(m, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(shape(m, k) + " * " + shape(k, n));
  state.counters["GFLOP/s"] = per_second(2.0 * double(m) * double(k) * double(n) * 1e-9);
}
BENCHMARK_TEMPLATE(BM_eigen_gemm, float)->Apply(gemm_args);
#endif

// Bandwidth of the backend's memory through Thrust: a copy (bytes read + written) and a
// reduction (bytes read), over `bytes` of fp32.
void BM_thrust_bandwidth_copy(benchmark::State& state) {
  using B = tb<float>;
  const auto n = index_t(state.range(0) / index_t(sizeof(float)));
  const auto x = B::from_host(random_matrix<float>(n, 1, 3));
  auto y = B::zeros(n, 1);
  for (auto _ : state) {
    thrust::copy(x.values().begin(), x.values().end(), y.values().begin());
    sync();
  }
  state.SetLabel(std::string(B::name) + " thrust::copy of " + std::to_string(state.range(0) >> 10) +
                 " KiB, read+write");
  state.counters["GB/s"] = per_second(2.0 * double(state.range(0)) * 1e-9);
}
void BM_thrust_bandwidth_read(benchmark::State& state) {
  using B = tb<float>;
  const auto n = index_t(state.range(0) / index_t(sizeof(float)));
  const auto x = B::from_host(random_matrix<float>(n, 1, 3));
  for (auto _ : state) {
    float s = thrust::reduce(x.values().begin(), x.values().end(), 0.0f);
    benchmark::DoNotOptimize(s);
  }
  state.SetLabel(std::string(B::name) + " thrust::reduce over " +
                 std::to_string(state.range(0) >> 10) + " KiB");
  state.counters["GB/s"] = per_second(double(state.range(0)) * 1e-9);
}
BENCHMARK(BM_thrust_bandwidth_copy)
    ->ArgName("bytes")
    ->Arg(480 << 10)
    ->Arg(48000 << 10)
    ->Arg(256 << 20)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_thrust_bandwidth_read)
    ->ArgName("bytes")
    ->Arg(480 << 10)
    ->Arg(4800 << 10)
    ->Arg(48000 << 10)
    ->Arg(256 << 20)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---- one LoRA layer: forward + backward (bench_rolora.cpp's case) ------------------------------

template <class T>
void lora_forward_backward(benchmark::State& state, bool with_base) {
  using B = tb<T>;
  const index_t d = state.range(0), r = state.range(1), n = state.range(2);
  const index_t in = d, out = d;
  std::optional<typename B::matrix> w0;
  if (with_base) w0 = B::from_host(random_matrix<T>(out, in, 10));
  rolora::lora_adapter<B> l{B::from_host(random_matrix<T>(r, in, 11)),
                            B::from_host(random_matrix<T>(out, r, 12)),
                            static_cast<T>(16.0 / double(r))};
  const auto x = B::from_host(random_matrix<T>(in, n, 13)),
             dy = B::from_host(random_matrix<T>(out, n, 14));
  typename B::matrix y, dx;
  rolora::lora_cache<B> cache;
  rolora::lora_gradients<B> grads;
  const typename B::matrix* base = w0 ? &*w0 : nullptr;
  for (auto _ : state) {
    rolora::lora_forward<B>(base, l, x, cache, y);
    rolora::lora_backward<B>(base, l, x, cache, dy, rolora::both_factors, grads, &dx);
    sync();
  }
  const double fi = double(in), fo = double(out), fr = double(r), fn = double(n);
  double flops = 2 * fr * fi * fn + 2 * fo * fr * fn + 2 * fo * fr * fn + 2 * fo * fr * fn +
                 2 * fr * fi * fn + 2 * fi * fr * fn;
  if (with_base) flops += 2 * fo * fi * fn + 2 * fi * fo * fn;
  state.SetLabel(std::string(B::name) + (with_base ? " W0 " : " no W0 ") + shape(out, in) +
                 ", r=" + std::to_string(r) + ", n=" + std::to_string(n));
  state.counters["GFLOP/s"] = per_second(flops * 1e-9);
}
template <class T>
void BM_thrust_lora_forward_backward(benchmark::State& state) {
  lora_forward_backward<T>(state, true);
}
template <class T>
void BM_thrust_lora_forward_backward_no_base(benchmark::State& state) {
  lora_forward_backward<T>(state, false);
}
void lora_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "r", "n"});
  for (index_t r : {1, 16, 64})
    for (index_t n : {32, 128, 512}) b->Args({768, r, n});
  for (index_t r : {16, 64}) b->Args({4096, r, 128});
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}
BENCHMARK_TEMPLATE(BM_thrust_lora_forward_backward, float)->Apply(lora_args);
BENCHMARK_TEMPLATE(BM_thrust_lora_forward_backward_no_base, float)->Apply(lora_args);
BENCHMARK_TEMPLATE(BM_thrust_lora_forward_backward, double)
    ->ArgNames({"d", "r", "n"})
    ->Args({768, 16, 128})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// ---- server aggregation: fedavg (bench_rolora.cpp's case) --------------------------------------

const std::string kModule = "layers.0.attn.q";

template <class T>
void BM_thrust_fedavg(benchmark::State& state) {
  using B = tb<T>;
  const auto clients = std::size_t(state.range(0));
  const index_t r = state.range(1), d = 768;
  const std::vector<rolora::module_shape> modules{{kModule, d, d}};
  rolora::lora_config config;
  config.r = r;
  config.lora_alpha = 2.0 * double(r);
  rolora::adapter_set<B> global(modules, config, kSeed);
  std::vector<rolora::client_update<B>> updates;
  for (std::size_t i = 0; i < clients; ++i) {
    auto a = global;
    a.at(kModule).A = B::from_host(random_matrix<T>(r, d, std::uint32_t(1000 + 2 * i)));
    a.at(kModule).B = B::from_host(random_matrix<T>(d, r, std::uint32_t(1001 + 2 * i)));
    updates.push_back({i, double(100 + i), std::move(a)});
  }
  const std::size_t upload_bytes = clients * global.bytes(rolora::both_factors);
  const std::span<const rolora::client_update<B>> span(updates);
  for (auto _ : state) {
    auto result = rolora::aggregate(rolora::fedavg{}, global, span, rolora::both_factors,
                                    {.measure_error = false});
    sync();
    benchmark::DoNotOptimize(result);
  }
  state.SetLabel(std::string(B::name) + " K=" + std::to_string(clients) + ", " + shape(d, d) +
                 ", r=" + std::to_string(r) + ", " + std::to_string(upload_bytes >> 10) +
                 " KiB up");
  state.counters["GB/s"] = per_second(double(upload_bytes) * 1e-9);
}
BENCHMARK_TEMPLATE(BM_thrust_fedavg, float)
    ->ArgNames({"K", "r"})
    ->Args({10, 8})
    ->Args({100, 8})
    ->Args({1000, 8})
    ->Args({10, 16})
    ->Args({100, 16})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_thrust_fedavg, double)
    ->ArgNames({"K", "r"})
    ->Args({100, 8})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
