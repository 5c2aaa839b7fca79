// The cost of secure aggregation (secagg/masking.hpp, docs/privacy.md), one thread: one round of
// the whole protocol simulated in one process, the server's work and every client's added up, for
// n clients with an input of L 64-bit words (default 8,900, about the main job's upload), over the
// complete graph (Bonawitz et al.) and the random k-regular graph with k = logarithmic_degree(n)
// (SecAgg+), threshold t = a majority of the degree (round.hpp's default), by stage:
//   1. keys + advertise: each client's two key pairs and self-mask seed, its advertisement
//      encoded and decoded by the server;
//   2. shares: share_out (Shamir of the seed and the mask key, one share of each per neighbour),
//      each bundle sealed (encode_sealed_shares), opened by its recipient (decode_sealed_shares)
//      and kept (receive);
//   3. masking: every surviving client's masked() (the pair keys and mask streams); the mask
//      rate counts (degree + 1) * L * 8 bytes of mask words per surviving client;
//   4. unmask: make_request, every survivor's answer and the server's unmask_sum.
// Dropouts: 0%, 10%, 30% of the clients leave after stage 2, before their masked input, so the
// server rebuilds their mask keys and removes their pair masks. The dropped set is random but
// drawn so that every seed and key the server needs keeps t answering neighbours (a uniform draw
// often leaves a client with fewer, which fails the round; the notes under the table count how
// often). The reference is the server's plain sum of n inputs of L words. A configuration whose
// estimate (from per-operation rates measured first, the masks' from the masking stage of small
// rounds) is above --skip-above seconds is skipped. Each stage: the median of 3 to 5 rounds; the
// "on CPU" column is the thread's CPU time over the wall time (below 100%: the machine is shared).
// After each round the unmasked sum is compared with the plain sum of the survivors' encoded
// inputs (codec(1.0, 24, n) of uniform doubles): a mismatch exits with status 1.
// Built where libsodium is (rolora::secagg): bench/CMakeLists.txt's rolora_secagg_cost.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <rolora/secagg/encoding.hpp>
#include <rolora/secagg/graph.hpp>
#include <rolora/secagg/masking.hpp>
#include <rolora/secagg/messages.hpp>
#include <span>
#include <string>
#include <thread>
#include <vector>

using namespace rolora::secagg;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

volatile std::uint64_t sink = 0;  // keeps results alive

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

// This thread's CPU seconds: the share of the wall time it ran (others share this machine).
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

struct stage_times {
  double keys = 0, shares = 0, masking = 0, unmask = 0;
  double cpu = 0;  // the thread's CPU seconds over the four stages
  double total() const { return keys + shares + masking + unmask; }
};

// One round of the protocol; false when the unmasked sum is not the plain sum of the survivors.
bool run_round(const round_setup& setup, const std::vector<std::vector<std::uint64_t>>& inputs,
               const std::vector<bool>& gone, std::size_t length, stage_times& t) {
  const std::size_t n = setup.graph.size();
  const std::uint64_t round = setup.round;

  // 1. Keys + advertise.
  const double cpu_start = thread_cpu_seconds();
  auto start = clock_type::now();
  std::vector<client> clients;
  clients.reserve(n);
  key_directory keys, encryption_keys;
  for (std::size_t p = 0; p < n; ++p) {
    clients.emplace_back(p, setup);
    const auto bytes = encode_advertise(
        {p, clients[p].mask_public_key(), clients[p].encryption_public_key()}, round);
    const advertisement a = decode_advertise(bytes, round);
    keys[a.client] = a.mask_public_key;
    encryption_keys[a.client] = a.encryption_public_key;
  }
  t.keys = seconds_since(start);

  // 2. Shares, sealed and opened.
  start = clock_type::now();
  for (std::size_t p = 0; p < n; ++p) {
    for (const auto& bundle : clients[p].share_out()) {
      const auto bytes =
          encode_sealed_shares(clients[p], bundle, encryption_keys.at(bundle.to), round);
      clients[bundle.to].receive(
          decode_sealed_shares(bytes, round, clients[bundle.to], encryption_keys));
    }
  }
  t.shares = seconds_since(start);

  // 3. Masked inputs of the survivors (masking with every client that shared: all of them).
  start = clock_type::now();
  std::map<std::size_t, std::vector<std::uint64_t>> masked;
  for (std::size_t p = 0; p < n; ++p) {
    if (!gone[p]) masked[p] = clients[p].masked(inputs[p], keys);
  }
  t.masking = seconds_since(start);

  // 4. Unmask.
  start = clock_type::now();
  const unmask_request request = make_request(keys, masked);
  std::vector<unmask_answer> answers;
  answers.reserve(masked.size());
  for (const auto& [p, y] : masked) answers.push_back(clients[p].answer(request));
  const auto sum = unmask_sum(setup, keys, masked, answers, length);
  t.unmask = seconds_since(start);
  t.cpu = thread_cpu_seconds() - cpu_start;

  std::vector<std::uint64_t> expected(length, 0);
  for (std::size_t p = 0; p < n; ++p) {
    if (!gone[p]) rolora::secagg::detail::add_into(expected, inputs[p]);
  }
  return sum == expected;
}

// Per-operation seconds, measured once, for the estimates.
struct rates {
  double client_keys = 0;  // two key pairs, a seed, an advertisement encoded and decoded
  double pair_key = 0;     // one pair_key (X25519 + BLAKE2b)
  double mask_only = 0;    // mask_words alone
  double chacha = 0;       // crypto_stream_chacha20_ietf of L * 8 bytes alone
  double bundle = 0;       // encode_sealed_shares + decode_sealed_shares + receive
  double stream = 0;       // one pair or self mask in a round's masking stage (pair key included)
};

// Seconds per call of f(i), the median of 3 batches of `reps` calls (the first one warms up).
template <class F>
double per_call(int reps, F&& f) {
  std::vector<double> t;
  for (int batch = 0; batch < 3; ++batch) {
    const auto start = clock_type::now();
    for (int i = 0; i < reps; ++i) f(i);
    t.push_back(seconds_since(start) / reps);
  }
  std::sort(t.begin(), t.end());
  return t[1];
}

rates measure_rates(std::size_t length) {
  rates r;
  const int reps = 200;
  r.client_keys = per_call(reps, [](int i) {
    const keypair a = generate_keypair(), b = generate_keypair();
    const key256 s = random_seed();
    const auto bytes = encode_advertise({std::size_t(i), a.pk, b.pk}, 0);
    sink = sink + decode_advertise(bytes, 0).client + s[0];
  });
  const keypair a = generate_keypair(), b = generate_keypair();
  r.pair_key = per_call(reps, [&](int i) {
    sink = sink + pair_key(a.sk, a.pk, 0, b.pk, 1, std::uint64_t(i), key_purpose::pairwise_mask)[0];
  });
  const key256 k = random_seed();
  r.mask_only = per_call(reps, [&](int i) {
    sink = sink + mask_words(k, std::uint64_t(i), stream_domain::pairwise_mask, length)[0];
  });
  // libsodium's ChaCha20 alone, into one buffer: what mask_words adds to it is its own.
  std::vector<std::uint8_t> stream(length * 8);
  std::array<std::uint8_t, crypto_stream_chacha20_ietf_NONCEBYTES> nonce{};
  r.chacha = per_call(reps, [&](int i) {
    nonce[0] = std::uint8_t(i);
    crypto_stream_chacha20_ietf(stream.data(), stream.size(), nonce.data(), k.data());
    sink = sink + stream[0];
  });
  {
    const std::size_t n = 16;
    const round_setup setup{0, n / 2, complete_graph(n)};
    std::vector<client> clients;
    key_directory enc;
    for (std::size_t p = 0; p < n; ++p) {
      clients.emplace_back(p, setup);
      enc[p] = clients[p].encryption_public_key();
    }
    std::vector<share_bundle> bundles;
    for (const auto& c : clients) {
      for (auto& sb : c.share_out()) bundles.push_back(std::move(sb));
    }
    const auto start = clock_type::now();
    for (const auto& sb : bundles) {
      const auto bytes = encode_sealed_shares(clients[sb.from], sb, enc.at(sb.to), 0);
      clients[sb.to].receive(decode_sealed_shares(bytes, 0, clients[sb.to], enc));
    }
    r.bundle = seconds_since(start) / double(bundles.size());
  }
  {
    // The masking stage of 3 rounds of 16 clients (the complete graph, no dropout): seconds per
    // pair or self mask as the protocol spends them, pair keys included. Not mask_words on its
    // own: alone, each call's two L-word buffers are freed at once and glibc may hand the heap's
    // top back and fault it in again on the next call.
    const std::size_t n = 16;
    round_setup setup{1, n / 2, complete_graph(n)};
    const std::vector<std::vector<std::uint64_t>> inputs(n, std::vector<std::uint64_t>(length, 1));
    const std::vector<bool> gone(n, false);
    std::vector<double> t;
    for (int rep = 0; rep < 3; ++rep) {
      stage_times st;
      setup.round = std::uint64_t(rep + 1);
      if (!run_round(setup, inputs, gone, length, st)) {
        rolora::detail::raise<rolora::value_error>("secagg_cost: a calibration round summed wrong");
      }
      t.push_back(st.masking / double(n * n));
    }
    std::sort(t.begin(), t.end());
    r.stream = t[1];
  }
  return r;
}

// One configuration: n clients of degree `degree` (every one), threshold t, `dropped` of them
// leaving after the share stage.
struct config {
  std::size_t n = 0, degree = 0, threshold = 0, dropped = 0;
  bool complete = false;
};

// The estimated seconds of a round, by stage, from the measured rates; Shamir split and
// reconstruct timed at this t and degree.
stage_times estimate(const config& c, const rates& r) {
  const double n = double(c.n), deg = double(c.degree), d = double(c.dropped), s = n - d;
  const key256 secret = random_seed();
  const auto shares = split(secret, c.degree, c.threshold);
  const double split_s =
      per_call(1, [&](int) { sink = sink + split(secret, c.degree, c.threshold)[0].x; });
  const double recon_s = per_call(1, [&](int) { sink = sink + reconstruct(shares)[0]; });
  stage_times e;
  e.keys = n * r.client_keys;
  e.shares = n * 2 * split_s + n * deg * r.bundle;
  e.masking = s * (deg + 1) * r.stream;
  // A dropped client's surviving neighbours: about s / n of its degree.
  e.unmask = s * (recon_s + r.stream) + d * (recon_s + r.pair_key) + d * deg * (s / n) * r.stream;
  return e;
}

// Surviving neighbours of each client when `gone` have left.
std::vector<std::size_t> surviving_neighbours(const neighbour_graph& g,
                                              const std::vector<bool>& gone) {
  std::vector<std::size_t> out(g.size(), 0);
  for (std::size_t i = 0; i < g.size(); ++i) {
    for (std::size_t j : g.neighbours(i)) out[i] += gone[j] ? 0 : 1;
  }
  return out;
}

// Clients whose seed (survivors) or key (dropped, with a surviving neighbour) has fewer than t
// answering neighbours: the round fails if any.
std::size_t short_of_threshold(const neighbour_graph& g, const std::vector<bool>& gone,
                               std::size_t t) {
  const auto alive = surviving_neighbours(g, gone);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const bool needed = !gone[i] || alive[i] > 0;
    if (needed && alive[i] < t) ++bad;
  }
  return bad;
}

// `count` clients drawn at random, skipping a client whose leaving would leave a neighbour
// with fewer than t surviving neighbours. Fewer than `count` when no such set was found.
std::vector<bool> feasible_dropouts(const neighbour_graph& g, std::size_t t, std::size_t count,
                                    std::mt19937_64& rng) {
  const std::size_t n = g.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> gone(n, false);
  auto alive = surviving_neighbours(g, gone);
  std::size_t taken = 0;
  for (std::size_t i : order) {
    if (taken == count) break;
    bool ok = true;
    for (std::size_t j : g.neighbours(i)) ok = ok && alive[j] > t;
    if (!ok) continue;
    gone[i] = true;
    ++taken;
    for (std::size_t j : g.neighbours(i)) --alive[j];
  }
  return gone;
}

// A uniform draw of `count` clients.
std::vector<bool> uniform_dropouts(std::size_t n, std::size_t count, std::mt19937_64& rng) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> gone(n, false);
  for (std::size_t i = 0; i < count; ++i) gone[order[i]] = true;
  return gone;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--length L] [--quick] [--skip-above S]\n"
      "  The cost of secure aggregation (secagg/masking.hpp) per round on one thread, by stage,\n"
      "  for n in {20, 100, 1000} clients, the complete and the random k-regular graph\n"
      "  (k = logarithmic_degree(n)), 0%%, 10%% and 30%% of the clients dropped before their\n"
      "  masked input; a Markdown table. Exits 1 when an unmasked sum is wrong.\n"
      "  --length L      64-bit words per input (default 8900)\n"
      "  --quick         n in {20, 100} only\n"
      "  --skip-above S  skip a configuration estimated above S seconds (default 60)\n",
      argv0);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t length = 8900;
  bool quick = false;
  double skip_above = 60.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(argv[0]);
      return 0;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--length" && i + 1 < argc) {
      length = std::size_t(std::strtoull(argv[++i], nullptr, 10));
    } else if (a == "--skip-above" && i + 1 < argc) {
      skip_above = std::strtod(argv[++i], nullptr);
    } else {
      std::fprintf(stderr, "%s: unknown or incomplete argument '%s'\n", argv[0], a.c_str());
      usage(argv[0]);
      return 2;
    }
  }
  if (length == 0) {
    std::fprintf(stderr, "%s: --length must be >= 1\n", argv[0]);
    return 2;
  }

  try {
    std::printf("# Secure aggregation cost per round (bench/secagg_cost.cpp)\n\n");
    std::printf("CPU: %s; threads: 1 (of %u hardware threads)\n", cpu_model().c_str(),
                std::thread::hardware_concurrency());
    std::printf("input: L = %zu words of 64 bits (%.1f KiB per client)\n", length,
                double(length) * 8 / 1024);
    const rates r = measure_rates(length);
    std::printf(
        "rates: pair_key %.1f us; one pair or self mask in the masking stage of a 16-client "
        "round %.1f us (%.2f GB/s, pair key included); mask_words called alone %.1f us (%.2f "
        "GB/s); libsodium's ChaCha20 alone %.2f GB/s; a sealed bundle out and in %.1f us; a "
        "client's keys + advertise %.1f us\n\n",
        1e6 * r.pair_key, 1e6 * r.stream, double(length) * 8 / r.stream / 1e9, 1e6 * r.mask_only,
        double(length) * 8 / r.mask_only / 1e9, double(length) * 8 / r.chacha / 1e9, 1e6 * r.bundle,
        1e6 * r.client_keys);
    std::fflush(stdout);

    std::printf(
        "| n | graph | k | t | dropped | keys + advertise (s) | shares (s) | masking (s) | mask "
        "GB/s | unmask (s) | total (s) | plain sum (s) | total / plain | estimate (s) | on CPU "
        "|\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    std::fflush(stdout);

    std::vector<std::string> notes;
    double total_wall = 0, total_cpu = 0;
    std::uint64_t round = 1;
    const std::vector<std::size_t> sizes =
        quick ? std::vector<std::size_t>{20, 100} : std::vector<std::size_t>{20, 100, 1000};
    for (std::size_t n : sizes) {
      // The inputs: uniform doubles in [-1, 1], encoded for a sum of n.
      const codec cd(1.0, 24, n);
      std::vector<std::vector<std::uint64_t>> inputs(n);
      {
        std::mt19937_64 rng(n);
        std::uniform_real_distribution<double> u(-1.0, 1.0);
        std::vector<double> x(length);
        for (std::size_t p = 0; p < n; ++p) {
          for (double& v : x) v = u(rng);
          inputs[p] = cd.encode(x, 1000 + p);
        }
      }
      std::vector<double> plain_runs;
      for (int rep = 0; rep < 5; ++rep) {
        std::vector<std::uint64_t> acc(length, 0);
        const auto start = clock_type::now();
        for (const auto& in : inputs) rolora::secagg::detail::add_into(acc, in);
        plain_runs.push_back(seconds_since(start));
        sink = sink + acc[0];
      }
      const double plain = median(plain_runs);

      for (bool complete : {true, false}) {
        const std::size_t k = complete ? n - 1 : logarithmic_degree(n);
        const std::size_t t = k / 2 + 1;
        const char* name = complete ? "complete" : "random k-regular";
        for (int percent : {0, 10, 30}) {
          const std::size_t count = (n * std::size_t(percent) + 50) / 100;
          const config c{n, k, t, count, complete};
          const stage_times est = estimate(c, r);
          const double est_total = est.total();
          if (est_total > skip_above) {
            std::printf(
                "| %zu | %s | %zu | %zu | %zu (%d%%) | skipped (estimated %.0f s: keys %.1f, "
                "shares %.0f, masking %.0f, unmask %.0f) | - | - | - | - | - | %.3g | - | %.0f "
                "| - |\n",
                n, name, k, t, count, percent, est_total, est.keys, est.shares, est.masking,
                est.unmask, plain, est_total);
            std::fflush(stdout);
            continue;
          }
          round_setup setup{round, t,
                            complete ? complete_graph(n)
                                     : random_regular_graph(n, k, key256{std::uint8_t(n % 251)})};
          std::mt19937_64 rng(7 * n + std::size_t(percent));
          const std::vector<bool> gone = feasible_dropouts(setup.graph, t, count, rng);
          const auto taken = std::size_t(std::count(gone.begin(), gone.end(), true));
          if (taken != count) {
            std::printf(
                "| %zu | %s | %zu | %zu | %zu (%d%%) | no drop set keeps t answers |"
                " - | - | - | - | - | %.3g | - | %.3g | - |\n",
                n, name, k, t, count, percent, plain, est_total);
            continue;
          }
          if (count > 0) {
            std::size_t failing = 0;
            const int draws = 100;
            std::size_t worst = 0;
            for (int dr = 0; dr < draws; ++dr) {
              const std::size_t bad =
                  short_of_threshold(setup.graph, uniform_dropouts(n, count, rng), t);
              failing += bad > 0 ? 1 : 0;
              worst = std::max(worst, bad);
            }
            if (failing > 0) {
              char buf[256];
              std::snprintf(buf, sizeof buf,
                            "n = %zu, %s (k = %zu, t = %zu), %d%% dropped: %zu of %d uniform "
                            "draws fail the round (up to %zu clients short of t answers)",
                            n, name, k, t, percent, failing, draws, worst);
              notes.emplace_back(buf);
            }
          }

          // Repetitions: up to 5 while a round is short; the median of each stage.
          std::vector<double> keys_s, shares_s, masking_s, unmask_s;
          double spent = 0, wall_all = 0, cpu_all = 0;
          for (int rep = 0; rep < 5 && (rep < 3 || spent < 2.0); ++rep) {
            setup.round = round++;
            stage_times st;
            if (!run_round(setup, inputs, gone, length, st)) {
              std::printf(
                  "\nERROR: n = %zu, %s, %d%% dropped: the unmasked sum differs from the "
                  "plain sum of the survivors' inputs\n",
                  n, name, percent);
              return 1;
            }
            keys_s.push_back(st.keys);
            shares_s.push_back(st.shares);
            masking_s.push_back(st.masking);
            unmask_s.push_back(st.unmask);
            spent += st.total();
            wall_all += st.total();
            cpu_all += st.cpu;
          }
          stage_times m{median(keys_s), median(shares_s), median(masking_s), median(unmask_s), 0};
          total_wall += wall_all;
          total_cpu += cpu_all;
          const double mask_bytes = double(n - count) * double(k + 1) * double(length) * 8;
          std::printf(
              "| %zu | %s | %zu | %zu | %zu (%d%%) | %.4g | %.4g | %.4g | %.2f | %.4g | %.4g | "
              "%.3g | %.0f | %.3g | %.0f%% |\n",
              n, name, k, t, count, percent, m.keys, m.shares, m.masking,
              mask_bytes / m.masking / 1e9, m.unmask, m.total(), plain, m.total() / plain,
              est_total, 100 * cpu_all / wall_all);
          std::fflush(stdout);
        }
      }
    }
    std::printf(
        "\nStages in seconds of one thread per round (all clients and the server together; the "
        "median of 3 to 5 rounds; the first round after new inputs is often slower). mask GB/s: "
        "(degree + 1) * L * 8 bytes of mask words per "
        "surviving client over the masking stage, pair keys included. plain sum: the server "
        "adding n inputs of L words. estimate: from the rates above (skip above %.0f s). on CPU: "
        "the thread's CPU time over the wall time of the rounds (below 100%%: other processes "
        "had the core; %.0f%% over all rows). Every unmasked sum equalled the plain sum of the "
        "survivors' inputs.\n",
        skip_above, total_wall > 0 ? 100 * total_cpu / total_wall : 0.0);
    if (!notes.empty()) {
      std::printf(
          "\nDropped sets are drawn so that every needed seed and key keeps t answering "
          "neighbours; a uniform draw would not always:\n");
      for (const auto& note : notes) std::printf("- %s\n", note.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "secagg_cost: %s\n", e.what());
    return 1;
  }
  return 0;
}
