// LoRA on a Hugging Face model as PEFT configures it, and the federated client tasks over it.
//
//   lora_targets(model, spec)   the adapted modules: PEFT's target_modules (names matched as the
//                               whole module path or its last components, e.g. "query",
//                               "self_attn.q_proj"; "all-linear"; or one regular expression that
//                               must match the whole path) and layers_to_transform
//   add_head_to_save(model, a)  the classification head as modules_to_save (PEFT's
//                               modules_to_save ["classifier"] on SEQ_CLS models)
//   hf_task                     a client_task over its own hf_examples: classification with one
//                               label per sequence (encoders), causal LM with per-token labels
//                               (decoders; labels < 0 are not predicted, e.g. an instruction's
//                               prompt)
// A client's data stay its own; the frozen model is shared read-only by every client; the
// activations live in one workspace per thread.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <regex>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/error.hpp>
#include <rolora/models/hf_model.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora::models {

// Which linears carry adapters (PEFT's LoraConfig fields of the same names).
struct lora_target_spec {
  std::vector<std::string> target_modules;   // names, or {"all-linear"}; empty: the family's
                                             // default (q and v, as PEFT's defaults)
  std::optional<std::string> target_regex;   // instead of names: re.fullmatch on the path
  std::vector<index_t> layers_to_transform;  // empty: every layer
};

// PEFT's default targets: query/value for BERT and RoBERTa, q_proj/v_proj for Llama and Qwen2.
inline std::vector<std::string> default_targets(family f) {
  if (is_encoder(f)) return {"query", "value"};
  return {"q_proj", "v_proj"};
}

// The adapted modules of `model` under `spec`; config_error when a name or the expression
// matches no linear, or a layer index is out of range (PEFT raises too).
template <class T, class B>
std::vector<module_shape> lora_targets(const hf_model<T, B>& model, const lora_target_spec& spec) {
  const hf_config& c = model.config;
  for (const index_t layer : spec.layers_to_transform) {
    if (layer < 0 || layer >= c.num_layers) {
      rolora::detail::raise<config_error>("layers_to_transform: layer ", layer, " outside [0, ",
                                          c.num_layers, ")");
    }
  }
  const auto names = spec.target_modules.empty() && !spec.target_regex ? default_targets(c.kind)
                                                                       : spec.target_modules;
  const bool all_linear = names.size() == 1 && names[0] == "all-linear";
  std::optional<std::regex> pattern;
  if (spec.target_regex) {
    try {
      pattern.emplace(*spec.target_regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      rolora::detail::raise<config_error>("target_modules: '", *spec.target_regex,
                                          "' is not a regular expression: ", e.what());
    }
  }
  std::vector<bool> used(names.size(), false);
  std::vector<module_shape> out;
  const auto modules = adaptable_modules(model);  // layer by layer, linears_per_layer each
  for (std::size_t k = 0; k < modules.size(); ++k) {
    const auto& m = modules[k];
    const auto layer = index_t(k / linears_per_layer(c.kind));
    if (!spec.layers_to_transform.empty() &&
        std::find(spec.layers_to_transform.begin(), spec.layers_to_transform.end(), layer) ==
            spec.layers_to_transform.end()) {
      continue;
    }
    bool take = all_linear;
    if (pattern) {
      take = std::regex_match(m.name, *pattern);
    } else if (!all_linear) {
      for (std::size_t i = 0; i < names.size(); ++i) {
        const auto& t = names[i];
        const bool match =
            m.name == t || (m.name.size() > t.size() &&
                            m.name.compare(m.name.size() - t.size(), t.size(), t) == 0 &&
                            m.name[m.name.size() - t.size() - 1] == '.');
        if (match) used[i] = true;
        take = take || match;
      }
    }
    if (take) out.push_back(m);
  }
  if (!pattern && !all_linear) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (!used[i]) {
        rolora::detail::raise<config_error>("target_modules: '", names[i],
                                            "' matches no linear of ", family_name(c.kind),
                                            " (e.g. '", linear_role(c.kind, 0), "')");
      }
    }
  }
  if (out.empty()) {
    rolora::detail::raise<config_error>("target_modules: no linear of ", family_name(c.kind),
                                        " is adapted");
  }
  return out;
}

// The encoder's classification head (and nothing else) as trainable modules to save, from the
// model's current head: "classifier.weight" / ".bias" (BERT), "classifier.dense.*" and
// "classifier.out_proj.*" (RoBERTa).
template <class T, class B>
void add_head_to_save(const hf_model<T, B>& model, adapter_set<B>& adapters) {
  for (const auto& [name, lin] : model.head) {
    adapters.add_module_to_save(name + ".weight", lin.weight);
    adapters.add_module_to_save(name + ".bias", lin.bias);
  }
}

// Token sequences of one length with their labels: one per sequence (classification) or one per
// token (causal LM, Hugging Face's unshifted labels with < 0 for "not predicted").
struct hf_examples {
  hf_batch tokens;
  std::vector<std::int32_t> labels;

  std::size_t size() const { return std::size_t(tokens.num_sequences()); }
  std::size_t labels_per_sequence() const { return size() ? labels.size() / size() : 0; }

  void select_into(std::span<const std::size_t> rows, hf_examples& out) const {
    const auto len = std::size_t(tokens.seq_len), per = labels_per_sequence();
    out.tokens.seq_len = tokens.seq_len;
    out.tokens.ids.clear();
    out.tokens.attention_mask.clear();
    out.tokens.token_types.clear();
    out.labels.clear();
    for (const std::size_t r : rows) {
      if (r >= size()) {
        rolora::detail::raise<value_error>("hf_examples: row ", r, " out of range [0, ", size(),
                                           ")");
      }
      auto copy = [&](const auto& from, auto& to, std::size_t n) {
        if (!from.empty())
          to.insert(to.end(), from.begin() + std::ptrdiff_t(r * n),
                    from.begin() + std::ptrdiff_t((r + 1) * n));
      };
      copy(tokens.ids, out.tokens.ids, len);
      copy(tokens.attention_mask, out.tokens.attention_mask, len);
      copy(tokens.token_types, out.tokens.token_types, len);
      copy(labels, out.labels, per);
    }
  }
  hf_examples select(std::span<const std::size_t> rows) const {
    hf_examples out;
    select_into(rows, out);
    return out;
  }
};

// One client: its examples over the shared frozen model (on backend B); the loss is the family's.
template <class T, class B = eigen_backend<T>>
class hf_task {
 public:
  using backend = B;

  hf_task(const hf_model<T, B>& model, hf_examples data) : model_(&model), data_(std::move(data)) {
    if (data_.size() == 0) rolora::detail::raise<value_error>("hf task: a client without data");
    data_.tokens.check(model.config);
    const std::size_t per = is_encoder(model.config.kind) ? 1 : std::size_t(data_.tokens.seq_len);
    if (data_.labels.size() != data_.size() * per) {
      rolora::detail::raise<shape_error>("hf task: ", data_.labels.size(), " labels for ",
                                         data_.size(), " sequences (expected ", per,
                                         " per sequence)");
    }
  }

  std::size_t num_samples() const { return data_.size(); }
  const hf_examples& data() const { return data_; }

  // Mean loss over the local data, in chunks of 16 sequences (decoders: over every predicted
  // token).
  double loss(const adapter_set<backend>& adapters) {
    double sum = 0.0, weight = 0.0;
    std::vector<std::size_t> rows;
    for (std::size_t first = 0; first < data_.size(); first += 16) {
      rows.clear();
      for (std::size_t r = first; r < std::min(data_.size(), first + 16); ++r) rows.push_back(r);
      data_.select_into(rows, batch_);
      const auto [l, w] = evaluate_batch(adapters, no_factors, nullptr);
      sum += l * w;
      weight += w;
    }
    return weight > 0 ? sum / weight : 0.0;
  }

  double loss_and_grad(const adapter_set<backend>& adapters, std::span<const std::size_t> batch,
                       factor_set trains, gradient_set<backend>& grads) {
    data_.select_into(batch, batch_);
    return evaluate_batch(adapters, trains, &grads).first;
  }

  static hf_workspace<T, B>& workspace() {
    thread_local hf_workspace<T, B> ws;
    return ws;
  }

 private:
  // (mean loss, its weight: sequences or predicted tokens) of batch_.
  std::pair<double, double> evaluate_batch(const adapter_set<backend>& adapters, factor_set trains,
                                           gradient_set<backend>* grads) {
    if (is_encoder(model_->config.kind)) {
      return {classification_loss_and_grad(*model_, adapters, batch_.tokens, batch_.labels, trains,
                                           grads, workspace()),
              double(batch_.size())};
    }
    std::size_t predicted = 0;
    const double l = causal_lm_loss_and_grad(*model_, adapters, batch_.tokens, batch_.labels,
                                             trains, grads, workspace(), &predicted);
    return {l, double(predicted)};
  }

  const hf_model<T, B>* model_;
  hf_examples data_;
  hf_examples batch_;
};

}  // namespace rolora::models
