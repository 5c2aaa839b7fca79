// What the federated drivers report, written once: a row per round (round_row), the progress
// callback that records and prints it and evaluates the model every few rounds
// (round_progress), the rows as checkpoint JSON (bit-exact, so a resumed CSV is byte-identical),
// a CSV file (csv_file; each driver keeps its published columns), the transformer drivers'
// per-method round CSV (write_round_csv), the peak RSS, and an accuracy curve for plot.hpp.
#pragma once
#include <sys/resource.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/federation.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "plot.hpp"

namespace rolora::apps {

struct round_row {
  std::size_t round = 0;  // 1-based
  std::string phase;      // which factors trained: "A", "B", "AB"
  double train_loss = 0, eval_loss = -1, eval_accuracy = -1;  // eval_*: -1 when not evaluated
  double aggregation_error = 0;
  std::size_t total_bytes_up = 0, total_bytes_down = 0;
  double seconds = 0;      // since the run began (a resumed run: since the original began)
  double memory_mib = -1;  // in use where the model runs, after the round; -1: not measured
  double epsilon = -1;     // client-level DP: the budget spent after the round; -1: no DP
  // --personal-eval: the mean over clients of each client's model (FedSA-LoRA: the shared A
  // with its own B) scored on its own share of the evaluation set; -1 when not evaluated.
  double personal_accuracy = -1;
};

// The per-round callback of a federated run (federation::run's on_round_end): records a row,
// evaluates at every eval_every-th round and the last, prints the progress line and calls
// `after` (checkpoints). Rows already in `rows` (a resumed run) are kept.
template <class Backend>
struct round_progress {
  std::string label;  // starts the progress line: the method (and rank)
  std::size_t rounds = 0, eval_every = 1;
  std::string eval_name = "test";
  // (loss, accuracy) of the global adapters on the evaluation set.
  std::function<std::pair<double, double>(const adapter_set<Backend>&)> evaluate;
  // Optional: the personal accuracy (round_row::personal_accuracy), right after `evaluate`.
  std::function<double()> evaluate_personal;
  std::function<double()> memory_mib;  // empty: the line shows no memory
  std::string memory_name = "RSS";
  std::function<void(const std::vector<round_row>& rows, bool last)> after;
  std::vector<round_row> rows;

  void on_round_end(const round_report& r, const adapter_set<Backend>& global) {
    round_row row{r.round + 1,
                  std::string(r.trained.label()),
                  r.train_loss,
                  -1,
                  -1,
                  r.aggregation_error,
                  r.total_bytes_up,
                  r.total_bytes_down,
                  (rows.empty() ? 0.0 : rows.back().seconds) + r.seconds,
                  memory_mib ? memory_mib() : -1.0,
                  r.epsilon.value_or(-1.0)};
    const bool last = row.round == rounds;
    if (last || row.round % eval_every == 0) {
      std::tie(row.eval_loss, row.eval_accuracy) = evaluate(global);
      if (evaluate_personal) row.personal_accuracy = evaluate_personal();
    }
    rows.push_back(row);
    char accuracy[16] = "  -   ";
    if (row.eval_accuracy >= 0) std::snprintf(accuracy, sizeof accuracy, "%.4f", row.eval_accuracy);
    std::printf(
        "%s round %3zu/%zu  phase %-2s  train loss %.4f  %s acc %s  agg err %.1e  up %7.2f MB  "
        "%6.1f s",
        label.c_str(), row.round, rounds, row.phase.c_str(), row.train_loss, eval_name.c_str(),
        accuracy, row.aggregation_error, double(row.total_bytes_up) / 1e6, row.seconds);
    if (row.personal_accuracy >= 0) std::printf("  personal acc %.4f", row.personal_accuracy);
    if (memory_mib) std::printf("  %s %.0f MiB", memory_name.c_str(), row.memory_mib);
    if (row.epsilon >= 0) std::printf("  eps %.4f", row.epsilon);
    if (r.secagg_clipped && *r.secagg_clipped > 0) {  // the encoding lost part of the updates
      std::printf("  secagg clipped %zu coordinates (raise --secagg-range)", *r.secagg_clipped);
    }
    std::printf("\n");
    std::fflush(stdout);
    if (after) after(rows, last);
  }
};

// Rows as JSON for a checkpoint's user data: doubles by their bits.
inline nlohmann::json rows_to_json(const std::vector<round_row>& rows) {
  const auto bits = [](double v) { return std::bit_cast<std::uint64_t>(v); };
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rows) {
    j.push_back({r.round, r.phase, bits(r.train_loss), bits(r.eval_loss), bits(r.eval_accuracy),
                 bits(r.aggregation_error), r.total_bytes_up, r.total_bytes_down, bits(r.seconds),
                 bits(r.memory_mib), bits(r.epsilon), bits(r.personal_accuracy)});
  }
  return j;
}

inline std::vector<round_row> rows_from_json(const nlohmann::json& j) {
  const auto value = [](const nlohmann::json& v) {
    return std::bit_cast<double>(v.get<std::uint64_t>());
  };
  std::vector<round_row> rows;
  for (const auto& r : j) {
    rows.push_back({r.at(0).get<std::size_t>(), r.at(1).get<std::string>(), value(r.at(2)),
                    value(r.at(3)), value(r.at(4)), value(r.at(5)), r.at(6).get<std::size_t>(),
                    r.at(7).get<std::size_t>(), value(r.at(8)),
                    r.size() > 9 ? value(r.at(9)) : -1.0, r.size() > 10 ? value(r.at(10)) : -1.0,
                    r.size() > 11 ? value(r.at(11)) : -1.0});
  }
  return rows;
}

// The evaluated rounds as a curve: (round, eval_accuracy).
inline series accuracy_curve(std::string title, const std::vector<round_row>& rows) {
  series line{std::move(title), {}};
  for (const auto& r : rows) {
    if (r.eval_accuracy >= 0) line.points.emplace_back(double(r.round), r.eval_accuracy);
  }
  return line;
}

// A CSV file: the header line, then one line per row() call with a printf format; the parent
// folder is made; value_error when it cannot be written.
class csv_file {
 public:
  csv_file(const std::filesystem::path& file, std::string_view header) : path_(file) {
    ensure_parent(file.string());
    out_ = std::fopen(file.c_str(), "w");
    if (!out_) raise<value_error>("cannot write ", file.string());
    std::fprintf(out_, "%.*s\n", int(header.size()), header.data());
  }
  csv_file(const csv_file&) = delete;
  csv_file& operator=(const csv_file&) = delete;
  ~csv_file() { std::fclose(out_); }

  template <class... Values>
  void row(const char* format, Values... values) {
    std::fprintf(out_, format, values...);
  }
  void flush() { std::fflush(out_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* out_ = nullptr;
};

// A number for a CSV cell: empty where it is not available (NaN: the aggregation error under
// secure aggregation, which needs each client's product).
inline std::string csv_number(double v, const char* format = "%.9g") {
  if (std::isnan(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// The transformer applications' CSV of one method (built-in model and --model alike): a line
// per round; with client-level DP an `epsilon` column (the budget spent after the round); with
// --personal-eval a `personal_accuracy` column (empty in rounds not evaluated).
inline void write_round_csv(const std::filesystem::path& file, const std::string& method, double lr,
                            const std::vector<round_row>& rows, bool dp, bool personal = false) {
  csv_file csv(file, std::string("method,lr,round,phase,train_loss,eval_loss,eval_accuracy,"
                                 "aggregation_error,total_bytes_up,total_bytes_down,seconds,"
                                 "memory_mib") +
                         (dp ? ",epsilon" : "") + (personal ? ",personal_accuracy" : ""));
  for (const auto& row : rows) {
    csv.row("%s,%g,%zu,%s,%.9g,%.9g,%.9g,%s,%zu,%zu,%.3f,%.1f", method.c_str(), lr, row.round,
            row.phase.c_str(), row.train_loss, row.eval_loss, row.eval_accuracy,
            csv_number(row.aggregation_error).c_str(), row.total_bytes_up, row.total_bytes_down,
            row.seconds, row.memory_mib);
    if (dp) csv.row(",%.9g", row.epsilon);
    if (personal) {
      csv.row(",%s", row.personal_accuracy < 0 ? "" : csv_number(row.personal_accuracy).c_str());
    }
    csv.row("%s", "\n");
  }
}

// The process's peak resident set size so far, in MiB.
inline double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // Linux: KiB
}

}  // namespace rolora::apps
