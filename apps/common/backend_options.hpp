// --backend eigen|thrust-omp|cuda for the transformer applications: the flag, and the call of an
// application's generic body with the chosen backend type (float). The Thrust-OpenMP flavour is
// compiled in when the build has it (ROLORA_ENABLE_THRUST_OMP: apps/CMakeLists.txt defines
// ROLORA_APPS_THRUST_OMP); the CUDA one only when this file is compiled by nvcc (the
// applications' `<name>_cuda` targets, ROLORA_BUILD_CUDA_APPS); elsewhere `--backend cuda` says so.
#pragma once
#if defined(ROLORA_APPS_THRUST_OMP) || defined(__CUDACC__)
// clang-format off
#include <rolora/backend/thrust/nn_primitives.hpp>  // first Thrust header: it picks the device system
// clang-format on
#endif
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <cstdio>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/backend/eigen/nn_primitives.hpp>
#include <rolora/core/error.hpp>
#include <string>

namespace rolora::apps {

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
#if defined(ROLORA_APPS_THRUST_OMP)
    return f(thrust_omp_backend<float>{});
#else
    raise<config_error>(
        "--backend thrust-omp: this build has no Thrust-OpenMP flavour (configure with "
        "-DROLORA_ENABLE_THRUST_OMP=ON and install libthrust-dev)");
#endif
  }
  if (name == "cuda") {
#if defined(__CUDACC__)
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      raise<config_error>("--backend cuda: no CUDA device is visible to this process");
    }
    return f(thrust_cuda_backend<float>{});
#else
    raise<config_error>(
        "--backend cuda: this executable was compiled without CUDA; its nvcc build is "
        "<name>_cuda (configure with -DROLORA_BUILD_CUDA_APPS=ON; docs/backends.md)");
#endif
  }
  raise<config_error>("--backend: unknown backend '", name, "' (eigen, thrust-omp or cuda)");
}

// MiB in use where the model runs, read after each round: on the CPU backends (eigen,
// thrust-omp) the process's resident set (/proc/self/statm), on cuda the device's memory in use
// (cudaMemGetInfo: total - free). -1 when it cannot be read.
inline double memory_in_use_mib(const std::string& backend) {
#if defined(__CUDACC__)
  if (backend == "cuda") {
    std::size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return -1;
    return double(total - free) / 1048576.0;
  }
#endif
  (void)backend;
  long pages = 0, resident = 0;
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (!statm) return -1;
  const bool read = std::fscanf(statm, "%ld %ld", &pages, &resident) == 2;
  std::fclose(statm);
  return read ? double(resident) * double(sysconf(_SC_PAGESIZE)) / 1048576.0 : -1;
}

}  // namespace rolora::apps
