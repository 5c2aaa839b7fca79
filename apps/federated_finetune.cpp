// federated_finetune: federated LoRA fine-tuning of a small pretrained transformer on the
// SpamAssassin corpus (3 classes: easy ham, hard ham, spam), comparing the methods the way the
// RoLoRA paper does (Chen et al. 2024, section 5): FedIT, FFA-LoRA, RoLoRA and the other
// aggregation strategies of rolora, each from the same pretrained model, the same LoRA
// initialisation and the same client split.
//
// Prints a progress line per round, writes a CSV per method, a final table, a plot of test
// accuracy against round and each method's final adapters as a PEFT directory.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/federated/methods.hpp>
#include <rolora/io/peft.hpp>
#include <rolora/nn/classification_task.hpp>
#include <rolora/rolora.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/backend_options.hpp"
#include "common/dp_federation.hpp"
#include "common/exit_code.hpp"
#ifndef ROLORA_APPS_NO_HF_MODELS
#include "common/hf_finetune.hpp"
#endif
#include "common/options.hpp"
#include "common/plot.hpp"
#include "common/report.hpp"
#include "common/spam_task.hpp"
#include "common/transport_options.hpp"

namespace {

namespace apps = rolora::apps;

struct settings {
  apps::spam_task_config task;
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
  // Picked on the validation split (docs/results.md says how); --optimizer sgd: 0.5 for all.
  apps::learning_rates lr{{{"fedit", 2e-3}, {"ffa", 1e-2}, {"rolora", 1e-2}}, 2e-3};
  double weight_decay = 0.0;
  std::size_t eval_every = 2;  // one test evaluation costs half a round at 20 clients
  bool evaluate_on_validation = false;
  bool personal_eval = false;  // --personal-eval
  std::size_t head_probe = 0;  // --head-probe: steps of the central linear probe (0: none)
  double head_probe_lr = 1e-2;
  std::size_t threads = 2;
  std::string out = "results/finetune";
  bool save_adapters = true;
  apps::checkpoint_options checkpoint;     // --checkpoint-dir, --checkpoint-every, --resume
  apps::transport_options transport;       // --transport, --client-timeout, --on-bad-update, ...
  apps::app_transport* carrier = nullptr;  // the transport built from it (main)
  std::string backend = "eigen";           // --backend (common/backend_options.hpp)
  std::string base_precision = "fp32";     // --base-precision: fp32 or bf16
  std::string eval_adapter;       // --eval-adapter: evaluate this PEFT directory, no training
  apps::hf_finetune_settings hf;  // --model DIR and its data flags (apps/hf_finetune.cpp)
  apps::dp_settings dp;           // --dp client, --clip-norm, --noise-multiplier, ...
};

struct method_result {
  std::string method;
  double lr;
  std::vector<apps::round_row> rows;
  double seconds = 0;
};

template <class Federation, class Backend>
method_result run_federation(const std::string& method, Federation& fed,
                             const rolora::lora_config& lc, const settings& s,
                             const apps::spam_task<Backend>& data, method_result result);

template <class Policy, class Aggregator, class Backend>
method_result run_method(const std::string& method, Policy policy, Aggregator aggregator,
                         const settings& s, const apps::spam_task<Backend>& data) {
  method_result result{method, s.lr(method), {}};
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
  if (s.dp.sample()) {  // DP-SGD in every client; z for a client in every round at the largest q
    std::size_t fewest = data.clients.front().size();
    for (const auto& c : data.clients) fewest = std::min(fewest, c.size());
    const double q = s.batch == 0 ? 1.0 : double(s.batch) / double(fewest);
    fc.sample_dp = s.dp.to_sample_dp(s.rounds * s.local_steps, std::min(q, 1.0));
    std::printf(
        "%-8s sample-level DP-SGD: clip norm %g, noise multiplier %.9g, q <= %g, %zu "
        "steps per client at most, delta %g\n",
        method.c_str(), fc.sample_dp->clip_norm, fc.sample_dp->noise_multiplier, q,
        s.rounds * s.local_steps, fc.sample_dp->delta);
  }
  s.transport.apply(fc);
  return apps::with_federation<Backend>(
      policy, aggregator, fc, initial, s.dp, method,
      [&](auto& fed) { return run_federation(method, fed, lc, s, data, std::move(result)); });
}

// The rounds of one method's federation `fed` (with or without client-level DP), its checkpoints
// and adapters.
template <class Federation, class Backend>
method_result run_federation(const std::string& method, Federation& fed,
                             const rolora::lora_config& lc, const settings& s,
                             const apps::spam_task<Backend>& data, method_result result) {
  const bool head_only = method == "head";
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
  if (s.head_probe > 0) identity["head_probe"] = {s.head_probe, s.head_probe_lr};
  if (!s.carrier->is_server()) {  // an MPI client rank: host this rank's clients, nothing else
    s.carrier->run(fed, tasks);
    return result;
  }
  if (!s.checkpoint.resume.empty() &&
      rolora::has_checkpoint(std::filesystem::path(s.checkpoint.resume) / method)) {
    const auto from = std::filesystem::path(s.checkpoint.resume) / method;
    result.rows =
        apps::rows_from_json(rolora::load_checkpoint(from, fed.server(), identity).at("rows"));
    std::printf("%-8s resumed after round %zu from %s\n", method.c_str(), fed.next_round(),
                from.c_str());
  }

  apps::round_progress<Backend> cb;
  char label[64];
  std::snprintf(label, sizeof label, "%-8s", method.c_str());
  cb.label = label;
  cb.rounds = s.rounds;
  cb.eval_every = s.eval_every;
  cb.eval_name = eval_name;
  // --personal-eval: the evaluation set shared among the clients by their training label mix
  // (rolora::partition_like); each client's model scored on its share, the mean over clients
  // with a share (equal weights). Methods without a per-client factor score the global model,
  // whose predictions the evaluation just made.
  rolora::partition shares;
  if (s.personal_eval) {
    std::vector<std::vector<int>> client_labels;
    for (const auto& c : data.clients) client_labels.push_back(c.labels);
    shares = rolora::partition_like(client_labels, eval_set.labels, s.task.seed);
  }
  std::vector<std::int32_t> predictions;  // of the last global evaluation
  const bool own_models =
      fed.policy().keeps_local().any() || !fed.server().config().client_ranks.empty();
  cb.evaluate = [&](const rolora::adapter_set<Backend>& global) {
    auto e = rolora::evaluate(data.model, global, eval_set, s.threads);
    predictions = std::move(e.predictions);
    return std::pair{e.loss, e.accuracy};
  };
  if (s.personal_eval) {
    cb.evaluate_personal = [&] {
      double sum = 0.0;
      std::size_t scored = 0;
      for (std::size_t c = 0; c < shares.size(); ++c) {
        if (shares[c].empty()) continue;
        std::size_t right = 0;
        if (own_models) {
          const auto share = eval_set.select(shares[c]);
          const auto e = rolora::evaluate(data.model, fed.client_view(c), share, s.threads);
          for (std::size_t k = 0; k < share.size(); ++k)
            right += e.predictions[k] == share.labels[k];
        } else {
          for (const auto i : shares[c]) right += predictions[i] == eval_set.labels[i];
        }
        sum += double(right) / double(shares[c].size());
        ++scored;
      }
      return sum / double(scored);
    };
  }
  cb.memory_mib = [&] { return apps::memory_in_use_mib(s.backend); };
  cb.memory_name = s.backend == "cuda" ? "device" : "RSS";
  cb.after = [&](const std::vector<apps::round_row>& rows, bool last) {
    if (!s.checkpoint.dir.empty() && (last || rows.back().round % s.checkpoint.every == 0)) {
      rolora::save_checkpoint(std::filesystem::path(s.checkpoint.dir) / method, fed.server(),
                              identity, {{"rows", apps::rows_to_json(rows)}});
    }
  };
  cb.rows = std::move(result.rows);
  const auto start = std::chrono::steady_clock::now();
  s.carrier->run(fed, tasks, cb);
  result.rows = std::move(cb.rows);
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

// `m`: a name of rolora::method_list, or "head", the control without adapters (FedIT's parts:
// only the classifier head trains).
template <class Backend>
method_result run_named(const std::string& m, const settings& s,
                        const apps::spam_task<Backend>& data) {
  return rolora::visit_method(m == "head" ? "fedit" : m, [&](auto policy, auto aggregator) {
    return run_method(m, policy, aggregator, s, data);
  });
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
      rolora::raise<rolora::config_error>("--base-precision bf16: backend '", Backend::name,
                                          "' cannot hold bf16 matrices (eigen can)");
    }
  }
  return "base model: " + std::to_string(n) +
         " frozen scalars (every linear's W0 and the embeddings): " + std::to_string(4 * n) +
         " bytes in fp32, " + std::to_string(2 * n) + " in bf16; held in " + held;
}

// --head-probe: a linear probe on the public split (data.public_set: the e-mails set aside for
// pretraining, which no client holds). The classifier head alone trains centrally, --head-probe
// AdamW steps of --batch e-mails (the head-only federation with one client holding all of it),
// and replaces the checkpoint's head for every method; the paper's protocol then freezes it
// (--freeze-head). Seeded apart from --seed: the probe belongs to the base model, the same for
// every run. Every process computes it (same bits under MPI and gRPC). Returns the log line.
template <class Backend>
std::string probe_head(apps::spam_task<Backend>& data, const settings& s) {
  rolora::adapter_set<Backend> head;
  for (const auto* name : {"classifier.weight", "classifier.bias"}) {
    head.add_module_to_save(name, data.model.at(name));
  }
  rolora::federation_config fc;
  fc.num_rounds = 1;
  fc.local_steps = s.head_probe;
  fc.batch_size = s.batch;
  fc.local_optimizer = rolora::adamw{s.head_probe_lr, 0.9, 0.999, 1e-8, 0.0};
  fc.threads = 1;
  fc.seed = 0;
  rolora::federation<Backend, rolora::train_both, rolora::fedavg> probe({}, {}, fc,
                                                                        std::move(head));
  std::vector<rolora::classification_task<Backend>> central;
  central.emplace_back(data.model, data.public_set);
  const auto report = probe.run(central).back();
  for (const auto& [name, w] : probe.global().modules_to_save()) data.model.at(name) = w;
  char line[256];
  std::snprintf(line, sizeof line,
                "head: a linear probe on the %zu public e-mails (%zu steps of %zu at lr %g, "
                "train loss %.4f), then every method starts from it",
                data.public_set.size(), s.head_probe, s.batch, s.head_probe_lr, report.train_loss);
  return line;
}

template <class Backend>
int run(settings& s) {
  // Under MPI rank 0 loads (and builds, when missing) the model before the others read it.
  if (!s.carrier->is_server()) s.carrier->barrier();
  auto data = apps::load_spam_task<Backend>(s.task);
  if (s.carrier->is_server()) s.carrier->barrier();
  const std::string head = s.head_probe > 0 ? probe_head(data, s) : "";
  const std::string base = hold_base(data.model, s.base_precision);
  if (!s.carrier->is_server()) {
    for (const auto& m : s.methods) run_named(m, s, data);
    return 0;
  }
  std::filesystem::create_directories(s.out);
  std::printf("%s\nbackend: %s\n%s\n", data.summary.c_str(), std::string(Backend::name).c_str(),
              base.c_str());
  if (!head.empty()) std::printf("%s\n", head.c_str());
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
    apps::write_round_csv(std::filesystem::path(s.out) / (m + ".csv"), m, results.back().lr,
                          results.back().rows, s.dp.any(), s.personal_eval);
  }

  const char* eval_name = s.evaluate_on_validation ? "val" : "test";
  std::printf("\n%-8s %8s %10s %10s %10s %12s %9s\n", "method", "lr",
              (std::string("final_") + eval_name).c_str(), "best", "final_loss", "MB_up_total",
              "seconds");
  std::vector<apps::series> lines;
  for (const auto& r : results) {
    double best = 0;
    for (const auto& row : r.rows) best = std::max(best, row.eval_accuracy);
    const auto& last = r.rows.back();
    std::printf("%-8s %8.1e %10.4f %10.4f %10.4f %12.2f %9.1f\n", r.method.c_str(), r.lr,
                last.eval_accuracy, best, last.eval_loss, double(last.total_bytes_up) / 1e6,
                r.seconds);
    lines.push_back(apps::accuracy_curve(r.method, r.rows));
  }
  std::printf("peak RSS %.1f MiB\n", apps::peak_rss_mib());
  const auto plot = (std::filesystem::path(s.out) / "accuracy.svg").string();
  apps::chart c{"Federated LoRA fine-tuning, " + std::to_string(s.task.clients) + " clients (" +
                    s.task.split.kind + "), rank " + std::to_string(s.rank),
                "round",
                std::string(eval_name) + " accuracy",
                false,
                "bottom right",
                "*:*"};
  if (apps::draw_chart(plot, c, lines)) std::printf("wrote %s\n", plot.c_str());
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
  apps::shared_options shared(app);
  shared.clients(t.clients);
  shared.split(t.split, "training e-mails");
  shared.methods(s.methods, false, {"head"},
                 "head: the control without adapters (the classifier head alone trains, FedAvg)");
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
  shared.rounds(s.rounds);
  shared.local_steps(s.local_steps);
  shared.batch(s.batch);
  shared.clients_per_round(s.clients_per_round);
  app.add_option("--optimizer", s.optimizer, "local optimizer")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  shared.lr(s.lr, "learning rate for every method (default: tuned per method)");
  app.add_option("--weight-decay", s.weight_decay, "optimizer weight decay")->capture_default_str();
  shared.seed(t.seed);
  shared.threads(s.threads);
  shared.eval_every(s.eval_every);
  shared.validation(s.evaluate_on_validation,
                    "evaluate on the validation split (for tuning) instead of the test split");
  app.add_option("--head-probe", s.head_probe,
                 "first train the classifier head alone, centrally, on the public split (the "
                 "e-mails set aside for pretraining, which no client holds): STEPS AdamW steps of "
                 "--batch e-mails at --head-probe-lr; every method starts from that head (the "
                 "paper's protocol freezes it: --freeze-head). 0: the checkpoint's head")
      ->type_name("STEPS")
      ->capture_default_str();
  app.add_option("--head-probe-lr", s.head_probe_lr, "learning rate of --head-probe")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--personal-eval", s.personal_eval,
               "also score each client's own model (FedSA-LoRA: the shared A with its own B; "
               "the other methods: the global model) on its share of the evaluation set, drawn "
               "with its training label mix; the mean over clients is the CSV's "
               "personal_accuracy (built-in model)");
  apps::add_corpus_options(
      app, t,
      "bytes per email seen by the built-in model; with --model, tokens per sequence "
      "(truncated and padded)",
      "pretrained model (built here when missing)");
  app.add_option("--pretrain-steps", t.pretrain.steps,
                 "pretraining steps when the checkpoint must be built")
      ->check(CLI::Range(1, 10000000))
      ->capture_default_str();
  shared.out(s.out);
  app.add_flag("!--no-save", s.save_adapters, "do not write the PEFT adapter directories");
  shared.checkpoint(s.checkpoint, "rounds");
  apps::add_backend_option(app, s.backend);
  app.add_option("--base-precision", s.base_precision,
                 "the frozen base model's weights (every linear's W0 and the embeddings): fp32, "
                 "or bf16 to hold them in half the memory, as QLoRA-style fine-tuning does "
                 "(read in fp32 and rounded; adapters, gradients, optimizer state, layer norms, "
                 "biases and the head stay fp32). With bf16 the frozen GEMMs run on oneDNN's "
                 "bf16 kernel where the CPU has one (AVX512_BF16, AMX), else convert to fp32. "
                 "Eigen backend only. auto (--model only, its default): time both GEMMs at the "
                 "model's shapes once, take the faster, say which and cache the answer")
      ->check(CLI::IsMember({"fp32", "bf16", "auto"}))
      ->capture_default_str();
  app.add_option("--eval-adapter", s.eval_adapter,
                 "evaluate this PEFT adapter directory (with the head as modules_to_save, as "
                 "written here) on the test split and exit");
  shared.client_dp(s.dp);
  apps::add_transport_options(app, s.transport);
  auto* model_opt =
      app.add_option("--model", s.hf.model_dir,
                     "a Hugging Face model directory (config.json, model.safetensors or its "
                     "shards, tokenizer.json): BERT, RoBERTa (classification) or Llama, Qwen2, "
                     "SmolLM (causal LM) instead of the built-in model on the SpamAssassin mail; "
                     "needs --train and --test (docs/models.md). It cannot be combined with "
                     "--checkpoint (the built-in model's file)")
          ->check(CLI::ExistingDirectory);
  app.add_option("--train", s.hf.train_file, "--model: training data (.csv, .tsv or .jsonl)")
      ->check(CLI::ExistingFile);
  app.add_option("--test", s.hf.test_file, "--model: test data (.csv, .tsv or .jsonl)")
      ->check(CLI::ExistingFile);
  app.add_option("--text-columns", s.hf.text_columns,
                 "--model: the text column, or two for pairs (default: sentence1,sentence2, "
                 "question,sentence, premise,hypothesis, sentence or text, whichever exist; "
                 "decoders: messages (chat, rendered with the model's chat template: loss on "
                 "the assistant's turns), instruction,input,output (Alpaca: loss on the output) "
                 "or one text)")
      ->delimiter(',');
  app.add_option("--chat-template", s.hf.chat_template,
                 "--model: render the messages column with this Jinja file instead of the "
                 "model's chat template (chat_template.jinja or tokenizer_config.json's)")
      ->check(CLI::ExistingFile);
  app.add_option("--label-column", s.hf.label_column, "--model: the class column (encoders)")
      ->capture_default_str();
  app.add_option("--split-column", s.hf.split_column,
                 "--model: --split dirichlet / classes on this column (e.g. a category) instead "
                 "of the class; decoders need it for a non-iid split");
  app.add_option("--max-examples", s.hf.max_examples,
                 "--model: use the first N rows of each file (0: all)")
      ->capture_default_str();
  app.add_option("--init-adapter", s.hf.init_adapter,
                 "--model: start every method from this PEFT adapter directory (trained in "
                 "Python or here) instead of a fresh initialisation")
      ->check(CLI::ExistingDirectory);
  CLI11_PARSE(app, argc, argv);
  apps::finish_corpus_options(app, t);
  s.checkpoint.finish_parsing();
  if (s.dp.sample() && !s.hf.model_dir.empty()) {
    std::fprintf(stderr,
                 "error: --dp sample runs on the built-in model only for now (--model's task "
                 "has no per-example clipping)\n");
    return 2;
  }
  if (s.base_precision == "auto" && s.hf.model_dir.empty()) {
    std::fprintf(stderr,
                 "error: --base-precision auto is for --model; the built-in model takes "
                 "fp32 or bf16\n");
    return 2;
  }
  if (!s.train_head && std::count(s.methods.begin(), s.methods.end(), "head")) {
    std::fprintf(stderr, "error: --methods head with --freeze-head would train nothing\n");
    return 2;
  }
  if (const auto why = apps::refusal_of(s.methods, s.dp.on(), s.transport.secure_aggregation);
      !why.empty()) {
    std::fprintf(stderr, "error: %s\n", why.c_str());
    return 2;
  }
  if (s.optimizer == "sgd") s.lr = {{}, 0.5, s.lr.all};  // one rate for every method
  t.threads = s.threads;
  if (s.transport.kind == "grpc") {
    if (s.base_precision == "auto") {
      std::fprintf(stderr,
                   "error: --transport grpc needs --base-precision fp32 or bf16: with auto each "
                   "machine would pick its own, and the bits would differ\n");
      return 2;
    }
    // What a client process must share with the server: every flag but its own and the paths
    // of its files, and the contents of the base model and the starting adapter.
    s.transport.fingerprint = apps::fingerprint_of(
        app, {"data-dir", "train", "test", "checkpoint", "model", "init-adapter", "eval-adapter"});
    for (const auto& dir : {s.hf.model_dir, s.hf.init_adapter}) {
      if (dir.empty()) continue;
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(dir)) {
        const auto ext = e.path().extension();
        if (ext == ".json" || ext == ".safetensors" || ext == ".model") files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        s.transport.fingerprint.emplace_back(f.filename().string(), apps::content_hash(f));
      }
    }
  }
  apps::app_transport carrier(argc, argv, s.transport);
  s.carrier = &carrier;
  if (*model_opt) {
#ifdef ROLORA_APPS_NO_HF_MODELS
    std::fprintf(stderr,
                 "error: --model: this build has no Hugging Face models (use the CPU build)\n");
    return 2;
#else
    if (app.count("--checkpoint")) {
      std::fprintf(stderr, "error: --model and --checkpoint name two base models; give one\n");
      return 2;
    }
    if (app.count("--model-layers")) {
      std::fprintf(stderr,
                   "error: --model-layers is the built-in model's depth; --model's comes from "
                   "its config.json\n");
      return 2;
    }
    if (s.hf.train_file.empty() || s.hf.test_file.empty()) {
      std::fprintf(stderr, "error: --model needs --train FILE and --test FILE\n");
      return 2;
    }
    if (s.backend != "eigen" || !s.eval_adapter.empty() || s.personal_eval || s.head_probe > 0 ||
        std::count(s.methods.begin(), s.methods.end(), "head")) {
      std::fprintf(stderr,
                   "error: --model runs on --backend eigen, without --eval-adapter, "
                   "--personal-eval, --head-probe and --methods head\n");
      return 2;
    }
    auto& h = s.hf;
    h.methods = s.methods;
    h.clients = t.clients, h.rounds = s.rounds, h.local_steps = s.local_steps, h.batch = s.batch;
    h.clients_per_round = s.clients_per_round, h.threads = s.threads, h.eval_every = s.eval_every;
    h.max_len = t.max_len, h.split = t.split, h.seed = t.seed, h.rank = s.rank,
    h.lora_alpha = s.lora_alpha;
    if (app.count("--targets")) h.targets = s.targets;
    h.layers.assign(s.layers.begin(), s.layers.end());
    h.train_head = s.train_head, h.optimizer = s.optimizer, h.lr = s.lr;
    h.weight_decay = s.weight_decay, h.out = s.out, h.save_adapters = s.save_adapters;
    h.checkpoint = s.checkpoint, h.carrier = &carrier, h.transport = &s.transport;
    h.base_precision = app.count("--base-precision") ? s.base_precision : "auto";
    h.dp = s.dp;
    return apps::exit_code_of([&] { return apps::run_hf_finetune(h); },
                              [&](int code) { return carrier.fail(code); });
#endif
  }
  return apps::exit_code_of(
      [&] { return apps::with_backend(s.backend, [&]<class B>(B) { return run<B>(s); }); },
      [&](int code) { return carrier.fail(code); });
}
