// libFuzzer target: a stream of gRPC transport chunks (rolora/grpc/frame.hpp) of arbitrary bytes,
// as a hostile peer sends them: the input is a sequence of [u16 little-endian length][chunk]
// records fed in order to one reassembler (limit 64 KiB). Garbage frames, truncated chunks,
// oversized declared lengths, gaps and interleaved messages must be frame_errors; a message that
// completes has exactly its declared length.
#include <rolora/grpc/frame.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return rolora::fuzz::run([&] {
    rolora::grpc::reassembler r(std::uint64_t(1) << 16);
    std::size_t at = 0;
    while (at + 2 <= size) {
      const std::size_t n = std::min<std::size_t>(data[at] | (data[at + 1] << 8), size - at - 2);
      const auto chunk = std::span(data + at + 2, n);
      at += 2 + n;
      if (auto m = r.feed(chunk)) {
        if (m->bytes.size() != rolora::grpc::detail::get64(chunk.data() + 16)) std::abort();
      }
    }
  });
}
