// linear_regression_theory: the linear-regression theory check of the RoLoRA paper (Chen et al.
// 2024, section 4). Runs RoLoRA, FFA-LoRA and FedIT -- and, on request, FedSA-LoRA, FlexLoRA,
// FLoRA, FedEx-LoRA and FedRot-LoRA -- on one synthetic federated least-squares problem from the
// same A0, prints sin theta(A, A*), loss, aggregation error and upload per iteration, then sets the
// measurements beside the closed-form references: the Theorem 4.5 contraction bound (RoLoRA), the
// Proposition 4.6 loss floor (FFA-LoRA) and the Eckart-Young optimum (all). Optionally writes a
// CSV, .npy trajectories and a gnuplot plot of sin theta against iteration, and checkpoints every
// method's server so that a killed run resumes with the same bits. With --data DIR it runs the same
// methods on your own regression data (client_<i>_X.npy / client_<i>_Y.npy), measured against the
// empirical rank-r optimum.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <bit>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/federated/methods.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <rolora/theory/methods.hpp>
#include <rolora/theory/npy_data.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/exit_code.hpp"
#include "common/options.hpp"
#include "common/plot.hpp"
#include "common/report.hpp"
#include "common/transport_options.hpp"

namespace {

namespace apps = rolora::apps;
namespace th = rolora::theory;
using backend = rolora::eigen_backend<double>;
using history = std::vector<th::iteration_record>;

struct method_run {
  th::method method;
  history records;
};

struct settings {
  std::string method = "all";
  th::linear_problem_config problem;
  th::method_options run;
  std::string csv, plot;
  std::string data;        // client_<i>_X.npy / client_<i>_Y.npy instead of a synthetic problem
  std::string write_data;  // export the synthetic problem's client data as .npy
  std::string npy;         // per-method trajectories as <method>_trajectory.npy
  bool quiet = false;
  apps::checkpoint_options checkpoint;  // --checkpoint-dir, --checkpoint-every, --resume
  std::size_t crash_after = 0;          // testing: SIGKILL itself after this many iterations
  apps::transport_options transport;    // --transport, --client-timeout, --on-bad-update, ...
  apps::dp_settings dp;                 // --dp client, --clip-norm, --noise-multiplier, ...
};

constexpr double converged = 1e-6;     // "sin theta went below" threshold in the summary
constexpr double noise_floor = 1e-12;  // contractions measured only while sin theta is above
constexpr double log_floor = 1e-16;    // the plot clamps values below this for the log axis

// "RoLoRA" for th::method::rolora: the registry's title (rolora/federated/methods.hpp).
const char* display_name(th::method m) { return rolora::method_title(th::method_name(m)).data(); }

// Worst and geometric-mean per-iteration contraction sin_{t+1} / sin_t over the iterations that
// start above the noise floor.
struct contraction {
  double worst = 0.0, geometric_mean = 0.0;
  std::size_t iterations = 0;
};
contraction measure_contraction(const history& h) {
  contraction c;
  double log_sum = 0.0;
  for (std::size_t t = 0; t + 1 < h.size() && h[t].sin_theta > noise_floor; ++t) {
    const double ratio = std::max(h[t + 1].sin_theta, 1e-300) / h[t].sin_theta;
    c.worst = std::max(c.worst, ratio);
    log_sum += std::log(ratio);
    ++c.iterations;
  }
  if (c.iterations > 0) c.geometric_mean = std::exp(log_sum / double(c.iterations));
  return c;
}

// With client-level DP, one more column: epsilon, spent after the iteration (0 at iteration 0).
void write_csv(const std::string& file, const std::vector<method_run>& runs, bool dp) {
  apps::csv_file csv(file, dp ? "method,iteration,sin_theta,loss,aggregation_error,gap_to_optimum,"
                                "bytes_up,bytes_down,epsilon"
                              : "method,iteration,sin_theta,loss,aggregation_error,gap_to_optimum,"
                                "bytes_up,bytes_down");
  for (const auto& run : runs) {
    for (const auto& r : run.records) {
      const std::string method(th::method_name(run.method));
      if (dp) {
        csv.row("%s,%zu,%.17g,%.17g,%s,%.17g,%zu,%zu,%.17g\n", method.c_str(), r.iteration,
                r.sin_theta, r.loss, apps::csv_number(r.aggregation_error, "%.17g").c_str(),
                r.gap_to_optimum, r.bytes_up, r.bytes_down, r.epsilon.value_or(0.0));
      } else {
        csv.row("%s,%zu,%.17g,%.17g,%s,%.17g,%zu,%zu\n", method.c_str(), r.iteration, r.sin_theta,
                r.loss, apps::csv_number(r.aggregation_error, "%.17g").c_str(), r.gap_to_optimum,
                r.bytes_up, r.bytes_down);
      }
    }
  }
}

// sin theta against iteration for every method (clamped to 1e-16 for the log axis), and the
// Theorem 4.5 bound when it applies; false when gnuplot is missing or fails (common/plot.hpp).
bool write_plot(const std::string& file, const std::vector<method_run>& runs, const settings& s,
                const th::linear_problem_config& c, double bound_rate, bool draw_bound) {
  std::vector<apps::series> lines;
  for (const auto& run : runs) {
    apps::series line{display_name(run.method), {}};
    for (const auto& r : run.records)
      line.points.emplace_back(double(r.iteration), std::max(r.sin_theta, log_floor));
    lines.push_back(std::move(line));
  }
  if (draw_bound) {
    const double sin0 = runs.front().records.front().sin_theta;
    apps::series bound{"Theorem 4.5 bound", {}, "lines dashtype 2 lw 2 lc rgb 'gray40'"};
    for (std::size_t t = 0; t <= s.run.iterations; ++t)
      bound.points.emplace_back(double(t),
                                std::max(sin0 * std::pow(bound_rate, double(t)), log_floor));
    lines.push_back(std::move(bound));
  }
  char title[256];
  std::snprintf(title, sizeof title,
                "Federated linear regression: d = %td, k = %td, r = %td, clients = %zu, m = %zu, "
                "η = %g%s",
                c.dim, c.out_dim, c.rank, c.clients, c.samples, s.run.eta,
                c.heterogeneous ? ", heterogeneous" : "");
  return apps::draw_chart(file,
                          {title, "iteration", "sin θ(A, A*) (subspace distance)", true,
                           "bottom left", "*:2", "0:" + std::to_string(s.run.iterations)},
                          lines);
}

// One [iterations + 1, 7] float64 array per method: iteration, sin_theta, loss,
// aggregation_error, gap_to_optimum, bytes_up, bytes_down (the CSV's columns).
void write_trajectories(const std::string& dir, const std::vector<method_run>& runs) {
  std::filesystem::create_directories(dir);
  for (const auto& run : runs) {
    th::host t(rolora::index_t(run.records.size()), 7);
    for (std::size_t i = 0; i < run.records.size(); ++i) {
      const auto& r = run.records[i];
      t.row(rolora::index_t(i)) << double(r.iteration), r.sin_theta, r.loss, r.aggregation_error,
          r.gap_to_optimum, double(r.bytes_up), double(r.bytes_down);
    }
    rolora::save_npy(
        std::filesystem::path(dir) / (std::string(th::method_name(run.method)) + "_trajectory.npy"),
        t);
  }
}

// Checkpoints of one method's run in DIR/<method>/ (rolora/federated/checkpoint.hpp): the
// federation's server, and the records so far as the checkpoint's user JSON (doubles by their
// bits, so that the CSV of a resumed run is byte-identical).
struct checkpointing {
  const settings& s;
  th::method method;
  std::size_t& iterations_run;  // in this process, over every method (--crash-after)
  apps::app_transport& transport;

  // MPI client ranks serve the method's rounds; rank 0 (or the one process) runs them.
  template <class Task>
  bool serve_clients(const rolora::federation_config& config, std::vector<Task>& clients) {
    return transport.serve<backend>(clients, config);
  }
  template <class Federation, class Task>
  rolora::round_report run_round(Federation& fed, std::vector<Task>& clients) {
    return transport.run_round(fed, clients);
  }

  nlohmann::json identity() const {
    const auto& c = s.problem;
    return {
        {"method", th::method_name(method)},
        {"problem",
         {{"dim", c.dim},
          {"out_dim", c.out_dim},
          {"rank", c.rank},
          {"clients", c.clients},
          {"samples", c.samples},
          {"noise", c.noise},
          {"heterogeneous", c.heterogeneous},
          {"heterogeneity", c.heterogeneity},
          {"seed", c.seed}}},
        {"eta", s.run.eta},
        {"local_steps", s.run.local_steps},
        {"init_angle", s.run.init_angle ? nlohmann::json(*s.run.init_angle) : nlohmann::json()}};
  }
  static nlohmann::json to_json(const history& h) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : h) {
      rows.push_back({r.iteration, std::bit_cast<std::uint64_t>(r.sin_theta),
                      std::bit_cast<std::uint64_t>(r.loss),
                      std::bit_cast<std::uint64_t>(r.aggregation_error),
                      std::bit_cast<std::uint64_t>(r.gap_to_optimum), r.bytes_up, r.bytes_down});
      if (r.epsilon) rows.back().push_back(std::bit_cast<std::uint64_t>(*r.epsilon));
    }
    return rows;
  }
  static history from_json(const nlohmann::json& rows) {
    history h;
    for (const auto& r : rows) {
      h.push_back({r.at(0).get<std::size_t>(), std::bit_cast<double>(r.at(1).get<std::uint64_t>()),
                   std::bit_cast<double>(r.at(2).get<std::uint64_t>()),
                   std::bit_cast<double>(r.at(3).get<std::uint64_t>()),
                   std::bit_cast<double>(r.at(4).get<std::uint64_t>()), r.at(5).get<std::size_t>(),
                   r.at(6).get<std::size_t>()});
      if (r.size() > 7) h.back().epsilon = std::bit_cast<double>(r.at(7).get<std::uint64_t>());
    }
    return h;
  }

  template <class Server>
  void resume(Server& server, history& records) {
    if (s.checkpoint.resume.empty()) return;
    const auto from = std::filesystem::path(s.checkpoint.resume) / th::method_name(method);
    if (!rolora::has_checkpoint(from)) return;  // the run was killed before this method began
    const auto user = rolora::load_checkpoint(from, server, identity());
    records = from_json(user.at("records"));
    if (records.empty() || records.size() > s.run.iterations + 1) {
      throw std::runtime_error("checkpoint " + from.string() + " holds " +
                               std::to_string(records.size()) + " records; --rounds " +
                               std::to_string(s.run.iterations) + " needs at most " +
                               std::to_string(s.run.iterations + 1));
    }
    std::printf("%-11s resumed after iteration %zu from %s\n", display_name(method),
                records.back().iteration, from.c_str());
  }

  template <class Server>
  void iteration_done(const Server& server, const history& records) {
    const std::size_t it = records.back().iteration;
    if (!s.checkpoint.dir.empty() && (it % s.checkpoint.every == 0 || it == s.run.iterations)) {
      rolora::save_checkpoint(std::filesystem::path(s.checkpoint.dir) / th::method_name(method),
                              server, identity(), {{"records", to_json(records)}});
    }
    if (s.crash_after != 0 && ++iterations_run == s.crash_after) std::raise(SIGKILL);
  }
};

void print_progress(const method_run& run, bool dp) {
  for (const auto& r : run.records) {
    std::printf("%-11s %5zu %13.6e %13.6e %13.6e %12zu", display_name(run.method), r.iteration,
                r.sin_theta, r.loss, r.aggregation_error, r.bytes_up);
    if (dp) std::printf(" %10.4f", r.epsilon.value_or(0.0));
    std::printf("\n");
  }
}

// --dp sample: q = B / m (B = 0: 1).
double privacy_rate(const settings& s, std::size_t samples) {
  return s.run.batch_size == 0 ? 1.0 : double(s.run.batch_size) / double(samples);
}

// The method's options: client DP's noise, when asked for by --target-epsilon alone, is the
// smallest that meets it over this method's rounds (RoLoRA: 2 per iteration).
th::method_options options_for(const settings& s, th::method m) {
  th::method_options o = s.run;
  if (s.dp.on()) o.dp = s.dp.to_client_dp(s.run.iterations * th::rounds_per_iteration(m));
  if (s.dp.sample()) {  // DP-SGD: a client takes local_steps steps in each of the method's rounds
    const std::size_t m_samples = s.problem.samples;
    const double q = privacy_rate(s, m_samples);
    o.sample_dp =
        s.dp.to_sample_dp(s.run.iterations * th::rounds_per_iteration(m) * s.run.local_steps, q);
  }
  return o;
}

th::linear_problem<backend> make_problem(const settings& s) {
  if (s.data.empty()) return th::make_linear_problem<backend>(s.problem);
  const auto arrays = th::read_client_arrays(s.data);
  return th::linear_problem_from_data<backend>(arrays.inputs, arrays.targets, s.problem.rank);
}

int run_check(const settings& s, apps::app_transport& transport) {
  std::vector<th::method> methods;
  for (auto m : th::all_methods) {
    const bool paper = m == th::method::rolora || m == th::method::ffa || m == th::method::fedit;
    if ((s.method == "all" && paper) || s.method == "every" || s.method == th::method_name(m)) {
      methods.push_back(m);
    }
  }
  std::vector<std::string> names;
  for (auto m : methods) names.emplace_back(th::method_name(m));
  if (const auto why = apps::refusal_of(names, s.dp.on(), s.transport.secure_aggregation);
      !why.empty()) {
    rolora::raise<rolora::config_error>(why);  // before any round, in one line
  }
  auto problem = make_problem(s);
  if (!transport.is_server()) {  // an MPI client rank: host this rank's clients, method by method
    std::size_t none = 0;
    for (auto m : methods)
      th::run_method(problem, m, options_for(s, m), checkpointing{s, m, none, transport});
    return 0;
  }
  if (!s.data.empty()) {
    std::printf(
        "data: %zu clients from %s, d = %td, k = %td, %zu..%zu samples each; reference: the "
        "rank-%td minimiser "
        "of the empirical loss\n",
        problem.clients.size(), s.data.c_str(), problem.config.dim, problem.config.out_dim,
        problem.config.samples,
        std::max_element(
            problem.clients.begin(), problem.clients.end(),
            [](const auto& a, const auto& b) { return a.num_samples() < b.num_samples(); })
            ->num_samples(),
        problem.config.rank);
  }
  if (!s.write_data.empty()) {
    th::write_client_arrays(s.write_data, problem);
    std::printf("wrote the client data to %s/client_<i>_{X,Y}.npy\n", s.write_data.c_str());
  }
  const auto a0 = th::initial_a(problem.reference_rows(), s.run.init_angle, s.run.seed);

  if (!s.quiet) {
    std::printf("%-11s %5s %13s %13s %13s %12s%s\n", "method", "iter", "sin_theta", "loss",
                "agg_error", "bytes_up", s.dp.any() ? "    epsilon" : "");
  }
  std::vector<method_run> runs;
  std::size_t iterations_run = 0;
  for (auto m : methods) {
    runs.push_back({m, th::run_method(problem, m, options_for(s, m),
                                      checkpointing{s, m, iterations_run, transport})});
    transport.finish();
    if (!s.quiet) print_progress(runs.back(), s.dp.any());
  }

  const auto& c = problem.config;
  const double optimum = th::optimal_loss(problem);
  std::printf(
      "\nSummary: d = %td, k = %td, r = %td, clients = %zu, m = %zu, eta = %g, tau = %zu, "
      "%s targets, %zu iterations\n",
      c.dim, c.out_dim, c.rank, c.clients, c.samples, s.run.eta, s.run.local_steps,
      problem.from_data ? "users' data"
      : c.heterogeneous ? "heterogeneous"
                        : "homogeneous",
      s.run.iterations);
  std::printf("%-11s %13s %13s %13s %13s %13s %12s %10s %12s\n", "method", "sin_theta", "loss",
              "gap_to_opt", "optimal_loss", "max_agg_err", "bytes_up", "bytes/iter", "bytes_down");
  for (const auto& run : runs) {
    const auto& last = run.records.back();
    double max_error = 0.0;  // NaN (not available under secure aggregation) stays NaN
    for (const auto& r : run.records) {
      max_error = std::isnan(r.aggregation_error) ? r.aggregation_error
                                                  : std::max(max_error, r.aggregation_error);
    }
    const std::string error = std::isnan(max_error) ? "n/a" : apps::csv_number(max_error, "%.6e");
    std::printf("%-11s %13.6e %13.6e %13.6e %13.6e %13s %12zu %10zu %12zu\n",
                display_name(run.method), last.sin_theta, last.loss, last.gap_to_optimum, optimum,
                error.c_str(), last.bytes_up,
                s.run.iterations ? last.bytes_up / s.run.iterations : 0, last.bytes_down);
  }
  if (s.dp.on()) {
    for (const auto& run : runs) {
      const auto o = options_for(s, run.method);
      std::printf(
          "privacy: %-11s epsilon %.9g (client-level DP, delta %g, q %g, z %.9g, %zu rounds, "
          "clip norm %g%s)\n",
          display_name(run.method), run.records.back().epsilon.value_or(0.0), o.dp->delta,
          o.dp->sampling_rate, o.dp->noise_multiplier,
          s.run.iterations * th::rounds_per_iteration(run.method), o.dp->clip_norm,
          o.dp->adaptive ? ", adaptive" : "");
    }
  }
  if (s.dp.sample()) {
    for (const auto& run : runs) {
      const auto o = options_for(s, run.method);
      std::printf(
          "privacy: %-11s epsilon %.9g (sample-level DP-SGD, delta %g, q %g, z %.9g, %zu steps, "
          "clip norm %g, %s batches)\n",
          display_name(run.method), run.records.back().epsilon.value_or(0.0), o.sample_dp->delta,
          privacy_rate(s, s.problem.samples), o.sample_dp->noise_multiplier,
          s.run.iterations * th::rounds_per_iteration(run.method) * s.run.local_steps,
          o.sample_dp->clip_norm, s.dp.batch_sampling.c_str());
    }
  }
  std::printf(
      "(one iteration: a B round + an A round for RoLoRA, one round for the others; RoLoRA, "
      "FFA-LoRA and FedSA-LoRA upload one factor per round, the others both; aggregation "
      "error in weight units, ||mean_i delta_i - delta'||_F)\n");

  double rate = 0.0;
  bool draw_bound = false;
  for (const auto& run : runs) {
    const auto& h = run.records;
    if (run.method == th::method::rolora) {
      std::printf("\nRoLoRA:\n");
      if (problem.from_data) {
        std::printf(
            "  users' data (Theorem 4.5 does not apply); to the empirical rank-%td optimum:\n"
            "  final sin theta %.3e, ||BA - W_opt|| / ||W_opt|| = %.3e, loss - optimal = %.3e\n",
            c.rank, h.back().sin_theta, h.back().gap_to_optimum, h.back().loss - optimum);
        continue;
      }
      if (c.heterogeneous) {
        std::printf(
            "  heterogeneous targets (Theorem 4.5 does not apply); to the Eckart-Young optimum:\n"
            "  final sin theta %.3e, ||BA - W_opt|| / ||W_opt|| = %.3e, loss - optimal = %.3e\n",
            h.back().sin_theta, h.back().gap_to_optimum, h.back().loss - optimum);
        continue;
      }
      const double delta0 = h.front().sin_theta, sigma = th::sigma_min(problem.b_star);
      rate = th::theorem_4_5_rate(s.run.eta, delta0, sigma);
      draw_bound = true;
      const auto k = measure_contraction(h);
      std::printf(
          "  Theorem 4.5 bound per iteration: sqrt(1 - eta (1 - delta0^2) sigma_min(B*)^2) "
          "= %.6f  (delta0 = %.6f, sigma_min(B*) = %.4f)\n",
          rate, delta0, sigma);
      std::printf(
          "  measured contraction over %zu iterations with sin theta > %.0e: worst %.6f, "
          "geometric mean %.6f -> bound %s\n",
          k.iterations, noise_floor, k.worst, k.geometric_mean,
          c.noise > 0  ? "not checked (noise > 0: sin theta stalls at the statistical error)"
          : s.dp.any() ? "not checked (differential privacy: clipped, noised updates are not the "
                         "theorem's gradient steps)"
          : k.worst <= rate * (1 + 1e-9) ? "holds"
                                         : "VIOLATED");
      const auto hit =
          std::find_if(h.begin(), h.end(), [](const auto& r) { return r.sin_theta < converged; });
      if (hit != h.end()) {
        std::printf("  sin theta < %.0e at iteration %zu\n", converged, hit->iteration);
      } else {
        std::printf("  sin theta stayed above %.0e (final %.3e)\n", converged, h.back().sin_theta);
      }
    } else if (run.method == th::method::ffa && !problem.from_data) {
      const double floor = th::ffa_loss_floor(problem, a0);
      std::printf(
          "\nFFA-LoRA: A frozen at A0 (sin theta = %.6f); Proposition 4.6 loss floor %.6e, "
          "final loss %.6e, ratio final/floor %.4f\n",
          h.front().sin_theta, floor, h.back().loss, h.back().loss / floor);
    }
  }

  if (!s.csv.empty()) {
    write_csv(s.csv, runs, s.dp.any());
    std::printf("\nwrote %s\n", s.csv.c_str());
  }
  if (!s.plot.empty()) {
    const bool drawn = write_plot(s.plot, runs, s, c, rate, draw_bound);
    if (s.csv.empty()) std::printf("\n");
    if (drawn) std::printf("wrote %s (data: %s.dat)\n", s.plot.c_str(), s.plot.c_str());
  }
  if (!s.npy.empty()) {
    write_trajectories(s.npy, runs);
    std::printf("wrote %s/<method>_trajectory.npy\n", s.npy.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Linear-regression theory check of RoLoRA (Chen et al. 2024, section 4): RoLoRA, "
      "FFA-LoRA and FedIT (and FedSA-LoRA, FlexLoRA, FLoRA, FedEx-LoRA, FedRot-LoRA on "
      "request) on a synthetic federated least-squares problem, beside the closed-form "
      "references."};
  settings s;
  auto& c = s.problem;
  double init_angle = 0.0;
  apps::shared_options shared(app);
  std::vector<std::string> method_choices{"all", "every"};
  for (auto m : th::all_methods) method_choices.emplace_back(th::method_name(m));
  app.add_option("--method", s.method,
                 "method to run: all = the paper's three (rolora, ffa, fedit), every = all eight")
      ->check(CLI::IsMember(method_choices))
      ->capture_default_str();
  shared.clients(c.clients, "number of clients K");
  app.add_option("--rank", c.rank, "rank r of the targets and of the adapter")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--dim", c.dim, "input dimension d")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--out-dim", c.out_dim, "output dimension k")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  c.samples = 1000;
  app.add_option("--samples", c.samples, "samples m per client")
      ->check(CLI::Range(1, 100000000))
      ->capture_default_str();
  s.run.iterations = 50;  // enough for sin theta < 1e-6 from a random A0 at the default eta
  shared.rounds(s.run.iterations,
                "number of iterations; one iteration = one B round + one A round for RoLoRA, "
                "one round for the other methods");
  app.add_option("--eta", s.run.eta, "gradient step size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  shared.local_steps(s.run.local_steps,
                     "local gradient steps tau per round (FedIT and the other two-factor methods: "
                     "on both factors, RoLoRA: on A)");
  app.add_flag("--heterogeneous", c.heterogeneous, "give each client its own target W*_i");
  app.add_option("--heterogeneity", c.heterogeneity, "how far W*_i strays from B* A*")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--noise", c.noise, "std of the Gaussian noise on the targets")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  auto* angle = app.add_option("--init-angle", init_angle,
                               "sin theta of A0 to the reference rows (default: random A0)")
                    ->check(CLI::Range(0.0, 1.0));
  shared.seed(c.seed, "seed of the data and of A0");
  shared.threads(s.run.threads, "clients trained in parallel");
  app.add_option("--csv", s.csv, "write the per-iteration records as CSV to FILE")
      ->type_name("FILE");
  app.add_option("--plot", s.plot, "draw sin theta vs iteration with gnuplot into FILE (.png/.svg)")
      ->type_name("FILE")
      ->check([](const std::string& f) {
        const auto ext = std::filesystem::path(f).extension();
        return ext == ".png" || ext == ".svg" ? std::string()
                                              : "plot file must end in .png or .svg";
      });
  app.add_option(
         "--data", s.data,
         "run on your own data: DIR holds client_0_X.npy [m_0, d], client_0_Y.npy [m_0, k] (or "
         "[m_0]), "
         "client_1_X.npy, ... (float32/float64, C or Fortran order); --clients, --dim, --out-dim, "
         "--samples, --noise and --heterogeneous are then ignored")
      ->type_name("DIR")
      ->check(CLI::ExistingDirectory);
  app.add_option("--write-data", s.write_data,
                 "write the problem's client data as .npy into DIR (the --data layout)")
      ->type_name("DIR");
  app.add_option(
         "--npy", s.npy,
         "write each method's trajectory as DIR/<method>_trajectory.npy (the CSV's columns)")
      ->type_name("DIR");
  app.add_option("--batch-size", s.run.batch_size,
                 "minibatch size B of the local gradient steps (0: all m samples); with --dp "
                 "sample the sampling rate is q = B / m")
      ->capture_default_str();
  app.add_flag("--quiet", s.quiet, "print only the summary");
  shared.checkpoint(s.checkpoint, "iterations");
  shared.client_dp(s.dp);
  apps::add_transport_options(app, s.transport);
  app.add_option("--crash-after", s.crash_after,
                 "testing: kill this process with SIGKILL after N iterations")
      ->group("");
  CLI11_PARSE(app, argc, argv);
  s.checkpoint.finish_parsing();
  if (s.dp.sample() && !s.data.empty()) {
    std::fprintf(stderr,
                 "error: --dp sample takes the synthetic problem only for now (with --data the "
                 "clients' sample counts, and so their rates q = B / n_c, differ)\n");
    return 2;
  }

  s.run.seed = c.seed;
  if (angle->count() > 0) s.run.init_angle = init_angle;
  s.transport.apply(s.run);
  // What a gRPC client process must share with the server: every flag but its own (the data
  // directory's path among them: a client may read its own copy).
  s.transport.fingerprint = apps::fingerprint_of(app, {"data", "write-data"});
  s.transport.fingerprint.emplace_back("data", s.data.empty() ? "synthetic" : "files");
  apps::app_transport transport(argc, argv, s.transport);
  return apps::exit_code_of([&] { return run_check(s, transport); },
                            [&](int code) { return transport.fail(code); });
}
