// The transformer on thrust_cuda_backend<float/double> against Eigen: the test bodies of
// nn_thrust_cases.hpp (also run on thrust_omp in CI), compiled by nvcc. Every case needs a device:
// without one, thrust_cuda.device (tests/thrust/CMakeLists.txt) is reported as skipped.
// main() is test_thrust_cuda.cu's.
#include <doctest/doctest.h>

#define ROLORA_NN_THRUST_TYPES \
  rolora::thrust_cuda_backend<float>, rolora::thrust_cuda_backend<double>
#define ROLORA_NN_THRUST_DOUBLE rolora::thrust_cuda_backend<double>
#define ROLORA_NN_THRUST_SUFFIX " [needs device]"
#define ROLORA_NN_THRUST_REQUIRE() static_cast<void>(0)
#include "nn_thrust_cases.hpp"
