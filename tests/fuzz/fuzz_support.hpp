// Shared by the libFuzzer targets (fuzz_<name>.cpp) and the seed generator (seed_corpus.cpp):
// the one rule every target checks, and the small PEFT model the PEFT targets load.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/io/peft.hpp>
#include <rolora/io/safetensors.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora::fuzz {

using bytes_t = std::vector<std::uint8_t>;

// Runs `f` on one input: a rolora::error is the expected answer to bad bytes; any other
// exception escapes and libFuzzer reports it as a crash, like a sanitizer finding or a hang.
template <class F>
int run(F&& f) {
  try {
    f();
  } catch (const rolora::error&) {
  }
  return 0;
}

// The PEFT model of the PEFT targets: two adapted linears (ranks 4 and 2 through rank_pattern)
// and a classifier head saved whole, as in tests/test_io.cpp.
using backend_t = eigen_backend<float>;
inline const std::vector<module_shape> peft_modules = {{"layers.0.attention.q", 16, 8},
                                                       {"layers.0.attention.v", 12, 8}};
inline const std::vector<module_shape> peft_saved = {{"classifier.weight", 3, 8},
                                                     {"classifier.bias", 3, 1}};

inline lora_config peft_config() {
  lora_config c;
  c.r = 4;
  c.lora_alpha = 8;
  c.rank_pattern["layers.0.attention.v"] = 2;
  c.alpha_pattern["layers.0.attention.v"] = 3.5;
  return c;
}

inline adapter_set<backend_t> peft_set(const lora_config& c) {
  adapter_set<backend_t> set(peft_modules, c, 7);
  for (const auto& s : peft_saved)
    set.add_module_to_save(s.name, backend_t::zeros(s.out_features, s.in_features));
  return set;
}

// A directory of this process's own under the temp dir, removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("rolora_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(
          std::filesystem::temp_directory_path() / ("rolora_fuzz_" + std::to_string(::getpid())),
          ignored);
    });
    return d;
  }();
  return dir;
}

inline void write_bytes(const std::filesystem::path& p, std::span<const std::uint8_t> b) {
  write_file_bytes(p, b);
}

// The peft_dir target's input: adapter_config.json, one 0xFF byte (never in UTF-8 JSON), then
// adapter_model.safetensors.
inline constexpr std::uint8_t peft_dir_separator = 0xFF;

}  // namespace rolora::fuzz
