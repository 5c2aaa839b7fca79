// One LoRA training step (forward + backward of the LoRA factors) of a Hugging Face-shaped model
// with random weights (models/hf_model.hpp), timed: the C++ side of bench/pytorch_hf_step.py;
// bench/run_hf_step.sh runs both and prints the ratio (docs/benchmarks.md, "Hugging Face
// shapes: one LoRA step").
//
// The step: LoRA r = 8, alpha = 16 on q and v of every layer (PEFT names `...attention.self.query`
// / `.value`, `...self_attn.q_proj` / `.v_proj`), both factors trained, a batch of 8 sequences of
// 128 real tokens (no padding); loss: classification (2 labels) for the encoder, causal LM
// (labels = ids) for the decoder. No optimizer update (it is noise: 2 x 8 x (d + out) scalars a
// module).
//
// Threads, as a federation uses cores: the model code is single-threaded per call (oneDNN runs
// on the calling thread), and a federation runs one client per thread. `--threads N` therefore
// runs N independent full steps side by side (N clients, one 8 x 128 batch each, sharing the
// read-only base) and reports the aggregate tokens/s; seconds per step are per client.
//
// Also printed: peak RSS (getrusage) against the base's bytes, the step's GEMM FLOPs and its
// "GEMM floor" (each GEMM of the step at the rate eigen_backend<float>::gemm, i.e. oneDNN above
// 64^3, reaches at that shape, measured in the same run on one thread), and a breakdown of one
// step by part (the models code's own functions run on one layer's buffers, times the layers).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <rolora/core/rng.hpp>
#include <rolora/models/hf_model.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

namespace models = rolora::models;
using rolora::index_t;
using rolora::op;
using matrix = rolora::host_matrix<float>;
using backend = rolora::eigen_backend<float>;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

// Best of `reps` runs of f, in seconds.
template <class F>
double best_of(int reps, F&& f) {
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const auto t = clock_type::now();
    f();
    best = std::min(best, seconds_since(t));
  }
  return best;
}

models::hf_config roberta_base() {
  models::hf_config c;
  c.kind = models::family::roberta;
  c.architecture = "RobertaForSequenceClassification";
  c.vocab_size = 50265;
  c.hidden_size = 768;
  c.num_layers = 12;
  c.num_heads = 12;
  c.num_kv_heads = 12;
  c.head_dim = 64;
  c.intermediate_size = 3072;
  c.max_position_embeddings = 514;
  c.type_vocab_size = 1;
  c.layer_norm_eps = 1e-5;
  c.pad_token_id = 1;
  c.num_labels = 2;
  return c;
}

models::hf_config smollm2_135m() {
  models::hf_config c;
  c.kind = models::family::llama;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.intermediate_size = 1536;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000;
  c.tie_word_embeddings = true;
  return c;
}

// One GEMM of the step, c [m, n] = op_a(a) op_b(b) with inner dimension k, `count` times.
struct gemm_call {
  index_t m, n, k;
  op op_a, op_b;
  double count;
  std::string what;
};

// Every GEMM of one step, from hf_model.hpp's forward and backward: projections, LoRA factors,
// attention's per-(sequence, head) products, the decoder's tied lm_head; the encoder's 2-label
// head (two [768, 8]-sized products) is left out.
std::vector<gemm_call> step_gemms(const models::hf_config& c, index_t n, index_t len, index_t r,
                                  const std::vector<bool>& adapted) {
  std::vector<gemm_call> g;
  const index_t N = n * len, d = c.hidden_size, L = c.num_layers, hd = c.head_dim;
  const bool encoder = models::is_encoder(c.kind);
  // (out, in) of each role.
  std::vector<std::pair<index_t, index_t>> roles;
  if (encoder) {
    roles = {{d, d}, {d, d}, {d, d}, {d, d}, {c.intermediate_size, d}, {d, c.intermediate_size}};
  } else {
    roles = {{c.num_heads * hd, d},   {c.kv_dim(), d},          {c.kv_dim(), d},
             {d, c.num_heads * hd},   {c.intermediate_size, d}, {c.intermediate_size, d},
             {d, c.intermediate_size}};
  }
  const double layers = double(L);
  for (std::size_t role = 0; role < roles.size(); ++role) {
    const auto [out, in] = roles[role];
    // q, k, v of layer 0 compute no dx (the backward stops there).
    const double dx_layers = role < 3 ? layers - 1 : layers;
    g.push_back({out, N, in, op::none, op::none, layers, "W x"});
    g.push_back({in, N, out, op::transpose, op::none, dx_layers, "W^T dy"});
    if (!adapted[role]) continue;
    g.push_back({r, N, in, op::none, op::none, layers, "A x"});
    g.push_back({out, N, r, op::none, op::none, layers, "B (A x)"});
    g.push_back({r, N, out, op::transpose, op::none, layers, "B^T dy"});
    g.push_back({out, r, N, op::none, op::transpose, layers, "dB"});
    g.push_back({r, in, N, op::none, op::transpose, layers, "dA"});
    g.push_back({in, N, r, op::transpose, op::none, dx_layers, "A^T (B^T dy)"});
  }
  const double heads = layers * double(n * c.num_heads);
  g.push_back({len, len, hd, op::transpose, op::none, heads, "attn K^T Q"});
  g.push_back({hd, len, len, op::none, op::none, heads, "attn V P"});
  g.push_back({hd, len, len, op::none, op::transpose, heads, "attn dV"});
  g.push_back({len, len, hd, op::transpose, op::none, heads, "attn dP"});
  g.push_back({hd, len, len, op::none, op::none, heads, "attn dQ"});
  g.push_back({hd, len, len, op::none, op::transpose, heads, "attn dK"});
  if (!encoder) {
    g.push_back({c.vocab_size, N, d, op::none, op::none, 1, "lm_head E h"});
    g.push_back({d, N, c.vocab_size, op::transpose, op::none, 1, "lm_head E^T dlogits"});
  }
  return g;
}

// Seconds of one c = op_a(a) op_b(b) through eigen_backend<float>::gemm (oneDNN above 64^3 when
// built with it): the best of at least 3 runs and ~0.1 s in all (called in 3 interleaved rounds
// over the shapes, so that a noisy neighbour's burst does not set one shape's rate).
bool frozen(const gemm_call& g) {
  return g.what == "W x" || g.what == "W^T dy" || g.what.rfind("lm_head", 0) == 0;
}

double gemm_seconds(const gemm_call& g, bool bf16) {
  if (bf16 && frozen(g)) {  // op(w) x on the bf16 copy of w, as hf_model.hpp's frozen_product
    const backend::frozen_matrix w =
        matrix::Random(g.op_a == op::none ? g.m : g.k, g.op_a == op::none ? g.k : g.m)
            .cast<Eigen::bfloat16>();
    const matrix x = matrix::Random(g.k, g.n);
    matrix c(g.m, g.n);
    backend::frozen_gemm(w, g.op_a, x, 0.0f, c);
    const double once = best_of(1, [&] { backend::frozen_gemm(w, g.op_a, x, 0.0f, c); });
    const int reps = std::clamp(int(0.1 / std::max(once, 1e-6)), 3, 400);
    return best_of(reps, [&] { backend::frozen_gemm(w, g.op_a, x, 0.0f, c); });
  }
  const matrix a = matrix::Random(g.op_a == op::none ? g.m : g.k, g.op_a == op::none ? g.k : g.m);
  const matrix b = matrix::Random(g.op_b == op::none ? g.k : g.n, g.op_b == op::none ? g.n : g.k);
  matrix c(g.m, g.n);
  backend::gemm(1.0f, a, g.op_a, b, g.op_b, 0.0f, c);  // warm-up (oneDNN's first call plans)
  const double once = best_of(1, [&] { backend::gemm(1.0f, a, g.op_a, b, g.op_b, 0.0f, c); });
  const int reps = std::clamp(int(0.1 / std::max(once, 1e-6)), 3, 400);
  return best_of(reps, [&] { backend::gemm(1.0f, a, g.op_a, b, g.op_b, 0.0f, c); });
}

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // KiB on Linux
}

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Time one LoRA training step of a Hugging Face-shaped model with random weights "
      "(see bench/pytorch_hf_step.py, bench/run_hf_step.sh)."};
  std::string model_name = "roberta-base";
  std::size_t threads = 1, steps = 3;
  index_t batch_size = 8, seq_len = 128, rank = 8;
  double alpha = 16;
  std::uint64_t seed = 0;
  bool breakdown = true;
  std::string base_precision = "fp32";
  app.add_option("--model", model_name, "roberta-base or smollm2-135m")
      ->check(CLI::IsMember({"roberta-base", "smollm2-135m"}))
      ->capture_default_str();
  app.add_option("--threads", threads,
                 "independent steps side by side, one per thread (clients of a federation)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--steps", steps, "timed steps per thread, after one warm-up")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--batch", batch_size)->capture_default_str();
  app.add_option("--seq-len", seq_len)->capture_default_str();
  app.add_option("--rank", rank)->capture_default_str();
  app.add_option("--alpha", alpha)->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--base-precision", base_precision,
                 "fp32, or bf16: the frozen base held in bf16 (hf_model::hold_base_in_bf16; its "
                 "products on frozen_gemm)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_flag("!--no-breakdown", breakdown, "skip the GEMM floor and the per-part breakdown");
  CLI11_PARSE(app, argc, argv);

  const auto config = model_name == "roberta-base" ? roberta_base() : smollm2_135m();
  const bool encoder = models::is_encoder(config.kind);
  auto t0 = clock_type::now();
  auto model = models::random_hf_model<float>(config, seed);
  const double build_s = seconds_since(t0);
  std::string base = "fp32";
  if (base_precision == "bf16") {
    model.hold_base_in_bf16();
    base = "bf16 (" + backend::frozen_gemm_path() + ")";
  }

  // LoRA on q and v of every layer (roles 0 and 2 in both families).
  std::vector<rolora::module_shape> targets;
  for (const auto& m : models::adaptable_modules(model)) {
    for (const index_t i : {index_t(0), index_t(2)}) {
      for (index_t layer = 0; layer < config.num_layers; ++layer) {
        if (m.name == models::linear_name(config.kind, layer, std::size_t(i))) targets.push_back(m);
      }
    }
  }
  rolora::lora_config lc;
  lc.r = rank;
  lc.lora_alpha = alpha;
  rolora::adapter_set<backend> adapters(targets, lc, seed);
  // PEFT starts B at 0; a small random B makes the step's numbers those of a later step (the
  // work is the same either way).
  std::uint32_t tag = 0;
  for (auto& [name, a] : adapters) {
    const rolora::random_stream rs(seed, rolora::stream::data, 0xB0 + tag++, 0);
    for (index_t i = 0; i < a.B.size(); ++i) {
      a.B.data()[i] = 0.01f * float(2 * rs.uniform(std::uint64_t(i)) - 1);
    }
  }

  // Random tokens (never the pad id), all real; labels random classes / the ids themselves.
  models::hf_batch batch;
  batch.seq_len = seq_len;
  std::vector<std::int32_t> labels;
  const rolora::random_stream rs(seed, rolora::stream::data, 0xBA7C, 0);
  std::uint64_t k = 0;
  for (index_t t = 0; t < batch_size * seq_len; ++t) {
    batch.ids.push_back(std::int32_t(3 + rs.below(k++, std::uint64_t(config.vocab_size - 3))));
  }
  if (encoder) {
    for (index_t s = 0; s < batch_size; ++s) {
      labels.push_back(std::int32_t(rs.below(k++, std::uint64_t(config.num_labels))));
    }
  } else {
    labels = batch.ids;
  }
  const double tokens = double(batch_size * seq_len);

  std::printf(
      "rolora hf_step: %s (%s, %lld layers, hidden %lld, vocab %lld), LoRA r %lld alpha %g "
      "on q, v (%zu modules, %zu trainable scalars), batch %lld x %lld tokens, %s loss\n",
      model_name.c_str(), std::string(models::family_name(config.kind)).c_str(),
      (long long)config.num_layers, (long long)config.hidden_size, (long long)config.vocab_size,
      (long long)rank, alpha, adapters.size(), adapters.num_parameters({true, true}),
      (long long)batch_size, (long long)seq_len, encoder ? "classification" : "causal LM");
  std::printf(
      "threads %zu (one independent step per thread, as one client per thread), GEMM %s, "
      "base %s, model bytes %zu (%.1f MiB), "
      "random weights in %.1f s\n",
      threads,
      rolora::detail::onednn_gemm_available ? "oneDNN sgemm above 64^3, else Eigen" : "Eigen",
      base.c_str(), model.bytes(), double(model.bytes()) / 1048576.0, build_s);
  std::fflush(stdout);

  // One step of one client.
  auto step = [&](models::hf_workspace<float>& ws, rolora::gradient_set<backend>& grads) {
    if (encoder) {
      return models::classification_loss_and_grad(model, adapters, batch, labels, {true, true},
                                                  &grads, ws);
    }
    return models::causal_lm_loss_and_grad(model, adapters, batch, labels, {true, true}, &grads,
                                           ws);
  };
  std::vector<models::hf_workspace<float>> workspaces(threads);
  std::vector<rolora::gradient_set<backend>> gradients(threads);
  std::vector<std::vector<double>> step_times(threads);
  std::vector<double> losses(threads);
  std::barrier sync(std::ptrdiff_t(threads) + 1);
  double warmup_s = 0;
  long faults0 = 0;
  {
    std::vector<std::jthread> pool;
    for (std::size_t w = 0; w < threads; ++w) {
      pool.emplace_back([&, w] {
        const auto t = clock_type::now();
        losses[w] = step(workspaces[w], gradients[w]);  // warm-up: allocates the workspace
        if (w == 0) warmup_s = seconds_since(t);
        sync.arrive_and_wait();
        for (std::size_t s = 0; s < steps; ++s) {
          const auto ts = clock_type::now();
          losses[w] = step(workspaces[w], gradients[w]);
          step_times[w].push_back(seconds_since(ts));
        }
      });
    }
    sync.arrive_and_wait();
    t0 = clock_type::now();
    faults0 = minor_faults();
  }  // joins
  const double wall = seconds_since(t0);
  std::vector<double> all;
  for (const auto& v : step_times) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  const double best = all.front(), median = all[all.size() / 2];
  const double tokens_per_s = double(threads) * double(steps) * tokens / wall;
  const long rss = peak_rss_kib();
  const double faults_per_step = double(minor_faults() - faults0) / double(threads * steps);
  std::printf("warm-up step %.3f s, loss %.6f\n", warmup_s, losses[0]);
  for (std::size_t w = 0; w < threads; ++w) {
    std::printf("thread %zu steps:", w);
    for (const double s : step_times[w]) std::printf(" %.3f", s);
    std::printf("\n");
  }
  std::printf("seconds_per_step best %.4f median %.4f (per client)\n", best, median);
  std::printf(
      "tokens_per_s %.1f (aggregate over %zu thread(s): %zu x %zu steps x %.0f tokens in "
      "%.3f s)\n",
      tokens_per_s, threads, threads, steps, tokens, wall);
  std::printf(
      "minor page faults per timed step %.0f (fresh pages: malloc'd and freed memory "
      "given back to the kernel and touched again)\n",
      faults_per_step);
  std::printf(
      "peak_rss_mib %.1f (model %.1f MiB; the rest: %zu workspace(s), activations, "
      "logits, gradients)\n",
      double(rss) / 1024.0, double(model.bytes()) / 1048576.0, threads);
  std::fflush(stdout);
  if (!breakdown) return 0;

  // ---- GEMM floor: every GEMM of the step at its measured one-thread rate ----------------------
  std::vector<bool> adapted(models::linears_per_layer(config.kind), false);
  adapted[0] = adapted[2] = true;
  const auto gemms = step_gemms(config, batch_size, seq_len, rank, adapted);
  std::map<std::tuple<index_t, index_t, index_t, int, int>, double> rate_cache;
  for (int round = 0; round < 3; ++round) {
    for (const auto& g : gemms) {
      const auto key = std::make_tuple(g.m, g.n, g.k, int(g.op_a), int(g.op_b));
      const double s = gemm_seconds(g, base_precision == "bf16");
      const auto [it, fresh] = rate_cache.emplace(key, s);
      if (!fresh) it->second = std::min(it->second, s);
    }
  }
  double flops = 0, floor_s = 0, proj_floor_s = 0, attn_floor_s = 0, lora_floor_s = 0,
         head_floor_s = 0;
  std::printf(
      "GEMM shapes (c [m, n] = op(a) op(b), k inner), one thread, this run, best of 3 rounds:\n");
  for (const auto& g : gemms) {
    const auto key = std::make_tuple(g.m, g.n, g.k, int(g.op_a), int(g.op_b));
    const auto it = rate_cache.find(key);
    const double f = 2.0 * double(g.m) * double(g.n) * double(g.k);
    flops += f * g.count;
    const double s = it->second * g.count;
    floor_s += s;
    if (g.what.rfind("attn", 0) == 0) {
      attn_floor_s += s;
    } else if (g.what.rfind("lm_head", 0) == 0) {
      head_floor_s += s;
    } else if (g.what == "W x" || g.what == "W^T dy") {
      proj_floor_s += s;
    } else {
      lora_floor_s += s;
    }
    std::printf("  %-20s %5lldx%-5lld k %-5lld %s%s x %6.0f: %7.1f GFLOP/s, %.4f s in the step\n",
                g.what.c_str(), (long long)g.m, (long long)g.n, (long long)g.k,
                g.op_a == op::none ? "N" : "T", g.op_b == op::none ? "N" : "T", g.count,
                f / it->second * 1e-9, s);
  }
  std::printf(
      "gemm_flops %.1f GFLOP per step; gemm_floor_s %.4f (projections %.4f, LoRA %.4f, "
      "attention %.4f, lm_head %.4f); one client's step %.4f s best -> %.1f%% of GEMM "
      "floor (GEMMs at %.1f GFLOP/s in the step's time vs %.1f at the floor)\n",
      flops * 1e-9, floor_s, proj_floor_s, lora_floor_s, attn_floor_s, head_floor_s, best,
      100.0 * floor_s / best, flops / best * 1e-9, flops / floor_s * 1e-9);

  // ---- Where one step goes: the models code's parts on one layer's buffers, x layers ----------
  using prims = rolora::nn_primitives<backend>;
  auto& ws = workspaces[0];
  auto& L = ws.layers[ws.layers.size() / 2];
  const double layers = double(config.num_layers);
  const int reps = 3;
  matrix probs, ctx, dq, dk, dv, y, xhat, rstd, dx, du, dg;
  std::map<std::string, double> part;
  const index_t kv_heads = encoder ? config.num_heads : config.num_kv_heads;
  const float scale = 1.0f / std::sqrt(float(config.head_dim));
  part["attention forward (scores, masked softmax, context)"] =
      layers * best_of(reps, [&] {
        prims::attention_forward(L.q, L.k, L.v, ws.key_valid, config.num_heads, scale, probs, ctx,
                                 kv_heads, !encoder);
      });
  part["attention backward"] =
      layers * best_of(reps, [&] {
        prims::attention_backward(L.q, L.k, L.v, L.probs, L.ctx, config.num_heads, scale, dq, dk,
                                  dv, kv_heads);
      });
  const auto& W = model.layers[ws.layers.size() / 2];
  if (encoder) {
    const float eps = float(config.layer_norm_eps);
    part["layer norm x2 (fwd+bwd)"] =
        2 * layers *
        (best_of(reps,
                 [&] {
                   prims::layer_norm_forward(L.h2, W.norm1_weight, W.norm1_bias, eps, y, xhat,
                                             rstd);
                 }) +
         best_of(reps, [&] {
           prims::layer_norm_backward(L.h2, L.xhat1, L.rstd1, W.norm1_weight, dx, false, nullptr,
                                      nullptr);
         }));
    part["GELU (erf; fwd+bwd)"] =
        layers * (best_of(reps, [&] { prims::gelu_forward(L.u, dg); }) +
                  best_of(reps, [&] { prims::gelu_backward(L.u, L.g, du); }));
  } else {
    const float eps = float(config.rms_norm_eps);
    part["RMSNorm x2 (fwd+bwd)"] =
        2 * layers *
        (best_of(reps, [&] { prims::rms_norm_forward(L.x, W.norm1_weight, eps, y, xhat, rstd); }) +
         best_of(reps, [&] {
           prims::rms_norm_backward(L.x, L.xhat1, L.rstd1, W.norm1_weight, dx, false);
         }));
    matrix q = L.q, kk = L.k;
    part["rotary q, k (fwd+bwd)"] =
        2 * layers * best_of(reps, [&] {
          prims::rotary(q, config.num_heads, config.head_dim, ws.cos, ws.sin, false);
          prims::rotary(kk, config.num_kv_heads, config.head_dim, ws.cos, ws.sin, false);
        });
    part["SwiGLU (fwd+bwd)"] =
        layers * (best_of(reps, [&] { prims::swiglu_forward(L.u, L.g, y); }) +
                  best_of(reps, [&] { prims::swiglu_backward(L.u, L.g, L.m, du, dg); }));
  }
  {
    std::vector<std::int32_t> predicted;
    if (encoder) {
      predicted = labels;
    } else {
      rolora::models::next_token_targets(labels, seq_len, predicted);
    }
    matrix dlogits;
    part[encoder ? "loss (softmax CE, 2 classes)" : "loss (softmax CE over the vocabulary)"] =
        best_of(reps, [&] {
          prims::softmax_cross_entropy(ws.logits, predicted, 1.0f / float(predicted.size()),
                                       &dlogits);
        });
  }
  double parts = 0;
  for (const auto& [name, s] : part) parts += s;
  std::printf(
      "breakdown of one step (%.4f s best; parts timed on one layer's buffers x %lld "
      "layers, one thread, after the run):\n",
      best, (long long)config.num_layers);
  const double gemm_left = best - parts;
  std::printf("  %-48s %.4f s %5.1f%%  (their floor %.4f s, at %.1f%% of it)\n",
              "projection/LoRA/lm_head GEMMs + rest (by difference)", gemm_left,
              100 * gemm_left / best, floor_s - attn_floor_s,
              100 * (floor_s - attn_floor_s) / gemm_left);
  for (const auto& [name, s] : part) {
    std::printf(
        "  %-48s %.4f s %5.1f%%%s\n", name.c_str(), s, 100 * s / best,
        name.rfind("attention forward", 0) == 0
            ? (" (attention's 6 GEMMs, fwd+bwd, floor " + std::to_string(attn_floor_s) + " s)")
                  .c_str()
            : "");
  }
  return 0;
}
