// checkpoint_resume: a federation's server state as a checkpoint directory, and a fresh federation
// that resumes from it. Runs 8 of 20 rounds, saves, resumes into a new federation (as a restarted
// process would), runs the other 12, and fails unless the adapters are bit for bit those of an
// uninterrupted 20-round run. AdamW with kept moments, client sampling and minibatches: the
// checkpoint holds the optimizer state, and the random streams are keyed by round.
#include <cstdio>
#include <filesystem>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/rolora.hpp>

using backend = rolora::eigen_backend<double>;
using method = rolora::federation<backend, rolora::alternating, rolora::fedavg>;

method make_federation(std::size_t rounds) {
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 2;
  rolora::federation_config config;
  config.num_rounds = rounds, config.local_steps = 4, config.batch_size = 32;
  config.clients_per_round = 4, config.seed = 3, config.keep_optimizer_state = true;
  config.local_optimizer = rolora::adamw{.lr = 0.02};
  return method({}, {}, config, rolora::adapter_set<backend>({{"linear", 8, 24}}, lora, 1));
}

bool same_bits(const rolora::adapter_set<backend>& x, const rolora::adapter_set<backend>& y) {
  for (const auto& [name, a] : x) {
    if (a.A != y.at(name).A || a.B != y.at(name).B) return false;
  }
  return true;
}

int main() {
  rolora::theory::linear_problem_config data;
  data.dim = 24, data.out_dim = 8, data.rank = 2, data.clients = 6, data.samples = 200;
  auto clients = rolora::theory::make_linear_problem<backend>(data).clients;
  const std::filesystem::path dir = "checkpoint_resume_ckpt";
  std::filesystem::remove_all(dir);

  // BEGIN excerpt (docs/examples.md)
  // What else a resume must match (the data), beside backend, policy, aggregator and config.
  const nlohmann::json identity = {{"data_seed", data.seed}, {"clients", data.clients}};
  method interrupted = make_federation(20);
  for (int t = 0; t < 8; ++t) interrupted.run_round(clients);  // killed after round 8 ...
  rolora::save_checkpoint(dir, interrupted.server(), identity);

  method resumed = make_federation(20);  // ... and restarted: same flags, same data
  rolora::load_checkpoint(dir, resumed.server(), identity);    // round, adapters, AdamW moments
  resumed.run(clients, rolora::progress_line{"resumed", 20});  // rounds 9 to 20
  // END excerpt

  method uninterrupted = make_federation(20);
  uninterrupted.run(clients);
  const bool same = same_bits(resumed.global(), uninterrupted.global());
  std::printf("resumed after round 8: adapters %s the uninterrupted run's\n",
              same ? "bit-identical to" : "DIFFERENT from");

  bool refused = false;  // a checkpoint of other data is refused
  try {
    method other = make_federation(20);
    rolora::load_checkpoint(dir, other.server(), nlohmann::json{{"data_seed", 99}});
  } catch (const rolora::config_error& e) {
    std::printf("refused as it should be: %s\n", e.what());
    refused = true;
  }
  return same && refused && resumed.next_round() == 20 ? 0 : 1;
}
