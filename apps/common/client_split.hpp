// How the applications split labelled training data among clients: the command-line options
// (--split, --alpha, --classes-per-client) and the partition they name, with a one-line
// description for the log.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <rolora/core/error.hpp>
#include <rolora/federated/partition.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace rolora::apps {

struct client_split {
  std::string kind = "iid";  // iid | dirichlet (label skew) | classes (k classes per client)
  double alpha = 0.5;        // Dirichlet concentration
  std::size_t classes_per_client = 1;  // --split classes
};

inline void add_split_options(CLI::App& app, client_split& s, const std::string& what) {
  app.add_option("--split", s.kind,
                 "how the " + what +
                     " are split among clients: iid, dirichlet (label skew, --alpha) or classes "
                     "(each client holds --classes-per-client classes)")
      ->check(CLI::IsMember({"iid", "dirichlet", "classes"}))
      ->capture_default_str();
  app.add_option("--alpha", s.alpha, "Dirichlet concentration (--split dirichlet; any value > 0)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--classes-per-client", s.classes_per_client,
                 "classes each client holds (--split classes)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
}

// Every client gets at least one sample; `description` says how the split was made, including
// how many samples were moved to reach that minimum (rolora/federated/partition.hpp).
inline partition split_among_clients(const std::vector<int>& labels, std::size_t clients,
                                     const client_split& s, std::uint64_t seed,
                                     std::string& description) {
  std::size_t moved = 0;
  std::ostringstream d;
  partition parts;
  if (s.kind == "dirichlet") {
    parts = partition_dirichlet(labels, clients, s.alpha, seed, 1, &moved);
    d << "dirichlet, alpha " << s.alpha;
  } else if (s.kind == "classes") {
    parts = partition_classes(labels, clients, s.classes_per_client, seed, 1, &moved);
    d << s.classes_per_client << (s.classes_per_client == 1 ? " class" : " classes")
      << " per client";
  } else if (s.kind == "iid") {
    parts = partition_iid(labels.size(), clients, seed);
    d << "iid";
  } else {
    raise<config_error>("split_among_clients: unknown split '", s.kind,
                        "' (expected iid, dirichlet or classes)");
  }
  if (moved > 0)
    d << "; " << moved << " samples moved from the largest clients so each has at least 1";
  description = d.str();
  return parts;
}

}  // namespace rolora::apps
