// nn/: the transformer's primitives and whole model against central finite differences (double),
// padding invariance, merged vs unmerged LoRA, target_modules selection, weights I/O and errors.
#include <algorithm>
#include <atomic>
#include <functional>
#include <rolora/nn/classification_task.hpp>
#include <rolora/nn/transformer.hpp>

#include "alloc_counter.hpp"  // once per binary: it replaces malloc and friends
#include "test_support.hpp"

using namespace rolora;
using rolora::test::message_of;

namespace {

using DB = eigen_backend<double>;
using DP = nn_primitives<DB>;
using mat = Eigen::MatrixXd;

// Central difference of loss() in the scalar x.
double central_difference(const std::function<double()>& loss, double& x, double h = 1e-5) {
  const double old = x;
  x = old + h;
  const double up = loss();
  x = old - h;
  const double down = loss();
  x = old;
  return (up - down) / (2 * h);
}

// max |finite difference - analytic| over every entry of `param`, relative to max |analytic|.
// Also requires a non-zero gradient, so that a check cannot pass on an all-zero result.
double relative_fd_error(mat& param, const mat& grad, const std::function<double()>& loss) {
  REQUIRE(param.rows() == grad.rows());
  REQUIRE(param.cols() == grad.cols());
  const double scale = grad.cwiseAbs().maxCoeff();
  CHECK(scale > 1e-8);
  double worst = 0;
  for (index_t i = 0; i < param.size(); ++i) {
    worst = std::max(worst, std::abs(central_difference(loss, param.data()[i]) - grad.data()[i]));
  }
  return worst / std::max(scale, 1e-300);
}

constexpr double fd_tolerance = 1e-6;

mat rnd(index_t r, index_t c, std::uint32_t tag, double scale = 1.0) {
  return test::random_matrix<double>(r, c, tag, scale);
}

// A tiny model whose weights are O(1) random (layer-norm gains around 1), so that every
// non-linearity is exercised, unlike the 0.02 init.
transformer_config tiny_config(pooling pool = pooling::mean) {
  transformer_config c;
  c.vocab_size = 11;
  c.max_len = 6;
  c.d_model = 6;
  c.n_heads = 2;
  c.n_layers = 2;
  c.d_ff = 8;
  c.num_classes = 3;
  c.pool = pool;
  c.pad_id = 0;
  return c;
}
template <class Backend>
transformer_weights<Backend> random_weights(const transformer_config& c, std::uint32_t tag = 100) {
  transformer_weights<Backend> w(c, 7);
  for (std::size_t p = 0; p < w.size(); ++p) {
    host_matrix<double> h = rnd(w.rows(p), w.cols(p), tag + std::uint32_t(p), 0.4);
    if (w.name(p).find("ln") != std::string::npos && w.name(p).ends_with(".weight"))
      h.array() += 1.0;
    w.assign(w.name(p), h.cast<typename Backend::scalar>());
  }
  return w;
}
// Two sequences of length 5; the first ends in two PADs.
token_batch tiny_batch() { return {5, {3, 4, 5, 0, 0, 7, 8, 9, 10, 2}}; }
const std::vector<std::int32_t> tiny_labels{1, 2};

template <class Backend>
adapter_set<Backend> random_adapters(const transformer_config& c,
                                     const std::vector<std::string>& targets,
                                     const std::vector<index_t>& layers = {}) {
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 3;
  adapter_set<Backend> a(lora_target_modules(c, targets, layers), lc, 5);
  std::uint32_t tag = 300;
  for (auto& [name, l] : a)
    l.B = test::random_backend_matrix<Backend>(l.out_features(), l.rank(), tag++, 0.5);
  return a;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------------

TEST_CASE("layer norm: forward normalises each column, backward matches finite differences") {
  const index_t d = 5, n = 4;
  mat x = rnd(d, n, 1), gamma = rnd(d, 1, 2).array() + 1.0, beta = rnd(d, 1, 3);
  const mat r = rnd(d, n, 4);  // loss = sum(r .* y)
  const double eps = 1e-5;
  mat y, xhat, rstd;
  DP::layer_norm_forward(x, gamma, beta, eps, y, xhat, rstd);
  for (index_t j = 0; j < n; ++j) {
    const double mean = x.col(j).mean();
    const double var = (x.col(j).array() - mean).square().mean();
    for (index_t i = 0; i < d; ++i) {
      CHECK(y(i, j) == doctest::Approx(gamma(i) * (x(i, j) - mean) / std::sqrt(var + eps) + beta(i))
                           .epsilon(1e-12));
    }
  }
  mat dx, dgamma, dbeta;
  DP::layer_norm_backward(r, xhat, rstd, gamma, dx, false, &dgamma, &dbeta);
  const auto loss = [&] {
    mat yy, xh, rs;
    DP::layer_norm_forward(x, gamma, beta, eps, yy, xh, rs);
    return r.cwiseProduct(yy).sum();
  };
  CHECK(relative_fd_error(x, dx, loss) < fd_tolerance);
  CHECK(relative_fd_error(gamma, dgamma, loss) < fd_tolerance);
  CHECK(relative_fd_error(beta, dbeta, loss) < fd_tolerance);
  // accumulate adds to what is there.
  mat acc = mat::Ones(d, n);
  DP::layer_norm_backward(r, xhat, rstd, gamma, acc, true, nullptr, nullptr);
  CHECK((acc - dx - mat::Ones(d, n)).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE_TEMPLATE("GELU is the erf form, its derivative matches finite differences", Backend,
                   ROLORA_TEST_BACKENDS) {
  using T = typename Backend::scalar;
  host_matrix<T> x(1, 7);
  x << T(-4), T(-1.5), T(-0.3), T(0), T(0.2), T(1), T(3);
  typename Backend::matrix y, dx;
  nn_primitives<Backend>::gelu_forward(Backend::from_host(x), y);
  const auto hy = Backend::to_host(y);
  for (index_t i = 0; i < x.cols(); ++i) {
    const double v = double(x(0, i));
    CHECK(double(hy(0, i)) ==
          doctest::Approx(0.5 * v * (1 + std::erf(v / std::sqrt(2.0)))).epsilon(1e-6));
  }
  if constexpr (std::is_same_v<T, double>) {
    mat xm = x, ones = mat::Ones(1, 7), dxm;
    DP::gelu_backward(xm, ones, dxm);
    const mat r = rnd(1, 7, 5);
    DP::gelu_backward(xm, r, dxm);
    const auto loss = [&] {
      mat yy;
      DP::gelu_forward(xm, yy);
      return r.cwiseProduct(yy).sum();
    };
    CHECK(relative_fd_error(xm, dxm, loss) < fd_tolerance);
  }
}

TEST_CASE("embedding: gather rows, scatter-add with repeated ids") {
  const mat table = rnd(6, 3, 6);
  const std::vector<std::int32_t> ids{2, 5, 2, 0};
  mat out;
  DP::embedding_forward(table, ids, false, out);
  for (index_t j = 0; j < 4; ++j) CHECK(out.col(j) == table.row(ids[std::size_t(j)]).transpose());
  DP::embedding_forward(table, ids, true, out);
  CHECK(out.col(1) == 2 * table.row(5).transpose());
  const mat dout = rnd(3, 4, 7);
  mat dtable = mat::Zero(6, 3);
  DP::embedding_backward(dout, ids, dtable);
  CHECK((dtable.row(2).transpose() - dout.col(0) - dout.col(2)).cwiseAbs().maxCoeff() < 1e-15);
  CHECK(dtable.row(1).cwiseAbs().maxCoeff() == 0.0);
  // Gradient of sum(r .* out) by finite differences on the table.
  mat t = table;
  const auto loss = [&] {
    mat o;
    DP::embedding_forward(t, ids, false, o);
    return dout.cwiseProduct(o).sum();
  };
  CHECK(relative_fd_error(t, dtable, loss) < fd_tolerance);
}

TEST_CASE("masked attention: PAD keys get probability 0, gradients match finite differences") {
  const index_t d = 6, heads = 2, len = 4, n = 3;
  mat q = rnd(d, len * n, 8), k = rnd(d, len * n, 9), v = rnd(d, len * n, 10);
  mat valid = mat::Ones(len, n);
  valid(2, 0) = valid(3, 0) = 0;  // sequence 0: two trailing PADs
  valid(0, 1) = 0;                // sequence 1: a PAD in front
  valid.col(2).setZero();         // sequence 2: nothing to attend to
  const double scale = 1 / std::sqrt(3.0);
  mat probs, ctx;
  DP::attention_forward(q, k, v, valid, heads, scale, probs, ctx);
  for (index_t s = 0; s < 2; ++s) {
    for (index_t h = 0; h < heads; ++h) {
      const auto p = probs.middleCols((s * heads + h) * len, len);
      for (index_t j = 0; j < len; ++j) {
        CHECK(p.col(j).sum() == doctest::Approx(1.0).epsilon(1e-13));
        for (index_t i = 0; i < len; ++i) {
          if (valid(i, s) == 0) CHECK(p(i, j) == 0.0);
        }
      }
    }
  }
  // A direct reference for sequence 1, head 1, query 2.
  {
    const index_t s = 1, h = 1, j = 2, dh = 3;
    Eigen::VectorXd sc(len);
    for (index_t i = 0; i < len; ++i)
      sc(i) = scale *
              k.col(s * len + i).segment(h * dh, dh).dot(q.col(s * len + j).segment(h * dh, dh));
    Eigen::VectorXd e = (sc.array() - sc.maxCoeff()).exp() * valid.col(s).array();
    e /= e.sum();
    const Eigen::VectorXd c = v.block(h * dh, s * len, dh, len) * e;
    CHECK((ctx.block(h * dh, s * len + j, dh, 1) - c).cwiseAbs().maxCoeff() < 1e-13);
  }
  CHECK(ctx.middleCols(2 * len, len).cwiseAbs().maxCoeff() == 0.0);
  const mat r = rnd(d, len * n, 11);
  mat dq, dk, dv;
  DP::attention_backward(q, k, v, probs, r, heads, scale, dq, dk, dv);
  const auto loss = [&] {
    mat p, c;
    DP::attention_forward(q, k, v, valid, heads, scale, p, c);
    return r.cwiseProduct(c).sum();
  };
  CHECK(relative_fd_error(q, dq, loss) < fd_tolerance);
  CHECK(relative_fd_error(k, dk, loss) < fd_tolerance);
  CHECK(relative_fd_error(v, dv, loss) < fd_tolerance);
  // Keys at PAD positions get no gradient: they are never attended to.
  CHECK(dk.middleCols(2, 2).cwiseAbs().maxCoeff() == 0.0);
  CHECK(dv.middleCols(2, 2).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("linear with LoRA and GELU MLP: dW, db, dA, dB, dx match finite differences") {
  using namespace rolora::detail::nn;
  const index_t d = 5, dff = 7, n = 6, r = 2;
  mat x = rnd(d, n, 12), w1 = rnd(dff, d, 13), b1 = rnd(dff, 1, 14), w2 = rnd(d, dff, 15),
      b2 = rnd(d, 1, 16);
  lora_adapter<DB> l1{rnd(r, d, 17), rnd(dff, r, 18), 1.5};
  const mat rr = rnd(d, n, 19);
  mat dw1, db1, dw2, db2;
  lora_gradients<DB> g1;
  const auto run = [&](bool grad, mat* dx) {
    binding<DB> bw1{&w1, grad ? &dw1 : nullptr}, bb1{&b1, grad ? &db1 : nullptr};
    binding<DB> bw2{&w2, grad ? &dw2 : nullptr}, bb2{&b2, grad ? &db2 : nullptr};
    lora_binding<DB> lo1{&l1, grad ? &g1 : nullptr}, none{};
    mat ax1, ax2, u, g, y, t, dg;
    linear_forward<DB>(bw1, bb1, lo1, x, ax1, u);
    DP::gelu_forward(u, g);
    linear_forward<DB>(bw2, bb2, none, g, ax2, y);
    if (grad) {
      linear_backward<DB>(bw2, bb2, none, both_factors, g, ax2, rr, t, &dg, false);
      DP::gelu_backward(u, dg, dg);
      linear_backward<DB>(bw1, bb1, lo1, both_factors, x, ax1, dg, t, dx, false);
    }
    return rr.cwiseProduct(y).sum();
  };
  mat dx;
  run(true, &dx);
  const auto loss = [&] { return run(false, nullptr); };
  CHECK(relative_fd_error(x, dx, loss) < fd_tolerance);
  CHECK(relative_fd_error(w1, dw1, loss) < fd_tolerance);
  CHECK(relative_fd_error(b1, db1, loss) < fd_tolerance);
  CHECK(relative_fd_error(w2, dw2, loss) < fd_tolerance);
  CHECK(relative_fd_error(b2, db2, loss) < fd_tolerance);
  CHECK(relative_fd_error(l1.A, g1.dA, loss) < fd_tolerance);
  CHECK(relative_fd_error(l1.B, g1.dB, loss) < fd_tolerance);
}

TEST_CASE("pooling + cross-entropy: mean and first-token pooling, ignored targets") {
  const index_t d = 4, len = 3, n = 2, classes = 3;
  mat h = rnd(d, len * n, 20), wc = rnd(classes, d, 21);
  mat wmean(len, n), wfirst = mat::Zero(len, n);
  wmean << 0.5, 1.0 / 3, 0.5, 1.0 / 3, 0.0, 1.0 / 3;  // sequence 0 has a PAD at the end
  wfirst.row(0).setOnes();
  const std::vector<std::int32_t> labels{2, 0};
  for (const mat* w : {&wmean, &wfirst}) {
    const auto run = [&](mat* dh) {
      mat pooled, logits, dlogits, dpooled;
      DP::weighted_pool(h, *w, pooled);
      logits.noalias() = wc * pooled;
      const double loss =
          DP::softmax_cross_entropy(logits, labels, 0.5, dh ? &dlogits : nullptr) / 2;
      if (dh) {
        dpooled.noalias() = wc.transpose() * dlogits;
        DP::weighted_pool_backward(dpooled, *w, *dh);
      }
      return loss;
    };
    mat dh;
    run(&dh);
    CHECK(relative_fd_error(h, dh, [&] { return run(nullptr); }) < fd_tolerance);
  }
  // The mean pooling of sequence 0 ignores its third token.
  mat pooled;
  DP::weighted_pool(h, wmean, pooled);
  CHECK((pooled.col(0) - (h.col(0) + h.col(1)) / 2).cwiseAbs().maxCoeff() < 1e-15);
  // Cross-entropy by hand, and -1 targets contribute nothing.
  mat z = rnd(classes, 3, 22), dz;
  const std::vector<std::int32_t> t{1, -1, 0};
  const double loss = DP::softmax_cross_entropy(z, t, 1.0, &dz);
  const auto nll = [&](index_t j, index_t c) {
    return std::log(z.col(j).array().exp().sum()) - z(c, j);
  };
  CHECK(loss == doctest::Approx(nll(0, 1) + nll(2, 0)).epsilon(1e-13));
  CHECK(dz.col(1).cwiseAbs().maxCoeff() == 0.0);
  CHECK(relative_fd_error(z, dz, [&] { return DP::softmax_cross_entropy(z, t, 1.0, nullptr); }) <
        fd_tolerance);
  mat p = z;
  DP::softmax_columns(p);
  CHECK(p(1, 0) ==
        doctest::Approx(std::exp(z(1, 0)) / z.col(0).array().exp().sum()).epsilon(1e-13));
}

// ---------------------------------------------------------------------------------------------
// The whole model
// ---------------------------------------------------------------------------------------------

TEST_CASE(
    "LoRA fine-tuning: adapter factors and modules_to_save gradients match finite differences") {
  for (const pooling pool : {pooling::mean, pooling::first}) {
    CAPTURE(int(pool));
    const auto c = tiny_config(pool);
    const auto w = random_weights<DB>(c);
    auto adapters = random_adapters<DB>(c, {"all-linear"});
    adapters.add_module_to_save("classifier.weight", rnd(3, 6, 40, 0.5));
    adapters.add_module_to_save("classifier.bias", rnd(3, 1, 41, 0.5));
    const auto batch = tiny_batch();
    transformer_workspace<DB> ws;
    gradient_set<DB> grads;
    const double loss =
        classification_loss_and_grad(w, adapters, batch, tiny_labels, both_factors, grads, ws);
    const auto f = [&] { return classification_loss(w, adapters, batch, tiny_labels, ws); };
    CHECK(loss == doctest::Approx(f()).epsilon(1e-14));
    // Only the adapters and the modules to save get gradients; base weights have no buffers.
    CHECK(grads.adapters.size() == 12);
    CHECK(grads.modules_to_save.size() == 2);
    for (auto& [name, l] : adapters) {
      CAPTURE(name);
      CHECK(relative_fd_error(l.A, grads.adapters.at(name).dA, f) < fd_tolerance);
      CHECK(relative_fd_error(l.B, grads.adapters.at(name).dB, f) < fd_tolerance);
    }
    for (auto& [name, m] : adapters.modules_to_save()) {
      CAPTURE(name);
      CHECK(relative_fd_error(m, grads.modules_to_save.at(name), f) < fd_tolerance);
    }
  }
}

TEST_CASE(
    "LoRA on some layers and modules: only the factors asked for, right even when backward stops "
    "early") {
  const auto c = tiny_config();
  const auto w = random_weights<DB>(c);
  auto adapters = random_adapters<DB>(c, {"v", "fc1"}, {1});
  REQUIRE(adapters.size() == 2);
  const auto batch = tiny_batch();
  transformer_workspace<DB> ws;
  gradient_set<DB> grads;
  classification_loss_and_grad(w, adapters, batch, tiny_labels, only_a, grads, ws);
  const auto f = [&] { return classification_loss(w, adapters, batch, tiny_labels, ws); };
  for (auto& [name, l] : adapters) {
    CAPTURE(name);
    CHECK(relative_fd_error(l.A, grads.adapters.at(name).dA, f) < fd_tolerance);
    CHECK(grads.adapters.at(name).dB.size() == 0);  // B frozen: never computed
  }
  // Head frozen (not in modules_to_save) and no factor trained: no gradient at all.
  gradient_set<DB> none;
  const double l0 =
      classification_loss_and_grad(w, adapters, batch, tiny_labels, no_factors, none, ws);
  CHECK(l0 == doctest::Approx(f()).epsilon(1e-14));
  CHECK(none.adapters.empty());
  CHECK(none.modules_to_save.empty());
}

TEST_CASE("full-parameter gradients (classification and MLM) match finite differences") {
  for (const bool mlm : {false, true}) {
    CAPTURE(mlm);
    const auto c = tiny_config(mlm ? pooling::mean : pooling::first);
    auto w = random_weights<DB>(c);
    const auto batch = tiny_batch();
    const std::vector<std::int32_t> targets{-1, 6, -1, -1, -1, 1, -1, -1, 9, 3};
    transformer_workspace<DB> ws;
    auto grads = w.zeros_like();
    const auto f = [&] {
      return mlm ? mlm_loss(w, batch, targets, ws)
                 : classification_loss(w, adapter_set<DB>{}, batch, tiny_labels, ws);
    };
    // Twice, so that stale gradients from a previous step would show.
    for (int rep = 0; rep < 2; ++rep) {
      const double loss = mlm ? mlm_loss_and_grad(w, batch, targets, grads, ws)
                              : classification_loss_and_grad(w, batch, tiny_labels, grads, ws);
      CHECK(loss == doctest::Approx(f()).epsilon(1e-14));
    }
    for (std::size_t p = 0; p < w.size(); ++p) {
      CAPTURE(w.name(p));
      const bool unused = mlm ? w.name(p).starts_with("classifier") : w.name(p) == "mlm_head.bias";
      if (unused) {
        CHECK(grads.value(p).cwiseAbs().maxCoeff() == 0.0);
        continue;
      }
      if (w.name(p).ends_with("attention.k.bias")) {
        // Softmax does not see a shift common to all keys' scores: the exact gradient is 0.
        CHECK(grads.value(p).cwiseAbs().maxCoeff() < 1e-14);
        for (index_t i = 0; i < w.value(p).size(); ++i)
          CHECK(std::abs(central_difference(f, w.value(p).data()[i])) < 1e-9);
        continue;
      }
      CHECK(relative_fd_error(w.value(p), grads.value(p), f) < fd_tolerance);
    }
  }
}

TEST_CASE_TEMPLATE("padding invariance: appending PAD tokens leaves the logits unchanged", Backend,
                   ROLORA_TEST_BACKENDS) {
  for (const pooling pool : {pooling::mean, pooling::first}) {
    auto c = tiny_config(pool);
    c.max_len = 9;
    const auto w = random_weights<Backend>(c);
    const auto adapters = random_adapters<Backend>(c, {"q", "k", "v", "o", "fc1", "fc2"});
    transformer_workspace<Backend> ws;
    const auto short_logits =
        Backend::to_host(classification_logits(w, adapters, tiny_batch(), ws));
    const token_batch padded{9, {3, 4, 5, 0, 0, 0, 0, 0, 0, 7, 8, 9, 10, 2, 0, 0, 0, 0}};
    const auto long_logits = Backend::to_host(classification_logits(w, adapters, padded, ws));
    CHECK((short_logits - long_logits).cwiseAbs().maxCoeff() <
          100 * test::rounding_tolerance<Backend>());
    CHECK(short_logits.cwiseAbs().maxCoeff() > 1e-3);
  }
}

TEST_CASE_TEMPLATE("merged and unmerged LoRA give the same logits", Backend, ROLORA_TEST_BACKENDS) {
  const auto c = tiny_config();
  const auto w = random_weights<Backend>(c);
  const auto adapters = random_adapters<Backend>(c, {"all-linear"});
  transformer_workspace<Backend> ws;
  const auto batch = tiny_batch();
  const auto unmerged = Backend::to_host(classification_logits(w, adapters, batch, ws));
  auto merged_w = w;
  for (const auto& [name, l] : adapters) merge_into_base(merged_w.at(name + ".weight"), l);
  const auto merged =
      Backend::to_host(classification_logits(merged_w, adapter_set<Backend>{}, batch, ws));
  const auto base = Backend::to_host(classification_logits(w, adapter_set<Backend>{}, batch, ws));
  CHECK((unmerged - merged).cwiseAbs().maxCoeff() < 100 * test::rounding_tolerance<Backend>());
  CHECK((unmerged - base).cwiseAbs().maxCoeff() > 1e-3);  // the adapters do change the model
  const auto pred = predict(w, adapters, batch, ws);
  for (index_t s = 0; s < 2; ++s) {
    index_t best = 0;
    unmerged.col(s).maxCoeff(&best);
    CHECK(pred[std::size_t(s)] == best);
  }
  const auto p = Backend::to_host(class_probabilities(w, adapters, batch, ws));
  CHECK(double(p.col(0).sum()) == doctest::Approx(1.0).epsilon(1e-5));

  // With a residual (FedEx-LoRA, FLoRA) on every adapter: the same, merged or not.
  auto with_residual = adapters;
  std::uint32_t tag = 700;
  for (auto& [name, l] : with_residual) {
    l.residual =
        test::random_backend_matrix<Backend>(l.out_features(), l.in_features(), tag++, 0.3);
  }
  auto merged_r = w;
  for (const auto& [name, l] : with_residual) merge_into_base(merged_r.at(name + ".weight"), l);
  const auto a = Backend::to_host(classification_logits(w, with_residual, batch, ws));
  const auto b =
      Backend::to_host(classification_logits(merged_r, adapter_set<Backend>{}, batch, ws));
  CHECK((a - b).cwiseAbs().maxCoeff() < 100 * test::rounding_tolerance<Backend>());
  CHECK((a - unmerged).cwiseAbs().maxCoeff() > 1e-3);
  with_residual.begin()->second.residual = Backend::zeros(1, 1);
  CHECK_THROWS_AS(classification_logits(w, with_residual, batch, ws), shape_error);
}

TEST_CASE("the residual's gradient path: dA, dB and the head match finite differences through it") {
  const auto c = tiny_config();
  const auto w = random_weights<DB>(c);
  auto adapters = random_adapters<DB>(c, {"all-linear"});
  std::uint32_t tag = 800;
  for (auto& [name, l] : adapters)
    l.residual = test::random_backend_matrix<DB>(l.out_features(), l.in_features(), tag++, 0.3);
  transformer_workspace<DB> ws;
  const auto batch = tiny_batch();
  const std::vector<std::int32_t> labels{0, 2};
  gradient_set<DB> grads;
  classification_loss_and_grad(w, adapters, batch, labels, both_factors, grads, ws);
  auto loss = [&] { return classification_loss(w, adapters, batch, labels, ws); };
  for (auto& [name, l] :
       adapters) {  // the lowest layer's gradients pass through every residual above
    CHECK(relative_fd_error(l.A, grads[name].dA, loss) < fd_tolerance);
    CHECK(relative_fd_error(l.B, grads[name].dB, loss) < fd_tolerance);
  }
}

TEST_CASE("a workspace is reused across batch shapes and gives the same numbers") {
  const auto c = tiny_config();
  const auto w = random_weights<DB>(c);
  const auto adapters = random_adapters<DB>(c, {"all-linear"});
  transformer_workspace<DB> ws, fresh;
  gradient_set<DB> g1, g2;
  const token_batch other{3, {1, 2, 3, 4, 0, 6}};
  const std::vector<std::int32_t> other_labels{0, 2};
  classification_loss_and_grad(w, adapters, tiny_batch(), tiny_labels, both_factors, g1, ws);
  classification_loss_and_grad(w, adapters, other, other_labels, both_factors, g1, ws);
  classification_loss_and_grad(w, adapters, other, other_labels, both_factors, g2, fresh);
  for (const auto& [name, g] : g1.adapters) {
    CHECK((g.dA - g2.adapters.at(name).dA).cwiseAbs().maxCoeff() == 0.0);
    CHECK((g.dB - g2.adapters.at(name).dB).cwiseAbs().maxCoeff() == 0.0);
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration, names, weights
// ---------------------------------------------------------------------------------------------

TEST_CASE("target_modules and layers_to_transform select modules like PEFT") {
  auto c = tiny_config();
  c.n_layers = 3;
  auto m = lora_target_modules(c, {"q", "v"});
  REQUIRE(m.size() == 6);
  CHECK(m[0].name == "layers.0.attention.q");
  CHECK(m[1].name == "layers.0.attention.v");
  CHECK(m[5].name == "layers.2.attention.v");
  CHECK(m[0].out_features == 6);
  m = lora_target_modules(c, {"all-linear"}, {1});
  REQUIRE(m.size() == 6);
  CHECK(m[4].name == "layers.1.mlp.fc1");
  CHECK(m[4].out_features == 8);
  CHECK(m[4].in_features == 6);
  CHECK(m[5].name == "layers.1.mlp.fc2");
  CHECK(m[5].out_features == 6);
  CHECK(m[5].in_features == 8);
  m = lora_target_modules(c, {"mlp.fc2", "layers.0.attention.k"});
  REQUIRE(m.size() == 4);
  CHECK(m[0].name == "layers.0.attention.k");
  auto msg = message_of<config_error>([&] { lora_target_modules(c, {"q", "query"}); });
  CHECK(msg.find("'query'") != std::string::npos);
  CHECK(msg.find("fc1") != std::string::npos);
  CHECK(message_of<config_error>([&] { lora_target_modules(c, {"q"}, {3}); }).find("0..2") !=
        std::string::npos);
  CHECK_THROWS_AS(lora_target_modules(c, {}), config_error);
  CHECK_THROWS_AS(lora_target_modules(c, {"attention"}),
                  config_error);  // not a whole suffix of a linear
}

TEST_CASE(
    "weights: HF-like names, deterministic BERT-style init, host-map round trip, shape errors") {
  transformer_config c = tiny_config();
  c.vocab_size = 300;
  c.d_model = 64;
  c.n_heads = 4;
  const transformer_weights<DB> w(c, 42), again(c, 42), other(c, 43);
  CHECK(w.size() == 2 + 16 * 2 + 5);
  CHECK(w.at("embeddings.word_embeddings.weight").rows() == 300);
  CHECK(w.at("layers.1.mlp.fc1.weight").rows() == 8);
  CHECK(w.at("layers.1.mlp.fc1.weight").cols() == 64);
  CHECK(w.at("layers.0.attention.o.bias").cols() == 1);
  CHECK(w.at("final_ln.weight").isOnes());
  CHECK(w.at("layers.0.ln2.bias").isZero());
  CHECK(w.at("mlm_head.bias").rows() == 300);
  const mat& e = w.at("embeddings.word_embeddings.weight");
  CHECK(std::sqrt(e.squaredNorm() / double(e.size())) == doctest::Approx(0.02).epsilon(0.03));
  CHECK((e.array() == again.at("embeddings.word_embeddings.weight").array()).all());
  CHECK(!(e.array() == other.at("embeddings.word_embeddings.weight").array()).all());
  // float weights are the double draws rounded.
  const transformer_weights<eigen_backend<float>> wf(c, 42);
  CHECK((wf.at("layers.0.attention.q.weight").array() ==
         w.at("layers.0.attention.q.weight").cast<float>().array())
            .all());

  auto map = w.to_host_map();
  const auto back = transformer_weights<DB>::from_host_map(c, map);
  for (std::size_t p = 0; p < w.size(); ++p)
    CHECK((back.value(p).array() == w.value(p).array()).all());
  auto bad = map;
  bad["layers.0.attention.q.weight"] = mat::Zero(64, 63);
  auto msg = message_of<shape_error>([&] { transformer_weights<DB>::from_host_map(c, bad); });
  CHECK(msg.find("layers.0.attention.q.weight") != std::string::npos);
  CHECK(msg.find("[64, 64]") != std::string::npos);
  CHECK(msg.find("[64, 63]") != std::string::npos);
  bad = map;
  bad.erase("final_ln.bias");
  CHECK(message_of<config_error>([&] {
          transformer_weights<DB>::from_host_map(c, bad);
        }).find("missing tensor 'final_ln.bias'") != std::string::npos);
  bad = map;
  bad["pooler.weight"] = mat::Zero(1, 1);
  CHECK(message_of<config_error>([&] {
          transformer_weights<DB>::from_host_map(c, bad);
        }).find("pooler.weight") != std::string::npos);
  auto w2 = w;
  CHECK_THROWS_AS(w2.assign("classifier.bias", mat::Zero(4, 1)), shape_error);
  CHECK((w2.at("classifier.bias").array() == w.at("classifier.bias").array()).all());
  auto bad_config = c;
  bad_config.n_heads = 5;
  CHECK(message_of<config_error>([&] {
          transformer_weights<DB>(bad_config, 1);
        }).find("multiple of n_heads") != std::string::npos);
}

TEST_CASE("bad batches, labels, adapters and modules to save are refused with a clear message") {
  const auto c = tiny_config();
  const auto w = random_weights<DB>(c);
  transformer_workspace<DB> ws;
  gradient_set<DB> g;
  const adapter_set<DB> none;
  CHECK(message_of<shape_error>([&] {
          classification_loss(w, none, token_batch{7, std::vector<std::int32_t>(7, 1)},
                              std::vector<std::int32_t>{0}, ws);
        }).find("max_len = 6") != std::string::npos);
  CHECK_THROWS_AS(classification_loss(w, none, token_batch{5, std::vector<std::int32_t>(7, 1)},
                                      tiny_labels, ws),
                  shape_error);
  CHECK(message_of<value_error>([&] {
          classification_loss(w, none, token_batch{5, {1, 2, 3, 4, 11, 1, 2, 3, 4, 5}}, tiny_labels,
                              ws);
        }).find("id 11") != std::string::npos);
  CHECK_THROWS_AS(classification_loss(w, none, tiny_batch(), std::vector<std::int32_t>{1}, ws),
                  shape_error);
  CHECK_THROWS_AS(classification_loss(w, none, tiny_batch(), std::vector<std::int32_t>{1, 3}, ws),
                  value_error);
  CHECK_THROWS_AS(mlm_loss(w, tiny_batch(), std::vector<std::int32_t>(10, -2), ws), value_error);

  adapter_set<DB> wrong;
  wrong.insert("layers.0.mlp.fc1",
               make_lora<DB>("x", 6, 8, 2, 1.0, lora_init::gaussian, 1));  // [out, in] swapped
  auto msg = message_of<shape_error>(
      [&] { classification_loss_and_grad(w, wrong, tiny_batch(), tiny_labels, only_b, g, ws); });
  CHECK(msg.find("[8, 6]") != std::string::npos);
  CHECK(g.adapters.empty());
  adapter_set<DB> unknown;
  unknown.insert("layers.0.ln1", make_lora<DB>("x", 6, 6, 2, 1.0, lora_init::gaussian, 1));
  CHECK(message_of<config_error>([&] {
          classification_loss(w, unknown, tiny_batch(), tiny_labels, ws);
        }).find("not a linear module") != std::string::npos);
  adapter_set<DB> saved;
  saved.add_module_to_save("classifier.weight", mat::Zero(2, 6));
  CHECK_THROWS_AS(classification_loss(w, saved, tiny_batch(), tiny_labels, ws), shape_error);
  adapter_set<DB> saved_unknown;
  saved_unknown.add_module_to_save("head.weight", mat::Zero(3, 6));
  CHECK_THROWS_AS(classification_loss(w, saved_unknown, tiny_batch(), tiny_labels, ws),
                  config_error);
  auto grads = w.zeros_like();
  transformer_config bigger = c;
  bigger.d_ff = 9;
  auto wrong_grads = transformer_weights<DB>(bigger, 1).zeros_like();
  CHECK_THROWS_AS(
      mlm_loss_and_grad(w, tiny_batch(), std::vector<std::int32_t>(10, -1), wrong_grads, ws),
      shape_error);
  // No masked position: loss 0 and zero gradients.
  CHECK(mlm_loss_and_grad(w, tiny_batch(), std::vector<std::int32_t>(10, -1), grads, ws) == 0.0);
  CHECK(grads.at("layers.0.mlp.fc1.weight").cwiseAbs().maxCoeff() == 0.0);
}

// ---- The transformer as a federated client task (nn/classification_task.hpp) ----

namespace {
// Sequences whose class is the residue of their second token mod 3, the rest random tokens and
// random PAD tails: a task the head and adapters can learn over frozen random features.
template <class Backend>
labelled_sequences synthetic_sequences(const transformer_config& c, std::size_t n,
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
}  // namespace

TEST_CASE_TEMPLATE(
    "federated fine-tuning of the transformer: test loss falls, exactly aggregated, same bits for "
    "any thread count",
    Backend, ROLORA_TEST_BACKENDS) {
  auto c = tiny_config();
  c.d_model = 16;
  c.n_heads = 2;
  c.d_ff = 32;
  c.max_len = 8;
  c.vocab_size = 13;
  const transformer_weights<Backend> model(c, 3);
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 4;
  adapter_set<Backend> initial(lora_target_modules(c, {"all-linear"}), lc, 5);
  initial.add_module_to_save("classifier.weight", model.at("classifier.weight"));
  initial.add_module_to_save("classifier.bias", model.at("classifier.bias"));
  std::vector<classification_task<Backend>> tasks;
  for (std::uint32_t i = 0; i < 4; ++i)
    tasks.emplace_back(model, synthetic_sequences<Backend>(c, 48, i));
  const auto test_set = synthetic_sequences<Backend>(c, 200, 77);

  federation_config fc;
  fc.num_rounds = 24;
  fc.local_steps = 4;
  fc.batch_size = 16;
  fc.local_optimizer = adamw{0.03};
  auto run = [&](std::size_t threads) {
    fc.threads = threads;
    federation<Backend, alternating> fed(alternating{}, fedavg{}, fc, initial);
    double worst_error = 0;
    for (const auto& r : fed.run(tasks))
      worst_error = std::max(worst_error, r.relative_aggregation_error);
    CHECK(worst_error < 100 * test::rounding_tolerance<Backend>());  // RoLoRA: exact every round
    return fed.global();
  };
  const auto one = run(1), two = run(2);
  CHECK(test::bit_equal(one, two));
  const auto before = evaluate(model, initial, test_set, 1),
             after = evaluate(model, one, test_set, 3);
  MESSAGE("test loss " << before.loss << " -> " << after.loss << ", accuracy " << before.accuracy
                       << " -> " << after.accuracy);
  CHECK(after.loss < 0.5 * before.loss);  // measured: 1.105 -> 0.32 (float), 0.20 (double)
  CHECK(after.accuracy > 0.7);            // from 0.295; measured 0.88 (float), 0.92 (double)
  // Evaluation is the same bits whatever the thread count, and agrees with the task's own loss.
  const auto again = evaluate(model, one, test_set, 1, 64);
  CHECK(again.loss == after.loss);
  CHECK(again.predictions == after.predictions);
  classification_task<Backend> whole(model, test_set);
  CHECK(whole.loss(one) == doctest::Approx(after.loss).epsilon(1e-5));
  // A client without data, or tokens and labels that do not match, are refused.
  CHECK_THROWS_AS(classification_task<Backend>(model, labelled_sequences{{c.max_len, {}}, {}}),
                  value_error);
  CHECK_THROWS_AS(classification_task<Backend>(model, labelled_sequences{{c.max_len, {1, 2}}, {0}}),
                  shape_error);
}

// ---- A frozen base in bf16 (transformer_weights::convert_base_to_bf16; frozen_bf16_backend) ----

namespace {
using FB = eigen_backend<float>;

// A oneDNN path switch (detail::onednn_bf16_enabled(), detail::onednn_sgemm_enabled()) set for
// the scope, restored after.
struct scoped_switch {
  scoped_switch(std::atomic<bool>& flag, bool on) : flag_(flag), was_(flag) { flag_ = on; }
  ~scoped_switch() { flag_ = was_; }
  scoped_switch(const scoped_switch&) = delete;
  scoped_switch& operator=(const scoped_switch&) = delete;

 private:
  std::atomic<bool>& flag_;
  bool was_;
};
// The frozen GEMM's paths: oneDNN's bf16 matmul where this build and CPU have it, and the
// conversion path (bf16 -> fp32 blocks, then fp32 GEMM) everywhere; the second is forced here.
struct bf16_path : scoped_switch {
  explicit bf16_path(bool use_onednn) : scoped_switch(detail::onednn_bf16_enabled(), use_onednn) {}
};
// The paths this machine has: {true, false} with a oneDNN bf16 kernel, else {false}.
std::vector<bool> bf16_paths() {
  if (detail::onednn_bf16_kernel().empty()) return {false};
  return {true, false};
}

// The fp32 model whose base matrices are w's rounded to bf16: what a bf16 base computes with.
transformer_weights<FB> rounded_base(const transformer_weights<FB>& w) {
  auto r = w;
  for (std::size_t p = 0; p < r.size(); ++p) {
    if (!detail::nn::parameter_specs(r.config())[p].base_matrix) continue;
    r.assign(r.name(p), FB::to_matrix(FB::to_frozen(r.value(p))));
  }
  return r;
}
}  // namespace

TEST_CASE("frozen_gemm: op(W) x + beta c with W in bf16, on each path, against the fp32 GEMM") {
  // Per element, the oneDNN path rounds x to bf16 (relative error <= 2^-8) and accumulates in
  // fp32 (<= k 2^-24 relative to sum |w| |x|, twice: it and the reference):
  // |c - ref| <= (2^-8 + k 2^-23) (|W| |x|)_ij + 2^-23 |beta c0|_ij. The conversion path
  // multiplies the same fp32 numbers with the same GEMM: the same bits when W is one block; in
  // blocks of rows (W above frozen_block_scalars) the fp32 part of the bound.
  struct shape {
    index_t rows, cols, n;  // W [rows, cols], n columns of x
  };
  const index_t tall = FB::frozen_block_scalars / 64 + 3;  // two blocks of rows either way
  for (const shape s : {shape{40, 24, 7}, shape{128, 512, 33}, shape{tall, 64, 5}}) {
    const auto w16 = FB::to_frozen(test::random_matrix<float>(s.rows, s.cols, 1, 0.5));
    const host_matrix<float> w = FB::to_matrix(w16);
    for (const op o : {op::none, op::transpose}) {
      const index_t m = o == op::none ? s.rows : s.cols, k = o == op::none ? s.cols : s.rows;
      const auto x = test::random_matrix<float>(k, s.n, 2);
      const auto c0 = test::random_matrix<float>(m, s.n, 3);
      const host_matrix<double> bound_scale =
          (o == op::none ? w.cwiseAbs() : host_matrix<float>(w.transpose().cwiseAbs()))
              .cast<double>() *
          x.cwiseAbs().cast<double>();
      for (const float beta : {0.0f, 1.0f}) {
        host_matrix<float> ref = c0;
        FB::gemm(1.0f, w, o, x, op::none, beta, ref);
        for (const bool onednn : bf16_paths()) {
          const bf16_path path(onednn);
          host_matrix<float> c = c0;
          FB::frozen_gemm(w16, o, x, beta, c);
          REQUIRE(c.rows() == m);
          REQUIRE(c.cols() == s.n);
          const double per_element = (onednn ? std::ldexp(1.0, -8) : 0.0) + double(k) * 0x1p-23;
          const host_matrix<double> err = (c - ref).cast<double>().cwiseAbs();
          CHECK((err.array() <= per_element * bound_scale.array() +
                                    0x1p-23 * double(beta) * c0.cast<double>().cwiseAbs().array())
                    .all());
          if (!onednn && m * k <= FB::frozen_block_scalars) CHECK((c.array() == ref.array()).all());
        }
      }
    }
  }
  host_matrix<float> c;
  CHECK(message_of<shape_error>([&] {
          FB::frozen_gemm(FB::to_frozen(host_matrix<float>::Ones(4, 3)), op::none,
                          host_matrix<float>::Ones(4, 2), 0.0f, c);
        }) ==
        "[rolora.shape_error] frozen_gemm: inner dimensions differ: op(w) is [4, 3], x is "
        "[4, 2]");
}

TEST_CASE("a bf16 base: half the bytes, the logits and LoRA gradients of the rounded fp32 model") {
  const auto c = tiny_config();
  const auto w = random_weights<FB>(c);
  const auto reference = rounded_base(w);
  auto half = w;
  half.convert_base_to_bf16();
  CHECK(half.base_in_bf16());

  // Memory: every linear's W0 and both embeddings, 11 x 6 + 6 x 6 + 2 layers x (4 x 6 x 6 +
  // 8 x 6 + 6 x 8) = 582 scalars, now 2 bytes each instead of 4; nothing else changes.
  REQUIRE(w.num_base_scalars() == 582);
  CHECK(w.stored_bytes() == 4 * w.num_scalars());
  CHECK(half.stored_bytes() == 4 * (w.num_scalars() - 582) + 2 * 582);
  CHECK(w.stored_bytes() - half.stored_bytes() == 2 * 582);  // the fp32 copies are gone
  CHECK(half.in_bf16(half.index_of("embeddings.word_embeddings.weight")));
  CHECK(half.in_bf16(half.index_of("layers.1.mlp.fc2.weight")));
  for (const char* kept : {"layers.0.ln1.weight", "layers.0.attention.q.bias", "final_ln.bias",
                           "classifier.weight", "mlm_head.bias"})
    CHECK(!half.in_bf16(half.index_of(kept)));
  // The bf16 values read back exactly; value() refuses a bf16 parameter.
  CHECK(half.to_host_map().at("layers.0.mlp.fc1.weight") ==
        reference.to_host_map().at("layers.0.mlp.fc1.weight"));
  CHECK(message_of<config_error>([&] { half.at("layers.0.attention.q.weight"); }) ==
        "[rolora.config_error] weights: 'layers.0.attention.q.weight' is held in bf16 "
        "(convert_base_to_bf16): read it "
        "with frozen() or to_host_map()");

  const auto adapters = random_adapters<FB>(c, {"all-linear"});
  auto with_head = adapters;
  with_head.add_module_to_save("classifier.weight", w.at("classifier.weight"));
  transformer_workspace<FB> ws;
  const auto batch = tiny_batch();
  const auto ref_logits = classification_logits(reference, adapters, batch, ws);
  gradient_set<FB> ref_grads, grads;
  classification_loss_and_grad(reference, with_head, batch, tiny_labels, both_factors, ref_grads,
                               ws);
  const auto max_abs = [](const host_matrix<float>& m) { return double(m.cwiseAbs().maxCoeff()); };
  for (const bool onednn : bf16_paths()) {
    const bf16_path path(onednn);
    const auto logits = classification_logits(half, adapters, batch, ws);
    classification_loss_and_grad(half, with_head, batch, tiny_labels, both_factors, grads, ws);
    const double logit_err = max_abs(logits - ref_logits) / max_abs(ref_logits);
    double grad_err = 0;
    for (const auto& [name, g] : ref_grads.adapters) {
      grad_err = std::max({grad_err, max_abs(grads[name].dA - g.dA) / max_abs(g.dA),
                           max_abs(grads[name].dB - g.dB) / max_abs(g.dB)});
    }
    MESSAGE((onednn ? "oneDNN bf16 path (" + detail::onednn_bf16_kernel() + ")" : "conversion path")
            << ": logits " << logit_err << ", LoRA gradients " << grad_err
            << " relative to the rounded fp32 model");
    if (onednn) {
      // Every frozen GEMM rounds its input to bf16: 2^-8 relative per element (the bound of the
      // test above). The logits pass 6 such GEMMs a layer; the gradients twice as many (forward
      // and backward), amplified by the layer norm and attention Jacobians of this d = 6 model
      // with O(1) weights. Measured (brg:avx512_core_bf16): logits 0.9 x 2^-8, gradients 0.9 to
      // 8.5 x 2^-8 (worst: layers.0.mlp.fc2's dB); asserted 4 x 2^-8 and 16 x 2^-8.
      CHECK(logit_err < 4 * 0x1p-8);
      CHECK(grad_err < 16 * 0x1p-8);
    } else {
      // The same fp32 numbers through the same GEMMs: the same bits.
      CHECK(logit_err == 0.0);
      CHECK(grad_err == 0.0);
    }
  }

  // Full-parameter training cannot update a bf16 weight: refused, nothing computed; the
  // full-parameter evaluation (masked LM) still runs on the bf16 base.
  auto full = w.zeros_like();
  CHECK(message_of<config_error>(
            [&] { classification_loss_and_grad(half, batch, tiny_labels, full, ws); })
            .starts_with("[rolora.config_error] full-parameter training needs the base weights in "
                         "full precision"));
  const std::vector<std::int32_t> targets{-1, 4, -1, -1, -1, 8, -1, -1, -1, -1};
  CHECK_THROWS_AS(mlm_loss_and_grad(half, batch, targets, full, ws), config_error);
  CHECK(mlm_loss(half, batch, targets, ws) ==
        doctest::Approx(mlm_loss(reference, batch, targets, ws)).epsilon(0.02));
}

TEST_CASE("a bf16 base: federated fine-tuning, same bits for any thread count, on each path") {
  auto c = tiny_config();
  c.d_model = 16;
  c.d_ff = 32;
  c.max_len = 8;
  c.vocab_size = 13;
  transformer_weights<FB> model(c, 3);
  model.convert_base_to_bf16();
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 4;
  adapter_set<FB> initial(lora_target_modules(c, {"all-linear"}), lc, 5);
  initial.add_module_to_save("classifier.weight", model.at("classifier.weight"));
  std::vector<classification_task<FB>> tasks;
  for (std::uint32_t i = 0; i < 4; ++i)
    tasks.emplace_back(model, synthetic_sequences<FB>(c, 48, i));
  federation_config fc;
  fc.num_rounds = 4;
  fc.local_steps = 2;
  fc.batch_size = 16;
  fc.local_optimizer = adamw{0.03};
  for (const bool onednn : bf16_paths()) {
    const bf16_path path(onednn);
    auto run = [&](std::size_t threads) {
      fc.threads = threads;
      federation<FB, alternating> fed(alternating{}, fedavg{}, fc, initial);
      fed.run(tasks);
      return fed.global();
    };
    const auto one = run(1), two = run(2);
    CHECK(test::bit_equal(one, two));
    CHECK(!test::bit_equal(one, initial));
  }
}

// Every backend of the test binary (Eigen; Thrust-OMP, whose device vectors live on the host
// heap, so the counting malloc sees them too). rolora's own code is held to zero on a model whose
// GEMMs are small enough for Eigen to block on the stack; at the bigger size Thrust is held to
// zero as well (its host GEMM packs into per-thread buffers kept across calls), and the GEMM
// libraries' own allocations are reported: oneDNN's dnnl_sgemm and bf16 matmul allocate packing
// buffers inside every call, Eigen's GEMM blocks on the heap above EIGEN_STACK_ALLOCATION_LIMIT.
TEST_CASE_TEMPLATE("a warmed-up local step allocates nothing: forward, backward, AdamW", Backend,
                   ROLORA_TEST_BACKENDS) {
  if (!test::alloc_counter::available) {
    MESSAGE("rolora-skip: allocations are not counted under AddressSanitizer");
    return;
  }
  lora_config lc;
  lc.r = 2;
  lc.lora_alpha = 4;
  const optimizer opt = adamw{0.01};
  std::vector<std::size_t> batch;
  for (std::size_t i = 0; i < 16; ++i) batch.push_back(3 * i);
  // Allocations of 3 steps after 2 warm-up steps (which size the workspace, the gradients and the
  // optimizer's moments), on a model of width d and sequences of length len.
  const auto count_steps = [&](index_t d, index_t len, factor_set trains, bool bf16_base) {
    auto c = tiny_config();
    c.d_model = d;
    c.n_heads = 4;
    c.d_ff = 2 * d;
    c.max_len = len;
    c.vocab_size = 50;
    transformer_weights<Backend> model(c, 3);
    if constexpr (frozen_bf16_backend<Backend>) {
      if (bf16_base) model.convert_base_to_bf16();
    }
    adapter_set<Backend> adapters(lora_target_modules(c, {"all-linear"}), lc, 5);
    adapters.add_module_to_save("classifier.weight", model.at("classifier.weight"));
    adapters.add_module_to_save("classifier.bias", model.at("classifier.bias"));
    classification_task<Backend> task(model, synthetic_sequences<Backend>(c, 64, 1));
    gradient_set<Backend> grads;
    optimizer_state<Backend> state;
    const auto step = [&] {
      task.loss_and_grad(adapters, batch, trains, grads);
      state.step(opt, adapters, grads, trains);
    };
    step();
    step();
    const test::alloc_counter counter;
    for (int k = 0; k < 3; ++k) step();
    return counter.count();
  };
  for (const factor_set trains : {only_b, only_a, both_factors}) {
    CAPTURE(trains.a);
    CAPTURE(trains.b);
    CHECK(count_steps(16, 8, trains, false) == 0);
  }
  if constexpr (frozen_bf16_backend<Backend>) {  // the path of CPUs without a bf16 kernel
    const bf16_path conversion(false);
    CHECK(count_steps(16, 8, both_factors, true) == 0);
  }
  // The GEMM libraries' own allocations at a size where Eigen blocks on the heap.
  constexpr bool on_eigen =
      std::is_same_v<typename Backend::matrix, host_matrix<typename Backend::scalar>>;
  for (const bool onednn : {false, true}) {
    if (onednn && !(on_eigen && detail::onednn_gemm_available &&
                    std::is_same_v<typename Backend::scalar, float>))
      continue;
    const scoped_switch path(detail::onednn_sgemm_enabled(), onednn);
    const std::size_t count = count_steps(64, 16, both_factors, false);
    if constexpr (!on_eigen) CHECK(count == 0);
    const std::string gemm = on_eigen ? (onednn ? "oneDNN" : "Eigen") : "Thrust host";
    MESSAGE("d = 64, 256 tokens, 3 steps, "
            << gemm << " GEMM (" << sizeof(typename Backend::scalar) * 8 << "-bit): " << count
            << " allocations");
  }
  if constexpr (frozen_bf16_backend<Backend>) {
    for (const bool onednn : bf16_paths()) {
      const bf16_path path(onednn);
      MESSAGE("d = 64, 256 tokens, 3 steps, bf16 base on "
              << std::string(onednn ? "oneDNN" : "conversion") << ": "
              << count_steps(64, 16, both_factors, true) << " allocations");
    }
  }
}
