// federated_finetune: federated LoRA fine-tuning of a small pretrained transformer on the
// SpamAssassin corpus (3 classes: easy ham, hard ham, spam), comparing the methods the way the
// RoLoRA paper does (Chen et al. 2024, section 5): FedIT, FFA-LoRA, RoLoRA and the other
// aggregation strategies of rolora, each from the same pretrained model, the same LoRA
// initialisation and the same client split.
//
// Prints a progress line per round, writes a CSV per method, a final table, a plot of test
// accuracy against round and each method's final adapters as a PEFT directory.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/io/peft.hpp>
#include <rolora/nn/classification_task.hpp>
#include <rolora/rolora.hpp>
#include <string>
#include <vector>

#include "common/backend_options.hpp"
#include "common/checkpoint_options.hpp"
#include "common/plot.hpp"
#include "common/spam_task.hpp"
#include "common/transport_options.hpp"

namespace {

namespace ex = rolora::examples;

struct settings {
  ex::spam_task_config task;
  std::vector<std::string> methods{"fedit", "ffa", "rolora"};
  std::size_t rounds = 20;  // docs/results.md runs 30
  std::size_t local_steps = 4;
  std::size_t batch = 16;
  std::size_t clients_per_round = 0;
  int rank = 2;
  double lora_alpha = 8;
  std::vector<std::string> targets{"q", "v"};
  std::vector<rolora::index_t> layers;
  bool train_head = true;
  std::string optimizer = "adamw";
  std::map<std::string, double> lr;  // per method; missing: the tuned default
  double weight_decay = 0.0;
  std::size_t eval_every = 2;  // one test evaluation costs half a round at 20 clients
  bool evaluate_on_validation = false;
  std::size_t threads = 2;
  std::string out = "results/finetune";
  bool save_adapters = true;
  ex::checkpoint_options checkpoint;         // --checkpoint-dir, --checkpoint-every, --resume
  ex::transport_options transport;           // --transport, --client-timeout, --on-bad-update, ...
  ex::example_transport* carrier = nullptr;  // the transport built from it (main)
  std::string backend = "eigen";             // --backend (common/backend_options.hpp)
  std::string base_precision = "fp32";       // --base-precision: fp32 or bf16
  std::string eval_adapter;  // --eval-adapter: evaluate this PEFT directory, no training
};

// Learning rates picked on the validation split (docs/results.md says how), per method.
double default_lr(const std::string& method, const std::string& optimizer) {
  if (optimizer == "sgd") return 0.5;
  static const std::map<std::string, double> adamw_lr{
      {"fedit", 2e-3}, {"ffa", 1e-2}, {"rolora", 5e-3}};
  const auto it = adamw_lr.find(method);
  return it != adamw_lr.end() ? it->second : 2e-3;
}

struct round_row {
  std::size_t round;
  std::string phase;
  double train_loss, eval_loss, eval_accuracy, aggregation_error;
  std::size_t total_bytes_up, total_bytes_down;
  double seconds;
  double memory_mib;  // in use where the model runs, after the round (ex::memory_in_use_mib)
};

struct method_result {
  std::string method;
  double lr;
  std::vector<round_row> rows;
  double seconds = 0;
};

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // Linux: KiB
}

template <class Policy, class Aggregator, class Backend>
method_result run_method(const std::string& method, Policy policy, Aggregator aggregator,
                         const settings& s, const ex::spam_task<Backend>& data) {
  method_result result{
      method, s.lr.count(method) ? s.lr.at(method) : default_lr(method, s.optimizer), {}};
  rolora::lora_config lc;
  lc.r = s.rank;
  lc.lora_alpha = s.lora_alpha;
  lc.target_modules = s.targets;
  // Same adapter initialisation for every method: the seed, not the method, picks it. The
  // control "head" has no adapters: the classifier head alone trains (a federated linear probe).
  const bool head_only = method == "head";
  rolora::adapter_set<Backend> initial =
      head_only ? rolora::adapter_set<Backend>{}
                : rolora::adapter_set<Backend>(
                      rolora::lora_target_modules(data.model.config(), s.targets, s.layers), lc,
                      s.task.seed);
  if (s.train_head || head_only) {  // PEFT's modules_to_save for sequence classification
    initial.add_module_to_save("classifier.weight", data.model.at("classifier.weight"));
    initial.add_module_to_save("classifier.bias", data.model.at("classifier.bias"));
  }
  rolora::federation_config fc;
  fc.num_rounds = s.rounds;
  fc.clients_per_round = s.clients_per_round;
  fc.local_steps = s.local_steps;
  fc.batch_size = s.batch;
  if (s.optimizer == "sgd") {
    fc.local_optimizer = rolora::sgd{result.lr, 0.0, s.weight_decay};
  } else {
    fc.local_optimizer = rolora::adamw{result.lr, 0.9, 0.999, 1e-8, s.weight_decay};
  }
  fc.threads = s.threads;
  fc.seed = s.task.seed;
  s.transport.apply(fc);
  rolora::federation<Backend, Policy, Aggregator> fed(policy, aggregator, fc, initial);
  auto tasks = data.client_tasks();
  const auto& eval_set = s.evaluate_on_validation ? data.validation : data.test;
  const char* eval_name = s.evaluate_on_validation ? "val" : "test";

  // What a resume must match besides the federation's config and model (checkpoint.hpp).
  nlohmann::json identity{{"method", method},
                          {"clients", s.task.clients},
                          {"split", s.task.split.kind},
                          {"dirichlet_alpha", s.task.split.alpha},
                          {"classes_per_client", s.task.split.classes_per_client},
                          {"max_len", s.task.max_len},
                          {"model", s.task.checkpoint},
                          {"targets", s.targets},
                          {"layers", s.layers},
                          {"eval_every", s.eval_every},
                          {"validation", s.evaluate_on_validation}};
  if (s.base_precision != "fp32") identity["base_precision"] = s.base_precision;
  const auto rows_json = [](const std::vector<round_row>& rows) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rows) {  // doubles by their bits: a resumed CSV is byte-identical
      j.push_back(
          {r.round, r.phase, std::bit_cast<std::uint64_t>(r.train_loss),
           std::bit_cast<std::uint64_t>(r.eval_loss), std::bit_cast<std::uint64_t>(r.eval_accuracy),
           std::bit_cast<std::uint64_t>(r.aggregation_error), r.total_bytes_up, r.total_bytes_down,
           std::bit_cast<std::uint64_t>(r.seconds), std::bit_cast<std::uint64_t>(r.memory_mib)});
    }
    return j;
  };
  const auto bits = [](const nlohmann::json& v) {
    return std::bit_cast<double>(v.template get<std::uint64_t>());
  };
  if (!s.carrier->is_server()) {  // an MPI client rank: host this rank's clients, nothing else
    s.carrier->run(fed, tasks);
    return result;
  }
  if (!s.checkpoint.resume.empty() &&
      rolora::has_checkpoint(std::filesystem::path(s.checkpoint.resume) / method)) {
    const auto from = std::filesystem::path(s.checkpoint.resume) / method;
    for (const auto& r : rolora::load_checkpoint(from, fed.server(), identity).at("rows")) {
      result.rows.push_back({r.at(0).template get<std::size_t>(),
                             r.at(1).template get<std::string>(), bits(r.at(2)), bits(r.at(3)),
                             bits(r.at(4)), bits(r.at(5)), r.at(6).template get<std::size_t>(),
                             r.at(7).template get<std::size_t>(), bits(r.at(8)),
                             r.size() > 9 ? bits(r.at(9)) : -1.0});
    }
    std::printf("%-8s resumed after round %zu from %s\n", method.c_str(), fed.next_round(),
                from.c_str());
  }

  struct progress {
    const settings& s;
    const ex::spam_task<Backend>& data;
    const rolora::labelled_sequences& eval_set;
    const char* eval_name;
    method_result& result;
    const rolora::federation<Backend, Policy, Aggregator>& fed;
    const nlohmann::json& identity;
    const decltype(rows_json)& to_json;
    double elapsed = result.rows.empty() ? 0.0 : result.rows.back().seconds;
    void on_round_end(const rolora::round_report& r, const rolora::adapter_set<Backend>& global) {
      elapsed += r.seconds;
      round_row row{r.round + 1,
                    std::string(r.trained.label()),
                    r.train_loss,
                    -1,
                    -1,
                    r.aggregation_error,
                    r.total_bytes_up,
                    r.total_bytes_down,
                    elapsed,
                    ex::memory_in_use_mib(s.backend)};
      const bool last = r.round + 1 == s.rounds;
      if (last || (r.round + 1) % s.eval_every == 0) {
        const auto e = rolora::evaluate(data.model, global, eval_set, s.threads);
        row.eval_loss = e.loss;
        row.eval_accuracy = e.accuracy;
      }
      result.rows.push_back(row);
      char accuracy[16] = "  -   ";
      if (row.eval_accuracy >= 0)
        std::snprintf(accuracy, sizeof accuracy, "%.4f", row.eval_accuracy);
      std::printf(
          "%-8s round %3zu/%zu  phase %-2s  train loss %.4f  %s acc %s  agg err %.1e  up %7.2f MB  "
          "%6.1f s  %s %.0f MiB\n",
          result.method.c_str(), row.round, s.rounds, row.phase.c_str(), row.train_loss, eval_name,
          accuracy, row.aggregation_error, double(row.total_bytes_up) / 1e6, elapsed,
          s.backend == "cuda" ? "device" : "RSS", row.memory_mib);
      std::fflush(stdout);
      if (!s.checkpoint.dir.empty() && (last || row.round % s.checkpoint.every == 0)) {
        rolora::save_checkpoint(std::filesystem::path(s.checkpoint.dir) / result.method,
                                fed.server(), identity, {{"rows", to_json(result.rows)}});
      }
    }
  } cb{s, data, eval_set, eval_name, result, fed, identity, rows_json};
  const auto start = std::chrono::steady_clock::now();
  s.carrier->run(fed, tasks, cb);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (s.save_adapters && !head_only) {
    const auto dir = std::filesystem::path(s.out) / (method + "_adapter");
    rolora::save_peft_adapter(dir, fed.global(), lc);
    // FLoRA and FedEx-LoRA move part of the update into the base weight (each adapter's
    // residual), which a PEFT directory cannot hold: it goes next to it, keyed like the weights.
    std::map<std::string, rolora::tensor_data> residuals;
    for (const auto& [name, a] : fed.global()) {
      if (a.has_residual())
        residuals.emplace(name + ".weight", rolora::make_tensor(Backend::to_host(a.residual)));
    }
    if (!residuals.empty())
      rolora::write_safetensors(dir / "base_weight_residual.safetensors", residuals);
  }
  return result;
}

template <class Backend>
method_result run_named(const std::string& m, const settings& s,
                        const ex::spam_task<Backend>& data) {
  using namespace rolora;
  if (m == "head") return run_method(m, train_both{}, fedavg{}, s, data);
  if (m == "fedit") return run_method(m, train_both{}, fedavg{}, s, data);
  if (m == "ffa") return run_method(m, freeze_a{}, fedavg{}, s, data);
  if (m == "rolora") return run_method(m, alternating{}, fedavg{}, s, data);
  if (m == "fedsa") return run_method(m, fedsa{}, fedavg{}, s, data);
  if (m == "flexlora") return run_method(m, train_both{}, svd_resplit{}, s, data);
  if (m == "flora") return run_method(m, train_both{}, flora_stack{}, s, data);
  if (m == "fedex") return run_method(m, train_both{}, fedex_residual{}, s, data);
  if (m == "fedrot") return run_method(m, train_both{}, procrustes{}, s, data);
  detail::raise<config_error>("unknown method '", m, "'");
}

void write_csv(const std::string& file, const method_result& r) {
  ex::ensure_parent(file);
  std::FILE* out = std::fopen(file.c_str(), "w");
  if (!out) throw std::runtime_error("cannot write " + file);
  std::fprintf(
      out,
      "method,lr,round,phase,train_loss,eval_loss,eval_accuracy,aggregation_error,total_bytes_up,"
      "total_bytes_down,seconds,memory_mib\n");
  for (const auto& row : r.rows) {
    std::fprintf(out, "%s,%g,%zu,%s,%.9g,%.9g,%.9g,%.9g,%zu,%zu,%.3f,%.1f\n", r.method.c_str(),
                 r.lr, row.round, row.phase.c_str(), row.train_loss, row.eval_loss,
                 row.eval_accuracy, row.aggregation_error, row.total_bytes_up, row.total_bytes_down,
                 row.seconds, row.memory_mib);
  }
  std::fclose(out);
}

// --base-precision bf16: the frozen base (every linear's W0 and the embeddings) held in bf16,
// converted from the fp32 checkpoint. Returns the log line saying what it holds and costs.
template <class Backend>
std::string hold_base(rolora::transformer_weights<Backend>& model, const std::string& precision) {
  const std::size_t n = model.num_base_scalars();
  std::string held = "fp32";
  if (precision == "bf16") {
    if constexpr (rolora::frozen_bf16_backend<Backend>) {
      model.convert_base_to_bf16();
      held = "bf16; frozen GEMMs: " + Backend::frozen_gemm_path();
    } else {
      rolora::detail::raise<rolora::config_error>("--base-precision bf16: backend '", Backend::name,
                                                  "' cannot hold bf16 matrices (eigen can)");
    }
  }
  return "base model: " + std::to_string(n) +
         " frozen scalars (every linear's W0 and the embeddings): " + std::to_string(4 * n) +
         " bytes in fp32, " + std::to_string(2 * n) + " in bf16; held in " + held;
}

template <class Backend>
int run(settings& s) {
  // Under MPI rank 0 loads (and builds, when missing) the model before the others read it.
  if (!s.carrier->is_server()) s.carrier->barrier();
  auto data = ex::load_spam_task<Backend>(s.task);
  if (s.carrier->is_server()) s.carrier->barrier();
  const std::string base = hold_base(data.model, s.base_precision);
  if (!s.carrier->is_server()) {
    for (const auto& m : s.methods) run_named(m, s, data);
    return 0;
  }
  std::filesystem::create_directories(s.out);
  std::printf("%s\nbackend: %s\n%s\n", data.summary.c_str(), std::string(Backend::name).c_str(),
              base.c_str());
  if (!s.eval_adapter.empty()) {  // a PEFT directory written by any backend, on this one
    rolora::lora_config lc;
    lc.r = s.rank;
    rolora::adapter_set<Backend> like(
        rolora::lora_target_modules(data.model.config(), s.targets, s.layers), lc, 0);
    if (s.train_head) {
      like.add_module_to_save("classifier.weight", data.model.at("classifier.weight"));
      like.add_module_to_save("classifier.bias", data.model.at("classifier.bias"));
    }
    const auto loaded = rolora::load_peft_adapter<Backend>(s.eval_adapter, like);
    const auto e =
        rolora::evaluate(data.model, loaded.adapters,
                         s.evaluate_on_validation ? data.validation : data.test, s.threads);
    std::printf("%s: %s accuracy %.4f loss %.6f\n", s.eval_adapter.c_str(),
                s.evaluate_on_validation ? "val" : "test", e.accuracy, e.loss);
    return 0;
  }
  std::vector<method_result> results;
  for (const auto& m : s.methods) {
    results.push_back(run_named(m, s, data));
    write_csv((std::filesystem::path(s.out) / (m + ".csv")).string(), results.back());
  }

  const char* eval_name = s.evaluate_on_validation ? "val" : "test";
  std::printf("\n%-8s %8s %10s %10s %10s %12s %9s\n", "method", "lr",
              (std::string("final_") + eval_name).c_str(), "best", "final_loss", "MB_up_total",
              "seconds");
  std::vector<ex::series> lines;
  for (const auto& r : results) {
    double best = 0;
    ex::series line{r.method, {}};
    for (const auto& row : r.rows) {
      if (row.eval_accuracy < 0) continue;
      best = std::max(best, row.eval_accuracy);
      line.points.emplace_back(double(row.round), row.eval_accuracy);
    }
    const auto& last = r.rows.back();
    std::printf("%-8s %8.1e %10.4f %10.4f %10.4f %12.2f %9.1f\n", r.method.c_str(), r.lr,
                last.eval_accuracy, best, last.eval_loss, double(last.total_bytes_up) / 1e6,
                r.seconds);
    lines.push_back(std::move(line));
  }
  std::printf("peak RSS %.1f MiB\n", peak_rss_mib());
  const auto plot = (std::filesystem::path(s.out) / "accuracy.svg").string();
  ex::chart c{"Federated LoRA fine-tuning, " + std::to_string(s.task.clients) + " clients (" +
                  s.task.split.kind + "), rank " + std::to_string(s.rank),
              "round",
              std::string(eval_name) + " accuracy",
              false,
              "bottom right",
              "*:*"};
  if (ex::draw_chart(plot, c, lines)) std::printf("wrote %s\n", plot.c_str());
  std::printf("wrote %s/<method>.csv%s\n", s.out.c_str(),
              s.save_adapters ? " and <method>_adapter/" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Federated LoRA fine-tuning of a small pretrained transformer on the SpamAssassin corpus "
      "(easy ham / hard ham / spam): FedIT, FFA-LoRA, RoLoRA, ... from the same start."};
  settings s;
  auto& t = s.task;
  app.add_option("--clients", t.clients, "number of clients")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  ex::add_split_options(app, t.split, "training e-mails");
  app.add_option(
         "--methods", s.methods,
         "methods to run: fedit (FedIT), ffa (FFA-LoRA), rolora (RoLoRA), fedsa (FedSA-LoRA), "
         "flexlora (FlexLoRA), flora (FLoRA), fedex (FedEx-LoRA), fedrot (FedRot-LoRA); head: "
         "the control without adapters (the classifier head alone trains, FedAvg)")
      ->delimiter(',')
      ->check(CLI::IsMember(
          {"fedit", "ffa", "rolora", "fedsa", "flexlora", "flora", "fedex", "fedrot", "head"}))
      ->capture_default_str();
  app.add_option("--rank", s.rank, "LoRA rank r")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--lora-alpha", s.lora_alpha, "LoRA alpha (scaling alpha / r)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--targets", s.targets, "target modules: q,k,v,o,fc1,fc2 or all-linear")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--layers", s.layers, "layers to transform (default: all)")->delimiter(',');
  app.add_flag("!--freeze-head", s.train_head,
               "keep the classifier head frozen (default: it trains, "
               "as PEFT's modules_to_save)");
  app.add_option("--rounds", s.rounds, "communication rounds")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--local-steps", s.local_steps, "local optimizer steps per round")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--batch", s.batch, "local batch size")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--clients-per-round", s.clients_per_round, "clients sampled per round (0: all)")
      ->capture_default_str();
  app.add_option("--optimizer", s.optimizer, "local optimizer")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  double lr = 0;
  auto* lr_opt =
      app.add_option("--lr", lr, "learning rate for every method (default: tuned per method)")
          ->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", s.weight_decay, "optimizer weight decay")->capture_default_str();
  app.add_option("--seed", t.seed, "seed of the split, the adapters, sampling and batching")
      ->capture_default_str();
  app.add_option("--threads", s.threads,
                 "clients trained in parallel (results do not depend on it)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--eval-every", s.eval_every, "evaluate every N rounds")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_flag("--validation", s.evaluate_on_validation,
               "evaluate on the validation split (for tuning) instead of the test split");
  app.add_option("--max-len", t.max_len, "bytes per email seen by the model")
      ->check(CLI::Range(8, 4096))
      ->capture_default_str();
  app.add_option("--data-dir", t.data_dir, "where scripts/fetch_data.sh put the corpus")
      ->capture_default_str();
  app.add_option("--checkpoint", t.checkpoint, "pretrained model (built here when missing)")
      ->capture_default_str();
  app.add_option("--pretrain-steps", t.pretrain.steps,
                 "pretraining steps when the checkpoint must be built")
      ->check(CLI::Range(1, 10000000))
      ->capture_default_str();
  app.add_option("--out", s.out, "output folder")->capture_default_str();
  app.add_flag("!--no-save", s.save_adapters, "do not write the PEFT adapter directories");
  ex::add_checkpoint_options(app, s.checkpoint, "rounds");
  ex::add_backend_option(app, s.backend);
  app.add_option("--base-precision", s.base_precision,
                 "the frozen base model's weights (every linear's W0 and the embeddings): fp32, "
                 "or bf16 to hold them in half the memory, as QLoRA-style fine-tuning does "
                 "(read in fp32 and rounded; adapters, gradients, optimizer state, layer norms, "
                 "biases and the head stay fp32). With bf16 the frozen GEMMs run on oneDNN's "
                 "bf16 kernel where the CPU has one (AVX512_BF16, AMX), else convert to fp32. "
                 "Eigen backend only")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--eval-adapter", s.eval_adapter,
                 "evaluate this PEFT adapter directory (with the head as modules_to_save, as "
                 "written here) on the test split and exit");
  ex::add_transport_options(app, s.transport);
  CLI11_PARSE(app, argc, argv);
  s.checkpoint.finish_parsing();
  if (!s.train_head && std::count(s.methods.begin(), s.methods.end(), "head")) {
    std::fprintf(stderr, "error: --methods head with --freeze-head would train nothing\n");
    return 2;
  }
  if (lr_opt->count() > 0) {
    for (const auto& m : s.methods) s.lr[m] = lr;
  }
  t.threads = s.threads;
  ex::example_transport carrier(argc, argv, s.transport);
  s.carrier = &carrier;
  try {
    return ex::with_backend(s.backend, [&]<class B>(B) { return run<B>(s); });
  } catch (const rolora::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return carrier.fail(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return carrier.fail(1);
  }
}
