// perplexity: how well a decoder (Llama, Qwen2, SmolLM; a Hugging Face model directory) predicts a
// text, with or without a PEFT adapter -- to check that a checkpoint loaded right and to see what
// a fine-tuned adapter changed, as llama.cpp's perplexity is used to check a conversion.
//
// Each line of --text is one sequence, tokenized with the model's tokenizer.json and its special
// tokens (as `tokenize` prints them), truncated to --max-len tokens. Prints
//   nll X tokens T perplexity P
// with X the mean next-token negative log-likelihood (nats) over every predicted token of every
// line, T the number of predicted tokens and P = exp(X).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <rolora/io/peft.hpp>
#include <rolora/models/hf_task.hpp>
#include <rolora/tokenizers/tokenizer.hpp>
#include <string>
#include <vector>

#include "common/exit_code.hpp"

namespace {

using backend = rolora::eigen_backend<float>;
namespace models = rolora::models;

// The adapter of a PEFT directory for `model`: the targets named in its adapter_config.json.
rolora::adapter_set<backend> load_adapter(const std::string& dir,
                                          const models::hf_model<float>& model) {
  std::ifstream in(std::filesystem::path(dir) / "adapter_config.json");
  if (!in) rolora::raise<rolora::config_error>(dir, ": no adapter_config.json");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    rolora::raise<rolora::config_error>(dir, "/adapter_config.json: not valid JSON: ", e.what());
  }
  models::lora_target_spec spec;
  const auto targets = config.value("target_modules", nlohmann::json());
  if (targets.is_string()) {
    spec.target_regex = targets.get<std::string>();
  } else if (targets.is_array()) {
    for (const auto& t : targets) {
      if (t.is_string()) spec.target_modules.push_back(t.get<std::string>());
    }
  }
  const auto layers = config.value("layers_to_transform", nlohmann::json());
  if (layers.is_number_integer()) spec.layers_to_transform.push_back(layers.get<long>());
  if (layers.is_array()) {
    for (const auto& l : layers) {
      if (l.is_number_integer()) spec.layers_to_transform.push_back(l.get<long>());
    }
  }
  return rolora::load_peft_adapter<backend>(dir, models::lora_targets(model, spec)).adapters;
}

int run(const std::string& model_dir, const std::string& text_file, std::size_t max_len,
        const std::string& adapter_dir) {
  const auto model = models::load_hf_model<float>(model_dir);
  if (models::is_encoder(model.config.kind)) {
    rolora::raise<rolora::config_error>(
        model_dir, ": ", models::family_name(model.config.kind),
        " is an encoder; perplexity needs a decoder (llama, qwen2)");
  }
  const auto tok = rolora::tokenizers::tokenizer::from_directory(model_dir);
  const rolora::adapter_set<backend> adapters =
      adapter_dir.empty() ? rolora::adapter_set<backend>{} : load_adapter(adapter_dir, model);
  std::ifstream in(text_file);
  if (!in) rolora::raise<rolora::config_error>("cannot read ", text_file);
  models::hf_workspace<float> ws;
  double sum = 0;
  std::size_t tokens = 0;
  std::string line;
  while (std::getline(in, line)) {
    auto ids = tok.encode(line);
    if (ids.size() > max_len) ids.resize(max_len);
    if (ids.size() < 2) continue;  // nothing to predict
    models::hf_batch batch{rolora::index_t(ids.size()), ids, {}, {}};
    std::size_t predicted = 0;
    const double nll =
        models::causal_lm_loss_and_grad(model, adapters, batch, ids, {}, nullptr, ws, &predicted);
    sum += nll * double(predicted);
    tokens += predicted;
  }
  if (tokens == 0) rolora::raise<rolora::value_error>(text_file, ": no line has two tokens");
  const double mean = sum / double(tokens);
  std::printf("nll %.6f tokens %zu perplexity %.4f\n", mean, tokens, std::exp(mean));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Mean next-token negative log-likelihood and perplexity of a decoder on a text file "
      "(one sequence per line), with or without a PEFT adapter."};
  std::string model_dir, text_file, adapter_dir;
  std::size_t max_len = 1024;
  app.add_option("--model", model_dir, "a Hugging Face model directory (llama, qwen2)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--text", text_file, "UTF-8 text, one sequence per line")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--max-len", max_len, "tokens per line, special tokens included (truncated)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--adapter", adapter_dir, "a PEFT adapter directory to apply")
      ->check(CLI::ExistingDirectory);
  CLI11_PARSE(app, argc, argv);
  return rolora::apps::exit_code_of(
      [&] { return run(model_dir, text_file, max_len, adapter_dir); });
}
