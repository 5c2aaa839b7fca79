// What configures a federated round and what it reports: shared by the server
// (federated/server.hpp), the client (federated/client.hpp) and their in-process composition
// (federated/federation.hpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/ranks.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/privacy/dp_sgd.hpp>
#include <string>
#include <vector>

namespace rolora {

// What the server does with an upload that fails its checks (wrong round, unknown client, wrong
// shapes or rank, missing or extra modules, non-finite or absurdly large values, a sample count
// that is not positive): `fail` the round (nothing changes; the default), or `drop` that client
// from the round, log it in round_report::rejected and merge the others.
enum class bad_update_policy { fail, drop };

// Secure aggregation's settings (rolora/secagg/round.hpp runs the protocol).
struct secagg_config {
  // Each coordinate of w (X - G) is clipped to [-range, range] and stochastically rounded to one
  // of 2^bits levels; the weight w is an integer and travels exactly (up to 2^31).
  double range = 16.0;
  unsigned bits = 24;
  // t: shares that rebuild a client's self-mask seed or mask key (0: a majority of its
  // neighbours, floor(k / 2) + 1). A round with fewer than t answering neighbours fails.
  std::size_t threshold = 0;
  // k: neighbours per client, a random k-regular graph as in SecAgg+ (0, or k >= clients - 1:
  // the complete graph of Bonawitz et al.).
  std::size_t neighbours = 0;
  // false: the same encoding summed in the clear, without the protocol (the reference a masked
  // run equals bit for bit: the masks' only effect is none, the encoding's is quantization).
  bool masks = true;
};

// Bytes of one round's protocol messages, per stage, summed over the clients (secagg/messages.hpp).
struct secagg_traffic {
  std::size_t advertise = 0;       // up: each client's public keys
  std::size_t key_directory = 0;   // down: the keys every client receives
  std::size_t shares = 0;          // the sealed bundles: each goes up once and down once
  std::size_t masked_input = 0;    // up
  std::size_t unmask_request = 0;  // down
  std::size_t unmask_answer = 0;   // up
  std::size_t up() const { return advertise + shares + masked_input + unmask_answer; }
  std::size_t down() const { return key_directory + shares + unmask_request; }
};

struct federation_config {
  std::size_t num_rounds = 10;
  std::size_t clients_per_round = 0;  // 0: every client, every round
  double client_dropout = 0.0;        // probability that a sampled client never reports back
  std::size_t local_steps = 1;
  std::size_t batch_size = 0;  // 0: the full local data set each step
  optimizer local_optimizer = sgd{};
  bool keep_optimizer_state = false;  // false: fresh moments every round (the paper's code)
  weighting client_weighting = weighting::by_samples;
  bool closed_form_b = false;  // B-only rounds: the task's exact least squares, if it has one
  bool measure_aggregation_error = true;
  // Heterogeneous ranks: client c's rank for every module (capped at the module's rank); empty:
  // every client at the server's rank. Its scaling follows client_rank_scaling.
  std::vector<index_t> client_ranks;
  rank_scaling client_rank_scaling = rank_scaling::alpha_over_r;
  bad_update_policy on_bad_update = bad_update_policy::fail;
  std::size_t min_clients = 1;  // fewer usable updates than this: the round fails
  // An uploaded entry of larger magnitude is hostile: the products and sums of squares the
  // aggregators form from two such entries stay finite even in float (1e12^2 * 1e12 < 3.4e38).
  double max_abs_entry = 1e12;
  // Sample-level DP-SGD inside every client (privacy/dp_sgd.hpp): each local step clips every
  // example's gradient, adds noise and divides by the expected batch size. Needs a task that
  // models per_example_clip_task; not with closed_form_b or client-level DP.
  std::optional<privacy::sample_dp> sample_dp = std::nullopt;
  // Secure aggregation (rolora/secagg/round.hpp, needs libsodium): the server learns only the sum
  // of the round's updates (federated/secure_sum.hpp); needs an aggregator that is a mean of
  // factors, refuses kept factors and moments, sample-count weighting is encoded with the sum.
  std::optional<secagg_config> secure_aggregation = std::nullopt;
  std::size_t threads = 1;  // clients trained in parallel; results do not depend on it
  std::uint64_t seed = 0;   // client sampling, dropout and batching streams
};

// A sampled client whose upload the server refused (on_bad_update = drop), and why.
struct rejected_update {
  std::size_t client = 0;
  std::string reason;
  bool operator==(const rejected_update&) const = default;
};

// What happened in one round.
struct round_report {
  std::size_t round = 0;
  factor_set trained, shared;
  std::vector<std::size_t> participants;  // sampled clients whose updates were merged, increasing
  std::vector<std::size_t> dropped;       // sampled clients that were not: dropped out or rejected
  std::vector<rejected_update> rejected;  // the dropped clients that did upload, with the reason
  double train_loss = 0.0;         // sample-weighted mean over participants of their mean step loss
  double aggregation_error = 0.0;  // see aggregation_result::error
  double relative_aggregation_error = 0.0;  // see aggregation_result::relative_error
  // Bytes are those of the encoded messages (federated/wire.hpp), in every transport.
  std::size_t bytes_up = 0;               // this round, every client that uploaded
  std::size_t bytes_down = 0;             // this round, all sampled clients
  std::size_t bytes_up_per_client = 0;    // mean over the uploads (exact for equal ranks)
  std::size_t bytes_down_per_client = 0;  // mean over sampled clients
  std::size_t residual_bytes_down = 0;    // the part of bytes_down that is dense residuals
  std::size_t total_bytes_up = 0;         // since round 0
  std::size_t total_bytes_down = 0;
  double seconds = 0.0;
  // Client-level DP (privacy/client_dp.hpp): epsilon spent after this round (at the configured
  // delta) and the clip norm C the round used. Sample-level DP-SGD (privacy/dp_sgd.hpp): the
  // LARGEST epsilon over the clients after this round (each client's steps composed at its own
  // q_c = B / n_c; a client that never took part has spent 0) and the per-example clip norm C.
  std::optional<double> epsilon = std::nullopt;
  std::optional<double> clip_norm = std::nullopt;
  // Secure aggregation: the bytes of each stage of the protocol (bytes_up and bytes_down are
  // their totals); aggregation_error is NaN then, since it needs the individual products.
  std::optional<secagg_traffic> secagg = std::nullopt;
  // Secure aggregation: how many coordinates of the summed changes the encoding's range clipped
  // (learned only as a sum; more than 0: the range is too small for these updates).
  std::optional<std::size_t> secagg_clipped = std::nullopt;
};

}  // namespace rolora
