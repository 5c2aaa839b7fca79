// peft_adapters: adapters saved as a Hugging Face PEFT directory (adapter_config.json +
// adapter_model.safetensors, what peft.PeftModel.from_pretrained loads onto a matching model) and
// loaded back. Two attention projections of a Llama-like layer (the v projection at its own rank,
// PEFT's rank_pattern) and a trained classifier head (modules_to_save), saved under the model's
// own module paths; fails unless the keys are PEFT's and every loaded value, rank and scaling is
// the saved one, bit for bit (F32 files, float adapters).
#include <cstdio>
#include <filesystem>
#include <rolora/io/peft.hpp>
#include <rolora/io/safetensors.hpp>
#include <rolora/rolora.hpp>
#include <string>
#include <vector>

using backend = rolora::eigen_backend<float>;

int main() {
  const std::vector<rolora::module_shape> modules = {{"layers.0.self_attn.q_proj", 16, 16},
                                                     {"layers.0.self_attn.v_proj", 16, 16}};
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 4, lora.rank_pattern = {{"layers.0.self_attn.v_proj", 4}};
  rolora::adapter_set<backend> adapters(modules, lora, /*seed=*/1);
  for (auto& [name, a] : adapters) a.B.setRandom();  // as if trained (B = 0 at init)
  adapters.add_module_to_save("score.weight", backend::matrix::Random(3, 16));

  // BEGIN excerpt (docs/examples.md)
  rolora::peft_options options;
  options.module_path = [](const std::string& name) {  // rolora's names -> the model's paths
    return name.starts_with("layers.") ? "model." + name : name;  // the decoder is "model."
  };
  options.base_model_name_or_path = "my-org/my-llama";
  options.task_type = "SEQ_CLS";
  rolora::save_peft_adapter("peft_adapter", adapters, lora, options);

  // Loading checks every key, rank and shape against the modules the model has.
  const auto loaded = rolora::load_peft_adapter<backend>("peft_adapter", modules,
                                                         {{"score.weight", 3, 16}}, options);
  // END excerpt

  bool same = loaded.config.rank_for("layers.0.self_attn.v_proj") == 4 &&
              loaded.config.lora_alpha == 4 && loaded.task_type == "SEQ_CLS";
  for (const auto& [name, a] : adapters) {
    const auto& b = loaded.adapters.at(name);
    same = same && a.A == b.A && a.B == b.B && a.scaling == b.scaling;
  }
  same = same && adapters.modules_to_save().at("score.weight") ==
                     loaded.adapters.modules_to_save().at("score.weight");

  const auto file = rolora::read_safetensors("peft_adapter/adapter_model.safetensors");
  for (const auto& key : file.names()) std::printf("  %s\n", key.c_str());
  const bool peft_keys =
      file.contains("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight") &&
      file.contains("base_model.model.score.weight") && file.names().size() == 5;
  std::printf("round trip %s; keys %s\n", same ? "exact" : "NOT exact",
              peft_keys ? "PEFT's" : "wrong");
  return same && peft_keys ? 0 : 1;
}
