// Update policies: which LoRA factors clients train and upload in round t (contract: the
// update_policy concept in core/concepts.hpp). Each holds hyper-parameters only.
#pragma once
#include <cmath>
#include <cstddef>
#include <limits>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <string_view>

namespace rolora {

// FedIT, "FedAvg of LoRA" (Zhang et al. 2024): both factors train and travel every round. The
// server's factor-wise mean is not the mean of the clients' products: mean(B_i) mean(A_i) !=
// mean(B_i A_i).
struct train_both {
  static constexpr std::string_view name = "train_both";
  factor_set trains(std::size_t) const { return both_factors; }
  factor_set shares(std::size_t) const { return both_factors; }
  factor_set keeps_local() const { return no_factors; }
};

// FFA-LoRA (Sun et al., ICLR 2024): A stays at its random initialisation; only B trains and
// travels. Exact aggregation, half the upload, but the row space of A never moves.
struct freeze_a {
  static constexpr std::string_view name = "freeze_a";
  factor_set trains(std::size_t) const { return only_b; }
  factor_set shares(std::size_t) const { return only_b; }
  factor_set keeps_local() const { return no_factors; }
};

// The mirror image of freeze_a: B stays, only A trains and travels. (With PEFT's B = 0 init
// nothing would ever learn: give B a non-zero start.)
struct freeze_b {
  static constexpr std::string_view name = "freeze_b";
  factor_set trains(std::size_t) const { return only_a; }
  factor_set shares(std::size_t) const { return only_a; }
  factor_set keeps_local() const { return no_factors; }
};

// RoLoRA (Chen et al. 2024): B rounds and A rounds alternate, B first (with B = 0 at start the
// gradient of A is zero). In every round the frozen factor is the same on every client, so the
// server's mean of the trained factor is exact: mean_i(B_i) A == mean_i(B_i A).
//
// A cycle is b_rounds B-rounds then a_rounds A-rounds (the paper's period and A:B ratio
// ablations); from round freeze_a_from on only B trains ("alternate, then freeze A").
struct alternating {
  static constexpr std::string_view name = "alternating";
  static constexpr std::size_t never = std::numeric_limits<std::size_t>::max();

  std::size_t b_rounds = 1;
  std::size_t a_rounds = 1;
  std::size_t freeze_a_from = never;

  // `period` rounds of B, then `period` rounds of A.
  static alternating with_period(std::size_t period) { return {period, period, never}; }
  // Alternate during the first `fraction` of `num_rounds` rounds, then train only B.
  static alternating then_freeze_a(double fraction, std::size_t num_rounds) {
    if (!(fraction >= 0.0 && fraction <= 1.0)) {
      detail::raise<config_error>(
          "alternating: fraction of alternating rounds must be in [0, 1], got ", fraction);
    }
    return {1, 1, static_cast<std::size_t>(std::llround(fraction * double(num_rounds)))};
  }

  factor_set trains(std::size_t t) const {
    if (b_rounds == 0 || a_rounds == 0) {
      detail::raise<config_error>(
          "alternating: b_rounds and a_rounds must be >= 1, got b_rounds = ", b_rounds,
          ", a_rounds = ", a_rounds);
    }
    if (t >= freeze_a_from) return only_b;
    return t % (b_rounds + a_rounds) < b_rounds ? only_b : only_a;
  }
  factor_set shares(std::size_t t) const { return trains(t); }
  factor_set keeps_local() const { return no_factors; }
};

// FedSA-LoRA (Guo et al. 2025): both factors train, only A is shared; each client keeps its own B
// (A learns what is general, B what is client-specific).
struct fedsa {
  static constexpr std::string_view name = "fedsa";
  factor_set trains(std::size_t) const { return both_factors; }
  factor_set shares(std::size_t) const { return only_a; }
  factor_set keeps_local() const { return only_b; }
};

static_assert(update_policy<train_both> && update_policy<freeze_a> && update_policy<freeze_b> &&
              update_policy<alternating> && update_policy<fedsa>);

}  // namespace rolora
