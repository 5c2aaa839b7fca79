// One client's local step of the default federated job, broken down by part: where the time
// goes, as a share of the step, in one run (Google Benchmark, one thread).
//
// The step is what federated/client.hpp does per local step: classification_task::loss_and_grad
// (batch copy, forward, backward) and the optimizer (AdamW) on the trained factors. The model
// and round are bench/run_round.sh's: d = 128, 4 heads, 2 layers, d_ff = 512, 16 x 128 tokens,
// LoRA r = 2 on q and v, a B round (B and the classifier train).
//
// The parts are timed by running the step on `timed`, eigen_backend<float> with a clock around
// every backend and nn primitive call (about 150 calls a step; the thread's CPU time, not wall
// time, since the machine is shared):
//   gemm        eigen_backend::gemm: projections, MLP, LoRA, the head (oneDNN when built with it)
//   attention   attention_forward/backward: per (sequence, head) scores, softmax, context
//   layer_norm, gelu, loss (softmax cross-entropy), optimizer (adamw_update),
//   copies      embedding lookup, bias add, row sums, pooling, zeroing
//   other       the rest of the step: batch selection, bindings, bookkeeping (step - sum)
// BM_local_step times the same step on plain eigen_backend<float> (no clocks), for reference.
// `gemm_GFLOP/s` counts 2 m n k per gemm call over the gemm part's time: compare it with
// bench_gemm's rates at the same shapes.
//
// Built twice: rolora_bench_step_parts (GEMM provider as configured) and, with oneDNN,
// rolora_bench_step_parts_eigen (ROLORA_BENCH_EIGEN_ONLY: Eigen's GEMM only).
#if defined(ROLORA_BENCH_EIGEN_ONLY)
#undef ROLORA_WITH_ONEDNN
#endif
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <ctime>
#include <rolora/nn/classification_task.hpp>
#include <rolora/rolora.hpp>
#include <utility>
#include <vector>

namespace {

enum part { gemm, attention, layer_norm, gelu, loss, optimizer, copies, n_parts };
constexpr std::array<const char*, n_parts> part_names = {"gemm", "attention", "layer_norm", "gelu",
                                                         "loss", "optimizer", "copies"};
std::array<double, n_parts> seconds{};
double gemm_flops = 0;

// This thread's CPU time: on a shared, loaded machine wall time counts the other jobs too.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

struct clock_part {
  part p;
  double start = cpu_seconds();
  ~clock_part() { seconds[p] += cpu_seconds() - start; }
};

using base = rolora::eigen_backend<float>;

struct timed : base {
  static constexpr std::string_view name = "timed-eigen";
  static void gemm(float alpha, const matrix& a, rolora::op op_a, const matrix& b, rolora::op op_b,
                   float beta, matrix& c) {
    const clock_part t{part::gemm};
    base::gemm(alpha, a, op_a, b, op_b, beta, c);
    gemm_flops += 2.0 * double(c.rows()) * double(c.cols()) *
                  double(op_a == rolora::op::none ? a.cols() : a.rows());
  }
  static void adamw_update(matrix& p, const matrix& g, matrix& m, matrix& v,
                           const rolora::adamw_coefficients<float>& k) {
    const clock_part t{part::optimizer};
    base::adamw_update(p, g, m, v, k);
  }
};

}  // namespace

#define ROLORA_TIMED(fn, category)                         \
  template <class... A>                                    \
  static decltype(auto) fn(A&&... a) {                     \
    const clock_part t{category};                          \
    return nn_primitives<base>::fn(std::forward<A>(a)...); \
  }

template <>
struct rolora::nn_primitives<timed> {
  ROLORA_TIMED(set_zero, copies)
  ROLORA_TIMED(add_bias, copies)
  ROLORA_TIMED(row_sums, copies)
  ROLORA_TIMED(layer_norm_forward, layer_norm)
  ROLORA_TIMED(layer_norm_backward, layer_norm)
  ROLORA_TIMED(gelu_forward, gelu)
  ROLORA_TIMED(gelu_backward, gelu)
  ROLORA_TIMED(embedding_forward, copies)
  ROLORA_TIMED(embedding_backward, copies)
  ROLORA_TIMED(attention_forward, attention)
  ROLORA_TIMED(attention_backward, attention)
  ROLORA_TIMED(weighted_pool, copies)
  ROLORA_TIMED(weighted_pool_backward, copies)
  ROLORA_TIMED(softmax_columns, loss)
  ROLORA_TIMED(softmax_cross_entropy, loss)
};

namespace {

// The default job's model and one client's data: 16 sequences of random bytes, full length.
template <class B>
struct client {
  rolora::transformer_config c;
  rolora::transformer_weights<B> model;
  rolora::adapter_set<B> adapters;
  rolora::classification_task<B> task;
  rolora::optimizer_state<B> opt;
  rolora::gradient_set<B> grads;
  std::vector<std::size_t> batch;
  rolora::optimizer adamw = rolora::adamw{1e-3, 0.9, 0.999, 1e-8, 0.01};

  static rolora::transformer_config config() {
    rolora::transformer_config c;
    c.vocab_size = 259;
    c.pad_id = 256;
    return c;
  }
  static rolora::labelled_sequences data(const rolora::transformer_config& c) {
    rolora::labelled_sequences d;
    d.tokens.seq_len = c.max_len;
    const rolora::random_stream rs(7, rolora::stream::data, 1, 1);
    for (std::uint64_t i = 0; i < std::uint64_t(16 * c.max_len); ++i)
      d.tokens.ids.push_back(std::int32_t(rs.below(i, 256)));
    for (std::int32_t s = 0; s < 16; ++s) d.labels.push_back(s % 3);
    return d;
  }
  static rolora::adapter_set<B> make_adapters(const rolora::transformer_config& c,
                                              const rolora::transformer_weights<B>& w) {
    rolora::lora_config lc;
    lc.r = 2;
    lc.lora_alpha = 16;
    rolora::adapter_set<B> a(rolora::lora_target_modules(c, {"q", "v"}), lc, 3);
    a.add_module_to_save("classifier.weight", w.at("classifier.weight"));
    a.add_module_to_save("classifier.bias", w.at("classifier.bias"));
    return a;
  }
  client()
      : c(config()),
        model(c, 1),
        adapters(make_adapters(c, model)),
        task(model, data(c)),
        batch(16) {
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i] = i;
    step();  // warm-up: workspaces and optimizer moments allocated
  }
  double step() {
    const double l = task.loss_and_grad(adapters, batch, rolora::only_b, grads);
    opt.step(adamw, adapters, grads, rolora::only_b);
    return l;
  }
};

void BM_local_step(benchmark::State& state) {
  client<base> cl;
  for (auto _ : state) benchmark::DoNotOptimize(cl.step());
}
BENCHMARK(BM_local_step)->Unit(benchmark::kMillisecond);

void BM_local_step_parts(benchmark::State& state) {
  client<timed> cl;
  seconds = {};
  gemm_flops = 0;
  double total = 0;
  for (auto _ : state) {
    const double start = cpu_seconds();
    benchmark::DoNotOptimize(cl.step());
    total += cpu_seconds() - start;
  }
  double sum = 0;
  for (int p = 0; p < n_parts; ++p) {
    state.counters[std::string(part_names[std::size_t(p)]) + "_%"] = 100 * seconds[p] / total;
    sum += seconds[p];
  }
  state.counters["other_%"] = 100 * (total - sum) / total;
  state.counters["gemm_GFLOP/s"] = 1e-9 * gemm_flops / seconds[gemm];
  state.SetLabel(rolora::detail::onednn_gemm_available ? "gemm: oneDNN above the crossover"
                                                       : "gemm: Eigen");
}
BENCHMARK(BM_local_step_parts)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
