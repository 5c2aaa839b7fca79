// federated_finetune --model DIR (apps/common/hf_finetune.hpp): a Hugging Face checkpoint and
// its tokenizer, the user's train and test files, split among clients and fine-tuned with each
// method from the same start. Encoders classify (accuracy); decoders learn the responses of
// instruction data or whole texts (next-token loss, accuracy and perplexity on the test file).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <rolora/data/chat.hpp>
#include <rolora/data/text_table.hpp>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/federated/methods.hpp>
#include <rolora/io/peft.hpp>
#include <rolora/models/hf_task.hpp>
#include <rolora/rolora.hpp>
#include <rolora/tokenizers/tokenizer.hpp>
#include <string>
#include <vector>

#include "common/dp_federation.hpp"
#include "common/hf_finetune.hpp"
#include "common/plot.hpp"
#include "common/report.hpp"
#include "common/transport_options.hpp"

namespace rolora::apps {
namespace {

using backend = eigen_backend<float>;
using models::bf16_matrix;
using models::hf_examples;

// A deterministic [rows, cols] matrix for the precision probe.
host_matrix<float> test_matrix(index_t rows, index_t cols) {
  host_matrix<float> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = float((i * 7919) % 1000) / 1000.0f - 0.5f;
  return m;
}

// Alpaca's prompt (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  if (input.empty()) {
    return "Below is an instruction that describes a task. Write a response that appropriately "
           "completes the request.\n\n### Instruction:\n" +
           instruction + "\n\n### Response:\n";
  }
  return "Below is an instruction that describes a task, paired with an input that provides "
         "further context. Write a response that appropriately completes the request.\n\n"
         "### Instruction:\n" +
         instruction + "\n\n### Input:\n" + input + "\n\n### Response:\n";
}

// Sequences of exactly max_len tokens: truncated (the last token kept when it is a special one,
// as truncating before the post-processor does for one sequence), padded with pad and mask 0.
struct sequence_builder {
  const tokenizers::tokenizer& tok;
  const models::hf_config& config;
  index_t max_len;
  std::int32_t pad;

  void add(std::vector<std::int32_t> ids, std::vector<std::int32_t> labels,
           hf_examples& out) const {
    const auto len = std::size_t(max_len);
    if (ids.size() > len) {
      const bool keep_last = tok.is_special(ids.back());
      const auto last = ids.back();
      ids.resize(len);
      labels.resize(std::min(labels.size(), len));
      if (keep_last) ids.back() = last;
    }
    std::size_t sep_seen = 0;
    for (std::size_t j = 0; j < len; ++j) {
      const bool real = j < ids.size();
      out.tokens.ids.push_back(real ? ids[j] : pad);
      out.tokens.attention_mask.push_back(real);
      if (config.kind == models::family::bert) {  // segment B starts after the first [SEP]
        out.tokens.token_types.push_back(real && sep_seen > 0);
        if (real && tok.specials().sep && ids[j] == *tok.specials().sep) ++sep_seen;
      }
      if (!is_encoder(config.kind))
        out.labels.push_back(real && j < labels.size() ? labels[j] : -100);
    }
  }
};

// Class names in sorted order unless every label is an integer in [0, n).
std::map<std::string, std::int32_t> label_ids(const data::text_table& t, std::size_t column) {
  std::map<std::string, std::int32_t> ids;
  for (const auto& row : t.rows) ids.emplace(row[column], 0);
  bool numeric = true;
  for (const auto& [name, id] : ids) {
    numeric = numeric && !name.empty() &&
              name.find_first_not_of("0123456789") == std::string::npos && name.size() < 9 &&
              std::stol(name) < long(ids.size());
  }
  std::int32_t next = 0;
  for (auto& [name, id] : ids) id = numeric ? std::int32_t(std::stol(name)) : next++;
  return ids;
}

struct prepared_data {
  hf_examples train, test;
  std::vector<int> train_labels;  // what --split partitions on: the class, the --split-column
                                  // group, or 0
  std::map<std::string, std::int32_t> classes;
  std::string summary;
};

prepared_data prepare(const hf_finetune_settings& s, const models::hf_config& config,
                      const tokenizers::tokenizer& tok) {
  prepared_data d;
  auto train = data::read_text_table(s.train_file);
  auto test = data::read_text_table(s.test_file);
  for (auto* t : {&train, &test}) {
    if (s.max_examples && t->rows.size() > s.max_examples) t->rows.resize(s.max_examples);
  }
  const bool encoder = is_encoder(config.kind);
  const auto pad = tok.specials().pad   ? *tok.specials().pad
                   : tok.specials().eos ? *tok.specials().eos
                                        : std::int32_t(config.pad_token_id);
  const sequence_builder build{tok, config, index_t(s.max_len), pad};
  auto columns = s.text_columns;
  if (columns.empty()) {
    for (const auto& candidates :
         std::vector<std::vector<std::string>>{{"messages"},
                                               {"instruction", "input", "output"},
                                               {"sentence1", "sentence2"},
                                               {"question", "sentence"},
                                               {"question1", "question2"},
                                               {"premise", "hypothesis"},
                                               {"sentence"},
                                               {"text"}}) {
      bool all = true;
      for (const auto& c : candidates) all = all && train.has_column(c);
      if (all) {
        columns = candidates;
        break;
      }
    }
    if (columns.empty()) {
      raise<config_error>(s.train_file, ": name the text columns with --text-columns");
    }
  }
  const bool alpaca = columns == std::vector<std::string>{"instruction", "input", "output"};
  const bool chat = !encoder && columns == std::vector<std::string>{"messages"};
  std::string cols;
  for (const auto& c : columns) cols += (cols.empty() ? "" : ",") + c;
  if (encoder && (alpaca || columns.size() > 2)) {
    raise<config_error>("--text-columns: an encoder classifies one text or a pair, got ",
                        columns.size(), " columns");
  }
  if (!encoder && !alpaca && columns.size() != 1) {
    raise<config_error>(
        "--text-columns: a decoder learns one text column (messages: a chat) or the Alpaca "
        "columns instruction,input,output, got ",
        columns.size(), " columns");
  }
  if (encoder) d.classes = label_ids(train, train.column(s.label_column));
  if (encoder && index_t(d.classes.size()) > config.num_labels) {
    raise<config_error>(s.train_file, ": ", d.classes.size(), " classes in column '",
                        s.label_column, "', the model's head has ", config.num_labels);
  }
  const auto eos = tok.specials().eos;
  std::optional<tokenizers::chat_template> chat_tpl;
  nlohmann::ordered_json chat_vars;
  if (chat) {
    chat_tpl.emplace(s.chat_template.empty() ? data::chat_template_of(s.model_dir)
                                             : data::chat_template_from_file(s.chat_template));
    chat_vars = data::chat_variables(s.model_dir);
  } else if (!s.chat_template.empty()) {
    raise<config_error>("--chat-template renders a messages column; the text columns are ", cols);
  }
  auto encode_file = [&](const data::text_table& t, const std::string& file, hf_examples& out,
                         std::vector<int>* labels) {
    std::vector<std::size_t> col;
    for (const auto& c : columns) col.push_back(t.column(c));
    out.tokens.seq_len = index_t(s.max_len);
    const std::size_t label_col = encoder ? t.column(s.label_column) : 0;
    const auto tools_col =
        chat && t.has_column("tools") ? std::optional(t.column("tools")) : std::nullopt;
    for (const auto& row : t.rows) {
      if (encoder) {
        const auto it = d.classes.find(row[label_col]);
        if (it == d.classes.end()) {
          raise<value_error>(file, ": label '", row[label_col], "' is not a class of ",
                             s.train_file);
        }
        build.add(
            col.size() == 1 ? tok.encode(row[col[0]]) : tok.encode_pair(row[col[0]], row[col[1]]),
            {}, out);
        out.labels.push_back(it->second);
        if (labels) labels->push_back(it->second);
      } else if (chat) {  // loss on the assistant's turns
        try {
          auto vars = chat_vars;
          if (tools_col) vars["tools"] = nlohmann::ordered_json::parse(row[*tools_col]);
          auto ex =
              data::encode_chat(tok, *chat_tpl, nlohmann::ordered_json::parse(row[col[0]]), vars);
          build.add(std::move(ex.ids), std::move(ex.targets), out);
        } catch (const nlohmann::json::exception& e) {
          raise<value_error>(file, ": row ", &row - t.rows.data() + 1, ": ", e.what());
        } catch (const rolora::error& e) {
          raise<value_error>(file, ": row ", &row - t.rows.data() + 1, ": ", e.what());
        }
        if (labels) labels->push_back(0);
      } else if (alpaca) {  // loss on the response only
        auto ids = tok.encode(alpaca_prompt(row[col[0]], row[col[1]]));
        std::vector<std::int32_t> targets(ids.size(), -100);
        auto response = tok.encode(row[col[2]], false);
        if (eos) response.push_back(*eos);
        ids.insert(ids.end(), response.begin(), response.end());
        targets.insert(targets.end(), response.begin(), response.end());
        build.add(std::move(ids), std::move(targets), out);
        if (labels) labels->push_back(0);
      } else {
        auto ids = tok.encode(row[col[0]]);
        if (eos) ids.push_back(*eos);
        auto targets = ids;
        build.add(std::move(ids), std::move(targets), out);
        if (labels) labels->push_back(0);
      }
    }
    if (out.size() == 0) raise<value_error>(file, ": no examples");
  };
  encode_file(train, s.train_file, d.train, &d.train_labels);
  if (!s.split_column.empty()) {  // Dirichlet / classes on a user column, e.g. a category
    const auto column = train.column(s.split_column);
    const auto groups = label_ids(train, column);
    d.train_labels.clear();
    for (const auto& row : train.rows) d.train_labels.push_back(groups.at(row[column]));
  } else if (!encoder && s.split.kind != "iid") {
    raise<config_error>("--split ", s.split.kind,
                        " needs a label: a decoder's data are split by "
                        "--split-column (e.g. a category column)");
  }
  encode_file(test, s.test_file, d.test, nullptr);
  d.summary = "data: " + std::to_string(d.train.size()) + " train / " +
              std::to_string(d.test.size()) + " test examples (" + cols +
              (encoder ? "; " + std::to_string(d.classes.size()) + " classes" : "") +
              (alpaca || chat ? "; loss on the responses" : "") + "), " +
              std::to_string(s.max_len) + " tokens each";
  return d;
}

// (mean loss, accuracy) on `data` over `threads` threads in fixed chunks (same bits for any
// thread count); decoders: over every predicted token.
std::pair<double, double> evaluate(const models::hf_model<float>& model,
                                   const adapter_set<backend>& adapters, const hf_examples& data,
                                   std::size_t threads) {
  constexpr std::size_t chunk = 16;
  const std::size_t chunks = (data.size() + chunk - 1) / chunk;
  std::vector<double> loss(chunks), right(chunks), count(chunks);
  detail::parallel_for(chunks, threads, [&](std::size_t c) {
    std::vector<std::size_t> rows;
    for (std::size_t r = c * chunk; r < std::min(data.size(), (c + 1) * chunk); ++r)
      rows.push_back(r);
    const auto part = data.select(rows);
    auto& ws = models::hf_task<float>::workspace();
    std::vector<std::int32_t> targets = part.labels;
    if (is_encoder(model.config.kind)) {
      loss[c] = models::classification_loss_and_grad(model, adapters, part.tokens, part.labels, {},
                                                     nullptr, ws) *
                double(rows.size());
      count[c] = double(rows.size());
    } else {
      std::size_t predicted = 0;
      loss[c] = models::causal_lm_loss_and_grad(model, adapters, part.tokens, part.labels, {},
                                                nullptr, ws, &predicted) *
                double(predicted);
      count[c] = double(predicted);
      models::next_token_targets(part.labels, part.tokens.seq_len, targets);
    }
    for (index_t j = 0; j < ws.logits.cols(); ++j) {
      if (targets[std::size_t(j)] < 0) continue;
      index_t best = 0;
      ws.logits.col(j).maxCoeff(&best);
      right[c] += best == targets[std::size_t(j)];
    }
  });
  double l = 0, r = 0, n = 0;
  for (std::size_t c = 0; c < chunks; ++c) l += loss[c], r += right[c], n += count[c];
  return {n > 0 ? l / n : 0.0, n > 0 ? r / n : 0.0};
}

// --base-precision auto: one fp32 GEMM and one bf16 frozen GEMM at the model's widest linear
// ([intermediate, hidden] on 512 tokens), best of 5 each; the faster wins. The answer is cached
// per CPU model and shape in $XDG_CACHE_HOME/rolora (else ~/.cache/rolora)/base_precision.json.
std::string probe_base_precision(const models::hf_config& c, std::string& why) {
  std::string cpu = "unknown CPU";
  {
    std::ifstream info("/proc/cpuinfo");
    for (std::string line; std::getline(info, line);) {
      if (line.rfind("model name", 0) == 0) {
        cpu = line.substr(line.find(':') + 2);
        break;
      }
    }
  }
  const index_t m = c.intermediate_size, k = c.hidden_size, n = 512;
  const std::string key =
      cpu + " | " + std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n);
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  const std::filesystem::path dir = xdg && *xdg     ? std::filesystem::path(xdg) / "rolora"
                                    : home && *home ? std::filesystem::path(home) / ".cache/rolora"
                                                    : std::filesystem::path(".cache/rolora");
  const auto file = dir / "base_precision.json";
  nlohmann::json cache = nlohmann::json::object();
  try {
    if (std::ifstream in(file); in) cache = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    cache = nlohmann::json::object();  // a broken cache is measured again
  }
  if (cache.is_object() && cache.contains(key) && cache[key].is_object() &&
      cache[key].value("choice", "") != "") {
    why = cache[key].value("why", "") + " (cached in " + file.string() + ")";
    return cache[key].value("choice", "fp32");
  }
  const auto w = test_matrix(m, k), x = test_matrix(k, n);
  const bf16_matrix w16 = w.cast<Eigen::bfloat16>();
  host_matrix<float> y;
  auto best_of = [&](auto&& gemm) {
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      gemm();
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return 2.0 * double(m) * double(k) * double(n) / best / 1e9;  // GFLOP/s
  };
  const double fp32 = best_of([&] { backend::gemm(1.0f, w, op::none, x, op::none, 0.0f, y); });
  const double bf16 = best_of([&] { backend::frozen_gemm(w16, op::none, x, 0.0f, y); });
  const std::string choice = bf16 > fp32 ? "bf16" : "fp32";
  char text[256];
  std::snprintf(text, sizeof text,
                "bf16 GEMM %.0f GFLOP/s (%s) vs fp32 %.0f GFLOP/s at [%ld x %ld] x %ld", bf16,
                backend::frozen_gemm_path().c_str(), fp32, long(m), long(k), long(n));
  why = text;
  cache[key] = {{"choice", choice}, {"why", why}};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (std::ofstream out(file); out) out << cache.dump(2) << "\n";
  return choice;
}

struct method_run {
  std::string method;
  double lr = 0;
  std::vector<round_row> rows;
  double seconds = 0;
};

template <class Federation>
method_run run_federation(const std::string& method, Federation& fed, const lora_config& lc,
                          const hf_finetune_settings& s, const models::hf_model<float>& model,
                          const prepared_data& d,
                          const std::vector<std::vector<std::size_t>>& parts,
                          const std::string& precision, method_run result);

template <class Policy, class Aggregator>
method_run run_method(const std::string& method, Policy policy, Aggregator aggregator,
                      const hf_finetune_settings& s, const models::hf_model<float>& model,
                      const prepared_data& d, const std::vector<std::vector<std::size_t>>& parts,
                      const std::string& precision) {
  method_run result{method, s.lr(method), {}, 0};
  lora_config lc;
  lc.r = s.rank;
  lc.lora_alpha = s.lora_alpha;
  models::lora_target_spec spec;
  spec.target_modules = s.targets;
  for (const long l : s.layers) spec.layers_to_transform.push_back(index_t(l));
  const auto modules = models::lora_targets(model, spec);
  for (const auto& m : modules) lc.target_modules.push_back(m.name);
  adapter_set<backend> initial(modules, lc, s.seed);
  const bool encoder = is_encoder(model.config.kind);
  if (encoder && s.train_head) models::add_head_to_save(model, initial);
  if (!s.init_adapter.empty())
    initial = load_peft_adapter<backend>(s.init_adapter, initial).adapters;

  federation_config fc;
  fc.num_rounds = s.rounds;
  fc.clients_per_round = s.clients_per_round;
  fc.local_steps = s.local_steps;
  fc.batch_size = s.batch;
  if (s.optimizer == "sgd") {
    fc.local_optimizer = sgd{result.lr, 0.0, s.weight_decay};
  } else {
    fc.local_optimizer = adamw{result.lr, 0.9, 0.999, 1e-8, s.weight_decay};
  }
  fc.threads = s.threads;
  fc.seed = s.seed;
  if (s.transport) s.transport->apply(fc);
  return with_federation<backend>(policy, aggregator, fc, initial, s.dp, method, [&](auto& fed) {
    return run_federation(method, fed, lc, s, model, d, parts, precision, std::move(result));
  });
}

// The rounds of one method's federation `fed` (with or without client-level DP), its checkpoints
// and adapters.
template <class Federation>
method_run run_federation(const std::string& method, Federation& fed, const lora_config& lc,
                          const hf_finetune_settings& s, const models::hf_model<float>& model,
                          const prepared_data& d,
                          const std::vector<std::vector<std::size_t>>& parts,
                          const std::string& precision, method_run result) {
  const bool encoder = is_encoder(model.config.kind);
  std::vector<models::hf_task<float>> tasks;
  for (const auto& rows : parts) tasks.emplace_back(model, d.train.select(rows));

  nlohmann::json identity{{"method", method},
                          {"model", s.model_dir},
                          {"train", s.train_file},
                          {"test", s.test_file},
                          {"max_len", s.max_len},
                          {"clients", s.clients},
                          {"split", s.split.kind},
                          {"dirichlet_alpha", s.split.alpha},
                          {"targets", lc.target_modules},
                          {"eval_every", s.eval_every},
                          {"init_adapter", s.init_adapter},
                          {"base_precision", precision}};
  if (!s.carrier->is_server()) {
    s.carrier->run(fed, tasks);
    return result;
  }
  const auto ckpt = std::filesystem::path(s.checkpoint.resume) / method;
  if (!s.checkpoint.resume.empty() && has_checkpoint(ckpt)) {
    result.rows = rows_from_json(load_checkpoint(ckpt, fed.server(), identity).at("rows"));
    std::printf("%-8s resumed after round %zu from %s\n", method.c_str(), fed.next_round(),
                ckpt.c_str());
  }
  round_progress<backend> cb;
  char label[64];
  std::snprintf(label, sizeof label, "%-8s", method.c_str());
  cb.label = label;
  cb.rounds = s.rounds;
  cb.eval_every = s.eval_every;
  cb.evaluate = [&](const adapter_set<backend>& global) {
    return evaluate(model, global, d.test, s.threads);
  };
  cb.memory_mib = peak_rss_mib;
  cb.memory_name = "peak RSS";
  cb.after = [&](const std::vector<round_row>& rows, bool last) {
    if (!s.checkpoint.dir.empty() && (last || rows.back().round % s.checkpoint.every == 0)) {
      save_checkpoint(std::filesystem::path(s.checkpoint.dir) / method, fed.server(), identity,
                      {{"rows", rows_to_json(rows)}});
    }
  };
  cb.rows = std::move(result.rows);
  const auto start = std::chrono::steady_clock::now();
  s.carrier->run(fed, tasks, cb);
  result.rows = std::move(cb.rows);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (s.save_adapters) {
    peft_options po;
    po.base_model_name_or_path = s.model_dir;
    po.task_type = encoder ? "SEQ_CLS" : "CAUSAL_LM";
    save_peft_adapter(std::filesystem::path(s.out) / (method + "_adapter"), fed.global(), lc, po);
  }
  return result;
}

}  // namespace

int run_hf_finetune(const hf_finetune_settings& s) {
  const auto load_start = std::chrono::steady_clock::now();
  auto model = models::load_hf_model<float>(s.model_dir, s.seed);
  std::string precision = s.base_precision, why = "as asked";
  if (precision == "auto") precision = probe_base_precision(model.config, why);
  if (precision == "bf16") model.hold_base_in_bf16();
  const auto tok = tokenizers::tokenizer::from_directory(s.model_dir);
  if (tok.vocab_size() > std::size_t(model.config.vocab_size)) {
    raise<config_error>(s.model_dir, ": the tokenizer has ", tok.vocab_size(),
                        " tokens, the model's embeddings ", model.config.vocab_size);
  }
  const auto d = prepare(s, model.config, tok);
  std::string split_description;
  const auto parts =
      split_among_clients(d.train_labels, s.clients, s.split, s.seed, split_description);
  const bool encoder = is_encoder(model.config.kind);
  if (s.carrier->is_server()) {
    std::filesystem::create_directories(s.out);
    std::printf(
        "model: %s (%s, %ld layers, d %ld, %.1f MB of frozen weights; loaded in "
        "%.1f s)%s\nbase precision: %s (%s)\n%s\n%zu clients, split %s\n",
        s.model_dir.c_str(), model.config.architecture.c_str(), long(model.config.num_layers),
        long(model.config.hidden_size), double(model.bytes()) / 1e6,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count(),
        model.initialised.empty() ? "" : "; new classification head (not in the checkpoint)",
        precision.c_str(), why.c_str(), d.summary.c_str(), s.clients, split_description.c_str());
  }
  std::vector<method_run> results;
  for (const auto& m : s.methods) {
    results.push_back(visit_method(m, [&](auto policy, auto aggregator) {
      return run_method(m, policy, aggregator, s, model, d, parts, precision);
    }));
    if (!s.carrier->is_server()) continue;
    write_round_csv(std::filesystem::path(s.out) / (m + ".csv"), m, results.back().lr,
                    results.back().rows, s.dp.on());
  }
  if (!s.carrier->is_server()) return 0;
  std::printf("\n%-8s %8s %12s %10s %12s %12s %9s\n", "method", "lr",
              encoder ? "test_acc" : "token_acc", "test_loss", encoder ? "" : "perplexity",
              "MB_up_total", "seconds");
  std::vector<series> lines;
  for (const auto& r : results) {
    const auto& last = r.rows.back();
    char perplexity[32] = "";
    if (!encoder) std::snprintf(perplexity, sizeof perplexity, "%.3f", std::exp(last.eval_loss));
    std::printf("%-8s %8.1e %12.4f %10.4f %12s %12.2f %9.1f\n", r.method.c_str(), r.lr,
                last.eval_accuracy, last.eval_loss, perplexity, double(last.total_bytes_up) / 1e6,
                r.seconds);
    lines.push_back(accuracy_curve(r.method, r.rows));
  }
  const auto plot = (std::filesystem::path(s.out) / "accuracy.svg").string();
  const chart c{"Federated LoRA fine-tuning of " +
                    std::filesystem::path(s.model_dir).filename().string() + ", " +
                    std::to_string(s.clients) + " clients (" + s.split.kind + ")",
                "round",
                encoder ? "test accuracy" : "test next-token accuracy",
                false,
                "bottom right",
                "*:*"};
  if (draw_chart(plot, c, lines)) std::printf("wrote %s\n", plot.c_str());
  std::printf("peak RSS %.1f MiB (frozen weights %.1f MiB)\n", peak_rss_mib(),
              double(model.bytes()) / (1 << 20));
  std::printf(
      "wrote %s/<method>.csv%s\n", s.out.c_str(),
      s.save_adapters ? " and <method>_adapter/ (PEFT, on the model's own module names)" : "");
  return 0;
}

}  // namespace rolora::apps
