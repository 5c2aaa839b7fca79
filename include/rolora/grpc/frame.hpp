// The frames of the gRPC transport (rolora/grpc/transport.hpp): every message between a client
// process and the server travels as one or more chunks, each a gRPC message of at most
// chunk_bytes payload plus a 56-byte header, so a message of any size passes under gRPC's receive
// limit. This header has no gRPC in it: the chunking and the reassembly of hostile input are
// tested and fuzzed alone (tests/fuzz/fuzz_grpc_frames.cpp).
//
// A chunk, little-endian:
//   [0, 4)    magic "RLGF"
//   [4]       version, 1
//   [5]       kind: hello 1 (client -> server, the process's client ids and fingerprint),
//             welcome 2 (server -> client, the server's nonce), download 3, upload 4, finish 5
//   [6, 8)    zero
//   [8, 16)   message: the sender's count of messages on this stream, from 0, one more each
//   [16, 24)  total: the message's length in bytes
//   [24, 32)  offset of this chunk's payload in the message
//   [32, 40)  client: the client id a download or upload is for (else 0)
//   [40, 48)  nonce: the server start a download was made by; its upload carries it back
//   [48, 56)  federation: the server's count of finished federations when the message was made
//   [56, ...) payload: bytes [offset, offset + payload) of the message
// The chunks of one message come in order (offsets increasing without gaps) with the same
// message, kind, total, client, nonce and federation, and one message's chunks are not
// interleaved with another's. A reassembler refuses (frame_error) whatever breaks that: a short
// or foreign chunk, a declared length above its limit, a gap, an overrun, a chunk of another
// message while one is incomplete; it never allocates more than the bytes that arrived.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <rolora/core/error.hpp>
#include <span>
#include <string_view>
#include <vector>

namespace rolora::grpc {

// A chunk or a sequence of chunks that breaks the framing. What came is not a message: the
// stream it came on is closed.
class frame_error : public value_error {
 public:
  using value_error::value_error;
  static constexpr std::string_view id = "frame_error";
};

enum class message_kind : std::uint8_t {
  hello = 1,
  welcome = 2,
  download = 3,
  upload = 4,
  finish = 5
};

inline std::string_view kind_name(message_kind k) {
  switch (k) {
    case message_kind::hello:
      return "hello";
    case message_kind::welcome:
      return "welcome";
    case message_kind::download:
      return "download";
    case message_kind::upload:
      return "upload";
    case message_kind::finish:
      return "finish";
  }
  return "unknown";
}

// Who a message concerns, the same on each of its chunks.
struct routing {
  message_kind kind = message_kind::hello;
  std::uint64_t client = 0;
  std::uint64_t nonce = 0;
  std::uint64_t federation = 0;
  bool operator==(const routing&) const = default;
};

struct message {
  routing route;
  std::vector<std::uint8_t> bytes;
};

inline constexpr std::size_t frame_header_bytes = 56;
inline constexpr std::size_t default_chunk_bytes = std::size_t(1) << 20;

namespace detail {
inline constexpr std::array<std::uint8_t, 4> frame_magic{'R', 'L', 'G', 'F'};
inline constexpr std::uint8_t frame_version = 1;

inline void put64(std::uint8_t* at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) at[i] = std::uint8_t(v >> (8 * i));
}
inline std::uint64_t get64(const std::uint8_t* at) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | at[i];
  return v;
}
}  // namespace detail

// Calls emit(std::span<const std::uint8_t> chunk) for each chunk of `bytes` as the sender's
// message number `number` (an empty message is one chunk with no payload).
template <class Emit>
void for_each_chunk(const routing& route, std::uint64_t number, std::span<const std::uint8_t> bytes,
                    std::size_t chunk_bytes, Emit&& emit) {
  if (chunk_bytes == 0) rolora::detail::raise<config_error>("gRPC frames: chunk size 0");
  std::vector<std::uint8_t> chunk;
  std::size_t offset = 0;
  do {
    const std::size_t n = std::min(chunk_bytes, bytes.size() - offset);
    chunk.assign(frame_header_bytes + n, 0);
    std::copy(detail::frame_magic.begin(), detail::frame_magic.end(), chunk.begin());
    chunk[4] = detail::frame_version;
    chunk[5] = std::uint8_t(route.kind);
    detail::put64(&chunk[8], number);
    detail::put64(&chunk[16], bytes.size());
    detail::put64(&chunk[24], offset);
    detail::put64(&chunk[32], route.client);
    detail::put64(&chunk[40], route.nonce);
    detail::put64(&chunk[48], route.federation);
    if (n) std::memcpy(&chunk[frame_header_bytes], bytes.data() + offset, n);
    emit(std::span<const std::uint8_t>(chunk));
    offset += n;
  } while (offset < bytes.size());
}

// Reassembles the chunks of one direction of one stream into messages.
class reassembler {
 public:
  explicit reassembler(std::uint64_t max_message_bytes) : max_(max_message_bytes) {}

  // The message `chunk` completes, if it does; throws frame_error for a chunk that breaks the
  // framing (the reassembler is then unusable: the stream must be closed).
  std::optional<message> feed(std::span<const std::uint8_t> chunk) {
    if (chunk.size() < frame_header_bytes) {
      fail("a chunk of ", chunk.size(), " bytes, shorter than the ", frame_header_bytes,
           "-byte header");
    }
    if (!std::equal(detail::frame_magic.begin(), detail::frame_magic.end(), chunk.begin())) {
      fail("a chunk without the magic RLGF (not a rolora frame)");
    }
    if (chunk[4] != detail::frame_version) {
      fail("frame version ", int(chunk[4]), ", expected ", int(detail::frame_version));
    }
    if (chunk[5] < 1 || chunk[5] > 5) fail("message kind ", int(chunk[5]), ", expected 1..5");
    if (chunk[6] != 0 || chunk[7] != 0) fail("reserved header bytes not zero");
    const routing route{message_kind(chunk[5]), detail::get64(&chunk[32]),
                        detail::get64(&chunk[40]), detail::get64(&chunk[48])};
    const std::uint64_t number = detail::get64(&chunk[8]);
    const std::uint64_t total = detail::get64(&chunk[16]);
    const std::uint64_t offset = detail::get64(&chunk[24]);
    const auto payload = chunk.subspan(frame_header_bytes);

    if (number != next_) {
      if (open_) {
        fail("a chunk of message ", number, " while message ", next_, " is incomplete (", got_,
             " of ", total_, " bytes): interleaved messages");
      }
      fail("message ", number, ", expected message ", next_);
    }
    if (!open_) {
      if (total > max_) fail("a declared length of ", total, " bytes, above the limit ", max_);
      if (offset != 0) fail("message ", number, " begins at offset ", offset, ", expected 0");
      open_ = true;
      route_ = route;
      total_ = total;
      got_ = 0;
      bytes_.clear();
    } else {
      if (total != total_ || !(route == route_)) {
        fail("a chunk of message ", number, " whose header differs from its first chunk's");
      }
      if (offset != got_) fail("a chunk at offset ", offset, ", expected ", got_, " (a gap)");
      if (payload.empty()) fail("an empty chunk inside message ", number);
    }
    if (payload.size() > total_ - got_) {
      fail("a chunk of ", payload.size(), " bytes at offset ", offset, " overruns the declared ",
           total_, " bytes");
    }
    bytes_.insert(bytes_.end(), payload.begin(), payload.end());
    got_ += payload.size();
    if (got_ < total_) return std::nullopt;
    open_ = false;
    ++next_;
    return message{route_, std::move(bytes_)};
  }

  // Whether a message is half received (a stream that ends now was cut inside a message).
  bool incomplete() const { return open_; }

 private:
  template <class... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    rolora::detail::raise<frame_error>("gRPC frames: ", parts...);
  }

  std::uint64_t max_;
  std::uint64_t next_ = 0;  // the number the next message must have
  bool open_ = false;
  routing route_;
  std::uint64_t total_ = 0, got_ = 0;
  std::vector<std::uint8_t> bytes_;
};

}  // namespace rolora::grpc
