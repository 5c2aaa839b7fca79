// Which Thrust system a thrust_backend runs on: the storage type it uses, its name, and whether
// GEMM goes to cuBLAS. Internal to rolora/backend/thrust/backend.hpp.
//
// Systems available in a translation unit:
//   thrust::system::cpp::tag    always (sequential, host memory)
//   thrust::system::omp::tag    when compiled with OpenMP (-fopenmp defines _OPENMP)
//   thrust::system::cuda::tag   when compiled by a CUDA compiler (nvcc defines __CUDACC__)
// thrust::device_system_tag is one of them, picked by THRUST_DEVICE_SYSTEM.
#pragma once

// Thrust's default device system is CUDA, which needs nvcc. A host compiler that includes this
// header before any Thrust header gets the OpenMP system when OpenMP is on and the sequential cpp
// system otherwise.
#if !defined(THRUST_DEVICE_SYSTEM) && !defined(__CUDACC__)
#if defined(_OPENMP)
#define THRUST_DEVICE_SYSTEM THRUST_DEVICE_SYSTEM_OMP
#else
#define THRUST_DEVICE_SYSTEM THRUST_DEVICE_SYSTEM_CPP
#endif
#endif

#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/system/cpp/execution_policy.h>
#include <thrust/system/cpp/vector.h>

#include <string_view>
#include <type_traits>
#if defined(_OPENMP)
#include <thrust/system/omp/vector.h>
#endif
#if defined(__CUDACC__)
#include <thrust/system/cuda/vector.h>
#endif

// Element-wise functors run on the device under CUDA and on the host otherwise.
#if defined(__CUDACC__)
#define ROLORA_HOST_DEVICE __host__ __device__
#else
#define ROLORA_HOST_DEVICE
#endif

namespace rolora::detail {

template <class System>
struct thrust_system_traits {
  static_assert(sizeof(System) == 0,
                "rolora::thrust_backend<T, System>: System must be thrust::system::cpp::tag, "
                "thrust::system::omp::tag (compile with OpenMP) or thrust::system::cuda::tag "
                "(compile with nvcc), or thrust::device_system_tag");
};

template <>
struct thrust_system_traits<thrust::system::cpp::tag> {
  static constexpr std::string_view name = "thrust_cpp";
  static constexpr bool is_cuda = false;
  template <class T>
  using vector = thrust::system::cpp::vector<T>;
};

#if defined(_OPENMP)
template <>
struct thrust_system_traits<thrust::system::omp::tag> {
  static constexpr std::string_view name = "thrust_omp";
  static constexpr bool is_cuda = false;
  template <class T>
  using vector = thrust::system::omp::vector<T>;
};
#endif

#if defined(__CUDACC__)
template <>
struct thrust_system_traits<thrust::system::cuda::tag> {
  static constexpr std::string_view name = "thrust_cuda";
  static constexpr bool is_cuda = true;
  template <class T>
  using vector = thrust::system::cuda::vector<T>;
};
#endif

// Storage of a matrix on `System`: thrust::device_vector<T> for the configured device system,
// the system's own vector type for the others (so several systems can be used side by side).
template <class T, class System>
using thrust_vector_t =
    std::conditional_t<std::is_same_v<System, thrust::device_system_tag>, thrust::device_vector<T>,
                       typename thrust_system_traits<System>::template vector<T>>;

}  // namespace rolora::detail
