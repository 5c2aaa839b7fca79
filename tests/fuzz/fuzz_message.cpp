// libFuzzer target: decode_upload (federated/message.hpp) on arbitrary bytes against the PEFT
// model of fuzz_support.hpp as the client's download. A message that decodes must encode again
// into bytes that decode to the same upload.
#include <cstdlib>
#include <cstring>
#include <rolora/federated/message.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora;
  static const adapter_set<fuzz::backend_t> reference = fuzz::peft_set(fuzz::peft_config());
  return fuzz::run([&] {
    const auto up = decode_upload<fuzz::backend_t>(std::span(data, size), reference);
    const auto again =
        decode_upload<fuzz::backend_t>(encode_upload(up, factor_set{true, true}), reference);
    if (again.round != up.round || again.client != up.client) std::abort();
    for (const auto& [name, a] : up.adapters) {
      const auto& b = again.adapters.at(name);
      if (a.A.size() != b.A.size() || a.B.size() != b.B.size()) std::abort();
      for (Eigen::Index i = 0; i < a.A.size(); ++i)
        if (std::memcmp(&a.A.data()[i], &b.A.data()[i], sizeof(float)) != 0) std::abort();
      for (Eigen::Index i = 0; i < a.B.size(); ++i)
        if (std::memcmp(&a.B.data()[i], &b.B.data()[i], sizeof(float)) != 0) std::abort();
    }
  });
}
