// The client-side objective: what a client optimises on its own data.
#pragma once
#include <concepts>
#include <cstddef>
#include <span>

#include <rolora/adapter/adapter_set.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/federated/optimizer.hpp>

namespace rolora {

// ---------------------------------------------------------------------------------------------
// client_task: a client's data and loss. The federation never sees the data, only this.
//
//   num_samples() -> std::size_t   n_i, the local sample count (weights and batching use it)
//   loss(adapters) -> double        the mean loss over all local samples
//   loss_and_grad(adapters, batch, trains, grads) -> double
//                                   the mean loss over the samples `batch` (indices < n_i) and,
//                                   for every module and every factor in `trains`, its gradient
//                                   in grads[module].dA / .dB (shaped like the factor). Factors
//                                   not in `trains` need no gradient. When `trains` names any
//                                   factor, also the gradient of every module to save of
//                                   `adapters` in grads.modules_to_save[name] (shaped like it).
// Optional, detected:
//   solve_b(adapters)               sets every B to its exact minimiser given A (closed-form least
//                                   squares); used for B-only rounds when
//                                   federation_config::closed_form_b is set (RoLoRA-linear).
// A task object is used by one thread at a time.
// ---------------------------------------------------------------------------------------------
template <class Task, class Backend>
concept client_task =
    backend<Backend> && requires(Task& t, const adapter_set<Backend>& adapters,
                                 std::span<const std::size_t> batch, factor_set trains,
                                 gradient_set<Backend>& grads) {
      { t.num_samples() } -> std::convertible_to<std::size_t>;
      { t.loss(adapters) } -> std::convertible_to<double>;
      { t.loss_and_grad(adapters, batch, trains, grads) } -> std::convertible_to<double>;
    };

template <class Task, class Backend>
concept closed_form_b_task = requires(Task& t, adapter_set<Backend>& adapters) {
  t.solve_b(adapters);
};

}  // namespace rolora
