// Callbacks every federated program wants (the round_begin_callback / round_end_callback contract
// of core/concepts.hpp), after ensmallen's PrintLoss, EarlyStopAtMinLoss and friends:
//
//   progress_line     one line per round: trained factors, loss, aggregation error, upload, time
//   csv_log           one CSV row per round, flushed as it goes (a crash keeps the rounds so far)
//   early_stopping    stops the run when a metric (default: the training loss) has not improved
//                     for `patience` rounds
//
// Pass any of them to federation::run(tasks, callbacks...); each is used by one run at a time.
#pragma once
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/federation.hpp>
#include <string>
#include <system_error>
#include <utility>

namespace rolora {

// "<label> round  3/20  trained B   loss 1.2345e-02  agg err 1.0e-16  up 12.35 kB   0.1 s", on
// `out` (stdout by default), flushed. num_rounds = 0 leaves out the "/20".
struct progress_line {
  std::string label;
  std::size_t num_rounds = 0;
  std::FILE* out = stdout;

  template <backend Backend>
  void on_round_end(const round_report& r, const adapter_set<Backend>&) const {
    if (!label.empty()) std::fprintf(out, "%s ", label.c_str());
    std::fprintf(out, "round %3zu", r.round + 1);
    if (num_rounds > 0) std::fprintf(out, "/%zu", num_rounds);
    std::fprintf(out, "  trained %-2s  loss %.4e  agg err %.1e  up %8.2f kB  %5.1f s\n",
                 r.trained.label().data(), r.train_loss, r.aggregation_error,
                 double(r.total_bytes_up) / 1e3, r.seconds);
    std::fflush(out);
  }
};

// Writes `file` (parent directories created) with the header
//   label,round,trained,shared,participants,train_loss,aggregation_error,
//   relative_aggregation_error,bytes_up,bytes_down,total_bytes_up,total_bytes_down,seconds
// and one row per round (round counted from 1, numbers with 17 significant digits). Throws
// rolora::error when the file cannot be written.
class csv_log {
 public:
  explicit csv_log(const std::filesystem::path& file, std::string label = "")
      : label_(std::move(label)) {
    std::error_code ec;
    if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path(), ec);
    out_.reset(std::fopen(file.string().c_str(), "w"), closer{});
    if (!out_.get()) {
      detail::raise<error>("csv_log: cannot open '", file.string(), "' for writing",
                           ec ? ": " + ec.message() : std::string());
    }
    std::fprintf(out_.get(),
                 "label,round,trained,shared,participants,train_loss,aggregation_error,"
                 "relative_aggregation_error,bytes_up,bytes_down,total_bytes_up,"
                 "total_bytes_down,seconds\n");
  }

  template <backend Backend>
  void on_round_end(const round_report& r, const adapter_set<Backend>&) const {
    std::fprintf(out_.get(), "%s,%zu,%s,%s,%zu,%.17g,%.17g,%.17g,%zu,%zu,%zu,%zu,%.6f\n",
                 label_.c_str(), r.round + 1, r.trained.label().data(), r.shared.label().data(),
                 r.participants.size(), r.train_loss, r.aggregation_error,
                 r.relative_aggregation_error, r.bytes_up, r.bytes_down, r.total_bytes_up,
                 r.total_bytes_down, r.seconds);
    std::fflush(out_.get());
  }

 private:
  struct closer {
    void operator()(std::FILE* f) const {
      if (f) std::fclose(f);
    }
  };
  std::string label_;
  std::shared_ptr<std::FILE> out_;
};

// The training loss of the round: early_stopping's default metric.
struct train_loss_metric {
  template <backend Backend>
  double operator()(const round_report& r, const adapter_set<Backend>&) const {
    return r.train_loss;
  }
};

// Stops the run after the round in which `metric(report, global)` (lower is better) has gone
// `patience` rounds in a row without dropping below its best value so far minus `min_delta`
// (ensmallen's EarlyStopAtMinLoss). A NaN metric counts as no improvement.
template <class Metric = train_loss_metric>
struct early_stopping {
  std::size_t patience = 5;
  double min_delta = 0.0;
  Metric metric{};
  double best = std::numeric_limits<double>::infinity();
  std::size_t rounds_without_improvement = 0;

  template <backend Backend>
  bool on_round_end(const round_report& r, const adapter_set<Backend>& global) {
    const double value = metric(r, global);
    if (value < best - min_delta) {
      best = value;
      rounds_without_improvement = 0;
      return false;
    }
    return ++rounds_without_improvement >= patience;
  }
};

}  // namespace rolora
