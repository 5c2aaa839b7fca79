// federated/server.hpp, client.hpp and checkpoint.hpp: the round split into roles, uploads treated
// as hostile input (every class dropped with its reason, or failing the round with nothing
// changed), min_clients, the reports of completed rounds attached to a failing run, and
// checkpoint + resume giving the bits of an uninterrupted run.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <rolora/federated/checkpoint.hpp>
#include <rolora/federated/message.hpp>

#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

namespace {
// The round and client of the rolora error `f` throws as type E (fails the test if it does not).
template <class E, class F>
error_context context_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.context();
  }
  FAIL("expected an exception");
  return {};
}
}  // namespace

namespace {

template <class Backend>
theory::linear_problem<Backend> four_clients() {
  theory::linear_problem_config c;
  c.dim = 12;
  c.out_dim = 10;
  c.rank = 2;
  c.clients = 4;
  c.samples = 40;
  c.noise = 0.01;
  c.seed = 11;
  return theory::make_linear_problem<Backend>(c);
}

template <class Backend>
adapter_set<Backend> adapters() {
  lora_config c;
  c.r = 2;
  c.lora_alpha = 4.0;
  return adapter_set<Backend>({{theory::module_name, 10, 12}}, c, 5);
}

template <class Backend>
federation_config config(bad_update_policy on_bad) {
  federation_config c;
  c.num_rounds = 3;
  c.local_steps = 2;
  c.local_optimizer = sgd{0.2};
  c.on_bad_update = on_bad;
  return c;
}

// Every per-client stream at work at once: client sampling, dropout, minibatches, kept AdamW
// moments. What resuming and transports must reproduce bit for bit.
template <class Backend>
federation_config streams_config(std::size_t rounds) {
  federation_config c = config<Backend>(bad_update_policy::fail);
  c.num_rounds = rounds;
  c.clients_per_round = 3;
  c.client_dropout = 0.2;
  c.batch_size = 16;
  c.local_optimizer = adamw{0.05};
  c.keep_optimizer_state = true;
  c.seed = 4;
  return c;
}

template <class Backend>
using fedit_server = federation_server<Backend, train_both, fedavg>;
template <class Backend>
using corruption = std::function<void(client_update<Backend>&)>;

// One round composed by hand: the server's plan and downloads, the clients' local training, and
// client `victim`'s upload corrupted on its way to the server.
template <class Backend, class Task>
round_report round_with(fedit_server<Backend>& server, std::vector<Task>& tasks, std::size_t victim,
                        const corruption<Backend>& corrupt) {
  const round_plan plan = server.begin_round(tasks.size());
  std::vector<client_update<Backend>> uploads;
  for (std::size_t c : plan.reporting) {
    uploads.push_back(train_locally(tasks[c], server.download(plan, c), server.config()));
    if (c == victim) corrupt(uploads.back());
  }
  return server.complete_round(plan, std::move(uploads));
}

// A matrix like `m` with entry (i, j) set to v.
template <class Backend>
typename Backend::matrix with_entry(const typename Backend::matrix& m, index_t i, index_t j,
                                    double v) {
  auto h = Backend::to_host(m);
  h(i, j) = static_cast<typename Backend::scalar>(v);
  return Backend::from_host(h);
}

struct hostile_class {
  const char* name;
  const char* reason;  // a part of the reason the server gives
};

template <class Backend>
std::vector<std::pair<hostile_class, corruption<Backend>>> hostile_uploads() {
  const std::string m = theory::module_name;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  using up = client_update<Backend>;
  return {
      {{"NaN", "lora_B holds non-finite"},
       [=](up& u) { u.adapters.at(m).B = with_entry<Backend>(u.adapters.at(m).B, 3, 1, nan); }},
      {{"Inf", "lora_A holds non-finite"},
       [=](up& u) { u.adapters.at(m).A = with_entry<Backend>(u.adapters.at(m).A, 0, 7, -inf); }},
      {{"1e30", "magnitude 1e+30, above max_abs_entry"},
       [=](up& u) { u.adapters.at(m).B = with_entry<Backend>(u.adapters.at(m).B, 0, 0, 1e30); }},
      {{"wrong shape", "lora_A expected [2, 12], got [12, 2]"},
       [=](up& u) { u.adapters.at(m).A = Backend::zeros(12, 2); }},
      {{"wrong rank", "lora_A expected [2, 12], got [3, 12]"},
       [=](up& u) {
         u.adapters.at(m).A = Backend::zeros(3, 12);
         u.adapters.at(m).B = Backend::zeros(10, 3);
       }},
      {{"missing module", "missing from the update"},
       [](up& u) { u.adapters = adapter_set<Backend>{}; }},
      {{"extra module", "module 'extra' client 2: not a module"},
       [=](up& u) { u.adapters.insert("extra", u.adapters.at(m)); }},
      {{"extra module to save", "module to save 'head' client 2: not a module"},
       [](up& u) { u.adapters.add_module_to_save("head", Backend::zeros(2, 2)); }},
      {{"zero samples", "sample count must be finite and >= 1, got 0"},
       [](up& u) { u.num_samples = 0; }},
      {{"negative samples", "sample count must be finite and >= 1, got -40"},
       [](up& u) { u.num_samples = -40; }},
      {{"wrong round", "upload for round 7, expected round 0"}, [](up& u) { u.round = 7; }},
      {{"unknown client", "client 9: not a client of this round"}, [](up& u) { u.client = 9; }},
      {{"scaling", "scaling 100, expected the downloaded 2"},
       [=](up& u) { u.adapters.at(m).scaling = 100; }},
  };
}

// A task that uploads NaN: its gradients are NaN from its `poison_from`-th step on (A's first,
// so the first factor the server finds non-finite is lora_A).
template <class Backend>
struct poisoned_task {
  theory::linear_regression_task<Backend> inner;
  std::size_t poison_from = 0;
  std::size_t steps = 0;

  std::size_t num_samples() const { return inner.num_samples(); }
  double loss(const adapter_set<Backend>& a) const { return inner.loss(a); }
  double loss_and_grad(const adapter_set<Backend>& a, std::span<const std::size_t> batch,
                       factor_set trains, gradient_set<Backend>& grads) {
    const double loss = inner.loss_and_grad(a, batch, trains, grads);
    if (steps++ >= poison_from) {
      for (auto& [name, g] : grads.adapters) {
        g.dA = with_entry<Backend>(g.dA, 0, 0, std::numeric_limits<double>::quiet_NaN());
        g.dB = with_entry<Backend>(g.dB, 0, 0, std::numeric_limits<double>::quiet_NaN());
      }
    }
    return loss;
  }
};

template <class Backend>
std::vector<poisoned_task<Backend>> with_poisoned(const theory::linear_problem<Backend>& p,
                                                  std::size_t victim, std::size_t poison_from) {
  std::vector<poisoned_task<Backend>> tasks;
  for (std::size_t c = 0; c < p.clients.size(); ++c) {
    tasks.push_back(
        {p.clients[c], c == victim ? poison_from : std::numeric_limits<std::size_t>::max()});
  }
  return tasks;
}

}  // namespace

TEST_CASE_TEMPLATE(
    "hostile uploads: dropped with their reason, same bits as without the client; or the round "
    "fails changing nothing",
    Backend, ROLORA_TEST_BACKENDS) {
  auto p = four_clients<Backend>();
  const std::size_t victim = 2;
  // The reference: the same round with the victim's data never there (full batches: no client's
  // update depends on its id, so clients 0, 1, 3 compute exactly what they compute below).
  std::vector<theory::linear_regression_task<Backend>> others{p.clients[0], p.clients[1],
                                                              p.clients[3]};
  fedit_server<Backend> without(train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail),
                                adapters<Backend>());
  const auto reference = round_with(without, others, 99, {});
  const auto clean_once = [&] {
    fedit_server<Backend> s(train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail),
                            adapters<Backend>());
    round_with(s, p.clients, 99, {});
    return s.global();
  }();
  CHECK(!test::bit_equal(clean_once, without.global()));  // the victim's update matters

  for (const auto& [hostile, corrupt] : hostile_uploads<Backend>()) {
    CAPTURE(hostile.name);
    fedit_server<Backend> drop(train_both{}, fedavg{}, config<Backend>(bad_update_policy::drop),
                               adapters<Backend>());
    const auto report = round_with(drop, p.clients, victim, corrupt);
    CHECK(report.participants == std::vector<std::size_t>{0, 1, 3});
    CHECK(report.dropped == std::vector<std::size_t>{2});
    REQUIRE(report.rejected.size() == 1);
    CHECK(report.rejected[0].client ==
          (std::string(hostile.name) == "unknown client" ? 9 : victim));
    CHECK(report.rejected[0].reason.find(hostile.reason) != std::string::npos);
    CHECK(test::bit_equal(drop.global(), without.global()));
    CHECK(report.train_loss == reference.train_loss);
    CHECK(report.aggregation_error == reference.aggregation_error);
    CHECK(drop.next_round() == 1);

    fedit_server<Backend> fail(train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail),
                               adapters<Backend>());
    const auto before = fail.global();
    const auto msg = message_of<error>([&] { round_with(fail, p.clients, victim, corrupt); });
    CHECK(msg.find("round 0: ") != std::string::npos);
    CHECK(msg.find(hostile.reason) != std::string::npos);
    CHECK(test::bit_equal(fail.global(), before));
    CHECK(fail.next_round() == 0);
    // The round and the client are fields of the error, not only words of its message.
    const auto where = context_of<error>([&] { round_with(fail, p.clients, victim, corrupt); });
    CHECK(where.round == std::size_t{0});
    CHECK(where.client == (std::string(hostile.name) == "unknown client" ? 9 : victim));
    // Nothing else changed either: the same round, now clean, gives the clean bits.
    round_with(fail, p.clients, 99, {});
    CHECK(test::bit_equal(fail.global(), clean_once));
  }
}

TEST_CASE_TEMPLATE("hostile uploads: a second upload of a client is refused, its first one merged",
                   Backend, ROLORA_TEST_BACKENDS) {
  auto p = four_clients<Backend>();
  fedit_server<Backend> s(train_both{}, fedavg{}, config<Backend>(bad_update_policy::drop),
                          adapters<Backend>());
  const round_plan plan = s.begin_round(4);
  std::vector<client_update<Backend>> uploads;
  for (std::size_t c : plan.reporting)
    uploads.push_back(train_locally(p.clients[c], s.download(plan, c), s.config()));
  auto twice = uploads[1];
  twice.adapters.at(theory::module_name).B = Backend::zeros(10, 2);
  uploads.push_back(twice);
  const auto report = s.complete_round(plan, std::move(uploads));
  CHECK(report.participants == std::vector<std::size_t>{0, 1, 2, 3});
  REQUIRE(report.rejected.size() == 1);
  CHECK(report.rejected[0].reason == "client 1: a second upload in the round");
  fedit_server<Backend> clean(train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail),
                              adapters<Backend>());
  round_with(clean, p.clients, 99, {});
  CHECK(test::bit_equal(s.global(), clean.global()));
}

TEST_CASE_TEMPLATE(
    "the in-process federation drops a NaN-uploading client, or fails; min_clients; run keeps "
    "the reports before a failing round",
    Backend, ROLORA_TEST_BACKENDS) {
  auto p = four_clients<Backend>();
  auto tasks = with_poisoned(p, 2, 0);
  std::vector<theory::linear_regression_task<Backend>> others{p.clients[0], p.clients[1],
                                                              p.clients[3]};

  federation<Backend, train_both, fedavg> dropping(
      train_both{}, fedavg{}, config<Backend>(bad_update_policy::drop), adapters<Backend>());
  federation<Backend, train_both, fedavg> without(
      train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail), adapters<Backend>());
  const auto reports = dropping.run(tasks);
  without.run(others);
  REQUIRE(reports.size() == 3);
  for (const auto& r : reports) {
    CHECK(r.dropped == std::vector<std::size_t>{2});
    REQUIRE(r.rejected.size() == 1);
    CHECK(r.rejected[0].reason ==
          "module 'linear' client 2: lora_A holds non-finite values (NaN or inf)");
  }
  CHECK(test::bit_equal(dropping.global(), without.global()));

  // Fewer good updates than min_clients: the round fails, naming the reasons; nothing changes.
  auto strict = config<Backend>(bad_update_policy::drop);
  strict.min_clients = 4;
  federation<Backend, train_both, fedavg> quorum(train_both{}, fedavg{}, strict,
                                                 adapters<Backend>());
  const auto before = quorum.global();
  const auto msg = message_of<value_error>([&] { quorum.run_round(tasks); });
  CHECK(msg.find("round 0: 3 usable update(s) of 4 sampled clients (0 dropped out, 1 rejected), "
                 "fewer than "
                 "min_clients = 4; module 'linear' client 2: lora_A holds non-finite") !=
        std::string::npos);
  CHECK(test::bit_equal(quorum.global(), before));
  CHECK(quorum.next_round() == 0);
  const auto quorum_failed = context_of<value_error>([&] { quorum.run_round(tasks); });
  CHECK(quorum_failed.round == std::size_t{0});
  CHECK(!quorum_failed.client);  // the round failed, no one client
  strict.min_clients = 0;
  CHECK_THROWS_AS((federation<Backend, train_both, fedavg>(train_both{}, fedavg{}, strict, before)),
                  config_error);

  // Under fail, a client that turns bad in round 2 stops run(); the two rounds before are kept.
  auto late = with_poisoned(p, 1, 2 * 2);  // two local steps per round
  federation<Backend, train_both, fedavg> failing(
      train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail), adapters<Backend>());
  try {
    failing.run(late);
    FAIL("expected the run to fail in round 2");
  } catch (const value_error& e) {
    CHECK(std::string(e.what()).find(
              "[rolora.value_error] round 2: module 'linear' client 1: lora_A") == 0);
    CHECK(e.round() == std::size_t{2});
    CHECK(e.client() == std::size_t{1});
    CHECK(e.message().starts_with("module 'linear' client 1: lora_A holds non-finite"));
    const auto* completed = dynamic_cast<const failed_run*>(&e);
    REQUIRE(completed != nullptr);
    REQUIRE(completed->reports.size() == 2);
    CHECK(completed->reports[1].round == 1);
  }
  CHECK(failing.next_round() == 2);
}

namespace {

// A fresh, empty directory under the system's temporary directory, removed with the object.
struct scratch_dir {
  std::filesystem::path path;
  explicit scratch_dir(const std::string& name)
      : path(std::filesystem::temp_directory_path() /
             ("rolora_test_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
  }
  ~scratch_dir() { std::filesystem::remove_all(path); }
};

bool same_report(const round_report& x, const round_report& y) {
  return x.round == y.round && x.participants == y.participants && x.dropped == y.dropped &&
         x.train_loss == y.train_loss &&
         (x.aggregation_error == y.aggregation_error ||
          (x.aggregation_error != x.aggregation_error &&
           y.aggregation_error != y.aggregation_error)) &&
         x.bytes_up == y.bytes_up && x.bytes_down == y.bytes_down &&
         x.total_bytes_up == y.total_bytes_up && x.total_bytes_down == y.total_bytes_down &&
         x.epsilon == y.epsilon && x.clip_norm == y.clip_norm;
}

// Runs `rounds` rounds, checkpoints, resumes in a new federation and runs to the end: the same
// global and client adapters and the same reports as one uninterrupted run.
template <class Backend, class Policy, class Aggregator>
void check_resume(Policy policy, Aggregator aggregator, federation_config c, std::size_t rounds,
                  const std::string& name) {
  CAPTURE(name);
  auto p = four_clients<Backend>();
  scratch_dir dir(name);
  using fed = federation<Backend, Policy, Aggregator>;
  fed straight(policy, aggregator, c, adapters<Backend>());
  const auto all = straight.run(p.clients);
  fed first(policy, aggregator, c, adapters<Backend>());
  for (std::size_t t = 0; t < rounds; ++t) first.run_round(p.clients);
  const nlohmann::json identity{{"data", "four_clients"}};
  save_checkpoint(dir.path, first.server(), identity, nlohmann::json{{"rows", rounds}});
  first.run_round(p.clients);
  save_checkpoint(dir.path, first.server(), identity,
                  nlohmann::json{{"rows", rounds + 1}});  // replaces it
  fed resumed(policy, aggregator, c, adapters<Backend>());
  CHECK(load_checkpoint(dir.path, resumed.server(), identity) ==
        nlohmann::json{{"rows", rounds + 1}});
  CHECK(resumed.next_round() == rounds + 1);
  const auto rest = resumed.run(p.clients);
  REQUIRE(rest.size() + rounds + 1 == all.size());
  for (std::size_t i = 0; i < rest.size(); ++i) CHECK(same_report(rest[i], all[rounds + 1 + i]));
  CHECK(test::bit_equal(resumed.global(), straight.global()));
  for (std::size_t client = 0; client < p.clients.size(); ++client) {
    CHECK(test::bit_equal(resumed.client_view(client), straight.client_view(client)));
  }
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 2);  // latest and one checkpoint directory
}

}  // namespace

TEST_CASE_TEMPLATE(
    "checkpoint and resume: the bits of an uninterrupted run, for local factors, kept moments, "
    "residuals, sampling and dropout",
    Backend, ROLORA_TEST_BACKENDS) {
  federation_config c = streams_config<Backend>(6);
  check_resume<Backend>(fedsa{}, fedavg{}, c, 2, "fedsa");
  check_resume<Backend>(alternating{}, fedavg{}, c, 3, "alternating");
  c.keep_optimizer_state = false;
  c.local_optimizer = sgd{0.1, 0.9};
  check_resume<Backend>(train_both{}, fedex_residual{}, c, 1, "fedex");
}

TEST_CASE_TEMPLATE(
    "checkpoint: another config, policy, model or identity is refused naming the difference; "
    "damaged files are refused; the server is unchanged",
    Backend, ROLORA_TEST_BACKENDS) {
  auto p = four_clients<Backend>();
  scratch_dir dir("refusals");
  const auto c = config<Backend>(bad_update_policy::fail);
  federation<Backend, alternating, fedavg> fed(alternating{}, fedavg{}, c, adapters<Backend>());
  fed.run_round(p.clients);
  const nlohmann::json identity{{"data", "four_clients"}};
  save_checkpoint(dir.path, fed.server(), identity);

  const auto refusal = [&](auto& other, const nlohmann::json& id) {
    const auto before = other.global();
    const auto msg =
        message_of<config_error>([&] { load_checkpoint(dir.path, other.server(), id); });
    CHECK(test::bit_equal(other.global(), before));
    CHECK(other.next_round() == 0);
    return msg;
  };
  auto steps = c;
  steps.local_steps = 3;
  federation<Backend, alternating, fedavg> more_steps(alternating{}, fedavg{}, steps,
                                                      adapters<Backend>());
  CHECK(refusal(more_steps, identity).find("it has config.local_steps = 2; this run has 3") !=
        std::string::npos);
  federation<Backend, freeze_a, fedavg> other_policy(freeze_a{}, fedavg{}, c, adapters<Backend>());
  CHECK(
      refusal(other_policy, identity).find("policy = \"alternating\"; this run has \"freeze_a\"") !=
      std::string::npos);
  federation<Backend, alternating, fedavg> same(alternating{}, fedavg{}, c, adapters<Backend>());
  CHECK(refusal(same, {{"data", "other"}})
            .find("identity.data = \"four_clients\"; this run has \"other\"") != std::string::npos);
  lora_config r3;
  r3.r = 3;
  r3.lora_alpha = 4.0;
  federation<Backend, alternating, fedavg> bigger(
      alternating{}, fedavg{}, c, adapter_set<Backend>({{theory::module_name, 10, 12}}, r3, 5));
  CHECK(refusal(bigger, identity).find("model.adapters.linear.rank = 2; this run has 3") !=
        std::string::npos);
  auto more_rounds = c;  // num_rounds and threads change no bit: accepted
  more_rounds.num_rounds = 9;
  more_rounds.threads = 2;
  federation<Backend, alternating, fedavg> longer(alternating{}, fedavg{}, more_rounds,
                                                  adapters<Backend>());
  load_checkpoint(dir.path, longer.server(), identity);
  CHECK(longer.next_round() == 1);
  CHECK(test::bit_equal(longer.global(), fed.global()));

  // A torn tensor file, a deep server.json or a `latest` naming no checkpoint: value_error,
  // nothing changed.
  const auto ckpt = dir.path / "ckpt-0";
  std::filesystem::resize_file(ckpt / "server.safetensors",
                               std::filesystem::file_size(ckpt / "server.safetensors") - 3);
  federation<Backend, alternating, fedavg> victim(alternating{}, fedavg{}, c, adapters<Backend>());
  const auto before = victim.global();
  CHECK_THROWS_AS(load_checkpoint(dir.path, victim.server(), identity), value_error);
  std::ofstream(ckpt / "server.json") << std::string(100000, '[');  // a hostile, deep file
  CHECK(message_of<value_error>([&] {
          load_checkpoint(dir.path, victim.server(), identity);
        }).find("server.json is damaged: arrays and objects nest deeper than 64") !=
        std::string::npos);
  std::ofstream(dir.path / "latest") << "../../etc\n";
  CHECK(message_of<value_error>([&] {
          load_checkpoint(dir.path, victim.server(), identity);
        }).find("must name a ckpt-<number> directory, got '../../etc'") != std::string::npos);
  CHECK(test::bit_equal(victim.global(), before));
  CHECK(victim.next_round() == 0);
}

TEST_CASE_TEMPLATE(
    "upload messages: a bit-exact round trip; every truncation and every malformed field is a "
    "rolora error; decoded uploads still meet the server's checks",
    Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  auto p = four_clients<Backend>();
  fedit_server<Backend> s(train_both{}, fedavg{}, config<Backend>(bad_update_policy::drop),
                          adapters<Backend>());
  const round_plan plan = s.begin_round(4);
  const auto down = s.download(plan, 1);
  const auto up = train_locally(p.clients[1], down, s.config());
  const std::string m = theory::module_name;

  const auto bytes = encode_upload(up, both_factors);
  const auto back = decode_upload<Backend>(bytes, down.adapters);
  CHECK(back.round == 0);
  CHECK(back.client == 1);
  CHECK(back.num_samples == up.num_samples);
  CHECK(back.loss == up.loss);
  CHECK(test::bit_equal(back.adapters, up.adapters));
  const auto b_only = decode_upload<Backend>(encode_upload(up, only_b), down.adapters);
  CHECK(test::max_abs_diff<Backend>(b_only.adapters.at(m).B, up.adapters.at(m).B) == 0);
  CHECK(test::max_abs_diff<Backend>(b_only.adapters.at(m).A, down.adapters.at(m).A) ==
        0);  // not carried

  for (std::size_t n = 0; n < bytes.size(); ++n) {
    CAPTURE(n);
    CHECK_THROWS_AS(decode_upload<Backend>(std::span(bytes.data(), n), down.adapters), error);
  }

  const tensor_dtype dtype = sizeof(T) == 4 ? tensor_dtype::f32 : tensor_dtype::f64;
  const std::map<std::string, std::string> good{
      {"rolora.message", "upload"}, {"round", "0"},  {"client", "1"},
      {"num_samples", "40"},        {"loss", "0.5"}, {"factors", "B"}};
  const std::map<std::string, tensor_data> b{
      {"lora/linear/lora_B", make_tensor(Backend::to_host(up.adapters.at(m).B), dtype)}};
  const auto decode = [&](const std::map<std::string, tensor_data>& tensors,
                          std::map<std::string, std::string> meta) {
    return decode_upload<Backend>(serialize_safetensors(tensors, meta), down.adapters);
  };
  CHECK(decode(b, good).client == 1);
  const auto refused = [&](const std::string& key, const std::string& value) {
    auto meta = good;
    if (value.empty()) {
      meta.erase(key);
    } else {
      meta[key] = value;
    }
    return message_of<error>([&] { decode(b, meta); });
  };
  CHECK(refused("rolora.message", "download").find("must be 'upload'") != std::string::npos);
  CHECK(refused("round", "").find("metadata 'round' is missing") != std::string::npos);
  CHECK(refused("round", "7x").find("metadata 'round' must be a number, got '7x'") !=
        std::string::npos);
  CHECK(refused("client", "-1").find("metadata 'client' must be a number") != std::string::npos);
  CHECK(refused("num_samples", "lots").find("'num_samples' must be a number") != std::string::npos);
  CHECK(refused("factors", "C").find("'factors' must be A, B or AB") != std::string::npos);
  // Client-level DP's clip bit: "1" when the change was clipped, absent otherwise.
  CHECK(refused("clipped", "0").find("'clipped' must be 1 when present") != std::string::npos);
  CHECK_FALSE(decode(b, good).clipped);
  auto with_bit = good;
  with_bit["clipped"] = "1";
  CHECK(decode(b, with_bit).clipped);
  auto clipped_up = up;
  clipped_up.clipped = true;
  const auto clipped_bytes = encode_upload(clipped_up, both_factors);
  CHECK(clipped_bytes.size() == encoded_size(upload_layout(clipped_up, both_factors, false)));
  CHECK(decode_upload<Backend>(clipped_bytes, down.adapters).clipped);
  CHECK(refused("factors", "AB").find("lora_A missing from the upload message") !=
        std::string::npos);
  auto extra = b;
  extra.emplace("lora/other/lora_B", b.at("lora/linear/lora_B"));
  CHECK(message_of<shape_error>([&] {
          decode(extra, good);
        }).find("tensor 'lora/other/lora_B' is not a factor") != std::string::npos);
  auto flat = b;
  flat["lora/linear/lora_B"].shape = {20};
  CHECK(message_of<shape_error>([&] { decode(flat, good); }).find("must be 2-D, got [20]") !=
        std::string::npos);
  // A legal empty tensor of a huge extent is refused by its shape before any conversion (it hung
  // the server once: the conversion walked its 2^62 empty columns).
  auto huge = b;
  huge["lora/linear/lora_B"] = {dtype, {0, std::uint64_t(1) << 62}, {}};
  CHECK(message_of<shape_error>([&] { decode(huge, good); }) ==
        "[rolora.shape_error] module 'linear' client 1: lora_B expected " +
            detail::shape_string(Backend::rows(up.adapters.at(m).B),
                                 Backend::cols(up.adapters.at(m).B)) +
            ", got [0, 4611686018427387904]");

  // Decoding is not trusting: a NaN that arrives well-formed is still dropped by the server.
  auto poisoned = up;
  poisoned.adapters.at(m).B =
      with_entry<Backend>(up.adapters.at(m).B, 1, 1, std::numeric_limits<double>::quiet_NaN());
  std::vector<client_update<Backend>> uploads;
  for (std::size_t c : plan.reporting) {
    uploads.push_back(decode_upload<Backend>(
        encode_upload(
            c == 1 ? poisoned : train_locally(p.clients[c], s.download(plan, c), s.config()),
            both_factors),
        s.download(plan, c).adapters));
  }
  const auto report = s.complete_round(plan, std::move(uploads));
  CHECK(report.dropped == std::vector<std::size_t>{1});
  REQUIRE(report.rejected.size() == 1);
  CHECK(report.rejected[0].reason ==
        "module 'linear' client 1: lora_B holds non-finite values (NaN or inf)");
}

TEST_CASE_TEMPLATE(
    "download messages: a bit-exact round trip with residuals, modules to save and kept moments; "
    "every truncation and malformed field is a rolora error; encoded sizes are exact",
    Backend, ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  auto p = four_clients<Backend>();
  auto initial = adapters<Backend>();
  host_matrix<T> residual(10, 12), head(3, 2);
  for (index_t i = 0; i < 10; ++i)
    for (index_t j = 0; j < 12; ++j) residual(i, j) = T(0.01 * double(i - j));
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 2; ++j) head(i, j) = T(double(i + 10 * j) / 3.0);
  initial.at(theory::module_name).residual = Backend::from_host(residual);
  auto cfg = config<Backend>(bad_update_policy::drop);
  cfg.keep_optimizer_state = true;
  cfg.local_optimizer = adamw{0.01};
  federation_server<Backend, fedsa, fedavg> s(fedsa{}, fedavg{}, cfg, initial);
  const std::string m = theory::module_name;
  // Round 0 gives client 1 moments and a local B; round 1's download carries both.
  auto run_round = [&] {
    const round_plan plan = s.begin_round(4);
    std::vector<client_update<Backend>> ups;
    for (std::size_t c : plan.reporting) {
      auto down = s.download(plan, c);
      ups.push_back(train_locally(p.clients[c], std::move(down), s.config()));
    }
    return s.complete_round(plan, std::move(ups));
  };
  const auto r0 = run_round();
  const round_plan plan = s.begin_round(4);
  auto down = s.download(plan, 1);
  REQUIRE(down.optimizer.steps() == 2);
  CHECK(s.upload_factors(plan) == both_factors);  // A shared, B kept for the client
  CHECK(s.encoded_download_size(plan, 1) ==
        encode_download(down, s.upload_factors(plan), true).size());
  // A module to save with a name JSON must escape travels too.
  down.adapters.add_module_to_save("head\"\n\x01\xc3\xa9", Backend::from_host(head));

  const auto bytes = encode_download(down, only_a, true);
  CHECK(bytes.size() == encoded_size(download_layout(down, only_a, true)));
  const auto back = decode_download<Backend>(bytes);
  CHECK(back.download.round == 1);
  CHECK(back.download.client == 1);
  CHECK(back.download.trains == plan.trains);
  CHECK(back.uploads == only_a);
  CHECK(back.keep_optimizer);
  CHECK(test::bit_equal(back.download.adapters, down.adapters));
  CHECK(test::max_abs_diff<Backend>(back.download.adapters.at(m).residual,
                                    down.adapters.at(m).residual) == 0);
  CHECK(back.download.optimizer.steps() == 2);
  const auto moments = down.optimizer.buffers();
  const auto moments_back = back.download.optimizer.buffers();
  REQUIRE(moments_back.size() == moments.size());
  for (const auto& [key, value] : moments) {
    CHECK(test::max_abs_diff<Backend>(moments_back.at(key), value) == 0);
  }
  // The upload answering it carries the moments too; its size is what the server counts.
  const auto up = train_locally(p.clients[1], s.download(plan, 1), s.config());
  const auto up_bytes = encode_upload(up, s.upload_factors(plan), true);
  CHECK(up_bytes.size() == s.encoded_upload_size(plan, up));
  const auto up_back = decode_upload<Backend>(up_bytes, s.download(plan, 1).adapters);
  CHECK(up_back.optimizer.steps() == up.optimizer.steps());
  CHECK(test::max_abs_diff<Backend>(up_back.optimizer.buffers().at("lora/" + m + "/b/second"),
                                    up.optimizer.buffers().at("lora/" + m + "/b/second")) == 0);
  // The report's bytes are these sizes: round 0 was reported from the same encodings.
  CHECK(r0.bytes_down_per_client > r0.residual_bytes_down / 4);
  CHECK(r0.residual_bytes_down == 4 * 10 * 12 * sizeof(T));

  for (std::size_t n = 0; n < bytes.size(); n += (n < 200 ? 1 : 7)) {
    CAPTURE(n);
    CHECK_THROWS_AS(decode_download<Backend>(std::span(bytes.data(), n)), error);
  }
  const auto file = parse_safetensors(bytes);
  const auto refused = [&](const std::string& key, const std::string& value,
                           const std::string& drop_tensor = "") {
    auto meta = file.metadata();
    if (value.empty()) {
      meta.erase(key);
    } else {
      meta[key] = value;
    }
    std::map<std::string, tensor_data> tensors;
    for (const auto& name : file.names()) {
      if (name == drop_tensor) continue;
      const auto t = file.tensor(name);
      tensors.emplace(name, tensor_data{t.dtype, t.shape, {t.bytes.begin(), t.bytes.end()}});
    }
    return message_of<error>(
        [&] { decode_download<Backend>(serialize_safetensors(tensors, meta)); });
  };
  CHECK(refused("rolora.message", "upload").find("must be 'download'") != std::string::npos);
  CHECK(refused("round", "x").find("'round' must be a number") != std::string::npos);
  CHECK(refused("trains", "C").find("'trains' must be A, B, AB or -") != std::string::npos);
  CHECK(refused("optimizer", "maybe").find("'optimizer' must be keep or fresh") !=
        std::string::npos);
  CHECK(refused("scaling/linear", "").find("'scaling/linear' is missing") != std::string::npos);
  CHECK(refused("optimizer_steps", "").find("'optimizer_steps' is missing") != std::string::npos);
  CHECK(refused("round", "1", "lora/linear/lora_B").find("has lora_A but no lora_B") !=
        std::string::npos);
  CHECK(refused("round", "1", "lora/linear/lora_A").find("no LoRA module") != std::string::npos);
  CHECK_FALSE(back.download.clip);  // no DP: no clip request

  // Client-level DP: the clip norm (shortest round-trip decimal) and the factors to clip travel.
  auto dp_down = down;
  dp_down.clip = privacy::clip_request{0.1 + 0.2, only_b};
  const auto dp_bytes = encode_download(dp_down, only_b, false);
  CHECK(dp_bytes.size() == encoded_size(download_layout(dp_down, only_b, false)));
  const auto dp_back = decode_download<Backend>(dp_bytes).download;
  REQUIRE(dp_back.clip);
  CHECK(dp_back.clip->norm == 0.1 + 0.2);  // bit for bit
  CHECK(dp_back.clip->factors == only_b);
  CHECK(refused("clip_norm", "0").find("'clip_norm' must be finite and > 0, got 0") !=
        std::string::npos);
  CHECK(refused("clip_norm", "nan").find("'clip_norm' must be") != std::string::npos);
  CHECK(refused("clip_norm", "1").find("'clip_factors' must be A, B, AB or -") !=
        std::string::npos);
  CHECK(refused("clip_factors", "AB").find("'clip_norm' is missing") != std::string::npos);
}

TEST_CASE("encoded sizes: the wire layout's size is the safetensors writer's, for any name") {
  using Backend = eigen_backend<float>;
  for (const std::string& name : std::vector<std::string>{
           "linear", "a\"b\\c", "tab\there", "\x01\x1f\x7f", "\xc3\xbcn/c\xc3\xb8", ""}) {
    CAPTURE(name);
    client_update<Backend> up;
    up.round = 123456;
    up.client = 7;
    up.num_samples = 1.0 / 3.0;
    up.loss = 1e-300;
    up.adapters.insert(name, {Backend::zeros(3, 1000), Backend::zeros(7, 3), 0.5f, {}});
    up.adapters.add_module_to_save(name + "x", Backend::zeros(11, 13));
    for (factor_set f : {only_a, only_b, both_factors}) {
      CHECK(encode_upload(up, f).size() == encoded_size(upload_layout(up, f, false)));
    }
  }
}

TEST_CASE_TEMPLATE(
    "received uploads: an undecodable message or one naming another client is that client's bad "
    "upload, dropped with its reason; its bytes count",
    Backend, ROLORA_TEST_BACKENDS) {
  auto p = four_clients<Backend>();
  fedit_server<Backend> s(train_both{}, fedavg{}, config<Backend>(bad_update_policy::drop),
                          adapters<Backend>());
  fedit_server<Backend> without(train_both{}, fedavg{}, config<Backend>(bad_update_policy::drop),
                                adapters<Backend>());
  const round_plan plan = s.begin_round(4);
  const round_plan plan2 = without.begin_round(4);
  std::vector<received_upload<Backend>> got;
  std::vector<client_update<Backend>> clean;
  std::size_t arrived = 0;
  for (std::size_t c : plan.reporting) {
    const auto up = train_locally(p.clients[c], s.download(plan, c), s.config());
    const auto bytes = encode_upload(up, plan.shares);
    arrived += c == 1 ? 5 : bytes.size();
    if (c == 1) {
      got.push_back({c, 5, std::nullopt, "safetensors: too short"});
    } else if (c == 2) {
      got.push_back(
          {c, bytes.size(), decode_upload<Backend>(bytes, s.download(plan, 3).adapters), {}});
      got.back().upload->client = 3;
    } else {
      got.push_back(
          {c, bytes.size(), decode_upload<Backend>(bytes, s.download(plan, c).adapters), {}});
      clean.push_back(up);
    }
  }
  const auto report = s.complete_round(plan, std::move(got));
  CHECK(report.dropped == std::vector<std::size_t>{1, 2});
  REQUIRE(report.rejected.size() == 2);
  CHECK(report.rejected[0].reason == "client 1: safetensors: too short");
  CHECK(report.rejected[1].reason == "client 2: its upload names client 3");
  const auto clean_report = without.complete_round(plan2, std::move(clean));
  CHECK(test::bit_equal(s.global(), without.global()));
  CHECK(report.bytes_up == arrived);
  CHECK(report.bytes_down == clean_report.bytes_down);
}

namespace {

// A round_transport written here, to show that the one round loop (rolora::run) is all a
// transport needs: the clients train in this process one after the other, in decreasing id
// order, and every message goes through its encoding both ways (the MPI transport's bytes,
// without MPI). It counts what the loop calls.
template <class Backend>
struct loopback_transport {
  std::size_t exchanges = 0, rounds_finished = 0, finishes = 0;

  bool is_server() const { return true; }
  template <class Server, class Task>
  std::vector<received_upload<Backend>> exchange(Server& server, const round_plan& plan,
                                                 std::vector<Task>& tasks) {
    ++exchanges;
    std::vector<received_upload<Backend>> got;
    for (auto it = plan.reporting.rbegin(); it != plan.reporting.rend(); ++it) {
      const std::size_t c = *it;
      std::size_t round = 0;
      const auto bytes = answer_download<Backend>(
          encode_download(server.download(plan, c), server.upload_factors(plan),
                          server.config().keep_optimizer_state),
          c, tasks[c], server.config(), round);
      CHECK(round == plan.round);
      got.push_back({c, bytes.size(), decode_upload<Backend>(bytes, server.client_view(c)), {}});
    }
    return got;
  }
  template <class B, class Task>
  void serve(std::vector<Task>&, const federation_config&) {}
  void finish_round(const round_plan&, round_report&) { ++rounds_finished; }
  void finish() { ++finishes; }
};

// The loopback transport, which hears from nobody from round `silent_from` on.
template <class Backend>
struct silent_transport : loopback_transport<Backend> {
  std::size_t silent_from = 1;
  template <class Server, class Task>
  std::vector<received_upload<Backend>> exchange(Server& server, const round_plan& plan,
                                                 std::vector<Task>& tasks) {
    if (plan.round >= silent_from) return {};
    return loopback_transport<Backend>::exchange(server, plan, tasks);
  }
};

struct round_log {
  std::vector<std::size_t> begun;
  std::size_t stop_after = 1000;
  void on_round_begin(std::size_t t) { begun.push_back(t); }
  template <class Global>
  bool on_round_end(const round_report& r, const Global&) {
    return r.round + 1 == stop_after;
  }
};

struct not_a_transport {
  bool is_server() const { return true; }
  void finish() {}
};

template <class Backend, class Policy, class Privacy = no_privacy>
void check_loopback(Policy policy, const federation_config& c, Privacy privacy = {}) {
  CAPTURE(Policy::name);
  CAPTURE(Privacy::name);
  auto p = four_clients<Backend>();
  using fed = federation<Backend, Policy, fedavg, Privacy>;
  fed reference(policy, fedavg{}, c, adapters<Backend>(), privacy);
  round_log in_process_log;
  const auto expected = reference.run(p.clients, in_process_log);

  fed carried(policy, fedavg{}, c, adapters<Backend>(), privacy);
  loopback_transport<Backend> transport;
  round_log log;
  const auto reports = rolora::run(transport, carried, p.clients, log);
  REQUIRE(reports.size() == expected.size());
  for (std::size_t i = 0; i < reports.size(); ++i) CHECK(same_report(reports[i], expected[i]));
  CHECK(test::bit_equal(carried.global(), reference.global()));
  for (std::size_t client = 0; client < p.clients.size(); ++client) {
    CHECK(test::bit_equal(carried.client_view(client), reference.client_view(client)));
  }
  CHECK(log.begun == in_process_log.begun);
  CHECK(transport.exchanges == c.num_rounds);
  CHECK(transport.rounds_finished == c.num_rounds);
  CHECK(transport.finishes == 1);

  // A callback stops the run after round 1: two rounds, then finish().
  fed stopped(policy, fedavg{}, c, adapters<Backend>(), privacy);
  loopback_transport<Backend> second;
  round_log stopper;
  stopper.stop_after = 2;
  CHECK(rolora::run(second, stopped.server(), p.clients, stopper).size() == 2);
  CHECK(stopped.next_round() == 2);
  CHECK(second.finishes == 1);
}

}  // namespace

TEST_CASE_TEMPLATE(
    "transports: a transport written in a test runs through the one round loop with the "
    "in-process bits, reports and callbacks; a failing round keeps the earlier reports",
    Backend, ROLORA_TEST_BACKENDS) {
  using task = theory::linear_regression_task<Backend>;
  static_assert(round_transport<in_process, fedit_server<Backend>, task>);
  static_assert(round_transport<loopback_transport<Backend>, fedit_server<Backend>, task>);
  static_assert(!round_transport<not_a_transport, fedit_server<Backend>, task>);

  federation_config c = streams_config<Backend>(4);
  check_loopback<Backend>(fedsa{}, c);  // local B and kept moments travel both ways
  check_loopback<Backend>(alternating{}, c);
  c.keep_optimizer_state = false;
  c.clients_per_round = 0;
  c.client_dropout = 0.0;
  check_loopback<Backend>(train_both{}, c);
  // Client-level DP: the download carries the clip norm and factors, the upload whether it was
  // clipped (adaptive clipping counts those), so remote clients clip as in-process ones do.
  privacy::client_dp dp{.clip_norm = 0.02, .noise_multiplier = 0.5, .sampling_rate = 0.75};
  dp.adaptive = privacy::adaptive_clipping{0.5, 0.3, 1.0};
  c.client_weighting = weighting::uniform;
  check_loopback<Backend>(alternating{}, c, dp);
  check_loopback<Backend>(train_both{}, c, dp);

  // No upload arrives in round 1: the error names it, the server stays after round 0, the
  // report of round 0 comes with the error, and finish() is not called.
  auto p = four_clients<Backend>();
  federation<Backend, train_both, fedavg> fed(train_both{}, fedavg{}, c, adapters<Backend>());
  silent_transport<Backend> silent;
  round_report round0;
  try {
    rolora::run(silent, fed, p.clients, [&] {
      struct keep {
        round_report& into;
        void on_round_end(const round_report& r, const adapter_set<Backend>&) { into = r; }
      };
      return keep{round0};
    }());
    FAIL("expected round 1 to fail");
  } catch (const error& e) {
    CHECK(std::string(e.what()).find("round 1: ") != std::string::npos);
    const auto* completed = dynamic_cast<const failed_run*>(&e);
    REQUIRE(completed != nullptr);
    REQUIRE(completed->reports.size() == 1);
    CHECK(same_report(completed->reports[0], round0));
  }
  CHECK(silent.finishes == 0);
  CHECK(silent.rounds_finished == 1);
  CHECK(fed.next_round() == 1);
  federation<Backend, train_both, fedavg> one(train_both{}, fedavg{}, c, adapters<Backend>());
  one.run_round(p.clients);
  CHECK(test::bit_equal(fed.global(), one.global()));
}

TEST_CASE_TEMPLATE(
    "received uploads under on_bad_update = fail: the error names the round and the channel's "
    "client in its fields and its message",
    Backend, ROLORA_TEST_BACKENDS) {
  auto p = four_clients<Backend>();
  for (const std::size_t bad : {std::size_t{0}, std::size_t{3}}) {
    CAPTURE(bad);
    fedit_server<Backend> s(train_both{}, fedavg{}, config<Backend>(bad_update_policy::fail),
                            adapters<Backend>());
    round_with(s, p.clients, 99, {});  // round 0 is clean: the failing round is 1
    const round_plan plan = s.begin_round(4);
    const auto received = [&](bool undecodable) {
      std::vector<received_upload<Backend>> got;
      for (std::size_t c : plan.reporting) {
        const auto bytes = encode_upload(
            train_locally(p.clients[c], s.download(plan, c), s.config()), plan.shares);
        if (c == bad && undecodable) {
          got.push_back({c, 5, std::nullopt, "safetensors: too short"});
        } else {
          got.push_back(
              {c, bytes.size(), decode_upload<Backend>(bytes, s.download(plan, c).adapters), {}});
          if (c == bad) got.back().upload->num_samples = -1;
        }
      }
      return got;
    };
    const auto before = s.global();
    try {
      s.complete_round(plan, received(true));
      FAIL("expected the round to fail");
    } catch (const value_error& e) {
      CHECK(std::string(e.what()) == "[rolora.value_error] round 1: client " + std::to_string(bad) +
                                         ": safetensors: too short");
      CHECK(e.round() == std::size_t{1});
      CHECK(e.client() == bad);
      CHECK(e.message() == "client " + std::to_string(bad) + ": safetensors: too short");
    }
    const auto where = context_of<value_error>([&] { s.complete_round(plan, received(false)); });
    CHECK(where.round == std::size_t{1});
    CHECK(where.client == bad);
    CHECK(test::bit_equal(s.global(), before));
    CHECK(s.next_round() == 1);
  }
}
