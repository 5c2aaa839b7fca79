// custom_policy: an update policy of your own (the rolora::update_policy concept). It trains B in
// k - 1 rounds out of k and A in the k-th (an A:B ratio of 1:(k-1)), runs on the paper's
// linear-regression model with ten clients, and fails unless the rounds trained what the policy
// said, every aggregation was exact (one factor trains at a time, as in RoLoRA) and the loss fell
// a hundredfold. A policy that breaks the concept's invariants is refused when its round starts.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <rolora/rolora.hpp>
#include <string_view>

// BEGIN excerpt (docs/examples.md)
// A policy holds only hyper-parameters; the federation asks it, round by round, what trains.
struct a_every_kth_round {
  static constexpr std::string_view name = "a_every_kth_round";
  std::size_t k = 3;
  rolora::factor_set trains(std::size_t t) const {
    return t % k == k - 1 ? rolora::only_a : rolora::only_b;  // B first: B = 0 at the start
  }
  rolora::factor_set shares(std::size_t t) const { return trains(t); }  // upload what trained
  rolora::factor_set keeps_local() const { return rolora::no_factors; }
};
// END excerpt

// Breaks an invariant: it uploads A in rounds in which A does not train.
struct uploads_untrained_a : a_every_kth_round {
  static constexpr std::string_view name = "uploads_untrained_a";
  rolora::factor_set shares(std::size_t) const { return rolora::both_factors; }
};

using backend = rolora::eigen_backend<double>;

template <class Policy>
auto make_federation(Policy policy, std::size_t rounds) {
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 2;
  rolora::federation_config config;
  config.num_rounds = rounds, config.local_steps = 5;
  config.local_optimizer = rolora::sgd{.lr = 0.5};
  return rolora::federation<backend, Policy, rolora::fedavg>(
      policy, {}, config, rolora::adapter_set<backend>({{"linear", 16, 32}}, lora, /*seed=*/1));
}

int main() {
  rolora::theory::linear_problem_config data;
  data.dim = 32, data.out_dim = 16, data.rank = 2, data.clients = 10, data.samples = 300;
  auto clients = rolora::theory::make_linear_problem<backend>(data).clients;

  auto fed = make_federation(a_every_kth_round{.k = 3}, 45);
  const auto rounds = fed.run(clients, rolora::progress_line{"a_every_3rd_round", 45});
  bool as_said = true;
  double worst_error = 0;
  for (const auto& r : rounds) {
    as_said = as_said && r.trained == fed.policy().trains(r.round) && r.shared == r.trained;
    worst_error = std::max(worst_error, r.relative_aggregation_error);
  }
  const double drop = rounds.front().train_loss / rounds.back().train_loss;
  std::printf(
      "trained as the policy said: %s; worst relative aggregation error %.1e; loss %.1e times "
      "lower\n",
      as_said ? "yes" : "no", worst_error, drop);

  bool refused = false;
  try {
    auto broken = make_federation(uploads_untrained_a{}, 1);
    broken.run(clients);
  } catch (const rolora::config_error& e) {
    std::printf("refused as it should be: %s\n", e.what());
    refused = true;
  }
  return as_said && worst_error < 1e-12 && drop > 100 && refused ? 0 : 1;
}
