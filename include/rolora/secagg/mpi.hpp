// Secure aggregation over MPI: secagg::mpi_transport, a round_transport (core/concepts.hpp) that
// runs round.hpp's protocol between rank 0 (the server) and the client ranks of an
// rolora::mpi::transport (client c on rank 1 + c mod (P - 1)), and hands the server one
// secure_sum. Each client's protocol state (its key pairs and self-mask seed, the shares it
// holds) lives on its rank for the round; rank 0 routes what it cannot read. Needs MPI
// (rolora::mpi) and libsodium (rolora::secagg).
//
// One round t: five round trips on each client's tag 1 + c, as frames (below). Rank 0 sends,
// the client answers:
//   download   D: m, the clip bit, the shared factors, whether the      r ready, or x refused
//              products go too (FlexLoRA, FedEx-LoRA), the download
//              (the client trained, checked its update as the server would, and encoded it:
//              secagg::train_and_encode)
//   setup      S: its protocol id p, n parties, the threshold t          a its advertisement
//   directory  K: its neighbours' advertisements                         s its share bundles,
//                                                                        each sealed to its
//                                                                        recipient
//   routing    R: the masking set, the bundles addressed to it           m its loss, masked input
//   unmask     U: the request                                            u its answer
// Without masks (secagg_config::masks = false, the reference) the setup is C (its p) and m
// carries the encoding in the clear. Each stage waits for its answers up to the carrier's
// client_timeout (0: for ever); a client silent at a stage is gone from it on, with round.hpp's
// consequences: absent from the sum before its masked input, its masks removed with the
// survivors' shares after it. The parties, protocol ids, graph, threshold, encodings and byte
// counts are secagg::in_process's, so a run over MPI equals the in-process one byte for byte
// (ctest mpi.secagg_*), dropouts included. A frame that does not decode, or is of another round,
// client or stage, is logged and discarded; a client whose own step fails answers x with the
// reason and is gone from that stage on.
//
// The frames are frame.hpp's; tag 0 from rank 0 ends serve().
#pragma once
#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <rolora/core/error.hpp>
#include <rolora/federated/message.hpp>
#include <rolora/mpi/transport.hpp>
#include <rolora/secagg/frame.hpp>
#include <rolora/secagg/round.hpp>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rolora::secagg {

class mpi_transport {
 public:
  // Over `carrier`'s communicator, client placement, client_timeout and log; `carrier` outlives
  // this.
  explicit mpi_transport(rolora::mpi::transport& carrier) : mpi_(carrier) {}
  mpi_transport(const mpi_transport&) = delete;
  mpi_transport& operator=(const mpi_transport&) = delete;
  ~mpi_transport() { sends_.release(true); }

  // Testing, on the client ranks: whether client `client` is gone (silent) before stage `s` of
  // `round`, as secagg::in_process::drop.
  std::function<bool(std::size_t client, std::size_t round, stage s)> drop;

  bool is_server() const { return mpi_.is_server(); }

  // Rank 0, inside rolora::run_round: the protocol with the reporting clients of `plan`.
  template <class Server, class Task>
  secure_sum exchange(Server& server, const round_plan& plan, std::vector<Task>& tasks) {
    namespace fr = frames;
    const secagg_config& sa = secure_config_of(server, "mpi_transport");
    const federation_config& config = server.config();
    if (tasks.size() + 1 > std::size_t(mpi_.tag_upper_bound())) {
      rolora::detail::raise<config_error>("secagg::mpi_transport: ", tasks.size(),
                                          " clients need tags up to ", tasks.size(),
                                          ", this MPI allows ", mpi_.tag_upper_bound());
    }
    const std::uint64_t t = plan.round;
    num_clients_ = tasks.size();
    sends_.release(false);
    secure_sum out;
    const std::size_t m = plan.reporting.size();
    const bool clip_bits = server.secure_clip_bits();
    const bool products = server.secure_products(plan);
    const input_codec codec(sa, std::max<std::size_t>(m, 1), clip_bits ? 2 : 1);
    const std::size_t length = encoded_length(server, plan);

    // Download -> ready or refused.
    const bool keep = config.keep_optimizer_state;
    for (std::size_t c : plan.reporting) {
      send(c, {'D',
               t,
               c,
               {fr::numbers({m, clip_bits, plan.shares.a, plan.shares.b, products}),
                encode_download(server.download(plan, c), server.upload_factors(plan), keep)}});
    }
    std::vector<std::size_t> party;  // protocol id -> the federation's client id
    for (auto& [c, f] : collect(plan.reporting, t, "ready", 'r', &out.rejected)) party.push_back(c);
    std::sort(out.rejected.begin(), out.rejected.end(),  // in client order, as in-process
              [](const auto& a, const auto& b) { return a.client < b.client; });
    if (party.size() == 1) {  // the sum would be its update: it keeps it to itself
      out.rejected.push_back({party[0],
                              "the only client of the round under secure aggregation (the sum "
                              "would be its update)"});
      party.clear();
    }
    const std::size_t n = party.size();
    std::map<std::size_t, std::vector<std::uint64_t>> masked;  // protocol id -> y
    std::map<std::size_t, double> losses;
    const auto finish = [&](const std::vector<std::uint64_t>& sum) {
      for (const auto& [p, y] : masked) {
        out.summed.push_back(party[p]);
        out.losses.push_back(losses.at(p));
      }
      out.sum =
          masked.empty() ? std::vector<double>(length, 0.0) : codec.decode_sum(sum, masked.size());
      out.clipped = std::size_t(out.sum.back());
      out.sum.pop_back();
      return out;
    };
    // The masked (or clear) inputs of `from` (protocol ids): y and loss, checked and counted.
    const auto take_inputs = [&](const std::vector<std::size_t>& from) {
      for (auto& [c, f] : collect(ids_of(party, from), t, "masked input", 'm')) {
        const std::size_t p = protocol_id(party, c);
        const auto& bytes = fr::part(f, 1);
        auto [who, y] = decode_masked_input(bytes, t, length);
        if (who != p) {
          rolora::detail::raise<value_error>("secagg: client ", c,
                                             "'s masked input names protocol id ", who);
        }
        out.bytes.masked_input += bytes.size();
        double loss = 0;
        const auto bits = fr::numbers_of(f, 0, 1).front();
        std::memcpy(&loss, &bits, sizeof loss);
        losses[p] = loss;
        masked[p] = std::move(y);
      }
    };

    if (!sa.masks) {  // the reference: the same encodings summed in the clear
      std::vector<std::size_t> all(n);
      for (std::size_t p = 0; p < n; ++p) {
        all[p] = p;
        send(party[p], {'C', t, party[p], {fr::numbers({p})}});
      }
      take_inputs(all);
      std::vector<std::uint64_t> sum(length, 0);
      for (const auto& [p, y] : masked) rolora::secagg::detail::add_into(sum, y);
      return finish(sum);
    }
    if (n == 0) return finish({});

    round_setup setup{t, 0, round_graph(n, sa.neighbours, config.seed, t)};
    setup.threshold = round_threshold(setup.graph, sa.threshold);

    // Setup -> advertisements.
    for (std::size_t p = 0; p < n; ++p) {
      send(party[p], {'S', t, party[p], {fr::numbers({p, n, setup.threshold})}});
    }
    key_directory keys;
    std::map<std::size_t, std::vector<std::uint8_t>> adverts;  // protocol id -> its message
    std::vector<std::size_t> all(n);
    for (std::size_t p = 0; p < n; ++p) all[p] = p;
    for (auto& [c, f] : collect(ids_of(party, all), t, "advertise", 'a')) {
      const std::size_t p = protocol_id(party, c);
      const auto& bytes = fr::part(f, 0);
      const advertisement a = decode_advertise(bytes, t);
      if (a.client != p) {
        rolora::detail::raise<value_error>("secagg: client ", c,
                                           "'s advertisement names protocol id ", a.client);
      }
      out.bytes.advertise += bytes.size();
      keys[p] = a.mask_public_key;
      adverts[p] = bytes;
    }

    // Directory -> sealed share bundles, routed by their envelopes.
    std::vector<std::size_t> advertised;
    for (const auto& [p, bytes] : adverts) {
      advertised.push_back(p);
      fr::frame k{'K', t, party[p], {}};
      for (std::size_t j : setup.graph.neighbours(p)) {
        if (!adverts.count(j)) continue;
        k.parts.push_back(adverts[j]);
        out.bytes.key_directory += adverts[j].size();
      }
      send(party[p], k);
    }
    std::map<std::size_t, std::vector<std::vector<std::uint8_t>>> inbox;  // recipient -> bundles
    key_directory masking_set;  // the clients that completed the share stage
    for (auto& [c, f] : collect(ids_of(party, advertised), t, "share keys", 's')) {
      const std::size_t p = protocol_id(party, c);
      for (auto& bytes : f.parts) {
        const auto [from, to] = sealed_shares_route(bytes, t);
        if (from != p || !adverts.count(to)) {
          rolora::detail::raise<value_error>("secagg: client ", c, " (protocol id ", p,
                                             ") sent a bundle from ", from, " to ", to);
        }
        out.bytes.shares += bytes.size();
        inbox[to].push_back(std::move(bytes));
      }
      masking_set[p] = keys.at(p);
    }

    // Routing -> masked inputs.
    std::vector<std::size_t> sharing, ids;
    for (const auto& [p, pk] : masking_set) ids.push_back(p);
    for (const auto& [p, pk] : masking_set) {
      sharing.push_back(p);
      fr::frame r{'R', t, party[p], {fr::number_list(ids)}};
      for (auto& bytes : inbox[p]) r.parts.push_back(std::move(bytes));
      send(party[p], r);
    }
    take_inputs(sharing);

    // Unmask: the request to every party whose masked input came, the answers back.
    const auto request_bytes = encode_unmask_request(make_request(masking_set, masked), t);
    std::vector<std::size_t> asked;
    for (const auto& [p, y] : masked) {
      asked.push_back(p);
      out.bytes.unmask_request += request_bytes.size();
      send(party[p], {'U', t, party[p], {request_bytes}});
    }
    std::vector<unmask_answer> answers;
    for (auto& [c, f] : collect(ids_of(party, asked), t, "unmask", 'u')) {
      const auto& bytes = fr::part(f, 0);
      out.bytes.unmask_answer += bytes.size();
      answers.push_back(decode_unmask_answer(bytes, t));
      if (answers.back().from != protocol_id(party, c)) {
        rolora::detail::raise<value_error>(
            "secagg: client ", c, "'s unmask answer names protocol id ", answers.back().from);
      }
    }
    return finish(unmask_sum(setup, masking_set, masked, answers, length));
  }

  // Rank 0, after complete_round: logs the clients the server did not sum and why.
  void finish_round(const round_plan& plan, round_report& report) const {
    for (const auto& r : report.rejected) {
      log("round %zu: client %zu dropped: %s\n", plan.round, r.client, r.reason.c_str());
    }
  }

  // Rank 0: the federation is over. When a client was silent, what it may still send is awaited
  // up to client_timeout and discarded, so that no client rank is left blocked sending it.
  void finish() {
    if (silent_ && mpi_.options().client_timeout > 0) {
      for (int r = 1; r < mpi_.size(); ++r) send_to_rank(r, 0, {});
      const auto deadline =
          rolora::mpi::detail::clock::now() + seconds(mpi_.options().client_timeout);
      MPI_Status status;
      while (rolora::mpi::detail::poll(mpi_.comm(), MPI_ANY_SOURCE, MPI_ANY_TAG, status, deadline))
        rolora::mpi::detail::receive(mpi_.comm(), status);
    } else {
      for (int r = 1; r < mpi_.size(); ++r) send_to_rank(r, 0, {});
    }
    sends_.release(true);
  }

  void barrier() { mpi_.barrier(); }
  int abort(int code) { return mpi_.abort(code); }

  // Ranks 1..P-1: each hosted client's side of the protocol (tasks[c]), until rank 0's finish().
  template <class Backend, class Task>
  void serve(std::vector<Task>& tasks, const federation_config& config) {
    namespace fr = frames;
    if (is_server()) {
      rolora::detail::raise<config_error>("secagg::mpi_transport: serve() on rank 0");
    }
    if (!config.secure_aggregation) {
      rolora::detail::raise<config_error>(
          "secagg::mpi_transport: the federation's config.secure_aggregation is not set");
    }
    const secagg_config& sa = *config.secure_aggregation;
    std::map<std::size_t, party_state> state;  // hosted client -> this round's
    MPI_Status status;
    for (;;) {
      rolora::mpi::detail::poll(mpi_.comm(), 0, MPI_ANY_TAG, status, std::nullopt);
      const auto bytes = rolora::mpi::detail::receive(mpi_.comm(), status);
      if (status.MPI_TAG == 0) break;
      const std::size_t c = std::size_t(status.MPI_TAG - 1);
      std::uint64_t round = 0;
      try {
        if (c >= tasks.size() || mpi_.host_of(c) != mpi_.rank()) {
          rolora::detail::raise<value_error>("a message for client ", c,
                                             ", not hosted on this rank");
        }
        const fr::frame f = fr::decode(bytes);
        round = f.round;
        if (f.client != c) {
          rolora::detail::raise<value_error>("a frame for client ", f.client, " on client ", c,
                                             "'s tag");
        }
        if (f.kind == 'D') state[c] = {};
        party_state& s = state[c];
        if (f.kind != 'D' && (s.round != f.round || !s.trained)) {
          rolora::detail::raise<value_error>("a '", f.kind, "' frame of round ", f.round,
                                             " without that round's download");
        }
        if (s.gone) continue;
        const auto answer = step<Backend>(s, f, tasks[c], config, sa);
        if (answer) send_to_rank(0, int(c + 1), fr::encode(*answer));
      } catch (const error& e) {
        std::fprintf(stderr, "rank %d: client %zu: %s\n", mpi_.rank(), c, e.what());
        state[c].gone = true;
        send_to_rank(0, int(c + 1), fr::encode({'x', round, c, {to_bytes(e.message())}}));
      }
      sends_.release(false);
    }
    sends_.release(true);
  }

 private:
  struct party_state {
    std::uint64_t round = 0;
    bool trained = false, gone = false;
    std::size_t id = 0;  // protocol id
    trained_input input;
    std::optional<client> protocol;
    key_directory mask_keys, encryption_keys;  // its neighbours'
  };
  // The client's answer to rank 0's frame `f` (none: it is silent from here on).
  template <class Backend, class Task>
  std::optional<frames::frame> step(party_state& s, const frames::frame& f, Task& task,
                                    const federation_config& config, const secagg_config& sa) {
    namespace fr = frames;
    const std::uint64_t t = f.round;
    const std::size_t c = f.client;
    const auto gone = [&](stage at) {
      s.gone = s.gone || (drop && drop(c, t, at));
      return s.gone;
    };
    switch (f.kind) {
      case 'D': {
        const auto head = fr::numbers_of(f, 0, 5);
        auto d = decode_download<Backend>(fr::part(f, 1));
        if (d.download.client != c || d.download.round != t) {
          rolora::detail::raise<value_error>("the download names client ", d.download.client,
                                             " and round ", d.download.round);
        }
        const input_codec codec(sa, std::max<std::size_t>(head[0], 1), head[1] ? 2 : 1);
        s.round = t;
        s.trained = true;
        s.input =
            train_and_encode(task, std::move(d.download), config, codec,
                             factor_set{head[2] != 0, head[3] != 0}, head[1] != 0, head[4] != 0);
        if (!s.input.refused.empty()) {
          s.gone = true;
          return fr::frame{'x', t, c, {to_bytes(s.input.refused)}};
        }
        if (gone(stage::advertise)) return std::nullopt;
        return fr::frame{'r', t, c, {}};
      }
      case 'C': {  // no masks: the encoding in the clear
        if (gone(stage::share_keys) || gone(stage::masked_input)) return std::nullopt;
        const std::size_t p = fr::numbers_of(f, 0, 1).front();
        return fr::frame{'m', t, c, {loss_bytes(s), encode_masked_input(p, s.input.encoding, t)}};
      }
      case 'S': {
        const auto v = fr::numbers_of(f, 0, 3);
        round_setup setup{t, 0, round_graph(v[1], sa.neighbours, config.seed, t)};
        setup.threshold = round_threshold(setup.graph, sa.threshold);
        if (setup.threshold != v[2]) {
          rolora::detail::raise<value_error>("the setup's threshold ", v[2], ", expected ",
                                             setup.threshold, " for ", v[1], " parties");
        }
        s.id = v[0];
        s.protocol.emplace(s.id, setup);
        return fr::frame{
            'a',
            t,
            c,
            {encode_advertise(
                {s.id, s.protocol->mask_public_key(), s.protocol->encryption_public_key()}, t)}};
      }
      case 'K': {
        require_protocol(s, f);
        for (const auto& bytes : f.parts) {
          const advertisement a = decode_advertise(bytes, t);
          s.mask_keys[a.client] = a.mask_public_key;
          s.encryption_keys[a.client] = a.encryption_public_key;
        }
        if (gone(stage::share_keys)) return std::nullopt;
        fr::frame out{'s', t, c, {}};
        for (const auto& bundle : s.protocol->share_out()) {
          const auto key = s.encryption_keys.find(bundle.to);
          if (key == s.encryption_keys.end()) continue;  // it did not advertise: it is out
          out.parts.push_back(encode_sealed_shares(*s.protocol, bundle, key->second, t));
        }
        return out;
      }
      case 'R': {
        require_protocol(s, f);
        key_directory published;
        for (std::uint64_t id : fr::numbers_of(f, 0, 0)) {
          if (const auto it = s.mask_keys.find(id); it != s.mask_keys.end())
            published[id] = it->second;
        }
        for (std::size_t i = 1; i < f.parts.size(); ++i) {
          s.protocol->receive(decode_sealed_shares(f.parts[i], t, *s.protocol, s.encryption_keys));
        }
        if (gone(stage::masked_input)) return std::nullopt;
        return fr::frame{
            'm',
            t,
            c,
            {loss_bytes(s),
             encode_masked_input(s.id, s.protocol->masked(s.input.encoding, published), t)}};
      }
      case 'U': {
        require_protocol(s, f);
        if (gone(stage::unmask)) return std::nullopt;
        return fr::frame{'u',
                         t,
                         c,
                         {encode_unmask_answer(
                             s.protocol->answer(decode_unmask_request(fr::part(f, 0), t)), t)}};
      }
      default:
        rolora::detail::raise<value_error>("a frame of unknown kind ", int(f.kind));
    }
  }

  static void require_protocol(const party_state& s, const frames::frame& f) {
    if (!s.protocol) {
      rolora::detail::raise<value_error>("a '", f.kind, "' frame before the round's setup");
    }
  }
  static std::vector<std::uint8_t> to_bytes(std::string_view text) {
    return {text.begin(), text.end()};
  }
  static std::vector<std::uint8_t> loss_bytes(const party_state& s) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &s.input.loss, sizeof bits);
    return frames::numbers({bits});
  }
  static std::size_t protocol_id(const std::vector<std::size_t>& party, std::size_t c) {
    return std::size_t(std::lower_bound(party.begin(), party.end(), c) - party.begin());
  }
  static std::vector<std::size_t> ids_of(const std::vector<std::size_t>& party,
                                         const std::vector<std::size_t>& protocol_ids) {
    std::vector<std::size_t> out;
    for (std::size_t p : protocol_ids) out.push_back(party[p]);
    return out;
  }
  static rolora::mpi::detail::clock::duration seconds(double s) {
    return std::chrono::duration_cast<rolora::mpi::detail::clock::duration>(
        std::chrono::duration<double>(s));
  }

  // Rank 0: the frames of kind `kind` of round t from the clients `from` (increasing), each
  // within client_timeout of the stage's start; by client. An x frame is that client's failure:
  // with `refused`, its reason goes there (a refused update); else it is logged. A client that
  // does not answer in time is logged and gone from the stage on.
  std::map<std::size_t, frames::frame> collect(const std::vector<std::size_t>& from,
                                               std::uint64_t t, const char* stage_name, char kind,
                                               std::vector<rejected_update>* refused = nullptr) {
    namespace fr = frames;
    std::map<std::size_t, fr::frame> got;
    std::set<std::size_t> waiting(from.begin(), from.end());
    std::optional<rolora::mpi::detail::clock::time_point> deadline;
    if (mpi_.options().client_timeout > 0) {
      deadline = rolora::mpi::detail::clock::now() + seconds(mpi_.options().client_timeout);
    }
    MPI_Status status;
    while (!waiting.empty() &&
           rolora::mpi::detail::poll(mpi_.comm(), MPI_ANY_SOURCE, MPI_ANY_TAG, status, deadline)) {
      const auto bytes = rolora::mpi::detail::receive(mpi_.comm(), status);
      const int tag = status.MPI_TAG;
      if (tag < 1 || std::size_t(tag) > num_clients_ ||
          mpi_.host_of(std::size_t(tag - 1)) != status.MPI_SOURCE) {
        log("round %zu: a message with tag %d from rank %d discarded (no client of it)\n",
            std::size_t(t), tag, status.MPI_SOURCE);
        continue;
      }
      const std::size_t c = std::size_t(tag - 1);
      fr::frame f;
      try {
        f = fr::decode(bytes);
      } catch (const error& e) {
        log("round %zu: an undecodable message from client %zu discarded: %s\n", std::size_t(t), c,
            e.what());
        continue;
      }
      if (f.round != t || f.client != c || !waiting.count(c) || (f.kind != kind && f.kind != 'x')) {
        log("round %zu: a '%c' frame of round %zu from client %zu discarded (awaiting %s)\n",
            std::size_t(t), f.kind, std::size_t(f.round), c, stage_name);
        continue;
      }
      waiting.erase(c);
      if (f.kind == 'x') {
        const std::string why = fr::text_of(f, 0);
        if (refused) {
          refused->push_back({c, why});
        } else {
          log("round %zu: client %zu failed at %s: %s\n", std::size_t(t), c, stage_name,
              why.c_str());
        }
        continue;
      }
      got.emplace(c, std::move(f));
    }
    for (std::size_t c : waiting) {
      silent_ = true;
      log("round %zu: client %zu silent at %s for --client-timeout %g s: gone from it on\n",
          std::size_t(t), c, stage_name, mpi_.options().client_timeout);
    }
    return got;
  }

  void send(std::size_t client, const frames::frame& f) {
    send_to_rank(mpi_.host_of(client), int(client + 1), frames::encode(f));
  }
  void send_to_rank(int rank, int tag, std::vector<std::uint8_t> bytes) {
    sends_.post(std::move(bytes), rank, tag, mpi_.comm());
  }
  template <class... Args>
  void log(const char* format, Args... args) const {
    if (std::FILE* out = mpi_.options().log) {
      std::fprintf(out, format, args...);
      std::fflush(out);
    }
  }

  rolora::mpi::transport& mpi_;
  rolora::mpi::detail::pending_sends sends_;
  std::size_t num_clients_ = 0;
  bool silent_ = false;  // a client was silent at some stage: finish() drains what it may send
};

}  // namespace rolora::secagg
