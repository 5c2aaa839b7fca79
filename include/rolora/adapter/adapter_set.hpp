// The trainable state of a model under LoRA: its adapters, keyed by module name
// ("layers.0.attention.q", ...), and its dense trainable modules (PEFT's modules_to_save, e.g. a
// new classifier head). Both are iterated in name order so that every loop over them is
// deterministic.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <rolora/adapter/config.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <string>
#include <vector>

namespace rolora {

// The shape of one adapted module: its base weight is [out_features, in_features].
struct module_shape {
  std::string name;
  index_t out_features;
  index_t in_features;
};

template <backend Backend>
class adapter_set {
 public:
  using adapter_type = lora_adapter<Backend>;
  using map_type = std::map<std::string, adapter_type>;
  using matrix = typename Backend::matrix;

  adapter_set() = default;

  // One adapter per module, with rank, scaling and init from `config` (rank_pattern and
  // alpha_pattern apply); module k in name order draws from adapter-init sub-stream k.
  adapter_set(const std::vector<module_shape>& modules, const lora_config& config,
              std::uint64_t seed) {
    std::map<std::string, const module_shape*> by_name;
    for (const auto& m : modules) {
      if (!by_name.emplace(m.name, &m).second) {
        detail::raise<config_error>("module '", m.name, "' listed twice");
      }
    }
    std::uint32_t k = 0;
    for (const auto& [name, m] : by_name) {
      modules_.emplace(
          name, make_lora<Backend>(name, m->out_features, m->in_features, config.rank_for(name),
                                   config.scaling_for(name), config.init_lora_weights, seed, k++));
    }
  }

  void insert(const std::string& name, adapter_type a) {
    if (saved_.count(name) || !modules_.emplace(name, std::move(a)).second) {
      detail::raise<config_error>("module '", name, "' is already in the set");
    }
  }

  // A dense module that trains fully (PEFT's modules_to_save): it trains in every round in which
  // any LoRA factor trains, travels up and down with the shared factors, and the server takes its
  // sample-weighted mean (exact: the model is linear in it).
  void add_module_to_save(const std::string& name, matrix weight) {
    if (Backend::rows(weight) < 1 || Backend::cols(weight) < 1) {
      detail::raise<config_error>(
          "module to save '", name, "' must be non-empty, got ",
          detail::shape_string(Backend::rows(weight), Backend::cols(weight)));
    }
    if (modules_.count(name) || !saved_.emplace(name, std::move(weight)).second) {
      detail::raise<config_error>("module '", name, "' is already in the set");
    }
  }
  std::map<std::string, matrix>& modules_to_save() { return saved_; }
  const std::map<std::string, matrix>& modules_to_save() const { return saved_; }

  adapter_type& at(const std::string& name) { return modules_.at(checked(name)); }
  const adapter_type& at(const std::string& name) const { return modules_.at(checked(name)); }
  bool contains(const std::string& name) const { return modules_.count(name) != 0; }

  std::size_t size() const { return modules_.size(); }
  bool empty() const { return modules_.empty(); }
  auto begin() { return modules_.begin(); }
  auto end() { return modules_.end(); }
  auto begin() const { return modules_.begin(); }
  auto end() const { return modules_.end(); }

  // Number of scalars in the given factors over all modules, plus the modules to save whenever
  // any factor is named (they travel with every upload and download).
  std::size_t num_parameters(factor_set which) const {
    std::size_t n = 0;
    for (const auto& [name, a] : modules_) {
      if (which.a) n += static_cast<std::size_t>(a.rank() * a.in_features());
      if (which.b) n += static_cast<std::size_t>(a.out_features() * a.rank());
    }
    if (which.any()) {
      for (const auto& [name, w] : saved_)
        n += static_cast<std::size_t>(Backend::rows(w) * Backend::cols(w));
    }
    return n;
  }
  // Bytes those parameters take on the wire (uncompressed scalars).
  std::size_t bytes(factor_set which) const {
    return num_parameters(which) * sizeof(typename Backend::scalar);
  }

 private:
  const std::string& checked(const std::string& name) const {
    if (!modules_.count(name)) {
      detail::raise<config_error>("no adapter for module '", name, "'");
    }
    return name;
  }

  map_type modules_;
  std::map<std::string, matrix> saved_;  // modules_to_save, name -> weight
};

}  // namespace rolora
