// LoRA hyper-parameters with PEFT's field names (peft.LoraConfig), so configurations read the
// same in rolora and in Python.
#pragma once
#include <cmath>
#include <map>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <string>
#include <vector>

namespace rolora {

// PEFT's init_lora_weights: true (Kaiming-uniform A, zero B) or "gaussian" (A ~ N(0, (1/r)^2),
// zero B). In both, B = 0 so the adapted model starts equal to the base model.
enum class lora_init { kaiming_uniform, gaussian };

struct lora_config {
  index_t r = 8;
  double lora_alpha = 8.0;
  double lora_dropout = 0.0;
  std::vector<std::string> target_modules;
  bool use_rslora = false;
  lora_init init_lora_weights = lora_init::kaiming_uniform;
  std::map<std::string, index_t> rank_pattern;  // module name -> its own r
  std::map<std::string, double> alpha_pattern;  // module name -> its own lora_alpha

  index_t rank_for(const std::string& module) const {
    const auto it = rank_pattern.find(module);
    return it == rank_pattern.end() ? r : it->second;
  }
  double alpha_for(const std::string& module) const {
    const auto it = alpha_pattern.find(module);
    return it == alpha_pattern.end() ? lora_alpha : it->second;
  }
  // s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023).
  double scaling_for(const std::string& module) const {
    const auto rank = static_cast<double>(rank_for(module));
    return alpha_for(module) / (use_rslora ? std::sqrt(rank) : rank);
  }
};

}  // namespace rolora
