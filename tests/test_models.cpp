// Hugging Face families (rolora/models): the tiny checkpoints of tests/data/hf_tiny, written with
// their PyTorch reference by tests/models/make_tiny_checkpoints.py, load and match PyTorch's
// logits (1e-4 relative per tensor in float) and LoRA and head gradients (1e-3); gradients of
// every linear role against central differences; what the loader and config parser refuse.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <fstream>
#include <rolora/io/peft.hpp>
#include <rolora/io/safetensors.hpp>
#include <rolora/models/hf_task.hpp>
#include <rolora/rolora.hpp>
#include <string>

#include "test_support.hpp"

namespace models = rolora::models;
using rolora::host_matrix;
using rolora::index_t;

namespace {

std::filesystem::path tiny_dir(const std::string& name) {
  return std::filesystem::path(__FILE__).parent_path() / "data" / "hf_tiny" / name;
}

std::vector<std::int32_t> read_ints(const rolora::safetensors_file& f, const std::string& name) {
  const auto t = f.tensor(name);
  REQUIRE(t.dtype == rolora::tensor_dtype::i64);
  std::vector<std::int32_t> out(t.numel());
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::int64_t v;
    std::memcpy(&v, t.bytes.data() + 8 * i, 8);
    out[i] = static_cast<std::int32_t>(v);
  }
  return out;
}

// max|a - b| / max|b| over one tensor, both given in the same element order.
template <class A, class B>
double relative_error(const A& a, const B& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (index_t i = 0; i < index_t(a.size()); ++i) {
    num = std::max(num, std::abs(double(a.data()[i]) - double(b.data()[i])));
    den = std::max(den, std::abs(double(b.data()[i])));
  }
  return num / den;
}

// A matrix's elements in PyTorch's (row-major) order: ours are column-major.
template <class T>
host_matrix<T> row_major(const host_matrix<T>& m) {
  return m.transpose();
}

constexpr std::string_view peft_prefix = "base_model.model.";

// The reference's batch, adapters (scaling lora_alpha / r = 2) and, for encoders, the whole head
// as modules to save, on backend B.
template <class B>
struct reference_case {
  using T = typename B::scalar;
  models::hf_model<T, B> model;
  rolora::safetensors_file ref;
  models::hf_batch batch;
  std::vector<std::int32_t> labels;
  rolora::adapter_set<B> adapters;

  explicit reference_case(const std::string& name)
      : model(models::load_hf_model<T, B>(tiny_dir(name))),
        ref(rolora::read_safetensors(tiny_dir(name) / "reference.safetensors")) {
    const auto ids = ref.tensor("input_ids");
    batch.seq_len = static_cast<index_t>(ids.shape[1]);
    batch.ids = read_ints(ref, "input_ids");
    for (const auto m : read_ints(ref, "attention_mask")) batch.attention_mask.push_back(m != 0);
    if (ref.contains("token_type_ids")) batch.token_types = read_ints(ref, "token_type_ids");
    labels = read_ints(ref, "labels");
    for (const auto& key : ref.names()) {
      const std::string suffix = ".lora_A.weight";
      if (key.rfind(peft_prefix, 0) != 0 || key.size() < suffix.size() ||
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      const std::string module =
          key.substr(peft_prefix.size(), key.size() - peft_prefix.size() - suffix.size());
      const std::string b_key = std::string(peft_prefix) + module + ".lora_B.weight";
      rolora::lora_adapter<B> a;
      a.A = B::from_host(rolora::to_host_matrix<T>(ref.tensor(key)));
      a.B = B::from_host(rolora::to_host_matrix<T>(ref.tensor(b_key)));
      a.scaling = T(2);
      adapters.insert(module, a);
    }
    REQUIRE(adapters.size() == 2 * std::size_t(model.config.num_layers));
    if (models::is_encoder(model.config.kind)) {
      for (const auto& [name, lin] : model.head) {
        adapters.add_module_to_save(name + ".weight", lin.weight);
        adapters.add_module_to_save(name + ".bias", lin.bias);
      }
    }
  }

  host_matrix<T> expected(const std::string& name) const {
    const auto v = rolora::to_vector<T>(ref.tensor(name));
    return Eigen::Map<const host_matrix<T>>(v.data(), index_t(v.size()), 1);
  }
};

template <class B>
void check_against_pytorch(const std::string& name, double logit_tol, double grad_tol,
                           bool base_in_bf16 = false) {
  using T = typename B::scalar;
  CAPTURE(name);
  CAPTURE(base_in_bf16);
  reference_case<B> c(name);
  if constexpr (std::is_same_v<B, rolora::eigen_backend<float>>) {
    if (base_in_bf16) c.model.hold_base_in_bf16();
  }
  models::hf_workspace<T, B> ws;
  rolora::gradient_set<B> grads;
  const bool encoder = models::is_encoder(c.model.config.kind);
  const double loss = encoder
                          ? models::classification_loss_and_grad(c.model, c.adapters, c.batch,
                                                                 c.labels, {true, true}, &grads, ws)
                          : models::causal_lm_loss_and_grad(c.model, c.adapters, c.batch, c.labels,
                                                            {true, true}, &grads, ws);
  const double expected_loss = c.expected("loss")(0, 0);
  CHECK(std::abs(loss - expected_loss) <= logit_tol * std::abs(expected_loss));
  // Ours: [C, n] / [V, n L] column-major; PyTorch's [n, C] / [n, L, V] row-major: the same order.
  const double logit_error = relative_error(B::to_host(ws.logits), c.expected("logits"));
  CHECK(logit_error <= logit_tol);
  std::size_t compared = 0;
  double worst = 0;
  auto check_grad = [&](const host_matrix<T>& ours, const std::string& key) {
    const double e = relative_error(row_major(ours), c.expected(key));
    CHECK(e <= grad_tol);
    worst = std::max(worst, e);
    ++compared;
  };
  for (const auto& [module, g] : grads.adapters) {
    CAPTURE(module);
    const std::string key = "grad." + std::string(peft_prefix) + module;
    check_grad(B::to_host(g.dA), key + ".lora_A.weight");
    check_grad(B::to_host(g.dB), key + ".lora_B.weight");
  }
  for (const auto& [param, g] : grads.modules_to_save) {
    CAPTURE(param);
    if (param.rfind("bert.pooler", 0) == 0) continue;
    check_grad(B::to_host(g), "grad." + param);
  }
  CHECK(compared == c.adapters.size() * 2 + c.adapters.modules_to_save().size());
  MESSAGE(name << " on " << B::name << "<" << std::string(sizeof(T) == 4 ? "float" : "double")
               << ">: logits " << logit_error << ", worst gradient " << worst
               << " (relative to PyTorch)");
}

}  // namespace

// On every test backend (Eigen here; thrust_omp in rolora_thrust_omp_tests, as
// "thrust_omp.hf models: ..."). The reference is stored in float32: in double the difference is
// its rounding.
TEST_CASE_TEMPLATE("hf models: the tiny checkpoints match PyTorch's logits and LoRA gradients", B,
                   ROLORA_TEST_BACKENDS) {
  const bool single = std::is_same_v<typename B::scalar, float>;
  for (const char* name : {"bert", "bert_fp16", "roberta", "llama", "llama_bf16", "llama3_scaled",
                           "qwen2", "qwen2_sharded"}) {
    check_against_pytorch<B>(name, single ? 1e-4 : 1e-6, single ? 1e-3 : 1e-5);
  }
}

TEST_CASE("hf models: a base held in bf16 matches PyTorch to bf16 rounding at half the bytes") {
  // llama_bf16's weights are bf16 values: holding them in bf16 loses nothing; what differs is
  // the activations, which oneDNN's bf16 kernel (where the CPU has one) rounds to bf16.
  const auto fp32 = models::load_hf_model<float>(tiny_dir("llama_bf16"));
  auto half = fp32;
  half.hold_base_in_bf16();
  CHECK(half.base_in_bf16());
  CHECK(double(half.bytes()) < 0.52 * double(fp32.bytes()));
  check_against_pytorch<rolora::eigen_backend<float>>("llama_bf16", 3e-2, 6e-2, true);
  check_against_pytorch<rolora::eigen_backend<float>>("qwen2", 3e-2, 6e-2, true);
}

TEST_CASE("hf models: a sharded checkpoint loads the same weights as the single file") {
  const auto one = models::load_hf_model<float>(tiny_dir("qwen2"));
  const auto two = models::load_hf_model<float>(tiny_dir("qwen2_sharded"));
  CHECK(one.embed_tokens == two.embed_tokens);
  CHECK(one.lm_head.weight == two.lm_head.weight);
  CHECK(one.layers[1].linears[2].bias == two.layers[1].linears[2].bias);
  CHECK(one.bytes() == two.bytes());
}

namespace {

models::hf_config tiny_config(models::family kind) {
  models::hf_config c;
  c.kind = kind;
  c.vocab_size = 23;
  c.hidden_size = 16;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = models::is_encoder(kind) ? 4 : 2;
  c.head_dim = 4;
  c.intermediate_size = 24;
  c.max_position_embeddings = 16;
  c.type_vocab_size = 2;
  c.pad_token_id = kind == models::family::roberta ? 1 : 0;
  c.num_labels = 3;
  c.tie_word_embeddings = kind == models::family::llama;
  c.qkv_bias = kind == models::family::qwen2;
  if (kind == models::family::llama) c.rope_scaling = models::llama3_rope_scaling{4, 1, 4, 8};
  return c;
}

// Loss of the batch under `adapters` (double, no gradients).
double loss_of(const models::hf_model<double>& m,
               const rolora::adapter_set<rolora::eigen_backend<double>>& a,
               const models::hf_batch& batch, const std::vector<std::int32_t>& labels) {
  models::hf_workspace<double> ws;
  return models::is_encoder(m.config.kind)
             ? models::classification_loss_and_grad(m, a, batch, labels, {}, nullptr, ws)
             : models::causal_lm_loss_and_grad(m, a, batch, labels, {}, nullptr, ws);
}

}  // namespace

TEST_CASE("hf models: gradients of LoRA on every linear role match central differences") {
  using backend = rolora::eigen_backend<double>;
  for (const auto kind : {models::family::bert, models::family::roberta, models::family::llama,
                          models::family::qwen2}) {
    CAPTURE(models::family_name(kind));
    const auto model = models::random_hf_model<double>(tiny_config(kind), 7);
    rolora::lora_config lora;
    lora.r = 2;
    lora.lora_alpha = 4;
    rolora::adapter_set<backend> adapters(models::adaptable_modules(model), lora, 11);
    std::uint32_t tag = 0;
    for (auto& [name, a] : adapters) a.B = rolora::test::random_matrix(a.B.rows(), 2, ++tag, 0.3);
    models::hf_batch batch;
    batch.seq_len = 5;
    batch.ids = {3, 4, 5, 6, 7, 8, 9, 10, 11, 2, 12, 13, 14, 2, 2};
    batch.attention_mask = {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0};
    if (kind == models::family::roberta)
      batch.ids = {3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 12, 13, 14, 1, 1};
    if (kind == models::family::bert)
      batch.token_types = {0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0};
    const bool encoder = models::is_encoder(kind);
    std::vector<std::int32_t> labels =
        encoder
            ? std::vector<std::int32_t>{2, 0, 1}
            : std::vector<std::int32_t>{3, 4, 5, 6, 7, 8, 9, 10, 11, -100, 12, 13, 14, -100, -100};
    if (encoder) {
      for (const auto& [name, lin] : model.head) {
        adapters.add_module_to_save(name + ".weight", lin.weight);
        adapters.add_module_to_save(name + ".bias", lin.bias);
      }
    }
    models::hf_workspace<double> ws;
    rolora::gradient_set<backend> grads;
    if (encoder) {
      models::classification_loss_and_grad(model, adapters, batch, labels, {true, true}, &grads,
                                           ws);
    } else {
      models::causal_lm_loss_and_grad(model, adapters, batch, labels, {true, true}, &grads, ws);
    }
    const double h = 1e-5;
    auto numeric = [&](double& x) {
      const double keep = x;
      x = keep + h;
      const double up = loss_of(model, adapters, batch, labels);
      x = keep - h;
      const double down = loss_of(model, adapters, batch, labels);
      x = keep;
      return (up - down) / (2 * h);
    };
    double worst = 0;
    for (auto& [name, a] : adapters) {
      CAPTURE(name);
      const auto& g = grads.adapters.at(name);
      for (const index_t i : {index_t(0), a.A.size() - 1}) {
        const double num = numeric(a.A.data()[i]);
        CHECK(g.dA.data()[i] == doctest::Approx(num).epsilon(1e-5).scale(1e-5));
        worst = std::max(worst, std::abs(g.dA.data()[i] - num));
      }
      for (const index_t i : {index_t(0), a.B.size() - 1}) {
        const double num = numeric(a.B.data()[i]);
        CHECK(g.dB.data()[i] == doctest::Approx(num).epsilon(1e-5).scale(1e-5));
      }
    }
    for (auto& [name, w] : adapters.modules_to_save()) {
      CAPTURE(name);
      const double num = numeric(w.data()[0]);
      CHECK(grads.modules_to_save.at(name).data()[0] ==
            doctest::Approx(num).epsilon(1e-5).scale(1e-5));
    }
    MESSAGE("worst |analytic - central difference| of dA: " << worst);
  }
}

TEST_CASE(
    "hf models: frozen factors get no gradient and the backward stops at the lowest adapter") {
  using backend = rolora::eigen_backend<double>;
  const auto model = models::random_hf_model<double>(tiny_config(models::family::llama), 3);
  rolora::lora_config lora;
  lora.r = 2;
  // Only layer 1's v_proj carries an adapter: training B changes no other gradient.
  rolora::adapter_set<backend> adapters({{models::linear_name(models::family::llama, 1, 2), 8, 16}},
                                        lora, 5);
  models::hf_batch batch{4, {1, 5, 6, 7, 1, 8, 9, 2}, {1, 1, 1, 1, 1, 1, 1, 0}, {}};
  const std::vector<std::int32_t> labels{1, 5, 6, 7, 1, 8, 9, -100};
  models::hf_workspace<double> ws;
  rolora::gradient_set<backend> grads;
  models::causal_lm_loss_and_grad(model, adapters, batch, labels, rolora::only_b, &grads, ws);
  REQUIRE(grads.adapters.size() == 1);
  const auto& g = grads.adapters.begin()->second;
  CHECK(g.dA.size() == 0);
  CHECK(g.dB.rows() == 8);
  CHECK(g.dB.norm() > 0);  // B = 0 at init, so only B's gradient is nonzero
}

#if defined(_OPENMP)  // rolora_thrust_omp_tests
// Shapes big enough that every primitive and GEMM of the Thrust backend runs in parallel (work
// above host_parallel_min): a step must give the same bits on 1 and 2 OpenMP threads.
TEST_CASE_TEMPLATE("hf models: a LoRA step gives the same bits on 1 and 2 OpenMP threads", backend,
                   ROLORA_TEST_FLOAT_BACKEND) {
  for (const auto kind : {models::family::roberta, models::family::qwen2}) {
    CAPTURE(models::family_name(kind));
    auto c = tiny_config(kind);
    c.vocab_size = 300, c.hidden_size = 128, c.head_dim = 32, c.intermediate_size = 256;
    c.max_position_embeddings = 80;
    const auto model = models::random_hf_model<float, backend>(c, 11);
    rolora::lora_config lora;
    lora.r = 4;
    models::lora_target_spec all;
    all.target_modules = {"all-linear"};
    rolora::adapter_set<backend> adapters(models::lora_targets(model, all), lora, 2);
    for (auto& [name, a] : adapters) {
      a.B = backend::from_host(rolora::test::random_matrix<float>(a.out_features(), 4, 9, 0.1));
    }
    models::hf_batch batch;
    batch.seq_len = 64;
    std::vector<std::int32_t> labels;
    for (std::int32_t i = 0; i < 8 * 64; ++i) batch.ids.push_back(2 + (i * 37) % 290);
    batch.attention_mask.assign(batch.ids.size(), 1);
    std::fill(batch.attention_mask.end() - 9, batch.attention_mask.end(), 0);  // padding
    if (models::is_encoder(kind)) {
      for (std::int32_t s = 0; s < 8; ++s) labels.push_back(s % 3);
    } else {
      labels = batch.ids;
    }
    const auto step = [&](int threads) {
      const int before = omp_get_max_threads();
      omp_set_num_threads(threads);
      models::hf_workspace<float, backend> ws;
      rolora::gradient_set<backend> g;
      const double loss = models::is_encoder(kind)
                              ? models::classification_loss_and_grad(model, adapters, batch, labels,
                                                                     {true, true}, &g, ws)
                              : models::causal_lm_loss_and_grad(model, adapters, batch, labels,
                                                                {true, true}, &g, ws);
      omp_set_num_threads(before);
      return std::pair{loss, std::move(g)};
    };
    const auto [l1, g1] = step(1);
    const auto [l2, g2] = step(2);
    CHECK(l1 == l2);
    for (const auto& [name, g] : g1.adapters) {
      CAPTURE(name);
      CHECK(backend::to_host(g.dA) == backend::to_host(g2.adapters.at(name).dA));
      CHECK(backend::to_host(g.dB) == backend::to_host(g2.adapters.at(name).dB));
    }
  }
}
#endif

namespace {

struct temp_model_dir {
  std::filesystem::path path;
  explicit temp_model_dir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("rolora_test_models_" + name)) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~temp_model_dir() { std::filesystem::remove_all(path); }
  void write(const std::string& file, const std::string& text) const {
    std::ofstream(path / file) << text;
  }
};

std::string config_with(const std::string& source, const std::string& field,
                        const std::string& value) {
  std::ifstream in(tiny_dir(source) / "config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto at = text.find("\"" + field + "\":");
  if (at == std::string::npos)
    return text.substr(0, 1) + "\n  \"" + field + "\": " + value + "," + text.substr(1);
  const auto end = text.find_first_of(",\n}", text.find(':', at) + 2);
  return text.substr(0, text.find(':', at) + 2) + value + text.substr(end);
}

}  // namespace

TEST_CASE("hf models: configs rolora does not implement are refused by field and value") {
  const auto refused = [](const std::string& source, const std::string& field,
                          const std::string& value, const std::string& expected) {
    CAPTURE(field);
    const auto bytes = config_with(source, field, value);
    const std::vector<std::uint8_t> data(bytes.begin(), bytes.end());
    CHECK_THROWS_WITH_AS(models::parse_hf_config(data, "x/config.json"),
                         doctest::Contains(expected.c_str()), rolora::config_error);
  };
  refused("llama", "model_type", "\"mistral\"", "field 'model_type' = \"mistral\" is not a family");
  refused("llama", "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}",
          "type 'yarn' is not implemented");
  refused("llama", "hidden_act", "\"gelu\"", "'hidden_act' = \"gelu\" is not implemented");
  refused("llama", "num_key_value_heads", "3", "must divide num_attention_heads = 4");
  refused("llama", "mlp_bias", "true", "'mlp_bias' = true is not implemented");
  refused("qwen2", "use_sliding_window", "true", "'use_sliding_window' = true");
  refused("bert", "position_embedding_type", "\"relative_key\"", "absolute positions only");
  refused("bert", "hidden_size", "\"64\"", "'hidden_size' must be an integer");
  refused("roberta", "num_hidden_layers", "0", "'num_hidden_layers' must be in [1, 2^31]");
  const std::string broken = "{\"model_type\": \"bert\",";
  CHECK_THROWS_WITH_AS(
      models::parse_hf_config(std::vector<std::uint8_t>(broken.begin(), broken.end()),
                              "x/config.json"),
      doctest::Contains("x/config.json: not valid JSON"), rolora::config_error);
  // A field the family needs and has no default for.
  auto text = config_with("llama", "vocab_size", "null");
  CHECK_THROWS_WITH_AS(
      models::parse_hf_config(std::vector<std::uint8_t>(text.begin(), text.end()), "x/config.json"),
      doctest::Contains("'vocab_size' is missing"), rolora::config_error);
}

TEST_CASE("hf models: a missing or misshapen tensor or a hostile shard map names file and tensor") {
  const temp_model_dir dir("broken");
  std::filesystem::copy_file(tiny_dir("llama") / "config.json", dir.path / "config.json");
  // Every tensor of the tiny Llama but one, and one of the wrong shape.
  const auto source = rolora::read_safetensors(tiny_dir("llama") / "model.safetensors");
  std::map<std::string, rolora::tensor_data> tensors;
  for (const auto& name : source.names()) {
    if (name == "model.layers.1.mlp.up_proj.weight") continue;
    const auto t = source.tensor(name);
    const auto values = rolora::to_vector<float>(t);
    tensors.emplace(name, rolora::make_tensor(std::span<const float>(values), t.shape));
  }
  const std::vector<float> ones(64, 1.0f);
  tensors["model.layers.0.input_layernorm.weight"] =
      rolora::make_tensor(std::span<const float>(ones), {8, 8});
  rolora::write_safetensors(dir.path / "model.safetensors", tensors);
  CHECK_THROWS_WITH_AS(
      models::load_hf_model<float>(dir.path),
      doctest::Contains("model.safetensors: tensor 'model.layers.0.input_layernorm.weight': "
                        "expected shape [64], got [8, 8]"),
      rolora::shape_error);
  tensors["model.layers.0.input_layernorm.weight"] =
      rolora::make_tensor(std::span<const float>(ones), {64});
  rolora::write_safetensors(dir.path / "model.safetensors", tensors);
  CHECK_THROWS_WITH_AS(models::load_hf_model<float>(dir.path),
                       doctest::Contains("'model.layers.1.mlp.up_proj.weight' is not in the file"),
                       rolora::shape_error);

  // A shard map that points out of the directory, and one that lacks a tensor.
  std::filesystem::remove(dir.path / "model.safetensors");
  dir.write("model.safetensors.index.json",
            R"({"weight_map": {"model.embed_tokens.weight": "../model.safetensors"}})");
  CHECK_THROWS_WITH_AS(models::load_hf_model<float>(dir.path),
                       doctest::Contains("is not a file name in"), rolora::config_error);
  dir.write("model.safetensors.index.json",
            R"({"weight_map": {"model.embed_tokens.weight": "a.safetensors"}})");
  CHECK_THROWS_WITH_AS(
      models::load_hf_model<float>(dir.path),
      doctest::Contains("'model.layers.0.self_attn.q_proj.weight' is not in weight_map"),
      rolora::shape_error);
  std::filesystem::remove(dir.path / "model.safetensors.index.json");
  CHECK_THROWS_WITH_AS(models::load_hf_model<float>(dir.path),
                       doctest::Contains("no model.safetensors"), rolora::config_error);
}

namespace {

// Six clients of four sequences each: random ids and a class (encoders), or one counting
// sequence per client to learn to continue (decoders).
template <class B>
std::vector<models::hf_task<float, B>> random_clients(const models::hf_model<float, B>& model) {
  std::vector<models::hf_task<float, B>> clients;
  const auto& c = model.config;
  const bool encoder = models::is_encoder(c.kind);
  for (std::uint32_t k = 0; k < 6; ++k) {
    const rolora::random_stream rs(5, rolora::stream::data, k);
    models::hf_examples ex;
    ex.tokens.seq_len = 6;
    for (std::uint64_t i = 0; i < 24; ++i) {
      ex.tokens.ids.push_back(encoder ? 3 + std::int32_t(rs.uniform(i) * double(c.vocab_size - 3))
                                      : std::int32_t(3 + k + 2 * (i % 6)));
    }
    ex.tokens.attention_mask.assign(24, 1);
    if (encoder) {
      for (int s = 0; s < 4; ++s) ex.labels.push_back(std::int32_t((k + std::uint32_t(s)) % 3));
    } else {
      ex.labels = ex.tokens.ids;
    }
    clients.emplace_back(model, std::move(ex));
  }
  return clients;
}

}  // namespace

TEST_CASE_TEMPLATE("hf models: RoLoRA rounds on each tiny model learn, and PEFT keeps the adapters",
                   backend, ROLORA_TEST_FLOAT_BACKEND) {
  for (const std::string name : {"bert", "roberta", "llama", "qwen2"}) {
    CAPTURE(name);
    const auto model = models::load_hf_model<float, backend>(tiny_dir(name));
    const bool encoder = models::is_encoder(model.config.kind);
    auto clients = random_clients(model);
    rolora::lora_config lora;
    lora.r = 4, lora.lora_alpha = 8;
    models::lora_target_spec targets;
    targets.target_modules = {"all-linear"};
    targets.layers_to_transform = {1};
    const auto modules = models::lora_targets(model, targets);
    CHECK(modules.size() == models::linears_per_layer(model.config.kind));
    rolora::adapter_set<backend> start(modules, lora, 3);
    if (encoder) models::add_head_to_save(model, start);
    rolora::federation_config config;
    config.num_rounds = 6, config.local_steps = 4;
    config.local_optimizer = rolora::adamw{.lr = 0.01};
    rolora::federation<backend, rolora::alternating, rolora::fedavg> fed({}, {}, config, start);
    double before = 0, after = 0;
    for (auto& t : clients) before += t.loss(start);
    fed.run(clients);
    for (auto& t : clients) after += t.loss(fed.global());
    MESSAGE(name << ": mean client loss " << before / 6 << " -> " << after / 6);
    CHECK(after < 0.9 * before);

    const temp_model_dir dir("peft_" + name);
    rolora::peft_options options;
    options.base_model_name_or_path = tiny_dir(name).string();
    options.task_type = encoder ? "SEQ_CLS" : "CAUSAL_LM";
    rolora::save_peft_adapter(dir.path / "adapter", fed.global(), lora, options);
    const auto loaded = rolora::load_peft_adapter<backend>(dir.path / "adapter", fed.global());
    CHECK(loaded.task_type == options.task_type);
    models::hf_workspace<float, backend> ws1, ws2;
    const auto& batch = clients[0].data().tokens;
    const host_matrix<float> ours =
        backend::to_host(encoder ? models::classification_logits(model, fed.global(), batch, ws1)
                                 : models::causal_lm_logits(model, fed.global(), batch, ws1));
    const host_matrix<float> theirs =
        backend::to_host(encoder ? models::classification_logits(model, loaded.adapters, batch, ws2)
                                 : models::causal_lm_logits(model, loaded.adapters, batch, ws2));
    CHECK(ours == theirs);
  }
}

TEST_CASE("hf models: a PEFT adapter trained in Python loads as a federation's starting point") {
  using backend = rolora::eigen_backend<float>;
  for (const char* name : {"bert", "llama"}) {
    CAPTURE(name);
    reference_case<backend> c(name);
    rolora::lora_config lora;
    lora.r = 4;
    rolora::adapter_set<backend> like(models::lora_targets(c.model, {}), lora, 1);
    if (models::is_encoder(c.model.config.kind)) models::add_head_to_save(c.model, like);
    const auto peft =
        rolora::load_peft_adapter<backend>(tiny_dir(std::string(name) + "_peft"), like);
    CHECK(peft.adapters.size() == c.adapters.size());
    for (const auto& [module, a] : c.adapters) {
      CHECK(peft.adapters.at(module).A == a.A);
      CHECK(peft.adapters.at(module).B == a.B);
      CHECK(peft.adapters.at(module).scaling == a.scaling);
    }
    models::hf_workspace<float> ws;
    const auto& logits = models::is_encoder(c.model.config.kind)
                             ? models::classification_logits(c.model, peft.adapters, c.batch, ws)
                             : models::causal_lm_logits(c.model, peft.adapters, c.batch, ws);
    CHECK(relative_error(logits, c.expected("logits")) <= 1e-4);
  }
}

TEST_CASE(
    "hf models: PEFT target specs select modules as PEFT does, and refuse what matches nothing") {
  const auto model = models::random_hf_model<float>(tiny_config(models::family::qwen2), 1);
  models::lora_target_spec spec;
  CHECK(models::lora_targets(model, spec).size() == 4);  // q_proj, v_proj in 2 layers
  spec.target_modules = {"self_attn.o_proj", "down_proj"};
  const auto picked = models::lora_targets(model, spec);
  REQUIRE(picked.size() == 4);
  CHECK(picked[0].name == "model.layers.0.self_attn.o_proj");
  CHECK(picked[1].name == "model.layers.0.mlp.down_proj");
  spec.target_modules = {"proj"};  // a suffix, but not a whole name component
  CHECK_THROWS_WITH_AS(models::lora_targets(model, spec),
                       doctest::Contains("'proj' matches no linear of qwen2"),
                       rolora::config_error);
  spec.target_modules.clear();
  spec.target_regex = R"(.*layers\.1\.self_attn\.(k|v)_proj)";
  const auto by_regex = models::lora_targets(model, spec);
  REQUIRE(by_regex.size() == 2);
  CHECK(by_regex[1].name == "model.layers.1.self_attn.v_proj");
  CHECK(by_regex[1].out_features == 8);  // 2 kv heads x head_dim 4
  spec.target_regex.reset();
  spec.layers_to_transform = {2};
  CHECK_THROWS_WITH_AS(models::lora_targets(model, spec),
                       doctest::Contains("layer 2 outside [0, 2)"), rolora::config_error);
}
