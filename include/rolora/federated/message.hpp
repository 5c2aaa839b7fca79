// The upload message of a round on the wire: a safetensors file (io/safetensors.hpp) whose
// __metadata__ says what it is, decoded by the checked safetensors reader. The server never
// trusts these bytes: decode_upload turns any malformed message into a rolora error, and what it
// returns still goes through federation_server's hostile-upload checks (shapes, finiteness,
// magnitude, round, client).
//
//   __metadata__  rolora.message = "upload", round, client (decimal), num_samples, loss
//                 (shortest round-trip decimal), factors = "A" | "B" | "AB" (the LoRA factors it
//                 carries)
//   tensors       lora/<module>/lora_A [r_c, in], lora/<module>/lora_B [out, r_c] for the factors
//                 it carries; save/<name> for each module to save; F32 or F64 (the backend's)
// Factors a message does not carry are the client's downloaded ones.
// Fuzz entry point: decode_upload<eigen_backend<float>>(bytes, reference).
#pragma once
#include <charconv>
#include <cstdint>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/io/safetensors.hpp>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <vector>

namespace rolora {

namespace detail::msg {

inline std::string to_decimal(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

template <class Number>
Number parse_number(const std::map<std::string, std::string>& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) raise<value_error>("upload message: metadata '", key, "' is missing");
  const std::string& s = it->second;
  Number v{};
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || s.empty()) {
    raise<value_error>("upload message: metadata '", key, "' must be a number, got '",
                       s.substr(0, 40), s.size() > 40 ? "...'" : "'");
  }
  return v;
}

}  // namespace detail::msg

// The bytes of `up` carrying the LoRA factors `factors` (and every module to save).
template <backend Backend>
std::vector<std::uint8_t> encode_upload(const client_upload<Backend>& up, factor_set factors) {
  const tensor_dtype dtype =
      sizeof(typename Backend::scalar) == 4 ? tensor_dtype::f32 : tensor_dtype::f64;
  std::map<std::string, tensor_data> tensors;
  for (const auto& [name, a] : up.adapters) {
    if (factors.a)
      tensors.emplace("lora/" + name + "/lora_A", make_tensor(Backend::to_host(a.A), dtype));
    if (factors.b)
      tensors.emplace("lora/" + name + "/lora_B", make_tensor(Backend::to_host(a.B), dtype));
  }
  for (const auto& [name, w] : up.adapters.modules_to_save()) {
    tensors.emplace("save/" + name, make_tensor(Backend::to_host(w), dtype));
  }
  const std::string which = std::string(factors.a ? "A" : "") + (factors.b ? "B" : "");
  return serialize_safetensors(tensors, {{"rolora.message", "upload"},
                                         {"round", std::to_string(up.round)},
                                         {"client", std::to_string(up.client)},
                                         {"num_samples", detail::msg::to_decimal(up.num_samples)},
                                         {"loss", detail::msg::to_decimal(up.loss)},
                                         {"factors", which}});
}

// The upload `bytes` encode, with the factors they do not carry taken from `reference` (the
// client's download). value_error / shape_error on anything malformed: not safetensors, another
// message kind, metadata missing or not a number, a tensor that is not one of reference's
// modules or factors, a missing tensor, a non-floating or non-2-D tensor.
template <backend Backend>
client_upload<Backend> decode_upload(std::span<const std::uint8_t> bytes,
                                     const adapter_set<Backend>& reference) {
  using T = typename Backend::scalar;
  const safetensors_file file =
      parse_safetensors(std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
  const auto& meta = file.metadata();
  const auto kind = meta.find("rolora.message");
  if (kind == meta.end() || kind->second != "upload") {
    detail::raise<value_error>("upload message: metadata 'rolora.message' must be 'upload'");
  }
  client_upload<Backend> up;
  up.round = detail::msg::parse_number<std::size_t>(meta, "round");
  up.client = detail::msg::parse_number<std::size_t>(meta, "client");
  up.num_samples = detail::msg::parse_number<double>(meta, "num_samples");
  up.loss = detail::msg::parse_number<double>(meta, "loss");
  const auto f = meta.find("factors");
  if (f == meta.end() || (f->second != "A" && f->second != "B" && f->second != "AB")) {
    detail::raise<value_error>("upload message: metadata 'factors' must be A, B or AB");
  }
  const factor_set factors{f->second.find('A') != std::string::npos,
                           f->second.find('B') != std::string::npos};

  std::size_t expected = reference.modules_to_save().size();
  up.adapters = reference;
  const auto matrix = [&](const std::string& name) {
    const tensor_view t = file.tensor(name);
    if (t.shape.size() != 2) {
      detail::raise<shape_error>("upload message: tensor '", name, "' must be 2-D, got ",
                                 t.shape_string());
    }
    return Backend::from_host(to_host_matrix<T>(t));
  };
  for (auto& [name, a] : up.adapters) {
    for (const auto& [on, factor, target] :
         {std::tuple{factors.a, "lora_A", &a.A}, std::tuple{factors.b, "lora_B", &a.B}}) {
      if (!on) continue;
      const std::string key = "lora/" + name + "/" + factor;
      if (!file.contains(key)) {
        detail::raise<shape_error>("module '", name, "' client ", up.client, ": ", factor,
                                   " missing from the upload message");
      }
      *target = matrix(key);
      ++expected;
    }
  }
  for (auto& [name, w] : up.adapters.modules_to_save()) {
    if (!file.contains("save/" + name)) {
      detail::raise<shape_error>("module to save '", name, "' client ", up.client,
                                 ": missing from the upload message");
    }
    w = matrix("save/" + name);
  }
  if (file.size() != expected) {
    for (const auto& name : file.names()) {
      const bool lora =
          name.starts_with("lora/") && name.size() > 12 &&
          up.adapters.contains(name.substr(5, name.size() - 12)) &&
          ((factors.a && name.ends_with("/lora_A")) || (factors.b && name.ends_with("/lora_B")));
      const bool saved =
          name.starts_with("save/") && up.adapters.modules_to_save().count(name.substr(5));
      if (!lora && !saved) {
        detail::raise<shape_error>("client ", up.client, ": upload message tensor '",
                                   name.substr(0, 80), "' is not a factor or module of the round");
      }
    }
  }
  return up;
}

}  // namespace rolora
