// Writes the seed corpus of every fuzz target, made by rolora's own writers, to
// <out>/<target>/seed_<n>:   rolora_fuzz_seeds <out>
// A new target adds one line to `generators` (seeds are optional: libFuzzer also starts empty).
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <rolora/federated/message.hpp>
#include <rolora/grpc/frame.hpp>
#include <rolora/io/npy.hpp>
#include <rolora/secagg/messages.hpp>

#include "fuzz_support.hpp"

namespace {

using namespace rolora;
using fuzz::bytes_t;

bytes_t text_bytes(const std::string& s) { return bytes_t(s.begin(), s.end()); }

// Files of every floating dtype, shapes of rank 0 to 3, empty tensors, metadata, integer dtypes.
std::vector<bytes_t> safetensors_seeds() {
  std::vector<bytes_t> out;
  const std::vector<float> v = {1.0f, -2.5f, 0.0f, 3.25f, 65504.0f, 1e-8f};
  for (auto dtype : {tensor_dtype::f32, tensor_dtype::f64, tensor_dtype::f16, tensor_dtype::bf16}) {
    out.push_back(
        serialize_safetensors({{"w", make_tensor<float>(v, {2, 3}, dtype)}}, {{"format", "pt"}}));
  }
  out.push_back(serialize_safetensors({}));
  out.push_back(
      serialize_safetensors({{"scalar", make_tensor<float>(std::span(v).first(1), {})},
                             {"cube", make_tensor<float>(std::span(v).first(0), {2, 0, 3})},
                             {"ids", tensor_data{tensor_dtype::i64, {2}, bytes_t(16, 1)}},
                             {"mask", tensor_data{tensor_dtype::boolean, {3}, {1, 0, 1}}}},
                            {{"a", "b"}, {"rolora.recipe", "{\"x\":1}"}}));
  return out;
}

struct peft_variant {
  std::string config;
  bytes_t weights;
};

// The directory save_peft_adapter writes for the fuzz model, and variants of its config.
std::vector<peft_variant> peft_variants() {
  const auto dir = fuzz::scratch_dir() / "seeds";
  const lora_config c = fuzz::peft_config();
  save_peft_adapter(dir, fuzz::peft_set(c), c);
  const auto config_bytes = read_file_bytes(dir / peft_config_file);
  const std::string config(config_bytes.begin(), config_bytes.end());
  const bytes_t weights = read_file_bytes(dir / peft_weights_file);
  std::vector<peft_variant> out = {{config, weights}};
  auto json = nlohmann::ordered_json::parse(config);
  for (const auto& [field, value] : std::vector<std::pair<std::string, nlohmann::ordered_json>>{
           {"use_rslora", true},
           {"init_lora_weights", "gaussian"},
           {"target_modules", "layers\\.\\d+\\.attention\\.(q|v)"},
           {"rank_pattern", {{"attention\\.v", 2}, {"(?:v)", 3}}},
           {"alpha_pattern", {{"layers.{1,3}attention.v", 3.5}}},
           {"lora_alpha", 8.5}}) {
    auto variant = json;
    variant[field] = value;
    out.push_back({variant.dump(2), weights});
  }
  return out;
}

std::vector<bytes_t> peft_config_seeds() {
  std::vector<bytes_t> out;
  for (const auto& v : peft_variants()) out.push_back(text_bytes(v.config));
  return out;
}

std::vector<bytes_t> peft_dir_seeds() {
  std::vector<bytes_t> out;
  for (const auto& v : peft_variants()) {
    bytes_t seed = text_bytes(v.config);
    seed.push_back(fuzz::peft_dir_separator);
    seed.insert(seed.end(), v.weights.begin(), v.weights.end());
    out.push_back(std::move(seed));
  }
  return out;
}

// .npy files as io/npy.hpp writes them (as np.save does): 1-d and 2-d, f4 and f8.
std::vector<bytes_t> npy_seeds() {
  std::vector<bytes_t> out;
  const auto add = [&](const std::string& s) { out.push_back(bytes_t(s.begin(), s.end())); };
  add(npy_bytes(xt::xarray<double>{1.0, -2.5, 3.25}));
  add(npy_bytes(xt::xarray<float>{{1.0f, 2.0f}, {3.0f, 4.0f}, {5.0f, 6.0f}}));
  add(npy_bytes(Eigen::MatrixXd::Identity(3, 2)));
  return out;
}

// Upload messages of a client of the PEFT model, carrying A, B and both.
std::vector<bytes_t> message_seeds() {
  client_update<fuzz::backend_t> up;
  up.round = 3;
  up.client = 1;
  up.num_samples = 40;
  up.loss = 0.25;
  up.adapters = fuzz::peft_set(fuzz::peft_config());
  std::vector<bytes_t> out;
  for (const factor_set f :
       {factor_set{true, false}, factor_set{false, true}, factor_set{true, true}})
    out.push_back(encode_upload(up, f));
  return out;
}

// Streams of [u16 length][chunk] records: a message in one chunk, one in many, two in a row.
std::vector<bytes_t> grpc_frames_seeds() {
  std::vector<bytes_t> out;
  for (std::size_t chunk : {std::size_t(1000), std::size_t(7)}) {
    bytes_t stream;
    std::uint64_t number = 0;
    for (const std::string text : {"a download's bytes", ""}) {
      const auto kind = number == 0 ? grpc::message_kind::download : grpc::message_kind::finish;
      grpc::for_each_chunk({kind, 2, 99, 1}, number++, text_bytes(text), chunk, [&](auto c) {
        stream.push_back(std::uint8_t(c.size()));
        stream.push_back(std::uint8_t(c.size() >> 8));
        stream.insert(stream.end(), c.begin(), c.end());
      });
    }
    out.push_back(stream);
  }
  return out;
}

// One message of each stage of a secure-aggregation round (round 3; client 0's bundle for 1).
std::vector<bytes_t> secagg_messages_seeds() {
  using namespace secagg;
  const round_setup setup{3, 2, complete_graph(3)};
  client a(0, setup), b(1, setup);
  b.receive(a.share_out().at(0));
  const std::vector<std::uint64_t> y{1, 2, 3};
  return {encode_advertise({0, a.mask_public_key(), a.encryption_public_key()}, 3),
          encode_shares(a.share_out().at(0), 3),
          encode_sealed_shares(a, a.share_out().at(0), b.encryption_public_key(), 3),
          encode_masked_input(0, y, 3),
          encode_unmask_request({{0, 1}, {2}}, 3),
          encode_unmask_answer(b.answer({{0}, {}}), 3)};
}

// target name (fuzz_<name>.cpp) -> its seeds.
// Configs of the four families, one with Llama 3's rope_scaling.
std::vector<bytes_t> hf_config_seeds() {
  const std::string common = R"("hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 128, "max_position_embeddings": 64, "vocab_size": 100)";
  return {text_bytes(R"({"model_type": "bert", "type_vocab_size": 2, "num_labels": 3, )" + common +
                     "}"),
          text_bytes(R"({"model_type": "roberta", "pad_token_id": 1, )" + common + "}"),
          text_bytes(R"({"model_type": "llama", "num_key_value_heads": 2, "rope_scaling":
              {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 48}, )" +
                     common + "}"),
          text_bytes(R"({"model_type": "qwen2", "tie_word_embeddings": true, )" + common + "}")};
}

// A WordPiece (BERT) and a BPE (byte-level, RoBERTa-style) tokenizer.json.
std::vector<bytes_t> tokenizer_json_seeds() {
  return {text_bytes(R"({"added_tokens": [{"id": 0, "content": "[UNK]", "special": true,
    "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
    {"id": 1, "content": "[CLS]", "special": true, "single_word": false, "lstrip": false,
    "rstrip": false, "normalized": false}, {"id": 2, "content": "[SEP]", "special": true,
    "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}],
    "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
    "strip_accents": null, "lowercase": true}, "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
    "decoder": null, "model": {"type": "WordPiece", "unk_token": "[UNK]",
    "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
    "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "un": 3, "##aff": 4, "##able": 5, "a": 6}}})"),
          text_bytes(R"({"added_tokens": [], "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
    "use_regex": true}, "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2],
    "cls": ["<s>", 1], "trim_offsets": true, "add_prefix_space": false}, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
    "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
    "byte_fallback": false, "ignore_merges": false,
    "vocab": {"<s>": 1, "</s>": 2, "H": 3, "e": 4, "l": 5, "o": 6, "He": 7, "ll": 8},
    "merges": ["H e", "l l"]}})")};
}

const std::map<std::string, std::function<std::vector<bytes_t>()>> generators = {
    {"hf_config", hf_config_seeds},
    {"grpc_frames", grpc_frames_seeds},
    {"secagg_messages", secagg_messages_seeds},
    {"tokenizer_json", tokenizer_json_seeds},
    {"safetensors_parse", safetensors_seeds},
    {"peft_config", peft_config_seeds},
    {"peft_dir", peft_dir_seeds},
    {"npy", npy_seeds},
    {"message", message_seeds},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR (writes OUT_DIR/<target>/seed_<n>)\n", argv[0]);
    return 2;
  }
  for (const auto& [target, generate] : generators) {
    const auto dir = std::filesystem::path(argv[1]) / target;
    std::filesystem::create_directories(dir);
    const auto seeds = generate();
    for (std::size_t i = 0; i < seeds.size(); ++i) {
      write_file_bytes(dir / ("seed_" + std::to_string(i)), seeds[i]);
    }
    std::printf("rolora_fuzz_seeds: %zu seeds for %s\n", seeds.size(), target.c_str());
  }
  return 0;
}
