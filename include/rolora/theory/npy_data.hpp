// Federated linear-regression data as .npy files, numpy's convention (one row per sample):
//   DIR/client_<i>_X.npy  [m_i, d]   inputs of client i = 0, 1, 2, ... (consecutive from 0)
//   DIR/client_<i>_Y.npy  [m_i, k]   targets (or [m_i] when k = 1)
// any float dtype (float32/float64, either byte order), C or Fortran order (io/npy.hpp). Needs
// xtensor, like io/npy.hpp.
#pragma once
#include <filesystem>
#include <rolora/io/npy.hpp>
#include <rolora/theory/linear_regression.hpp>
#include <string>
#include <vector>

namespace rolora::theory {

struct client_arrays {
  std::vector<host> inputs;   // x_i [d, m_i], one column per sample
  std::vector<host> targets;  // y_i [k, m_i]
};

inline std::filesystem::path client_file(const std::filesystem::path& dir, std::size_t i,
                                         char what) {
  return dir / ("client_" + std::to_string(i) + "_" + what + ".npy");
}

// Reads client_0_*, client_1_*, ... until client_<K>_X.npy is missing; checks that each client's
// X and Y have the same number of rows and that d and k agree across clients.
inline client_arrays read_client_arrays(const std::filesystem::path& dir) {
  client_arrays out;
  for (std::size_t i = 0; std::filesystem::exists(client_file(dir, i, 'X')); ++i) {
    const auto x_file = client_file(dir, i, 'X'), y_file = client_file(dir, i, 'Y');
    if (!std::filesystem::exists(y_file)) {
      rolora::detail::raise<config_error>("found ", x_file.string(), " but not ", y_file.string());
    }
    const host x = load_npy_matrix<double>(x_file),
               y = load_npy_matrix<double>(y_file);  // [m, d], [m, k]
    if (x.rows() != y.rows()) {
      rolora::detail::raise<shape_error>(x_file.string(), " has ", x.rows(), " rows (samples) but ",
                                         y_file.string(), " has ", y.rows());
    }
    if (i > 0 && (x.cols() != out.inputs[0].rows() || y.cols() != out.targets[0].rows())) {
      rolora::detail::raise<shape_error>("client ", i, " has ", x.cols(), " features and ",
                                         y.cols(), " targets per sample, client 0 has ",
                                         out.inputs[0].rows(), " and ", out.targets[0].rows());
    }
    out.inputs.push_back(x.transpose());
    out.targets.push_back(y.transpose());
  }
  if (out.inputs.empty()) {
    rolora::detail::raise<config_error>("no client data in ", dir.string(), ": expected ",
                                        client_file(dir, 0, 'X').filename().string(), ", ",
                                        client_file(dir, 0, 'Y').filename().string(), ", ",
                                        "client_1_X.npy, ...");
  }
  return out;
}

// Writes a problem's client data in the layout read_client_arrays reads (float64, C order).
template <backend Backend>
void write_client_arrays(const std::filesystem::path& dir, const linear_problem<Backend>& p) {
  std::filesystem::create_directories(dir);
  for (std::size_t i = 0; i < p.clients.size(); ++i) {
    save_npy(client_file(dir, i, 'X'),
             host(Backend::to_host(p.clients[i].inputs()).template cast<double>().transpose()));
    save_npy(client_file(dir, i, 'Y'),
             host(Backend::to_host(p.clients[i].targets()).template cast<double>().transpose()));
  }
}

}  // namespace rolora::theory
