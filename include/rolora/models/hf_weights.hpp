// The frozen weights of a Hugging Face model directory, under their Hugging Face names.
//
//   <dir>/config.json                          models::hf_config (hf_config.hpp)
//   <dir>/model.safetensors                    one file, or
//   <dir>/model.safetensors.index.json         {"weight_map": {tensor: shard file}} and the shards
//
// Every tensor the family needs is read with its expected shape and converted to T (F32, F16 and
// BF16 files load); a missing tensor, a wrong shape or dtype is a shape_error naming the file and
// the tensor. Shards are read one at a time and released once converted, so loading holds at
// most one shard's bytes beside the model. Tensors the family does not use (an MLM head, buffers)
// are ignored. Checkpoints saved from the bare model (no "bert." / "roberta." prefix) load too.
//
// A base checkpoint without the classification head (roberta-base itself) gets a new head as the
// Hugging Face class initialises it: weights N(0, 0.02) from rolora's seeded stream, biases 0;
// `initialised` lists those tensors so that the caller trains them (PEFT's modules_to_save).
#pragma once
#include <array>
#include <concepts>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/io/file.hpp>
#include <rolora/io/json.hpp>
#include <rolora/io/safetensors.hpp>
#include <rolora/models/hf_config.hpp>
#include <string>
#include <vector>

namespace rolora::models {

// A frozen matrix held in bf16 (hf_model::hold_base_in_bf16): half the memory of fp32.
using bf16_matrix = host_matrix<Eigen::bfloat16>;

// A linear layer y = W x + b on backend B (T = B::scalar): weight [out, in] (in T, or in bf16 as
// weight_bf16 with weight empty; eigen_backend<float> only), bias [out, 1] or empty (0 x 0) for
// none.
template <class T, class B = eigen_backend<T>>
struct hf_linear {
  static_assert(std::same_as<T, typename B::scalar>, "hf_linear<T, B>: T must be B::scalar");
  typename B::matrix weight;
  typename B::matrix bias;
  bf16_matrix weight_bf16;
  bool has_bias() const { return bias.size() != 0; }
  index_t out_features() const { return weight.size() ? weight.rows() : weight_bf16.rows(); }
  index_t in_features() const { return weight.size() ? weight.cols() : weight_bf16.cols(); }
  // Moves the weight to bf16 (round to nearest even).
  void hold_in_bf16() requires std::same_as<B, eigen_backend<float>> {
    if (weight.size() == 0) return;
    weight_bf16 = weight.template cast<Eigen::bfloat16>();
    weight = host_matrix<T>();
  }
};

// The linears of one layer, in this order (roles):
//   encoders: query, key, value, attention output, intermediate, output (6)
//   decoders: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (7)
inline constexpr std::size_t max_linears_per_layer = 7;

inline std::size_t linears_per_layer(family f) { return is_encoder(f) ? 6 : 7; }

// The module path of a layer's linear, as PEFT names it on the *For{SequenceClassification,
// CausalLM} model: layer_prefix + role, e.g. "roberta.encoder.layer.3." + "attention.self.query",
// "model.layers.0." + "mlp.up_proj".
inline std::string_view linear_role(family f, std::size_t role) {
  static constexpr std::array<std::string_view, 6> encoder_roles{
      "attention.self.query",   "attention.self.key", "attention.self.value",
      "attention.output.dense", "intermediate.dense", "output.dense"};
  static constexpr std::array<std::string_view, 7> decoder_roles{
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return is_encoder(f) ? encoder_roles.at(role) : decoder_roles.at(role);
}
inline std::string layer_prefix(family f, index_t layer) {
  return is_encoder(f)
             ? std::string(family_name(f)) + ".encoder.layer." + std::to_string(layer) + "."
             : "model.layers." + std::to_string(layer) + ".";
}
inline std::string linear_name(family f, index_t layer, std::size_t role) {
  return layer_prefix(f, layer) + std::string(linear_role(f, role));
}

template <class T, class B = eigen_backend<T>>
struct hf_layer {
  using matrix = typename B::matrix;
  std::array<hf_linear<T, B>, max_linears_per_layer> linears;  // by role; decoders use all 7
  matrix norm1_weight, norm1_bias;  // [d, 1]: LN after attention / RMSNorm before it
  matrix norm2_weight, norm2_bias;  // [d, 1]: LN after the MLP / RMSNorm before it
};

// The frozen weights on backend B (eigen_backend<T> by default, or a thrust_backend: loaded on
// the host one tensor at a time and moved there).
template <class T, class B = eigen_backend<T>>
struct hf_model {
  using matrix = typename B::matrix;
  hf_config config;
  matrix embed_tokens;                        // [V, d] (empty when held in bf16)
  bf16_matrix embed_tokens_bf16;              // [V, d] when held in bf16
  matrix position_embeddings;                 // [P, d] (encoders)
  matrix token_type_embeddings;               // [types, d] (encoders)
  matrix embed_norm_weight, embed_norm_bias;  // [d, 1] (encoders)
  std::vector<hf_layer<T, B>> layers;
  matrix final_norm_weight;  // [d, 1] (decoders)
  hf_linear<T, B> pooler;    // BERT: bert.pooler.dense [d, d]
  // The classification head (encoders), by Hugging Face name: BERT "classifier" [C, d];
  // RoBERTa "classifier.dense" [d, d] and "classifier.out_proj" [C, d].
  std::map<std::string, hf_linear<T, B>> head;
  hf_linear<T, B> lm_head;               // [V, d] (untied decoders; tied ones use embed_tokens)
  std::vector<std::string> initialised;  // tensors not in the checkpoint, initialised here

  // The frozen base in bf16: every layer's linears, the token embeddings and an untied lm_head
  // (the bulk of the weights); norms, biases, positions, the pooler and the head stay in T. The
  // frozen products then run on eigen_backend<float>::frozen_gemm (oneDNN's bf16 matmul where
  // the CPU has one). T = float only.
  void hold_base_in_bf16() requires std::same_as<B, eigen_backend<float>> {
    for (auto& l : layers) {
      for (auto& lin : l.linears) lin.hold_in_bf16();
    }
    lm_head.hold_in_bf16();
    if (embed_tokens.size()) {
      embed_tokens_bf16 = embed_tokens.template cast<Eigen::bfloat16>();
      embed_tokens = host_matrix<T>();
    }
  }
  bool base_in_bf16() const { return embed_tokens_bf16.size() != 0; }
  // Names of the head modules in forward order (encoders).
  std::vector<std::string> head_modules() const {
    if (config.kind == family::bert) return {"classifier"};
    return {"classifier.dense", "classifier.out_proj"};
  }
  // Bytes of the frozen weights as held.
  std::size_t bytes() const {
    std::size_t n = std::size_t(embed_tokens.size() + position_embeddings.size() +
                                token_type_embeddings.size() + embed_norm_weight.size() +
                                embed_norm_bias.size() + final_norm_weight.size() +
                                pooler.weight.size() + pooler.bias.size() + lm_head.weight.size());
    std::size_t half = std::size_t(embed_tokens_bf16.size() + lm_head.weight_bf16.size());
    for (const auto& l : layers) {
      for (const auto& lin : l.linears) {
        n += std::size_t(lin.weight.size() + lin.bias.size());
        half += std::size_t(lin.weight_bf16.size());
      }
      n += std::size_t(l.norm1_weight.size() + l.norm1_bias.size() + l.norm2_weight.size() +
                       l.norm2_bias.size());
    }
    for (const auto& [name, lin] : head) n += std::size_t(lin.weight.size() + lin.bias.size());
    return n * sizeof(T) + half * 2;
  }
};

namespace detail::hf {

// The shard files of a model directory and which one holds each tensor.
struct shard_map {
  std::vector<std::filesystem::path> files;
  std::optional<safetensors_file> single;      // the one file of an unsharded model, read once
  std::map<std::string, std::size_t> file_of;  // tensor name -> index into files (sharded)
  bool sharded = false;
};

inline shard_map find_shards(const std::filesystem::path& dir) {
  shard_map m;
  const auto single = dir / "model.safetensors";
  const auto index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(single)) {
    m.files.push_back(single);
    try {
      m.single.emplace(read_safetensors(single));
    } catch (const error& e) {
      rolora::detail::raise<shape_error>(single.string(), ": ", e.message());
    }
    return m;
  }
  if (!std::filesystem::exists(index)) {
    rolora::detail::raise<config_error>(
        dir.string(),
        ": no model.safetensors and no model.safetensors.index.json (rolora reads "
        "safetensors checkpoints; convert a pytorch_model.bin with the Hugging Face "
        "library's save_pretrained(safe_serialization=True))");
  }
  const auto bytes = read_file_bytes(index, std::uint64_t(64) << 20);
  const auto j = rolora::detail::json_io::parse_json<nlohmann::json>(
      bytes, [&](rolora::detail::json_io::fault, const std::string& why) {
        rolora::detail::raise<config_error>(index.string(), ": not valid JSON: ", why);
      });
  const auto it = j.is_object() ? j.find("weight_map") : j.end();
  if (it == j.end() || !it->is_object()) {
    rolora::detail::raise<config_error>(index.string(), ": expected an object 'weight_map'");
  }
  m.sharded = true;
  std::map<std::string, std::size_t> file_index;
  for (const auto& [tensor, file] : it->items()) {
    if (!file.is_string()) {
      rolora::detail::raise<config_error>(index.string(), ": weight_map['", tensor,
                                          "'] must be a file name, got ", file.dump());
    }
    const auto name = file.get<std::string>();
    // A shard is a plain file beside the index: no directories, no way out of the model.
    if (name.empty() || name.find('/') != std::string::npos ||
        name.find('\\') != std::string::npos || name == "." || name == "..") {
      rolora::detail::raise<config_error>(index.string(), ": weight_map['", tensor, "'] = \"", name,
                                          "\" is not a file name in ", dir.string());
    }
    auto [f, added] = file_index.emplace(name, m.files.size());
    if (added) m.files.push_back(dir / name);
    m.file_of[tensor] = f->second;
  }
  return m;
}

// A host matrix as B's matrix (moved where B's matrix is the host type).
template <class B>
typename B::matrix on_backend(host_matrix<typename B::scalar>&& h) {
  if constexpr (std::is_same_v<typename B::matrix, host_matrix<typename B::scalar>>) {
    return std::move(h);
  } else {
    return B::from_host(h);
  }
}

// One tensor to read: name in the checkpoint, expected shape ([n] when cols is 0), destination.
template <class B>
struct wanted_tensor {
  std::string name;
  index_t rows, cols;
  typename B::matrix* out;
};

template <class B>
void read_tensors(const std::filesystem::path& dir, const shard_map& shards,
                  const std::vector<wanted_tensor<B>>& wanted) {
  using T = typename B::scalar;
  std::vector<std::vector<const wanted_tensor<B>*>> per_file(shards.files.size());
  for (const auto& w : wanted) {
    if (!shards.sharded) {
      per_file[0].push_back(&w);
      continue;
    }
    const auto it = shards.file_of.find(w.name);
    if (it == shards.file_of.end()) {
      rolora::detail::raise<shape_error>((dir / "model.safetensors.index.json").string(),
                                         ": tensor '", w.name,
                                         "' is not in weight_map (the model's family needs it)");
    }
    per_file[it->second].push_back(&w);
  }
  for (std::size_t f = 0; f < shards.files.size(); ++f) {
    if (per_file[f].empty()) continue;
    const auto& path = shards.files[f];
    try {
      std::optional<safetensors_file> shard;  // released after its tensors are converted
      if (!shards.single) shard.emplace(read_safetensors(path));
      const safetensors_file& file = shards.single ? *shards.single : *shard;
      for (const auto* w : per_file[f]) {
        host_matrix<T> h = w->cols == 0 ? file.expect_vector<T>(w->name, w->rows)
                                        : file.expect_matrix<T>(w->name, w->rows, w->cols);
        if (!h.allFinite()) {
          rolora::detail::raise<value_error>("tensor '", w->name, "' holds non-finite values");
        }
        *w->out = on_backend<B>(std::move(h));
      }
    } catch (const error& e) {
      rolora::detail::raise<shape_error>(path.string(), ": ", e.message());
    }
  }
}

}  // namespace detail::hf

// Loads the model directory `dir` (config.json + safetensors) with every frozen weight in T, on
// backend B. `seed` initialises a missing classification head (see the top of this file).
template <class T, class B = eigen_backend<T>>
hf_model<T, B> load_hf_model(const std::filesystem::path& dir, std::uint64_t seed = 0) {
  using matrix = typename B::matrix;
  hf_model<T, B> m;
  m.config = read_hf_config(dir);
  const hf_config& c = m.config;
  const index_t d = c.hidden_size, ff = c.intermediate_size;
  const index_t q_dim = c.num_heads * c.head_dim, kv_dim = c.kv_dim();
  std::vector<detail::hf::wanted_tensor<B>> wanted;
  auto want = [&](std::string name, index_t rows, index_t cols, matrix& out) {
    wanted.push_back({std::move(name), rows, cols, &out});
  };
  auto want_linear = [&](const std::string& name, index_t out, index_t in, bool bias,
                         hf_linear<T, B>& lin) {
    want(name + ".weight", out, in, lin.weight);
    if (bias) want(name + ".bias", out, 0, lin.bias);
  };
  m.layers.resize(std::size_t(c.num_layers));

  // Which tensor names exist: for the encoders' optional "bert." prefix and head.
  const detail::hf::shard_map shards = detail::hf::find_shards(dir);
  std::map<std::string, bool> present;
  if (shards.sharded) {
    for (const auto& [name, f] : shards.file_of) present[name] = true;
  } else {
    for (const auto& name : shards.single->names()) present[name] = true;
  }

  if (is_encoder(c.kind)) {
    const std::string model_prefix(family_name(c.kind));
    const std::string p = present.count(model_prefix + ".embeddings.word_embeddings.weight") ||
                                  !present.count("embeddings.word_embeddings.weight")
                              ? model_prefix + "."
                              : std::string();
    want(p + "embeddings.word_embeddings.weight", c.vocab_size, d, m.embed_tokens);
    want(p + "embeddings.position_embeddings.weight", c.max_position_embeddings, d,
         m.position_embeddings);
    want(p + "embeddings.token_type_embeddings.weight", c.type_vocab_size, d,
         m.token_type_embeddings);
    want(p + "embeddings.LayerNorm.weight", d, 0, m.embed_norm_weight);
    want(p + "embeddings.LayerNorm.bias", d, 0, m.embed_norm_bias);
    for (index_t i = 0; i < c.num_layers; ++i) {
      auto& l = m.layers[std::size_t(i)];
      const std::string base = p + "encoder.layer." + std::to_string(i) + ".";
      const std::array<std::pair<index_t, index_t>, 6> shapes{
          {{d, d}, {d, d}, {d, d}, {d, d}, {ff, d}, {d, ff}}};
      for (std::size_t r = 0; r < 6; ++r) {
        want_linear(base + std::string(linear_role(c.kind, r)), shapes[r].first, shapes[r].second,
                    true, l.linears[r]);
      }
      want(base + "attention.output.LayerNorm.weight", d, 0, l.norm1_weight);
      want(base + "attention.output.LayerNorm.bias", d, 0, l.norm1_bias);
      want(base + "output.LayerNorm.weight", d, 0, l.norm2_weight);
      want(base + "output.LayerNorm.bias", d, 0, l.norm2_bias);
    }
    if (c.kind == family::bert) want_linear(p + "pooler.dense", d, d, true, m.pooler);
    const std::vector<std::pair<std::string, index_t>> head =
        c.kind == family::bert
            ? std::vector<std::pair<std::string, index_t>>{{"classifier", c.num_labels}}
            : std::vector<std::pair<std::string, index_t>>{{"classifier.dense", d},
                                                           {"classifier.out_proj", c.num_labels}};
    std::uint32_t k = 0;
    for (const auto& [name, out] : head) {
      auto& lin = m.head[name];
      if (present.count(name + ".weight")) {
        want_linear(name, out, d, true, lin);
        continue;
      }
      // Not in a base checkpoint: N(0, 0.02) and zero bias, as _init_weights does.
      const random_stream rs(seed, stream::adapter_init, 0xC1A55u, k++);
      host_matrix<T> w(out, d);
      for (index_t i = 0; i < w.size(); ++i) {
        w.data()[i] = static_cast<T>(0.02 * rs.normal(std::uint64_t(i)));
      }
      lin.weight = detail::hf::on_backend<B>(std::move(w));
      lin.bias = B::zeros(out, 1);
      m.initialised.push_back(name + ".weight");
      m.initialised.push_back(name + ".bias");
    }
  } else {
    want("model.embed_tokens.weight", c.vocab_size, d, m.embed_tokens);
    for (index_t i = 0; i < c.num_layers; ++i) {
      auto& l = m.layers[std::size_t(i)];
      const std::array<std::pair<index_t, index_t>, 7> shapes{
          {{q_dim, d}, {kv_dim, d}, {kv_dim, d}, {d, q_dim}, {ff, d}, {ff, d}, {d, ff}}};
      for (std::size_t r = 0; r < 7; ++r) {
        const bool bias = r < 3 ? c.qkv_bias : r == 3 ? c.o_bias : false;
        want_linear(linear_name(c.kind, i, r), shapes[r].first, shapes[r].second, bias,
                    l.linears[r]);
      }
      const std::string base = "model.layers." + std::to_string(i) + ".";
      want(base + "input_layernorm.weight", d, 0, l.norm1_weight);
      want(base + "post_attention_layernorm.weight", d, 0, l.norm2_weight);
    }
    want("model.norm.weight", d, 0, m.final_norm_weight);
    if (!c.tie_word_embeddings) want_linear("lm_head", c.vocab_size, d, false, m.lm_head);
  }
  detail::hf::read_tensors(dir, shards, wanted);
  return m;
}

// A model of config `c` with random weights (benchmarks, tests): every matrix N(0, 0.02), norm
// weights 1 + N(0, 0.1), biases N(0, 0.02), from rolora's seeded stream.
template <class T, class B = eigen_backend<T>>
hf_model<T, B> random_hf_model(const hf_config& c, std::uint64_t seed) {
  hf_model<T, B> m;
  m.config = c;
  std::uint32_t k = 0;
  auto fill = [&](typename B::matrix& x, index_t rows, index_t cols, double mean, double std) {
    const random_stream rs(seed, stream::data, 0x40DE1u, k++);
    host_matrix<T> h(rows, cols);
    for (index_t i = 0; i < h.size(); ++i) {
      h.data()[i] = static_cast<T>(mean + std * rs.normal(std::uint64_t(i)));
    }
    x = detail::hf::on_backend<B>(std::move(h));
  };
  auto linear = [&](hf_linear<T, B>& l, index_t out, index_t in, bool bias) {
    fill(l.weight, out, in, 0.0, 0.02);
    if (bias) fill(l.bias, out, 1, 0.0, 0.02);
  };
  const index_t d = c.hidden_size, ff = c.intermediate_size;
  const index_t q_dim = c.num_heads * c.head_dim, kv_dim = c.kv_dim();
  fill(m.embed_tokens, c.vocab_size, d, 0.0, 0.02);
  m.layers.resize(std::size_t(c.num_layers));
  if (is_encoder(c.kind)) {
    fill(m.position_embeddings, c.max_position_embeddings, d, 0.0, 0.02);
    fill(m.token_type_embeddings, c.type_vocab_size, d, 0.0, 0.02);
    fill(m.embed_norm_weight, d, 1, 1.0, 0.1);
    fill(m.embed_norm_bias, d, 1, 0.0, 0.02);
    const std::array<std::pair<index_t, index_t>, 6> shapes{
        {{d, d}, {d, d}, {d, d}, {d, d}, {ff, d}, {d, ff}}};
    for (auto& l : m.layers) {
      for (std::size_t r = 0; r < 6; ++r)
        linear(l.linears[r], shapes[r].first, shapes[r].second, true);
      fill(l.norm1_weight, d, 1, 1.0, 0.1);
      fill(l.norm1_bias, d, 1, 0.0, 0.02);
      fill(l.norm2_weight, d, 1, 1.0, 0.1);
      fill(l.norm2_bias, d, 1, 0.0, 0.02);
    }
    if (c.kind == family::bert) {
      linear(m.pooler, d, d, true);
      linear(m.head["classifier"], c.num_labels, d, true);
    } else {
      linear(m.head["classifier.dense"], d, d, true);
      linear(m.head["classifier.out_proj"], c.num_labels, d, true);
    }
  } else {
    const std::array<std::pair<index_t, index_t>, 7> shapes{
        {{q_dim, d}, {kv_dim, d}, {kv_dim, d}, {d, q_dim}, {ff, d}, {ff, d}, {d, ff}}};
    for (auto& l : m.layers) {
      for (std::size_t r = 0; r < 7; ++r) {
        linear(l.linears[r], shapes[r].first, shapes[r].second,
               r < 3    ? c.qkv_bias
               : r == 3 ? c.o_bias
                        : false);
      }
      fill(l.norm1_weight, d, 1, 1.0, 0.1);
      fill(l.norm2_weight, d, 1, 1.0, 0.1);
    }
    fill(m.final_norm_weight, d, 1, 1.0, 0.1);
    if (!c.tie_word_embeddings) linear(m.lm_head, c.vocab_size, d, false);
  }
  return m;
}

}  // namespace rolora::models
