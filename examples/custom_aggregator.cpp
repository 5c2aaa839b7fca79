// custom_aggregator: an aggregator of your own (rolora::aggregator_for) with its own merge: the
// coordinate-wise median of the clients' copies of each shared factor (Yin et al. 2018). Against
// fedavg on the linear-regression model with 2 of 10 clients poisoned (constant gradients), it
// fails unless the honest clients end at a loss 100 times lower under the median than the mean.
#include <algorithm>
#include <cstdio>
#include <rolora/rolora.hpp>
#include <span>
#include <string_view>
#include <vector>

// BEGIN excerpt (docs/examples.md, docs/concepts.md)
struct coordinate_median {
  static constexpr std::string_view name = "coordinate_median";
  // The next global adapters: read only the `shared` factors of the updates, modify nothing.
  template <rolora::backend B>
  rolora::adapter_set<B> merge(const rolora::adapter_set<B>& global,
                               std::span<const rolora::client_update<B>> updates,
                               std::span<const double> /*weights*/,
                               rolora::factor_set shared) const {
    using lora = rolora::lora_adapter<B>;
    rolora::adapter_set<B> next = global;
    for (auto& [module, g] : next) {
      for (auto factor : {&lora::A, &lora::B}) {
        if (factor == &lora::A ? !shared.a : !shared.b) continue;
        std::vector<rolora::host_matrix<typename B::scalar>> copies;
        for (const auto& u : updates) copies.push_back(B::to_host(u.adapters.at(module).*factor));
        auto out = copies[0];
        std::vector<typename B::scalar> v(copies.size());
        for (rolora::index_t i = 0; i < out.size(); ++i) {
          for (std::size_t k = 0; k < copies.size(); ++k) v[k] = copies[k].data()[i];
          std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
          out.data()[i] = v[v.size() / 2];  // the upper median
        }
        g.*factor = B::from_host(out);
      }
    }
    return next;
  }
};
// END excerpt

using backend = rolora::eigen_backend<double>;

struct maybe_poisoned : rolora::theory::linear_regression_task<backend> {
  bool poisoned = false;  // reports a constant instead of its gradients
  double loss_and_grad(const rolora::adapter_set<backend>& a, std::span<const std::size_t> batch,
                       rolora::factor_set trains, rolora::gradient_set<backend>& grads) {
    const double l = linear_regression_task::loss_and_grad(a, batch, trains, grads);
    for (auto& [module, g] : grads.adapters)
      if (poisoned) g.dA.setConstant(0.2), g.dB.setConstant(0.2);
    return l;
  }
};

template <class Aggregator>
double honest_loss_after(std::vector<maybe_poisoned>& clients) {
  rolora::lora_config lora;
  lora.r = 2, lora.lora_alpha = 2;
  rolora::federation_config config;
  config.num_rounds = 30, config.local_steps = 3, config.local_optimizer = rolora::sgd{.lr = 0.3};
  rolora::federation<backend, rolora::alternating, Aggregator> fed(
      {}, {}, config, rolora::adapter_set<backend>({{"linear", 12, 12}}, lora, /*seed=*/1));
  fed.run(clients, rolora::progress_line{std::string(Aggregator::name), 30});
  double loss = 0;
  for (auto& c : clients) loss += c.poisoned ? 0.0 : c.loss(fed.global()) / 8;
  return loss;
}

int main() {
  rolora::theory::linear_problem_config data;
  data.dim = 12, data.out_dim = 12, data.rank = 2, data.clients = 10, data.samples = 200;
  std::vector<maybe_poisoned> clients;
  for (auto& task : rolora::theory::make_linear_problem<backend>(data).clients)
    clients.push_back({task, clients.size() < 2});
  const double mean = honest_loss_after<rolora::fedavg>(clients);
  const double median = honest_loss_after<coordinate_median>(clients);
  std::printf("honest clients' loss after 30 rounds: fedavg %.3e, median %.3e\n", mean, median);
  return median < mean / 100 ? 0 : 1;
}
