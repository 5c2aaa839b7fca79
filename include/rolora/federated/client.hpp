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

// Sample-level DP-SGD's local steps (privacy/dp_sgd.hpp): Poisson or fixed batches, the task's
// exact per-example clipped sum, seeded noise N(0, (z C)^2) per trained coordinate, division by
// the expected batch size, the optimizer's step. up.loss: the mean loss over every example the
// steps saw (0 when all batches were empty).
template <class Backend, class Task>
client_update<Backend>& dp_sgd_locally(Task& task, client_update<Backend>& up,
                                       const client_download<Backend>& download,
                                       const federation_config& config) {
  if constexpr (!per_example_clip_task<Task, Backend>) {
    detail::raise<config_error>(
        "sample-level DP: this task cannot clip per example (it does not model "
        "rolora::per_example_clip_task: clipped_grad_sum(adapters, batch, trains, clip_norm, "
        "grads)); the linear-regression and classification tasks can");
  } else {
    const privacy::sample_dp& dp = *config.sample_dp;
    if (config.closed_form_b) {
      detail::raise<config_error>(
          "sample-level DP: closed_form_b solves B from every example at once, unclipped and "
          "unnoised; turn one of them off");
    }
    const std::size_t n = task.num_samples();
    const double q = privacy::sample_dp::sampling_rate(config.batch_size, n);
    const double denominator = privacy::sample_dp::expected_batch(config.batch_size, n);
    const random_stream noise =
        privacy::step_noise_stream(config.seed, download.round, download.client);
    batch_sampler batches(config.seed, download.round, download.client, n, config.batch_size);
    gradient_set<Backend> grads;
    double loss = 0.0;
    std::size_t seen = 0;
    for (std::size_t step = 0; step < config.local_steps; ++step) {
      std::vector<std::size_t> poisson;
      std::span<const std::size_t> batch;
      if (dp.sampling == privacy::batch_sampling::poisson) {
        poisson = privacy::poisson_batch(config.seed, download.round, download.client, step, n, q);
        batch = poisson;
      } else {
        batch = batches.next();
      }
      const clipped_sum s =
          task.clipped_grad_sum(up.adapters, batch, download.trains, dp.clip_norm, grads);
      loss += s.loss_sum;
      seen += batch.size();
      privacy::noise_and_average(up.adapters, download.trains, grads,
                                 dp.noise_multiplier * dp.clip_norm, denominator, noise, step);
      up.optimizer.step(config.local_optimizer, up.adapters, grads, download.trains);
    }
    up.loss = seen ? loss / double(seen) : 0.0;
  }
  return up;
}

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
  if (config.sample_dp) return clipped(dp_sgd_locally<Backend>(task, up, download, config));
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
