// The server side of a round: federation_server<Backend, UpdatePolicy, Aggregator>.
//
// State: the global adapters, the round counter, per client the factors it keeps local (FedSA's
// B), its optimizer moments when kept and the round its residuals are synced to, the residual
// increments of past rounds and the byte totals. One round t is three steps:
//   begin_round(num_clients)   sample the clients (seeded by (seed, t)) and their dropouts
//   download(plan, c)          what client c receives: its view of the global adapters
//   complete_round(plan, ups)  validate: check every upload as hostile input (one check,
//                              detail::check_update), drop or fail the bad ones; aggregate: merge
//                              the others in client-id order; commit; account: report
// The client side is federated/client.hpp; federated/federation.hpp composes both in-process.
// A round that fails (every client gone, a bad upload under on_bad_update = fail, fewer than
// min_clients usable updates, an aggregator error) throws an error naming the round (its
// error::round(), and a bad upload's client in error::client()) and changes nothing.
//
// Heterogeneous ranks (federation_config::client_ranks): client c trains every module at rank
// r_c = min(client_ranks[c], r), downloading the first r_c components of the server's adapters at
// its own scaling (truncate_rank, aggregate/ranks.hpp); the aggregator must accept heterogeneous
// ranks (padded_fedavg, svd_resplit, stack, residual, procrustes).
//
// Communication, per client and round, in bytes of the encoded messages (federated/wire.hpp),
// whichever transport carries them: down, every sampled client's download (its view at its rank:
// both factors, the dense residual where the aggregator keeps one, the modules to save, its
// moments when kept, the metadata); up, every upload from a known client as it arrived (the
// shared factors and those the server keeps for the client, the modules to save, moments when
// kept), merged or not.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/federated/client.hpp>
#include <rolora/federated/round_config.hpp>
#include <rolora/federated/sampling.hpp>
#include <rolora/federated/secure_sum.hpp>
#include <rolora/federated/wire.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace rolora {

namespace detail {

// Rethrows the rolora error in flight as remake(e), e seen as its rolora type (shape_error,
// value_error, config_error, privacy_budget_exceeded, or error for any other).
template <class Remake>
[[noreturn]] void rethrow_remade(Remake&& remake) {
  try {
    throw;
  } catch (const shape_error& e) {
    throw remake(e);
  } catch (const value_error& e) {
    throw remake(e);
  } catch (const config_error& e) {
    throw remake(e);
  } catch (const privacy_budget_exceeded& e) {
    throw remake(e);
  } catch (const error& e) {
    throw remake(e);
  }
}

// Rethrows the rolora error in flight, the same object, naming round `round` (error::round(),
// and "round <t>: " in what()) unless it names a round already.
[[noreturn]] inline void rethrow_in_round(std::size_t round) {
  try {
    throw;
  } catch (error& e) {
    e.set_round(round);
    throw;
  }
}

}  // namespace detail

// The server's choices for one round, made by begin_round.
struct round_plan {
  std::size_t round = 0;
  factor_set trains, shares;
  std::vector<std::size_t> sampled;    // increasing
  std::vector<std::size_t> reporting;  // sampled minus those that drop out, increasing
};

// An upload as a transport received it: the client whose channel it came on, its encoded size,
// and what decoding it gave -- the update, or why it could not be decoded (the decoding error's
// error::message(), which the server's refusal quotes after "client <c>: ").
template <backend Backend>
struct received_upload {
  std::size_t client = 0;
  std::size_t bytes = 0;
  std::optional<client_update<Backend>> upload;
  std::string error;  // when !upload
};

// Privacy: no_privacy (the default) or privacy::client_dp, client-level differential privacy
// (privacy/client_dp.hpp): the client clips (federated/client.hpp), the server samples, checks
// the clip, noises the mean around the aggregator, adapts C and keeps the budget.
template <class Backend, class UpdatePolicy, class Aggregator, class Privacy = no_privacy>
class federation_server {
  static_assert(backend<Backend> && update_policy<UpdatePolicy> &&
                    aggregator_for<Aggregator, Backend>,
                "rolora::federation_server: see the requirements stated by rolora::federation");
  static_assert(std::is_same_v<Privacy, no_privacy> || std::is_same_v<Privacy, privacy::client_dp>,
                "rolora::federation: Privacy must be rolora::no_privacy or "
                "rolora::privacy::client_dp");
  static constexpr bool client_level_dp = std::is_same_v<Privacy, privacy::client_dp>;
  static_assert(
      !client_level_dp || mean_of_factors_aggregator<Aggregator>,
      "rolora::federation: client-level DP (privacy::client_dp) needs an aggregator whose "
      "result is a mean of the uploaded factors (fedavg, orthonormalize_a<fedavg>): "
      "FLoRA's stacking, FlexLoRA's SVD, FedEx-LoRA's residual, FedRot-LoRA's rotations "
      "and median or trimmed-mean reducers are not, so clipping the uploads would not "
      "bound what one client changes");

 public:
  using backend_type = Backend;
  using adapters_type = adapter_set<Backend>;
  using aggregator_type = Aggregator;

  // What the server keeps about one client between rounds.
  struct client_state {
    std::optional<adapters_type> local;  // adapters after its last round (for kept factors)
    optimizer_state<Backend> optimizer;  // its moments, when config.keep_optimizer_state
    std::size_t residual_synced = 0;     // its residuals include the increments of rounds < this
    // Sample-level DP-SGD (privacy/dp_sgd.hpp): the local steps this client's data went through
    // (the accountant composes them at q_c = B / n_c) and n_c (0: not known yet).
    std::size_t dp_sgd_steps = 0;
    std::size_t dp_samples = 0;
  };

  federation_server(UpdatePolicy policy, Aggregator aggregator, federation_config config,
                    adapters_type initial, Privacy privacy = {})
      : policy_(std::move(policy)),
        aggregator_(std::move(aggregator)),
        config_(std::move(config)),
        global_(std::move(initial)),
        privacy_(std::move(privacy)) {
    // Adapters, modules to save, or both: modules to save alone is the head-only control (a
    // federated linear probe); it trains in every round because every policy trains some factor.
    if (global_.empty() && global_.modules_to_save().empty()) {
      detail::raise<config_error>(
          "federation: the initial adapter set is empty (no adapters and no modules to save)");
    }
    if (config_.local_steps == 0) {
      detail::raise<config_error>("federation: local_steps must be >= 1");
    }
    if (!(config_.client_dropout >= 0.0 && config_.client_dropout < 1.0)) {
      detail::raise<config_error>("federation: client_dropout must be in [0, 1), got ",
                                  config_.client_dropout);
    }
    if (config_.min_clients < 1) {
      detail::raise<config_error>("federation: min_clients must be >= 1, got 0");
    }
    if (!(config_.max_abs_entry > 0.0)) {
      detail::raise<config_error>("federation: max_abs_entry must be > 0, got ",
                                  config_.max_abs_entry);
    }
    if (!config_.client_ranks.empty()) {
      if (!heterogeneous_rank_aggregator<Aggregator>) {
        detail::raise<config_error>("federation: client_ranks is set but aggregator '",
                                    Aggregator::name,
                                    "' does not accept heterogeneous ranks (use padded_fedavg, "
                                    "svd_resplit, stack, residual or procrustes)");
      }
      for (std::size_t c = 0; c < config_.client_ranks.size(); ++c) {
        if (config_.client_ranks[c] < 1) {
          detail::raise<config_error>("federation: client_ranks[", c, "] must be >= 1, got ",
                                      config_.client_ranks[c]);
        }
      }
    }
    if constexpr (client_level_dp) check_privacy();
    if (config_.sample_dp) check_sample_dp();
    if (config_.secure_aggregation) check_secure_aggregation();
  }

  const adapters_type& global() const { return global_; }
  const federation_config& config() const { return config_; }
  const UpdatePolicy& policy() const { return policy_; }
  const Aggregator& aggregator() const { return aggregator_; }
  std::size_t next_round() const { return round_; }
  const Privacy& privacy() const { return privacy_; }
  const typename Privacy::state& privacy_state() const { return privacy_state_; }
  // Per client, once the first round fixed their number (empty before).
  const std::vector<client_state>& clients() const { return clients_; }

  // Everything the server holds between rounds: what a checkpoint saves (federated/checkpoint.hpp).
  struct snapshot {
    std::size_t round = 0;
    adapters_type global;
    std::vector<client_state> clients;
    std::vector<std::size_t> residual_increments;  // one per completed round
    std::size_t total_bytes_up = 0, total_bytes_down = 0;
    typename Privacy::state privacy{};  // client DP: C and the rounds the accountant composed
  };
  snapshot save() const {
    return {round_,    global_,     clients_,      residual_increments_,
            total_up_, total_down_, privacy_state_};
  }
  // Continues from `s`: value_error, changing nothing, unless its global adapters have this
  // server's modules at their shapes and its history is consistent with its round.
  void restore(snapshot s) {
    const auto mismatch = [](auto&&... parts) {
      detail::raise<value_error>("restore: ", parts...);
    };
    if (s.global.size() != global_.size() ||
        s.global.modules_to_save().size() != global_.modules_to_save().size()) {
      mismatch("the state has ", s.global.size(), " modules and ",
               s.global.modules_to_save().size(), " modules to save, this model ", global_.size(),
               " and ", global_.modules_to_save().size());
    }
    for (const auto& [name, a] : global_) {
      if (!s.global.contains(name)) mismatch("module '", name, "' is missing from the state");
      const auto& b = s.global.at(name);
      if (b.rank() != a.rank() || b.in_features() != a.in_features() ||
          b.out_features() != a.out_features() || Backend::rows(b.B) != a.out_features() ||
          Backend::cols(b.B) != a.rank()) {
        mismatch("module '", name, "': lora_A ",
                 detail::shape_string(Backend::rows(b.A), Backend::cols(b.A)), " and lora_B ",
                 detail::shape_string(Backend::rows(b.B), Backend::cols(b.B)),
                 " in the state, this model has rank ", a.rank(), " over ",
                 detail::shape_string(a.out_features(), a.in_features()));
      }
      detail::check_residual(b);
    }
    for (const auto& [name, w] : global_.modules_to_save()) {
      const auto it = s.global.modules_to_save().find(name);
      if (it == s.global.modules_to_save().end() || Backend::rows(it->second) != Backend::rows(w) ||
          Backend::cols(it->second) != Backend::cols(w)) {
        mismatch("module to save '", name, "' is missing from the state or has another shape");
      }
    }
    if (s.residual_increments.size() != s.round) {
      mismatch(s.residual_increments.size(), " residual increments for ", s.round,
               " completed rounds");
    }
    for (const auto& c : s.clients) {
      if (c.residual_synced > s.round)
        mismatch("a client synced to round ", c.residual_synced, " > ", s.round);
    }
    if constexpr (client_level_dp) {
      if (s.privacy.rounds != s.round || !(s.privacy.clip_norm > 0.0) ||
          !std::isfinite(s.privacy.clip_norm)) {
        mismatch("the privacy state (", s.privacy.rounds, " rounds accounted, clip norm ",
                 s.privacy.clip_norm, ") does not fit ", s.round, " completed rounds");
      }
    }
    round_ = s.round;
    global_ = std::move(s.global);
    clients_ = std::move(s.clients);
    residual_increments_ = std::move(s.residual_increments);
    total_up_ = s.total_bytes_up;
    total_down_ = s.total_bytes_down;
    privacy_state_ = s.privacy;
  }

  // Sample-level DP-SGD: each client's sample count n_c, for its sampling rate q_c = B / n_c
  // (run_round passes its tasks'; without it the server learns n_c from a client's first upload
  // and, before that, budgets the client at q = 1, the worst case). Sizes the client list.
  void note_sample_counts(std::span<const std::size_t> counts) {
    if (!clients_.empty() && clients_.size() != counts.size()) {
      detail::raise<config_error>("federation: expected ", clients_.size(),
                                  " sample counts (one per client), got ", counts.size());
    }
    if (clients_.empty()) clients_.resize(counts.size());
    for (std::size_t c = 0; c < counts.size(); ++c) clients_[c].dp_samples = counts[c];
  }
  // Sample-level DP-SGD: epsilon (at the configured delta) client c has spent so far.
  double sample_dp_epsilon(std::size_t client) const {
    const auto& c = clients_.at(client);
    return step_accountant()
        .epsilon(sample_rate(c), c.dp_sgd_steps, config_.sample_dp->delta)
        .epsilon;
  }

  // Adaptive clipping under secure aggregation: each client's unclipped bit travels under the
  // masks after its weight (federated/secure_sum.hpp), and C's step reads their sum.
  bool secure_clip_bits() const {
    if constexpr (client_level_dp) {
      return config_.secure_aggregation && privacy_.adaptive.has_value();
    } else {
      return false;
    }
  }

  // Whether a secure round's inputs carry the dense change of each product (federated/
  // secure_sum.hpp): an aggregator that reads the mean products (product_mean_aggregator:
  // FlexLoRA, FedEx-LoRA) in a round that shares both factors.
  bool secure_products(const round_plan& plan) const {
    return product_mean_aggregator<Aggregator> && plan.shares.a && plan.shares.b;
  }

  // A client's adapters as it would use them: the global ones at its rank, with its local factors.
  adapters_type client_view(std::size_t client) const {
    adapters_type view = global_;
    for (auto& [name, a] : view) {
      const index_t r = rank_of(client, a);
      if (r != a.rank()) {
        a = truncate_rank(
            a, r, scaling_at_rank(double(a.scaling), a.rank(), r, config_.client_rank_scaling));
      }
    }
    if (client < clients_.size()) apply_local(clients_[client], view);
    return view;
  }
  // The rank client `client` trains module adapter `a` at.
  index_t rank_of(std::size_t client, const typename adapters_type::adapter_type& a) const {
    if (client >= config_.client_ranks.size()) return a.rank();
    return std::min(config_.client_ranks[client], a.rank());
  }

  // Samples round next_round() among `num_clients` clients (the same number every round).
  round_plan begin_round(std::size_t num_clients) {
    if (num_clients == 0) detail::raise<config_error>("federation: no clients");
    if (!clients_.empty() && clients_.size() != num_clients) {
      detail::raise<config_error>("federation: expected ", clients_.size(),
                                  " clients (as in earlier rounds), got ", num_clients);
    }
    if (!config_.client_ranks.empty() && config_.client_ranks.size() != num_clients) {
      detail::raise<config_error>("federation: client_ranks has ", config_.client_ranks.size(),
                                  " entries for ", num_clients, " clients");
    }
    if (clients_.empty()) clients_.resize(num_clients);
    const std::size_t t = round_;
    check_policy_round(policy_, t);
    if constexpr (client_level_dp) {
      check_budget(t);
      (void)privacy_.update_noise_multiplier(num_clients, config_.clients_per_round);  // z < 2 sb
    }
    round_plan plan{t, policy_.trains(t), policy_.shares(t), sample(t, num_clients), {}};
    for (std::size_t c : plan.sampled) {
      if (!drops_out(config_.seed, t, c, config_.client_dropout)) plan.reporting.push_back(c);
    }
    if (config_.sample_dp) check_sample_budget(plan);
    // Under client DP a round with no participant is a round (the mean gets its noise), and
    // min_clients is 1: how many come back does not decide whether the mechanism runs.
    if (client_level_dp) return plan;
    if (plan.reporting.empty()) {
      detail::raise<value_error>(error_context::of_round(t), "no client update arrived (",
                                 plan.sampled.size(), " sampled, all dropped out)");
    }
    if (plan.reporting.size() < config_.min_clients) {
      detail::raise<value_error>(
          error_context::of_round(t), plan.reporting.size(), " of ", plan.sampled.size(),
          " sampled clients report back, fewer than min_clients = ", config_.min_clients);
    }
    return plan;
  }

  // What client `client` of `plan` receives.
  client_download<Backend> download(const round_plan& plan, std::size_t client) const {
    client_download<Backend> d{plan.round, client, plan.trains, client_view(client), {}};
    if (config_.keep_optimizer_state && client < clients_.size())
      d.optimizer = clients_[client].optimizer;
    if constexpr (client_level_dp)
      d.clip = privacy::clip_request{privacy_state_.clip_norm, plan.shares};
    return d;
  }

  // Checks the uploads of `plan`'s round (any order; at most one per reporting client), merges
  // the good ones in client-id order and commits. Throws, changing nothing, when a bad upload
  // meets on_bad_update = fail, when fewer than min_clients good ones remain, or when the
  // aggregator fails; the error names the round (error::round()) and, for a bad upload, the
  // client (error::client()).
  // Each upload counts as the size of its encoding (encoded_upload_size).
  round_report complete_round(const round_plan& plan, std::vector<client_update<Backend>> uploads) {
    std::vector<received_upload<Backend>> received;
    received.reserve(uploads.size());
    for (auto& u : uploads) {
      const std::size_t c = u.client, bytes = encoded_upload_size(plan, u);
      received.push_back({c, bytes, std::move(u), {}});
    }
    return complete_round(plan, std::move(received));
  }
  // The same for uploads that came as bytes (a transport): an upload that could not be decoded,
  // or that names another client than the one whose channel it came on, is a bad upload of that
  // client; each counts as the bytes that came.
  round_report complete_round(const round_plan& plan,
                              std::vector<received_upload<Backend>> received) {
    try {
      if (plan.round != round_) {
        detail::raise<config_error>("federation: the plan is for round ", plan.round,
                                    " but the server is at round ", round_);
      }
      if (config_.secure_aggregation) {
        detail::raise<config_error>(
            "federation: config.secure_aggregation is set, but the transport delivered plain "
            "uploads the server could read (use rolora::secagg::in_process)");
      }
      round_report report = report_of(plan);
      std::vector<client_update<Backend>> good = validate(plan, received, report.rejected);
      const traffic sent = downloads_of(plan);  // from the state before the round
      const aggregation_result merged = aggregate_round(plan, good);
      const typename Privacy::state privacy_after = next_privacy_state(plan, good);
      if constexpr (client_level_dp) report.clip_norm = privacy_state_.clip_norm;  // this round's
      commit(plan, good, merged, privacy_after);  // from here on nothing throws but bad_alloc
      double loss = 0.0, samples = 0.0;
      for (const auto& u : good) {
        loss += u.loss * u.num_samples;
        samples += u.num_samples;
        report.participants.push_back(u.client);
      }
      std::size_t up = 0, uploads = 0;
      for (const auto& r : received) {  // every upload from a known client counts, merged or not
        if (r.client < clients_.size()) {
          up += r.bytes;
          ++uploads;
        }
      }
      report.train_loss = samples > 0.0 ? loss / samples : std::nan("");  // NaN: nobody (DP)
      report.aggregation_error = merged.error;
      report.relative_aggregation_error = merged.relative_error;
      account(plan, up, uploads, sent, report);
      return report;
    } catch (const error&) {
      detail::rethrow_in_round(plan.round);
    }
  }

  // Secure aggregation (federated/secure_sum.hpp; rolora/secagg/round.hpp runs the protocol and
  // hands this the sum): merges G + sum / sum w, or under client-level DP the noised mean of the
  // summed clipped changes. What the server can still check it checks: the round, that the summed
  // clients report in this round (each once), the sum's length and a positive finite weight; the
  // values it cannot see are the clients' own checks, before masking. min_clients applies to the
  // summed clients. The aggregation error is NaN (not available: it needs each client's product).
  round_report complete_round(const round_plan& plan, secure_sum s) {
    static_assert(mean_of_factors_aggregator<Aggregator> || product_mean_aggregator<Aggregator>,
                  "rolora::federation: secure aggregation needs an aggregator whose result is a "
                  "mean of the uploaded factors (fedavg, orthonormalize_a<fedavg>) or a function "
                  "of the mean factors and products (svd_resplit, fedex_residual): the server "
                  "sees only the sum, and FLoRA's stacking, FedRot-LoRA's rotations and median "
                  "or trimmed-mean reducers need each client's factors");
    try {
      if (plan.round != round_) {
        detail::raise<config_error>("federation: the plan is for round ", plan.round,
                                    " but the server is at round ", round_);
      }
      if (!config_.secure_aggregation) {
        detail::raise<config_error>(
            "federation: a secure sum arrived, but config.secure_aggregation is not set");
      }
      for (std::size_t i = 0; i < s.summed.size(); ++i) {
        const std::size_t c = s.summed[i];
        if (!std::binary_search(plan.reporting.begin(), plan.reporting.end(), c) ||
            (i > 0 && s.summed[i - 1] >= c)) {
          detail::raise<value_error>("secure sum: client ", c,
                                     " is not a reporting client of this round, or repeated");
        }
      }
      const std::size_t change = detail::change_length(global_, plan.shares);
      const std::size_t products = secure_products(plan) ? detail::products_length(global_) : 0;
      const std::size_t length = change + products + 1 + (secure_clip_bits() ? 1 : 0);
      if (s.sum.size() != length || s.losses.size() != s.summed.size()) {
        detail::raise<shape_error>("secure sum: ", s.sum.size(), " coordinates and ",
                                   s.losses.size(), " losses for ", s.summed.size(),
                                   " clients, expected ", length, " coordinates");
      }
      round_report report = report_of(plan);
      report.rejected = std::move(s.rejected);
      if (!client_level_dp && s.summed.size() < config_.min_clients) {
        std::string reasons;
        for (const auto& r : report.rejected) reasons += "; " + r.reason;
        detail::raise<value_error>(
            s.summed.size(), " masked input(s) summed of ", plan.sampled.size(),
            " sampled clients, fewer than min_clients = ", config_.min_clients, reasons);
      }
      traffic sent = downloads_of(plan);
      sent.down += s.bytes.down();  // the key directory, the routed shares, the unmask requests
      const std::span<const double> sum(s.sum);
      const aggregation_result merged = aggregate_sum(
          plan, sum.first(change), sum.subspan(change, products), s.sum[change + products]);
      const typename Privacy::state privacy_after = next_privacy_state(
          plan, {},
          secure_clip_bits() ? std::optional(s.sum[change + products + 1]) : std::nullopt);
      if constexpr (client_level_dp) report.clip_norm = privacy_state_.clip_norm;
      std::vector<client_update<Backend>> none;
      commit(plan, none, merged, privacy_after);  // from here on nothing throws but bad_alloc
      report.participants = s.summed;
      double loss = 0.0;
      for (double l : s.losses) loss += l;
      report.train_loss = s.losses.empty() ? std::nan("") : loss / double(s.losses.size());
      report.aggregation_error = report.relative_aggregation_error = std::nan("");
      report.secagg = s.bytes;
      report.secagg_clipped = s.clipped;
      account(plan, s.bytes.up(), s.summed.size(), sent, report);
      return report;
    } catch (const error&) {
      detail::rethrow_in_round(plan.round);
    }
  }

  // The factors a client of `plan` uploads: the shared ones, and those the server keeps for it
  // (FedSA's B): clients hold nothing between rounds, so that the server's state is all there is.
  factor_set upload_factors(const round_plan& plan) const {
    const factor_set local = policy_.keeps_local();
    return {plan.shares.a || local.a, plan.shares.b || local.b};
  }
  // The size of client `client`'s download of `plan` and of upload `u` as encoded messages.
  std::size_t encoded_download_size(const round_plan& plan, std::size_t client) const {
    return encoded_size(download_layout(download(plan, client), upload_factors(plan),
                                        config_.keep_optimizer_state));
  }
  std::size_t encoded_upload_size(const round_plan& plan, const client_update<Backend>& u) const {
    return encoded_size(upload_layout(u, upload_factors(plan), config_.keep_optimizer_state));
  }

 private:
  // What the sampled clients of a round download, in bytes (all of it, and its dense residuals).
  struct traffic {
    std::size_t down = 0, residual_down = 0;
  };

  static round_report report_of(const round_plan& plan) {
    round_report report;
    report.round = plan.round;
    report.trained = plan.trains;
    report.shared = plan.shares;
    return report;
  }

  // Validate: the uploads that pass every check, in client-id order. A bad one fails the round
  // (on_bad_update = fail) or is dropped with its reason in `rejected`; fewer than min_clients
  // good ones fail the round, naming the reasons.
  std::vector<client_update<Backend>> validate(const round_plan& plan,
                                               std::vector<received_upload<Backend>>& received,
                                               std::vector<rejected_update>& rejected) const {
    std::stable_sort(received.begin(), received.end(),
                     [](const auto& l, const auto& r) { return l.client < r.client; });
    std::vector<client_update<Backend>> good;
    std::vector<bool> seen(clients_.size(), false);
    for (auto& r : received) {
      try {
        check_received(plan, r, seen);
        good.push_back(std::move(*r.upload));
      } catch (const error& e) {
        if (config_.on_bad_update == bad_update_policy::fail) throw;
        rejected.push_back({r.client, std::string(e.message())});
      }
    }
    if (!client_level_dp && good.size() < config_.min_clients) {
      std::string reasons;
      for (const auto& r : rejected) reasons += "; " + r.reason;
      detail::raise<value_error>(good.size(), " usable update(s) of ", plan.sampled.size(),
                                 " sampled clients (", plan.sampled.size() - plan.reporting.size(),
                                 " dropped out, ", rejected.size(),
                                 " rejected), fewer than "
                                 "min_clients = ",
                                 config_.min_clients, reasons);
    }
    return good;
  }

  // Throws (value_error or shape_error naming the client, in error::client() too) unless `r`
  // decoded to an upload that names the client of its channel, a reporting client not seen
  // before, answers `plan`'s round and passes detail::check_update against the client's
  // download: its modules, shapes and scalings, a sample count >= 1, every entry finite and
  // within max_abs_entry.
  void check_received(const round_plan& plan, const received_upload<Backend>& r,
                      std::vector<bool>& seen) const {
    const std::size_t c = r.client;
    const error_context at = error_context::of_client(c);
    if (!r.upload) detail::raise<value_error>(at, "client ", c, ": ", r.error);
    const client_update<Backend>& u = *r.upload;
    if (u.client != c) {
      detail::raise<value_error>(at, "client ", c, ": its upload names client ", u.client);
    }
    if (!std::binary_search(plan.reporting.begin(), plan.reporting.end(), c)) {
      detail::raise<value_error>(at, "client ", c, ": not a client of this round (",
                                 plan.reporting.size(), " reporting of ", clients_.size(), ")");
    }
    if (seen[c]) detail::raise<value_error>(at, "client ", c, ": a second upload in the round");
    seen[c] = true;
    if (u.round != plan.round) {
      detail::raise<value_error>(at, "client ", c, ": upload for round ", u.round,
                                 ", expected round ", plan.round);
    }
    detail::check_update(client_view(c), u,
                         {.lower_ranks = false,
                          .same_scaling = true,
                          .min_samples = 1.0,
                          .max_abs_entry = config_.max_abs_entry});
    if constexpr (client_level_dp) {  // the clip is the client's: checked, never trusted
      const double limit = privacy_state_.clip_norm;
      const auto [norm, reference] = privacy::update_norm(client_view(c), u.adapters, plan.shares);
      if (!(norm <= limit + privacy::clip_tolerance<Backend>(limit, reference))) {
        detail::raise<value_error>(at, "client ", c, ": its update has L2 norm ", norm,
                                   ", above the clip norm ", limit,
                                   " (client-level DP: the client must clip before uploading)");
      }
    }
  }

  traffic downloads_of(const round_plan& plan) const {
    traffic t;
    for (std::size_t c : plan.sampled) t.down += encoded_download_size(plan, c);
    t.residual_down = plan.sampled.size() * residual_bytes();
    return t;
  }

  // Aggregate: the checked uploads merged into the global adapters (all or nothing).
  aggregation_result aggregate_round(const round_plan& plan,
                                     const std::vector<client_update<Backend>>& good) {
    if constexpr (client_level_dp) {
      return privacy::merge_noised(aggregator_, global_,
                                   std::span<const client_update<Backend>>(good), plan.shares,
                                   {config_.client_weighting, policy_.keeps_local(),
                                    config_.measure_aggregation_error, plan.round},
                                   noised_round_of(plan));
    }
    return detail::merge_checked(aggregator_, global_,
                                 std::span<const client_update<Backend>>(good), plan.shares,
                                 {config_.client_weighting, policy_.keeps_local(),
                                  config_.measure_aggregation_error, plan.round});
  }

  // Commit: each participant's kept factors and moments, the residual increments, the round.
  void commit(const round_plan& plan, std::vector<client_update<Backend>>& good,
              const aggregation_result& merged, const typename Privacy::state& privacy_after) {
    privacy_state_ = privacy_after;
    const bool keeps_local = policy_.keeps_local().any();
    if (config_.sample_dp) {  // every client that trained spent its steps, merged or not
      for (std::size_t c : plan.reporting) clients_[c].dp_sgd_steps += config_.local_steps;
    }
    for (auto& u : good) {
      auto& client = clients_[u.client];
      if (config_.sample_dp && client.dp_samples == 0)
        client.dp_samples = static_cast<std::size_t>(u.num_samples);
      if (keeps_local) client.local = std::move(u.adapters);
      if (config_.keep_optimizer_state) client.optimizer = std::move(u.optimizer);
    }
    residual_increments_.push_back(merged.residual_scalars);
    for (std::size_t c : plan.sampled) clients_[c].residual_synced = plan.round;
    ++round_;
  }

  // Account, given the participants: who dropped, the bytes of the round (`up` from `uploaded`
  // clients), the budget spent.
  void account(const round_plan& plan, std::size_t up, std::size_t uploaded, const traffic& sent,
               round_report& report) {
    for (std::size_t c : plan.sampled) {
      if (!std::binary_search(report.participants.begin(), report.participants.end(), c)) {
        report.dropped.push_back(c);
      }
    }
    report.bytes_up = up;
    report.bytes_down = sent.down;
    report.residual_bytes_down = sent.residual_down;
    report.bytes_up_per_client = uploaded ? report.bytes_up / uploaded : 0;
    report.bytes_down_per_client =
        plan.sampled.empty() ? 0 : report.bytes_down / plan.sampled.size();
    if constexpr (client_level_dp) {
      report.epsilon = accountant().epsilon(privacy_state_.rounds, privacy_.delta).epsilon;
    }
    if (config_.sample_dp) {
      double most = 0.0;
      for (std::size_t c = 0; c < clients_.size(); ++c) most = std::max(most, sample_dp_epsilon(c));
      report.epsilon = most;
      report.clip_norm = config_.sample_dp->clip_norm;
    }
    total_up_ += report.bytes_up;
    total_down_ += report.bytes_down;
    report.total_bytes_up = total_up_;
    report.total_bytes_down = total_down_;
  }

  // Bytes of the dense residuals in each download (the same at every client's rank).
  std::size_t residual_bytes() const {
    std::size_t n = 0;
    for (const auto& [name, a] : global_) {
      if (a.has_residual()) n += std::size_t(a.out_features() * a.in_features());
    }
    return n * sizeof(typename Backend::scalar);
  }

  void apply_local(const client_state& client, adapters_type& view) const {
    const factor_set local = policy_.keeps_local();
    if (!client.local || !local.any()) return;
    for (auto& [name, a] : view) {
      const auto& mine = client.local->at(name);
      if (local.a) a.A = mine.A;
      if (local.b) a.B = mine.B;
    }
  }

  // Client-level DP (privacy/client_dp.hpp) ---------------------------------------------------

  void check_privacy() {
    privacy_.check();
    if (config_.client_weighting != weighting::uniform) {
      detail::raise<config_error>(
          "federation: client-level DP needs client_weighting = uniform: weighting by sample "
          "counts lets one client's count move every other client's weight, so the sum no longer "
          "changes by at most the clip norm when one client joins or leaves, and the counts "
          "themselves leak");
    }
    if (config_.min_clients != 1) {
      detail::raise<config_error>("federation: client-level DP needs min_clients = 1 (got ",
                                  config_.min_clients,
                                  "): a round runs the mechanism whoever comes back, even nobody");
    }
    if (!config_.client_ranks.empty()) {
      detail::raise<config_error>(
          "federation: client-level DP does not take heterogeneous client_ranks");
    }
    privacy_state_.clip_norm = privacy_.clip_norm;
  }

  // Secure aggregation ------------------------------------------------------------------------

  // The configurations the server could not run without reading a client's update, refused.
  void check_secure_aggregation() const {
    const secagg_config& sa = *config_.secure_aggregation;
    const auto refuse = [](auto&&... why) {
      detail::raise<config_error>("federation: secure aggregation ", why...);
    };
    if (!(sa.range > 0.0) || !std::isfinite(sa.range)) refuse("needs range > 0, got ", sa.range);
    if (sa.bits < 2 || sa.bits > 62) refuse("needs bits in [2, 62], got ", sa.bits);
    if (policy_.keeps_local().any()) {
      refuse(
          "and a policy that keeps factors per client (FedSA-LoRA's B): the server would hold "
          "each client's own factor in the clear");
    }
    if (config_.keep_optimizer_state) {
      refuse("and keep_optimizer_state: the server would hold each client's moments in the clear");
    }
    if (!config_.client_ranks.empty()) refuse("does not take heterogeneous client_ranks");
  }

  // G + change / w, merged by the aggregator (with the mean products G's + products / w for a
  // product_mean_aggregator); or the noised mean of the clipped changes.
  aggregation_result aggregate_sum(const round_plan& plan, std::span<const double> change,
                                   std::span<const double> products, double w) {
    const aggregation_options options{weighting::uniform, policy_.keeps_local(), false, plan.round};
    if constexpr (product_mean_aggregator<Aggregator> && !client_level_dp) {
      if (!(w > 0.0) || !std::isfinite(w)) {
        detail::raise<value_error>("secure sum: the summed weight is ", w, ", expected > 0");
      }
      const client_update<Backend> mean =
          update_from_change(global_, plan.shares, change, 1.0 / w, plan.round);
      const auto mean_products = secure_products(plan)
                                     ? products_from_change(global_, products, 1.0 / w)
                                     : std::map<std::string, typename Backend::matrix>{};
      aggregation_result result;
      result.weights = {1.0};
      adapter_set<Backend> next =
          aggregator_.merge_means(global_, mean.adapters, mean_products, plan.shares);
      if constexpr (residual_tracking_aggregator<Aggregator, Backend>) {
        result.residual_scalars = aggregator_.residual_update_scalars(
            global_, std::span<const client_update<Backend>>(&mean, 1), plan.shares);
      }
      detail::check_finite_merge<Aggregator>(next);
      global_ = std::move(next);
      return result;
    }
    if constexpr (client_level_dp) {  // uniform weights: sum w is the number summed
      const client_update<Backend> total =
          update_from_change(global_, plan.shares, change, 1.0, plan.round);
      return privacy::merge_noised(aggregator_, global_,
                                   std::span<const client_update<Backend>>(&total, 1), plan.shares,
                                   options, noised_round_of(plan));
    }
    if (!(w > 0.0) || !std::isfinite(w)) {
      detail::raise<value_error>("secure sum: the summed weight is ", w, ", expected > 0");
    }
    const client_update<Backend> mean =
        update_from_change(global_, plan.shares, change, 1.0 / w, plan.round);
    return detail::merge_checked(aggregator_, global_,
                                 std::span<const client_update<Backend>>(&mean, 1), plan.shares,
                                 options);
  }

  // Sample-level DP-SGD (privacy/dp_sgd.hpp) -------------------------------------------------

  void check_sample_dp() const {
    config_.sample_dp->check();
    if (client_level_dp) {
      detail::raise<config_error>(
          "federation: client-level and sample-level DP together are not supported: they protect "
          "different units (a client, one example) and would need two accountants and two "
          "reported budgets; choose one");
    }
    if (config_.closed_form_b) {
      detail::raise<config_error>(
          "federation: sample-level DP and closed_form_b: the exact B is solved from every example "
          "at once, unclipped and unnoised; turn one of them off");
    }
  }
  // q_c = B / n_c; q = 1 (the worst case) while n_c is unknown.
  double sample_rate(const client_state& c) const {
    if (c.dp_samples == 0) return 1.0;
    return privacy::sample_dp::sampling_rate(std::min(config_.batch_size, c.dp_samples),
                                             c.dp_samples);
  }
  const privacy::step_accountant& step_accountant() const {
    if (!step_accountant_) step_accountant_.emplace(config_.sample_dp->noise_multiplier);
    return *step_accountant_;
  }
  // Fail closed: round plan.round may run only if no reporting client would pass the target.
  void check_sample_budget(const round_plan& plan) const {
    const auto& dp = *config_.sample_dp;
    if (!dp.target_epsilon) return;
    for (std::size_t c : plan.reporting) {
      const auto& client = clients_[c];
      const double after =
          step_accountant()
              .epsilon(sample_rate(client), client.dp_sgd_steps + config_.local_steps, dp.delta)
              .epsilon;
      if (after > *dp.target_epsilon) {
        detail::raise<privacy_budget_exceeded>(
            error_context::of_round(plan.round), "privacy budget (sample-level DP): client ", c,
            " spent epsilon ", sample_dp_epsilon(c), " in ", client.dp_sgd_steps,
            " steps of the target epsilon ", *dp.target_epsilon, " at delta ", dp.delta, "; round ",
            plan.round, " would bring it to ", after, ", so the federation stops before it");
      }
    }
  }

  // The round's clients: Poisson sampling under client DP with sampling = poisson, else the
  // fixed number clients_per_round.
  std::vector<std::size_t> sample(std::size_t t, std::size_t num_clients) const {
    if constexpr (client_level_dp) {
      if (privacy_.noise == privacy::noise_source::secure)  // secret: the OS's randomness
        return privacy::secure_sample_clients(privacy_, num_clients, config_.clients_per_round);
      if (privacy_.sampling == privacy::client_sampling::poisson)
        return poisson_sample_clients(config_.seed, t, num_clients, privacy_.sampling_rate);
    }
    return sample_clients(config_.seed, t, num_clients, config_.clients_per_round);
  }

  const privacy::round_accountant& accountant() const {
    if (!accountant_) {
      accountant_.emplace(privacy_.accounting_rate(clients_.size(), config_.clients_per_round),
                          privacy_.noise_multiplier);
    }
    return *accountant_;
  }

  // Fail closed: round t may run only if the epsilon after it stays within the target.
  void check_budget(std::size_t t) const {
    if (!privacy_.target_epsilon) return;
    const double after = accountant().epsilon(privacy_state_.rounds + 1, privacy_.delta).epsilon;
    if (after > *privacy_.target_epsilon) {
      const double spent = accountant().epsilon(privacy_state_.rounds, privacy_.delta).epsilon;
      detail::raise<privacy_budget_exceeded>(
          error_context::of_round(t), "privacy budget: ", privacy_state_.rounds,
          " rounds spent epsilon ", spent, " of the target epsilon ", *privacy_.target_epsilon,
          " at delta ", privacy_.delta, "; round ", t, " would bring it to ", after,
          ", so the federation stops before it");
    }
  }

  privacy::noised_round noised_round_of(const round_plan& plan) const {
    const std::size_t n = clients_.size(), m = config_.clients_per_round;
    return {privacy_state_.clip_norm,
            privacy_.update_noise_multiplier(n, m),
            privacy_.expected_participants(n, m),
            config_.seed,
            plan.round,
            privacy_.noise,
            privacy_.relative_granularity};
  }

  // After round `plan`: one more round spent and, under adaptive clipping, C's step from the
  // unclipped updates among `good`, or from `unclipped`, their count (a secure round's sum).
  typename Privacy::state next_privacy_state(const round_plan& plan,
                                             const std::vector<client_update<Backend>>& good,
                                             std::optional<double> unclipped = std::nullopt) const {
    if constexpr (client_level_dp) {
      const std::size_t n = clients_.size(), m = config_.clients_per_round;
      privacy::client_dp_state next = privacy_state_;
      next.rounds += 1;
      next.clip_norm = privacy::next_clip_norm(
          privacy_, privacy_state_.clip_norm,
          unclipped ? *unclipped
                    : privacy::unclipped_count(std::span<const client_update<Backend>>(good)),
          privacy_.expected_participants(n, m), privacy_.bit_noise(n, m), config_.seed, plan.round);
      return next;
    } else {
      return privacy_state_;
    }
  }

  UpdatePolicy policy_;
  Aggregator aggregator_;
  federation_config config_;
  adapters_type global_;
  Privacy privacy_;
  typename Privacy::state privacy_state_{};
  mutable std::optional<privacy::round_accountant> accountant_;      // built once N is known
  mutable std::optional<privacy::step_accountant> step_accountant_;  // sample-level DP
  std::vector<client_state> clients_;
  std::vector<std::size_t> residual_increments_;  // per round: aggregation_result::residual_scalars
  std::size_t round_ = 0;
  std::size_t total_up_ = 0, total_down_ = 0;
};

}  // namespace rolora
