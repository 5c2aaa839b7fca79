// What the round's messages hold on the wire, without writing them: the layout of a download
// (server -> client) and of an upload (client -> server) -- metadata and tensors by name -- and
// the exact number of bytes their encoding takes. federated/message.hpp writes and reads these
// layouts as safetensors files; this header needs neither nlohmann-json nor the I/O layer, so
// the in-process federation counts the very bytes a transport would send (round_report) without
// encoding anything.
//
//   download  __metadata__  rolora.message = "download", round, client, trains, uploads (A | B |
//                           AB | -: the factors to send back), optimizer = "keep" | "fresh",
//                           optimizer_steps (with keep),
//                           scaling/<module> (shortest round-trip decimal of the backend scalar),
//                           under client-level DP clip_norm (shortest round-trip decimal) and
//                           clip_factors (A | B | AB | -: the factors whose change is clipped)
//             tensors       lora/<module>/lora_A [r_c, in], lora/<module>/lora_B [out, r_c],
//                           lora/<module>/residual [out, in] (when the module has one),
//                           save/<name>, optimizer/<buffer> (with keep; optimizer_state::buffers)
//   upload    __metadata__  rolora.message = "upload", round, client, num_samples, loss, factors
//                           (A | B | AB), optimizer_steps (when it carries moments), clipped = "1"
//                           (client-level DP: the change was scaled down to the clip norm; absent
//                           when it was not, or without DP)
//             tensors       lora/<module>/lora_{A,B} for the factors it carries, save/<name>,
//                           optimizer/<buffer> (when it carries moments)
// Every tensor is 2-D, F32 or F64 (the backend's scalar).
#pragma once
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/federated/client.hpp>
#include <string>
#include <string_view>

namespace rolora {

namespace detail::wire {

// Shortest decimal that reads back as the same value (std::to_chars).
template <class Number>
std::string to_decimal(Number v) {
  char buf[48];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// `s` as a JSON string, as nlohmann::json(s).dump() writes it (UTF-8 kept, control characters,
// quote and backslash escaped). Only its length matters here: encoded_size below.
inline std::size_t json_string_size(std::string_view s) {
  std::size_t n = 2;
  for (unsigned char ch : s) {
    switch (ch) {
      case '"':
      case '\\':
      case '\b':
      case '\f':
      case '\n':
      case '\r':
      case '\t':
        n += 2;
        break;
      default:
        n += ch < 0x20 ? 6 : 1;
    }
  }
  return n;
}

inline std::size_t decimal_size(std::uint64_t v) { return to_decimal(v).size(); }

inline std::string factors_label(factor_set f) { return std::string(f.label()); }

}  // namespace detail::wire

// A message before encoding: metadata and the tensors it carries (pointing into the object it
// describes, or into `owned` for what had to be computed, e.g. optimizer buffers).
template <backend Backend>
struct wire_layout {
  using matrix = typename Backend::matrix;
  std::map<std::string, std::string> metadata;
  std::map<std::string, const matrix*> tensors;  // name order = the encoder's buffer order
  std::map<std::string, matrix> owned;

  void add_owned(const std::string& name, matrix m) {
    tensors[name] = &owned.insert_or_assign(name, std::move(m)).first->second;
  }
};

// The exact size of serialize_safetensors(layout) (io/safetensors.hpp): 8 bytes of header length,
// the JSON header padded with spaces to a multiple of 8, then the data. Tensors of one dtype are
// laid out in name order.
template <backend Backend>
std::size_t encoded_size(const wire_layout<Backend>& layout) {
  using detail::wire::decimal_size;
  using detail::wire::json_string_size;
  constexpr std::size_t scalar = sizeof(typename Backend::scalar);
  std::size_t header = 2;  // {}
  if (!layout.metadata.empty()) {
    header += json_string_size("__metadata__") + 1 + 2;  // "__metadata__":{}
    for (const auto& [key, value] : layout.metadata) {
      header += json_string_size(key) + 1 + json_string_size(value);
    }
    header += layout.metadata.size() - 1;  // commas
  }
  std::size_t offset = 0;
  for (const auto& [name, m] : layout.tensors) {
    const auto rows = std::size_t(Backend::rows(*m)), cols = std::size_t(Backend::cols(*m));
    const std::size_t bytes = rows * cols * scalar;
    if (header > 2) ++header;  // comma
    // "<name>":{"dtype":"F32","shape":[r,c],"data_offsets":[o,o+n]}
    header += json_string_size(name) + std::string_view(":{\"dtype\":\"F32\",\"shape\":[").size() +
              decimal_size(rows) + 1 + decimal_size(cols) +
              std::string_view("],\"data_offsets\":[").size() + decimal_size(offset) + 1 +
              decimal_size(offset + bytes) + std::string_view("]}").size();
    offset += bytes;
  }
  header += (8 - header % 8) % 8;
  return 8 + header + offset;
}

// What client `d.client` receives in round `d.round`: `uploads` are the factors it sends back
// (federation_server::upload_factors: the shared ones and those the server keeps for it),
// `keep_optimizer` whether its moments travel (federation_config::keep_optimizer_state).
template <backend Backend>
wire_layout<Backend> download_layout(const client_download<Backend>& d, factor_set uploads,
                                     bool keep_optimizer) {
  wire_layout<Backend> w;
  w.metadata = {{"rolora.message", "download"},
                {"round", std::to_string(d.round)},
                {"client", std::to_string(d.client)},
                {"trains", detail::wire::factors_label(d.trains)},
                {"uploads", detail::wire::factors_label(uploads)},
                {"optimizer", keep_optimizer ? "keep" : "fresh"}};
  if (d.clip) {
    w.metadata["clip_norm"] = detail::wire::to_decimal(d.clip->norm);
    w.metadata["clip_factors"] = detail::wire::factors_label(d.clip->factors);
  }
  for (const auto& [name, a] : d.adapters) {
    w.tensors["lora/" + name + "/lora_A"] = &a.A;
    w.tensors["lora/" + name + "/lora_B"] = &a.B;
    if (a.has_residual()) w.tensors["lora/" + name + "/residual"] = &a.residual;
    w.metadata["scaling/" + name] = detail::wire::to_decimal(a.scaling);
  }
  for (const auto& [name, m] : d.adapters.modules_to_save()) w.tensors["save/" + name] = &m;
  if (keep_optimizer) {
    w.metadata["optimizer_steps"] = std::to_string(d.optimizer.steps());
    for (auto& [key, m] : d.optimizer.buffers()) w.add_owned("optimizer/" + key, std::move(m));
  }
  return w;
}

// What client `up.client` sends back: the LoRA factors `factors` (and every module to save), and
// its optimizer moments when `with_optimizer`.
template <backend Backend>
wire_layout<Backend> upload_layout(const client_update<Backend>& up, factor_set factors,
                                   bool with_optimizer) {
  wire_layout<Backend> w;
  w.metadata = {{"rolora.message", "upload"},
                {"round", std::to_string(up.round)},
                {"client", std::to_string(up.client)},
                {"num_samples", detail::wire::to_decimal(up.num_samples)},
                {"loss", detail::wire::to_decimal(up.loss)},
                {"factors", std::string(factors.a ? "A" : "") + (factors.b ? "B" : "")}};
  if (up.clipped) w.metadata["clipped"] = "1";
  for (const auto& [name, a] : up.adapters) {
    if (factors.a) w.tensors["lora/" + name + "/lora_A"] = &a.A;
    if (factors.b) w.tensors["lora/" + name + "/lora_B"] = &a.B;
  }
  for (const auto& [name, m] : up.adapters.modules_to_save()) w.tensors["save/" + name] = &m;
  if (with_optimizer) {
    w.metadata["optimizer_steps"] = std::to_string(up.optimizer.steps());
    for (auto& [key, m] : up.optimizer.buffers()) w.add_owned("optimizer/" + key, std::move(m));
  }
  return w;
}

}  // namespace rolora
