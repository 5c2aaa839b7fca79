// A Hugging Face model's config.json, read into the fields rolora implements, for four families:
//
//   bert, roberta   encoders for sequence classification (BertForSequenceClassification,
//                   RobertaForSequenceClassification): post-LN layers, learned absolute
//                   positions (RoBERTa's offset by padding_idx + 1), token types, erf GELU
//   llama, qwen2    decoders for causal LM (LlamaForCausalLM, Qwen2ForCausalLM): RMSNorm,
//                   rotary positions (rotate-half; Llama-3's rope_scaling), SwiGLU, grouped-query
//                   attention, q/k/v biases where the family or config says so
//
// Nothing is guessed: an unknown model_type, a value of a field rolora does not implement (an
// activation, a rope_scaling type, sliding windows, a decoder BERT), or a missing field that the
// Hugging Face class has no default for is refused with a config_error naming the file, field
// and value. Fields the Hugging Face classes default are defaulted to the same values.
#pragma once
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <rolora/io/file.hpp>
#include <rolora/io/json.hpp>
#include <string>
#include <vector>

namespace rolora::models {

enum class family { bert, roberta, llama, qwen2 };

inline std::string_view family_name(family f) {
  switch (f) {
    case family::bert:
      return "bert";
    case family::roberta:
      return "roberta";
    case family::llama:
      return "llama";
    case family::qwen2:
      return "qwen2";
  }
  return "?";
}
inline bool is_encoder(family f) { return f == family::bert || f == family::roberta; }

// Llama-3's rope_scaling {"rope_type": "llama3", ...} (transformers' _compute_llama3_parameters).
struct llama3_rope_scaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192;
};

struct hf_config {
  family kind = family::bert;
  std::string architecture;  // architectures[0], e.g. "RobertaForSequenceClassification"
  index_t vocab_size = 0;
  index_t hidden_size = 0;
  index_t num_layers = 0;
  index_t num_heads = 0;
  index_t num_kv_heads = 0;  // == num_heads for the encoders
  index_t head_dim = 0;      // hidden_size / num_heads
  index_t intermediate_size = 0;
  index_t max_position_embeddings = 0;
  // Encoders.
  index_t type_vocab_size = 0;
  double layer_norm_eps = 1e-12;
  index_t pad_token_id = 0;  // RoBERTa: its position ids start at pad_token_id + 1
  index_t num_labels = 2;
  // Decoders.
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<llama3_rope_scaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;    // q, k and v projections have biases (Qwen2; Llama's attention_bias)
  bool o_bias = false;      // o_proj has a bias (Llama's attention_bias)
  std::string torch_dtype;  // as written ("float32", "bfloat16", ...), informational

  index_t kv_dim() const { return num_kv_heads * head_dim; }
};

namespace detail::hf {

using json = nlohmann::json;

[[noreturn]] inline void refuse(const std::filesystem::path& file, const std::string& field,
                                const std::string& why) {
  rolora::detail::raise<config_error>(file.string(), ": field '", field, "' ", why);
}

inline const json* find(const json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

inline index_t get_index(const std::filesystem::path& file, const json& j, const char* key,
                         std::optional<index_t> fallback, index_t min_value = 1) {
  const json* v = find(j, key);
  if (!v) {
    if (fallback) return *fallback;
    refuse(file, key, "is missing");
  }
  if (!v->is_number_integer()) refuse(file, key, "must be an integer, got " + v->dump());
  const auto x = v->get<std::int64_t>();
  if (x < min_value || x > (std::int64_t(1) << 31)) {
    refuse(file, key, "must be in [" + std::to_string(min_value) + ", 2^31], got " + v->dump());
  }
  return static_cast<index_t>(x);
}

inline double get_double(const std::filesystem::path& file, const json& j, const char* key,
                         std::optional<double> fallback) {
  const json* v = find(j, key);
  if (!v) {
    if (fallback) return *fallback;
    refuse(file, key, "is missing");
  }
  if (!v->is_number()) refuse(file, key, "must be a number, got " + v->dump());
  const double x = v->get<double>();
  if (!std::isfinite(x) || x <= 0) refuse(file, key, "must be a positive number, got " + v->dump());
  return x;
}

inline bool get_bool(const std::filesystem::path& file, const json& j, const char* key,
                     bool fallback) {
  const json* v = find(j, key);
  if (!v) return fallback;
  if (!v->is_boolean()) refuse(file, key, "must be true or false, got " + v->dump());
  return v->get<bool>();
}

inline std::string get_string(const std::filesystem::path& file, const json& j, const char* key,
                              std::optional<std::string> fallback) {
  const json* v = find(j, key);
  if (!v) {
    if (fallback) return *fallback;
    refuse(file, key, "is missing");
  }
  if (!v->is_string()) refuse(file, key, "must be a string, got " + v->dump());
  return v->get<std::string>();
}

// Requires `key` to be absent, null or `expected` (a field whose other values rolora lacks).
inline void require_value(const std::filesystem::path& file, const json& j, const char* key,
                          const json& expected, const char* what_is_lacking) {
  const json* v = find(j, key);
  if (v && *v != expected) {
    refuse(file, key, "= " + v->dump() + " is not implemented (" + what_is_lacking + ")");
  }
}

inline llama3_rope_scaling read_rope_scaling(const std::filesystem::path& file, const json& r) {
  if (!r.is_object()) refuse(file, "rope_scaling", "must be an object, got " + r.dump());
  std::string type;
  if (const json* t = find(r, "rope_type")) {
    type = t->is_string() ? t->get<std::string>() : t->dump();
  } else if (const json* t2 = find(r, "type")) {
    type = t2->is_string() ? t2->get<std::string>() : t2->dump();
  }
  if (type == "default") return {};  // marker handled by the caller: no scaling
  if (type != "llama3") {
    refuse(file, "rope_scaling",
           "type '" + type + "' is not implemented (rolora implements rope_type 'llama3')");
  }
  llama3_rope_scaling s;
  s.factor = get_double(file, r, "factor", std::nullopt);
  s.low_freq_factor = get_double(file, r, "low_freq_factor", std::nullopt);
  s.high_freq_factor = get_double(file, r, "high_freq_factor", std::nullopt);
  s.original_max_position_embeddings =
      double(get_index(file, r, "original_max_position_embeddings", std::nullopt));
  if (!(s.high_freq_factor > s.low_freq_factor)) {
    refuse(file, "rope_scaling", "needs high_freq_factor > low_freq_factor, got " + r.dump());
  }
  for (const auto& [key, value] : r.items()) {
    if (key != "rope_type" && key != "type" && key != "factor" && key != "low_freq_factor" &&
        key != "high_freq_factor" && key != "original_max_position_embeddings") {
      refuse(file, "rope_scaling." + key, "is not implemented for rope_type 'llama3'");
    }
  }
  return s;
}

}  // namespace detail::hf

// Parses config.json text; `file` names it in errors.
inline hf_config parse_hf_config(std::span<const std::uint8_t> text,
                                 const std::filesystem::path& file) {
  using namespace detail::hf;
  const json j = rolora::detail::json_io::parse_json<json>(
      text, [&](rolora::detail::json_io::fault, const std::string& why) {
        rolora::detail::raise<config_error>(file.string(), ": not valid JSON: ", why);
      });
  if (!j.is_object()) {
    rolora::detail::raise<config_error>(file.string(), ": expected a JSON object");
  }
  hf_config c;
  const std::string type = get_string(file, j, "model_type", std::nullopt);
  if (type == "bert") {
    c.kind = family::bert;
  } else if (type == "roberta") {
    c.kind = family::roberta;
  } else if (type == "llama") {
    c.kind = family::llama;
  } else if (type == "qwen2") {
    c.kind = family::qwen2;
  } else {
    refuse(file, "model_type",
           "= \"" + type + "\" is not a family rolora implements (bert, roberta, llama, qwen2)");
  }
  if (const json* a = find(j, "architectures");
      a && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    c.architecture = (*a)[0].get<std::string>();
  }
  c.torch_dtype = get_string(file, j, "torch_dtype", std::string("float32"));
  c.vocab_size = get_index(file, j, "vocab_size", std::nullopt);
  c.hidden_size = get_index(file, j, "hidden_size", std::nullopt);
  c.num_layers = get_index(file, j, "num_hidden_layers", std::nullopt);
  c.num_heads = get_index(file, j, "num_attention_heads", std::nullopt);
  c.intermediate_size = get_index(file, j, "intermediate_size", std::nullopt);
  c.max_position_embeddings = get_index(file, j, "max_position_embeddings", std::nullopt);

  if (is_encoder(c.kind)) {
    if (c.hidden_size % c.num_heads != 0) {
      refuse(file, "num_attention_heads",
             "= " + std::to_string(c.num_heads) +
                 " must divide hidden_size = " + std::to_string(c.hidden_size));
    }
    c.num_kv_heads = c.num_heads;
    c.head_dim = c.hidden_size / c.num_heads;
    c.type_vocab_size = get_index(file, j, "type_vocab_size", index_t(2));
    c.layer_norm_eps = get_double(file, j, "layer_norm_eps", 1e-12);
    c.pad_token_id = get_index(file, j, "pad_token_id", index_t(c.kind == family::roberta), 0);
    if (c.pad_token_id >= c.vocab_size) {
      refuse(file, "pad_token_id",
             "must be below vocab_size, got " + std::to_string(c.pad_token_id));
    }
    if (const json* labels = find(j, "id2label"); labels && labels->is_object()) {
      c.num_labels = static_cast<index_t>(labels->size());
    }
    c.num_labels = get_index(file, j, "num_labels", c.num_labels);
    const std::string act = get_string(file, j, "hidden_act", std::string("gelu"));
    if (act != "gelu") {
      refuse(file, "hidden_act", "= \"" + act + "\" is not implemented (encoders: \"gelu\")");
    }
    require_value(file, j, "position_embedding_type", "absolute", "absolute positions only");
    require_value(file, j, "is_decoder", false, "encoders only");
    require_value(file, j, "add_cross_attention", false, "no cross-attention");
    const std::string problem = get_string(file, j, "problem_type", std::string());
    if (!problem.empty() && problem != "single_label_classification") {
      refuse(file, "problem_type",
             "= \"" + problem + "\" is not implemented (single_label_classification)");
    }
    if (c.num_labels < 2) {
      refuse(file, "num_labels",
             "must be >= 2 for classification, got " + std::to_string(c.num_labels));
    }
    const index_t needed = c.kind == family::roberta ? c.pad_token_id + 2 : 1;
    if (c.max_position_embeddings < needed) {
      refuse(file, "max_position_embeddings",
             "must be at least " + std::to_string(needed) + ", got " +
                 std::to_string(c.max_position_embeddings));
    }
  } else {
    c.num_kv_heads = get_index(file, j, "num_key_value_heads", c.num_heads);
    if (c.num_heads % c.num_kv_heads != 0) {
      refuse(file, "num_key_value_heads",
             "= " + std::to_string(c.num_kv_heads) +
                 " must divide num_attention_heads = " + std::to_string(c.num_heads));
    }
    const index_t default_head_dim = c.hidden_size / c.num_heads;
    c.head_dim = get_index(file, j, "head_dim", default_head_dim);
    if (c.head_dim % 2 != 0) {
      refuse(file, "head_dim",
             "must be even for rotary embeddings, got " + std::to_string(c.head_dim));
    }
    c.rms_norm_eps = get_double(file, j, "rms_norm_eps", 1e-6);
    c.rope_theta = get_double(file, j, "rope_theta", 10000.0);
    if (const json* r = find(j, "rope_scaling")) {
      const auto s = read_rope_scaling(file, *r);
      const json* t = find(*r, "rope_type") ? find(*r, "rope_type") : find(*r, "type");
      if (!(t && *t == "default")) c.rope_scaling = s;
    }
    c.tie_word_embeddings = get_bool(file, j, "tie_word_embeddings", false);  // HF's default
    const std::string act = get_string(file, j, "hidden_act", std::string("silu"));
    if (act != "silu") {
      refuse(file, "hidden_act", "= \"" + act + "\" is not implemented (decoders: \"silu\")");
    }
    require_value(file, j, "mlp_bias", false, "MLP projections without bias");
    require_value(file, j, "use_sliding_window", false, "full attention only");
    require_value(file, j, "pretraining_tp", 1, "pretraining_tp 1 only");
    if (c.kind == family::llama) {
      c.qkv_bias = c.o_bias = get_bool(file, j, "attention_bias", false);
    } else {
      c.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o_proj without
      c.o_bias = false;
    }
  }
  return c;
}

// Reads <dir>/config.json.
inline hf_config read_hf_config(const std::filesystem::path& dir) {
  const auto file = dir / "config.json";
  const auto bytes = read_file_bytes(file, std::uint64_t(16) << 20);
  return parse_hf_config(bytes, file);
}

}  // namespace rolora::models
