// The client side of a round: download -> local training with the client's task -> upload.
//
// A client_download is what the server sends client c in round t: the adapters as c uses them
// (the global ones at c's rank, with the factors c keeps local) and the factors to train. The
// client trains them for `local_steps` steps on its own data (or solves B exactly, when the task
// can and the config asks) and answers with a client_update: the trained adapters, its sample
// count and its mean step loss. The server (federated/server.hpp) treats every upload as hostile.
#pragma once
#include <cstddef>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/federated/sampling.hpp>
#include <rolora/federated/task.hpp>
#include <rolora/privacy/client_dp.hpp>

namespace rolora {

// Server -> client, round `round`.
template <backend Backend>
struct client_download {
  std::size_t round = 0;
  std::size_t client = 0;
  factor_set trains;                   // the factors to train this round
  adapter_set<Backend> adapters;       // global at the client's rank, with its local factors
  optimizer_state<Backend> optimizer;  // its kept moments (fresh unless keep_optimizer_state)
  // Client-level DP (privacy/client_dp.hpp): the clip norm and the factors whose change the
  // client clips before uploading; unset without DP.
  std::optional<privacy::clip_request> clip = std::nullopt;
};

// Client -> server is a client_update (aggregate/aggregate.hpp): the one upload type, which the
// aggregators merge.

// Local training of one client: a pure function of the download, the task's data and the
// config's seed, so where and on which thread it runs changes no bit.
template <class Backend, class Task>
client_update<Backend> train_locally(Task& task, client_download<Backend> download,
                                     const federation_config& config) {
  static_assert(client_task<Task, Backend>,
                "rolora::train_locally: the Task type does not model rolora::client_task: it needs "
                "num_samples(), loss(adapters) and loss_and_grad(adapters, batch, trains, grads) "
                "(see federated/task.hpp)");
  // DP: the last step of the upload is the clip of the change from the download.
  std::optional<adapter_set<Backend>> reference;
  if (download.clip) reference = download.adapters;
  const auto clipped = [&](client_update<Backend>& up) {
    if (reference)
      up.clipped = privacy::clip_update(*reference, up.adapters, *download.clip).clipped;
    return std::move(up);
  };
  client_update<Backend> up{download.client,
                            double(task.num_samples()),
                            std::move(download.adapters),
                            download.round,
                            0.0,
                            std::move(download.optimizer)};
  if constexpr (closed_form_b_task<Task, Backend>) {
    if (config.closed_form_b && download.trains == only_b) {
      task.solve_b(up.adapters);
      up.loss = task.loss(up.adapters);
      return clipped(up);
    }
  }
  batch_sampler batches(config.seed, download.round, download.client, task.num_samples(),
                        config.batch_size);
  gradient_set<Backend> grads;
  double loss = 0.0;
  for (std::size_t step = 0; step < config.local_steps; ++step) {
    loss += task.loss_and_grad(up.adapters, batches.next(), download.trains, grads);
    up.optimizer.step(config.local_optimizer, up.adapters, grads, download.trains);
  }
  up.loss = loss / double(config.local_steps);
  return clipped(up);
}

}  // namespace rolora
