// --backend eigen|thrust-omp|cuda for the transformer examples: the flag, and the call of an
// example's generic body with the chosen backend type (float). The Thrust-OpenMP flavour is
// compiled in when the build has it (ROLORA_ENABLE_THRUST_OMP: examples/CMakeLists.txt defines
// ROLORA_EXAMPLES_THRUST_OMP); the CUDA one only when this file is compiled by nvcc, which the
// examples' build does not do yet: `--backend cuda` then says so (docs/backends.md).
#pragma once
#if defined(ROLORA_EXAMPLES_THRUST_OMP) || defined(__CUDACC__)
// clang-format off
#include <rolora/nn/thrust_primitives.hpp>  // first Thrust header: it picks the device system
// clang-format on
#endif
#include <CLI/CLI.hpp>
#include <rolora/backend/eigen.hpp>
#include <rolora/core/error.hpp>
#include <rolora/nn/eigen_primitives.hpp>
#include <string>

namespace rolora::examples {

inline void add_backend_option(CLI::App& app, std::string& backend) {
  app.add_option("--backend", backend,
                 "where the model runs: eigen (CPU), thrust-omp (Thrust on OpenMP, CPU; "
                 "OMP_NUM_THREADS threads per client), cuda (Thrust + cuBLAS on a GPU)")
      ->check(CLI::IsMember({"eigen", "thrust-omp", "cuda"}))
      ->capture_default_str();
}

// f(B{}) for the backend named `name`; config_error when this build or machine lacks it.
template <class F>
int with_backend(const std::string& name, F&& f) {
  if (name == "eigen") return f(eigen_backend<float>{});
  if (name == "thrust-omp") {
#if defined(ROLORA_EXAMPLES_THRUST_OMP)
    return f(thrust_omp_backend<float>{});
#else
    detail::raise<config_error>(
        "--backend thrust-omp: this build has no Thrust-OpenMP flavour (configure with "
        "-DROLORA_ENABLE_THRUST_OMP=ON and install libthrust-dev)");
#endif
  }
  if (name == "cuda") {
#if defined(__CUDACC__)
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      detail::raise<config_error>("--backend cuda: no CUDA device is visible to this process");
    }
    return f(thrust_cuda_backend<float>{});
#else
    detail::raise<config_error>(
        "--backend cuda: this executable was compiled without CUDA (the examples are built by the "
        "host compiler; docs/backends.md says how to run the transformer on a GPU)");
#endif
  }
  detail::raise<config_error>("--backend: unknown backend '", name,
                              "' (eigen, thrust-omp or cuda)");
}

}  // namespace rolora::examples
