// Training-step throughput of the nn/ transformer against the machine's Eigen fp32 GEMM rate,
// measured in the same run (Google Benchmark, one thread).
//
//   BM_gemm_reference      Eigen fp32 GEMM at the shape of the model's biggest GEMM (fc1:
//                          [d_ff, d] x [d, N]): the rate a step is compared with
//   BM_lora_step           one LoRA classification step (all-linear, r = 2, B trains, the head
//                          trains as a module to save), forward + backward
//   BM_full_mlm_step       one full-parameter masked-LM step (pretraining)
// GFLOP/s counts the GEMM work a step must do (projections, MLP, attention, heads; LoRA's
// rank-r GEMMs left out, so the figure is a lower bound), divided by the step time.
//
// Build: cmake -DROLORA_BUILD_BENCHMARKS=ON ..., target rolora_bench_transformer, or
//   g++ -std=c++20 -O3 -march=native -DNDEBUG -Iinclude -I/usr/include/eigen3
//       bench/bench_transformer.cpp -lbenchmark -lpthread -o /tmp/bt && /tmp/bt
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <cstdint>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/nn/transformer.hpp>
#include <vector>

namespace {

using rolora::index_t;
using B = rolora::eigen_backend<float>;

// The d = 256 model of the performance target: 4 layers, 4 heads, d_ff = 4 d, sequences of 128.
rolora::transformer_config bench_config() {
  rolora::transformer_config c;
  c.vocab_size = 260;
  c.max_len = 128;
  c.d_model = 256;
  c.n_heads = 4;
  c.n_layers = 4;
  c.d_ff = 1024;
  c.num_classes = 3;
  return c;
}
constexpr index_t kSequences = 16;

// n full-length sequences of random bytes (no PAD, so every token does full work).
rolora::token_batch random_batch(const rolora::transformer_config& c, index_t n) {
  const rolora::random_stream rs(7, rolora::stream::data, 1, 1);
  rolora::token_batch b{c.max_len, std::vector<std::int32_t>(std::size_t(n * c.max_len))};
  for (std::size_t i = 0; i < b.ids.size(); ++i) b.ids[i] = 1 + std::int32_t(rs.below(i, 255));
  return b;
}

// GEMM FLOPs of one step. Per layer and token, forward: 2 (4 d^2 + 2 d d_ff) for the linears and
// 4 L d for attention (scores and context). Backward: the same again for dX of the linears above
// the lowest trained point, 8 L d for attention, and with full parameters 2 (4 d^2 + 2 d d_ff)
// more for dW. LoRA skips the dX of layer 0's q, k, v (nothing below trains).
double step_flops(const rolora::transformer_config& c, index_t n, bool full, index_t head_rows) {
  const double tokens = double(n * c.max_len), d = double(c.d_model), ff = double(c.d_ff),
               len = double(c.max_len);
  const double linear = 2 * tokens * (4 * d * d + 2 * d * ff), attention = 4 * tokens * len * d;
  double flops = c.n_layers * (2 * linear + 3 * attention);
  if (full) {
    flops += c.n_layers * linear;
    flops += 3 * 2 * double(head_rows) * d * tokens;  // tied MLM head: logits, dE, dh
  } else {
    flops -= 2 * tokens * 3 * d * d;  // layer 0: no dX for q, k, v
  }
  return flops;
}

void BM_gemm_reference(benchmark::State& state) {
  const auto c = bench_config();
  const index_t tokens = kSequences * c.max_len;
  const B::matrix w = B::from_host(rolora::host_matrix<float>::Random(c.d_ff, c.d_model));
  const B::matrix x = B::from_host(rolora::host_matrix<float>::Random(c.d_model, tokens));
  B::matrix y;
  for (auto _ : state) {
    B::gemm(1.0f, w, rolora::op::none, x, rolora::op::none, 0.0f, y);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = rolora::bench::per_second(2e-9 * double(c.d_ff * c.d_model * tokens));
}
BENCHMARK(BM_gemm_reference)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_lora_step(benchmark::State& state) {
  const auto c = bench_config();
  const rolora::transformer_weights<B> w(c, 1);
  rolora::lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 4;
  rolora::adapter_set<B> adapters(rolora::lora_target_modules(c, {"all-linear"}), lc, 2);
  adapters.add_module_to_save("classifier.weight", w.at("classifier.weight"));
  adapters.add_module_to_save("classifier.bias", w.at("classifier.bias"));
  const auto batch = random_batch(c, kSequences);
  const std::vector<std::int32_t> labels(std::size_t(kSequences), 1);
  rolora::transformer_workspace<B> ws;
  rolora::gradient_set<B> grads;
  // One step outside the timing: the workspace and gradients are allocated there; the loop
  // measures the steady state, which allocates nothing of note.
  rolora::classification_loss_and_grad(w, adapters, batch, labels, rolora::only_b, grads, ws);
  for (auto _ : state) {
    benchmark::DoNotOptimize(rolora::classification_loss_and_grad(w, adapters, batch, labels,
                                                                  rolora::only_b, grads, ws));
  }
  state.counters["GFLOP/s"] = rolora::bench::per_second(1e-9 * step_flops(c, kSequences, false, 0));
  state.counters["tokens/s"] = rolora::bench::per_second(double(kSequences * c.max_len));
}
BENCHMARK(BM_lora_step)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_full_mlm_step(benchmark::State& state) {
  const auto c = bench_config();
  const rolora::transformer_weights<B> w(c, 1);
  auto grads = w.zeros_like();
  const auto batch = random_batch(c, kSequences);
  std::vector<std::int32_t> targets(batch.ids.size(), -1);
  for (std::size_t i = 0; i < targets.size(); i += 7) targets[i] = batch.ids[i];  // ~15% masked
  rolora::transformer_workspace<B> ws;
  rolora::mlm_loss_and_grad(w, batch, targets, grads, ws);  // warm-up, as above
  for (auto _ : state)
    benchmark::DoNotOptimize(rolora::mlm_loss_and_grad(w, batch, targets, grads, ws));
  state.counters["GFLOP/s"] =
      rolora::bench::per_second(1e-9 * step_flops(c, kSequences, true, c.vocab_size));
  state.counters["tokens/s"] = rolora::bench::per_second(double(kSequences * c.max_len));
}
BENCHMARK(BM_full_mlm_step)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
