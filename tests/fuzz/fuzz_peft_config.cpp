// libFuzzer target: load_peft_adapter with arbitrary bytes as adapter_config.json next to a
// valid adapter_model.safetensors (the model of fuzz_support.hpp), so every config field, the
// rank_pattern / alpha_pattern regexes and the rank checks against the module shapes are reached.
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora;
  static const std::filesystem::path dir = [] {
    const auto d = fuzz::scratch_dir() / "config";
    save_peft_adapter(d, fuzz::peft_set(fuzz::peft_config()), fuzz::peft_config());
    return d;
  }();
  return fuzz::run([&] {
    fuzz::write_bytes(dir / peft_config_file, std::span(data, size));
    (void)load_peft_adapter<fuzz::backend_t>(dir, fuzz::peft_modules, fuzz::peft_saved);
  });
}
