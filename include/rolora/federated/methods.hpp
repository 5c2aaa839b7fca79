// The published methods by name: a federation type per method, so a user writes the method, not
// its parts (STYLE: common mixes of policies get names). docs/aggregators.md compares them.
#pragma once
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/procrustes.hpp>
#include <rolora/aggregate/residual.hpp>
#include <rolora/aggregate/stack.hpp>
#include <rolora/aggregate/svd_resplit.hpp>
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
template <class Backend>
using hetlora = federation<Backend, train_both, padded_fedavg>;  // HetLoRA (Cho et al. 2024)
template <class Backend>
using flexlora = federation<Backend, train_both, svd_resplit>;  // FlexLoRA (Bai et al. 2024)
template <class Backend>
using flora = federation<Backend, train_both, flora_stack>;  // FLoRA (Wang et al. 2024)
template <class Backend>
using fedex_lora =
    federation<Backend, train_both, fedex_residual>;  // FedEx-LoRA (Singhal et al. 2025)
template <class Backend>
using fedrot_lora = federation<Backend, train_both, procrustes>;  // FedRot-LoRA

}  // namespace rolora
