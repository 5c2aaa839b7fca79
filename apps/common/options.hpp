// The command-line options the research drivers share, each declared once here: its name, its
// check and its help. A driver binds an option to its own field; the field's value at that moment
// is the default --help shows, so drivers keep their own defaults (30 rounds for the toy, 20 for
// fine-tuning) under one spelling. A new shared flag (differential privacy, secure aggregation)
// is one more member of `shared_options`, and each driver that supports it adds one call.
#pragma once
#include <CLI/CLI.hpp>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <rolora/federated/methods.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint_options.hpp"
#include "client_split.hpp"

namespace rolora::apps {

// Local learning rates: --lr for every method, else the rate tuned for the method on the
// validation split (docs/results.md), else `otherwise`.
struct learning_rates {
  std::map<std::string, double, std::less<>> tuned;
  double otherwise = 1e-3;
  std::optional<double> all = std::nullopt;  // --lr

  double operator()(std::string_view method) const {
    if (all) return *all;
    const auto it = tuned.find(method);
    return it != tuned.end() ? it->second : otherwise;
  }
};

class shared_options {
 public:
  explicit shared_options(CLI::App& app) : app_(app) {}

  CLI::Option* clients(std::size_t& n, const std::string& help = "number of clients") {
    return app_.add_option("--clients", n, help)
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
  }
  // --split, --alpha, --classes-per-client; `what`: the data being split ("training e-mails").
  void split(client_split& s, const std::string& what) { add_split_options(app_, s, what); }
  CLI::Option* rounds(std::size_t& n, const std::string& help = "communication rounds") {
    return app_.add_option("--rounds", n, help)
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
  }
  CLI::Option* local_steps(std::size_t& n,
                           const std::string& help = "local optimizer steps per round") {
    return app_.add_option("--local-steps", n, help)
        ->check(CLI::Range(1, 1000000))
        ->capture_default_str();
  }
  CLI::Option* batch(std::size_t& n, const std::string& help = "local batch size") {
    return app_.add_option("--batch", n, help)->check(CLI::Range(1, 100000))->capture_default_str();
  }
  CLI::Option* clients_per_round(std::size_t& n) {
    return app_.add_option("--clients-per-round", n, "clients sampled per round (0: all)")
        ->capture_default_str();
  }
  CLI::Option* seed(
      std::uint64_t& s,
      const std::string& help = "seed of the split, the adapters, sampling and batching") {
    return app_.add_option("--seed", s, help)->capture_default_str();
  }
  CLI::Option* threads(
      std::size_t& n,
      const std::string& help = "clients trained in parallel (results do not depend on it)") {
    return app_.add_option("--threads", n, help)->check(CLI::Range(1, 1024))->capture_default_str();
  }
  // --lr: one rate for every method (default: each method's tuned rate, listed in `help`).
  CLI::Option* lr(learning_rates& lr, const std::string& help) {
    return app_
        .add_option_function<double>(
            "--lr", [&lr](double v) { lr.all = v; }, help)
        ->check(CLI::PositiveNumber);
  }
  // --lr for a single run (pretraining): a plain value with its default shown.
  CLI::Option* lr(double& lr, const std::string& help) {
    return app_.add_option("--lr", lr, help)->check(CLI::PositiveNumber)->capture_default_str();
  }
  // --methods: names of method_list (the paper's three when paper_only) and `extra` ("head").
  CLI::Option* methods(std::vector<std::string>& chosen, bool paper_only,
                       const std::vector<std::string>& extra, const std::string& note) {
    auto names = method_names(paper_only);
    std::string help = "methods to run:";
    for (const auto& n : names) help += " " + n + " (" + std::string(method_title(n)) + "),";
    help.pop_back();
    if (!note.empty()) help += "; " + note;
    names.insert(names.end(), extra.begin(), extra.end());
    return app_.add_option("--methods", chosen, help)
        ->delimiter(',')
        ->check(CLI::IsMember(names))
        ->capture_default_str();
  }
  CLI::Option* eval_every(std::size_t& n) {
    return app_.add_option("--eval-every", n, "evaluate every N rounds")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
  }
  CLI::Option* validation(bool& on, const std::string& help) {
    return app_.add_flag("--validation", on, help);
  }
  CLI::Option* out(std::string& dir, const std::string& help = "output folder") {
    return app_.add_option("--out", dir, help)->capture_default_str();
  }
  // --checkpoint-dir, --checkpoint-every, --resume; `unit`: "rounds" or "iterations".
  void checkpoint(checkpoint_options& c, const std::string& unit) {
    add_checkpoint_options(app_, c, unit);
  }

 private:
  CLI::App& app_;
};

}  // namespace rolora::apps
