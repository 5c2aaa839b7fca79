// libFuzzer target: a Hugging Face config.json (rolora/models/hf_config.hpp) of arbitrary bytes:
// every field's type and range checks, rope_scaling, the family rules; a refusal is an error.
#include <rolora/models/hf_config.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return rolora::fuzz::run(
      [&] { (void)rolora::models::parse_hf_config(std::span(data, size), "config.json"); });
}
