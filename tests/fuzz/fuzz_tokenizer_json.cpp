// libFuzzer target: a tokenizer.json (rolora/tokenizers/tokenizer.hpp) of arbitrary bytes, and
// when it loads, the encoding of a fixed text with and without special tokens and as a pair.
#include <rolora/tokenizers/tokenizer.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return rolora::fuzz::run([&] {
    const auto tok = rolora::tokenizers::tokenizer::from_json_text(
        std::string_view(reinterpret_cast<const char*>(data), size));
    (void)tok.encode("Hello, wörld! 12345 [CLS] <s> \xF0\x9F\x98\x80  tabs\there");
    (void)tok.encode("unaffable", false);
    (void)tok.encode_pair("a question?", "an answer.");
  });
}
