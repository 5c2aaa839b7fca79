// The transformer's configuration, its parameter names (HF-like), the choice of LoRA target
// modules (PEFT's target_modules / layers_to_transform), and the weights container.
//
// Parameters, shapes as stored (column-major; linear weights [out, in] like torch.nn.Linear,
// biases and layer-norm vectors [k, 1]):
//   embeddings.word_embeddings.weight       [vocab_size, d_model]   N(0, 0.02^2)
//   embeddings.position_embeddings.weight   [max_len, d_model]      N(0, 0.02^2)
//   layers.{i}.ln1.weight / .bias           [d_model, 1]            1 / 0
//   layers.{i}.attention.{q,k,v,o}.weight   [d_model, d_model]      N(0, 0.02^2)
//   layers.{i}.attention.{q,k,v,o}.bias     [d_model, 1]            0
//   layers.{i}.ln2.weight / .bias           [d_model, 1]            1 / 0
//   layers.{i}.mlp.fc1.weight / .bias       [d_ff, d_model] / [d_ff, 1]
//   layers.{i}.mlp.fc2.weight / .bias       [d_model, d_ff] / [d_model, 1]
//   final_ln.weight / .bias                 [d_model, 1]            1 / 0
//   classifier.weight / .bias               [num_classes, d_model] / [num_classes, 1]
//   mlm_head.bias                           [vocab_size, 1]         0
// The masked-token LM head is tied: its decoder is embeddings.word_embeddings.weight (as BERT),
// plus its own bias. LoRA module names are a linear's path without ".weight":
// "layers.{i}.attention.q", ..., "layers.{i}.mlp.fc2".
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/rng.hpp>
#include <string>
#include <utility>
#include <vector>

namespace rolora {

// How the classification head reduces a sequence to one vector.
enum class pooling {
  mean,   // mean over the non-PAD tokens
  first,  // the first token (a CLS token the data puts there)
};

struct transformer_config {
  index_t vocab_size = 260;
  index_t max_len = 128;
  index_t d_model = 128;
  index_t n_heads = 4;
  index_t n_layers = 2;
  index_t d_ff = 512;
  index_t num_classes = 3;
  pooling pool = pooling::mean;
  double layer_norm_eps = 1e-5;  // torch.nn.LayerNorm's default
  std::int32_t pad_id = 0;       // never attended to, never pooled over

  void validate() const {
    const auto positive = [](const char* name, index_t v) {
      if (v < 1)
        detail::raise<config_error>("transformer_config: ", name, " must be >= 1, got ", v);
    };
    positive("vocab_size", vocab_size);
    positive("max_len", max_len);
    positive("d_model", d_model);
    positive("n_heads", n_heads);
    positive("n_layers", n_layers);
    positive("d_ff", d_ff);
    positive("num_classes", num_classes);
    if (d_model % n_heads != 0) {
      detail::raise<config_error>("transformer_config: d_model = ", d_model,
                                  " must be a multiple of n_heads = ", n_heads);
    }
    if (pad_id < 0 || pad_id >= vocab_size) {
      detail::raise<config_error>("transformer_config: pad_id = ", pad_id,
                                  " must be in [0, vocab_size = ", vocab_size, ")");
    }
    if (!(layer_norm_eps > 0.0)) {
      detail::raise<config_error>("transformer_config: layer_norm_eps must be > 0, got ",
                                  layer_norm_eps);
    }
  }
};

namespace detail::nn {

// Per-layer parameters in storage order; the index of layer i's parameter p is
// layer_base(i) + p.
enum layer_param : index_t {
  ln1_w,
  ln1_b,
  q_w,
  q_b,
  k_w,
  k_b,
  v_w,
  v_b,
  o_w,
  o_b,
  ln2_w,
  ln2_b,
  fc1_w,
  fc1_b,
  fc2_w,
  fc2_b,
  per_layer
};
// The linear modules of a layer, in order, with the index of their weight (bias follows).
inline constexpr const char* linear_short_names[] = {"q", "k", "v", "o", "fc1", "fc2"};
inline constexpr const char* linear_paths[] = {"attention.q", "attention.k", "attention.v",
                                               "attention.o", "mlp.fc1",     "mlp.fc2"};
inline constexpr index_t linear_weight[] = {q_w, k_w, v_w, o_w, fc1_w, fc2_w};
inline constexpr index_t linears_per_layer = 6;

inline constexpr index_t word_embeddings = 0, position_embeddings = 1;
inline constexpr index_t layer_base(index_t i) { return 2 + i * per_layer; }
inline constexpr index_t final_ln_w(index_t n_layers) { return layer_base(n_layers); }
inline constexpr index_t classifier_w(index_t n_layers) { return layer_base(n_layers) + 2; }
inline constexpr index_t mlm_bias(index_t n_layers) { return layer_base(n_layers) + 4; }
inline constexpr index_t num_parameters(index_t n_layers) { return layer_base(n_layers) + 5; }

enum class init_kind { normal, ones, zeros };
struct parameter_spec {
  std::string name;
  index_t rows, cols;
  init_kind init;
  bool base_matrix = false;  // a linear's W0 or an embedding: held in bf16 by a bf16 base
};

inline std::string module_name(index_t layer, index_t j) {
  return "layers." + std::to_string(layer) + "." + linear_paths[j];
}

// Every parameter in storage order.
inline std::vector<parameter_spec> parameter_specs(const transformer_config& c) {
  const index_t d = c.d_model;
  std::vector<parameter_spec> s;
  s.push_back({"embeddings.word_embeddings.weight", c.vocab_size, d, init_kind::normal, true});
  s.push_back({"embeddings.position_embeddings.weight", c.max_len, d, init_kind::normal, true});
  for (index_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    s.push_back({p + "ln1.weight", d, 1, init_kind::ones});
    s.push_back({p + "ln1.bias", d, 1, init_kind::zeros});
    for (index_t j = 0; j < 4; ++j) {
      s.push_back({module_name(i, j) + ".weight", d, d, init_kind::normal, true});
      s.push_back({module_name(i, j) + ".bias", d, 1, init_kind::zeros});
    }
    s.push_back({p + "ln2.weight", d, 1, init_kind::ones});
    s.push_back({p + "ln2.bias", d, 1, init_kind::zeros});
    s.push_back({module_name(i, 4) + ".weight", c.d_ff, d, init_kind::normal, true});
    s.push_back({module_name(i, 4) + ".bias", c.d_ff, 1, init_kind::zeros});
    s.push_back({module_name(i, 5) + ".weight", d, c.d_ff, init_kind::normal, true});
    s.push_back({module_name(i, 5) + ".bias", d, 1, init_kind::zeros});
  }
  s.push_back({"final_ln.weight", d, 1, init_kind::ones});
  s.push_back({"final_ln.bias", d, 1, init_kind::zeros});
  s.push_back({"classifier.weight", c.num_classes, d, init_kind::normal});
  s.push_back({"classifier.bias", c.num_classes, 1, init_kind::zeros});
  s.push_back({"mlm_head.bias", c.vocab_size, 1, init_kind::zeros});
  return s;
}

}  // namespace detail::nn

// The LoRA modules PEFT-style `target_modules` and `layers_to_transform` select, with their base
// weight shapes, ready for adapter_set's constructor. A target is "all-linear" (every q, k, v, o,
// fc1, fc2; like PEFT it leaves out the heads), a short name ("q", "fc1"), or any dotted suffix of
// a module name ("attention.q", "layers.0.mlp.fc2"). `layers_to_transform` empty: every layer.
// A target that matches no module, or a layer out of range, is a config_error.
inline std::vector<module_shape> lora_target_modules(
    const transformer_config& c, const std::vector<std::string>& target_modules,
    const std::vector<index_t>& layers_to_transform = {}) {
  c.validate();
  if (target_modules.empty()) {
    detail::raise<config_error>(
        "target_modules is empty: name modules such as "
        "{\"q\", \"v\"} or \"all-linear\"");
  }
  for (const index_t l : layers_to_transform) {
    if (l < 0 || l >= c.n_layers) {
      detail::raise<config_error>("layers_to_transform: layer ", l,
                                  " does not exist; the model has layers 0..", c.n_layers - 1);
    }
  }
  const auto matches = [](const std::string& name, const std::string& target) {
    return target == "all-linear" || name == target ||
           (name.size() > target.size() &&
            name.compare(name.size() - target.size(), target.size(), target) == 0 &&
            name[name.size() - target.size() - 1] == '.');
  };
  const auto shape_of = [&](index_t j) -> std::pair<index_t, index_t> {  // [out, in]
    if (j == 4) return {c.d_ff, c.d_model};
    if (j == 5) return {c.d_model, c.d_ff};
    return {c.d_model, c.d_model};
  };
  std::vector<module_shape> out;
  for (const auto& t : target_modules) {
    bool found = false;
    for (index_t i = 0; i < c.n_layers && !found; ++i) {
      for (index_t j = 0; j < detail::nn::linears_per_layer; ++j)
        found = found || matches(detail::nn::module_name(i, j), t);
    }
    if (!found) {
      detail::raise<config_error>("target module '", t,
                                  "' matches no linear module; valid: \"all-linear\", q, k, v, o, "
                                  "fc1, fc2 (or a dotted suffix of layers.{i}.attention.{q,k,v,o}, "
                                  "layers.{i}.mlp.{fc1,fc2})");
    }
  }
  for (index_t i = 0; i < c.n_layers; ++i) {
    if (!layers_to_transform.empty() &&
        std::find(layers_to_transform.begin(), layers_to_transform.end(), i) ==
            layers_to_transform.end()) {
      continue;
    }
    for (index_t j = 0; j < detail::nn::linears_per_layer; ++j) {
      const std::string name = detail::nn::module_name(i, j);
      if (std::any_of(target_modules.begin(), target_modules.end(),
                      [&](const std::string& t) { return matches(name, t); })) {
        const auto [o, in] = shape_of(j);
        out.push_back({name, o, in});
      }
    }
  }
  return out;
}

// All weights of the model, by name, in a fixed storage order (detail::nn::parameter_specs).
// The same type holds full-parameter gradients (zeros_like). After convert_base_to_bf16() it holds
// the frozen base (every linear's W0, both embeddings) in bf16.
template <backend B>
class transformer_weights {
 public:
  using matrix = typename B::matrix;
  using frozen_matrix = frozen_matrix_t<B>;
  using T = typename B::scalar;

  // BERT-style deterministic init: linear weights and embeddings N(0, 0.02^2), layer norms
  // weight 1 and bias 0, biases 0. Parameter p draws element k (column-major) from
  // random_stream(seed, stream::data, p, 0x4E4E) ("NN"), on the host in double, so every backend
  // and scalar type starts from the same numbers (rounded to its scalar).
  transformer_weights(const transformer_config& config, std::uint64_t seed)
      : transformer_weights(config) {
    for (std::size_t p = 0; p < specs_.size(); ++p) {
      const auto& s = specs_[p];
      host_matrix<T> h(s.rows, s.cols);
      if (s.init == detail::nn::init_kind::normal) {
        const random_stream rs(seed, stream::data, static_cast<std::uint32_t>(p), 0x4E4E);
        for (index_t k = 0; k < h.size(); ++k)
          h.data()[k] = static_cast<T>(0.02 * rs.normal(std::uint64_t(k)));
      } else {
        h.setConstant(s.init == detail::nn::init_kind::ones ? T(1) : T(0));
      }
      values_[p] = B::from_host(h);
    }
  }

  // Weights read from a name -> matrix map (a checkpoint): every parameter must be there with
  // its shape, and nothing else may be; otherwise config_error / shape_error and no object.
  static transformer_weights from_host_map(const transformer_config& config,
                                           const std::map<std::string, host_matrix<T>>& tensors) {
    transformer_weights w(config);
    for (const auto& [name, h] : tensors) {
      if (!w.index_.count(name)) {
        detail::raise<config_error>("weights: unexpected tensor '", name,
                                    "' (not a parameter of this transformer_config)");
      }
    }
    for (std::size_t p = 0; p < w.specs_.size(); ++p) {
      const auto it = tensors.find(w.specs_[p].name);
      if (it == tensors.end()) {
        detail::raise<config_error>("weights: missing tensor '", w.specs_[p].name, "'");
      }
      w.check_shape(p, it->second.rows(), it->second.cols());
      w.values_[p] = B::from_host(it->second);
    }
    return w;
  }

  // Gradient buffers: the same names and shapes, all zero.
  transformer_weights zeros_like() const {
    transformer_weights g(config_);
    for (std::size_t p = 0; p < specs_.size(); ++p)
      g.values_[p] = B::zeros(specs_[p].rows, specs_[p].cols);
    return g;
  }

  // Every parameter by name (a bf16 one exactly as held).
  std::map<std::string, host_matrix<T>> to_host_map() const {
    std::map<std::string, host_matrix<T>> out;
    for (std::size_t p = 0; p < specs_.size(); ++p) {
      if constexpr (frozen_bf16_backend<B>) {
        if (in_bf16(p)) {
          out.emplace(specs_[p].name, B::to_host(B::to_matrix(frozen_[p])));
          continue;
        }
      }
      out.emplace(specs_[p].name, B::to_host(values_[p]));
    }
    return out;
  }

  // Replaces one parameter (shape checked; nothing changes on error). A bf16 one is rounded.
  void assign(const std::string& name, const host_matrix<T>& value) {
    const std::size_t p = index_of(name);
    check_shape(p, value.rows(), value.cols());
    if constexpr (frozen_bf16_backend<B>) {
      if (in_bf16(p)) {
        frozen_[p] = B::to_frozen(B::from_host(value));
        return;
      }
    }
    values_[p] = B::from_host(value);
  }

  // Holds the frozen base in bf16, as QLoRA-style fine-tuning does to fit a bigger base in a
  // client's memory: every linear's W0 and both embeddings are rounded to bf16 (B::to_frozen) and
  // their B::matrix copies released, so the base takes half the bytes. Layer norms, biases, the
  // classifier and mlm_head.bias stay in T, as do adapters, gradients and optimizer state. The
  // model then multiplies with them through B::frozen_gemm. Afterwards value() and at() of a bf16
  // parameter throw (frozen() reads it), assign() rounds to bf16, to_host_map() gives the bf16
  // values exactly, and full-parameter training is refused (a bf16 copy cannot take updates).
  // There is no way back; a second call does nothing.
  void convert_base_to_bf16() {
    static_assert(frozen_bf16_backend<B>,
                  "transformer_weights::convert_base_to_bf16: the backend does not model "
                  "rolora::frozen_bf16_backend (it cannot hold a bf16 matrix); "
                  "eigen_backend<float> does");
    if constexpr (frozen_bf16_backend<B>) {
      if (base_in_bf16_) return;
      frozen_.resize(specs_.size());
      for (std::size_t p = 0; p < specs_.size(); ++p) {
        if (!specs_[p].base_matrix) continue;
        frozen_[p] = B::to_frozen(values_[p]);
        values_[p] = matrix{};  // releases the T copy
      }
      base_in_bf16_ = true;
    }
  }
  bool base_in_bf16() const { return base_in_bf16_; }
  // Whether parameter p is held in bf16.
  bool in_bf16(std::size_t p) const { return base_in_bf16_ && specs_[p].base_matrix; }
  // The bf16 value of parameter p (config_error when it is not held in bf16).
  const frozen_matrix& frozen(std::size_t p) const {
    if (!in_bf16(p)) {
      detail::raise<config_error>("weights: '", specs_[p].name,
                                  "' is not held in bf16 (value() has it)");
    }
    return frozen_[p];
  }

  const transformer_config& config() const { return config_; }
  std::size_t size() const { return specs_.size(); }
  const std::string& name(std::size_t p) const { return specs_[p].name; }
  // Parameter p in T (config_error when it is held in bf16: frozen() has it).
  matrix& value(std::size_t p) {
    check_not_bf16(p);
    return values_[p];
  }
  const matrix& value(std::size_t p) const {
    check_not_bf16(p);
    return values_[p];
  }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  std::size_t index_of(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) {
      detail::raise<config_error>("weights: no parameter named '", name, "'");
    }
    return it->second;
  }
  matrix& at(const std::string& name) { return value(index_of(name)); }
  const matrix& at(const std::string& name) const { return value(index_of(name)); }
  // Number of scalars in all parameters.
  std::size_t num_scalars() const {
    std::size_t n = 0;
    for (const auto& s : specs_) n += static_cast<std::size_t>(s.rows * s.cols);
    return n;
  }
  // Number of scalars in the frozen base: every linear's W0 and both embeddings.
  std::size_t num_base_scalars() const {
    std::size_t n = 0;
    for (const auto& s : specs_) n += s.base_matrix ? static_cast<std::size_t>(s.rows * s.cols) : 0;
    return n;
  }
  // Bytes of every parameter as held now: sizeof(T) a scalar, 2 a bf16 one.
  std::size_t stored_bytes() const {
    std::size_t n = 0;
    for (std::size_t p = 0; p < specs_.size(); ++p) {
      n += static_cast<std::size_t>(B::rows(values_[p]) * B::cols(values_[p])) * sizeof(T);
      if constexpr (frozen_bf16_backend<B>) {
        if (in_bf16(p))
          n += static_cast<std::size_t>(B::rows(frozen_[p]) * B::cols(frozen_[p])) * 2;
      }
    }
    return n;
  }
  // The expected shape of parameter p.
  index_t rows(std::size_t p) const { return specs_[p].rows; }
  index_t cols(std::size_t p) const { return specs_[p].cols; }

 private:
  explicit transformer_weights(const transformer_config& config)
      : config_{config}, specs_{(config.validate(), detail::nn::parameter_specs(config))} {
    values_.resize(specs_.size());
    for (std::size_t p = 0; p < specs_.size(); ++p) index_.emplace(specs_[p].name, p);
  }
  void check_not_bf16(std::size_t p) const {
    if (in_bf16(p)) {
      detail::raise<config_error>("weights: '", specs_[p].name,
                                  "' is held in bf16 (convert_base_to_bf16): read it with frozen() "
                                  "or to_host_map()");
    }
  }
  void check_shape(std::size_t p, index_t r, index_t c) const {
    if (r != specs_[p].rows || c != specs_[p].cols) {
      detail::raise<shape_error>("weights: '", specs_[p].name, "' expected ",
                                 detail::shape_string(specs_[p].rows, specs_[p].cols), ", got ",
                                 detail::shape_string(r, c));
    }
  }

  transformer_config config_;
  std::vector<detail::nn::parameter_spec> specs_;
  std::vector<matrix> values_;         // empty for a parameter held in bf16
  std::vector<frozen_matrix> frozen_;  // after convert_base_to_bf16: the bf16 base matrices
  bool base_in_bf16_ = false;
  std::map<std::string, std::size_t> index_;
};

}  // namespace rolora
