// libFuzzer target: a secure-aggregation stage message (rolora/secagg/messages.hpp) of arbitrary
// bytes, as a hostile client or server sends it, through every stage's checked decoder (round
// 3, recipient 1, masked inputs of 3 elements): a refusal is a rolora error.
#include <rolora/secagg/messages.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora::secagg;
  const std::span bytes(data, size);
  rolora::fuzz::run([&] { (void)decode_advertise(bytes, 3); });
  rolora::fuzz::run([&] { (void)decode_shares(bytes, 3, 1); });
  rolora::fuzz::run([&] { (void)decode_masked_input(bytes, 3, 3); });
  rolora::fuzz::run([&] { (void)decode_unmask_request(bytes, 3); });
  return rolora::fuzz::run([&] { (void)decode_unmask_answer(bytes, 3); });
}
