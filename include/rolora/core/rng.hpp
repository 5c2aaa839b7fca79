// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A draw is a pure function of (seed, stream, a, b, index): no state is carried from one draw to
// the next, so the numbers an algorithm sees do not depend on the order of the draws, on the
// number of threads, or on the backend that consumes them. Matrices are filled element by element
// in column-major order with index = linear position, on the host, and then copied to the
// backend: the same seed gives the same bits everywhere.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>

namespace rolora {

// The independent random streams of a run. Each has its own seed space, so that changing, say,
// the client sampling does not change the data split or the adapter initialisation.
enum class stream : std::uint32_t {
  data = 1,              // synthetic data (theory problems)
  data_split = 2,        // partitioning samples across clients
  adapter_init = 3,      // LoRA initialisation
  client_sampling = 4,   // which clients take part in a round
  batching = 5,          // minibatch selection during local steps
  dropout = 6,           // client dropout and LoRA dropout
  dp_noise = 7,          // differential privacy: the Gaussian noise of a round (seeded, for
                         // experiments: whoever knows the seed can subtract it; docs/privacy.md)
  dp_sgd_noise = 10,     // sample-level DP-SGD: the noise of a client's local steps (seeded, as
                         // dp_noise; sub-streams by round and client, draws by step)
  dp_sgd_batch = 11,     // sample-level DP-SGD: Poisson batches (round and client, draws by step)
  secagg_rounding = 12,  // secure aggregation: a client's stochastic rounding (round, client)
  secagg_graph = 13,     // secure aggregation: the round's public neighbour graph (round)
};

namespace detail {

// One Philox4x32-10 block: 128 counter bits and 64 key bits in, 128 random bits out.
constexpr std::array<std::uint32_t, 4> philox4x32(std::array<std::uint32_t, 4> ctr,
                                                  std::array<std::uint32_t, 2> key) {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t{m0} * ctr[0];
    const std::uint64_t p1 = std::uint64_t{m1} * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
    key[0] += w0;
    key[1] += w1;
  }
  return ctr;
}

}  // namespace detail

// The draws of one stream. `a` and `b` select a sub-stream (for example round and client);
// `b` must be below 2^24.
class random_stream {
 public:
  constexpr random_stream(std::uint64_t seed, stream s, std::uint32_t a = 0, std::uint32_t b = 0)
      : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
        a_{a},
        tag_{(static_cast<std::uint32_t>(s) << 24) | (b & 0xFFFFFFu)} {}

  // 128 random bits for draw `i`.
  constexpr std::array<std::uint32_t, 4> bits(std::uint64_t i) const {
    return detail::philox4x32(
        {static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(i >> 32), a_, tag_}, key_);
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform(std::uint64_t i) const { return to_unit(bits(i), 0); }

  // Standard normal (Box-Muller on the two 53-bit uniforms of draw i).
  double normal(std::uint64_t i) const {
    const auto w = bits(i);
    const double u1 = 1.0 - to_unit(w, 0);  // (0, 1]: log is finite
    const double u2 = to_unit(w, 2);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

  // Uniform integer in [0, n) (multiply-shift on 64 bits; bias below n / 2^64).
  std::uint64_t below(std::uint64_t i, std::uint64_t n) const {
    const auto w = bits(i);
    const std::uint64_t x = (std::uint64_t{w[0]} << 32) | w[1];
    __extension__ using u128 = unsigned __int128;
    return static_cast<std::uint64_t>((static_cast<u128>(x) * n) >> 64);
  }

 private:
  static double to_unit(const std::array<std::uint32_t, 4>& w, int at) {
    const std::uint64_t x = (std::uint64_t{w[at]} << 21) ^ (std::uint64_t{w[at + 1]} >> 11);
    return static_cast<double>(x & ((std::uint64_t{1} << 53) - 1)) * 0x1.0p-53;
  }

  std::array<std::uint32_t, 2> key_;
  std::uint32_t a_;
  std::uint32_t tag_;
};

// Sequential draws from one stream, for algorithms that consume a variable number of draws
// (rejection sampling, shuffles). Still reproducible: draw k is always random_stream::bits(k).
class random_engine {
 public:
  explicit constexpr random_engine(random_stream s) : stream_{s} {}
  double uniform() { return stream_.uniform(next_++); }
  double normal() { return stream_.normal(next_++); }
  std::uint64_t below(std::uint64_t n) { return stream_.below(next_++, n); }

 private:
  random_stream stream_;
  std::uint64_t next_ = 0;
};

}  // namespace rolora
