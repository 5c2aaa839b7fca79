// The federated SpamAssassin task of the applications: the corpus split (fixed, so the test e-mails
// and the e-mails set aside for pretraining are the same for every fine-tuning seed), the
// pretrained model (read from its checkpoint, or pretrained here when missing), and the clients'
// tokenised data.
#pragma once
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <rolora/data/data.hpp>
#include <rolora/federated/partition.hpp>
#include <rolora/nn/classification_task.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "client_split.hpp"
#include "pretraining.hpp"

namespace rolora::apps {

// The model every application and benchmark uses unless told otherwise.
// The built-in model: 2 layers unless --model-layers says otherwise (a deeper variant, pretrained
// by the same recipe, for experiments that adapt some layers and not others).
inline transformer_config default_model(std::size_t max_len, std::size_t layers = 2) {
  transformer_config c;
  c.vocab_size = data::byte_tokenizer::vocab_size;
  c.pad_id = data::byte_tokenizer::pad;
  c.max_len = index_t(max_len);
  c.d_model = 128;
  c.n_heads = 4;
  c.n_layers = index_t(layers);
  c.d_ff = 512;
  c.num_classes = data::num_email_classes;
  c.pool = pooling::mean;
  return c;
}

struct spam_task_config {
  std::size_t clients = 20;
  client_split split{};          // iid | dirichlet (label skew) | classes
  std::uint64_t seed = 0;        // client split (and, in the applications, everything of the run)
  std::size_t max_len = 128;     // bytes the model sees of each e-mail, CLS included
  std::size_t model_layers = 2;  // transformer layers of the built-in model (--model-layers)
  std::string data_dir = ".cache/data";
  std::string checkpoint = ".cache/models/pretrained.safetensors";
  std::size_t threads = 2;
  pretraining_config pretrain{};
};

// Fixed for every run: which e-mails are test, pretraining or fine-tuning data, and which of the
// fine-tuning pool are held out for validation (tuning learning rates never looks at test).
inline constexpr std::uint64_t corpus_seed = 0;
inline constexpr data::split_fractions corpus_fractions{0.20, 0.15};
inline constexpr double validation_fraction = 0.10;

template <nn_backend B>
struct spam_task {
  transformer_weights<B> model;
  std::vector<labelled_sequences> clients;
  labelled_sequences validation, test;
  // The e-mails set aside for pretraining, with their labels: public data no client holds (a
  // central linear probe trains the head on it, --head-probe).
  labelled_sequences public_set;
  std::string summary;

  std::vector<classification_task<B>> client_tasks() const {
    std::vector<classification_task<B>> tasks;
    tasks.reserve(clients.size());
    for (const auto& c : clients) tasks.emplace_back(model, c);
    return tasks;
  }
};

inline labelled_sequences encode_emails(const std::vector<std::string>& texts,
                                        const std::vector<int>& labels,
                                        const std::vector<std::size_t>& rows, std::size_t max_len) {
  labelled_sequences out;
  out.tokens.seq_len = index_t(max_len);
  out.tokens.ids = data::encode_batch(texts, rows, max_len).ids;
  for (const auto r : rows) out.labels.push_back(labels[r]);
  return out;
}

// How the checkpoint was made: it is rebuilt whenever any of this changes.
// --max-len, --data-dir, --checkpoint: the corpus and the base model, for federated_finetune
// (which reads the checkpoint, or builds it) and pretrain (which writes it).
inline void add_corpus_options(CLI::App& app, spam_task_config& c, const std::string& max_len_help,
                               const std::string& checkpoint_help) {
  app.add_option("--max-len", c.max_len, max_len_help)
      ->check(CLI::Range(8, 4096))
      ->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "where scripts/fetch_data.sh put the corpus")
      ->capture_default_str();
  app.add_option("--checkpoint", c.checkpoint, checkpoint_help)->capture_default_str();
  app.add_option("--model-layers", c.model_layers,
                 "transformer layers of the built-in model; a depth other than 2 is pretrained "
                 "once and kept apart, in .cache/models/pretrained_<N>layers.safetensors unless "
                 "--checkpoint names the file")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
}

// After parsing: a depth other than the default's gets its own checkpoint file unless
// --checkpoint named one, so that models of two depths never overwrite each other.
inline void finish_corpus_options(const CLI::App& app, spam_task_config& c) {
  if (c.model_layers != 2 && app.count("--checkpoint") == 0) {
    c.checkpoint =
        ".cache/models/pretrained_" + std::to_string(c.model_layers) + "layers.safetensors";
  }
}

inline std::string pretraining_recipe(const spam_task_config& c) {
  const auto& p = c.pretrain;
  return nlohmann::json{
      {"objective", "masked-byte LM, BERT 80/10/10 masking at 15%"},
      {"corpus", "Debian fortunes + SpamAssassin e-mails set aside by the corpus split"},
      {"corpus_seed", corpus_seed},
      {"corpus_fractions", {corpus_fractions.test, corpus_fractions.pretrain}},
      {"seq_len", c.max_len},
      {"steps", p.steps},
      {"batch", p.batch},
      {"micro_batches", p.micro_batches},
      {"lr", p.lr},
      {"warmup_fraction", p.warmup_fraction},
      {"weight_decay", p.weight_decay},
      {"seed", p.seed}}
      .dump();
}

template <nn_backend B>
transformer_weights<B> pretrained_model(const spam_task_config& c,
                                        const std::vector<data::email_record>& emails,
                                        const data::corpus_split& split) {
  const auto config = default_model(c.max_len, c.model_layers);
  const auto recipe = pretraining_recipe(c);
  if (auto w = load_checkpoint<B>(c.checkpoint, config, recipe)) {
    std::printf("pretrained model: %s\n", c.checkpoint.c_str());
    return std::move(*w);
  }
  const auto windows =
      data::make_windows(data::pretraining_documents(emails, split.pretrain), c.max_len);
  std::printf("pretraining the base model (%zu windows of %zu bytes; once, then read from %s)\n",
              windows.count(), c.max_len, c.checkpoint.c_str());
  transformer_weights<B> w(config, c.pretrain.seed);
  auto pc = c.pretrain;
  pc.threads = c.threads;
  const std::size_t per_micro = (pc.batch + pc.micro_batches - 1) / pc.micro_batches;
  pretrain(w, pc, [&](std::size_t step, std::size_t micro, std::size_t n) {
    const auto b = data::pretraining_batch(windows, pc.seed, step, micro * per_micro, n);
    return mlm_batch{token_batch{index_t(b.seq_len), b.inputs}, b.targets};
  });
  save_checkpoint(c.checkpoint, w, recipe);
  return w;
}

template <nn_backend B>
spam_task<B> load_spam_task(const spam_task_config& c) {
  const auto dir = data::spam_assassin_dir(c.data_dir);
  if (!std::filesystem::is_directory(dir)) {
    raise<config_error>("no SpamAssassin corpus under ", dir.string(),
                        ": run `bash scripts/fetch_data.sh` first (or pass --data-dir)");
  }
  const auto emails = data::read_spam_assassin(dir);
  const auto labels = data::labels_of(emails);
  const auto texts = data::texts_of(emails);
  const auto split = data::split_corpus(labels, corpus_seed, corpus_fractions);

  // Validation: a fixed, stratified tenth of the fine-tuning pool, never given to a client.
  const auto pool_labels = data::gather(labels, split.finetune);
  const auto held = data::split_corpus(pool_labels, corpus_seed + 1, {validation_fraction, 0.0});
  std::vector<std::size_t> validation, train;
  for (auto p : held.test) validation.push_back(split.finetune[p]);
  for (auto p : held.finetune) train.push_back(split.finetune[p]);

  auto model = pretrained_model<B>(c, emails, split);
  spam_task<B> task{std::move(model),
                    {},
                    encode_emails(texts, labels, validation, c.max_len),
                    encode_emails(texts, labels, split.test, c.max_len),
                    encode_emails(texts, labels, split.pretrain, c.max_len),
                    {}};

  const auto train_labels = data::gather(labels, train);
  std::string split_description;
  const partition parts =
      split_among_clients(train_labels, c.clients, c.split, c.seed, split_description);
  std::size_t smallest = train.size(), largest = 0;
  for (const auto& part : parts) {
    std::vector<std::size_t> rows;
    for (auto p : part) rows.push_back(train[p]);
    task.clients.push_back(encode_emails(texts, labels, rows, c.max_len));
    smallest = std::min(smallest, rows.size());
    largest = std::max(largest, rows.size());
  }
  std::ostringstream s;
  s << "SpamAssassin: " << emails.size() << " e-mails -> " << train.size() << " fine-tuning over "
    << c.clients << " clients (" << split_description << ", " << smallest << ".." << largest
    << " each), " << validation.size() << " validation, " << split.test.size() << " test, "
    << split.pretrain.size() << " set aside for pretraining; " << c.max_len << " bytes per e-mail";
  task.summary = s.str();
  return task;
}

}  // namespace rolora::apps
