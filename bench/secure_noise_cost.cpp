// The cost of client DP's secure noise (docs/privacy.md, "Secure noise"), one thread:
//   1. samples per second of the exact discrete Gaussian (privacy/secure_noise.hpp) from the
//      system's randomness at sigma = 2^20 grid units (z' = 1 at the default granularity C 2^-20)
//      and at sigma = 1.5 (the clip bits' scale), against the seeded random_stream::normal;
//   2. privacy::noised_mean on an update of d = 10^4 and 10^5 float coordinates (the main job's
//      adapters are in that range) from 10 clients, seeded against secure, and without noise
//      (z = 0) to split the secure path's rounding from its sampling.
// Prints one line per measurement; the median of 5 repetitions. Built where libsodium is
// (rolora::secagg): bench/CMakeLists.txt's rolora_secure_noise_cost.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/privacy/client_dp.hpp>
#include <rolora/privacy/secure_noise.hpp>
#include <span>
#include <vector>

using namespace rolora;
using clock_type = std::chrono::steady_clock;

namespace {

// Median seconds of 5 runs of f.
template <class F>
double median_seconds(F&& f) {
  std::vector<double> t;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = clock_type::now();
    f();
    t.push_back(std::chrono::duration<double>(clock_type::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[2];
}

volatile double sink = 0.0;  // keeps the samples alive

using float_backend = eigen_backend<float>;
using set = adapter_set<float_backend>;

// One module of rank 8 with d_in = d_out = d / 16 coordinates: A [8, d/16], B [d/16, 8].
set adapters_of(index_t d, std::uint32_t tag) {
  const index_t n = d / 16;
  random_stream s(tag, stream::adapter_init);
  host_matrix<float> a(8, n), b(n, 8);
  std::uint64_t k = 0;
  for (index_t i = 0; i < a.size(); ++i) a.data()[i] = float(1e-3 * s.normal(k++));
  for (index_t i = 0; i < b.size(); ++i) b.data()[i] = float(1e-3 * s.normal(k++));
  set out;
  out.insert("m", {a, b, 1.0});
  return out;
}

}  // namespace

int main() {
  const int n = 1000000;
  {
    privacy::system_random source;
    const privacy::discrete_gaussian big({std::uint64_t(1) << 40, 1});  // sigma = 2^20
    const double secure = median_seconds([&] {
      double acc = 0;
      for (int i = 0; i < n; ++i) acc += double(big(source));
      sink = acc;
    });
    const privacy::discrete_gaussian small({9, 4});  // sigma = 1.5
    const double secure_small = median_seconds([&] {
      double acc = 0;
      for (int i = 0; i < n; ++i) acc += double(small(source));
      sink = acc;
    });
    const random_stream seeded(7, stream::dp_noise, 0, 0);
    const double normal = median_seconds([&] {
      double acc = 0;
      for (int i = 0; i < n; ++i) acc += seeded.normal(std::uint64_t(i));
      sink = acc;
    });
    std::printf("discrete Gaussian (secure), sigma 2^20: %.3g samples/s (%.0f ns each)\n",
                n / secure, 1e9 * secure / n);
    std::printf("discrete Gaussian (secure), sigma 1.5:  %.3g samples/s (%.0f ns each)\n",
                n / secure_small, 1e9 * secure_small / n);
    std::printf("random_stream::normal (seeded):        %.3g samples/s (%.0f ns each)\n",
                n / normal, 1e9 * normal / n);
  }
  for (index_t d : {index_t(10000), index_t(100000)}) {
    const set global = adapters_of(d, 1);
    std::vector<client_update<float_backend>> ups(10);
    for (std::size_t i = 0; i < ups.size(); ++i) {
      ups[i].client = i;
      ups[i].num_samples = 1.0;
      ups[i].adapters = adapters_of(d, std::uint32_t(10 + i));
    }
    const auto span = std::span<const client_update<float_backend>>(ups);
    const auto time = [&](privacy::noise_source source, double z) {
      privacy::noised_round r{1.0, z, 10.0, 7, 0, source, 0x1p-20};
      return median_seconds([&] {
        const auto mean = privacy::noised_mean(global, span, both_factors, r);
        sink = double(mean.adapters.at("m").A(0, 0));
      });
    };
    const double seeded = time(privacy::noise_source::seeded, 1.0);
    const double seeded0 = time(privacy::noise_source::seeded, 0.0);
    const double secure = time(privacy::noise_source::secure, 1.0);
    const double secure0 = time(privacy::noise_source::secure, 0.0);
    std::printf(
        "noised_mean, d %ld, 10 clients: seeded %.2f ms (%.2f without noise), secure %.2f ms "
        "(%.2f without noise: the grid)\n",
        long(global.at("m").A.size() + global.at("m").B.size()), 1e3 * seeded, 1e3 * seeded0,
        1e3 * secure, 1e3 * secure0);
  }
}
