// libFuzzer target: parse_npy_header and read_npy on arbitrary bytes (io/npy.hpp). A file that
// reads must survive a round trip through the writer with the same values.
#include <cstdlib>
#include <rolora/io/npy.hpp>
#include <string_view>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora;
  return fuzz::run([&] {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    (void)parse_npy_header(bytes);
    const xt::xarray<double> a = read_npy<double>(bytes);
    const xt::xarray<double> again = read_npy<double>(npy_bytes(a));
    if (again.shape() != a.shape()) std::abort();
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double x = a.flat(i), y = again.flat(i);
      if (!(x == y || (x != x && y != y))) std::abort();
    }
  });
}
