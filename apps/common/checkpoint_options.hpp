// The applications' checkpoint options (--checkpoint-dir, --checkpoint-every, --resume): each
// method's server state in DIR/<method>/ (rolora/federated/checkpoint.hpp), see
// docs/distributed.md.
#pragma once
#include <CLI/CLI.hpp>
#include <cstddef>
#include <string>

namespace rolora::apps {

struct checkpoint_options {
  std::string dir, resume;  // checkpoints of method M in DIR/M/
  std::size_t every = 1;    // rounds (or iterations) between checkpoints

  // A resumed run keeps checkpointing where it resumed from unless told otherwise.
  void finish_parsing() {
    if (!resume.empty() && dir.empty()) dir = resume;
  }
};

// `unit`: what the application counts ("rounds", "iterations").
inline void add_checkpoint_options(CLI::App& app, checkpoint_options& c, const std::string& unit) {
  app.add_option(
         "--checkpoint-dir", c.dir,
         "checkpoint each method's server state into DIR/<method>/ (atomic; the newest kept)")
      ->type_name("DIR");
  app.add_option("--checkpoint-every", c.every, unit + " between checkpoints (and the last)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--resume", c.resume,
                 "continue a killed run from the checkpoints in DIR (same flags otherwise; keeps "
                 "checkpointing there unless --checkpoint-dir says elsewhere)")
      ->type_name("DIR");
}

}  // namespace rolora::apps
