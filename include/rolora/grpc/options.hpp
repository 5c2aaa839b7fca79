// What a gRPC federation process is told (rolora/grpc/transport.hpp): its role, where to listen
// or dial, its certificates, the roster of identities, the run's fingerprint. No gRPC in here:
// programs fill it from their flags whether or not this build has the gRPC transport.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/grpc/frame.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace rolora::grpc {

// PEM files: the federation's CA, this party's certificate (chain) and its private key.
struct tls_files {
  std::string ca, cert, key;
};

// The fields that change a run's bits (method, rates, steps, seeds, model shapes, the base's
// hash, ...), name and value as text, in the program's order: a client whose fingerprint differs
// from the server's is refused with the first differing field named.
using fingerprint = std::vector<std::pair<std::string, std::string>>;

struct options {
  bool server = true;   // the server (listens), or a process hosting clients (dials out)
  std::string address;  // server: HOST:PORT to listen on (port 0: a free one); client: to dial
  std::vector<std::size_t> client_ids;  // client: the ids this process serves
  tls_files tls;                        // mutual TLS (both roles need all three files) ...
  bool insecure = false;                // ... unless this: plaintext, nobody authenticated
  // Server: certificate common name -> the client ids it may act as. Empty: CN "client-<N>" may
  // act as client N only.
  std::map<std::string, std::vector<std::size_t>> roster;
  double connect_timeout = 60;  // client: seconds of failed (re)connection before giving up
  rolora::grpc::fingerprint fingerprint;
  std::size_t chunk_bytes = default_chunk_bytes;             // payload per gRPC message
  std::uint64_t max_message_bytes = std::uint64_t(1) << 36;  // a longer declared message: refused
};

// "0,3,5" -> {0, 3, 5}; refuses anything else (empty items, non-digits, repeats).
inline std::vector<std::size_t> parse_client_ids(const std::string& text) {
  std::vector<std::size_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos ||
        item.size() > 9) {
      rolora::detail::raise<config_error>("client ids: '", text,
                                          "' is not a comma-separated list of ids such as 0,3,5");
    }
    const std::size_t id = std::stoul(item);
    for (std::size_t seen : ids) {
      if (seen == id) rolora::detail::raise<config_error>("client ids: ", id, " given twice");
    }
    ids.push_back(id);
  }
  if (ids.empty()) rolora::detail::raise<config_error>("client ids: none given");
  return ids;
}

// A roster file: one identity per line, "NAME ID[,ID...]" (NAME a certificate's common name);
// blank lines and lines starting with # ignored. A name missing from the file is refused, which
// is how an identity is revoked.
inline std::map<std::string, std::vector<std::size_t>> read_roster(const std::string& path) {
  std::ifstream in(path);
  if (!in) rolora::detail::raise<config_error>("roster ", path, ": cannot be read");
  std::map<std::string, std::vector<std::size_t>> roster;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    std::stringstream fields(line);
    std::string name, ids, extra;
    if (!(fields >> name) || name[0] == '#') continue;
    if (!(fields >> ids) || (fields >> extra)) {
      rolora::detail::raise<config_error>("roster ", path, " line ", number,
                                          ": expected 'NAME ID[,ID...]', got '", line, "'");
    }
    if (roster.count(name)) {
      rolora::detail::raise<config_error>("roster ", path, " line ", number, ": ", name,
                                          " listed twice");
    }
    roster[name] = parse_client_ids(ids);
  }
  return roster;
}

// The client ids identity `name` may act as under `roster` (see options::roster).
inline std::vector<std::size_t> allowed_ids(
    const std::map<std::string, std::vector<std::size_t>>& roster, const std::string& name) {
  if (!roster.empty()) {
    const auto it = roster.find(name);
    return it == roster.end() ? std::vector<std::size_t>{} : it->second;
  }
  const std::string prefix = "client-";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return {};
  try {
    return {parse_client_ids(name.substr(prefix.size())).at(0)};
  } catch (const error&) {
    return {};
  }
}

// The first field where `theirs` differs from `ours`, as a sentence; nothing when they agree.
inline std::optional<std::string> first_difference(const fingerprint& ours,
                                                   const fingerprint& theirs) {
  for (std::size_t i = 0; i < std::max(ours.size(), theirs.size()); ++i) {
    if (i >= ours.size()) {
      return rolora::detail::concat("field ", theirs[i].first, " is not in the server's run");
    }
    if (i >= theirs.size()) {
      return rolora::detail::concat("field ", ours[i].first,
                                    " is missing (server: ", ours[i].second, ")");
    }
    if (ours[i].first != theirs[i].first) {
      return rolora::detail::concat("field ", i, " is ", theirs[i].first, ", the server's ",
                                    ours[i].first);
    }
    if (ours[i].second != theirs[i].second) {
      return rolora::detail::concat(ours[i].first, " differs: server ", ours[i].second, ", client ",
                                    theirs[i].second);
    }
  }
  return std::nullopt;
}

}  // namespace rolora::grpc
