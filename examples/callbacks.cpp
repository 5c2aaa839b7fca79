// callbacks: what federation::run calls around each round. Three callbacks written here: a
// progress line, an early stop (on_round_end returns true once the loss is below a target) and a
// CSV of one's own (round, trained factors, loss, bytes uploaded). RoLoRA on the paper's
// linear-regression model; fails unless the run stopped early, right after the first round below
// the target, and the CSV holds one row per round that ran.
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <rolora/rolora.hpp>
#include <string>

// BEGIN excerpt (docs/examples.md)
// Each callback implements only the events it wants (both are detected, neither is required).
struct progress {
  void on_round_begin(std::size_t round) { std::printf("round %zu ...", round + 1); }
  template <rolora::backend B>
  void on_round_end(const rolora::round_report& r, const rolora::adapter_set<B>&) {
    std::printf(" trained %s, loss %.3e\n", r.trained.label().data(), r.train_loss);
  }
};

struct stop_below {
  double target;
  template <rolora::backend B>
  bool on_round_end(const rolora::round_report& r, const rolora::adapter_set<B>&) {
    return r.train_loss < target;  // true: no further round
  }
};

struct my_csv {
  std::ofstream out;
  explicit my_csv(const std::string& file) : out(file) { out << "round,trained,loss,bytes_up\n"; }
  template <rolora::backend B>
  void on_round_end(const rolora::round_report& r, const rolora::adapter_set<B>&) {
    out << r.round + 1 << ',' << r.trained.label() << ',' << r.train_loss << ',' << r.bytes_up
        << '\n'
        << std::flush;
  }
};
// END excerpt

int main() {
  using backend = rolora::eigen_backend<double>;
  rolora::theory::linear_problem_config data;
  data.dim = 32, data.out_dim = 8, data.rank = 2, data.clients = 5, data.samples = 300;
  auto clients = rolora::theory::make_linear_problem<backend>(data).clients;
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 2;
  rolora::federation_config config;
  config.num_rounds = 200, config.local_steps = 5, config.local_optimizer = rolora::sgd{.lr = 0.5};
  rolora::federation<backend, rolora::alternating, rolora::fedavg> fed(
      {}, {}, config, rolora::adapter_set<backend>({{"linear", 8, 32}}, lora, /*seed=*/1));

  const double target = 1e-6;
  const auto rounds = fed.run(clients, progress{}, stop_below{target}, my_csv("callbacks.csv"));

  std::ifstream csv("callbacks.csv");
  std::size_t lines = 0;
  for (std::string line; std::getline(csv, line);) ++lines;
  const bool stopped_early = rounds.size() < config.num_rounds;
  const bool at_first_below =
      rounds.back().train_loss < target && rounds[rounds.size() - 2].train_loss >= target;
  std::printf("stopped after %zu of %zu rounds; callbacks.csv has %zu lines\n", rounds.size(),
              config.num_rounds, lines);
  return stopped_early && at_first_below && lines == rounds.size() + 1 ? 0 : 1;
}
