// Errors of the Thrust backend: device_error, failed allocations that say how many bytes were
// asked for, and (under CUDA) the one checking macro for CUDA runtime and cuBLAS calls.
// Internal to rolora/backend/thrust/backend.hpp.
#pragma once
#include <cstddef>
#include <exception>
#include <rolora/core/error.hpp>
#include <string_view>

#if defined(__CUDACC__)
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#endif

namespace rolora {

// A device (CUDA runtime, cuBLAS) call failed, or device memory ran out. The message names the
// call, file:line and the error's name, e.g.
//   "[rolora.cuda_error] cudaMemcpy(...) failed at thrust.hpp:120: cudaErrorInvalidValue (...)".
class device_error : public error {
 public:
  using error::error;
};

namespace detail {

// Rethrows the allocation failure in flight (std::bad_alloc, thrust's bad_alloc, or a
// thrust::system_error from cudaMalloc) as device_error saying what was requested.
[[noreturn]] inline void fail_allocation(std::string_view system, std::ptrdiff_t rows,
                                         std::ptrdiff_t cols, std::size_t bytes,
                                         std::string_view scalar, const std::exception& cause) {
  fail<device_error>("out_of_memory", system, ": allocating a ", shape_string(rows, cols),
                     " matrix of ", scalar, " (", bytes, " bytes) failed: ", cause.what());
}

#if defined(__CUDACC__)
inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    fail<device_error>("cuda_error", call, " failed at ", file, ':', line, ": ",
                       cudaGetErrorName(status), " (", cudaGetErrorString(status), ')');
  }
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail<device_error>("cublas_error", call, " failed at ", file, ':', line, ": ",
                       cublasGetStatusName(status), " (", cublasGetStatusString(status), ')');
  }
}
#endif

}  // namespace detail
}  // namespace rolora

#if defined(__CUDACC__)
// Every CUDA runtime / cuBLAS call of the backend goes through these: a failure throws
// rolora::device_error with the call, file:line and the error's name.
#define ROLORA_CUDA_CHECK(call) ::rolora::detail::check_cuda((call), #call, __FILE__, __LINE__)
#define ROLORA_CUBLAS_CHECK(call) ::rolora::detail::check_cublas((call), #call, __FILE__, __LINE__)
#endif
