// Sample-level DP-SGD (privacy/dp_sgd.hpp): the tasks' exact per-example clipping against a naive
// loop over single examples, and DP-SGD inside train_locally (noise, Poisson batches,
// reproducibility, the per-client accountant, the budget, the checkpoint).
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/federated/federation.hpp>
#include <rolora/nn/classification_task.hpp>
#include <rolora/nn/transformer.hpp>
#include <rolora/theory/linear_regression.hpp>

#include "test_support.hpp"

using namespace rolora;

namespace {

using DB = eigen_backend<double>;
using mat = Eigen::MatrixXd;

// Every trained coordinate of `g` (trained factors of every adapter, then the modules to save),
// flattened in one vector: what the clip's norm is over.
Eigen::VectorXd flatten(const adapter_set<DB>& adapters, const gradient_set<DB>& g,
                        factor_set trains) {
  std::vector<double> v;
  const auto put = [&](const mat& m) { v.insert(v.end(), m.data(), m.data() + m.size()); };
  for (const auto& [name, l] : adapters) {
    if (trains.a) put(g.adapters.at(name).dA);
    if (trains.b) put(g.adapters.at(name).dB);
  }
  if (trains.any()) {
    for (const auto& [name, m] : adapters.modules_to_save()) put(g.modules_to_save.at(name));
  }
  return Eigen::Map<Eigen::VectorXd>(v.data(), Eigen::Index(v.size()));
}

struct naive_result {
  Eigen::VectorXd sum;
  std::size_t clipped = 0;
  double loss_sum = 0.0;
  double smallest = INFINITY, largest = 0.0;  // per-example gradient norms
};

// Abadi et al.'s clip, literally: each example alone through loss_and_grad, clipped, summed.
template <class Task>
naive_result naive_clipped_sum(Task& task, const adapter_set<DB>& adapters,
                               const std::vector<std::size_t>& batch, factor_set trains,
                               double clip) {
  naive_result r;
  for (const std::size_t i : batch) {
    gradient_set<DB> g;
    const std::vector<std::size_t> one{i};
    r.loss_sum += task.loss_and_grad(adapters, one, trains, g);
    const Eigen::VectorXd gi = flatten(adapters, g, trains);
    const double norm = gi.norm();
    r.smallest = std::min(r.smallest, norm);
    r.largest = std::max(r.largest, norm);
    const double c = norm > clip ? clip / norm : 1.0;
    r.clipped += norm > clip ? 1 : 0;
    if (r.sum.size() == 0) r.sum = Eigen::VectorXd::Zero(gi.size());
    r.sum += c * gi;
  }
  return r;
}

double relative(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  REQUIRE(a.size() == b.size());
  return (a - b).cwiseAbs().maxCoeff() / std::max(b.cwiseAbs().maxCoeff(), 1e-300);
}

// The tiny transformer of test_nn.cpp's kind: O(1) random weights, so every op matters.
transformer_config tiny_config() {
  transformer_config c;
  c.vocab_size = 11;
  c.max_len = 6;
  c.d_model = 6;
  c.n_heads = 2;
  c.n_layers = 2;
  c.d_ff = 8;
  c.num_classes = 3;
  c.pool = pooling::mean;
  c.pad_id = 0;
  return c;
}
transformer_weights<DB> tiny_weights(const transformer_config& c) {
  transformer_weights<DB> w(c, 7);
  for (std::size_t p = 0; p < w.size(); ++p) {
    mat h = test::random_matrix<double>(w.rows(p), w.cols(p), 100 + std::uint32_t(p), 0.4);
    if (w.name(p).find("ln") != std::string::npos && w.name(p).ends_with(".weight"))
      h.array() += 1.0;
    w.assign(w.name(p), h);
  }
  return w;
}
// n sequences of 5 tokens, some ending in PAD, labels in [0, 3).
labelled_sequences tiny_data(std::size_t n) {
  labelled_sequences d;
  d.tokens.seq_len = 5;
  const random_stream rs(3, stream::data, 9, 0);
  for (std::size_t s = 0; s < n; ++s) {
    const std::size_t pads = s % 3;
    for (std::size_t j = 0; j < 5; ++j) {
      const auto id = std::int32_t(1 + rs.below(s * 5 + j, 10));
      d.tokens.ids.push_back(j + pads >= 5 ? 0 : id);
    }
    d.labels.push_back(std::int32_t(rs.below(1000 + s, 3)));
  }
  return d;
}
adapter_set<DB> tiny_adapters(const transformer_config& c, bool head) {
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 3;
  adapter_set<DB> a(lora_target_modules(c, {"all-linear"}), lc, 5);
  std::uint32_t tag = 300;
  for (auto& [name, l] : a)
    l.B = test::random_matrix<double>(l.out_features(), l.rank(), tag++, 0.5);
  if (head) {
    a.add_module_to_save("classifier.weight", test::random_matrix<double>(3, 6, 40, 0.5));
    a.add_module_to_save("classifier.bias", test::random_matrix<double>(3, 1, 41, 0.5));
  }
  return a;
}

theory::linear_problem<DB> small_linear(std::size_t clients = 1, std::size_t samples = 30) {
  theory::linear_problem_config c;
  c.dim = 6;
  c.out_dim = 4;
  c.rank = 2;
  c.clients = clients;
  c.samples = samples;
  c.noise = 0.1;
  c.seed = 4;
  return theory::make_linear_problem<DB>(c);
}
adapter_set<DB> linear_adapters() {
  adapter_set<DB> set;
  set.insert(theory::module_name,
             {test::random_matrix<double>(2, 6, 3), test::random_matrix<double>(4, 2, 4), 1.5});
  return set;
}

}  // namespace

static_assert(per_example_clip_task<theory::linear_regression_task<DB>, DB>);
static_assert(per_example_clip_task<classification_task<DB>, DB>);

TEST_CASE("per-example clipping of the linear task equals the naive loop over single examples") {
  auto p = small_linear();
  auto& task = p.clients[0];
  const auto adapters = linear_adapters();
  const std::vector<std::size_t> batch{0, 3, 7, 8, 20, 21, 29};
  for (const factor_set trains : {both_factors, only_a, only_b}) {
    CAPTURE(trains.label());
    const auto probe = naive_clipped_sum(task, adapters, batch, trains, 1e300);
    REQUIRE(probe.largest > 1.5 * probe.smallest);  // the norms differ: the clip matters
    // C below every norm (all clipped), between them, above every norm (none clipped).
    for (const double clip :
         {0.5 * probe.smallest, std::sqrt(probe.smallest * probe.largest), 2.0 * probe.largest}) {
      CAPTURE(clip);
      const auto naive = naive_clipped_sum(task, adapters, batch, trains, clip);
      gradient_set<DB> g;
      const clipped_sum got = task.clipped_grad_sum(adapters, batch, trains, clip, g);
      CHECK(got.clipped == naive.clipped);
      CHECK(got.loss_sum == doctest::Approx(naive.loss_sum).epsilon(1e-12));
      CHECK(relative(flatten(adapters, g, trains), naive.sum) < 1e-10);
    }
  }
  // All clipped, none clipped: both extremes occurred above.
  const auto probe = naive_clipped_sum(task, adapters, batch, both_factors, 1e300);
  CHECK(naive_clipped_sum(task, adapters, batch, both_factors, 0.5 * probe.smallest).clipped ==
        batch.size());
  CHECK(naive_clipped_sum(task, adapters, batch, both_factors, 2 * probe.largest).clipped == 0);
}

TEST_CASE("per-example clipping of the transformer equals the naive loop, by both norm methods") {
  const auto c = tiny_config();
  const auto w = tiny_weights(c);
  classification_task<DB> task(w, tiny_data(7));
  const std::vector<std::size_t> batch{6, 0, 2, 3, 5, 1};
  for (const bool head : {true, false}) {
    const auto adapters = tiny_adapters(c, head);
    for (const factor_set trains : {both_factors, only_a, only_b}) {
      CAPTURE(head);
      CAPTURE(trains.label());
      const auto probe = naive_clipped_sum(task, adapters, batch, trains, 1e300);
      REQUIRE(probe.largest > 1.2 * probe.smallest);
      for (const double clip :
           {0.5 * probe.smallest, std::sqrt(probe.smallest * probe.largest), 2.0 * probe.largest}) {
        const auto naive = naive_clipped_sum(task, adapters, batch, trains, clip);
        for (const auto method :
             {privacy::per_example_norm::direct, privacy::per_example_norm::gram,
              privacy::per_example_norm::automatic}) {
          CAPTURE(clip);
          CAPTURE(int(method));
          gradient_set<DB> g;
          const clipped_sum got = task.clipped_grad_sum(adapters, batch, trains, clip, g, method);
          CHECK(got.clipped == naive.clipped);
          CHECK(got.loss_sum == doctest::Approx(naive.loss_sum).epsilon(1e-12));
          CHECK(relative(flatten(adapters, g, trains), naive.sum) < 1e-10);
        }
      }
    }
  }
}

TEST_CASE("per-example clipping: the cost rule, an empty batch, and refused input") {
  using privacy::per_example_norm;
  // direct iff p q <= T (p + q): a rank-8 factor of a 768-wide linear over 128 tokens is direct,
  // over 4 tokens by Grams.
  CHECK(privacy::use_direct_norm(per_example_norm::automatic, 768, 8, 128));
  CHECK(!privacy::use_direct_norm(per_example_norm::automatic, 768, 8, 4));
  CHECK(!privacy::use_direct_norm(per_example_norm::gram, 768, 8, 128));

  const auto c = tiny_config();
  const auto w = tiny_weights(c);
  classification_task<DB> task(w, tiny_data(4));
  const auto adapters = tiny_adapters(c, true);
  gradient_set<DB> g;
  const clipped_sum empty = task.clipped_grad_sum(adapters, {}, both_factors, 1.0, g);
  CHECK(empty.loss_sum == 0.0);
  CHECK(empty.clipped == 0);
  CHECK(flatten(adapters, g, both_factors).size() > 0);
  CHECK(flatten(adapters, g, both_factors).cwiseAbs().maxCoeff() == 0.0);

  const std::vector<std::size_t> batch{0, 1};
  CHECK_THROWS_WITH_AS(task.clipped_grad_sum(adapters, batch, both_factors, 0.0, g),
                       doctest::Contains("clip norm must be finite and > 0, got 0"), config_error);
  auto other = adapters;
  other.add_module_to_save("final_ln.weight", w.at("final_ln.weight"));
  CHECK_THROWS_WITH_AS(task.clipped_grad_sum(other, batch, both_factors, 1.0, g),
                       doctest::Contains("module to save 'final_ln.weight' has no per-example"),
                       config_error);
}

// ---------------------------------------------------------------------------------------------
// DP-SGD inside train_locally, accounted by the server.
// ---------------------------------------------------------------------------------------------

namespace {

// Clients with 40, 30, 20, 40, ... samples: q_c = B / n_c differs between clients.
theory::linear_problem<DB> sgd_problem(std::size_t clients) {
  auto p = small_linear(clients, 40);
  for (std::size_t i = 0; i < p.clients.size(); ++i) {
    const auto n = 40 - 10 * index_t(i % 3);
    auto& t = p.clients[i];
    const mat x = t.inputs(), y = t.targets();
    t = theory::linear_regression_task<DB>(x.leftCols(n), y.leftCols(n));
  }
  return p;
}

adapter_set<DB> sgd_start() {
  lora_config c;
  c.r = 2;
  c.lora_alpha = 2;
  auto a = adapter_set<DB>({{theory::module_name, 4, 6}}, c, 5);
  a.at(theory::module_name).B = test::random_matrix<double>(4, 2, 8, 0.3);
  return a;
}

federation_config sgd_config(std::size_t rounds, privacy::sample_dp dp) {
  federation_config c;
  c.num_rounds = rounds;
  c.local_steps = 3;
  c.batch_size = 5;
  c.local_optimizer = sgd{0.05, 0.0, 0.0};
  c.seed = 17;
  c.sample_dp = dp;
  return c;
}

using fedit = federation<DB, train_both, fedavg>;

std::vector<round_report> run_with(const federation_config& c, theory::linear_problem<DB>& p,
                                   adapter_set<DB>* out = nullptr) {
  fedit f(train_both{}, fedavg{}, c, sgd_start());
  auto reports = f.run(p.clients);
  if (out) *out = f.global();
  return reports;
}

}  // namespace

TEST_CASE("DP-SGD: the same bits for 1 and 2 threads, other bits for another seed") {
  auto p = sgd_problem(4);
  const privacy::sample_dp dp{.clip_norm = 0.5, .noise_multiplier = 1.1};
  for (const auto sampling : {privacy::batch_sampling::poisson, privacy::batch_sampling::fixed}) {
    CAPTURE(int(sampling));
    auto d = dp;
    d.sampling = sampling;
    auto one = sgd_config(3, d), two = one, other = one;
    two.threads = 2;
    other.seed = 18;
    adapter_set<DB> g1, g2, g3;
    const auto r1 = run_with(one, p, &g1);
    const auto r2 = run_with(two, p, &g2);
    run_with(other, p, &g3);
    CHECK(test::bit_equal(g1, g2));
    CHECK_FALSE(test::bit_equal(g1, g3));
    for (std::size_t i = 0; i < r1.size(); ++i) {
      CHECK(r1[i].train_loss == r2[i].train_loss);
      CHECK(*r1[i].epsilon == *r2[i].epsilon);
    }
    // Without noise and with C above every gradient, DP-SGD with fixed batches is plain SGD.
    if (sampling == privacy::batch_sampling::fixed) {
      auto plain = one, loose = one;
      plain.sample_dp.reset();
      loose.sample_dp->noise_multiplier = 0.0;
      loose.sample_dp->clip_norm = 1e6;
      adapter_set<DB> gp, gl;
      run_with(plain, p, &gp);
      run_with(loose, p, &gl);
      const auto& a = gp.at(theory::module_name);
      const auto& b = gl.at(theory::module_name);
      CHECK((a.A - b.A).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((a.B - b.B).cwiseAbs().maxCoeff() < 1e-12);
      CHECK((a.B - sgd_start().at(theory::module_name).B).cwiseAbs().maxCoeff() > 1e-3);
    }
  }
}

TEST_CASE("DP-SGD: epsilon is the accountant's for each client's (q_c, z, steps), the largest") {
  auto p = sgd_problem(3);  // 40, 30, 20 samples: q = 5/40, 5/30, 5/20
  const privacy::sample_dp dp{.clip_norm = 0.5, .noise_multiplier = 1.3, .delta = 1e-5};
  const auto c = sgd_config(4, dp);
  fedit f(train_both{}, fedavg{}, c, sgd_start());
  const auto orders = privacy::default_orders();
  std::vector<round_report> reports;
  for (std::size_t t = 0; t < c.num_rounds; ++t) {
    reports.push_back(f.run_round(p.clients));
    const std::size_t steps = (t + 1) * c.local_steps;
    for (std::size_t k = 0; k < 3; ++k) CHECK(f.server().clients().at(k).dp_sgd_steps == steps);
    double most = 0.0;
    for (std::size_t k = 0; k < 3; ++k) {
      const double q = 5.0 / double(40 - 10 * k);
      const double e = privacy::epsilon_from_rdp(
                           orders, privacy::subsampled_gaussian_rdp(q, 1.3, steps, orders), 1e-5)
                           .epsilon;
      CHECK(f.server().sample_dp_epsilon(k) == doctest::Approx(e).epsilon(1e-12));
      most = std::max(most, e);
    }
    CHECK(*reports[t].epsilon == doctest::Approx(most).epsilon(1e-12));
    CHECK(*reports[t].clip_norm == 0.5);
  }
  // The smallest client (q = 1/4) spends the most; and a noise multiplier from the accountant
  // for a target meets it.
  CHECK(f.server().sample_dp_epsilon(2) > f.server().sample_dp_epsilon(0));
  const double z = privacy::noise_multiplier_for(2.0, 1e-5, 0.25, 12);
  const double e = privacy::step_accountant(z).epsilon(0.25, 12, 1e-5).epsilon;
  CHECK(e <= 2.0 * (1 + 1e-9));
  CHECK(e > 1.9);
}

TEST_CASE("DP-SGD: an empty Poisson batch moves the factors by the noise only") {
  auto p = sgd_problem(1);
  auto& task = p.clients[0];  // 40 samples, B = 1: q = 1/40, a batch is empty 36% of the time
  privacy::sample_dp dp{.clip_norm = 0.7, .noise_multiplier = 0.9};
  auto c = sgd_config(1, dp);
  c.batch_size = 1;
  c.local_steps = 1;
  std::uint64_t seed = 0;
  while (!privacy::poisson_batch(seed, 0, 0, 0, 40, 1.0 / 40).empty()) ++seed;
  c.seed = seed;
  const auto start = sgd_start();
  client_download<DB> d{0, 0, both_factors, start, {}};
  const auto up = train_locally(task, d, c);
  CHECK(up.loss == 0.0);
  const auto noise = privacy::step_noise_stream(seed, 0, 0);
  const auto& a0 = start.at(theory::module_name);
  const auto& a1 = up.adapters.at(theory::module_name);
  std::uint64_t k = 0;  // A then B, column-major; denominator B = 1
  for (const auto* pair : {&a0.A, &a0.B}) {
    const mat& before = *pair;
    const mat& after = pair == &a0.A ? a1.A : a1.B;
    for (index_t i = 0; i < before.size(); ++i) {
      const double g = 0.7 * 0.9 * noise.normal(k++);
      CHECK(after.data()[i] == doctest::Approx(before.data()[i] - 0.05 * g).epsilon(1e-14));
    }
  }
  // Without noise an empty batch changes nothing.
  c.sample_dp->noise_multiplier = 0.0;
  const auto still = train_locally(task, client_download<DB>{0, 0, both_factors, start, {}}, c);
  CHECK(test::bit_equal(still.adapters, start));
}

TEST_CASE(
    "DP-SGD: the budget refuses the round that would exceed it, and a resume spends the same") {
  auto p = sgd_problem(3);
  privacy::sample_dp dp{.clip_norm = 0.5, .noise_multiplier = 1.0};
  // The largest q is 1/4: find the round r whose steps first exceed a target set between rounds.
  const privacy::step_accountant acc(1.0);
  const double after3 = acc.epsilon(0.25, 9, 1e-5).epsilon,
               after4 = acc.epsilon(0.25, 12, 1e-5).epsilon;
  dp.target_epsilon = 0.5 * (after3 + after4);
  auto c = sgd_config(10, dp);
  fedit f(train_both{}, fedavg{}, c, sgd_start());
  try {
    f.run(p.clients);
    FAIL("no privacy_budget_exceeded");
  } catch (const privacy_budget_exceeded& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.round() == 3);
    CHECK(m.find("client 2 spent epsilon") != std::string::npos);
    CHECK(m.find("of the target epsilon") != std::string::npos);
  }
  CHECK(f.next_round() == 3);  // rounds 0-2 ran, round 3 did not start

  // Checkpoint after 2 rounds, resume: the same epsilons and bits as 4 rounds in one go.
  dp.target_epsilon.reset();
  const auto c4 = sgd_config(4, dp);
  fedit straight(train_both{}, fedavg{}, c4, sgd_start());
  const auto all = straight.run(p.clients);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("rolora_dpsgd_resume_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  fedit first(train_both{}, fedavg{}, c4, sgd_start());
  for (int t = 0; t < 2; ++t) first.run_round(p.clients);
  save_checkpoint(dir, first.server());
  fedit resumed(train_both{}, fedavg{}, c4, sgd_start());
  load_checkpoint(dir, resumed.server());
  CHECK(resumed.server().clients().at(2).dp_sgd_steps == 6);
  const auto rest = resumed.run(p.clients);
  REQUIRE(rest.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) CHECK(*rest[i].epsilon == *all[2 + i].epsilon);
  CHECK(test::bit_equal(resumed.global(), straight.global()));
  // Other DP parameters are another run: refused.
  auto other = c4;
  other.sample_dp->noise_multiplier = 1.5;
  fedit wrong(train_both{}, fedavg{}, other, sgd_start());
  CHECK_THROWS_AS(load_checkpoint(dir, wrong.server()), config_error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("DP-SGD: refused settings name what is wrong") {
  privacy::sample_dp dp{.clip_norm = 0.5, .noise_multiplier = 1.0};
  auto c = sgd_config(1, dp);
  c.closed_form_b = true;
  CHECK_THROWS_WITH_AS(fedit(train_both{}, fedavg{}, c, sgd_start()),
                       doctest::Contains("closed_form_b"), config_error);
  c = sgd_config(1, dp);
  c.sample_dp->delta = 1.0;
  CHECK_THROWS_WITH_AS(fedit(train_both{}, fedavg{}, c, sgd_start()),
                       doctest::Contains("delta must be in (0, 1), got 1"), config_error);
  c = sgd_config(1, dp);
  c.client_weighting = weighting::uniform;
  CHECK_THROWS_WITH_AS((federation<DB, train_both, fedavg, privacy::client_dp>(
                           train_both{}, fedavg{}, c, sgd_start(), privacy::client_dp{})),
                       doctest::Contains("client-level and sample-level DP together"),
                       config_error);
  // A task without per-example clipping cannot run DP-SGD: said before any step.
  struct mean_only_task {
    theory::linear_regression_task<DB> inner;
    std::size_t num_samples() const { return inner.num_samples(); }
    double loss(const adapter_set<DB>& a) const { return inner.loss(a); }
    double loss_and_grad(const adapter_set<DB>& a, std::span<const std::size_t> b, factor_set t,
                         gradient_set<DB>& g) const {
      return inner.loss_and_grad(a, b, t, g);
    }
  };
  static_assert(client_task<mean_only_task, DB> && !per_example_clip_task<mean_only_task, DB>);
  auto q = sgd_problem(1);
  mean_only_task plain{q.clients[0]};
  CHECK_THROWS_WITH_AS(
      train_locally(plain, client_download<DB>{0, 0, both_factors, sgd_start(), {}},
                    sgd_config(1, dp)),
      doctest::Contains("does not model rolora::per_example_clip_task"), config_error);
  c = sgd_config(1, dp);
  c.batch_size = 50;  // above the client's 40 samples
  auto p = sgd_problem(1);
  fedit f(train_both{}, fedavg{}, c, sgd_start());
  CHECK_THROWS_WITH_AS(f.run(p.clients),
                       doctest::Contains("batch size 50 is above the client's 40"), config_error);
}
