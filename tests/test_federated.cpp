// policy/, aggregate/ and federated/: which factors train and travel, exactness of the
// aggregation, rejection of bad uploads with the global state untouched, communication
// accounting, reproducibility across threads, callbacks, FedSA's local factors.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

TEST_CASE("policies: which factors train and travel in each round") {
  const alternating rolora_default;
  std::string seq;
  for (std::size_t t = 0; t < 6; ++t) seq += rolora_default.trains(t).label();
  CHECK(seq == "BABABA");  // B first: with B = 0 the gradient of A is zero
  seq.clear();
  for (std::size_t t = 0; t < 8; ++t) seq += alternating::with_period(2).trains(t).label();
  CHECK(seq == "BBAABBAA");
  seq.clear();
  for (std::size_t t = 0; t < 6; ++t) seq += alternating{1, 2}.trains(t).label();
  CHECK(seq == "BAABAA");  // A:B ratio 2:1
  seq.clear();
  for (std::size_t t = 0; t < 10; ++t) seq += alternating::then_freeze_a(0.6, 10).trains(t).label();
  CHECK(seq == "BABABABBBB");  // alternate for 60% of the rounds, then freeze A
  CHECK(rolora_default.shares(1) == only_a);
  CHECK(train_both{}.shares(0) == both_factors);
  CHECK(freeze_a{}.trains(5) == only_b);
  CHECK(freeze_b{}.shares(5) == only_a);
  CHECK(fedsa{}.trains(0) == both_factors);
  CHECK(fedsa{}.shares(0) == only_a);
  CHECK(fedsa{}.keeps_local() == only_b);
  CHECK_THROWS_AS((alternating{0, 1}.trains(0)), config_error);
  CHECK_THROWS_AS(alternating::then_freeze_a(1.5, 10), config_error);
}

namespace {

// Encoded message sizes (federated/wire.hpp): `payload` tensor bytes plus, per message, 8 bytes
// of header length and a JSON header of at most a few hundred bytes.
inline bool encoded_bytes(std::size_t bytes, std::size_t payload, std::size_t messages = 1) {
  return bytes >= payload + 8 * messages && bytes <= payload + 512 * messages;
}

// K clients' adapters for one module "m" [out, in], rank r, differing in the factors `varied`.
template <class Backend>
struct upload_fixture {
  adapter_set<Backend> global;
  std::vector<client_update<Backend>> updates;

  upload_fixture(std::size_t clients, factor_set varied, index_t out = 6, index_t in = 5,
                 index_t r = 2) {
    auto l = make_lora<Backend>("m", out, in, r, 2.0, lora_init::gaussian, 1);
    l.B = test::random_backend_matrix<Backend>(out, r, 100);
    global.insert("m", l);
    for (std::size_t i = 0; i < clients; ++i) {
      auto mine = l;
      const auto tag = std::uint32_t(200 + 2 * i);
      if (varied.a) mine.A = test::random_backend_matrix<Backend>(r, in, tag);
      if (varied.b) mine.B = test::random_backend_matrix<Backend>(out, r, tag + 1);
      adapter_set<Backend> set;
      set.insert("m", mine);
      updates.push_back({i, double(10 * (i + 1)), std::move(set)});
    }
  }
  std::span<const client_update<Backend>> span() const { return updates; }

  // sum_i w_i B_i A_i, formed directly in double.
  Eigen::MatrixXd mean_product(const std::vector<double>& w) const {
    Eigen::MatrixXd sum =
        Eigen::MatrixXd::Zero(global.at("m").out_features(), global.at("m").in_features());
    for (std::size_t i = 0; i < updates.size(); ++i) {
      const auto& a = updates[i].adapters.at("m");
      sum += w[i] * Backend::to_host(a.B).template cast<double>() *
             Backend::to_host(a.A).template cast<double>();
    }
    return sum;
  }
};

template <class Backend>
Eigen::MatrixXd product(const adapter_set<Backend>& s) {
  const auto& a = s.at("m");
  return Backend::to_host(a.B).template cast<double>() *
         Backend::to_host(a.A).template cast<double>();
}

}  // namespace

TEST_CASE_TEMPLATE("fedavg is the weighted mean of exactly the shared factors", Backend,
                   ROLORA_TEST_BACKENDS) {
  upload_fixture<Backend> f(3, both_factors);
  const auto before = f.global;
  auto global = f.global;
  const auto result =
      aggregate(fedavg{}, global, f.span(), only_b, {.client_weighting = weighting::by_samples});
  CHECK(result.weights == std::vector<double>{10.0 / 60, 20.0 / 60, 30.0 / 60});
  Eigen::MatrixXd mean_b = Eigen::MatrixXd::Zero(6, 2);
  for (std::size_t i = 0; i < 3; ++i)
    mean_b += result.weights[i] *
              Backend::to_host(f.updates[i].adapters.at("m").B).template cast<double>();
  CHECK(
      (Backend::to_host(global.at("m").B).template cast<double>() - mean_b).cwiseAbs().maxCoeff() <
      10 * test::rounding_tolerance<Backend>());
  // A was not shared: the server keeps its own, bit for bit.
  CHECK(test::max_abs_diff<Backend>(global.at("m").A, before.at("m").A) == 0.0);
  const auto uniform =
      aggregate(fedavg{}, global, f.span(), only_b, {.client_weighting = weighting::uniform});
  CHECK(uniform.weights == std::vector<double>(3, 1.0 / 3));
}

TEST_CASE_TEMPLATE(
    "exactness: one factor frozen -> mean(B_i) A == mean(B_i A); both trained -> not", Backend,
    ROLORA_TEST_BACKENDS) {
  const double tol = test::rounding_tolerance<Backend>();
  for (factor_set trained : {only_b, only_a}) {  // RoLoRA's B round and A round (FFA: B round)
    upload_fixture<Backend> f(5, trained);
    auto global = f.global;
    const auto result = aggregate(fedavg{}, global, f.span(), trained);
    const Eigen::MatrixXd exact = f.mean_product(result.weights);
    const double rel = (product(global) - exact).norm() / exact.norm();
    CHECK(rel < tol);
    CHECK(result.relative_error < tol);
  }
  upload_fixture<Backend> f(5, both_factors);  // FedIT
  auto global = f.global;
  const auto result = aggregate(fedavg{}, global, f.span(), both_factors);
  const Eigen::MatrixXd exact = f.mean_product(result.weights);
  const double direct = (product(global) - exact).norm();
  CHECK(direct / exact.norm() > 0.1);  // mean(B_i) mean(A_i) is far from mean(B_i A_i)
  // The reported error is that distance in weight units: times the scaling s = 2 of the fixture.
  CHECK(result.error == doctest::Approx(2.0 * direct).epsilon(1e3 * tol));
  CHECK(result.module_error.at("m") == doctest::Approx(2.0 * direct).epsilon(1e3 * tol));
  CHECK(result.relative_error == doctest::Approx(direct / exact.norm()).epsilon(1e3 * tol));
}

TEST_CASE_TEMPLATE("orthonormalize_a: rows of A orthonormal, product B A unchanged", Backend,
                   ROLORA_TEST_BACKENDS) {
  upload_fixture<Backend> f(4, only_a);
  auto plain = f.global, orth = f.global;
  aggregate(fedavg{}, plain, f.span(), only_a);
  const auto result = aggregate(orthonormalize_a<fedavg>{}, orth, f.span(), only_a);
  const Eigen::MatrixXd a = Backend::to_host(orth.at("m").A).template cast<double>();
  const double tol = 10 * test::rounding_tolerance<Backend>();
  CHECK((a * a.transpose() - Eigen::MatrixXd::Identity(2, 2)).cwiseAbs().maxCoeff() < tol);
  CHECK((product(orth) - product(plain)).norm() / product(plain).norm() < tol);
  CHECK(result.relative_error < tol);
}

TEST_CASE_TEMPLATE(
    "bad uploads are refused with module, client, expected and actual; global unchanged", Backend,
    ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  upload_fixture<Backend> f(3, both_factors);
  auto global = f.global;
  const auto before = global;
  auto run = [&](const std::vector<client_update<Backend>>& ups,
                 weighting w = weighting::by_samples) {
    aggregate(fedavg{}, global, std::span<const client_update<Backend>>(ups), both_factors,
              {.client_weighting = w});
  };

  auto ups = f.updates;  // wrong shape of lora_B at client 1
  ups[1].adapters.at("m").B = Backend::zeros(6, 3);
  auto msg = message_of<shape_error>([&] { run(ups); });
  CHECK(msg.find("module 'm' client 1: lora_B expected [6, 2], got [6, 3]") != std::string::npos);
  try {  // the client is a field of the error; no round: aggregate() is outside any federation
    run(ups);
    FAIL("expected a shape_error");
  } catch (const shape_error& e) {
    CHECK(e.client() == std::size_t{1});
    CHECK(!e.round());
    CHECK(e.message() == "module 'm' client 1: lora_B expected [6, 2], got [6, 3]");
  }

  ups = f.updates;  // non-finite value at client 2
  auto bad = Backend::to_host(ups[2].adapters.at("m").A);
  bad(1, 3) = std::numeric_limits<T>::quiet_NaN();
  ups[2].adapters.at("m").A = Backend::from_host(bad);
  msg = message_of<value_error>([&] { run(ups); });
  CHECK(msg.find("module 'm' client 2: lora_A holds non-finite") != std::string::npos);
  bad(1, 3) = std::numeric_limits<T>::infinity();
  ups[2].adapters.at("m").A = Backend::from_host(bad);
  CHECK_THROWS_AS(run(ups), value_error);

  ups = f.updates;  // a module the server does not have, and a missing one
  ups[0].adapters.insert("extra", ups[0].adapters.at("m"));
  msg = message_of<shape_error>([&] { run(ups); });
  CHECK(msg.find("module 'extra' client 0") != std::string::npos);
  ups = f.updates;
  ups[2].adapters = adapter_set<Backend>{};
  ups[2].adapters.insert("other", f.updates[2].adapters.at("m"));
  msg = message_of<shape_error>([&] { run(ups); });
  CHECK(msg.find("client 2") != std::string::npos);

  CHECK(message_of<value_error>([&] { run({}); }).find("no client update") != std::string::npos);

  ups = f.updates;  // weights that sum to zero
  for (auto& u : ups) u.num_samples = 0;
  CHECK(message_of<value_error>([&] { run(ups); }).find("sum to 0") != std::string::npos);
  ups[0].num_samples = -1;
  CHECK_THROWS_AS(run(ups), value_error);
  run(ups, weighting::uniform);  // uniform weighting does not need sample counts
  global = before;

  CHECK(test::bit_equal(global, before));
}

namespace {

using theory::linear_problem_config;

// A small homogeneous linear-regression problem, d = k so that |A| = |B|.
template <class Backend>
theory::linear_problem<Backend> small_problem(std::size_t clients = 6, std::uint64_t seed = 3) {
  linear_problem_config c;
  c.dim = 12;
  c.out_dim = 12;
  c.rank = 2;
  c.clients = clients;
  c.samples = 60;
  c.noise = 0.01;
  c.seed = seed;
  return theory::make_linear_problem<Backend>(c);
}

template <class Backend>
adapter_set<Backend> linear_adapters(index_t d, index_t k, index_t r, std::uint64_t seed = 5) {
  lora_config c;
  c.r = r;
  c.lora_alpha = double(r);
  return adapter_set<Backend>({{theory::module_name, k, d}}, c, seed);
}

template <class Policy, class Backend>
std::vector<round_report> run_policy(Policy policy, theory::linear_problem<Backend>& p,
                                     federation_config config,
                                     adapter_set<Backend>* final_state = nullptr) {
  federation<Backend, Policy, fedavg> fed(policy, fedavg{}, config,
                                          linear_adapters<Backend>(12, 12, 2));
  auto reports = fed.run(p.clients);
  if (final_state) *final_state = fed.global();
  return reports;
}

}  // namespace

TEST_CASE_TEMPLATE("communication: RoLoRA and FFA-LoRA upload half of what FedIT uploads", Backend,
                   ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>();
  federation_config config;
  config.num_rounds = 4;
  config.local_optimizer = sgd{0.1};
  const auto fedit = run_policy(train_both{}, p, config);
  const auto rolora_reports = run_policy(alternating{}, p, config);
  const auto ffa = run_policy(freeze_a{}, p, config);
  const std::size_t factor_bytes = 12 * 2 * sizeof(typename Backend::scalar);  // |A| = |B|
  // Encoded messages: the factors' bytes plus one small header each (federated/wire.hpp).
  CHECK(encoded_bytes(fedit[0].bytes_up_per_client, 2 * factor_bytes));
  CHECK(encoded_bytes(rolora_reports[0].bytes_up_per_client, factor_bytes));
  CHECK(encoded_bytes(rolora_reports[1].bytes_up_per_client, factor_bytes));
  CHECK(encoded_bytes(ffa[3].bytes_up_per_client, factor_bytes));
  // Half of FedIT's adapter bytes: one factor less, and one tensor entry less in the header.
  const std::size_t saved = fedit[0].bytes_up_per_client - rolora_reports[0].bytes_up_per_client;
  CHECK(saved >= factor_bytes);
  CHECK(saved <= factor_bytes + 128);
  CHECK(encoded_bytes(fedit[0].bytes_up, 6 * 2 * factor_bytes, 6));
  CHECK(encoded_bytes(rolora_reports[0].bytes_down_per_client, 2 * factor_bytes));  // both synced
  CHECK(rolora_reports[0].trained == only_b);
  CHECK(rolora_reports[1].shared == only_a);
}

TEST_CASE_TEMPLATE("federated SGD lowers the loss and every run is exact under alternating",
                   Backend, ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>();
  federation_config config;
  config.num_rounds = 40;
  config.local_steps = 3;
  config.local_optimizer = sgd{0.3};
  adapter_set<Backend> final_state;
  const auto reports = run_policy(alternating{}, p, config, &final_state);
  double loss = 0;
  for (std::size_t i = 0; i < p.clients.size(); ++i)
    loss += p.weights[i] * p.clients[i].loss(final_state);
  CHECK(loss < 0.05 * reports.front().train_loss);
  for (const auto& r : reports)
    CHECK(r.relative_aggregation_error < test::rounding_tolerance<Backend>());
  double fedit_worst = 0;
  for (const auto& r : run_policy(train_both{}, p, config))
    fedit_worst = std::max(fedit_worst, r.relative_aggregation_error);
  CHECK(fedit_worst > 1e-3);
}

TEST_CASE_TEMPLATE(
    "same seed, same bits: across runs and thread counts, with sampling, dropout and minibatches",
    Backend, ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>(8);
  federation_config config;
  config.num_rounds = 6;
  config.local_steps = 4;
  config.batch_size = 16;
  config.clients_per_round = 5;
  config.client_dropout = 0.2;
  config.local_optimizer = adamw{0.05};
  config.seed = 77;
  adapter_set<Backend> one, again, threaded, other_seed;
  const auto reports = run_policy(alternating{}, p, config, &one);
  run_policy(alternating{}, p, config, &again);
  config.threads = 3;
  const auto threaded_reports = run_policy(alternating{}, p, config, &threaded);
  config.seed = 78;
  run_policy(alternating{}, p, config, &other_seed);
  CHECK(test::bit_equal(one, again));
  CHECK(test::bit_equal(one, threaded));
  CHECK(!test::bit_equal(one, other_seed));
  for (std::size_t t = 0; t < reports.size(); ++t) {
    CHECK(reports[t].participants == threaded_reports[t].participants);
    CHECK(reports[t].participants.size() + reports[t].dropped.size() == 5);
    CHECK(reports[t].train_loss == threaded_reports[t].train_loss);
  }
}

TEST_CASE_TEMPLATE("a round with every client dropped, or a client that diverges, changes nothing",
                   Backend, ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>(4);
  federation_config config;
  config.local_optimizer = sgd{0.1};
  config.clients_per_round = 1;
  config.client_dropout = 0.999999;
  federation<Backend, alternating, fedavg> fed(alternating{}, fedavg{}, config,
                                               linear_adapters<Backend>(12, 12, 2));
  const auto before = fed.global();
  const auto msg = message_of<value_error>([&] { fed.run_round(p.clients); });
  CHECK(msg.find("round 0: no client update arrived (1 sampled, all dropped out)") !=
        std::string::npos);
  try {
    fed.run_round(p.clients);
    FAIL("expected a value_error");
  } catch (const value_error& e) {
    CHECK(e.round() == std::size_t{0});
    CHECK(!e.client());
    CHECK(e.message() == "no client update arrived (1 sampled, all dropped out)");
  }
  CHECK(test::bit_equal(fed.global(), before));
  CHECK(fed.next_round() == 0);

  config.client_dropout = 0.0;
  config.clients_per_round = 0;
  config.local_optimizer = sgd{1e30};  // diverges to inf/NaN
  config.local_steps = 20;
  federation<Backend, alternating, fedavg> blowup(alternating{}, fedavg{}, config,
                                                  linear_adapters<Backend>(12, 12, 2));
  const auto msg2 = message_of<value_error>([&] { blowup.run_round(p.clients); });
  CHECK(msg2.find("module 'linear' client 0: lora_B holds non-finite") != std::string::npos);
  try {
    blowup.run_round(p.clients);
    FAIL("expected a value_error");
  } catch (const value_error& e) {
    CHECK(e.round() == std::size_t{0});
    CHECK(e.client() == std::size_t{0});
  }
  CHECK(test::bit_equal(blowup.global(), before));

  config.local_steps = 0;
  CHECK_THROWS_AS(
      (federation<Backend, alternating, fedavg>(alternating{}, fedavg{}, config, before)),
      config_error);
}

TEST_CASE_TEMPLATE("callbacks see every round and can stop the run", Backend,
                   ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>(3);
  federation_config config;
  config.num_rounds = 10;
  config.local_optimizer = sgd{0.1};
  federation<Backend, alternating, fedavg> fed(alternating{}, fedavg{}, config,
                                               linear_adapters<Backend>(12, 12, 2));
  struct counter {
    int begun = 0;
    void on_round_begin(std::size_t) { ++begun; }
  } count;
  struct stop_after_three {
    bool on_round_end(const round_report& r, const adapter_set<Backend>&) { return r.round == 2; }
  } stop;
  struct only_end {
    std::vector<std::size_t> rounds;
    void on_round_end(const round_report& r, const adapter_set<Backend>&) {
      rounds.push_back(r.round);
    }
  } log;
  const auto reports = fed.run(p.clients, count, stop, log);
  CHECK(reports.size() == 3);
  CHECK(count.begun == 3);
  CHECK(log.rounds == std::vector<std::size_t>{0, 1, 2});
  fed.run(p.clients);  // resumes where it stopped
  CHECK(fed.next_round() == 10);
}

TEST_CASE_TEMPLATE("FedSA: A is shared, each client keeps its own B", Backend,
                   ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>(3);
  federation_config config;
  config.num_rounds = 3;
  config.local_steps = 2;
  config.local_optimizer = sgd{0.2};
  federation<Backend, fedsa, fedavg> fed(fedsa{}, fedavg{}, config,
                                         linear_adapters<Backend>(12, 12, 2));
  const auto reports = fed.run(p.clients);
  const auto v0 = fed.client_view(0), v1 = fed.client_view(1);
  CHECK(test::max_abs_diff<Backend>(v0.at("linear").A, fed.global().at("linear").A) == 0.0);
  CHECK(test::max_abs_diff<Backend>(v0.at("linear").A, v1.at("linear").A) == 0.0);
  CHECK(test::max_abs_diff<Backend>(v0.at("linear").B, v1.at("linear").B) > 0.0);
  // The server's B never moves: it is never uploaded.
  CHECK(test::max_abs_diff<Backend>(fed.global().at("linear").B,
                                    linear_adapters<Backend>(12, 12, 2).at("linear").B) == 0.0);
  // Clients keep nothing between rounds: B goes up and down with A (the server keeps it).
  CHECK(
      encoded_bytes(reports[0].bytes_up_per_client, 2 * 12 * 2 * sizeof(typename Backend::scalar)));
  CHECK(encoded_bytes(reports[0].bytes_down_per_client,
                      2 * 12 * 2 * sizeof(typename Backend::scalar)));
  CHECK(reports[2].relative_aggregation_error < 1.0);
}

TEST_CASE_TEMPLATE("optimizer state: reset each round by default, kept per client on request",
                   Backend, ROLORA_TEST_BACKENDS) {
  auto p = small_problem<Backend>(3);
  federation_config config;
  config.num_rounds = 3;
  config.local_steps = 2;
  config.local_optimizer = adamw{0.01};
  adapter_set<Backend> reset, kept;
  run_policy(train_both{}, p, config, &reset);
  config.keep_optimizer_state = true;
  run_policy(train_both{}, p, config, &kept);
  CHECK(!test::bit_equal(reset, kept));
  // One round cannot tell the two apart.
  config.num_rounds = 1;
  run_policy(train_both{}, p, config, &kept);
  config.keep_optimizer_state = false;
  run_policy(train_both{}, p, config, &reset);
  CHECK(test::bit_equal(reset, kept));
}

TEST_CASE_TEMPLATE(
    "modules to save: averaged by the server, trained by the optimizer, checked, counted", Backend,
    ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  upload_fixture<Backend> f(3, both_factors);
  f.global.add_module_to_save("head", test::random_backend_matrix<Backend>(3, 2, 90));
  for (std::size_t i = 0; i < f.updates.size(); ++i) {
    f.updates[i].adapters.add_module_to_save(
        "head", test::random_backend_matrix<Backend>(3, 2, 91 + std::uint32_t(i)));
  }
  // Upload and download carry the head whenever any factor travels: 3 x 2 more scalars.
  CHECK(f.global.num_parameters(only_b) == 6 * 2 + 6);  // B [6, 2] + head
  CHECK(f.global.num_parameters(only_a) == 2 * 5 + 6);  // A [2, 5] + head
  CHECK(f.global.num_parameters(both_factors) == 22 + 6);
  CHECK(f.global.num_parameters(no_factors) == 0);

  auto global = f.global;
  const auto before = global;
  const auto result =
      aggregate(fedavg{}, global, f.span(), only_b, {.client_weighting = weighting::by_samples});
  Eigen::MatrixXd mean = Eigen::MatrixXd::Zero(3, 2);
  for (std::size_t i = 0; i < 3; ++i) {
    mean += result.weights[i] * Backend::to_host(f.updates[i].adapters.modules_to_save().at("head"))
                                    .template cast<double>();
  }
  CHECK((Backend::to_host(global.modules_to_save().at("head")).template cast<double>() - mean)
            .cwiseAbs()
            .maxCoeff() < 10 * test::rounding_tolerance<Backend>());

  // A wrong shape, a NaN, a missing or an extra module to save: refused, state unchanged.
  global = before;
  auto ups = f.updates;
  ups[2].adapters.modules_to_save().at("head") = Backend::zeros(2, 3);
  auto run = [&] {
    aggregate(fedavg{}, global, std::span<const client_update<Backend>>(ups), only_b);
  };
  CHECK(message_of<shape_error>(run).find(
            "module 'head' client 2: weight expected [3, 2], got [2, 3]") != std::string::npos);
  ups = f.updates;
  auto bad = Backend::to_host(ups[1].adapters.modules_to_save().at("head"));
  bad(2, 1) = std::numeric_limits<T>::quiet_NaN();
  ups[1].adapters.modules_to_save().at("head") = Backend::from_host(bad);
  CHECK(message_of<value_error>(run).find("module 'head' client 1: weight holds non-finite") !=
        std::string::npos);
  ups = f.updates;
  ups[0].adapters.modules_to_save().erase("head");
  CHECK(message_of<shape_error>(run).find("module to save 'head' client 0: missing") !=
        std::string::npos);
  ups = f.updates;
  ups[1].adapters.add_module_to_save("bias", Backend::zeros(3, 1));
  CHECK(message_of<shape_error>(run).find("module to save 'bias' client 1: not a module") !=
        std::string::npos);
  CHECK(test::bit_equal(global, before));
  CHECK_THROWS_AS(global.add_module_to_save("m", Backend::zeros(1, 1)),
                  config_error);  // a LoRA name

  // The optimizer steps the head with the factors, and asks for its gradient.
  gradient_set<Backend> grads;
  grads["m"] = {Backend::zeros(2, 5), Backend::zeros(6, 2)};
  optimizer_state<Backend> state;
  CHECK(message_of<config_error>([&] {
          state.step(sgd{0.5}, global, grads, only_a);
        }).find("no gradient for module 'head'") != std::string::npos);
  grads.modules_to_save["head"] = Backend::from_host(host_matrix<T>::Constant(3, 2, T(2)));
  const auto head_before = Backend::to_host(global.modules_to_save().at("head"));
  state.step(sgd{0.5}, global, grads, only_a);
  CHECK(
      (Backend::to_host(global.modules_to_save().at("head")) - head_before).cwiseAbs().maxCoeff() ==
      doctest::Approx(1.0));
  grads.modules_to_save["head"] = Backend::zeros(1, 1);
  CHECK(message_of<shape_error>([&] {
          state.step(sgd{0.5}, global, grads, only_a);
        }).find("gradient expected [3, 2], got [1, 1]") != std::string::npos);
}

TEST_CASE("SGD with momentum and weight decay follows torch.optim.SGD") {
  using B = eigen_backend<double>;
  adapter_set<B> params;
  params.insert("m", {B::matrix::Constant(1, 1, 2.0), B::matrix::Constant(1, 1, -1.0), 1.0});
  gradient_set<B> grads;
  grads["m"] = {B::matrix::Constant(1, 1, 0.5), B::matrix::Constant(1, 1, 0.0)};
  optimizer_state<B> state;
  const optimizer opt = sgd{0.1, 0.9, 0.01};
  state.step(opt, params, grads, only_a);
  state.step(opt, params, grads, only_a);
  // By hand: d1 = 0.5 + 0.01 * 2 = 0.52, buf = 0.52, p = 2 - 0.052 = 1.948;
  // d2 = 0.5 + 0.01 * 1.948 = 0.51948, buf = 0.9 * 0.52 + 0.51948 = 0.98748, p = 1.948 - 0.098748.
  CHECK(params.at("m").A(0, 0) == doctest::Approx(1.948 - 0.098748).epsilon(1e-14));
  CHECK(params.at("m").B(0, 0) == -1.0);  // not trained
}

// ---- factorwise: a reducer of one factor's client copies as a whole aggregator ----
TEST_CASE_TEMPLATE("fedavg (factorwise<weighted_mean>) is the weighted mean, bit for bit", Backend,
                   ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  upload_fixture<Backend> f(4, both_factors);
  auto global = f.global;
  const auto result = aggregate(fedavg{}, global, f.span(), both_factors);
  // By hand, on the host, the same operations in the same order: 0, then += T(w_i) X_i.
  for (auto factor : {&lora_adapter<Backend>::A, &lora_adapter<Backend>::B}) {
    host_matrix<T> mean = host_matrix<T>::Zero(Backend::rows(f.global.at("m").*factor),
                                               Backend::cols(f.global.at("m").*factor));
    for (std::size_t i = 0; i < f.updates.size(); ++i) {
      mean += T(result.weights[i]) * Backend::to_host(f.updates[i].adapters.at("m").*factor);
    }
    CHECK(test::max_abs_diff<Backend>(global.at("m").*factor, Backend::from_host(mean)) == 0.0);
  }
  // Only the shared factor moves.
  auto b_only = f.global;
  aggregate(fedavg{}, b_only, f.span(), only_b);
  CHECK(test::max_abs_diff<Backend>(b_only.at("m").A, f.global.at("m").A) == 0.0);
  CHECK(test::max_abs_diff<Backend>(b_only.at("m").B, global.at("m").B) == 0.0);
}

namespace {
// A host reducer: the coordinate-wise maximum (weights ignored).
struct coordinate_max {
  static constexpr std::string_view name = "coordinate_max";
  template <class T>
  host_matrix<T> operator()(std::span<const host_matrix<T>> copies, std::span<const double>) const {
    host_matrix<T> out = copies[0];
    for (const auto& c : copies) out = out.cwiseMax(c);
    return out;
  }
};
}  // namespace

TEST_CASE_TEMPLATE("factorwise turns a host reducer into an aggregator of the shared factors",
                   Backend, ROLORA_TEST_BACKENDS) {
  static_assert(aggregator_for<factorwise<coordinate_max>, Backend>);
  static_assert(factorwise<coordinate_max>::name == "coordinate_max");
  upload_fixture<Backend> f(3, both_factors);
  auto global = f.global;
  aggregate(factorwise<coordinate_max>{}, global, f.span(), only_a);
  auto expected = Backend::to_host(f.updates[0].adapters.at("m").A);
  for (const auto& u : f.updates)
    expected = expected.cwiseMax(Backend::to_host(u.adapters.at("m").A));
  CHECK(test::max_abs_diff<Backend>(global.at("m").A, Backend::from_host(expected)) == 0.0);
  CHECK(test::max_abs_diff<Backend>(global.at("m").B, f.global.at("m").B) == 0.0);  // not shared
}

// ---- The update_policy invariants, checked when a round starts ----
namespace {
template <factor_set Trains, factor_set Shares, factor_set Local, std::size_t From>
struct breaks_at {  // a valid B-only policy until round From, then (Trains, Shares, Local)
  static constexpr std::string_view name = "breaks_at";
  factor_set trains(std::size_t t) const { return t < From ? only_b : Trains; }
  factor_set shares(std::size_t t) const { return t < From ? only_b : Shares; }
  factor_set keeps_local() const { return From == 0 ? Local : no_factors; }
};
}  // namespace

TEST_CASE(
    "a policy that breaks its contract fails when the round starts, naming policy and round") {
  using B = eigen_backend<double>;
  auto p = small_problem<B>(3);
  federation_config config;
  config.num_rounds = 4;
  auto run = [&](auto policy) {
    federation<B, decltype(policy), fedavg> fed(policy, fedavg{}, config,
                                                linear_adapters<B>(12, 12, 2));
    return message_of<config_error>([&] { fed.run(p.clients); });
  };
  CHECK(run(breaks_at<no_factors, no_factors, no_factors, 2>{}) ==
        "[rolora.config_error] round 2: policy 'breaks_at': trains(t) must name at least one "
        "factor, got none");
  CHECK(
      run(breaks_at<only_b, both_factors, no_factors, 3>{}) ==
      "[rolora.config_error] round 3: policy 'breaks_at': shares(t) = AB must be within trains(t) "
      "= B");
  CHECK(
      run(breaks_at<both_factors, only_a, only_a, 0>{}) ==
      "[rolora.config_error] round 0: policy 'breaks_at': keeps_local() = A must be disjoint from "
      "shares(t) = A");
  // The rounds before the broken one ran and committed; the broken one changed nothing.
  federation<B, breaks_at<no_factors, no_factors, no_factors, 2>, fedavg> fed(
      {}, fedavg{}, config, linear_adapters<B>(12, 12, 2));
  fed.run_round(p.clients);
  fed.run_round(p.clients);
  const auto before = fed.global();
  CHECK_THROWS_AS(fed.run_round(p.clients), config_error);
  CHECK(fed.next_round() == 2);
  CHECK(test::bit_equal(before, fed.global()));
  for (std::size_t t = 0; t < 8; ++t) {  // the shipped policies keep theirs
    CHECK_NOTHROW(check_policy_round(alternating{2, 1, 5}, t));
    CHECK_NOTHROW(check_policy_round(fedsa{}, t));
  }
}

// ---- The shipped callbacks (federated/callbacks.hpp) ----
TEST_CASE(
    "early_stopping stops after `patience` rounds without improvement, csv_log writes a row per "
    "round") {
  using B = eigen_backend<double>;
  const adapter_set<B> none;
  early_stopping<> stop;
  stop.patience = 2;
  stop.min_delta = 0.1;
  std::vector<bool> stops;
  for (double loss : {5.0, 4.0, 3.95, 3.99, 2.0, 2.0, 2.0}) {  // 3.95 is not 0.1 below 4.0
    round_report r;
    r.train_loss = loss;
    stops.push_back(stop.on_round_end(r, none));
  }
  CHECK(stops == std::vector<bool>{false, false, false, true, false, false, true});
  CHECK(stop.best == 2.0);

  // A federation stops at the round the callback says, and the CSV holds exactly those rounds.
  auto p = small_problem<B>(3);
  federation_config config;
  config.num_rounds = 50;
  config.local_optimizer = sgd{1e-9};  // (almost) no progress: the loss plateaus at once
  federation<B, freeze_a, fedavg> fed({}, {}, config, linear_adapters<B>(12, 12, 2));
  const auto file = std::filesystem::temp_directory_path() / "rolora_test_csv_log.csv";
  early_stopping<> plateau;
  plateau.patience = 3;
  plateau.min_delta = 1e-3;
  const auto reports = fed.run(p.clients, csv_log(file, "ffa"), plateau);
  CHECK(reports.size() == 4);  // round 1 sets the best, rounds 2-4 do not improve on it
  std::ifstream in(file);
  std::string header, line;
  std::getline(in, header);
  CHECK(header.rfind("label,round,trained,shared,participants,train_loss,", 0) == 0);
  std::vector<std::string> rows;
  while (std::getline(in, line)) rows.push_back(line);
  REQUIRE(rows.size() == 4);
  std::ostringstream expected;
  expected.precision(17);
  expected << "ffa,4,B,B,3," << reports[3].train_loss << ',';
  CHECK(rows[3].rfind(expected.str(), 0) == 0);
  std::filesystem::remove(file);
  CHECK_THROWS_AS(csv_log(std::filesystem::path("/proc/no/such/dir/x.csv")), rolora::error);
}

TEST_CASE("errors carry their round and client as fields; what() shows the round after the id") {
  try {
    raise<value_error>({.round = 3, .client = 5}, "client ", 5, ": sample count ", -1);
    FAIL("expected a value_error");
  } catch (const value_error& e) {
    CHECK(std::string(e.what()) == "[rolora.value_error] round 3: client 5: sample count -1");
    CHECK(e.message() == "client 5: sample count -1");
    CHECK(e.round() == std::size_t{3});
    CHECK(e.client() == std::size_t{5});
  }
  shape_error e(shape_error::id, "module 'm' client 2: lora_A expected [2, 4], got [3, 4]",
                {.client = 2});
  CHECK(std::string(e.what()) ==
        "[rolora.shape_error] module 'm' client 2: lora_A expected [2, 4], got [3, 4]");
  CHECK(!e.round());
  e.set_round(12);  // as the error leaves round 12
  CHECK(std::string(e.what()) ==
        "[rolora.shape_error] round 12: module 'm' client 2: lora_A expected [2, 4], got [3, 4]");
  CHECK(e.message() == "module 'm' client 2: lora_A expected [2, 4], got [3, 4]");
  CHECK(e.round() == std::size_t{12});
  e.set_round(13);  // a round is named once: the innermost one
  e.set_client(7);
  CHECK(e.round() == std::size_t{12});
  CHECK(e.client() == std::size_t{2});
  CHECK(std::string(e.what()).find("round 12: module") != std::string::npos);
  const shape_error copy = e;  // copies keep the fields
  CHECK(copy.round() == std::size_t{12});
  CHECK(copy.client() == std::size_t{2});
  CHECK(copy.message() == e.message());
  value_error plain("no tag");  // constructed from its text: no id, no context
  CHECK(plain.message() == "no tag");
  plain.set_round(1);
  CHECK(std::string(plain.what()) == "round 1: no tag");
  CHECK(plain.message() == "no tag");
  CHECK_THROWS_WITH_AS(raise<config_error>("r must be >= 1, got ", 0),
                       "[rolora.config_error] r must be >= 1, got 0", config_error);
}
