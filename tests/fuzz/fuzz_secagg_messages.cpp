// libFuzzer target: a secure-aggregation stage message (rolora/secagg/messages.hpp) of arbitrary
// bytes, as a hostile client or server sends it, through every stage's checked decoder (round
// 3, recipient 1, masked inputs of 3 elements; sealed shares opened by client 1 of a 3-client
// round, and routed by their envelope), and as the MPI transport's frame (secagg/frame.hpp),
// whose parts go through the same decoders: a refusal is a rolora error.
#include <rolora/secagg/frame.hpp>
#include <rolora/secagg/messages.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rolora::secagg;
  const std::span bytes(data, size);
  rolora::fuzz::run([&] { (void)decode_advertise(bytes, 3); });
  rolora::fuzz::run([&] { (void)decode_shares(bytes, 3, 1); });
  static const round_setup setup{3, 2, complete_graph(3)};
  static const client sender(0, setup), me(1, setup);
  static const key_directory sealing{{0, sender.encryption_public_key()},
                                     {1, me.encryption_public_key()}};
  rolora::fuzz::run([&] { (void)decode_sealed_shares(bytes, 3, me, sealing); });
  rolora::fuzz::run([&] { (void)sealed_shares_route(bytes, 3); });
  rolora::fuzz::run([&] { (void)decode_masked_input(bytes, 3, 3); });
  rolora::fuzz::run([&] {
    for (const auto& part : frames::decode(bytes).parts) {
      rolora::fuzz::run([&] { (void)decode_advertise(part, 3); });
      rolora::fuzz::run([&] { (void)decode_masked_input(part, 3, 3); });
    }
  });
  rolora::fuzz::run([&] { (void)decode_unmask_request(bytes, 3); });
  return rolora::fuzz::run([&] { (void)decode_unmask_answer(bytes, 3); });
}
