// The stage messages of secure aggregation on the wire (safetensors, as the round's download and
// upload are; federated/message.hpp), with checked decoders: every message a transport hands
// over is hostile input, so a decoder refuses (value_error or shape_error, naming the field and
// what came) a truncated or malformed message, another stage's, another round's (a replay) and a
// share bundle addressed to another client. Sent by the federation rounds (round.hpp). Needs
// nlohmann-json, as io/ does (not part of secagg.hpp, which needs libsodium only).
//
//   stage           metadata (besides rolora.message = "secagg.<stage>" and round)   tensors
//   advertise       client                                   mask_public_key U8 [32],
//                                                            encryption_public_key U8 [32]
//   sealed_shares   from, to                                 box U8 [n]: a shares message sealed
//                                                            to `to` (crypto.hpp's seal)
//   shares          from, to, seed_threshold, seed_bytes,    seed U64 [1 + e_s], key U64 [1 + e_k]
//                   key_threshold, key_bytes                 (a share: its x, then its
//                                                            ceil(bytes / 7) field elements)
//   masked_input    client                                   y U64 [L]
//   unmask_request  -                                        survivors U64 [s], dropped U64 [d]
//   unmask_answer   from, seed_threshold, seed_bytes,        seed_peers U64 [a],
//                   key_threshold, key_bytes                 seed U64 [a, 1 + e_s], key_* alike
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <rolora/core/error.hpp>
#include <rolora/federated/message.hpp>
#include <rolora/io/safetensors.hpp>
#include <rolora/secagg/masking.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora::secagg {

namespace detail::wire {

inline tensor_data u64_tensor(std::span<const std::uint64_t> v, std::vector<std::uint64_t> shape) {
  tensor_data t{tensor_dtype::u64, std::move(shape), std::vector<std::uint8_t>(v.size() * 8)};
  for (std::size_t i = 0; i < v.size(); ++i) {
    for (int b = 0; b < 8; ++b) t.bytes[8 * i + std::size_t(b)] = std::uint8_t(v[i] >> (8 * b));
  }
  return t;
}

// The U64 tensor `name` of shape `shape` (any extent where an entry is 0: checked by the caller).
inline std::vector<std::uint64_t> u64_values(const safetensors_file& f, const std::string& name,
                                             std::vector<std::uint64_t> shape, const char* kind) {
  const tensor_view t = f.tensor(name);
  if (t.dtype != tensor_dtype::u64) {
    rolora::detail::raise<value_error>(kind, " message: tensor '", name, "' must be U64, got ",
                                       dtype_name(t.dtype));
  }
  bool fits = t.shape.size() == shape.size();
  for (std::size_t i = 0; fits && i < shape.size(); ++i)
    fits = shape[i] == 0 || t.shape[i] == shape[i];
  if (!fits) {
    std::string expected = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
      expected += (i ? ", " : "") + (shape[i] ? std::to_string(shape[i]) : std::string("*"));
    }
    rolora::detail::raise<shape_error>(kind, " message: tensor '", name, "' has shape ",
                                       t.shape_string(), ", expected ", expected, "]");
  }
  std::vector<std::uint64_t> v(t.bytes.size() / 8);
  for (std::size_t i = 0; i < v.size(); ++i) {
    for (int b = 7; b >= 0; --b) v[i] = (v[i] << 8) | t.bytes[8 * i + std::size_t(b)];
  }
  return v;
}

// The message's file after checking its stage and round.
inline safetensors_file open(std::span<const std::uint8_t> bytes, const std::string& stage,
                             std::uint64_t round) {
  const std::string kind = "secagg." + stage;
  auto f = parse_safetensors(std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
  const auto& meta = f.metadata();
  const auto it = meta.find("rolora.message");
  if (it == meta.end() || it->second != kind) {
    rolora::detail::raise<value_error>("secagg message: expected a ", kind, " message, got ",
                                       it == meta.end() ? "none" : "'" + it->second + "'");
  }
  const auto t = rolora::detail::msg::parse_number<std::uint64_t>(meta, "round", kind.c_str());
  if (t != round) {
    rolora::detail::raise<value_error>(kind, " message of round ", t, " in round ", round,
                                       " (a replay or a late message)");
  }
  return f;
}

inline std::size_t number(const safetensors_file& f, const char* key, const std::string& stage) {
  return rolora::detail::msg::parse_number<std::size_t>(f.metadata(), key,
                                                        ("secagg." + stage).c_str());
}

// A share as [x, values...] and back; the values must be field elements.
inline std::vector<std::uint64_t> flat(const share& s) {
  std::vector<std::uint64_t> v{s.x};
  v.insert(v.end(), s.values.begin(), s.values.end());
  return v;
}
inline share unflat(std::span<const std::uint64_t> v, std::size_t threshold, std::size_t bytes,
                    const char* kind) {
  if (v.size() != 1 + shamir_elements(bytes)) {
    rolora::detail::raise<shape_error>(kind, " message: a share of a ", bytes,
                                       "-byte secret holds ", shamir_elements(bytes),
                                       " field elements, got ", v.size() - 1);
  }
  for (std::uint64_t e : v.subspan(1)) {
    if (e >= field::p)
      rolora::detail::raise<value_error>(kind, " message: a share value is not < 2^61 - 1");
  }
  if (v[0] == 0) rolora::detail::raise<value_error>(kind, " message: a share at x = 0");
  return {v[0], threshold, bytes, {v.begin() + 1, v.end()}};
}

inline std::map<std::string, std::string> meta(const std::string& stage, std::uint64_t round) {
  return {{"rolora.message", "secagg." + stage}, {"round", std::to_string(round)}};
}

}  // namespace detail::wire

// --- advertise: a client's mask and encryption public keys ----------------------------------
struct advertisement {
  std::size_t client = 0;
  public_key mask_public_key{};
  public_key encryption_public_key{};
};

inline std::vector<std::uint8_t> encode_advertise(const advertisement& a, std::uint64_t round) {
  auto m = detail::wire::meta("advertise", round);
  m["client"] = std::to_string(a.client);
  const auto key = [](const public_key& k) {
    return tensor_data{tensor_dtype::u8, {32}, {k.begin(), k.end()}};
  };
  return serialize_safetensors({{"mask_public_key", key(a.mask_public_key)},
                                {"encryption_public_key", key(a.encryption_public_key)}},
                               m);
}
inline advertisement decode_advertise(std::span<const std::uint8_t> bytes, std::uint64_t round) {
  const auto f = detail::wire::open(bytes, "advertise", round);
  advertisement a{detail::wire::number(f, "client", "advertise"), {}, {}};
  const auto key = [&](const char* name, public_key& into) {
    const tensor_view t = f.tensor(name);
    if (t.dtype != tensor_dtype::u8 || t.shape != std::vector<std::uint64_t>{32}) {
      rolora::detail::raise<shape_error>("secagg.advertise message: ", name,
                                         " must be U8 [32], got ", dtype_name(t.dtype), " ",
                                         t.shape_string());
    }
    std::memcpy(into.data(), t.bytes.data(), 32);
  };
  key("mask_public_key", a.mask_public_key);
  key("encryption_public_key", a.encryption_public_key);
  return a;
}

// --- shares: one client's shares for one neighbour -------------------------------------------
inline std::vector<std::uint8_t> encode_shares(const share_bundle& b, std::uint64_t round) {
  auto m = detail::wire::meta("shares", round);
  m["from"] = std::to_string(b.from);
  m["to"] = std::to_string(b.to);
  m["seed_threshold"] = std::to_string(b.seed_share.threshold);
  m["seed_bytes"] = std::to_string(b.seed_share.secret_bytes);
  m["key_threshold"] = std::to_string(b.key_share.threshold);
  m["key_bytes"] = std::to_string(b.key_share.secret_bytes);
  const auto seed = detail::wire::flat(b.seed_share), key = detail::wire::flat(b.key_share);
  return serialize_safetensors({{"seed", detail::wire::u64_tensor(seed, {seed.size()})},
                                {"key", detail::wire::u64_tensor(key, {key.size()})}},
                               m);
}
// The bundle for client `me` in `round`; a bundle addressed to another client is refused.
inline share_bundle decode_shares(std::span<const std::uint8_t> bytes, std::uint64_t round,
                                  std::size_t me) {
  const char* kind = "secagg.shares";
  const auto f = detail::wire::open(bytes, "shares", round);
  share_bundle b;
  b.from = detail::wire::number(f, "from", "shares");
  b.to = detail::wire::number(f, "to", "shares");
  if (b.to != me) {
    rolora::detail::raise<value_error>(kind, " message for client ", b.to, " delivered to client ",
                                       me);
  }
  if (b.from == me)
    rolora::detail::raise<value_error>(kind, " message from client ", me, " to itself");
  const auto part = [&](const char* name, const char* threshold, const char* size) {
    const std::size_t t = detail::wire::number(f, threshold, "shares");
    const std::size_t n = detail::wire::number(f, size, "shares");
    if (n == 0 || n > 4096) {
      rolora::detail::raise<value_error>(kind, " message: ", size, " ", n, ", expected 1 .. 4096");
    }
    return detail::wire::unflat(detail::wire::u64_values(f, name, {0}, kind), t, n, kind);
  };
  b.seed_share = part("seed", "seed_threshold", "seed_bytes");
  b.key_share = part("key", "key_threshold", "key_bytes");
  return b;
}

// --- sealed shares: a shares message sealed to its recipient, in an envelope the server routes -
// `sender` seals encode_shares(b) to `recipient_key`, client b.to's encryption public key.
inline std::vector<std::uint8_t> encode_sealed_shares(const client& sender, const share_bundle& b,
                                                      const public_key& recipient_key,
                                                      std::uint64_t round) {
  auto m = detail::wire::meta("sealed_shares", round);
  m["from"] = std::to_string(b.from);
  m["to"] = std::to_string(b.to);
  auto box = sender.seal_to(encode_shares(b, round), recipient_key);
  const std::uint64_t n = box.size();
  return serialize_safetensors({{"box", {tensor_dtype::u8, {n}, std::move(box)}}}, m);
}
// The (from, to) of an envelope, for the server that routes it without opening it (over MPI:
// secagg/mpi.hpp). Refuses another stage's or round's envelope.
inline std::pair<std::size_t, std::size_t> sealed_shares_route(std::span<const std::uint8_t> bytes,
                                                               std::uint64_t round) {
  const auto f = detail::wire::open(bytes, "sealed_shares", round);
  return {detail::wire::number(f, "from", "sealed_shares"),
          detail::wire::number(f, "to", "sealed_shares")};
}
// The bundle for client `me`, opened with its encryption key and the envelope's sender's
// (`encryption_keys`: client -> encryption public key). Refuses another stage's or round's
// envelope, one addressed to another client, one from a client without a key, a box that does
// not open, and an inner bundle whose sender or recipient is not the envelope's.
inline share_bundle decode_sealed_shares(std::span<const std::uint8_t> bytes, std::uint64_t round,
                                         const client& me, const key_directory& encryption_keys) {
  const char* kind = "secagg.sealed_shares";
  const auto f = detail::wire::open(bytes, "sealed_shares", round);
  const std::size_t from = detail::wire::number(f, "from", "sealed_shares");
  const std::size_t to = detail::wire::number(f, "to", "sealed_shares");
  if (to != me.id()) {
    rolora::detail::raise<value_error>(kind, " message for client ", to, " delivered to client ",
                                       me.id());
  }
  const auto key = encryption_keys.find(from);
  if (key == encryption_keys.end()) {
    rolora::detail::raise<value_error>(kind, " message from client ", from,
                                       ", which advertised no encryption key");
  }
  const tensor_view t = f.tensor("box");
  if (t.dtype != tensor_dtype::u8 || t.shape.size() != 1) {
    rolora::detail::raise<shape_error>(kind, " message: box must be U8 [n], got ",
                                       dtype_name(t.dtype), " ", t.shape_string());
  }
  share_bundle b = decode_shares(me.open_from(t.bytes, key->second), round, me.id());
  if (b.from != from) {
    rolora::detail::raise<value_error>(kind, " message: the envelope is from client ", from,
                                       ", the bundle inside from client ", b.from);
  }
  return b;
}

// --- masked input ----------------------------------------------------------------------------
inline std::vector<std::uint8_t> encode_masked_input(std::size_t client,
                                                     std::span<const std::uint64_t> y,
                                                     std::uint64_t round) {
  auto m = detail::wire::meta("masked_input", round);
  m["client"] = std::to_string(client);
  return serialize_safetensors({{"y", detail::wire::u64_tensor(y, {y.size()})}}, m);
}
// (client, y) with y of `length` elements.
inline std::pair<std::size_t, std::vector<std::uint64_t>> decode_masked_input(
    std::span<const std::uint8_t> bytes, std::uint64_t round, std::size_t length) {
  const auto f = detail::wire::open(bytes, "masked_input", round);
  const std::size_t client = detail::wire::number(f, "client", "masked_input");
  if (length == 0) rolora::detail::raise<config_error>("secagg: a masked input of length 0");
  return {client, detail::wire::u64_values(f, "y", {length}, "secagg.masked_input")};
}

// --- unmask request --------------------------------------------------------------------------
inline std::vector<std::uint8_t> encode_unmask_request(const unmask_request& r,
                                                       std::uint64_t round) {
  const std::vector<std::uint64_t> s(r.survivors.begin(), r.survivors.end()),
      d(r.dropped.begin(), r.dropped.end());
  return serialize_safetensors({{"survivors", detail::wire::u64_tensor(s, {s.size()})},
                                {"dropped", detail::wire::u64_tensor(d, {d.size()})}},
                               detail::wire::meta("unmask_request", round));
}
inline unmask_request decode_unmask_request(std::span<const std::uint8_t> bytes,
                                            std::uint64_t round) {
  const char* kind = "secagg.unmask_request";
  const auto f = detail::wire::open(bytes, "unmask_request", round);
  unmask_request r;
  for (auto v : detail::wire::u64_values(f, "survivors", {0}, kind)) r.survivors.push_back(v);
  for (auto v : detail::wire::u64_values(f, "dropped", {0}, kind)) r.dropped.push_back(v);
  return r;  // a client in both lists is the client's own refusal (client::answer)
}

// --- unmask answer ---------------------------------------------------------------------------
inline std::vector<std::uint8_t> encode_unmask_answer(const unmask_answer& a, std::uint64_t round) {
  auto m = detail::wire::meta("unmask_answer", round);
  m["from"] = std::to_string(a.from);
  std::map<std::string, tensor_data> tensors;
  const auto put = [&](const std::string& kind, const std::map<std::size_t, share>& shares) {
    std::vector<std::uint64_t> peers, values;
    std::size_t width = 0;
    for (const auto& [peer, s] : shares) {
      peers.push_back(peer);
      const auto v = detail::wire::flat(s);
      width = v.size();
      values.insert(values.end(), v.begin(), v.end());
      m[kind + "_threshold"] = std::to_string(s.threshold);
      m[kind + "_bytes"] = std::to_string(s.secret_bytes);
    }
    tensors[kind + "_peers"] = detail::wire::u64_tensor(peers, {peers.size()});
    tensors[kind] = detail::wire::u64_tensor(values, {peers.size(), width});
  };
  put("seed", a.seed_shares);
  put("key", a.key_shares);
  return serialize_safetensors(tensors, m);
}
inline unmask_answer decode_unmask_answer(std::span<const std::uint8_t> bytes,
                                          std::uint64_t round) {
  const char* kind = "secagg.unmask_answer";
  const auto f = detail::wire::open(bytes, "unmask_answer", round);
  unmask_answer a;
  a.from = detail::wire::number(f, "from", "unmask_answer");
  const auto get = [&](const std::string& name, std::map<std::size_t, share>& into) {
    const auto peers = detail::wire::u64_values(f, name + "_peers", {0}, kind);
    if (peers.empty()) return;
    const std::size_t t = detail::wire::number(f, (name + "_threshold").c_str(), "unmask_answer");
    const std::size_t n = detail::wire::number(f, (name + "_bytes").c_str(), "unmask_answer");
    if (n == 0 || n > 4096) {
      rolora::detail::raise<value_error>(kind, " message: ", name, "_bytes ", n,
                                         ", expected 1 .. 4096");
    }
    const std::size_t width = 1 + shamir_elements(n);
    const auto values = detail::wire::u64_values(f, name, {peers.size(), width}, kind);
    for (std::size_t i = 0; i < peers.size(); ++i) {
      if (!into.emplace(
                   std::size_t(peers[i]),
                   detail::wire::unflat(std::span(values).subspan(i * width, width), t, n, kind))
               .second) {
        rolora::detail::raise<value_error>(kind, " message: peer ", peers[i], " listed twice");
      }
    }
  };
  get("seed", a.seed_shares);
  get("key", a.key_shares);
  return a;
}

}  // namespace rolora::secagg
