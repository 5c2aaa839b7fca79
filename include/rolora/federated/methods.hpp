// The published methods by name: a federation type per method, so a user writes the method, not
// its parts (STYLE: common mixes of policies get names).
#pragma once
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/policy/policies.hpp>

namespace rolora {

template <class Backend>
using fedit = federation<Backend, train_both, fedavg>;  // FedIT (Zhang et al. 2024)
template <class Backend>
using ffa_lora = federation<Backend, freeze_a, fedavg>;  // FFA-LoRA (Sun et al. 2024)
template <class Backend>
using rolora_federation = federation<Backend, alternating, fedavg>;  // RoLoRA (Chen et al. 2024)
template <class Backend>
using fedsa_lora = federation<Backend, fedsa, fedavg>;  // FedSA-LoRA (Guo et al. 2025)

}  // namespace rolora
