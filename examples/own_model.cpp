// own_model: your own model as a rolora::client_task. A softmax classifier written here with
// Eigen, logits = (W0 + s B A) x over a frozen base W0 = 0, trains its LoRA factors across six
// clients with RoLoRA (alternating B and A rounds). Fails unless the federated model ends above
// 90% accuracy on every client's data.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <rolora/rolora.hpp>
#include <span>
#include <vector>

using backend = rolora::eigen_backend<double>;

// BEGIN excerpt (docs/examples.md)
// One client: n samples x [d, n] of 3 classes y; the federation sees only this interface.
struct softmax_client {
  Eigen::MatrixXd x;  // [d, n], one sample per column
  std::vector<int> y;
  std::vector<std::size_t> all;  // 0 .. n-1

  std::size_t num_samples() const { return y.size(); }
  double loss(const rolora::adapter_set<backend>& a) {
    rolora::gradient_set<backend> unused;
    return loss_and_grad(a, all, rolora::no_factors, unused);
  }
  double loss_and_grad(const rolora::adapter_set<backend>& a, std::span<const std::size_t> batch,
                       rolora::factor_set trains, rolora::gradient_set<backend>& grads) {
    const auto& l = a.at("classifier");  // A [r, d], B [3, r]
    const Eigen::MatrixXd w = l.scaling * l.B * l.A, xb = x(Eigen::all, batch);
    Eigen::MatrixXd p = w * xb;  // logits, then softmax probabilities [3, b]
    double loss = 0;
    for (Eigen::Index j = 0; j < p.cols(); ++j) {
      p.col(j) = (p.col(j).array() - p.col(j).maxCoeff()).exp();
      p.col(j) /= p.col(j).sum();
      loss -= std::log(p(y[batch[j]], j));
      p(y[batch[j]], j) -= 1;  // now dloss/dlogits (times b)
    }
    const Eigen::MatrixXd dw = p * xb.transpose() / double(batch.size());  // [3, d]
    if (trains.a) grads["classifier"].dA = l.scaling * l.B.transpose() * dw;
    if (trains.b) grads["classifier"].dB = l.scaling * dw * l.A.transpose();
    return loss / double(batch.size());
  }
};
// END excerpt

int main() {
  const int d = 10, per_client = 200;
  std::vector<softmax_client> clients(6);
  for (std::size_t c = 0; c < clients.size(); ++c) {  // client c leans towards class c % 3
    const rolora::random_stream rs(7, rolora::stream::data, std::uint32_t(c));
    clients[c].x.resize(d, per_client);
    for (int j = 0; j < per_client; ++j) {
      const int label = rs.uniform(std::uint64_t(j)) < 0.6 ? int(c % 3) : j % 3;
      clients[c].y.push_back(label), clients[c].all.push_back(std::size_t(j));
      for (int i = 0; i < d; ++i)  // class c's mean: 3 e_c
        clients[c].x(i, j) = 3.0 * (i == label) + rs.normal(1000 + j * d + i);
    }
  }
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 2;
  rolora::federation_config config;
  config.num_rounds = 20, config.local_steps = 5, config.local_optimizer = rolora::sgd{.lr = 0.5};
  rolora::federation<backend, rolora::alternating, rolora::fedavg> fed(
      {}, {}, config, rolora::adapter_set<backend>({{"classifier", 3, d}}, lora, /*seed=*/1));
  fed.run(clients, rolora::progress_line{"own_model", config.num_rounds});

  const auto& l = fed.global().at("classifier");
  double worst = 1;
  for (auto& c : clients) {
    Eigen::MatrixXd logits = l.scaling * l.B * l.A * c.x;
    int right = 0;
    for (int j = 0; j < per_client; ++j) right += logits.col(j).maxCoeff() == logits(c.y[j], j);
    worst = std::min(worst, double(right) / per_client);
  }
  std::printf("lowest accuracy over the clients: %.3f\n", worst);
  return worst > 0.9 ? 0 : 1;
}
