// Force-included (-include) into every test unit of rolora_thrust_omp_tests: the backend-generic
// tests of tests/*.cpp then run on the Thrust OpenMP backend instead of Eigen.
#pragma once
#include <rolora/backend/thrust/backend.hpp>
#include <rolora/backend/thrust/nn_primitives.hpp>  // the nn tests run on it too

#define ROLORA_TEST_BACKENDS rolora::thrust_omp_backend<float>, rolora::thrust_omp_backend<double>
#define ROLORA_TEST_FLOAT_BACKEND rolora::thrust_omp_backend<float>
