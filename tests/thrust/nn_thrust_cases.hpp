// The transformer on the Thrust backend against the Eigen backend
// (backend/thrust/nn_primitives.hpp), written once and compiled twice: by g++ for thrust_omp
// (test_nn_thrust_omp.cpp, in CI) and by nvcc for thrust_cuda (test_nn_thrust_cuda.cu, skipped
// without a device). The includer defines
//   ROLORA_NN_THRUST_TYPES      the backends to instantiate (float and double)
//   ROLORA_NN_THRUST_DOUBLE     the double one (finite differences)
//   ROLORA_NN_THRUST_SUFFIX     appended to every test name (" [needs device]" under CUDA)
//   ROLORA_NN_THRUST_REQUIRE()  a statement run first in each test (skips without a device)
//
// Tolerances (relative to the largest magnitude of the reference): every primitive and the
// model's logits and gradients 2e-5 (float) / 1e-12 (double) against Eigen in the same scalar
// type, the two summation orders apart; finite differences (double) 1e-6 as tests/test_nn.cpp;
// a 6-round federated run's adapters 2e-3 (float) / 1e-9 (double), the rounding differences
// compounded through 24 AdamW steps per client.
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/aggregate/fedavg.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/federated/federation.hpp>
#if !defined(__CUDACC__)
#include <unistd.h>  // getpid

#include <filesystem>
#include <rolora/io/peft.hpp>
#endif
#include <rolora/backend/thrust/nn_primitives.hpp>
#include <rolora/nn/classification_task.hpp>
#include <rolora/nn/transformer.hpp>
#include <rolora/policy/policies.hpp>
#include <string>
#include <vector>

namespace rolora::nn_thrust_test {

template <class T>
host_matrix<T> rnd(index_t rows, index_t cols, std::uint32_t tag, double scale = 1.0) {
  const random_stream rs(12345, stream::data, tag, 7);
  host_matrix<T> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<T>(scale * rs.normal(std::uint64_t(i)));
  return m;
}

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

// max |a - b| / max(max |b|, 1e-30): a from the Thrust backend, b the Eigen reference.
template <class T>
double relative_diff(const host_matrix<T>& a, const host_matrix<T>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  if (b.size() == 0) return 0.0;
  const double scale = std::max(b.template cast<double>().cwiseAbs().maxCoeff(), 1e-30);
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff() / scale;
}

template <class Backend>
host_matrix<typename Backend::scalar> host(const typename Backend::matrix& m) {
  return Backend::to_host(m);
}

inline transformer_config tiny_config(pooling pool = pooling::mean) {
  transformer_config c;
  c.vocab_size = 11;
  c.max_len = 6;
  c.d_model = 6;
  c.n_heads = 2;
  c.n_layers = 2;
  c.d_ff = 8;
  c.num_classes = 3;
  c.pool = pool;
  return c;
}
inline token_batch tiny_batch() { return {5, {3, 4, 5, 0, 0, 7, 8, 9, 10, 2}}; }
inline const std::vector<std::int32_t>& tiny_labels() {
  static const std::vector<std::int32_t> l{1, 2};
  return l;
}

// O(1) random weights (layer-norm gains around 1), as tests/test_nn.cpp, on any backend.
template <class B>
transformer_weights<B> random_weights(const transformer_config& c) {
  transformer_weights<B> w(c, 7);
  for (std::size_t p = 0; p < w.size(); ++p) {
    host_matrix<typename B::scalar> h =
        rnd<typename B::scalar>(w.rows(p), w.cols(p), 100 + std::uint32_t(p), 0.4);
    if (w.name(p).find("ln") != std::string::npos && w.name(p).ends_with(".weight"))
      h.array() += typename B::scalar(1);
    w.assign(w.name(p), h);
  }
  return w;
}
template <class B>
adapter_set<B> random_adapters(const transformer_config& c) {
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 3;
  adapter_set<B> a(lora_target_modules(c, {"all-linear"}), lc, 5);
  std::uint32_t tag = 300;
  for (auto& [name, l] : a)
    l.B = B::from_host(rnd<typename B::scalar>(l.out_features(), l.rank(), tag++, 0.5));
  a.add_module_to_save("classifier.weight", B::from_host(rnd<typename B::scalar>(3, 6, 40, 0.5)));
  a.add_module_to_save("classifier.bias", B::from_host(rnd<typename B::scalar>(3, 1, 41, 0.5)));
  return a;
}

// Sequences whose class is their second token mod 3 (tests/test_nn.cpp's synthetic task).
inline labelled_sequences synthetic_sequences(const transformer_config& c, std::size_t n,
                                              std::uint32_t tag) {
  const random_stream rs(99, stream::data, tag, 0);
  labelled_sequences d;
  d.tokens.seq_len = c.max_len;
  std::uint64_t k = 0;
  for (std::size_t s = 0; s < n; ++s) {
    const auto length = 2 + rs.below(k++, std::uint64_t(c.max_len - 1));
    for (index_t j = 0; j < c.max_len; ++j) {
      d.tokens.ids.push_back(std::uint64_t(j) < length
                                 ? std::int32_t(1 + rs.below(k++, std::uint64_t(c.vocab_size - 1)))
                                 : c.pad_id);
    }
    d.labels.push_back(d.tokens.ids[s * std::size_t(c.max_len) + 1] % 3);
  }
  return d;
}

}  // namespace rolora::nn_thrust_test

TEST_CASE_TEMPLATE("thrust nn: every primitive agrees with Eigen" ROLORA_NN_THRUST_SUFFIX, Backend,
                   ROLORA_NN_THRUST_TYPES) {
  ROLORA_NN_THRUST_REQUIRE();
  using namespace rolora;
  using namespace rolora::nn_thrust_test;
  using T = typename Backend::scalar;
  using E = eigen_backend<T>;
  using TP = nn_primitives<Backend>;
  using EP = nn_primitives<E>;
  using H = host_matrix<T>;
  const double tol = tolerance<T>();
  const auto dev = [](const H& h) { return Backend::from_host(h); };
  const index_t d = 12, heads = 3, len = 7, n = 4, big_n = len * n, vocab = 9, classes = 5;
  const H x = rnd<T>(d, big_n, 1), dy = rnd<T>(d, big_n, 2), gamma = rnd<T>(d, 1, 3),
          beta = rnd<T>(d, 1, 4);

  SUBCASE("bias, row sums, set_zero") {
    typename Backend::matrix y = dev(x), s, z = dev(x);
    H ye = x, se;
    TP::add_bias(y, dev(gamma));
    EP::add_bias(ye, gamma);
    CHECK(relative_diff(host<Backend>(y), ye) <= tol);
    TP::row_sums(y, s);
    EP::row_sums(ye, se);
    CHECK(relative_diff(host<Backend>(s), se) <= tol);
    TP::set_zero(z, d, big_n);  // same shape: zeroed in place
    CHECK(host<Backend>(z).cwiseAbs().maxCoeff() == T(0));
    TP::set_zero(z, 3, 2);
    CHECK(Backend::rows(z) == 3);
  }
  SUBCASE("layer norm forward and backward, accumulating or not") {
    typename Backend::matrix y, xh, r, dx = dev(dy), dg, db;
    H ye, xhe, re, dxe = dy, dge, dbe;
    TP::layer_norm_forward(dev(x), dev(gamma), dev(beta), T(1e-5), y, xh, r);
    EP::layer_norm_forward(x, gamma, beta, T(1e-5), ye, xhe, re);
    CHECK(relative_diff(host<Backend>(y), ye) <= tol);
    CHECK(relative_diff(host<Backend>(xh), xhe) <= tol);
    CHECK(relative_diff(host<Backend>(r), re) <= tol);
    for (const bool acc : {false, true}) {
      TP::layer_norm_backward(dev(dy), xh, r, dev(gamma), dx, acc, &dg, &db);
      EP::layer_norm_backward(dy, xhe, re, gamma, dxe, acc, &dge, &dbe);
      CHECK(relative_diff(host<Backend>(dx), dxe) <= tol);
      CHECK(relative_diff(host<Backend>(dg), dge) <= tol);
      CHECK(relative_diff(host<Backend>(db), dbe) <= tol);
    }
  }
  SUBCASE("GELU forward and backward (in place, as the transformer calls it)") {
    typename Backend::matrix y, g = dev(dy);
    H ye, ge = dy;
    TP::gelu_forward(dev(x), y);
    EP::gelu_forward(x, ye);
    CHECK(relative_diff(host<Backend>(y), ye) <= tol);
    TP::gelu_backward(dev(x), g, g);
    EP::gelu_backward(x, ge, ge);
    CHECK(relative_diff(host<Backend>(g), ge) <= tol);
  }
  SUBCASE("embedding gather and scatter-add with repeated ids") {
    const H table = rnd<T>(vocab, d, 5);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(big_n));
    for (std::size_t j = 0; j < ids.size(); ++j) ids[j] = std::int32_t((j * 5) % 4);  // repeats
    typename Backend::matrix out, dt = dev(table);
    H oute, dte = table;
    TP::embedding_forward(dev(table), ids, false, out);
    EP::embedding_forward(table, ids, false, oute);
    TP::embedding_forward(dev(table), ids, true, out);
    EP::embedding_forward(table, ids, true, oute);
    CHECK(relative_diff(host<Backend>(out), oute) <= tol);
    TP::embedding_backward(dev(dy), ids, dt);
    EP::embedding_backward(dy, ids, dte);
    CHECK(relative_diff(host<Backend>(dt), dte) <= tol);
  }
  SUBCASE("masked attention forward and backward, with PAD keys and an all-PAD sequence") {
    const H q = rnd<T>(d, big_n, 6), k = rnd<T>(d, big_n, 7), v = rnd<T>(d, big_n, 8),
            dctx = rnd<T>(d, big_n, 9);
    H valid = H::Ones(len, n);
    valid(5, 0) = valid(6, 0) = 0;
    valid(0, 1) = 0;
    valid.col(2).setZero();
    const T scale = T(1) / std::sqrt(T(d / heads));
    typename Backend::matrix p, ctx, dq, dk, dv;
    H pe, ctxe, dqe, dke, dve;
    TP::attention_forward(dev(q), dev(k), dev(v), dev(valid), heads, scale, p, ctx);
    EP::attention_forward(q, k, v, valid, heads, scale, pe, ctxe);
    CHECK(relative_diff(host<Backend>(p), pe) <= tol);
    CHECK(relative_diff(host<Backend>(ctx), ctxe) <= tol);
    const H ph = host<Backend>(p);
    CHECK(ph(5, 3) == T(0));  // a PAD key gets exactly 0
    CHECK(host<Backend>(ctx).middleCols(2 * len, len).cwiseAbs().maxCoeff() == T(0));
    TP::attention_backward(dev(q), dev(k), dev(v), p, dev(dctx), heads, scale, dq, dk, dv);
    EP::attention_backward(q, k, v, pe, dctx, heads, scale, dqe, dke, dve);
    CHECK(relative_diff(host<Backend>(dq), dqe) <= tol);
    CHECK(relative_diff(host<Backend>(dk), dke) <= tol);
    CHECK(relative_diff(host<Backend>(dv), dve) <= tol);
  }
  SUBCASE("grouped-query causal attention (hf_nn_backend), with PAD keys and a padded-first row") {
    const index_t kv_heads = 1, hd = d / heads;  // 3 query heads share one key/value head
    const H q = rnd<T>(d, big_n, 6), k = rnd<T>(hd * kv_heads, big_n, 7),
            v = rnd<T>(hd * kv_heads, big_n, 8), dctx = rnd<T>(d, big_n, 9);
    H valid = H::Ones(len, n);
    valid(5, 0) = valid(6, 0) = 0;
    valid(0, 1) = 0;  // sequence 1's query 0 has no key it may attend to (causal)
    valid.col(2).setZero();
    const T scale = T(1) / std::sqrt(T(hd));
    typename Backend::matrix p, ctx, dq, dk, dv;
    H pe, ctxe, dqe, dke, dve;
    TP::attention_forward(dev(q), dev(k), dev(v), dev(valid), heads, scale, p, ctx, kv_heads, true);
    EP::attention_forward(q, k, v, valid, heads, scale, pe, ctxe, kv_heads, true);
    CHECK(relative_diff(host<Backend>(p), pe) <= tol);
    CHECK(relative_diff(host<Backend>(ctx), ctxe) <= tol);
    const H ph = host<Backend>(p), ch = host<Backend>(ctx);
    CHECK(ph(4, 2) == T(0));  // query 2 never sees key 4 (causal)
    CHECK(ph(0, 2) > T(0));
    CHECK(ch.col(len).cwiseAbs().maxCoeff() == T(0));  // sequence 1, query 0: nothing to see
    TP::attention_backward(dev(q), dev(k), dev(v), p, dev(dctx), heads, scale, dq, dk, dv,
                           kv_heads);
    EP::attention_backward(q, k, v, pe, dctx, heads, scale, dqe, dke, dve, kv_heads);
    CHECK(Backend::rows(dk) == hd * kv_heads);
    CHECK(relative_diff(host<Backend>(dq), dqe) <= tol);
    CHECK(relative_diff(host<Backend>(dk), dke) <= tol);
    CHECK(relative_diff(host<Backend>(dv), dve) <= tol);
  }
  SUBCASE("RMSNorm, rotary, SwiGLU and tanh (hf_nn_backend)") {
    typename Backend::matrix y, xh, r, dx = dev(dy);
    H ye, xhe, re, dxe = dy;
    TP::rms_norm_forward(dev(x), dev(gamma), T(1e-6), y, xh, r);
    EP::rms_norm_forward(x, gamma, T(1e-6), ye, xhe, re);
    CHECK(relative_diff(host<Backend>(y), ye) <= tol);
    CHECK(relative_diff(host<Backend>(r), re) <= tol);
    for (const bool acc : {false, true}) {
      TP::rms_norm_backward(dev(dy), xh, r, dev(gamma), dx, acc);
      EP::rms_norm_backward(dy, xhe, re, gamma, dxe, acc);
      CHECK(relative_diff(host<Backend>(dx), dxe) <= tol);
    }
    const index_t hd = d / heads;
    const H cos = rnd<T>(hd / 2, len, 13), sin = rnd<T>(hd / 2, len, 14);
    typename Backend::matrix rot = dev(x);
    H rote = x;
    for (const bool inverse : {false, true}) {
      TP::rotary(rot, heads, hd, dev(cos), dev(sin), inverse);
      EP::rotary(rote, heads, hd, cos, sin, inverse);
      CHECK(relative_diff(host<Backend>(rot), rote) <= tol);
    }
    typename Backend::matrix m, dgate, dup, t = dev(x), dt = dev(dy);
    H me, dgatee, dupe, te = x, dte = dy;
    TP::swiglu_forward(dev(x), dev(dy), m);
    EP::swiglu_forward(x, dy, me);
    CHECK(relative_diff(host<Backend>(m), me) <= tol);
    TP::swiglu_backward(dev(x), dev(dy), dev(gamma * H::Ones(1, big_n)), dgate, dup);
    EP::swiglu_backward(x, dy, gamma * H::Ones(1, big_n), dgatee, dupe);
    CHECK(relative_diff(host<Backend>(dgate), dgatee) <= tol);
    CHECK(relative_diff(host<Backend>(dup), dupe) <= tol);
    TP::tanh_forward(t, t);  // in place, as the encoder head calls them
    EP::tanh_forward(te, te);
    CHECK(relative_diff(host<Backend>(t), te) <= tol);
    TP::tanh_backward(t, dt, dt);
    EP::tanh_backward(te, dte, dte);
    CHECK(relative_diff(host<Backend>(dt), dte) <= tol);
  }
  SUBCASE("pooling, softmax, cross-entropy with ignored targets") {
    H w = rnd<T>(len, n, 10).cwiseAbs();
    typename Backend::matrix pooled, dh;
    H pe, dhe;
    TP::weighted_pool(dev(x), dev(w), pooled);
    EP::weighted_pool(x, w, pe);
    CHECK(relative_diff(host<Backend>(pooled), pe) <= tol);
    const H dout = rnd<T>(d, n, 11);
    TP::weighted_pool_backward(dev(dout), dev(w), dh);
    EP::weighted_pool_backward(dout, w, dhe);
    CHECK(relative_diff(host<Backend>(dh), dhe) <= tol);
    const H z = rnd<T>(classes, big_n, 12, 3.0);
    std::vector<std::int32_t> t(static_cast<std::size_t>(big_n));
    for (std::size_t j = 0; j < t.size(); ++j) t[j] = j % 3 == 1 ? -1 : std::int32_t(j % 5);
    typename Backend::matrix dz, s = dev(z);
    H dze, se = z;
    const double l = TP::softmax_cross_entropy(dev(z), t, T(0.25), &dz);
    const double le = EP::softmax_cross_entropy(z, t, T(0.25), &dze);
    CHECK(std::abs(l - le) <= tol * std::abs(le));
    CHECK(relative_diff(host<Backend>(dz), dze) <= tol);
    CHECK(TP::softmax_cross_entropy(dev(z), t, T(1), nullptr) == l);
    TP::softmax_columns(s);
    EP::softmax_columns(se);
    CHECK(relative_diff(host<Backend>(s), se) <= tol);
  }
}

TEST_CASE_TEMPLATE(
    "thrust nn: the model's logits and LoRA, full-parameter and MLM gradients agree with "
    "Eigen" ROLORA_NN_THRUST_SUFFIX,
    Backend, ROLORA_NN_THRUST_TYPES) {
  ROLORA_NN_THRUST_REQUIRE();
  using namespace rolora;
  using namespace rolora::nn_thrust_test;
  using T = typename Backend::scalar;
  using E = eigen_backend<T>;
  const double tol = 10 * tolerance<T>();  // through two layers
  for (const pooling pool : {pooling::mean, pooling::first}) {
    CAPTURE(int(pool));
    const auto c = tiny_config(pool);
    const auto wt = random_weights<Backend>(c);
    const auto we = random_weights<E>(c);
    const auto at = random_adapters<Backend>(c);
    const auto ae = random_adapters<E>(c);
    transformer_workspace<Backend> wst;
    transformer_workspace<E> wse;
    CHECK(relative_diff(host<Backend>(classification_logits(wt, at, tiny_batch(), wst)),
                        classification_logits(we, ae, tiny_batch(), wse)) <= tol);
    gradient_set<Backend> gt;
    gradient_set<E> ge;
    const double lt =
        classification_loss_and_grad(wt, at, tiny_batch(), tiny_labels(), both_factors, gt, wst);
    const double le =
        classification_loss_and_grad(we, ae, tiny_batch(), tiny_labels(), both_factors, ge, wse);
    CHECK(std::abs(lt - le) <= tol * std::abs(le));
    REQUIRE(gt.adapters.size() == 12);
    for (const auto& [name, g] : ge.adapters) {
      CAPTURE(name);
      CHECK(relative_diff(host<Backend>(gt.adapters.at(name).dA), g.dA) <= tol);
      CHECK(relative_diff(host<Backend>(gt.adapters.at(name).dB), g.dB) <= tol);
    }
    for (const auto& [name, g] : ge.modules_to_save)
      CHECK(relative_diff(host<Backend>(gt.modules_to_save.at(name)), g) <= tol);
    // Full-parameter classification (pool = first) and MLM (pool = mean) steps.
    const bool mlm = pool == pooling::mean;
    const std::vector<std::int32_t> targets{-1, 6, -1, -1, -1, 1, -1, -1, 9, 3};
    auto fgt = wt.zeros_like();
    auto fge = we.zeros_like();
    const double flt =
        mlm ? mlm_loss_and_grad(wt, tiny_batch(), targets, fgt, wst)
            : classification_loss_and_grad(wt, tiny_batch(), tiny_labels(), fgt, wst);
    const double fle =
        mlm ? mlm_loss_and_grad(we, tiny_batch(), targets, fge, wse)
            : classification_loss_and_grad(we, tiny_batch(), tiny_labels(), fge, wse);
    CHECK(std::abs(flt - fle) <= tol * std::abs(fle));
    for (std::size_t p = 0; p < wt.size(); ++p) {
      CAPTURE(wt.name(p));
      const auto ref = fge.value(p);
      const double scale = ref.cwiseAbs().maxCoeff();
      const double diff =
          (host<Backend>(fgt.value(p)) - ref).template cast<double>().cwiseAbs().maxCoeff();
      // attention.k.bias has an exact gradient of 0: compare absolutely there.
      CHECK(diff <= tol * std::max(scale, 1.0));
    }
  }
}

TEST_CASE_TEMPLATE("thrust nn: LoRA gradients match finite differences" ROLORA_NN_THRUST_SUFFIX,
                   Backend, ROLORA_NN_THRUST_DOUBLE) {
  ROLORA_NN_THRUST_REQUIRE();
  using namespace rolora;
  using namespace rolora::nn_thrust_test;
  using T = typename Backend::scalar;
  if constexpr (std::is_same_v<T, double>) {
    const auto c = tiny_config();
    const auto w = random_weights<Backend>(c);
    auto adapters = random_adapters<Backend>(c);
    transformer_workspace<Backend> ws;
    gradient_set<Backend> grads;
    classification_loss_and_grad(w, adapters, tiny_batch(), tiny_labels(), both_factors, grads, ws);
    const auto f = [&] {
      return classification_loss(w, adapters, tiny_batch(), tiny_labels(), ws);
    };
    // Central differences through host copies (the matrices may live on a device).
    const auto fd_error = [&](typename Backend::matrix& param, const typename Backend::matrix& g) {
      host_matrix<T> h = Backend::to_host(param);
      const host_matrix<T> gh = Backend::to_host(g);
      const double scale = gh.cwiseAbs().maxCoeff();
      CHECK(scale > 1e-8);
      double worst = 0;
      for (index_t i = 0; i < h.size(); ++i) {
        const T old = h.data()[i];
        h.data()[i] = old + 1e-5;
        param = Backend::from_host(h);
        const double up = f();
        h.data()[i] = old - 1e-5;
        param = Backend::from_host(h);
        const double down = f();
        h.data()[i] = old;
        param = Backend::from_host(h);
        worst = std::max(worst, std::abs((up - down) / 2e-5 - gh.data()[i]));
      }
      return worst / scale;
    };
    for (auto& [name, l] : adapters) {
      CAPTURE(name);
      CHECK(fd_error(l.A, grads.adapters.at(name).dA) < 1e-6);
      CHECK(fd_error(l.B, grads.adapters.at(name).dB) < 1e-6);
    }
  }
}

TEST_CASE_TEMPLATE(
    "thrust nn: a federated RoLoRA run follows Eigen's and its step is the same bits for any "
    "thread count" ROLORA_NN_THRUST_SUFFIX,
    Backend, ROLORA_NN_THRUST_TYPES) {
  ROLORA_NN_THRUST_REQUIRE();
  using namespace rolora;
  using namespace rolora::nn_thrust_test;
  using T = typename Backend::scalar;
  using E = eigen_backend<T>;
  auto c = tiny_config();
  c.d_model = 16;
  c.d_ff = 32;
  c.max_len = 8;
  c.vocab_size = 13;
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 4;
  federation_config fc;
  fc.num_rounds = 6;
  fc.local_steps = 4;
  fc.batch_size = 16;
  fc.local_optimizer = adamw{0.03};
  const auto run = [&]<class B>(B) {
    const transformer_weights<B> model(c, 3);
    adapter_set<B> initial(lora_target_modules(c, {"all-linear"}), lc, 5);
    initial.add_module_to_save("classifier.weight", model.at("classifier.weight"));
    initial.add_module_to_save("classifier.bias", model.at("classifier.bias"));
    std::vector<classification_task<B>> tasks;
    for (std::uint32_t i = 0; i < 4; ++i) tasks.emplace_back(model, synthetic_sequences(c, 48, i));
    federation<B, alternating> fed(alternating{}, fedavg{}, fc, initial);
    fed.run(tasks);
    return std::pair{fed.global(), evaluate(model, fed.global(), synthetic_sequences(c, 200, 77))};
  };
  const auto [at, et] = run(Backend{});
  const auto [ae, ee] = run(E{});
  const double tol = std::is_same_v<T, float> ? 2e-3 : 1e-9;
  for (const auto& [name, l] : ae) {
    CAPTURE(name);
    CHECK(relative_diff(host<Backend>(at.at(name).A), l.A) <= tol);
    CHECK(relative_diff(host<Backend>(at.at(name).B), l.B) <= tol);
  }
  CHECK(std::abs(et.loss - ee.loss) <= tol * ee.loss);
  MESSAGE("test loss thrust " << et.loss << " eigen " << ee.loss << ", accuracy " << et.accuracy
                              << " / " << ee.accuracy);
#if !defined(__CUDACC__)
  {
    // The Thrust run's adapters as a PEFT directory, loaded back on Eigen: the same test loss
    // (to the scalar's rounding) and accuracy.
    const auto dir = std::filesystem::temp_directory_path() /
                     ("rolora_nn_thrust_peft_" + std::string(Backend::name) + "_" +
                      std::to_string(sizeof(T)) + "_" + std::to_string(::getpid()));
    save_peft_adapter(dir, at, lc);
    const transformer_weights<E> model(c, 3);
    const auto back = load_peft_adapter<E>(dir, ae).adapters;
    std::filesystem::remove_all(dir);
    const auto e = evaluate(model, back, synthetic_sequences(c, 200, 77));
    CHECK(std::abs(e.loss - et.loss) <= tol * et.loss);  // measured 2.8e-11 relative (double)
    CHECK(e.accuracy == et.accuracy);
  }
#endif
#if defined(_OPENMP) && !defined(__CUDACC__)
  // A step big enough for every primitive and GEMM to run in parallel (work above
  // host_parallel_min): the same bits on 1 and 2 OpenMP threads.
  auto big = c;
  big.d_model = 64;
  big.n_heads = 4;
  big.d_ff = 128;
  big.max_len = 64;
  const transformer_weights<Backend> model(big, 3);
  adapter_set<Backend> adapters(lora_target_modules(big, {"all-linear"}), lc, 5);
  for (auto& [name, l] : adapters)
    l.B = Backend::from_host(rnd<T>(l.out_features(), l.rank(), 9, 0.1));
  const auto data = synthetic_sequences(big, 32, 5);
  const auto step = [&](int threads) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    transformer_workspace<Backend> ws;
    gradient_set<Backend> g;
    const double loss = classification_loss_and_grad(model, adapters, data.tokens, data.labels,
                                                     both_factors, g, ws);
    omp_set_num_threads(before);
    return std::pair{loss, std::move(g)};
  };
  const auto [l1, g1] = step(1);
  const auto [l2, g2] = step(2);
  CHECK(l1 == l2);
  for (const auto& [name, g] : g1.adapters) {
    CAPTURE(name);
    CHECK((host<Backend>(g.dA).array() == host<Backend>(g2.adapters.at(name).dA).array()).all());
    CHECK((host<Backend>(g.dB).array() == host<Backend>(g2.adapters.at(name).dB).array()).all());
  }
#endif
}
