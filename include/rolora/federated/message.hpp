// The messages of a round on the wire: safetensors files (io/safetensors.hpp) whose __metadata__
// says what they are, laid out as federated/wire.hpp describes (download: server -> client;
// upload: client -> server), decoded by the checked safetensors reader. Neither side trusts the
// bytes: decode_download and decode_upload turn any malformed message into a rolora error, and
// what decode_upload returns -- a client_update, the type the aggregators merge -- still goes
// through federation_server's hostile-upload checks (shapes, finiteness, magnitude, round,
// client). Errors about a named client carry it in error::client().
// Factors an upload does not carry are the client's downloaded ones.
// Fuzz entry point: decode_upload<eigen_backend<float>>(bytes, reference).
#pragma once
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/federated/wire.hpp>
#include <rolora/io/safetensors.hpp>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <vector>

namespace rolora {

namespace detail::msg {

template <class Number>
Number parse_number(const std::map<std::string, std::string>& meta, const std::string& key,
                    const char* kind = "upload") {
  const auto it = meta.find(key);
  if (it == meta.end()) raise<value_error>(kind, " message: metadata '", key, "' is missing");
  const std::string& s = it->second;
  Number v{};
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || s.empty()) {
    raise<value_error>(kind, " message: metadata '", key, "' must be a number, got '",
                       s.substr(0, 40), s.size() > 40 ? "...'" : "'");
  }
  return v;
}

// "A", "B", "AB" or "-" (factor_set::label) -> the factor set.
inline factor_set parse_factors(const std::map<std::string, std::string>& meta,
                                const std::string& key, const char* kind) {
  const auto it = meta.find(key);
  if (it != meta.end()) {
    for (factor_set f : {no_factors, only_a, only_b, both_factors}) {
      if (it->second == f.label()) return f;
    }
  }
  raise<value_error>(kind, " message: metadata '", key, "' must be A, B, AB or -");
}

// The 2-D tensor `name` of `file` on the backend.
template <backend Backend>
typename Backend::matrix read_matrix(const safetensors_file& file, const std::string& name,
                                     const char* kind) {
  const tensor_view t = file.tensor(name);
  if (t.shape.size() != 2) {
    raise<shape_error>(kind, " message: tensor '", name.substr(0, 80), "' must be 2-D, got ",
                       t.shape_string());
  }
  return Backend::from_host(to_host_matrix<typename Backend::scalar>(t));
}

// The optimizer moments a message carries (tensors optimizer/<buffer>, metadata
// optimizer_steps), each shaped like the factor or module to save of `params` it belongs to.
template <backend Backend>
optimizer_state<Backend> read_moments(const safetensors_file& file,
                                      const adapter_set<Backend>& params, std::size_t& tensors,
                                      const char* kind) {
  const auto steps = parse_number<std::size_t>(file.metadata(), "optimizer_steps", kind);
  std::map<std::string, typename Backend::matrix> buffers;
  for (const auto& name : file.names()) {
    if (!name.starts_with("optimizer/")) continue;
    const std::string key = name.substr(10);
    // lora/<module>/<a|b>/<first|second> or save/<name>/<first|second>
    const std::string head =
        key.substr(0, key.rfind('/') == std::string::npos ? 0 : key.rfind('/'));
    const typename Backend::matrix* like = nullptr;
    if (head.starts_with("lora/") && head.size() > 7 &&
        params.contains(head.substr(5, head.size() - 7))) {
      const auto& a = params.at(head.substr(5, head.size() - 7));
      if (head.ends_with("/a")) like = &a.A;
      if (head.ends_with("/b")) like = &a.B;
    } else if (head.starts_with("save/") && params.modules_to_save().count(head.substr(5))) {
      like = &params.modules_to_save().at(head.substr(5));
    }
    if (!like) {
      raise<shape_error>(kind, " message: tensor '", name.substr(0, 80),
                         "' is the moment of no factor or module of the round");
    }
    const tensor_view t = file.tensor(name);  // its shape is checked before any conversion
    if (t.shape.size() != 2 || t.shape[0] != std::uint64_t(Backend::rows(*like)) ||
        t.shape[1] != std::uint64_t(Backend::cols(*like))) {
      raise<shape_error>(kind, " message: tensor '", name.substr(0, 80), "' must be ",
                         shape_string(Backend::rows(*like), Backend::cols(*like)), ", got ",
                         t.shape_string());
    }
    buffers.emplace(key, read_matrix<Backend>(file, name, kind));
    ++tensors;
  }
  return optimizer_state<Backend>::restore(steps, buffers);
}

}  // namespace detail::msg

// The bytes of `layout` (federated/wire.hpp) as a safetensors file.
template <backend Backend>
std::vector<std::uint8_t> encode_layout(const wire_layout<Backend>& layout) {
  const tensor_dtype dtype =
      sizeof(typename Backend::scalar) == 4 ? tensor_dtype::f32 : tensor_dtype::f64;
  std::map<std::string, tensor_data> tensors;
  for (const auto& [name, m] : layout.tensors)
    tensors.emplace(name, make_tensor(Backend::to_host(*m), dtype));
  return serialize_safetensors(tensors, layout.metadata);
}

// The bytes of `up` carrying the LoRA factors `factors` (and every module to save), and its
// optimizer moments when `with_optimizer`. Exactly encoded_size(upload_layout(...)) bytes.
template <backend Backend>
std::vector<std::uint8_t> encode_upload(const client_update<Backend>& up, factor_set factors,
                                        bool with_optimizer = false) {
  return encode_layout(upload_layout(up, factors, with_optimizer));
}

// The bytes of download `d`; `uploads`: the factors the client sends back; `keep_optimizer`:
// its moments travel. Exactly encoded_size(download_layout(...)) bytes.
template <backend Backend>
std::vector<std::uint8_t> encode_download(const client_download<Backend>& d, factor_set uploads,
                                          bool keep_optimizer) {
  return encode_layout(download_layout(d, uploads, keep_optimizer));
}

// The upload `bytes` encode, with the factors they do not carry taken from `reference` (the
// client's download). value_error / shape_error on anything malformed: not safetensors, another
// message kind, metadata missing or not a number, a tensor that is not one of reference's
// modules or factors, a missing tensor, a non-floating or non-2-D tensor, optimizer moments
// (metadata optimizer_steps, tensors optimizer/<buffer>) of no factor or of another shape.
template <backend Backend>
client_update<Backend> decode_upload(std::span<const std::uint8_t> bytes,
                                     const adapter_set<Backend>& reference) {
  using T = typename Backend::scalar;
  const safetensors_file file =
      parse_safetensors(std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
  const auto& meta = file.metadata();
  const auto kind = meta.find("rolora.message");
  if (kind == meta.end() || kind->second != "upload") {
    detail::raise<value_error>("upload message: metadata 'rolora.message' must be 'upload'");
  }
  client_update<Backend> up;
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
  if (const auto clipped = meta.find("clipped"); clipped != meta.end()) {
    if (clipped->second != "1") {
      detail::raise<value_error>("upload message: metadata 'clipped' must be 1 when present");
    }
    up.clipped = true;
  }

  std::size_t expected = 0;
  up.adapters = reference;
  // The tensor `name` in the shape of `like` (reference's copy), checked before any conversion:
  // a legal empty tensor such as [0, 2^62] is refused here, not walked column by column.
  const auto matrix = [&](const std::string& name, const std::string& module, const char* what,
                          const typename Backend::matrix& like) {
    const tensor_view t = file.tensor(name);
    if (t.shape.size() != 2) {
      detail::raise<shape_error>("upload message: tensor '", name, "' must be 2-D, got ",
                                 t.shape_string());
    }
    if (t.shape[0] != std::uint64_t(Backend::rows(like)) ||
        t.shape[1] != std::uint64_t(Backend::cols(like))) {
      detail::raise<shape_error>(error_context::of_client(up.client), "module '", module,
                                 "' client ", up.client, ": ", what, " expected ",
                                 detail::shape_string(Backend::rows(like), Backend::cols(like)),
                                 ", got ", t.shape_string());
    }
    return Backend::from_host(to_host_matrix<T>(t));
  };
  for (auto& [name, a] : up.adapters) {
    for (const auto& [on, factor, target] :
         {std::tuple{factors.a, "lora_A", &a.A}, std::tuple{factors.b, "lora_B", &a.B}}) {
      if (!on) continue;
      const std::string key = "lora/" + name + "/" + factor;
      if (!file.contains(key)) {
        detail::raise<shape_error>(error_context::of_client(up.client), "module '", name,
                                   "' client ", up.client, ": ", factor,
                                   " missing from the upload message");
      }
      *target = matrix(key, name, factor, *target);
      ++expected;
    }
  }
  for (auto& [name, w] : up.adapters.modules_to_save()) {
    if (!file.contains("save/" + name)) {
      detail::raise<shape_error>(error_context::of_client(up.client), "module to save '", name,
                                 "' client ", up.client, ": missing from the upload message");
    }
    w = matrix("save/" + name, name, "weight", w);
    ++expected;
  }
  if (meta.count("optimizer_steps")) {
    up.optimizer = detail::msg::read_moments(file, reference, expected, "upload");
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
        detail::raise<shape_error>(error_context::of_client(up.client), "client ", up.client,
                                   ": upload message tensor '", name.substr(0, 80),
                                   "' is not a factor or module of the round");
      }
    }
  }
  return up;
}

// A download as the client reads it: what to train, what to upload, whether moments travel.
template <backend Backend>
struct decoded_download {
  client_download<Backend> download;
  factor_set uploads;  // the factors to send back
  bool keep_optimizer = false;
};

// The download `bytes` encode. value_error / shape_error on anything malformed: not safetensors,
// another message kind, metadata missing or not a number, a module without both factors or its
// scaling, factors or residual of inconsistent shapes, an unknown tensor, moments of no factor.
template <backend Backend>
decoded_download<Backend> decode_download(std::span<const std::uint8_t> bytes) {
  using T = typename Backend::scalar;
  using detail::msg::parse_number;
  constexpr const char* kind = "download";
  const safetensors_file file =
      parse_safetensors(std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
  const auto& meta = file.metadata();
  const auto what = meta.find("rolora.message");
  if (what == meta.end() || what->second != "download") {
    detail::raise<value_error>("download message: metadata 'rolora.message' must be 'download'");
  }
  decoded_download<Backend> out;
  auto& d = out.download;
  d.round = parse_number<std::size_t>(meta, "round", kind);
  d.client = parse_number<std::size_t>(meta, "client", kind);
  d.trains = detail::msg::parse_factors(meta, "trains", kind);
  out.uploads = detail::msg::parse_factors(meta, "uploads", kind);
  const auto opt = meta.find("optimizer");
  if (opt == meta.end() || (opt->second != "keep" && opt->second != "fresh")) {
    detail::raise<value_error>("download message: metadata 'optimizer' must be keep or fresh");
  }
  out.keep_optimizer = opt->second == "keep";
  if (meta.count("clip_norm") || meta.count("clip_factors")) {  // client-level DP: both
    privacy::clip_request clip;
    clip.norm = parse_number<double>(meta, "clip_norm", kind);
    if (!(clip.norm > 0.0 && std::isfinite(clip.norm))) {
      detail::raise<value_error>(
          "download message: metadata 'clip_norm' must be finite and > 0, "
          "got ",
          clip.norm);
    }
    clip.factors = detail::msg::parse_factors(meta, "clip_factors", kind);
    d.clip = clip;
  }

  std::size_t tensors = 0;
  for (const auto& name : file.names()) {
    if (!name.starts_with("lora/") || !name.ends_with("/lora_A") || name.size() <= 12) continue;
    const std::string module = name.substr(5, name.size() - 12);
    const std::string prefix = "lora/" + module + "/";
    lora_adapter<Backend> a;
    a.A = detail::msg::read_matrix<Backend>(file, name, kind);
    if (!file.contains(prefix + "lora_B")) {
      detail::raise<shape_error>("download message: module '", module.substr(0, 80),
                                 "' has lora_A but no lora_B");
    }
    a.B = detail::msg::read_matrix<Backend>(file, prefix + "lora_B", kind);
    a.scaling = parse_number<T>(meta, "scaling/" + module, kind);
    tensors += 2;
    if (file.contains(prefix + "residual")) {
      a.residual = detail::msg::read_matrix<Backend>(file, prefix + "residual", kind);
      ++tensors;
    }
    if (Backend::rows(a.A) < 1 || Backend::cols(a.A) < 1 || Backend::rows(a.B) < 1 ||
        Backend::cols(a.B) != Backend::rows(a.A) ||
        (a.has_residual() && (Backend::rows(a.residual) != Backend::rows(a.B) ||
                              Backend::cols(a.residual) != Backend::cols(a.A)))) {
      detail::raise<shape_error>(
          "download message: module '", module.substr(0, 80), "': lora_A ",
          detail::shape_string(Backend::rows(a.A), Backend::cols(a.A)), ", lora_B ",
          detail::shape_string(Backend::rows(a.B), Backend::cols(a.B)), " and residual ",
          detail::shape_string(Backend::rows(a.residual), Backend::cols(a.residual)),
          " do not fit [r, in], [out, r] and [out, in]");
    }
    d.adapters.insert(module, std::move(a));
  }
  if (d.adapters.empty()) detail::raise<shape_error>("download message: no LoRA module");
  for (const auto& name : file.names()) {
    if (!name.starts_with("save/")) continue;
    d.adapters.add_module_to_save(name.substr(5),
                                  detail::msg::read_matrix<Backend>(file, name, kind));
    ++tensors;
  }
  if (out.keep_optimizer) d.optimizer = detail::msg::read_moments(file, d.adapters, tensors, kind);
  if (file.size() != tensors) {
    for (const auto& name : file.names()) {
      const bool ok = name.starts_with("save/") ||
                      (out.keep_optimizer && name.starts_with("optimizer/")) ||
                      (name.starts_with("lora/") && [&] {
                        const auto slash = name.rfind('/');
                        return slash > 5 && d.adapters.contains(name.substr(5, slash - 5)) &&
                               (name.ends_with("/lora_A") || name.ends_with("/lora_B") ||
                                name.ends_with("/residual"));
                      }());
      if (!ok) {
        detail::raise<shape_error>("download message: tensor '", name.substr(0, 80),
                                   "' is not a factor, residual or module of the round");
      }
    }
  }
  return out;
}

// A client's whole answer to the download `bytes` for client `client` (the client side of the
// MPI and gRPC transports): decode it, check that it names `client`, train with train_locally,
// encode the upload. `round` receives the download's round once it is decoded (for the
// transports' test hooks). Throws whatever decoding or training throws.
template <backend Backend, class Task>
std::vector<std::uint8_t> answer_download(std::span<const std::uint8_t> bytes, std::size_t client,
                                          Task& task, const federation_config& config,
                                          std::size_t& round) {
  auto d = decode_download<Backend>(bytes);
  if (d.download.client != client) {
    detail::raise<value_error>("the download for client ", client, " names client ",
                               d.download.client);
  }
  round = d.download.round;
  return encode_upload(train_locally(task, std::move(d.download), config), d.uploads,
                       d.keep_optimizer);
}

}  // namespace rolora
