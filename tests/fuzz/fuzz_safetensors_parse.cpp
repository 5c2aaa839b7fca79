// libFuzzer target: parse_safetensors on arbitrary bytes. A file that parses must convert and
// survive a round trip through the writer with the same tensors.
#include <cstdlib>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora;
  return fuzz::run([&] {
    const safetensors_file file = parse_safetensors(fuzz::bytes_t(data, data + size));
    std::map<std::string, tensor_data> tensors;
    for (const auto& name : file.names()) {
      const tensor_view t = file.tensor(name);
      if (is_floating(t.dtype)) (void)to_vector<double>(t);
      if (is_floating(t.dtype) && t.shape.size() == 2) (void)to_host_matrix<float>(t);
      tensors[name] = tensor_data{t.dtype, t.shape, fuzz::bytes_t(t.bytes.begin(), t.bytes.end())};
    }
    const safetensors_file again =
        parse_safetensors(serialize_safetensors(tensors, file.metadata()));
    if (again.names() != file.names() || again.metadata() != file.metadata()) std::abort();
    for (const auto& name : file.names()) {
      const tensor_view a = file.tensor(name), b = again.tensor(name);
      if (a.dtype != b.dtype || a.shape != b.shape ||
          !std::equal(a.bytes.begin(), a.bytes.end(), b.bytes.begin(), b.bytes.end())) {
        std::abort();
      }
    }
  });
}
