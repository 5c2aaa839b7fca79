// nn/mlp.hpp: the LoRA MLP's gradients against finite differences, full training through the
// adapter set's modules to save, and its client task in a federation.
#include <rolora/nn/mlp.hpp>
#include <rolora/rolora.hpp>

#include "test_support.hpp"

using namespace rolora;

namespace {

using mlp_backend = eigen_backend<double>;

labelled_features<double> toy_data(index_t in, std::size_t n, int classes, std::uint32_t tag) {
  labelled_features<double> d{test::random_matrix<double>(in, index_t(n), tag), {}};
  for (std::size_t i = 0; i < n; ++i) d.labels.push_back(std::int32_t(i % std::size_t(classes)));
  for (std::size_t i = 0; i < n; ++i) d.x(d.labels[i], index_t(i)) += 2.0;  // learnable
  return d;
}

// Central finite difference of the task's loss on `batch` along entry (i, j) of `m`.
double numeric(mlp_task<mlp_backend>& task, adapter_set<mlp_backend>& a, mlp_backend::matrix& m,
               index_t i, index_t j, std::span<const std::size_t> batch) {
  const double h = 1e-6, keep = m(i, j);
  gradient_set<mlp_backend> none;
  m(i, j) = keep + h;
  const double up = task.loss_and_grad(a, batch, no_factors, none);
  m(i, j) = keep - h;
  const double down = task.loss_and_grad(a, batch, no_factors, none);
  m(i, j) = keep;
  return (up - down) / (2 * h);
}

}  // namespace

TEST_CASE("mlp: LoRA and module-to-save gradients match finite differences") {
  const mlp_weights<mlp_backend> model({6, 5, 4, 3}, 7);
  CHECK(model.layers() == std::vector<std::string>{"fc1", "fc2", "head"});
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 4;
  adapter_set<mlp_backend> a(model.lora_targets({"fc1", "fc2"}), lc, 3);
  for (auto& [name, l] : a)
    l.B = test::random_matrix<double>(l.B.rows(), l.B.cols(), 9);  // B = 0 would hide dA
  a.add_module_to_save("head.weight", model.at("head.weight"));
  a.add_module_to_save("head.bias", model.at("head.bias"));
  mlp_task<mlp_backend> task(model, toy_data(6, 10, 3, 5));
  const std::vector<std::size_t> batch{0, 3, 4, 7, 9};
  gradient_set<mlp_backend> g;
  const double loss = task.loss_and_grad(a, batch, factor_set{true, true}, g);
  CHECK(loss > 0);
  double worst = 0;
  for (const std::string layer : {"fc1", "fc2"}) {
    auto& l = a.at(layer);
    for (index_t i = 0; i < l.A.rows(); ++i)
      for (index_t j = 0; j < l.A.cols(); ++j)
        worst = std::max(worst, std::abs(g[layer].dA(i, j) - numeric(task, a, l.A, i, j, batch)));
    for (index_t i = 0; i < l.B.rows(); ++i)
      for (index_t j = 0; j < l.B.cols(); ++j)
        worst = std::max(worst, std::abs(g[layer].dB(i, j) - numeric(task, a, l.B, i, j, batch)));
  }
  for (const std::string name : {"head.weight", "head.bias"}) {
    auto& w = a.modules_to_save()[name];
    for (index_t i = 0; i < w.rows(); ++i)
      for (index_t j = 0; j < w.cols(); ++j)
        worst = std::max(
            worst, std::abs(g.modules_to_save[name](i, j) - numeric(task, a, w, i, j, batch)));
  }
  CHECK(worst < 1e-7);

  // Only B trains: no dA is asked for, none is computed.
  gradient_set<mlp_backend> gb;
  task.loss_and_grad(a, batch, factor_set{false, true}, gb);
  CHECK(gb["fc1"].dA.size() == 0);
  CHECK(gb["fc1"].dB.isApprox(g["fc1"].dB));

  CHECK_THROWS_AS(mlp_task<mlp_backend>(model, toy_data(5, 4, 3, 1)), shape_error);
  adapter_set<mlp_backend> wrong;
  wrong.insert("fc9", make_lora<mlp_backend>("fc9", 5, 6, 1, 1.0, lora_init::gaussian, 0, 0));
  CHECK_THROWS_AS(task.loss(wrong), config_error);
}

TEST_CASE(
    "mlp: full training through modules to save lowers the loss; evaluation is "
    "thread-independent") {
  mlp_weights<mlp_backend> model({8, 16, 4}, 1);
  const auto data = toy_data(8, 64, 4, 2);
  mlp_task<mlp_backend> task(model, data);
  auto params = model.all_trainable();
  CHECK(params.modules_to_save().size() == 4);
  const double before = task.loss(params);
  optimizer_state<mlp_backend> opt;
  std::vector<std::size_t> all(64);
  for (std::size_t i = 0; i < 64; ++i) all[i] = i;
  for (int step = 0; step < 100; ++step) {
    gradient_set<mlp_backend> g;
    task.loss_and_grad(params, all, factor_set{true, true}, g);
    opt.step(adamw{1e-2, 0.9, 0.999, 1e-8, 0.0}, params, g, factor_set{true, true});
  }
  const double after = task.loss(params);
  CHECK(after < 0.2 * before);
  model.assign(params);
  const adapter_set<mlp_backend> none;
  const auto [loss1, acc1] = evaluate_mlp(model, none, data, 1, 16);
  const auto [loss2, acc2] = evaluate_mlp(model, none, data, 3, 16);
  CHECK(loss1 == doctest::Approx(after).epsilon(1e-12));
  CHECK(loss1 == loss2);
  CHECK(acc1 == acc2);
  CHECK(acc1 > 0.9);
}

TEST_CASE(
    "federation: the head alone (modules to save, no adapters) trains; nothing at all is refused") {
  // The head-only control of apps/federated_finetune (--methods head): a federated linear
  // probe. Two clients, FedAvg of the head; the hidden layer stays as it was.
  const mlp_weights<mlp_backend> model({8, 16, 4}, 1);
  std::vector<mlp_task<mlp_backend>> clients;
  clients.emplace_back(model, toy_data(8, 32, 4, 2));
  clients.emplace_back(model, toy_data(8, 32, 4, 3));
  adapter_set<mlp_backend> head;
  head.add_module_to_save("head.weight", model.at("head.weight"));
  head.add_module_to_save("head.bias", model.at("head.bias"));
  federation_config config;
  config.num_rounds = 5;
  config.local_steps = 4;
  config.batch_size = 8;
  config.local_optimizer = adamw{1e-2, 0.9, 0.999, 1e-8, 0.0};
  federation<mlp_backend, train_both, fedavg> fed(train_both{}, fedavg{}, config, head);
  const double before = clients[0].loss(head) + clients[1].loss(head);
  const auto reports = fed.run(clients);
  REQUIRE(reports.size() == 5);
  for (const auto& r : reports) CHECK(r.aggregation_error == 0.0);  // no adapters to misaverage
  CHECK(fed.global().empty());
  CHECK(!fed.global().modules_to_save().at("head.weight").isApprox(model.at("head.weight")));
  CHECK(clients[0].loss(fed.global()) + clients[1].loss(fed.global()) < 0.9 * before);
  // The encoded upload (federated/message.hpp): the head's 4 x 16 + 4 doubles and a safetensors
  // header (tensor names, shapes, offsets, the round's metadata) of a few hundred bytes.
  const std::size_t payload = (4 * 16 + 4) * sizeof(double);
  CHECK(reports.back().bytes_up_per_client > payload);
  CHECK(reports.back().bytes_up_per_client < payload + 512);

  const adapter_set<mlp_backend> nothing;
  CHECK_THROWS_AS(
      (federation<mlp_backend, train_both, fedavg>(train_both{}, fedavg{}, config, nothing)),
      config_error);
}
