// The transformer on thrust_omp_backend<float/double> against Eigen:
// tests/thrust/nn_thrust_cases.hpp (also compiled by nvcc for the CUDA flavour).
#include <omp.h>

#define ROLORA_NN_THRUST_TYPES rolora::thrust_omp_backend<float>, rolora::thrust_omp_backend<double>
#define ROLORA_NN_THRUST_DOUBLE rolora::thrust_omp_backend<double>
#define ROLORA_NN_THRUST_SUFFIX ""
#define ROLORA_NN_THRUST_REQUIRE() static_cast<void>(0)
#include "nn_thrust_cases.hpp"
