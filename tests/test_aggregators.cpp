// aggregate/: the product-level strategies (svd_resplit, stack, residual, procrustes), HetLoRA's
// zero padding and heterogeneous ranks, the adapters' dense residual, and every strategy end to end
// in a federation on the theory problem.
#include <Eigen/SVD>
#include <limits>
#include <vector>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;
using hostd = Eigen::MatrixXd;

namespace {

// Encoded message sizes (federated/wire.hpp): `payload` tensor bytes plus, per message, 8 bytes
// of header length and a JSON header of at most a few hundred bytes.
inline bool encoded_bytes(std::size_t bytes, std::size_t payload, std::size_t messages = 1) {
  return bytes >= payload + 8 * messages && bytes <= payload + 512 * messages;
}

template <class Backend>
hostd to_double(const typename Backend::matrix& m) {
  return Backend::to_host(m).template cast<double>();
}

// The delta s B A + R of one adapter, in double.
template <class Backend>
hostd delta_of(const lora_adapter<Backend>& l) {
  hostd d = double(l.scaling) * to_double<Backend>(l.B) * to_double<Backend>(l.A);
  if (l.has_residual()) d += to_double<Backend>(l.residual);
  return d;
}

// K clients of one module "m" [out, in]: the server at rank r and scaling 2 (with a residual when
// asked), client i at rank ranks[i] with scaling 2 r / ranks[i] (PEFT's alpha / r_i), both factors
// random, sample counts 10 (i + 1).
template <class Backend>
struct clients_fixture {
  adapter_set<Backend> global;
  std::vector<client_update<Backend>> updates;

  clients_fixture(std::vector<index_t> ranks, index_t out, index_t in, index_t r,
                  bool with_residual = false, std::uint32_t tag = 300) {
    auto g = make_lora<Backend>("m", out, in, r, 2.0, lora_init::gaussian, 1);
    g.B = test::random_backend_matrix<Backend>(out, r, tag);
    if (with_residual) g.residual = test::random_backend_matrix<Backend>(out, in, tag + 1);
    global.insert("m", g);
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      const auto t = std::uint32_t(tag + 10 + 2 * i);
      lora_adapter<Backend> mine{test::random_backend_matrix<Backend>(ranks[i], in, t),
                                 test::random_backend_matrix<Backend>(out, ranks[i], t + 1),
                                 typename Backend::scalar(2.0 * double(r) / double(ranks[i])),
                                 g.residual};
      adapter_set<Backend> set;
      set.insert("m", mine);
      updates.push_back({i, double(10 * (i + 1)), std::move(set)});
    }
  }
  std::span<const client_update<Backend>> span() const { return updates; }

  // sum_i w_i s_i B_i A_i + R, in double.
  hostd mean_delta(const std::vector<double>& w) const {
    const auto& g = global.at("m");
    hostd sum = hostd::Zero(g.out_features(), g.in_features());
    for (std::size_t i = 0; i < updates.size(); ++i) {
      const auto& a = updates[i].adapters.at("m");
      sum += w[i] * double(a.scaling) * to_double<Backend>(a.B) * to_double<Backend>(a.A);
    }
    if (g.has_residual()) sum += to_double<Backend>(g.residual);
    return sum;
  }
};

hostd best_rank(const hostd& m, index_t r) {
  Eigen::JacobiSVD<hostd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal() *
         svd.matrixV().leftCols(r).transpose();
}

hostd random_rotation(index_t r, std::uint32_t tag) {
  return Eigen::HouseholderQR<hostd>(test::random_matrix(r, r, tag)).householderQ();
}

}  // namespace

TEST_CASE_TEMPLATE("residual: forward, backward, delta and merge apply the dense correction",
                   Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  const double tol = 10 * test::rounding_tolerance<Backend>();
  auto l = make_lora<Backend>("m", 4, 3, 2, 0.5, lora_init::gaussian, 9);
  l.B = test::random_backend_matrix<Backend>(4, 2, 1);
  const auto plain = l;
  l.residual = test::random_backend_matrix<Backend>(4, 3, 2);
  const auto w0 = test::random_backend_matrix<Backend>(4, 3, 3);
  const auto x = test::random_backend_matrix<Backend>(3, 5, 4);
  const auto dy = test::random_backend_matrix<Backend>(4, 5, 5);
  const hostd r = to_double<Backend>(l.residual), xd = to_double<Backend>(x),
              dyd = to_double<Backend>(dy);
  const hostd full =
      to_double<Backend>(w0) + r + 0.5 * to_double<Backend>(l.B) * to_double<Backend>(l.A);
  CHECK((to_double<Backend>(delta(l)) - (full - to_double<Backend>(w0))).norm() <
        tol * full.norm());

  lora_cache<Backend> cache;
  typename Backend::matrix y, dx;
  lora_forward<Backend>(&w0, l, x, cache, y);
  CHECK((to_double<Backend>(y) - full * xd).norm() < tol * (full * xd).norm());
  lora_gradients<Backend> with, without;
  lora_backward<Backend>(&w0, l, x, cache, dy, both_factors, with, &dx);
  CHECK((to_double<Backend>(dx) - full.transpose() * dyd).norm() <
        tol * (full.transpose() * dyd).norm());
  lora_cache<Backend> plain_cache;
  lora_forward<Backend>(&w0, plain, x, plain_cache, y);
  lora_backward<Backend>(&w0, plain, x, plain_cache, dy, both_factors, without);
  CHECK(test::max_abs_diff<Backend>(with.dA, without.dA) == 0.0);  // the residual never trains
  CHECK(test::max_abs_diff<Backend>(with.dB, without.dB) == 0.0);

  auto merged = w0;
  merge_into_base(merged, l);
  CHECK((to_double<Backend>(merged) - full).norm() < tol * full.norm());
  unmerge_from_base(merged, l);
  CHECK(test::max_abs_diff<Backend>(merged, w0) < tol * 10);
  l.residual = Backend::zeros(3, 4);
  CHECK(message_of<shape_error>([&] { delta(l); }).find("residual expected [4, 3]") !=
        std::string::npos);
  (void)T{};
}

TEST_CASE_TEMPLATE("heterogeneous ranks: pad and truncate keep the delta and round-trip", Backend,
                   ROLORA_TEST_BACKENDS) {
  const double tol = 10 * test::rounding_tolerance<Backend>();
  lora_adapter<Backend> small{test::random_backend_matrix<Backend>(2, 7, 1),
                              test::random_backend_matrix<Backend>(5, 2, 2),
                              typename Backend::scalar(8.0 / 2)};
  const double s = scaling_at_rank(8.0 / 2, 2, 4, rank_scaling::alpha_over_r);  // lora_alpha / 4
  CHECK(s == 2.0);
  CHECK(scaling_at_rank(3.0, 4, 1, rank_scaling::alpha_over_sqrt_r) == doctest::Approx(6.0));
  CHECK(scaling_at_rank(3.0, 4, 1, rank_scaling::fixed) == 3.0);
  const auto padded = pad_rank(small, 4, s);
  CHECK(padded.rank() == 4);
  CHECK(double(padded.scaling) == s);
  CHECK((delta_of(padded) - delta_of(small)).norm() < tol * delta_of(small).norm());
  CHECK(to_double<Backend>(padded.A).bottomRows(2).norm() == 0.0);
  CHECK(to_double<Backend>(padded.B).rightCols(2).norm() == 0.0);
  const auto back = truncate_rank(padded, 2, double(small.scaling));
  CHECK(test::max_abs_diff<Backend>(back.A, small.A) == 0.0);
  CHECK(test::max_abs_diff<Backend>(back.B, small.B) < tol * 10);
  // Truncation keeps the first components: here s_i B_i A_i = sum of the first two rank-one terms.
  lora_adapter<Backend> big{test::random_backend_matrix<Backend>(4, 7, 3),
                            test::random_backend_matrix<Backend>(5, 4, 4),
                            typename Backend::scalar(0.5)};
  const auto first = truncate_rank(big, 2, 1.0);
  const hostd expected =
      0.5 * to_double<Backend>(big.B).leftCols(2) * to_double<Backend>(big.A).topRows(2);
  CHECK((delta_of(first) - expected).norm() < tol * expected.norm());
  CHECK_THROWS_AS(pad_rank(big, 3, 1.0), config_error);
  CHECK_THROWS_AS(truncate_rank(big, 5, 1.0), config_error);
  CHECK_THROWS_AS(truncate_rank(big, 2, 0.0), config_error);
}

TEST_CASE_TEMPLATE("stack and residual: the global delta is the weighted mean of the client deltas",
                   Backend, ROLORA_TEST_BACKENDS) {
  const double tol = 10 * test::rounding_tolerance<Backend>();
  for (const bool with_residual : {false, true}) {
    for (const auto& ranks : {std::vector<index_t>{3, 3, 3, 3}, std::vector<index_t>{1, 3, 2}}) {
      CAPTURE(with_residual);
      CAPTURE(ranks.size());
      clients_fixture<Backend> f(ranks, 9, 7, 3, with_residual);
      index_t total = 0;
      for (auto r : ranks) total += r;

      auto g_stack = f.global;
      const auto rs = aggregate(flora_stack{5, lora_init::gaussian}, g_stack, f.span(),
                                both_factors, {.round = 4});
      const hostd exact = f.mean_delta(rs.weights);
      CHECK((delta_of(g_stack.at("m")) - exact).norm() < tol * exact.norm());
      CHECK(rs.relative_error < tol);
      CHECK(rs.residual_scalars ==
            std::size_t((9 + 7) * total));  // FLoRA sends the stacked factors
      // Re-initialised: B = 0, A drawn from the adapter-init stream, sub-stream (module, round +
      // 1).
      CHECK(to_double<Backend>(g_stack.at("m").B).norm() == 0.0);
      const auto fresh = make_lora<Backend>("m", 9, 7, 3, 2.0, lora_init::gaussian, 5, 0, 5);
      CHECK(test::max_abs_diff<Backend>(g_stack.at("m").A, fresh.A) == 0.0);
      auto other_round = f.global;
      aggregate(flora_stack{5, lora_init::gaussian}, other_round, f.span(), both_factors,
                {.round = 5});
      CHECK(test::max_abs_diff<Backend>(other_round.at("m").A, fresh.A) > 0.0);

      auto g_res = f.global;
      const auto rr = aggregate(fedex_residual{}, g_res, f.span(), both_factors);
      CHECK((delta_of(g_res.at("m")) - exact).norm() < tol * exact.norm());
      CHECK(rr.relative_error < tol);
      CHECK(rr.residual_scalars == std::size_t(9 * 7));  // FedEx-LoRA sends the dense correction
      // Its factors are fedavg's (zero-padded): the residual holds exactly what fedavg misses.
      auto g_avg = f.global;
      const auto ra = aggregate(padded_fedavg{}, g_avg, f.span(), both_factors);
      CHECK(test::max_abs_diff<Backend>(g_avg.at("m").A, g_res.at("m").A) == 0.0);
      CHECK(test::max_abs_diff<Backend>(g_avg.at("m").B, g_res.at("m").B) == 0.0);
      CHECK(ra.relative_error > 0.1);
    }
  }
}

TEST_CASE_TEMPLATE("svd_resplit: exact when sum r_i <= r, else the best rank-r approximation",
                   Backend, ROLORA_TEST_BACKENDS) {
  const double tol = test::rounding_tolerance<Backend>();
  {  // sum r_i = 4 <= r = 5: nothing to truncate
    clients_fixture<Backend> f({2, 1, 1}, 12, 10, 5);
    auto g = f.global;
    const auto result = aggregate(svd_resplit{}, g, f.span(), both_factors);
    const hostd exact = f.mean_delta(result.weights);
    CHECK((delta_of(g.at("m")) - exact).norm() < 10 * tol * exact.norm());
    CHECK(result.relative_error < 10 * tol);
    CHECK(to_double<Backend>(g.at("m").B).col(4).norm() == 0.0);  // unused component
  }
  // R = 6 <= min(out, in) takes the QR path; R = 16 > 10 the dense one. Both: Eckart-Young.
  for (const auto& ranks :
       {std::vector<index_t>{2, 2, 2}, std::vector<index_t>{2, 2, 2, 2, 2, 2, 2, 2}}) {
    CAPTURE(ranks.size());
    clients_fixture<Backend> f(ranks, 12, 10, 2);
    auto g = f.global;
    const auto result = aggregate(svd_resplit{}, g, f.span(), both_factors);
    const hostd mean = f.mean_delta(result.weights);
    const hostd best = best_rank(mean, 2);
    const hostd got = delta_of(g.at("m"));
    CHECK((got - best).norm() < 100 * tol * best.norm());
    CHECK(result.error == doctest::Approx((mean - best).norm()).epsilon(100 * tol));
    // Split evenly: B^T B = A A^T = S / s, diagonal, in decreasing order.
    const hostd b = to_double<Backend>(g.at("m").B), a = to_double<Backend>(g.at("m").A);
    const hostd btb = b.transpose() * b, aat = a * a.transpose();
    CHECK((btb - aat).norm() < 100 * tol * btb.norm());
    CHECK(std::abs(btb(0, 1)) < 100 * tol * btb.norm());
    CHECK(btb(0, 0) >= btb(1, 1));
    // Truncating the result to rank 1 gives the best rank-1 approximation (FlexLoRA's clients).
    const hostd best1 = best_rank(mean, 1);
    CHECK((delta_of(truncate_rank(g.at("m"), 1, 4.0)) - best1).norm() < 100 * tol * best1.norm());
  }
  {  // one shared factor: the mean of that factor, as fedavg, bit for bit
    clients_fixture<Backend> f({3, 3, 3}, 8, 6, 3);
    auto g = f.global, plain = f.global;
    aggregate(svd_resplit{}, g, f.span(), only_b);
    aggregate(fedavg{}, plain, f.span(), only_b);
    CHECK(test::bit_equal(g, plain));
  }
}

TEST_CASE_TEMPLATE(
    "procrustes: exact on rotated copies, closer than fedavg on rotated noisy copies", Backend,
    ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  const double tol = test::rounding_tolerance<Backend>();
  const index_t out = 10, in = 8, r = 3;
  for (const double noise : {0.0, 0.1}) {
    CAPTURE(noise);
    clients_fixture<Backend> f({r, r, r, r, r}, out, in,
                               r);  // the server's factors are the reference
    const hostd b0 = test::random_matrix(out, r, 50), a0 = test::random_matrix(r, in, 51);
    for (std::size_t i = 0; i < f.updates.size(); ++i) {
      const hostd q = random_rotation(r, std::uint32_t(60 + i));
      auto& a = f.updates[i].adapters.at("m");
      a.scaling = T(2);
      a.B =
          Backend::from_host(((b0 + test::random_matrix(out, r, std::uint32_t(70 + i), noise)) * q)
                                 .template cast<T>());
      a.A = Backend::from_host(
          (q.transpose() * (a0 + test::random_matrix(r, in, std::uint32_t(80 + i), noise)))
              .template cast<T>());
    }
    auto rotated = f.global, averaged = f.global;
    const auto rp = aggregate(procrustes{}, rotated, f.span(), both_factors);
    const auto rf = aggregate(fedavg{}, averaged, f.span(), both_factors);
    if (noise == 0.0) {
      CHECK(rp.relative_error < 100 * tol);
      // Every client is mapped onto the same factors (B0 R, R^T A0) for one rotation R.
      const hostd b = to_double<Backend>(rotated.at("m").B);
      CHECK((b * b.transpose() - b0 * b0.transpose()).norm() <
            100 * tol * (b0 * b0.transpose()).norm());
    } else {
      CHECK(rp.relative_error < 0.1);
    }
    CHECK(rf.relative_error > 0.3);  // rotations make fedavg's factors cancel
    CHECK(rp.error < 0.3 * rf.error);
  }
}

TEST_CASE_TEMPLATE(
    "heterogeneous uploads: accepted only by aggregators that declare it; bad input refused, "
    "global unchanged",
    Backend, ROLORA_TEST_BACKENDS) {
  static_assert(
      heterogeneous_rank_aggregator<svd_resplit> && heterogeneous_rank_aggregator<flora_stack> &&
      heterogeneous_rank_aggregator<fedex_residual> && heterogeneous_rank_aggregator<procrustes> &&
      heterogeneous_rank_aggregator<padded_fedavg> && !heterogeneous_rank_aggregator<fedavg> &&
      heterogeneous_rank_aggregator<orthonormalize_a<padded_fedavg>> &&
      !heterogeneous_rank_aggregator<orthonormalize_a<fedavg>>);
  using T = typename Backend::scalar;
  clients_fixture<Backend> f({2, 1, 2}, 6, 5, 2);
  auto global = f.global;
  const auto before = global;
  auto msg = message_of<shape_error>([&] { aggregate(fedavg{}, global, f.span(), both_factors); });
  CHECK(msg.find("module 'm' client 1: lora_A expected [2, 5], got [1, 5]") != std::string::npos);

  auto run = [&](auto aggregator, const std::vector<client_update<Backend>>& ups) {
    aggregate(aggregator, global, std::span<const client_update<Backend>>(ups), both_factors);
  };
  auto ups = f.updates;
  ups[1].adapters.at("m").A = Backend::zeros(3, 5);  // rank above the server's
  ups[1].adapters.at("m").B = Backend::zeros(6, 3);
  msg = message_of<shape_error>([&] { run(svd_resplit{}, ups); });
  CHECK(msg.find("module 'm' client 1: lora_A expected [r_i, 5] with 1 <= r_i <= 2, got [3, 5]") !=
        std::string::npos);
  ups = f.updates;
  ups[1].adapters.at("m").B = Backend::zeros(6, 2);  // B's rank differs from A's
  msg = message_of<shape_error>([&] { run(flora_stack{}, ups); });
  CHECK(msg.find("module 'm' client 1: lora_B expected [6, 1], got [6, 2]") != std::string::npos);
  ups = f.updates;
  auto bad = Backend::to_host(ups[1].adapters.at("m").B);
  bad(2, 0) = std::numeric_limits<T>::quiet_NaN();
  ups[1].adapters.at("m").B = Backend::from_host(bad);
  for (int k = 0; k < 5; ++k) {
    msg = message_of<value_error>([&] {
      switch (k) {
        case 0:
          run(svd_resplit{}, ups);
          break;
        case 1:
          run(flora_stack{}, ups);
          break;
        case 2:
          run(fedex_residual{}, ups);
          break;
        case 3:
          run(procrustes{}, ups);
          break;
        default:
          run(padded_fedavg{}, ups);
          break;
      }
    });
    CHECK(msg.find("module 'm' client 1: lora_B holds non-finite") != std::string::npos);
  }
  ups = f.updates;
  ups[0].adapters.at("m").scaling = T(0);
  CHECK(message_of<value_error>([&] {
          run(fedex_residual{}, ups);
        }).find("scaling must be finite") != std::string::npos);
  CHECK(test::bit_equal(global, before));
  CHECK(!global.at("m").has_residual());

  // Accepted: the padded mean keeps every client's delta (exact when only B varies).
  const auto result = aggregate(padded_fedavg{}, global, f.span(), both_factors);
  CHECK(result.relative_error > 0.0);
  CHECK(global.at("m").rank() == 2);
}

// End to end: eigen_backend<double> only (the federation loop itself runs per backend in
// test_federated.cpp; one backend here keeps this file's compile time down).
namespace {

using eigen_d = eigen_backend<double>;
using adapters = adapter_set<eigen_d>;

theory::linear_problem<eigen_d> problem() {
  theory::linear_problem_config c;
  c.dim = 12;
  c.out_dim = 8;
  c.rank = 2;
  c.clients = 6;
  c.samples = 60;
  c.noise = 0.01;
  c.seed = 11;
  return theory::make_linear_problem<eigen_d>(c);
}

adapters start(index_t r = 2) {
  lora_config c;
  c.r = r;
  c.lora_alpha = 2.0 * double(r);
  return adapters({{theory::module_name, 8, 12}}, c, 5);
}

double global_loss(theory::linear_problem<eigen_d>& p, const adapters& a) {
  double loss = 0.0;
  for (std::size_t i = 0; i < p.clients.size(); ++i) loss += p.weights[i] * p.clients[i].loss(a);
  return loss;
}

template <class Aggregator>
std::vector<round_report> run_strategy(Aggregator aggregator, theory::linear_problem<eigen_d>& p,
                                       federation_config config, adapters* final_state = nullptr,
                                       index_t r = 2) {
  federation<eigen_d, train_both, Aggregator> fed(train_both{}, aggregator, config, start(r));
  auto reports = fed.run(p.clients);
  if (final_state) *final_state = fed.global();
  return reports;
}

}  // namespace

TEST_CASE(
    "every strategy end to end on the theory problem: loss falls, errors and bytes as claimed") {
  const double tol = test::rounding_tolerance<eigen_d>();
  auto p = problem();
  federation_config config;
  config.num_rounds = 12;
  config.local_steps = 3;
  config.local_optimizer = sgd{0.2};
  config.client_weighting = weighting::uniform;
  const double initial = global_loss(p, start());
  constexpr std::size_t a_bytes = 2 * 12 * 8, b_bytes = 8 * 2 * 8, dense = 8 * 12 * 8;  // doubles

  adapters end;
  const auto fedavg_reports = run_strategy(fedavg{}, p, config, &end);
  CHECK(global_loss(p, end) < 0.25 * initial);
  const auto flex = run_strategy(svd_resplit{}, p, config, &end);
  CHECK(global_loss(p, end) < 0.25 * initial);
  CHECK(flex[0].aggregation_error <= fedavg_reports[0].aggregation_error);  // Eckart-Young
  CHECK(encoded_bytes(flex[3].bytes_down_per_client, a_bytes + b_bytes));
  const auto rot = run_strategy(procrustes{}, p, config, &end);
  CHECK(global_loss(p, end) < 0.25 * initial);
  CHECK(encoded_bytes(rot[0].bytes_up_per_client, a_bytes + b_bytes));

  const auto fedex = run_strategy(fedex_residual{}, p, config, &end);
  CHECK(global_loss(p, end) < 0.25 * initial);
  for (const auto& r : fedex) CHECK(r.relative_aggregation_error < 100 * tol);
  CHECK(fedex[0].residual_bytes_down == 0);
  CHECK(encoded_bytes(fedex[1].bytes_down_per_client, a_bytes + b_bytes + dense));  // + residual
  CHECK(fedex[1].residual_bytes_down == 6 * dense);
  CHECK(encoded_bytes(fedex[1].bytes_up_per_client, a_bytes + b_bytes));

  const auto flora = run_strategy(flora_stack{5}, p, config, &end);
  CHECK(global_loss(p, end) < 0.25 * initial);
  for (const auto& r : flora) CHECK(r.relative_aggregation_error < 100 * tol);
  // Each download carries the dense residual [8, 12] once the first round made one.
  CHECK(flora[0].residual_bytes_down == 0);
  CHECK(flora[1].residual_bytes_down == 6 * dense);

  // One client per round: the one sampled client downloads the dense residual.
  config.clients_per_round = 1;
  config.num_rounds = 10;
  const auto partial = run_strategy(flora_stack{5}, p, config);
  for (const auto& r : partial) {
    REQUIRE(r.participants.size() == 1);
    CHECK(r.residual_bytes_down == (r.round == 0 ? 0 : dense));
    CHECK(r.relative_aggregation_error < 100 * tol);
  }
}

TEST_CASE("heterogeneous ranks in a federation: clients train at their rank, bytes follow it") {
  const double tol = test::rounding_tolerance<eigen_d>();
  auto p = problem();
  federation_config config;
  config.num_rounds = 20;
  config.local_steps = 3;
  config.local_optimizer = sgd{0.05};
  config.client_weighting = weighting::uniform;
  config.client_ranks = {1, 2, 4, 1, 2, 5};  // capped at the server's rank 4
  const double initial = global_loss(p, start(4));

  federation<eigen_d, train_both, svd_resplit> fed(train_both{}, svd_resplit{}, config, start(4));
  const auto v0 = fed.client_view(0), v5 = fed.client_view(5);
  CHECK(v0.at(theory::module_name).rank() == 1);
  CHECK(double(v0.at(theory::module_name).scaling) == doctest::Approx(8.0));  // lora_alpha / 1
  CHECK(v5.at(theory::module_name).rank() == 4);
  const auto reports = fed.run(p.clients);
  CHECK(global_loss(p, fed.global()) < 0.25 * initial);
  // Up: A [r_i, 12] + B [8, r_i] per client, r_i = 1, 2, 4, 1, 2, 4.
  CHECK(encoded_bytes(reports[0].bytes_up, 2 * (1 + 2 + 4) * (12 + 8) * sizeof(double), 6));
  // Client 0's view is the best rank-1 approximation of the server's delta (FlexLoRA).
  const hostd server = delta_of(fed.global().at(theory::module_name));
  const hostd mine = delta_of(fed.client_view(0).at(theory::module_name));
  CHECK((mine - best_rank(server, 1)).norm() < 100 * tol * server.norm());

  adapters end;
  run_strategy(padded_fedavg{}, p, config, &end, 4);  // HetLoRA
  CHECK(global_loss(p, end) < 0.5 * initial);
  for (const auto& r : run_strategy(flora_stack{5}, p, config, &end, 4))
    CHECK(r.relative_aggregation_error < 100 * tol);
  CHECK(global_loss(p, end) < 0.5 * initial);
  for (const auto& r : run_strategy(fedex_residual{}, p, config, &end, 4))
    CHECK(r.relative_aggregation_error < 100 * tol);
  CHECK(global_loss(p, end) < 0.5 * initial);

  const auto msg = message_of<config_error>(
      [&] { federation<eigen_d, train_both, fedavg>(train_both{}, fedavg{}, config, start(4)); });
  CHECK(msg.find("aggregator 'fedavg' does not accept heterogeneous ranks") != std::string::npos);
  config.client_ranks = {1, 2};
  federation<eigen_d, train_both, svd_resplit> wrong(train_both{}, svd_resplit{}, config, start(4));
  CHECK(message_of<config_error>([&] {
          wrong.run_round(p.clients);
        }).find("client_ranks has 2 entries for 6") != std::string::npos);
}
