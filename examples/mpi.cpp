// mpi: the federation over MPI (target rolora::mpi). Rank 0 is the server, ranks 1..P-1 host the
// clients; every rank builds the same client tasks, only rank 0 holds the server's state. Run it
// as `mpirun -np 3 build/examples/mpi`. Rank 0 then runs the same federation in process and fails
// unless the two end with bit-identical adapters and the loss fell a hundredfold.
#include <cstdio>
#include <exception>
#include <rolora/mpi/transport.hpp>
#include <rolora/rolora.hpp>

using backend = rolora::eigen_backend<double>;
using method = rolora::federation<backend, rolora::alternating, rolora::fedavg>;

method make_federation() {
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 2;
  rolora::federation_config config;
  config.num_rounds = 20, config.local_steps = 5, config.local_optimizer = rolora::sgd{.lr = 0.5};
  config.clients_per_round = 4;  // of 5, drawn from the seed: the same on every transport
  return method({}, {}, config, rolora::adapter_set<backend>({{"linear", 8, 32}}, lora, 1));
}

int main(int argc, char** argv) {
  rolora::mpi::session session(argc, argv);  // MPI_Init; MPI_Finalize at the end
  try {
    rolora::theory::linear_problem_config data;
    data.dim = 32, data.out_dim = 8, data.rank = 2, data.clients = 5, data.samples = 300;
    auto clients = rolora::theory::make_linear_problem<backend>(data).clients;

    // BEGIN excerpt (docs/examples.md)
    rolora::mpi::transport transport;  // MPI_COMM_WORLD; needs 2 ranks or more
    method fed = make_federation();    // the same on every rank; only rank 0's state is used
    const auto rounds = rolora::run(transport, fed, clients, rolora::progress_line{"mpi", 20});
    if (!transport.is_server()) return 0;  // a client rank: it served until rank 0 finished
    // END excerpt

    method local = make_federation();
    local.run(clients);
    bool same = true;
    for (const auto& [name, a] : fed.global()) {
      same = same && a.A == local.global().at(name).A && a.B == local.global().at(name).B;
    }
    const double drop = rounds.front().train_loss / rounds.back().train_loss;
    std::printf("%d ranks: adapters %s the in-process run's; loss %.1e times lower\n",
                transport.size(), same ? "bit-identical to" : "DIFFERENT from", drop);
    return same && drop > 100 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);  // the other ranks would wait for this one for ever
    return 2;
  }
}
