// rolora micro-benchmarks (Google Benchmark).
//
// Every figure is meant to be read against a reference measured in the same run:
//   BM_eigen_gemm           the machine's Eigen GEMM rate (GFLOP/s), at square sizes and at the
//                           shapes the LoRA cases use: compute-bound figures are fractions of it;
//   BM_memory_bandwidth_*   a plain streaming read / copy (GB/s): memory-bound figures (fedavg)
//                           are fractions of it.
// Everything runs on one thread (Eigen is not built with OpenMP here), so the references are
// single-core figures.
//
// Build:  bash scripts/bench.sh            (preset `bench`, target rolora_bench)
//   or    g++ -std=c++20 -O3 -march=native -DNDEBUG -Iinclude -I/usr/include/eigen3
//             bench/bench_rolora.cpp -lbenchmark -lpthread -o /tmp/rb  &&  /tmp/rb
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <Eigen/SVD>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/procrustes.hpp>
#include <rolora/aggregate/residual.hpp>
#include <rolora/aggregate/stack.hpp>
#include <rolora/aggregate/svd_resplit.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/policy/policies.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <rolora/theory/methods.hpp>
#include <span>
#include <string>
#include <vector>

namespace {

using rolora::index_t;

using rolora::bench::per_second;
using rolora::bench::random_matrix;
using rolora::bench::shape;
constexpr std::uint64_t kSeed = rolora::bench::seed;

// ---- 1. the reference: Eigen GEMM --------------------------------------------------------------

// C [m, n] = A [m, k] * B [k, n], plain Eigen (what eigen_backend::gemm calls).
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

void gemm_args(benchmark::internal::Benchmark* b) {
  rolora::bench::gemm_shapes(b);
  b->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_eigen_gemm, float)->Apply(gemm_args);
BENCHMARK_TEMPLATE(BM_eigen_gemm, double)
    ->ArgNames({"m", "k", "n"})
    ->Args({768, 768, 768})
    ->Args({768, 768, 128})
    ->Unit(benchmark::kMicrosecond);

// ---- reference: memory bandwidth ---------------------------------------------------------------

// Streaming read of `bytes` bytes (a vectorised sum): the ceiling for fedavg, which reads each
// upload once into a small accumulator.
void BM_memory_bandwidth_read(benchmark::State& state) {
  const auto n = index_t(state.range(0) / index_t(sizeof(float)));
  const Eigen::VectorXf x = random_matrix<float>(n, 1, 3);
  for (auto _ : state) {
    float s = x.sum();
    benchmark::DoNotOptimize(s);
  }
  state.SetLabel("sum over " + std::to_string(state.range(0) >> 10) + " KiB fp32");
  state.counters["GB/s"] = per_second(double(state.range(0)) * 1e-9);
}

// std::copy of `bytes` bytes; GB/s counts bytes read + bytes written (2 x bytes).
void BM_memory_bandwidth_copy(benchmark::State& state) {
  const auto n = std::size_t(state.range(0)) / sizeof(float);
  std::vector<float> x(n), y(n);
  const rolora::random_stream rs(kSeed, rolora::stream::data, 4, 0);
  for (std::size_t i = 0; i < n; ++i) x[i] = float(rs.uniform(i));
  for (auto _ : state) {
    std::copy(x.begin(), x.end(), y.begin());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("std::copy of " + std::to_string(state.range(0) >> 10) + " KiB, read+write");
  state.counters["GB/s"] = per_second(2.0 * double(state.range(0)) * 1e-9);
}

// The sizes are exactly the upload volumes of the BM_fedavg cases (K clients x (r*768 + 768*r)
// x 4 bytes): 480 KiB (K = 10, r = 8), 960 KiB (K = 10, r = 16), 4800 KiB (K = 100, r = 8),
// 9600 KiB (K = 100, r = 16, or fp64 r = 8), 48000 KiB (K = 1000, r = 8); 256 MiB is well
// beyond any cache.
BENCHMARK(BM_memory_bandwidth_read)
    ->ArgName("bytes")
    ->Arg(480 << 10)
    ->Arg(960 << 10)
    ->Arg(4800 << 10)
    ->Arg(9600 << 10)
    ->Arg(48000 << 10)
    ->Arg(256 << 20)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_memory_bandwidth_copy)
    ->ArgName("bytes")
    ->Arg(480 << 10)
    ->Arg(48000 << 10)
    ->Arg(256 << 20)
    ->Unit(benchmark::kMicrosecond);

// ---- 2. one LoRA layer: forward + backward -----------------------------------------------------

// W0 [d, d] frozen; A [r, d], B [d, r] random (B non-zero so nothing is trivially zero);
// x [d, n], dy [d, n]. One iteration: lora_forward + lora_backward with both factors' gradients
// and dx.
template <class T>
void lora_forward_backward(benchmark::State& state, bool with_base) {
  using B = rolora::eigen_backend<T>;
  const index_t d = state.range(0), r = state.range(1), n = state.range(2);
  const index_t in = d, out = d;
  std::optional<typename B::matrix> w0;
  if (with_base) w0 = random_matrix<T>(out, in, 10);
  rolora::lora_adapter<B> l{random_matrix<T>(r, in, 11), random_matrix<T>(out, r, 12),
                            static_cast<T>(16.0 / double(r))};
  const typename B::matrix x = random_matrix<T>(in, n, 13), dy = random_matrix<T>(out, n, 14);
  typename B::matrix y, dx;
  rolora::lora_cache<B> cache;
  rolora::lora_gradients<B> grads;
  const typename B::matrix* base = w0 ? &*w0 : nullptr;
  for (auto _ : state) {
    rolora::lora_forward<B>(base, l, x, cache, y);
    rolora::lora_backward<B>(base, l, x, cache, dy, rolora::both_factors, grads, &dx);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(grads.dA.data());
    benchmark::DoNotOptimize(grads.dB.data());
    benchmark::ClobberMemory();
  }
  const double fi = double(in), fo = double(out), fr = double(r), fn = double(n);
  double flops = 2 * fr * fi * fn + 2 * fo * fr * fn            // forward: A x, B (A x)
                 + 2 * fo * fr * fn + 2 * fo * fr * fn          // dB, B^T dy
                 + 2 * fr * fi * fn + 2 * fi * fr * fn;         // dA, A^T (B^T dy)
  if (with_base) flops += 2 * fo * fi * fn + 2 * fi * fo * fn;  // W0 x, W0^T dy
  state.SetLabel((with_base ? "W0 " : "no W0 ") + shape(out, in) + ", r=" + std::to_string(r) +
                 ", n=" + std::to_string(n));
  state.counters["GFLOP/s"] = per_second(flops * 1e-9);
}

template <class T>
void BM_lora_forward_backward(benchmark::State& state) {
  lora_forward_backward<T>(state, true);
}
template <class T>
void BM_lora_forward_backward_no_base(benchmark::State& state) {
  lora_forward_backward<T>(state, false);
}

// The frozen layer alone (y = W0 x, dx = W0^T dy, through the backend): what the adapter's
// overhead is relative to.
template <class T>
void BM_frozen_base_forward_backward(benchmark::State& state) {
  using B = rolora::eigen_backend<T>;
  const index_t d = state.range(0), n = state.range(1);
  const typename B::matrix w0 = random_matrix<T>(d, d, 10), x = random_matrix<T>(d, n, 13),
                           dy = random_matrix<T>(d, n, 14);
  typename B::matrix y, dx;
  for (auto _ : state) {
    B::gemm(T(1), w0, rolora::op::none, x, rolora::op::none, T(0), y);
    B::gemm(T(1), w0, rolora::op::transpose, dy, rolora::op::none, T(0), dx);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("W0 " + shape(d, d) + ", n=" + std::to_string(n));
  state.counters["GFLOP/s"] = per_second(4.0 * double(d) * double(d) * double(n) * 1e-9);
}

void lora_args_768(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "r", "n"});
  for (index_t r : {1, 4, 16, 64})
    for (index_t n : {32, 128, 512}) b->Args({768, r, n});
  b->Unit(benchmark::kMicrosecond);
}
// 4096 x 4096 with the base weight is 8.6 GFLOP per iteration at n = 128: n = 512 and r = 4 are
// left out to keep the suite short.
void lora_args_4096_base(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "r", "n"});
  for (index_t r : {1, 16, 64})
    for (index_t n : {32, 128}) b->Args({4096, r, n});
  b->MinTime(0.2)->Unit(benchmark::kMillisecond);
}
void lora_args_4096_no_base(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "r", "n"});
  for (index_t r : {1, 4, 16, 64})
    for (index_t n : {32, 128, 512}) b->Args({4096, r, n});
  b->MinTime(0.2)->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_frozen_base_forward_backward, float)
    ->ArgNames({"d", "n"})
    ->Args({768, 32})
    ->Args({768, 128})
    ->Args({768, 512})
    ->Args({4096, 32})
    ->Args({4096, 128})
    ->MinTime(0.2)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_lora_forward_backward, float)->Apply(lora_args_768);
BENCHMARK_TEMPLATE(BM_lora_forward_backward, float)->Apply(lora_args_4096_base);
BENCHMARK_TEMPLATE(BM_lora_forward_backward_no_base, float)->Apply(lora_args_768);
BENCHMARK_TEMPLATE(BM_lora_forward_backward_no_base, float)->Apply(lora_args_4096_no_base);
BENCHMARK_TEMPLATE(BM_lora_forward_backward, double)
    ->ArgNames({"d", "r", "n"})
    ->Args({768, 16, 128})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_lora_forward_backward_no_base, double)
    ->ArgNames({"d", "r", "n"})
    ->Args({768, 16, 128})
    ->Unit(benchmark::kMicrosecond);

// ---- 3. server aggregation: fedavg -------------------------------------------------------------

const std::string kModule = "layers.0.attn.q";

// K client updates of one 768 x 768 module at rank r, both factors random, sample counts
// 100 + i (so by_samples weighting is not uniform).
template <class T>
struct fedavg_setup {
  using B = rolora::eigen_backend<T>;
  rolora::adapter_set<B> global;
  std::vector<rolora::client_update<B>> updates;
  std::size_t upload_bytes = 0;

  fedavg_setup(std::size_t clients, index_t r, index_t d = 768) {
    const std::vector<rolora::module_shape> modules{{kModule, d, d}};
    rolora::lora_config config;
    config.r = r;
    config.lora_alpha = 2.0 * double(r);
    global = rolora::adapter_set<B>(modules, config, kSeed);
    updates.reserve(clients);
    for (std::size_t i = 0; i < clients; ++i) {
      auto a = global;
      auto& l = a.at(kModule);
      l.A = random_matrix<T>(r, d, std::uint32_t(1000 + 2 * i));
      l.B = random_matrix<T>(d, r, std::uint32_t(1001 + 2 * i));
      updates.push_back({i, double(100 + i), std::move(a)});
    }
    upload_bytes = clients * global.bytes(rolora::both_factors);
  }
};

template <class T>
void fedavg_case(benchmark::State& state, bool measure_error) {
  const auto clients = std::size_t(state.range(0));
  const index_t r = state.range(1), d = 768;
  fedavg_setup<T> s(clients, r, d);
  const std::span<const rolora::client_update<rolora::eigen_backend<T>>> updates(s.updates);
  for (auto _ : state) {
    auto result = rolora::aggregate(rolora::fedavg{}, s.global, updates, rolora::both_factors,
                                    {.measure_error = measure_error});
    benchmark::DoNotOptimize(result);
    benchmark::DoNotOptimize(s.global.at(kModule).A.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("K=" + std::to_string(clients) + ", " + shape(d, d) + ", r=" + std::to_string(r) +
                 ", " + std::to_string(s.upload_bytes >> 10) + " KiB up");
  // Bytes of the uploads (each read at least once), per aggregation.
  state.counters["GB/s"] = per_second(double(s.upload_bytes) * 1e-9);
  if (measure_error) {
    // The error measure forms sum_i w_i B_i A_i densely: one [d, r] x [r, d] GEMM per client,
    // plus one for the merged factors.
    state.counters["err GFLOP/s"] =
        per_second(2.0 * double(clients + 1) * double(d) * double(r) * double(d) * 1e-9);
  }
}

template <class T>
void BM_fedavg(benchmark::State& state) {
  fedavg_case<T>(state, false);
}
template <class T>
void BM_fedavg_with_error(benchmark::State& state) {
  fedavg_case<T>(state, true);
}

BENCHMARK_TEMPLATE(BM_fedavg, float)
    ->ArgNames({"K", "r"})
    ->Args({10, 8})
    ->Args({100, 8})
    ->Args({1000, 8})
    ->Args({10, 16})
    ->Args({100, 16})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_fedavg, double)
    ->ArgNames({"K", "r"})
    ->Args({100, 8})
    ->Unit(benchmark::kMicrosecond);
// Where BM_fedavg's time goes: the upload check that rolora::aggregate runs first (shapes and
// all_finite on every uploaded factor), and fedavg::merge alone (copy of the global set + one
// axpy per client and factor). Both go through rolora::detail / the aggregator directly.
template <class T>
void BM_fedavg_part_check_updates(benchmark::State& state) {
  const auto clients = std::size_t(state.range(0));
  const index_t r = state.range(1);
  fedavg_setup<T> s(clients, r);
  const std::span<const rolora::client_update<rolora::eigen_backend<T>>> updates(s.updates);
  for (auto _ : state) {
    rolora::detail::check_updates(s.global, updates);
    benchmark::ClobberMemory();
  }
  state.SetLabel("K=" + std::to_string(clients) + ", r=" + std::to_string(r) + ", check only");
  state.counters["GB/s"] = per_second(double(s.upload_bytes) * 1e-9);
}
template <class T>
void BM_fedavg_part_merge(benchmark::State& state) {
  const auto clients = std::size_t(state.range(0));
  const index_t r = state.range(1);
  fedavg_setup<T> s(clients, r);
  const std::span<const rolora::client_update<rolora::eigen_backend<T>>> updates(s.updates);
  const std::vector<double> weights(clients, 1.0 / double(clients));
  for (auto _ : state) {
    auto next = rolora::fedavg{}.merge(s.global, updates, weights, rolora::both_factors);
    benchmark::DoNotOptimize(next.at(kModule).A.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("K=" + std::to_string(clients) + ", r=" + std::to_string(r) + ", merge only");
  state.counters["GB/s"] = per_second(double(s.upload_bytes) * 1e-9);
}

BENCHMARK_TEMPLATE(BM_fedavg_part_check_updates, float)
    ->ArgNames({"K", "r"})
    ->Args({100, 8})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_fedavg_part_merge, float)
    ->ArgNames({"K", "r"})
    ->Args({100, 8})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_fedavg_with_error, float)
    ->ArgNames({"K", "r"})
    ->Args({10, 8})
    ->Args({100, 8})
    ->Unit(benchmark::kMicrosecond);

// ---- 4. the linear-regression theory problem: one iteration of each method ---------------------

// The default theory problem (d = 100, k = 10, r = 1, 10 clients) with m = 1000 samples per
// client, built once; the federation is built once and each benchmark iteration runs one method
// iteration: RoLoRA = a B round (closed-form B) + an A round (1 SGD step, eta = 0.5);
// FedIT = one round of tau = 5 SGD steps on both factors; FFA = one closed-form B round.
// Set up as rolora::theory::run_method does (uniform weights, aggregation error measured).
template <class T, class Policy, class Aggregator>
void theory_iterations(benchmark::State& state, Policy policy, Aggregator aggregator,
                       std::size_t rounds_per_iteration, std::size_t local_steps,
                       bool closed_form_b) {
  using B = rolora::eigen_backend<T>;
  namespace th = rolora::theory;
  th::linear_problem_config pc;
  pc.samples = 1000;
  auto problem = th::make_linear_problem<B>(pc);
  const th::host a0 = th::initial_a(problem.reference_rows(), std::nullopt, 0);

  rolora::federation_config config;
  config.local_steps = local_steps;
  config.local_optimizer = rolora::sgd{0.5, 0.0, 0.0};
  config.client_weighting = rolora::weighting::uniform;
  config.closed_form_b = closed_form_b;
  config.threads = 1;

  auto make = [&] {
    rolora::adapter_set<B> initial;
    initial.insert(th::module_name,
                   {B::from_host(a0.cast<T>()), B::zeros(pc.out_dim, pc.rank), T(1)});
    return rolora::federation<B, Policy, Aggregator>(policy, aggregator, config,
                                                     std::move(initial));
  };
  auto fed = make();
  for (auto _ : state) {
    for (std::size_t k = 0; k < rounds_per_iteration; ++k) {
      const auto report = fed.run_round(problem.clients);
      benchmark::DoNotOptimize(report.train_loss);
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel("d=" + std::to_string(pc.dim) + " k=" + std::to_string(pc.out_dim) +
                 " r=" + std::to_string(pc.rank) + " K=" + std::to_string(pc.clients) +
                 " m=" + std::to_string(pc.samples) + ", " + std::to_string(rounds_per_iteration) +
                 " round(s) x tau=" + std::to_string(local_steps));
  state.counters["iter/s"] = per_second(1.0);
}

template <class T>
void BM_theory_iteration_rolora(benchmark::State& state) {
  theory_iterations<T>(state, rolora::alternating{}, rolora::orthonormalize_a<rolora::fedavg>{}, 2,
                       1, true);
}
template <class T>
void BM_theory_iteration_fedit_tau5(benchmark::State& state) {
  theory_iterations<T>(state, rolora::train_both{}, rolora::fedavg{}, 1, 5, false);
}
template <class T>
void BM_theory_iteration_ffa(benchmark::State& state) {
  theory_iterations<T>(state, rolora::freeze_a{}, rolora::fedavg{}, 1, 1, true);
}

BENCHMARK_TEMPLATE(BM_theory_iteration_rolora, double)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_theory_iteration_rolora, float)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_theory_iteration_fedit_tau5, double)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_theory_iteration_fedit_tau5, float)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_theory_iteration_ffa, double)->Unit(benchmark::kMicrosecond);

// ---- 5. the product-level aggregators at LLM scale: K = 50 clients, 4096 x 4096, r = 8
// -----------

// One module [4096, 4096], K clients with random A [r, 4096] and B [4096, r] (float), merged by
// each strategy's merge() alone (no upload check, no error measure). svd_resplit never forms the
// dense product: QRs of the stacked [4096, K r] factors and an SVD of the (K r) x (K r) core.
// Its dense alternative, BM_dense_svd, is Eigen's BDCSVD (thin U and V, as needed to re-split)
// of an n x n float matrix: O(n^3), timed at n <= 2048 (and once at 4096 with --benchmark_filter
// =dense_svd/4096, minutes); docs/aggregators.md sets the two side by side.
struct product_setup {
  using B = rolora::eigen_backend<float>;
  rolora::adapter_set<B> global;
  std::vector<rolora::client_update<B>> updates;
  std::vector<double> weights;

  product_setup(std::size_t clients, index_t r, index_t d) {
    global.insert(kModule, {B::from_host(random_matrix<float>(r, d, 3000)),
                            B::from_host(random_matrix<float>(d, r, 3001)), 1.0f});
    for (std::size_t i = 0; i < clients; ++i) {
      rolora::adapter_set<B> a;
      a.insert(kModule,
               {B::from_host(random_matrix<float>(r, d, std::uint32_t(3002 + 2 * i))),
                B::from_host(random_matrix<float>(d, r, std::uint32_t(3003 + 2 * i))), 1.0f});
      updates.push_back({i, 1.0, std::move(a)});
      weights.push_back(1.0 / double(clients));
    }
  }
};

template <class Aggregator>
void BM_merge_4096(benchmark::State& state) {
  const auto clients = std::size_t(state.range(0));
  const index_t r = state.range(1), d = 4096;
  product_setup s(clients, r, d);
  const std::span<const rolora::client_update<rolora::eigen_backend<float>>> updates(s.updates);
  for (auto _ : state) {
    auto next = Aggregator{}.merge(s.global, updates, std::span<const double>(s.weights),
                                   rolora::both_factors);
    benchmark::DoNotOptimize(next.at(kModule).A.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(Aggregator::name) + ", K=" + std::to_string(clients) + ", " +
                 shape(d, d) + ", r=" + std::to_string(r));
}
BENCHMARK_TEMPLATE(BM_merge_4096, rolora::svd_resplit)
    ->ArgNames({"K", "r"})
    ->Args({50, 8})
    ->Args({10, 8})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_merge_4096, rolora::procrustes)
    ->ArgNames({"K", "r"})
    ->Args({50, 8})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_merge_4096, rolora::flora_stack)
    ->ArgNames({"K", "r"})
    ->Args({50, 8})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_merge_4096, rolora::fedex_residual)
    ->ArgNames({"K", "r"})
    ->Args({50, 8})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_merge_4096, rolora::fedavg)
    ->ArgNames({"K", "r"})
    ->Args({50, 8})
    ->Unit(benchmark::kMillisecond);

// BDCSVD with thin U and V of a dense n x n float matrix (what FlexLoRA's reference code does
// with torch.linalg.svd on the out x in delta).
void BM_dense_svd(benchmark::State& state) {
  const index_t n = state.range(0);
  const auto m = random_matrix<float>(n, n, 4000);
  for (auto _ : state) {
    Eigen::BDCSVD<rolora::host_matrix<float>> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
    benchmark::DoNotOptimize(svd.singularValues().data());
  }
  state.SetLabel("BDCSVD " + shape(n, n) + " float, thin U and V");
}
BENCHMARK(BM_dense_svd)
    ->ArgName("n")
    ->Arg(512)
    ->Arg(1024)
    ->Arg(2048)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_dense_svd)->ArgName("n")->Arg(4096)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
