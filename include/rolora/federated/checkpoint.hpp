// Checkpoint and resume of a federation's server (federated/server.hpp): its whole state as files
// in a directory, so that a run killed at any moment continues with the same bits.
//
//   DIR/latest                      "ckpt-<seq>": the complete checkpoint to resume from
//   DIR/ckpt-<seq>/server.json      round, RNG position, byte totals, residual increments, per
//                                   client bookkeeping, client DP's state (rounds accounted, C),
//                                   the description a resume must match (and its FNV-1a
//                                   fingerprint), the caller's own JSON ("user")
//   DIR/ckpt-<seq>/server.safetensors
//                                   tensors in the backend's precision (F32/F64, exact):
//                                   global/<module>/{lora_A,lora_B,residual}, global_save/<name>,
//                                   client/<c>/local/<module>/{lora_A,lora_B},
//                                   client/<c>/optimizer/<buffer> (optimizer_state::buffers)
// A checkpoint is written into DIR/.tmp-ckpt-<seq>, every file fsynced, renamed to ckpt-<seq>,
// then `latest` is replaced the same way (temporary file, fsync, rename, fsync of DIR) and older
// checkpoints are removed: a crash at any point leaves `latest` naming a complete checkpoint.
//
// The RNG position is the round: sampling, dropout and batching draw from counter-based streams
// keyed by (seed, round, client) (federated/sampling.hpp), so no generator state needs saving.
// A resume is refused (config_error naming the first difference) unless backend, policy and
// aggregator names, every federation_config field that changes bits (all but num_rounds and
// threads), client DP's parameters (clip norm, noise, sampling, adaptive clipping, budget), the
// model's modules and shapes, and the caller's `identity` JSON (data, method hyper-parameters,
// anything else the run depends on) are those of the checkpoint. POSIX only (open/fsync/rename).
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/server.hpp>
#include <rolora/io/json.hpp>
#include <rolora/io/safetensors.hpp>
#include <span>
#include <string>
#include <vector>

namespace rolora {

namespace detail::ckpt {

using json = nlohmann::json;

// Writes `bytes` to a new file `path` and fsyncs it.
inline void write_durably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail<error>("io", "cannot create '", path.string(), "': ", std::strerror(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ::ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      fail<error>("io", "cannot write '", path.string(), "': ", std::strerror(e));
    }
    done += std::size_t(n);
  }
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    fail<error>("io", "cannot fsync '", path.string(), "': ", std::strerror(e));
  }
  if (::close(fd) != 0)
    fail<error>("io", "cannot close '", path.string(), "': ", std::strerror(errno));
}

inline void write_durably(const std::filesystem::path& path, const std::string& text) {
  write_durably(path, std::span<const std::uint8_t>(
                          reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

// Makes the entries of directory `dir` (creations, renames) durable.
inline void sync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    fail<error>("io", "cannot open directory '", dir.string(), "': ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0) fail<error>("io", "cannot fsync directory '", dir.string(), "': ", std::strerror(e));
}

inline void rename_or_fail(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::rename(from, to, ec);
  if (ec)
    fail<error>("io", "cannot rename '", from.string(), "' to '", to.string(), "': ", ec.message());
}

// The sequence number of a checkpoint directory name "ckpt-<seq>", if it is one.
inline std::optional<std::uint64_t> sequence_of(const std::string& name) {
  if (!name.starts_with("ckpt-") || name.size() == 5 || name.size() > 25) return std::nullopt;
  std::uint64_t seq = 0;
  for (char c : name.substr(5)) {
    if (c < '0' || c > '9') return std::nullopt;
    seq = seq * 10 + std::uint64_t(c - '0');
  }
  return seq;
}

// FNV-1a, 64 bits, as 16 hex digits.
inline std::string fingerprint(const std::string& text) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

// "path = value" for every leaf of `j`, in key order.
inline void flatten(const json& j, const std::string& path,
                    std::map<std::string, std::string>& out) {
  if (j.is_object() && !j.empty()) {
    for (const auto& [k, v] : j.items()) flatten(v, path.empty() ? k : path + "." + k, out);
  } else {
    out[path] = j.dump();
  }
}

// The first leaf in which `saved` and `now` differ, as "<path> = <saved>; this run has <now>".
inline std::string first_difference(const json& saved, const json& now) {
  std::map<std::string, std::string> a, b;
  flatten(saved, "", a);
  flatten(now, "", b);
  for (const auto& [path, value] : a) {
    const auto it = b.find(path);
    if (it == b.end()) return concat(path, " = ", value, "; this run has no ", path);
    if (it->second != value) return concat(path, " = ", value, "; this run has ", it->second);
  }
  for (const auto& [path, value] : b) {
    if (!a.count(path)) return concat("no ", path, "; this run has ", path, " = ", value);
  }
  return "an unknown difference";
}

inline json describe(const optimizer& o) {
  if (const auto* s = std::get_if<sgd>(&o)) {
    return {{"kind", "sgd"},
            {"lr", s->lr},
            {"momentum", s->momentum},
            {"weight_decay", s->weight_decay}};
  }
  const auto& a = std::get<adamw>(o);
  return {{"kind", "adamw"},  {"lr", a.lr},   {"beta1", a.beta1},
          {"beta2", a.beta2}, {"eps", a.eps}, {"weight_decay", a.weight_decay}};
}

// What a resume must match: everything but num_rounds and threads, which change no bit.
template <class Server>
json describe(const Server& server, const json& identity) {
  using Backend = typename Server::backend_type;
  const federation_config& c = server.config();
  json model = json::object(), saved = json::object();
  for (const auto& [name, a] : server.global()) {
    model[name] = {{"out", a.out_features()}, {"in", a.in_features()}, {"rank", a.rank()}};
  }
  for (const auto& [name, w] : server.global().modules_to_save()) {
    saved[name] = {{"rows", Backend::rows(w)}, {"cols", Backend::cols(w)}};
  }
  json d = {{"backend", std::string(Backend::name)},
            {"policy", std::string(std::remove_cvref_t<decltype(server.policy())>::name)},
            {"aggregator", std::string(std::remove_cvref_t<decltype(server.aggregator())>::name)},
            {"config",
             {{"clients_per_round", c.clients_per_round},
              {"client_dropout", c.client_dropout},
              {"local_steps", c.local_steps},
              {"batch_size", c.batch_size},
              {"local_optimizer", describe(c.local_optimizer)},
              {"keep_optimizer_state", c.keep_optimizer_state},
              {"client_weighting",
               c.client_weighting == weighting::by_samples ? "by_samples" : "uniform"},
              {"closed_form_b", c.closed_form_b},
              {"measure_aggregation_error", c.measure_aggregation_error},
              {"client_ranks", c.client_ranks},
              {"client_rank_scaling", int(c.client_rank_scaling)},
              {"on_bad_update", c.on_bad_update == bad_update_policy::drop ? "drop" : "fail"},
              {"min_clients", c.min_clients},
              {"max_abs_entry", c.max_abs_entry},
              {"seed", c.seed}}},
            {"model", {{"adapters", model}, {"modules_to_save", saved}}},
            {"identity", identity}};
  if (c.sample_dp) {  // sample-level DP-SGD's parameters belong to the run's identity
    const auto& p = *c.sample_dp;
    d["sample_dp"] = {
        {"clip_norm", p.clip_norm},
        {"noise_multiplier", p.noise_multiplier},
        {"sampling", p.sampling == privacy::batch_sampling::poisson ? "poisson" : "fixed"},
        {"target_epsilon", p.target_epsilon ? json(*p.target_epsilon) : json(nullptr)},
        {"delta", p.delta}};
  }
  if constexpr (requires { server.privacy().clip_norm; }) {  // client-level DP's parameters
    const auto& p = server.privacy();
    json adaptive = nullptr;
    if (p.adaptive) {
      adaptive = {{"target_unclipped_quantile", p.adaptive->target_unclipped_quantile},
                  {"learning_rate", p.adaptive->learning_rate},
                  {"bit_noise", p.adaptive->bit_noise}};
    }
    d["privacy"] = {
        {"mechanism", std::string(p.name)},
        {"clip_norm", p.clip_norm},
        {"noise_multiplier", p.noise_multiplier},
        {"sampling", p.sampling == privacy::client_sampling::poisson ? "poisson" : "fixed"},
        {"sampling_rate", p.sampling_rate},
        {"adaptive", adaptive},
        {"target_epsilon", p.target_epsilon ? json(*p.target_epsilon) : json(nullptr)},
        {"delta", p.delta}};
    // Secure noise and its grid, only when chosen: a seeded run's description (and every
    // checkpoint written before secure noise existed) is unchanged, and a resume that switches
    // between seeded and secure noise is refused like any other change of DP parameters.
    if (p.noise == privacy::noise_source::secure) {
      d["privacy"]["noise"] = "secure";
      d["privacy"]["relative_granularity"] = p.relative_granularity;
    }
  }
  return d;
}

template <class Backend>
tensor_dtype dtype_of() {
  return sizeof(typename Backend::scalar) == 4 ? tensor_dtype::f32 : tensor_dtype::f64;
}

template <class Backend>
void put(std::map<std::string, tensor_data>& tensors, const std::string& name,
         const typename Backend::matrix& m) {
  tensors.emplace(name, make_tensor(Backend::to_host(m), dtype_of<Backend>()));
}

}  // namespace detail::ckpt

// True when `dir` holds a checkpoint to resume from.
inline bool has_checkpoint(const std::filesystem::path& dir) {
  return std::filesystem::is_regular_file(dir / "latest");
}

// Writes the server's state as the newest checkpoint of `dir` (created if needed). `identity`:
// what else a resume must match; `user`: any JSON the caller wants back from load_checkpoint
// (e.g. its log so far).
template <class Server>
void save_checkpoint(const std::filesystem::path& dir, const Server& server,
                     const nlohmann::json& identity = {}, const nlohmann::json& user = {}) {
  namespace fs = std::filesystem;
  using Backend = typename Server::backend_type;
  using detail::ckpt::put;
  const auto state = server.save();

  nlohmann::json j;
  j["format"] = "rolora.checkpoint";
  j["version"] = 1;
  j["round"] = state.round;
  j["rng"] = {{"seed", server.config().seed}, {"next_round", state.round}};
  const auto description = detail::ckpt::describe(server, identity);
  j["description"] = description;
  j["fingerprint"] = detail::ckpt::fingerprint(description.dump());
  j["bytes"] = {{"total_up", state.total_bytes_up}, {"total_down", state.total_bytes_down}};
  j["residual_increments"] = state.residual_increments;
  if constexpr (requires { state.privacy.clip_norm; }) {  // the accountant's state and C, exact
    j["privacy"] = {{"rounds", state.privacy.rounds},
                    {"clip_norm_bits", std::bit_cast<std::uint64_t>(state.privacy.clip_norm)}};
  }
  std::map<std::string, tensor_data> tensors;
  for (const auto& [name, a] : state.global) {
    j["scaling"][name] = double(a.scaling);
    put<Backend>(tensors, "global/" + name + "/lora_A", a.A);
    put<Backend>(tensors, "global/" + name + "/lora_B", a.B);
    if (a.has_residual()) put<Backend>(tensors, "global/" + name + "/residual", a.residual);
  }
  for (const auto& [name, w] : state.global.modules_to_save())
    put<Backend>(tensors, "global_save/" + name, w);
  j["clients"] = nlohmann::json::array();
  for (std::size_t c = 0; c < state.clients.size(); ++c) {
    const auto& client = state.clients[c];
    const std::string prefix = "client/" + std::to_string(c) + "/";
    j["clients"].push_back({{"residual_synced", client.residual_synced},
                            {"local", client.local.has_value()},
                            {"optimizer_steps", client.optimizer.steps()},
                            {"dp_sgd_steps", client.dp_sgd_steps},
                            {"dp_samples", client.dp_samples}});
    if (client.local) {
      for (const auto& [name, a] : *client.local) {
        put<Backend>(tensors, prefix + "local/" + name + "/lora_A", a.A);
        put<Backend>(tensors, prefix + "local/" + name + "/lora_B", a.B);
      }
    }
    for (const auto& [key, m] : client.optimizer.buffers())
      put<Backend>(tensors, prefix + "optimizer/" + key, m);
  }
  j["user"] = user;

  fs::create_directories(dir);
  std::uint64_t seq = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (const auto s = detail::ckpt::sequence_of(entry.path().filename().string()))
      seq = std::max(seq, *s + 1);
  }
  const std::string name = "ckpt-" + std::to_string(seq);
  const fs::path tmp = dir / (".tmp-" + name), final_dir = dir / name;
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  detail::ckpt::write_durably(tmp / "server.safetensors", serialize_safetensors(tensors));
  detail::ckpt::write_durably(tmp / "server.json", j.dump(1));
  detail::ckpt::sync_directory(tmp);
  detail::ckpt::rename_or_fail(tmp, final_dir);
  detail::ckpt::sync_directory(dir);
  detail::ckpt::write_durably(dir / ".latest.tmp", name + "\n");
  detail::ckpt::rename_or_fail(dir / ".latest.tmp", dir / "latest");
  detail::ckpt::sync_directory(dir);
  for (const auto& entry : fs::directory_iterator(dir)) {  // older checkpoints, unfinished ones
    const std::string other = entry.path().filename().string();
    if (other != name && (detail::ckpt::sequence_of(other) || other.starts_with(".tmp-ckpt-"))) {
      std::error_code ignored;
      fs::remove_all(entry.path(), ignored);
    }
  }
}

// Restores `server` from the newest checkpoint of `dir` and returns its `user` JSON. config_error
// naming the first difference when the checkpoint was written by another backend, policy,
// aggregator, config, model or `identity`; value_error when its files are damaged; server
// unchanged on any error.
template <class Server>
nlohmann::json load_checkpoint(const std::filesystem::path& dir, Server& server,
                               const nlohmann::json& identity = {}) {
  using Backend = typename Server::backend_type;
  using T = typename Backend::scalar;
  using json = nlohmann::json;
  if (!has_checkpoint(dir))
    detail::fail<error>("io", "no checkpoint in '", dir.string(), "' (no file 'latest')");
  const auto latest_bytes = read_file_bytes(dir / "latest");
  std::string name(latest_bytes.begin(), latest_bytes.end());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (!detail::ckpt::sequence_of(name)) {
    detail::raise<value_error>("checkpoint: '", (dir / "latest").string(),
                               "' must name a ckpt-<number> directory, got '", name.substr(0, 64),
                               "'");
  }
  const auto where = dir / name;
  json j;
  try {
    const auto text = read_file_bytes(where / "server.json");
    // The project's bounded JSON reader (io/json.hpp): a damaged or hostile file cannot nest the
    // parser into a stack overflow, and duplicate keys are refused.
    j = detail::json_io::parse_json<json>(
        text, [&](detail::json_io::fault, const std::string& why) {
          detail::raise<value_error>("checkpoint '", where.string(),
                                     "': server.json is damaged: ", why);
        });
    if (j.at("format") != "rolora.checkpoint" || j.at("version") != 1) {
      detail::raise<value_error>("checkpoint: '", where.string(),
                                 "' is not a version 1 rolora checkpoint");
    }
    const json now = detail::ckpt::describe(server, identity);
    if (j.at("fingerprint") != detail::ckpt::fingerprint(now.dump())) {
      detail::raise<config_error>("checkpoint '", where.string(),
                                  "' belongs to another run: it has ",
                                  detail::ckpt::first_difference(j.at("description"), now));
    }
    const auto file = read_safetensors(where / "server.safetensors");
    typename Server::snapshot s;
    s.round = j.at("round").get<std::size_t>();
    s.total_bytes_up = j.at("bytes").at("total_up").get<std::size_t>();
    s.total_bytes_down = j.at("bytes").at("total_down").get<std::size_t>();
    s.residual_increments = j.at("residual_increments").get<std::vector<std::size_t>>();
    if constexpr (requires { s.privacy.clip_norm; }) {
      s.privacy.rounds = j.at("privacy").at("rounds").get<std::size_t>();
      s.privacy.clip_norm =
          std::bit_cast<double>(j.at("privacy").at("clip_norm_bits").get<std::uint64_t>());
    }
    s.global = server.global();  // names, shapes and what the file does not hold
    for (auto& [module, a] : s.global) {
      const std::string p = "global/" + module + "/";
      a.A = Backend::from_host(file.expect_matrix<T>(p + "lora_A", a.rank(), a.in_features()));
      a.B = Backend::from_host(file.expect_matrix<T>(p + "lora_B", a.out_features(), a.rank()));
      a.residual = file.contains(p + "residual")
                       ? Backend::from_host(file.expect_matrix<T>(p + "residual", a.out_features(),
                                                                  a.in_features()))
                       : typename Backend::matrix{};
      a.scaling = static_cast<T>(j.at("scaling").at(module).template get<double>());
    }
    for (auto& [module, w] : s.global.modules_to_save()) {
      w = Backend::from_host(
          file.expect_matrix<T>("global_save/" + module, Backend::rows(w), Backend::cols(w)));
    }
    const json& clients = j.at("clients");
    for (std::size_t c = 0; c < clients.size(); ++c) {
      const std::string prefix = "client/" + std::to_string(c) + "/";
      auto& client = s.clients.emplace_back();
      client.residual_synced = clients[c].at("residual_synced").get<std::size_t>();
      client.dp_sgd_steps = clients[c].value("dp_sgd_steps", std::size_t{0});  // sample-level DP
      client.dp_samples = clients[c].value("dp_samples", std::size_t{0});
      if (clients[c].at("local").get<bool>()) {
        client.local = s.global;
        for (auto& [module, a] : *client.local) {
          const index_t r = server.rank_of(c, a);
          a.A = Backend::from_host(
              file.expect_matrix<T>(prefix + "local/" + module + "/lora_A", r, a.in_features()));
          a.B = Backend::from_host(
              file.expect_matrix<T>(prefix + "local/" + module + "/lora_B", a.out_features(), r));
        }
      }
      std::map<std::string, typename Backend::matrix> buffers;
      const std::string opt = prefix + "optimizer/";
      for (const auto& tensor : file.names()) {
        if (tensor.starts_with(opt)) {
          buffers.emplace(tensor.substr(opt.size()),
                          Backend::from_host(to_host_matrix<T>(file.tensor(tensor))));
        }
      }
      client.optimizer = optimizer_state<Backend>::restore(
          clients[c].at("optimizer_steps").get<std::size_t>(), buffers);
    }
    server.restore(std::move(s));
    return j.at("user");
  } catch (const json::exception& e) {
    detail::raise<value_error>("checkpoint '", where.string(),
                               "': server.json is damaged: ", e.what());
  }
}

}  // namespace rolora
