// Sample-level DP-SGD (privacy/dp_sgd.hpp): the tasks' exact per-example clipping against a naive
// loop over single examples, and DP-SGD inside train_locally (noise, Poisson batches,
// reproducibility, the per-client accountant, the budget, the checkpoint).
#include <cmath>
#include <numeric>
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
  for (auto& [name, l] : a) l.B = test::random_matrix<double>(l.out_features(), l.rank(), tag++, 0.5);
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
  set.insert(theory::module_name, {test::random_matrix<double>(2, 6, 3),
                                   test::random_matrix<double>(4, 2, 4), 1.5});
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
    for (const double clip : {0.5 * probe.smallest, std::sqrt(probe.smallest * probe.largest),
                              2.0 * probe.largest}) {
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
      for (const double clip : {0.5 * probe.smallest, std::sqrt(probe.smallest * probe.largest),
                                2.0 * probe.largest}) {
        const auto naive = naive_clipped_sum(task, adapters, batch, trains, clip);
        for (const auto method : {privacy::per_example_norm::direct, privacy::per_example_norm::gram,
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
