// Secure aggregation in the federation's rounds (secagg/round.hpp, federated/secure_sum.hpp):
// a masked run equals the same encoding without masks bit for bit, with clients dropped at every
// stage; the encoded mean is the plain mean to within one level; fewer than t answering
// neighbours fail the round and change nothing; adaptive clipping's bits are summed under the
// masks; FlexLoRA and FedEx-LoRA run from the sums of their factors and dense products; the
// configurations that would show the server a client's update are refused.
#include <doctest/doctest.h>
#include <cmath>
#include <cstddef>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/aggregate/residual.hpp>
#include <rolora/aggregate/svd_resplit.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/policy/policies.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <rolora/secagg/round.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <vector>
#include "../test_support.hpp"

using namespace rolora;
using cpu = eigen_backend<double>;
using dset = adapter_set<cpu>;

namespace {

theory::linear_problem<cpu> problem(std::size_t clients) {
  theory::linear_problem_config c;
  c.dim = 8;
  c.out_dim = 6;
  c.rank = 2;
  c.clients = clients;
  c.samples = 30;
  c.noise = 0.01;
  c.seed = 5;
  return theory::make_linear_problem<cpu>(c);
}

dset start() {
  lora_config c;
  c.r = 2;
  c.lora_alpha = 2;
  return dset({{theory::module_name, 6, 8}}, c, 3);
}

federation_config config(bool masks, std::size_t neighbours = 0, std::size_t threshold = 0) {
  federation_config c;
  c.num_rounds = 4;
  c.local_steps = 3;
  c.local_optimizer = sgd{0.05, 0.0, 0.0};
  c.seed = 17;
  c.secure_aggregation = secagg_config{
      .range = 4.0, .bits = 30, .threshold = threshold, .neighbours = neighbours, .masks = masks};
  return c;
}

// Runs `rounds` rounds of Policy over secagg::in_process with `drop`; the final global adapters.
template <class Policy>
std::pair<dset, std::vector<round_report>> run(
    federation_config c, std::size_t clients,
    std::function<bool(std::size_t, std::size_t, secagg::stage)> drop = {}) {
  auto p = problem(clients);
  federation<cpu, Policy, fedavg> fed(Policy{}, fedavg{}, c, start());
  secagg::in_process transport;
  transport.drop = std::move(drop);
  auto reports = rolora::run(transport, fed, p.clients);
  return {fed.global(), reports};
}

}  // namespace

TEST_CASE("secure rounds: a masked run equals the encoding without masks, bit for bit") {
  for (std::size_t k : {std::size_t(0), std::size_t(4)}) {  // complete graph, 4-regular
    CAPTURE(k);
    const auto [masked, reports] = run<alternating>(config(true, k), 8);
    const auto [clear, clear_reports] = run<alternating>(config(false, k), 8);
    CHECK(test::bit_equal(masked, clear));
    REQUIRE(reports.size() == 4);
    for (std::size_t r = 0; r < 4; ++r) {
      CHECK(reports[r].participants == clear_reports[r].participants);
      CHECK(reports[r].train_loss == clear_reports[r].train_loss);
      CHECK(std::isnan(reports[r].aggregation_error));  // not available under masks
      REQUIRE(reports[r].secagg);
      CHECK(reports[r].secagg->masked_input > 0);
      CHECK(reports[r].secagg->shares > 0);
      CHECK(reports[r].bytes_up == reports[r].secagg->up());
      if (k == 0) {  // 8 clients, complete graph: 56 sealed bundles, each counted once
        const secagg::round_setup setup{r, 4, secagg::complete_graph(8)};
        const secagg::client from(0, setup), to(1, setup);
        const auto bundle = from.share_out().front();
        const std::size_t envelope =
            secagg::encode_sealed_shares(from, bundle, to.encryption_public_key(), r).size();
        CHECK(reports[r].secagg->shares == 56 * envelope);
      }
    }
    // FedIT (both factors every round) too.
    CHECK(test::bit_equal(run<train_both>(config(true, k), 8).first,
                          run<train_both>(config(false, k), 8).first));
  }
}

namespace {
// The delta s B A + R a client holds after the rounds, on the host.
host_matrix<double> effective_delta(const dset& d) {
  const auto& a = d.at(theory::module_name);
  host_matrix<double> delta = a.scaling * (a.B * a.A);
  if (a.has_residual()) delta += a.residual;
  return delta;
}

template <class Aggregator>
void check_products_from_sums(double tolerance) {
  // Masked equals unmasked bit for bit; and both equal the plain federation, whose server sees
  // every client's factors, to within the encoding's rounding. The uploads carry the dense
  // products: more than the factors alone.
  auto p = problem(6);
  federation_config plain = config(true);
  plain.secure_aggregation.reset();
  federation<cpu, train_both, Aggregator> fed(train_both{}, Aggregator{}, plain, start());
  fed.run(p.clients);
  for (std::size_t k : {std::size_t(0), std::size_t(2)}) {
    CAPTURE(k);
    federation<cpu, train_both, Aggregator> masked(train_both{}, Aggregator{}, config(true, k),
                                                   start());
    federation<cpu, train_both, Aggregator> clear(train_both{}, Aggregator{}, config(false, k),
                                                  start());
    secagg::in_process transport;
    const auto reports = rolora::run(transport, masked, p.clients);
    rolora::run(transport, clear, p.clients);
    CHECK(test::bit_equal(masked.global(), clear.global()));
    const double gap =
        (effective_delta(masked.global()) - effective_delta(fed.global())).cwiseAbs().maxCoeff();
    CHECK(gap <= tolerance);
    CHECK(gap > 0.0);                     // the encoding did round
    const std::size_t dense = 6 * 8 * 8;  // [out, in] of 8-byte words, per client
    CHECK(reports[0].secagg->masked_input > 6 * dense);
  }
}
}  // namespace

TEST_CASE("secure rounds: FlexLoRA and FedEx-LoRA from the sums of factors and products") {
  // 4 rounds of 3 local steps; a level is 4 / 2^29 = 7.5e-9 per coordinate and round.
  SUBCASE("FlexLoRA (svd_resplit)") { check_products_from_sums<svd_resplit>(1e-8); }
  SUBCASE("FedEx-LoRA (fedex_residual)") { check_products_from_sums<fedex_residual>(1e-8); }
}

TEST_CASE("secure rounds: the encoded mean is the plain mean to within one level") {
  // One round, uniform weights: each client's rounding error is below one level, so the mean's
  // is too. A wrong flattening order or a lost coordinate is off by far more.
  federation_config secure = config(true);
  secure.num_rounds = 1;
  secure.client_weighting = weighting::uniform;
  federation_config plain = secure;
  plain.secure_aggregation.reset();
  auto p = problem(5);
  federation<cpu, train_both, fedavg> a(train_both{}, fedavg{}, secure, start());
  federation<cpu, train_both, fedavg> b(train_both{}, fedavg{}, plain, start());
  secagg::in_process transport;
  rolora::run(transport, a, p.clients);
  b.run(p.clients);
  const double level = 4.0 / std::ldexp(1.0, 29);
  const auto& x = a.global().at(theory::module_name);
  const auto& y = b.global().at(theory::module_name);
  double worst = 0;
  for (index_t i = 0; i < x.A.size(); ++i) worst = std::max(worst, std::abs(x.A(i) - y.A(i)));
  for (index_t i = 0; i < x.B.size(); ++i) worst = std::max(worst, std::abs(x.B(i) - y.B(i)));
  CHECK(worst <= level);
  CHECK(worst > 0.0);  // the encoding did round
  CHECK(a.server().clients().size() == 5);
  // The range clipped nothing here; a range below the changes clips, and the server learns how
  // many coordinates in all.
  secagg::in_process carrier;
  federation<cpu, train_both, fedavg> c(train_both{}, fedavg{}, secure, start());
  CHECK(rolora::run_round(carrier, c.server(), p.clients).secagg_clipped == 0u);
  secure.secure_aggregation->range = 1e-6;
  federation<cpu, train_both, fedavg> d(train_both{}, fedavg{}, secure, start());
  const auto clipped = rolora::run_round(carrier, d.server(), p.clients).secagg_clipped;
  REQUIRE(clipped.has_value());
  CHECK(*clipped > 5u);
}

TEST_CASE("secure rounds: clients dropped at every stage, masked equals unmasked") {
  // Round 1: client 1 gone before advertising, 2 before sharing keys, 3 before its masked input,
  // 4 after it (before unmasking): 4's input is in the sum, its masks removed by the others.
  const auto drop = [](std::size_t c, std::size_t round, secagg::stage s) {
    if (round != 1) return false;
    return (c == 1 && s == secagg::stage::advertise) ||
           (c == 2 && s <= secagg::stage::share_keys) ||
           (c == 3 && s <= secagg::stage::masked_input) || (c == 4 && s == secagg::stage::unmask);
  };
  // t = 3: every needed seed and key keeps at least 3 answering neighbours (complete graph of 7
  // parties, or a 6-regular graph of 11 with at most 3 of a party's neighbours silent).
  for (const auto& [k, n] : {std::pair<std::size_t, std::size_t>{0, 8}, {6, 12}}) {
    CAPTURE(k);
    const auto [masked, reports] = run<alternating>(config(true, k, 3), n, drop);
    const auto [clear, clear_reports] = run<alternating>(config(false, k, 3), n, drop);
    CHECK(test::bit_equal(masked, clear));
    std::vector<std::size_t> summed{0};
    for (std::size_t c = 4; c < n; ++c) summed.push_back(c);
    CHECK(reports[1].participants == summed);
    CHECK(reports[1].dropped == std::vector<std::size_t>{1, 2, 3});
    CHECK(clear_reports[1].participants == reports[1].participants);
    CHECK(reports[0].participants.size() == n);
  }
}

TEST_CASE("secure rounds: fewer than t answering neighbours fail the round, changing nothing") {
  // 6 clients, complete graph (degree 5), t = 5: with two gone before unmasking a survivor's seed
  // has only 3 shares.
  auto p = problem(6);
  federation<cpu, alternating, fedavg> fed(alternating{}, fedavg{}, config(true, 0, 5), start());
  secagg::in_process transport;
  transport.drop = [](std::size_t c, std::size_t round, secagg::stage s) {
    return round == 1 && c >= 4 && s == secagg::stage::unmask;
  };
  rolora::run_round(transport, fed.server(), p.clients);
  const dset before = fed.global();
  try {
    rolora::run_round(transport, fed.server(), p.clients);
    FAIL("the round ran with 3 shares of a seed at t = 5");
  } catch (const config_error& e) {
    CHECK(e.round() == 1);
    CHECK(std::string(e.message()).find("needs t = 5 shares, got 3") != std::string::npos);
  }
  CHECK(test::bit_equal(fed.global(), before));
  CHECK(fed.next_round() == 1);
  // With one gone, 4 shares are still too few; with none, the round runs.
  transport.drop = {};
  CHECK(rolora::run_round(transport, fed.server(), p.clients).participants.size() == 6);
}

TEST_CASE("secure rounds: a client checks its own update before masking") {
  // The server can no longer see a value: a client whose update breaks max_abs_entry refuses
  // itself (round_report::rejected); with every client refusing, the round fails.
  federation_config c = config(true);
  c.max_abs_entry = 1e-6;
  auto p = problem(4);
  federation<cpu, train_both, fedavg> fed(train_both{}, fedavg{}, c, start());
  secagg::in_process transport;
  const std::string what = test::untagged_message_of<value_error>(
      [&] { rolora::run_round(transport, fed.server(), p.clients); });
  CHECK(what.find("0 masked input(s) summed of 4 sampled clients") != std::string::npos);
  CHECK(what.find("; client 0: ") != std::string::npos);  // each refusal's reason
  CHECK(fed.next_round() == 0);
  // The weight travels in 32 bits whatever the change's: 30 samples at 4 bits (8 levels a side).
  federation_config coarse = config(true);
  coarse.secure_aggregation->bits = 4;
  federation<cpu, train_both, fedavg> small(train_both{}, fedavg{}, coarse, start());
  CHECK(rolora::run_round(transport, small.server(), p.clients).participants.size() == 4);
}

TEST_CASE("secure rounds: what would show the server a client's update is refused") {
  auto p = problem(4);
  SUBCASE("plain uploads under config.secure_aggregation") {
    federation<cpu, train_both, fedavg> fed(train_both{}, fedavg{}, config(true), start());
    CHECK(test::untagged_message_of<config_error>([&] {
            fed.run_round(p.clients);
          }).find("delivered plain uploads") != std::string::npos);
  }
  SUBCASE("a secure transport without config.secure_aggregation") {
    federation_config c = config(true);
    c.secure_aggregation.reset();
    federation<cpu, train_both, fedavg> fed(train_both{}, fedavg{}, c, start());
    secagg::in_process transport;
    CHECK(test::untagged_message_of<config_error>([&] {
            rolora::run_round(transport, fed.server(), p.clients);
          }).find("config.secure_aggregation is not set") != std::string::npos);
  }
  SUBCASE("kept factors, kept moments, bad encodings") {
    const auto refusal = [](federation_config c) {
      return test::untagged_message_of<config_error>(
          [&] { federation<cpu, train_both, fedavg> fed(train_both{}, fedavg{}, c, start()); });
    };
    federation_config c = config(true);
    c.keep_optimizer_state = true;
    CHECK(refusal(c).find("moments in the clear") != std::string::npos);
    c = config(true);
    c.secure_aggregation->bits = 63;
    CHECK(refusal(c).find("bits in [2, 62], got 63") != std::string::npos);
    c = config(true);
    c.secure_aggregation->range = 0.0;
    CHECK(refusal(c).find("range > 0") != std::string::npos);
    CHECK(test::untagged_message_of<config_error>([&] {
            federation<cpu, fedsa, fedavg> fed(fedsa{}, fedavg{}, config(true), start());
          }).find("FedSA-LoRA's B") != std::string::npos);
  }
}

TEST_CASE("secure rounds: client-level DP composes: clip, mask, sum, unmask, noise") {
  // Seeded noise: the masked run equals the unmasked one bit for bit; the clip is the client's.
  using privacy::client_dp;
  const auto run_dp = [&](bool masks) {
    federation_config c = config(masks);
    c.client_weighting = weighting::uniform;
    auto p = problem(6);
    client_dp dp{.clip_norm = 0.05, .noise_multiplier = 0.5, .sampling_rate = 0.7};
    federation<cpu, alternating, fedavg, client_dp> fed(alternating{}, fedavg{}, c, start(), dp);
    secagg::in_process transport;
    const auto reports = rolora::run(transport, fed, p.clients);
    CHECK(reports.back().epsilon.has_value());
    return fed.global();
  };
  CHECK(test::bit_equal(run_dp(true), run_dp(false)));
}

TEST_CASE("secure rounds: adaptive clipping sums the clip bits under the masks") {
  // Each client's unclipped bit travels under the masks; C's step reads only their sum. Masked
  // equals unmasked bit for bit, C included; round 0's step (every client trained from the same
  // model, so the same clipping decisions) is the plain run's, which counts the bits itself:
  // with C = 0.05 every update is clipped, with C = 1000 none is (a sum that lost the bits would
  // take the same step for both).
  using privacy::client_dp;
  const auto run_adaptive = [&](double clip_norm, std::optional<bool> masks) {
    federation_config c = config(masks.value_or(true));
    if (!masks) c.secure_aggregation.reset();  // the plain federation
    c.client_weighting = weighting::uniform;
    auto p = problem(6);
    client_dp dp{.clip_norm = clip_norm, .noise_multiplier = 0.5, .sampling_rate = 0.7};
    dp.adaptive = privacy::adaptive_clipping{.bit_noise = 1.0};  // z = 0.5 < 2 sigma_b
    federation<cpu, alternating, fedavg, client_dp> fed(alternating{}, fedavg{}, c, start(), dp);
    std::vector<double> clip_norms;
    if (masks) {
      secagg::in_process transport;
      for (const auto& r : rolora::run(transport, fed, p.clients))
        clip_norms.push_back(*r.clip_norm);
    } else {
      for (const auto& r : fed.run(p.clients)) clip_norms.push_back(*r.clip_norm);
    }
    clip_norms.push_back(fed.server().privacy_state().clip_norm);
    return std::pair{fed.global(), clip_norms};
  };
  std::vector<double> steps;  // C_1 / C_0 for each C_0
  for (double clip : {0.05, 1000.0}) {
    CAPTURE(clip);
    const auto [masked, masked_c] = run_adaptive(clip, true);
    const auto [clear, clear_c] = run_adaptive(clip, false);
    const auto plain_c = run_adaptive(clip, std::nullopt).second;
    CHECK(test::bit_equal(masked, clear));
    CHECK(masked_c == clear_c);
    REQUIRE(masked_c.size() == 5);
    CHECK(masked_c[0] == clip);
    CHECK(masked_c[1] == plain_c[1]);  // from the same count of unclipped updates
    steps.push_back(masked_c[1] / clip);
  }
  // The same seeded bit noise in both: more unclipped updates, a smaller step.
  CHECK(steps[1] < steps[0]);
}

TEST_CASE("secure rounds: a round with one party sums nothing, its update stays with it") {
  const auto alone = [](std::size_t c, std::size_t, secagg::stage) { return c != 0; };
  auto p = problem(3);
  federation<cpu, train_both, fedavg> fed(train_both{}, fedavg{}, config(true), start());
  secagg::in_process transport;
  transport.drop = alone;
  CHECK(test::untagged_message_of<value_error>([&] {
          rolora::run_round(transport, fed.server(), p.clients);
        }).find("0 masked input(s) summed of 3 sampled clients") != std::string::npos);
  // Under client-level DP the round is a round: noise only, the lone client rejected.
  federation_config c = config(true);
  c.client_weighting = weighting::uniform;
  privacy::client_dp dp{.clip_norm = 0.05, .noise_multiplier = 0.5, .sampling_rate = 1.0};
  federation<cpu, train_both, fedavg, privacy::client_dp> private_fed(train_both{}, fedavg{}, c,
                                                                      start(), dp);
  const round_report r = rolora::run_round(transport, private_fed.server(), p.clients);
  CHECK(r.participants.empty());
  REQUIRE(r.rejected.size() == 1);
  CHECK(r.rejected[0].client == 0);
  CHECK(r.rejected[0].reason.find("the only client of the round") != std::string::npos);
  CHECK_FALSE(test::bit_equal(private_fed.global(), start()));  // the noise moved it
}
