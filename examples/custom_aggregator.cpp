// custom_aggregator: extending rolora with a robust aggregator and a policy of one's own.
//
// The aggregator is the coordinate-wise median of the clients' copies of each factor (Yin et al.
// 2018), which a few poisoned clients cannot drag away; rolora::factorwise turns that reducer of
// one factor into a whole aggregator. The policy trains B in two rounds out of three and A in
// the third. Both run on the paper's linear-regression model with some clients poisoned (their
// gradients replaced by a large constant), beside fedavg; the program prints a progress line per
// round, writes one CSV per aggregator, and fails (exit 1) unless the median ends at a lower
// loss than the mean. docs/concepts.md shows the part between the BEGIN/END markers.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <limits>
#include <rolora/rolora.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

// BEGIN concepts.md
// A policy: B every round, except that every third round trains A (an A:B ratio of 1:2).
struct a_every_third_round {
  static constexpr std::string_view name = "a_every_third_round";
  rolora::factor_set trains(std::size_t t) const {
    return t % 3 == 2 ? rolora::only_a : rolora::only_b;
  }
  rolora::factor_set shares(std::size_t t) const { return trains(t); }
  rolora::factor_set keeps_local() const { return rolora::no_factors; }
};

// A reducer: the coordinate-wise median of the clients' copies of one factor (weights ignored).
struct coordinate_median_of_copies {
  static constexpr std::string_view name = "coordinate_median";
  template <class T>
  rolora::host_matrix<T> operator()(std::span<const rolora::host_matrix<T>> copies,
                                    std::span<const double> /*weights*/) const {
    rolora::host_matrix<T> out(copies[0].rows(), copies[0].cols());
    std::vector<T> v(copies.size());
    for (rolora::index_t i = 0; i < out.size(); ++i) {
      for (std::size_t k = 0; k < copies.size(); ++k) v[k] = copies[k].data()[i];
      std::sort(v.begin(), v.end());
      const std::size_t mid = v.size() / 2;
      out.data()[i] = v.size() % 2 ? v[mid] : (v[mid - 1] + v[mid]) / T(2);
    }
    return out;
  }
};
// ... and the aggregator: factorwise applies it to every shared factor of every module.
using coordinate_median = rolora::factorwise<coordinate_median_of_copies>;
// END concepts.md

namespace {

using backend = rolora::eigen_backend<double>;

// A client of the linear model that, when poisoned, replaces its gradients by a constant.
struct client {
  rolora::theory::linear_regression_task<backend> honest;
  double poison = 0.0;  // 0: honest; else the constant that replaces every gradient entry
  std::size_t num_samples() const { return honest.num_samples(); }
  double loss(const rolora::adapter_set<backend>& a) { return honest.loss(a); }
  double loss_and_grad(const rolora::adapter_set<backend>& a, std::span<const std::size_t> batch,
                       rolora::factor_set trains, rolora::gradient_set<backend>& grads) {
    const double l = honest.loss_and_grad(a, batch, trains, grads);
    if (poison != 0.0) {
      for (auto& [module, g] : grads.adapters) {
        g.dA.setConstant(poison);
        g.dB.setConstant(poison);
      }
    }
    return l;
  }
};

struct settings {
  rolora::theory::linear_problem_config problem;
  std::size_t poisoned = 2, rounds = 30;
  double poison = 1.0;
  std::string out = "results/custom_aggregator";
};

template <class Aggregator>
double run(const settings& s, std::vector<client>& clients) {
  const std::string label(Aggregator::name);
  rolora::federation_config config;
  config.num_rounds = s.rounds;
  config.local_steps = 3;
  config.local_optimizer = rolora::sgd{.lr = 0.3};
  rolora::lora_config lora;
  lora.r = s.problem.rank;
  lora.lora_alpha = double(s.problem.rank);
  const rolora::adapter_set<backend> initial({{"linear", s.problem.out_dim, s.problem.dim}}, lora,
                                             s.problem.seed + 1);
  rolora::federation<backend, a_every_third_round, Aggregator> fed({}, {}, config, initial);
  try {
    fed.run(clients, rolora::progress_line{label, s.rounds},
            rolora::csv_log(std::filesystem::path(s.out) / (label + ".csv"), label));
  } catch (const rolora::value_error& e) {  // the poisoned mean ran away to inf
    std::printf("%s stopped: %s\n", label.c_str(), e.what());
    return std::numeric_limits<double>::infinity();
  }
  double loss = 0;  // the honest clients' mean loss at the end
  std::size_t honest = 0;
  for (auto& c : clients) {
    if (c.poison == 0.0) loss += c.honest.loss(fed.global()), ++honest;
  }
  return loss / double(honest);
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  s.problem.dim = 12;
  s.problem.out_dim = 12;
  s.problem.rank = 2;
  s.problem.samples = 200;
  CLI::App app{
      "A robust aggregator (coordinate-wise median through rolora::factorwise) and a "
      "custom policy against fedavg, with some clients poisoned"};
  app.add_option("--clients", s.problem.clients, "number of clients")->capture_default_str();
  app.add_option("--poisoned", s.poisoned, "how many of them are poisoned")->capture_default_str();
  app.add_option("--poison", s.poison, "the gradient entry a poisoned client reports")
      ->capture_default_str();
  app.add_option("--rounds", s.rounds, "federated rounds")->capture_default_str();
  app.add_option("--seed", s.problem.seed, "seed of the data and of the adapters")
      ->capture_default_str();
  app.add_option("--out", s.out, "directory of the CSV logs (<aggregator>.csv)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    if (s.poisoned * 2 >= s.problem.clients) {
      rolora::detail::raise<rolora::config_error>(
          "--poisoned must be below half of --clients, got ", s.poisoned, " of ",
          s.problem.clients);
    }
    auto problem = rolora::theory::make_linear_problem<backend>(s.problem);
    std::vector<client> clients;
    for (std::size_t i = 0; i < problem.clients.size(); ++i) {
      clients.push_back({problem.clients[i], i < s.poisoned ? s.poison : 0.0});
    }
    const double mean_loss = run<rolora::fedavg>(s, clients);
    const double median_loss = run<coordinate_median>(s, clients);
    std::printf("honest clients' loss after %zu rounds: fedavg %.4e, coordinate_median %.4e\n",
                s.rounds, mean_loss, median_loss);
    std::printf("wrote %s/{fedavg,coordinate_median}.csv\n", s.out.c_str());
    return median_loss < mean_loss ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
