// federated_finetune --model DIR: a Hugging Face checkpoint (rolora/models) fine-tuned
// federatedly on the user's own data files, with the same methods, split, optimizer, transport
// and checkpoint flags as the built-in model. Compiled in its own translation unit
// (apps/hf_finetune.cpp), so that the built-in model's application does not recompile it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint_options.hpp"
#include "client_split.hpp"
#include "options.hpp"

namespace rolora::apps {

class app_transport;
struct transport_options;

struct hf_finetune_settings {
  std::string model_dir;                  // --model: config.json, safetensors, tokenizer.json
  std::string train_file;                 // --train: .csv, .tsv, .jsonl
  std::string test_file;                  // --test
  std::vector<std::string> text_columns;  // --text-columns (default: the first that exists of
                                          // messages, sentence, text, sentence1,sentence2, ...)
  std::string chat_template;              // --chat-template: a .jinja file instead of the model's
  std::string label_column = "label";     // --label-column (classification)
  std::string split_column;               // --split-column: split on this column, not the label
  std::size_t max_len = 128;              // --max-len: tokens per sequence after truncation
  std::size_t max_examples = 0;           // --max-examples: first N rows of each file (0: all)
  std::string init_adapter;               // --init-adapter: a PEFT directory to start from
  std::string base_precision = "auto";    // --base-precision: fp32, bf16 or auto (a probe)
  // Shared with the built-in model (federated_finetune.cpp's settings).
  std::vector<std::string> methods;
  std::size_t clients = 0, rounds = 0, local_steps = 0, batch = 0, clients_per_round = 0;
  std::size_t threads = 1, eval_every = 1;
  client_split split;
  std::uint64_t seed = 0;
  int rank = 8;
  double lora_alpha = 16;
  std::vector<std::string> targets;  // PEFT names; empty: the family's default
  std::vector<long> layers;
  bool train_head = true;
  std::string optimizer = "adamw";
  learning_rates lr;
  double weight_decay = 0;
  std::string out;
  bool save_adapters = true;
  checkpoint_options checkpoint;
  dp_settings dp;  // --dp client, --clip-norm, ...
  app_transport* carrier = nullptr;
  // --on-bad-update, --min-clients, --secure-aggregation: applied to every federation.
  const transport_options* transport = nullptr;
};

int run_hf_finetune(const hf_finetune_settings& s);

}  // namespace rolora::apps
