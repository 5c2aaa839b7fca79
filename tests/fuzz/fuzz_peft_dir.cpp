// libFuzzer target: a whole PEFT directory from one input, adapter_config.json and
// adapter_model.safetensors separated by the first 0xFF byte (fuzz_support.hpp), loaded for
// the model of fuzz_support.hpp.
#include <algorithm>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora;
  const std::span<const std::uint8_t> input(data, size);
  const auto split = std::find(input.begin(), input.end(), fuzz::peft_dir_separator);
  const auto dir = fuzz::scratch_dir() / "dir";
  std::filesystem::create_directories(dir);
  return fuzz::run([&] {
    fuzz::write_bytes(dir / peft_config_file, std::span(input.begin(), split));
    fuzz::write_bytes(dir / peft_weights_file, split == input.end()
                                                   ? std::span(input.end(), input.end())
                                                   : std::span(split + 1, input.end()));
    (void)load_peft_adapter<fuzz::backend_t>(dir, fuzz::peft_modules, fuzz::peft_saved);
  });
}
