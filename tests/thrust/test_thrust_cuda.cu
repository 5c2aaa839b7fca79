// Tests of the CUDA flavour (nvcc; thrust_cuda_backend, GEMM through cuBLAS). Test cases whose
// name ends in "[needs device]" need a CUDA device; the others check error reporting and run
// anywhere. With --require-device and no usable device, the program prints why and exits with
// 77, which ctest reports as skipped (tests/thrust/CMakeLists.txt).
//
// Tolerances as test_thrust_omp.cpp: GEMM per element within 2 (k + 2) eps_T of
// |alpha| (|op(a)| |op(b)|)_ij + |beta c0_ij| against a long-double reference.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/aggregate.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/backend/thrust/backend.hpp>
#include <rolora/core/rng.hpp>
#include <string>
#include <vector>

using namespace rolora;

namespace {

template <class T>
host_matrix<T> random_matrix(index_t rows, index_t cols, std::uint32_t tag) {
  const random_stream rs(12345, stream::data, tag, 7);
  host_matrix<T> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(rs.normal(std::uint64_t(i)));
  return m;
}

template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("expected an exception");
  return {};
}

template <class T>
void check_gemm(const host_matrix<T>& c, T alpha, const host_matrix<T>& opa,
                const host_matrix<T>& opb, T beta, const host_matrix<T>& c0) {
  using wide = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  const wide wa = opa.template cast<long double>(), wb = opb.template cast<long double>();
  wide ref = (long double)alpha * wa * wb;
  wide bound = std::abs((long double)alpha) * wa.cwiseAbs() * wb.cwiseAbs();
  ref += (long double)beta * c0.template cast<long double>();
  bound += std::abs((long double)beta) * c0.template cast<long double>().cwiseAbs();
  const long double tol = 2 * ((long double)opa.cols() + 2) * std::numeric_limits<T>::epsilon();
  REQUIRE(c.rows() == ref.rows());
  REQUIRE(c.cols() == ref.cols());
  long double worst = 0;
  for (index_t i = 0; i < c.size(); ++i) {
    const long double err = std::abs((long double)c.data()[i] - ref.data()[i]);
    const long double t = tol * bound.data()[i];
    worst = std::max(worst, t > 0 ? err / t : (err > 0 ? 1e30L : 0.0L));
  }
  CHECK(double(worst) <= 1.0);
}

}  // namespace

TEST_CASE("thrust_cuda: failing CUDA and cuBLAS calls name the call, file:line and the error") {
  const std::string cuda =
      message_of<device_error>([] { ROLORA_CUDA_CHECK(cudaError_t(cudaErrorMemoryAllocation)); });
  CHECK(cuda.find("[rolora.cuda_error] cudaError_t(cudaErrorMemoryAllocation) failed at ") == 0);
  CHECK(cuda.find("test_thrust_cuda.cu:") != std::string::npos);
  CHECK(cuda.find(": cudaErrorMemoryAllocation (out of memory)") != std::string::npos);
  const std::string blas = message_of<device_error>(
      [] { ROLORA_CUBLAS_CHECK(cublasStatus_t(CUBLAS_STATUS_INVALID_VALUE)); });
  CHECK(blas.find("[rolora.cublas_error] cublasStatus_t(CUBLAS_STATUS_INVALID_VALUE) failed at ") ==
        0);
  CHECK(blas.find(": CUBLAS_STATUS_INVALID_VALUE (") != std::string::npos);
  static_assert(backend<thrust_cuda_backend<float>> && backend<thrust_cuda_backend<double>>);
  CHECK(thrust_cuda_backend<float>::name == "thrust_cuda");
}

TEST_CASE_TEMPLATE("thrust_cuda: cuBLAS gemm matches a long-double reference [needs device]", T,
                   float, double) {
  using B = thrust_cuda_backend<T>;
  const std::vector<std::array<index_t, 3>> sizes{
      {1, 1, 1}, {37, 53, 29}, {129, 257, 97}, {5, 0, 3}};
  std::uint32_t tag = 0;
  for (const auto& [m, k, n] : sizes) {
    const host_matrix<T> opa = random_matrix<T>(m, k, ++tag), opb = random_matrix<T>(k, n, ++tag);
    const host_matrix<T> c0 = random_matrix<T>(m, n, ++tag);
    for (const op op_a : {op::none, op::transpose}) {
      for (const op op_b : {op::none, op::transpose}) {
        const auto a = B::from_host(op_a == op::none ? opa : host_matrix<T>(opa.transpose()));
        const auto b = B::from_host(op_b == op::none ? opb : host_matrix<T>(opb.transpose()));
        auto c = B::zeros(1, 1);
        B::gemm(T(1.5), a, op_a, b, op_b, T(0), c);
        check_gemm<T>(B::to_host(c), T(1.5), opa, opb, T(0), c0);
        c = B::from_host(c0);
        B::gemm(T(-0.5), a, op_a, b, op_b, T(-0.75), c);
        check_gemm<T>(B::to_host(c), T(-0.5), opa, opb, T(-0.75), c0);
      }
    }
  }
}

TEST_CASE_TEMPLATE(
    "thrust_cuda: same seed as Eigen: bit-identical adapters, close algebra [needs device]", T,
    float, double) {
  using B = thrust_cuda_backend<T>;
  using E = eigen_backend<T>;
  lora_config c;
  c.r = 4;
  c.lora_alpha = 8.0;
  const std::vector<module_shape> modules{{"q", 24, 16}, {"v", 16, 24}};
  const adapter_set<B> t(modules, c, 2024);
  const adapter_set<E> e(modules, c, 2024);
  for (const auto& [name, l] : e) {
    CHECK((B::to_host(t.at(name).A).array() == l.A.array()).all());
    CHECK((B::to_host(t.at(name).B).array() == l.B.array()).all());
  }
  const host_matrix<T> x = random_matrix<T>(300, 70, 1), y = random_matrix<T>(300, 70, 2);
  auto ty = B::from_host(y);
  host_matrix<T> ey = y;
  B::axpy(T(0.3), B::from_host(x), ty);
  E::axpy(T(0.3), x, ey);
  B::scale(T(-2), ty);
  E::scale(T(-2), ey);
  CHECK((B::to_host(ty) - ey).cwiseAbs().maxCoeff() <=
        4 * std::numeric_limits<T>::epsilon() * ey.cwiseAbs().maxCoeff());
  const double d = double(B::dot(B::from_host(x), B::from_host(y)));
  CHECK(d ==
        doctest::Approx(double(E::dot(x, y))).epsilon(std::is_same_v<T, float> ? 1e-4 : 1e-12));
  CHECK(B::all_finite(ty));
  host_matrix<T> bad = x;
  bad(3, 4) = std::numeric_limits<T>::quiet_NaN();
  CHECK_FALSE(B::all_finite(B::from_host(bad)));

  host_matrix<T> a = random_matrix<T>(3, 11, 5);
  auto ta = B::from_host(a);
  const auto tl = B::orthonormalize_rows(ta);
  const auto el = E::orthonormalize_rows(a);
  CHECK((B::to_host(ta).array() == a.array()).all());
  CHECK((B::to_host(tl).array() == el.array()).all());
}

TEST_CASE("thrust_cuda: fedavg agrees with Eigen [needs device]") {
  using B = thrust_cuda_backend<float>;
  using E = eigen_backend<float>;
  lora_config c;
  c.r = 8;
  const std::vector<module_shape> modules{{"m", 64, 48}};
  adapter_set<B> tg(modules, c, 1);
  adapter_set<E> eg(modules, c, 1);
  std::vector<client_update<B>> tu;
  std::vector<client_update<E>> eu;
  for (std::size_t i = 0; i < 5; ++i) {
    adapter_set<E> e = eg;
    e.at("m").A = random_matrix<float>(8, 48, std::uint32_t(10 + 2 * i));
    e.at("m").B = random_matrix<float>(64, 8, std::uint32_t(11 + 2 * i));
    adapter_set<B> t = tg;
    t.at("m").A = B::from_host(e.at("m").A);
    t.at("m").B = B::from_host(e.at("m").B);
    eu.push_back({i, double(10 + i), std::move(e)});
    tu.push_back({i, double(10 + i), std::move(t)});
  }
  const auto tr = aggregate(fedavg{}, tg, std::span<const client_update<B>>(tu), both_factors);
  const auto er = aggregate(fedavg{}, eg, std::span<const client_update<E>>(eu), both_factors);
  CHECK((B::to_host(tg.at("m").A) - eg.at("m").A).cwiseAbs().maxCoeff() <= 1e-6f);
  CHECK((B::to_host(tg.at("m").B) - eg.at("m").B).cwiseAbs().maxCoeff() <= 1e-6f);
  CHECK(tr.error == doctest::Approx(er.error).epsilon(1e-3));
}

TEST_CASE("thrust_cuda: running out of device memory says how much was asked for [needs device]") {
  const index_t huge = index_t(1) << 20;  // 2^40 floats: 4 TiB
  const std::string msg =
      message_of<device_error>([&] { thrust_cuda_backend<float>::zeros(huge, huge); });
  CHECK(msg.find(
            "[rolora.out_of_memory] thrust_cuda: allocating a [1048576, 1048576] matrix of float "
            "(4398046511104 bytes) failed") == 0);
}

int main(int argc, char** argv) {
  bool require_device = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--require-device") == 0) {
      require_device = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  if (require_device) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
      std::printf(
          "no CUDA device (cudaGetDeviceCount: %s, %d devices): skipping the device tests\n",
          status == cudaSuccess ? "cudaSuccess" : cudaGetErrorName(status), devices);
      return 77;
    }
  }
  doctest::Context context(int(args.size()), args.data());
  return context.run();
}
