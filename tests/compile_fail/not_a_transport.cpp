// expect: static assertion failed: rolora::run: the Transport type does not model rolora::round_transport
// A transport that forgot exchange(): the one round loop must name the transport contract.
#include <rolora/rolora.hpp>

struct half_a_transport {
  bool is_server() const { return true; }
  template <class Backend, class Task>
  void serve(std::vector<Task>&, const rolora::federation_config&) {}
  void finish() {}
};

using backend = rolora::eigen_backend<double>;
using task = rolora::theory::linear_regression_task<backend>;

void run_it(rolora::federation<backend, rolora::train_both, rolora::fedavg>& fed,
            std::vector<task>& tasks) {
  half_a_transport t;
  rolora::run(t, fed, tasks);
}
