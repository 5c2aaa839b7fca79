// The published methods, each under one name: the name is its type alias here
// (`rolora::methods::fedex<B>`), its command-line and CSV spelling in every application
// (`--methods fedex`, `fedex.csv`), its checkpoint folder and the word the docs use. A method is a
// federation of an update policy and an aggregator (STYLE: common mixes of policies get names);
// docs/aggregators.md compares them.
//
// The registry: `method_list` (name, title as the papers write it), `method_title(name)`, and
// `visit_method(name, f)`, which calls f(Policy{}, Aggregator{}) with the method's parts, so a
// program goes from a name to its types in one place:
//   rolora::visit_method("rolora", [&](auto policy, auto aggregator) {
//     rolora::federation<B, decltype(policy), decltype(aggregator)> fed(policy, aggregator, ...);
//   });
#pragma once
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/procrustes.hpp>
#include <rolora/aggregate/residual.hpp>
#include <rolora/aggregate/stack.hpp>
#include <rolora/aggregate/svd_resplit.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/policy/policies.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace rolora {

// A method's parts: what `visit_method` hands over, and what the aliases below are made of.
template <class Policy, class Aggregator>
struct method_parts {
  using policy = Policy;
  using aggregator = Aggregator;
  template <class Backend>
  using federation_type = federation<Backend, Policy, Aggregator>;
};

namespace methods {

// name -> parts, the single table every alias and the run-time dispatch read.
using fedit_parts = method_parts<train_both, fedavg>;           // FedIT (Zhang et al. 2024)
using ffa_parts = method_parts<freeze_a, fedavg>;               // FFA-LoRA (Sun et al. 2024)
using rolora_parts = method_parts<alternating, fedavg>;         // RoLoRA (Chen et al. 2024)
using fedsa_parts = method_parts<::rolora::fedsa, fedavg>;      // FedSA-LoRA (Guo et al. 2025)
using flexlora_parts = method_parts<train_both, svd_resplit>;   // FlexLoRA (Bai et al. 2024)
using flora_parts = method_parts<train_both, flora_stack>;      // FLoRA (Wang et al. 2024)
using fedex_parts = method_parts<train_both, fedex_residual>;   // FedEx-LoRA (Singhal et al. 2025)
using fedrot_parts = method_parts<train_both, procrustes>;      // FedRot-LoRA (2026)
using hetlora_parts = method_parts<train_both, padded_fedavg>;  // HetLoRA (Cho et al. 2024)

template <class Backend>
using fedit = fedit_parts::federation_type<Backend>;
template <class Backend>
using ffa = ffa_parts::federation_type<Backend>;
template <class Backend>
using fedsa = fedsa_parts::federation_type<Backend>;
template <class Backend>
using flexlora = flexlora_parts::federation_type<Backend>;
template <class Backend>
using flora = flora_parts::federation_type<Backend>;
template <class Backend>
using fedex = fedex_parts::federation_type<Backend>;
template <class Backend>
using fedrot = fedrot_parts::federation_type<Backend>;
template <class Backend>
using hetlora = hetlora_parts::federation_type<Backend>;
// Last: inside this namespace, from here on, `rolora` names this alias, not the namespace.
template <class Backend>
using rolora = rolora_parts::federation_type<Backend>;

}  // namespace methods

struct method_info {
  std::string_view name;   // the alias in rolora::methods, the CLI and CSV spelling
  std::string_view title;  // as its paper writes it
};

// Every method `visit_method` knows, in the order the docs list them: the RoLoRA paper's three
// first (FedIT, FFA-LoRA, RoLoRA: `paper_methods`).
inline constexpr method_info method_list[] = {
    {"fedit", "FedIT"},      {"ffa", "FFA-LoRA"},       {"rolora", "RoLoRA"},
    {"fedsa", "FedSA-LoRA"}, {"flexlora", "FlexLoRA"},  {"flora", "FLoRA"},
    {"fedex", "FedEx-LoRA"}, {"fedrot", "FedRot-LoRA"}, {"hetlora", "HetLoRA"}};
inline constexpr std::size_t paper_methods = 3;

// The names of method_list (the first `paper_methods` when paper_only).
inline std::vector<std::string> method_names(bool paper_only = false) {
  std::vector<std::string> names;
  for (const auto& m : method_list) {
    if (paper_only && names.size() == paper_methods) break;
    names.emplace_back(m.name);
  }
  return names;
}

// "RoLoRA" for "rolora"; config_error for a name method_list does not hold.
inline std::string_view method_title(std::string_view name);

namespace detail {

[[noreturn]] inline void unknown_method(std::string_view name) {
  std::string known;
  for (const auto& m : method_list) known += (known.empty() ? "" : ", ") + std::string(m.name);
  raise<config_error>("unknown method '", name, "' (known: ", known, ")");
}

template <class Parts, class F>
decltype(auto) call_with_parts(F&& f) {
  return std::forward<F>(f)(typename Parts::policy{}, typename Parts::aggregator{});
}

}  // namespace detail

inline std::string_view method_title(std::string_view name) {
  for (const auto& m : method_list) {
    if (m.name == name) return m.title;
  }
  detail::unknown_method(name);
}

// f(Policy{}, Aggregator{}) for the method called `name` (method_list); every call must return
// the same type. config_error for an unknown name.
template <class F>
decltype(auto) visit_method(std::string_view name, F&& f) {
  if (name == "fedit") return detail::call_with_parts<methods::fedit_parts>(std::forward<F>(f));
  if (name == "ffa") return detail::call_with_parts<methods::ffa_parts>(std::forward<F>(f));
  if (name == "rolora") return detail::call_with_parts<methods::rolora_parts>(std::forward<F>(f));
  if (name == "fedsa") return detail::call_with_parts<methods::fedsa_parts>(std::forward<F>(f));
  if (name == "flexlora")
    return detail::call_with_parts<methods::flexlora_parts>(std::forward<F>(f));
  if (name == "flora") return detail::call_with_parts<methods::flora_parts>(std::forward<F>(f));
  if (name == "fedex") return detail::call_with_parts<methods::fedex_parts>(std::forward<F>(f));
  if (name == "fedrot") return detail::call_with_parts<methods::fedrot_parts>(std::forward<F>(f));
  if (name == "hetlora") return detail::call_with_parts<methods::hetlora_parts>(std::forward<F>(f));
  detail::unknown_method(name);
}

// What the method called `name` composes with (docs/privacy.md: what composes). Client-level DP
// needs an aggregate that is a mean of the uploaded factors (clipping bounds one client's share
// of a mean); secure aggregation an aggregate computed from sums (a masked sum gives sums and
// nothing else): a mean of the factors, or of the factors and their products with dense uploads
// (FlexLoRA, FedEx-LoRA: product_mean_aggregator), and a policy that keeps no factor per client,
// since the server would hold that factor in the clear. The federation refuses the same at compile
// time or construction; this lets a program refuse a method list before any of its methods runs.
// config_error for an unknown name.
struct method_composition {
  bool client_dp = false;
  bool secure_aggregation = false;
};

inline method_composition composition_of(std::string_view name) {
  return visit_method(name, [](auto policy, auto aggregator) {
    constexpr bool mean = mean_of_factors_aggregator<decltype(aggregator)>;
    constexpr bool sums = mean || product_mean_aggregator<decltype(aggregator)>;
    return method_composition{mean, sums && !policy.keeps_local().any()};
  });
}

}  // namespace rolora
