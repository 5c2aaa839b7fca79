// A small pre-LN transformer encoder with LoRA layers: forward and backward written by hand
// against the nn_backend contract, for classification (pooled head + cross-entropy) and for
// masked-token language modelling (tied head + cross-entropy over the masked positions).
//
//   h0 = word_embeddings[ids] + position_embeddings[0 .. L-1]                  [d, N]
//   layer i:  a = h + o(attention(q(LN1 h), k(LN1 h), v(LN1 h), key padding mask))
//             h' = a + fc2(GELU(fc1(LN2 a)))
//   hf = final_ln(h_L)
//   classification: logits = classifier(pool(hf)) [C, n], pool = mean over non-PAD or first token
//   MLM:            logits = word_embeddings hf + mlm_head.bias [V, N]
// Each linear y = W x + b computes W x + b + s B (A x) when the adapter_set has an adapter for it.
// With the base held in bf16 (transformer_weights::convert_base_to_bf16) the frozen products
// W x, W^T dy and the embedding lookups go through the backend's frozen_bf16_backend members;
// everything else, and all accumulation, stays in the scalar type.
//
// Two training modes share one forward and one backward: full-parameter (every weight gets a
// gradient in a transformer_weights of gradients) and LoRA (base weights frozen and given no
// gradient buffers; gradients for the trained factors of every adapter and for the adapter_set's
// modules_to_save, which replace the weight of the same name, e.g. "classifier.weight").
// The backward stops as low as the lowest trainable parameter needs, so the dX of the first
// layer input is never formed in LoRA mode.
//
// Activations are column-major with one token per column, sequence-major (token j of sequence s
// is column s L + j). All tokens go through each projection and MLP as one GEMM; attention runs
// per sequence and head. A transformer_workspace keeps every buffer, so steps with the same batch
// shape reuse the memory of the previous one.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <rolora/nn/nn_backend.hpp>
#include <rolora/nn/weights.hpp>
#include <rolora/privacy/per_example.hpp>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace rolora {

// n sequences of L token ids, sequence-major and contiguous: ids[s * seq_len + j].
struct token_batch {
  index_t seq_len = 0;
  std::vector<std::int32_t> ids;
  index_t num_sequences() const {
    return seq_len > 0 ? static_cast<index_t>(ids.size()) / seq_len : 0;
  }
};

namespace detail::nn {

template <class B>
struct binding {
  const typename B::matrix* value = nullptr;  // null when held in bf16
  typename B::matrix* grad = nullptr;         // null: frozen
  const frozen_matrix_t<B>* bf16 = nullptr;   // the value when held in bf16 (frozen)
};
// What the backward of one trained adapter keeps for exact per-example clipping (sample-level
// DP-SGD, classification_clipped_grad_sum): the pieces of its per-token gradient outer products.
template <class B>
struct per_example_linear {
  const typename B::matrix* x = nullptr;   // [in, N] the linear's input (the layer cache's)
  const typename B::matrix* ax = nullptr;  // [r, N] A x (the layer cache's)
  typename B::matrix dy;                   // [out, N] upstream gradient (when B trains)
  typename B::matrix t;                    // [r, N] B^T dy (when A trains)
  bool used = false;                       // the backward reached this linear
};
template <class B>
struct lora_binding {
  const lora_adapter<B>* adapter = nullptr;  // null: no adapter on this linear
  lora_gradients<B>* grad = nullptr;         // null: the adapter is frozen
  // Per-example mode: the backward records here instead of forming grad's batch sums.
  per_example_linear<B>* record = nullptr;
};

// What one layer's forward keeps for its backward.
template <class B>
struct layer_cache {
  using matrix = typename B::matrix;
  matrix ln1_xhat, ln1_rstd, y1;             // [d, N], [N, 1], [d, N] (y1 = LN1 h)
  matrix q, k, v, probs, ctx;                // [d, N] x3, [L, L H n], [d, N]
  matrix ln2_xhat, ln2_rstd, y2;             // as ln1, on a = h + o(ctx)
  matrix u, g;                               // [d_ff, N]: fc1 output and GELU(u)
  std::array<matrix, linears_per_layer> ax;  // [r, N]: A x of each adapted linear
};

}  // namespace detail::nn

// Buffers of one model evaluation: activations kept for backward and backward's scratch. Reuse
// one per thread; its contents between calls are unspecified.
template <nn_backend B>
struct transformer_workspace {
  using matrix = typename B::matrix;
  std::vector<matrix> h;  // [d, N] input of layer i; h[n_layers] is the input of final_ln
  std::vector<detail::nn::layer_cache<B>> layers;
  matrix final_xhat, final_rstd, hf;  // final layer norm: [d, N], [N, 1], [d, N]
  matrix key_valid, pool_weights;     // [L, n]
  matrix pooled, logits, dlogits;     // [d, n]; [C, n] or [V, N]
  matrix dh, dy1, dy2, dg, dq, dk, dv, dctx, dhf, dpooled, lora_t;
  std::vector<std::int32_t> positions;  // [N]: j for token j of every sequence
  host_matrix<typename B::scalar> key_valid_host, pool_weights_host;
  std::vector<detail::nn::binding<B>> params;                  // per parameter of the weights
  std::vector<detail::nn::lora_binding<B>> loras;              // per linear module (6 per layer)
  std::vector<detail::nn::per_example_linear<B>> per_example;  // per linear, DP-SGD's clip
  factor_set trains;
  // Binding's scratch: (linear index, adapter, name) of every adapter, a parameter name.
  std::vector<std::tuple<std::size_t, const lora_adapter<B>*, const std::string*>> found_adapters;
  std::string name_buffer;
};

namespace detail::nn {

template <class B>
using matrix_t = typename B::matrix;

// c = op(W) x + beta c for a bound weight W, in the precision it is held in.
template <nn_backend B>
void weight_gemm(const binding<B>& w, op op_w, const matrix_t<B>& x, typename B::scalar beta,
                 matrix_t<B>& c) {
  if constexpr (frozen_bf16_backend<B>) {
    if (w.bf16) return B::frozen_gemm(*w.bf16, op_w, x, beta, c);
  }
  B::gemm(typename B::scalar(1), *w.value, op_w, x, op::none, beta, c);
}

// out [d, N] column j = (or +=) row ids[j] of a bound embedding table.
template <nn_backend B>
void embedding_forward(const binding<B>& table, std::span<const std::int32_t> ids, bool accumulate,
                       matrix_t<B>& out) {
  if constexpr (frozen_bf16_backend<B>) {
    if (table.bf16) return B::frozen_gather_rows(*table.bf16, ids, accumulate, out);
  }
  nn_primitives<B>::embedding_forward(*table.value, ids, accumulate, out);
}

// y = W x + b (+ residual x + s B (A x)); x [in, N] -> y [out, N]; ax [r, N] is kept for
// backward. The adapter's residual (FedEx-LoRA, FLoRA: adapter/lora.hpp) is a frozen correction
// of W.
template <nn_backend B>
void linear_forward(const binding<B>& w, const binding<B>& b, const lora_binding<B>& l,
                    const matrix_t<B>& x, matrix_t<B>& ax, matrix_t<B>& y) {
  using T = typename B::scalar;
  weight_gemm(w, op::none, x, T(0), y);
  nn_primitives<B>::add_bias(y, *b.value);
  if (l.adapter) {
    if (l.adapter->has_residual())
      B::gemm(T(1), l.adapter->residual, op::none, x, op::none, T(1), y);
    B::gemm(T(1), l.adapter->A, op::none, x, op::none, T(0), ax);
    B::gemm(l.adapter->scaling, l.adapter->B, op::none, ax, op::none, T(1), y);
  }
}

// Backward of linear_forward for upstream dy [out, N]:
//   dW = dy x^T, db = sum_cols dy, dB = s dy (A x)^T, dA = s (B^T dy) x^T,
//   dx (= or +=) (W + residual)^T dy + s A^T (B^T dy).
// Only what has a buffer is computed; dx when `dx` is not null.
template <nn_backend B>
void linear_backward(const binding<B>& w, const binding<B>& b, const lora_binding<B>& l,
                     factor_set trains, const matrix_t<B>& x, const matrix_t<B>& ax,
                     const matrix_t<B>& dy, matrix_t<B>& t, matrix_t<B>* dx, bool accumulate_dx) {
  using T = typename B::scalar;
  if (w.grad) B::gemm(T(1), dy, op::none, x, op::transpose, T(0), *w.grad);
  if (b.grad) nn_primitives<B>::row_sums(dy, *b.grad);
  const bool grad_a = l.adapter && l.grad && trains.a;
  per_example_linear<B>* rec = l.adapter && l.grad ? l.record : nullptr;
  if (rec) {  // per-example mode: keep the pieces, form no batch sum
    rec->x = &x;
    rec->ax = &ax;
    rec->used = true;
    if (trains.b) rec->dy = dy;
  }
  if (!rec && l.adapter && l.grad && trains.b) {
    B::gemm(l.adapter->scaling, dy, op::none, ax, op::transpose, T(0), l.grad->dB);
  }
  if (l.adapter && (grad_a || dx)) {
    B::gemm(T(1), l.adapter->B, op::transpose, dy, op::none, T(0), t);  // [r, N]
    if (rec && grad_a) rec->t = t;
    if (!rec && grad_a)
      B::gemm(l.adapter->scaling, t, op::none, x, op::transpose, T(0), l.grad->dA);
  }
  if (dx) {
    weight_gemm(w, op::transpose, dy, accumulate_dx ? T(1) : T(0), *dx);
    if (l.adapter) B::gemm(l.adapter->scaling, l.adapter->A, op::transpose, t, op::none, T(1), *dx);
    if (l.adapter && l.adapter->has_residual()) {
      B::gemm(T(1), l.adapter->residual, op::transpose, dy, op::none, T(1), *dx);
    }
  }
}

inline void check_batch(const transformer_config& c, const token_batch& batch) {
  if (batch.seq_len < 1 || batch.seq_len > c.max_len) {
    detail::raise<shape_error>("token_batch: seq_len must be in [1, max_len = ", c.max_len,
                               "], got ", batch.seq_len);
  }
  if (batch.ids.empty() || batch.ids.size() % static_cast<std::size_t>(batch.seq_len) != 0) {
    detail::raise<shape_error>("token_batch: ids must hold n * seq_len = n * ", batch.seq_len,
                               " ids with n >= 1, got ", batch.ids.size());
  }
  for (std::size_t i = 0; i < batch.ids.size(); ++i) {
    if (batch.ids[i] < 0 || batch.ids[i] >= c.vocab_size) {
      detail::raise<value_error>("token_batch: id ", batch.ids[i], " at position ", i,
                                 " is outside the vocabulary [0, ", c.vocab_size, ")");
    }
  }
}

template <class Index>
void check_targets(std::span<const std::int32_t> targets, std::size_t expected, Index classes,
                   bool allow_ignore, const char* what) {
  if (targets.size() != expected) {
    detail::raise<shape_error>(what, ": expected ", expected, " entries, got ", targets.size());
  }
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const bool ok = (targets[i] >= 0 && targets[i] < classes) || (allow_ignore && targets[i] == -1);
    if (!ok) {
      detail::raise<value_error>(what, ": entry ", i, " = ", targets[i], " is not in [0, ", classes,
                                 ")", allow_ignore ? " or -1 (ignored)" : "");
    }
  }
}

// Parameter p, frozen, as held: in T or in bf16.
template <nn_backend B>
binding<B> frozen_binding(const transformer_weights<B>& w, std::size_t p) {
  if constexpr (frozen_bf16_backend<B>) {
    if (w.in_bf16(p)) return {nullptr, nullptr, &w.frozen(p)};
  }
  return {&w.value(p), nullptr};
}

// Full-parameter bindings: every parameter trains when `grads` is given.
template <nn_backend B>
void bind_full(const transformer_weights<B>& w, transformer_weights<B>* grads,
               transformer_workspace<B>& ws) {
  if (grads && grads->size() != w.size()) {
    detail::raise<config_error>("gradients: expected ", w.size(), " parameters, got ",
                                grads->size());
  }
  if (grads && w.base_in_bf16()) {
    detail::raise<config_error>(
        "full-parameter training needs the base weights in full precision, these hold their "
        "linear weights and embeddings in bf16 (convert_base_to_bf16): train adapters (LoRA) on "
        "a bf16 base, or keep the base in fp32 to train every weight");
  }
  ws.params.assign(w.size(), {});
  for (std::size_t p = 0; p < w.size(); ++p) {
    ws.params[p] = grads ? binding<B>{&w.value(p), &grads->value(p)} : frozen_binding(w, p);
  }
  ws.loras.assign(static_cast<std::size_t>(w.config().n_layers * linears_per_layer), {});
  ws.trains = no_factors;
}

// LoRA bindings: base weights frozen; adapters on their linears; modules_to_save replace the
// weight of the same name. Gradients go to `grads` when given and `trains` names a factor.
// Everything is checked before anything is bound.
template <nn_backend B>
void bind_lora(const transformer_weights<B>& w, const adapter_set<B>& adapters, factor_set trains,
               gradient_set<B>* grads, transformer_workspace<B>& ws) {
  const index_t n_layers = w.config().n_layers;
  auto& found = ws.found_adapters;  // the workspace's: binding allocates nothing once warmed up
  found.clear();
  for (const auto& [name, a] : adapters) {
    ws.name_buffer.assign(name).append(".weight");
    const auto& weight = ws.name_buffer;
    const std::size_t p = w.contains(weight) ? w.index_of(weight) : w.size();
    index_t linear = -1;
    if (p < w.size() && index_t(p) >= layer_base(0) && index_t(p) < layer_base(n_layers)) {
      const index_t layer = (index_t(p) - layer_base(0)) / per_layer,
                    off = (index_t(p) - layer_base(0)) % per_layer;
      for (index_t j = 0; j < linears_per_layer; ++j) {
        if (linear_weight[j] == off) linear = layer * linears_per_layer + j;
      }
    }
    if (linear < 0) {
      detail::raise<config_error>(
          "adapter '", name,
          "' is not a linear module of the "
          "model (layers.{i}.attention.{q,k,v,o} or layers.{i}.mlp.{fc1,fc2})");
    }
    if (a.out_features() != w.rows(p) || a.in_features() != w.cols(p)) {
      detail::raise<shape_error>(
          "adapter '", name, "' is for a ", detail::shape_string(a.out_features(), a.in_features()),
          " weight, the model's is ", detail::shape_string(w.rows(p), w.cols(p)));
    }
    detail::check_residual(a);
    found.emplace_back(std::size_t(linear), &a, &name);
  }
  for (const auto& [name, m] : adapters.modules_to_save()) {
    const std::size_t p = w.index_of(name);
    if (B::rows(m) != w.rows(p) || B::cols(m) != w.cols(p)) {
      detail::raise<shape_error>("module to save '", name, "' expected ",
                                 detail::shape_string(w.rows(p), w.cols(p)), ", got ",
                                 detail::shape_string(B::rows(m), B::cols(m)));
    }
  }
  const bool train = grads && trains.any();
  ws.params.assign(w.size(), {});
  for (std::size_t p = 0; p < w.size(); ++p) ws.params[p] = frozen_binding(w, p);
  for (const auto& [name, m] : adapters.modules_to_save()) {
    ws.params[w.index_of(name)] = {&m, train ? &grads->modules_to_save[name] : nullptr};
  }
  ws.loras.assign(static_cast<std::size_t>(n_layers * linears_per_layer), {});
  for (const auto& [linear, a, name] : found)
    ws.loras[linear] = {a, train ? &(*grads)[*name] : nullptr};
  ws.trains = trains;
}

// Embeddings, layers and final layer norm: ws.hf [d, N] for `batch`.
template <nn_backend B>
void forward(const transformer_config& c, const token_batch& batch, transformer_workspace<B>& ws) {
  using T = typename B::scalar;
  const index_t len = batch.seq_len, n = batch.num_sequences(), big_n = n * len;
  const std::span<const std::int32_t> ids(batch.ids);
  ws.positions.resize(std::size_t(big_n));
  ws.key_valid_host.resize(len, n);
  for (index_t s = 0; s < n; ++s) {
    for (index_t j = 0; j < len; ++j) {
      ws.positions[std::size_t(s * len + j)] = static_cast<std::int32_t>(j);
      ws.key_valid_host(j, s) = ids[std::size_t(s * len + j)] == c.pad_id ? T(0) : T(1);
    }
  }
  detail::nn::assign_from_host<B>(ws.key_valid, ws.key_valid_host);
  ws.h.resize(std::size_t(c.n_layers + 1));
  ws.layers.resize(std::size_t(c.n_layers));
  const auto& P = ws.params;
  embedding_forward(P[word_embeddings], ids, false, ws.h[0]);
  embedding_forward(P[position_embeddings], ws.positions, true, ws.h[0]);
  const T scale = T(1) / std::sqrt(T(c.d_model / c.n_heads));
  const T eps = T(c.layer_norm_eps);
  for (index_t i = 0; i < c.n_layers; ++i) {
    auto& L = ws.layers[std::size_t(i)];
    const std::size_t p = std::size_t(layer_base(i));
    const auto* lo = &ws.loras[std::size_t(i * linears_per_layer)];
    const auto& x = ws.h[std::size_t(i)];
    auto& out = ws.h[std::size_t(i + 1)];
    nn_primitives<B>::layer_norm_forward(x, *P[p + ln1_w].value, *P[p + ln1_b].value, eps, L.y1,
                                         L.ln1_xhat, L.ln1_rstd);
    linear_forward<B>(P[p + q_w], P[p + q_b], lo[0], L.y1, L.ax[0], L.q);
    linear_forward<B>(P[p + k_w], P[p + k_b], lo[1], L.y1, L.ax[1], L.k);
    linear_forward<B>(P[p + v_w], P[p + v_b], lo[2], L.y1, L.ax[2], L.v);
    nn_primitives<B>::attention_forward(L.q, L.k, L.v, ws.key_valid, c.n_heads, scale, L.probs,
                                        L.ctx);
    linear_forward<B>(P[p + o_w], P[p + o_b], lo[3], L.ctx, L.ax[3], out);
    B::axpy(T(1), x, out);  // a = h + o(ctx), kept in `out` until the MLP adds to it
    nn_primitives<B>::layer_norm_forward(out, *P[p + ln2_w].value, *P[p + ln2_b].value, eps, L.y2,
                                         L.ln2_xhat, L.ln2_rstd);
    linear_forward<B>(P[p + fc1_w], P[p + fc1_b], lo[4], L.y2, L.ax[4], L.u);
    nn_primitives<B>::gelu_forward(L.u, L.g);
    linear_forward<B>(P[p + fc2_w], P[p + fc2_b], lo[5], L.g, L.ax[5], ws.dy2);  // dy2 as scratch
    B::axpy(T(1), ws.dy2, out);
  }
  const std::size_t f = std::size_t(final_ln_w(c.n_layers));
  nn_primitives<B>::layer_norm_forward(ws.h[std::size_t(c.n_layers)], *P[f].value, *P[f + 1].value,
                                       eps, ws.hf, ws.final_xhat, ws.final_rstd);
}

// The lowest point the backward must reach: -1 when an embedding trains, else the lowest layer
// with a trainable parameter or adapter, else n_layers.
template <nn_backend B>
index_t lowest_trainable(const transformer_config& c, const transformer_workspace<B>& ws) {
  if (ws.params[word_embeddings].grad || ws.params[position_embeddings].grad) return -1;
  for (index_t i = 0; i < c.n_layers; ++i) {
    for (index_t p = 0; p < per_layer; ++p) {
      if (ws.params[std::size_t(layer_base(i) + p)].grad) return i;
    }
    for (index_t j = 0; j < linears_per_layer; ++j) {
      if (ws.loras[std::size_t(i * linears_per_layer + j)].grad) return i;
    }
  }
  return c.n_layers;
}

// Backward from ws.dhf = dL/dhf [d, N] (when the final layer norm or anything below trains).
template <nn_backend B>
void backward(const transformer_config& c, const token_batch& batch, transformer_workspace<B>& ws) {
  using T = typename B::scalar;
  const auto& P = ws.params;
  const index_t lowest = lowest_trainable(c, ws);
  const std::size_t f = std::size_t(final_ln_w(c.n_layers));
  if (lowest == c.n_layers && !P[f].grad && !P[f + 1].grad) return;
  nn_primitives<B>::layer_norm_backward(ws.dhf, ws.final_xhat, ws.final_rstd, *P[f].value, ws.dh,
                                        false, P[f].grad, P[f + 1].grad);
  const T scale = T(1) / std::sqrt(T(c.d_model / c.n_heads));
  for (index_t i = c.n_layers - 1; i >= 0 && i >= lowest; --i) {
    auto& L = ws.layers[std::size_t(i)];
    const std::size_t p = std::size_t(layer_base(i));
    const auto* lo = &ws.loras[std::size_t(i * linears_per_layer)];
    // Which stages (in backward order fc2, fc1, ln2, o, q/k/v, ln1) have something to train;
    // a stage passes the gradient down only if something below it needs it.
    const auto trains_linear = [&](index_t j) {
      return P[p + std::size_t(linear_weight[j])].grad ||
             P[p + std::size_t(linear_weight[j]) + 1].grad || lo[j].grad;
    };
    const bool need_dx = i > lowest;
    const bool ln1 = P[p + ln1_w].grad || P[p + ln1_b].grad;
    const bool below_qkv = need_dx || ln1;
    const bool below_o = below_qkv || trains_linear(0) || trains_linear(1) || trains_linear(2);
    const bool below_ln2 = below_o || trains_linear(3);
    const bool below_fc1 = below_ln2 || P[p + ln2_w].grad || P[p + ln2_b].grad;
    const bool below_fc2 = below_fc1 || trains_linear(4);

    linear_backward<B>(P[p + fc2_w], P[p + fc2_b], lo[5], ws.trains, L.g, L.ax[5], ws.dh, ws.lora_t,
                       below_fc2 ? &ws.dg : nullptr, false);
    if (!below_fc2) break;
    nn_primitives<B>::gelu_backward(L.u, ws.dg, ws.dg);
    linear_backward<B>(P[p + fc1_w], P[p + fc1_b], lo[4], ws.trains, L.y2, L.ax[4], ws.dg,
                       ws.lora_t, below_fc1 ? &ws.dy2 : nullptr, false);
    if (!below_fc1) break;
    // dL/da = dh (residual) + LN2 backward: accumulated in place, dh now holds dL/da.
    nn_primitives<B>::layer_norm_backward(ws.dy2, L.ln2_xhat, L.ln2_rstd, *P[p + ln2_w].value,
                                          ws.dh, true, P[p + ln2_w].grad, P[p + ln2_b].grad);
    if (!below_ln2) break;
    linear_backward<B>(P[p + o_w], P[p + o_b], lo[3], ws.trains, L.ctx, L.ax[3], ws.dh, ws.lora_t,
                       below_o ? &ws.dctx : nullptr, false);
    if (!below_o) break;
    nn_primitives<B>::attention_backward(L.q, L.k, L.v, L.probs, ws.dctx, c.n_heads, scale, ws.dq,
                                         ws.dk, ws.dv);
    auto* dy1 = below_qkv ? &ws.dy1 : nullptr;
    linear_backward<B>(P[p + q_w], P[p + q_b], lo[0], ws.trains, L.y1, L.ax[0], ws.dq, ws.lora_t,
                       dy1, false);
    linear_backward<B>(P[p + k_w], P[p + k_b], lo[1], ws.trains, L.y1, L.ax[1], ws.dk, ws.lora_t,
                       dy1, true);
    linear_backward<B>(P[p + v_w], P[p + v_b], lo[2], ws.trains, L.y1, L.ax[2], ws.dv, ws.lora_t,
                       dy1, true);
    if (!below_qkv) break;
    // dL/dh = dL/da (residual) + LN1 backward.
    nn_primitives<B>::layer_norm_backward(ws.dy1, L.ln1_xhat, L.ln1_rstd, *P[p + ln1_w].value,
                                          ws.dh, true, P[p + ln1_w].grad, P[p + ln1_b].grad);
  }
  if (lowest == -1) {
    const std::span<const std::int32_t> ids(batch.ids);
    if (P[word_embeddings].grad)
      nn_primitives<B>::embedding_backward(ws.dh, ids, *P[word_embeddings].grad);
    if (P[position_embeddings].grad) {
      nn_primitives<B>::set_zero(*P[position_embeddings].grad, c.max_len, c.d_model);
      nn_primitives<B>::embedding_backward(ws.dh, ws.positions, *P[position_embeddings].grad);
    }
  }
}

// Classification head on ws.hf: logits [C, n]; with `labels`, returns the mean cross-entropy
// and, when `grad`, fills the head's gradients and ws.dhf.
// With `sum`, the loss and its gradient are those of the SUM over the sequences, not the mean.
template <nn_backend B>
double classification_head(const transformer_config& c, const token_batch& batch,
                           std::span<const std::int32_t> labels, bool grad,
                           transformer_workspace<B>& ws, bool sum = false) {
  using T = typename B::scalar;
  const index_t len = batch.seq_len, n = batch.num_sequences();
  ws.pool_weights_host.setZero(len, n);
  for (index_t s = 0; s < n; ++s) {
    if (c.pool == pooling::first) {
      ws.pool_weights_host(0, s) = T(1);
    } else {
      const T count = ws.key_valid_host.col(s).sum();
      if (count > T(0)) ws.pool_weights_host.col(s) = ws.key_valid_host.col(s) / count;
    }
  }
  detail::nn::assign_from_host<B>(ws.pool_weights, ws.pool_weights_host);
  nn_primitives<B>::weighted_pool(ws.hf, ws.pool_weights, ws.pooled);
  const std::size_t cw = std::size_t(classifier_w(c.n_layers));
  const lora_binding<B> none{};
  linear_forward<B>(ws.params[cw], ws.params[cw + 1], none, ws.pooled, ws.lora_t, ws.logits);
  if (labels.empty()) return 0.0;
  const double loss = nn_primitives<B>::softmax_cross_entropy(
      ws.logits, labels, sum ? T(1) : T(1) / T(n), grad ? &ws.dlogits : nullptr);
  if (grad) {
    linear_backward<B>(ws.params[cw], ws.params[cw + 1], none, no_factors, ws.pooled, ws.lora_t,
                       ws.dlogits, ws.lora_t, &ws.dpooled, false);
    nn_primitives<B>::weighted_pool_backward(ws.dpooled, ws.pool_weights, ws.dhf);
  }
  return sum ? loss : loss / double(n);
}

// MLM head on ws.hf: logits [V, N] = E hf + bias; mean cross-entropy over targets != -1
// (0 when there is none); when `grad`, the head's gradients (dE accumulates) and ws.dhf.
template <nn_backend B>
double mlm_head(const transformer_config& c, std::span<const std::int32_t> targets, bool grad,
                transformer_workspace<B>& ws) {
  using T = typename B::scalar;
  std::size_t count = 0;
  for (const auto t : targets) count += t >= 0 ? 1 : 0;
  const auto& e = ws.params[word_embeddings];
  const auto& bias = ws.params[std::size_t(mlm_bias(c.n_layers))];
  weight_gemm(e, op::none, ws.hf, T(0), ws.logits);
  nn_primitives<B>::add_bias(ws.logits, *bias.value);
  const T g = count ? T(1) / T(count) : T(0);
  const double loss =
      nn_primitives<B>::softmax_cross_entropy(ws.logits, targets, g, grad ? &ws.dlogits : nullptr);
  if (grad) {
    if (e.grad) B::gemm(T(1), ws.dlogits, op::none, ws.hf, op::transpose, T(1), *e.grad);
    if (bias.grad) nn_primitives<B>::row_sums(ws.dlogits, *bias.grad);
    weight_gemm(e, op::transpose, ws.dlogits, T(0), ws.dhf);
  }
  return count ? loss / double(count) : 0.0;
}

// Full-parameter mode: zero the gradients no loss term writes (the unused head), and the word
// embedding's, which accumulates from the tied head and the embedding lookup.
template <nn_backend B>
void clear_full_gradients(transformer_weights<B>& grads, bool classification) {
  const auto& c = grads.config();
  const auto zero = [&](std::size_t p) {
    nn_primitives<B>::set_zero(grads.value(p), grads.rows(p), grads.cols(p));
  };
  zero(word_embeddings);
  if (classification) {
    zero(std::size_t(mlm_bias(c.n_layers)));
  } else {
    zero(std::size_t(classifier_w(c.n_layers)));
    zero(std::size_t(classifier_w(c.n_layers)) + 1);
  }
}

template <nn_backend B>
void check_same_config(const transformer_weights<B>& w, const transformer_weights<B>& grads) {
  if (grads.size() != w.size() || grads.num_scalars() != w.num_scalars()) {
    detail::raise<shape_error>(
        "gradients: not shaped like the weights (make them with zeros_like)");
  }
}

inline const std::vector<std::int32_t> no_labels{};

}  // namespace detail::nn

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

// Classification logits [num_classes, n] of the base model with `adapters` applied (an empty
// adapter_set: the base model).
template <nn_backend B>
typename B::matrix classification_logits(const transformer_weights<B>& w,
                                         const adapter_set<B>& adapters, const token_batch& batch,
                                         transformer_workspace<B>& ws) {
  detail::nn::check_batch(w.config(), batch);
  detail::nn::bind_lora<B>(w, adapters, no_factors, nullptr, ws);
  detail::nn::forward(w.config(), batch, ws);
  detail::nn::classification_head(w.config(), batch, detail::nn::no_labels, false, ws);
  return ws.logits;
}

// Class probabilities [num_classes, n].
template <nn_backend B>
typename B::matrix class_probabilities(const transformer_weights<B>& w,
                                       const adapter_set<B>& adapters, const token_batch& batch,
                                       transformer_workspace<B>& ws) {
  auto p = classification_logits(w, adapters, batch, ws);
  nn_primitives<B>::softmax_columns(p);
  return p;
}

// The predicted class of each sequence (argmax of the logits; the lowest index on ties).
template <nn_backend B>
std::vector<std::int32_t> predict(const transformer_weights<B>& w, const adapter_set<B>& adapters,
                                  const token_batch& batch, transformer_workspace<B>& ws) {
  const auto logits = B::to_host(classification_logits(w, adapters, batch, ws));
  std::vector<std::int32_t> out(std::size_t(logits.cols()));
  for (index_t s = 0; s < logits.cols(); ++s) {
    index_t best = 0;
    logits.col(s).maxCoeff(&best);
    out[std::size_t(s)] = static_cast<std::int32_t>(best);
  }
  return out;
}

// Mean cross-entropy of the classifier over the batch (labels in [0, num_classes)).
template <nn_backend B>
double classification_loss(const transformer_weights<B>& w, const adapter_set<B>& adapters,
                           const token_batch& batch, std::span<const std::int32_t> labels,
                           transformer_workspace<B>& ws) {
  detail::nn::check_batch(w.config(), batch);
  detail::nn::check_targets(labels, std::size_t(batch.num_sequences()), w.config().num_classes,
                            false, "labels");
  detail::nn::bind_lora<B>(w, adapters, no_factors, nullptr, ws);
  detail::nn::forward(w.config(), batch, ws);
  return detail::nn::classification_head(w.config(), batch, labels, false, ws);
}

// Mean masked-token cross-entropy: targets [n * seq_len], the original id at masked positions
// and -1 elsewhere (ignored). 0 when no position is masked.
template <nn_backend B>
double mlm_loss(const transformer_weights<B>& w, const token_batch& batch,
                std::span<const std::int32_t> targets, transformer_workspace<B>& ws) {
  detail::nn::check_batch(w.config(), batch);
  detail::nn::check_targets(targets, batch.ids.size(), w.config().vocab_size, true, "mlm targets");
  detail::nn::bind_full<B>(w, nullptr, ws);
  detail::nn::forward(w.config(), batch, ws);
  return detail::nn::mlm_head(w.config(), targets, false, ws);
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

// LoRA fine-tuning step: returns the mean cross-entropy over the batch and writes, for every
// adapter in `adapters`, grads[name].dA / .dB for the factors in `trains`, and for every module
// to save grads.modules_to_save[name] (when trains names any factor). Base weights get nothing.
template <nn_backend B>
double classification_loss_and_grad(const transformer_weights<B>& w, const adapter_set<B>& adapters,
                                    const token_batch& batch, std::span<const std::int32_t> labels,
                                    factor_set trains, gradient_set<B>& grads,
                                    transformer_workspace<B>& ws) {
  detail::nn::check_batch(w.config(), batch);
  detail::nn::check_targets(labels, std::size_t(batch.num_sequences()), w.config().num_classes,
                            false, "labels");
  detail::nn::bind_lora(w, adapters, trains, &grads, ws);
  detail::nn::forward(w.config(), batch, ws);
  const double loss = detail::nn::classification_head(w.config(), batch, labels, trains.any(), ws);
  if (trains.any()) detail::nn::backward(w.config(), batch, ws);
  return loss;
}

// Sample-level DP-SGD's clipped sum (core/concepts.hpp, per_example_clip_task): the loss SUM
// over the batch, and in `grads` (shaped as classification_loss_and_grad's)
//   sum_i min(1, C / ||g_i||) g_i,
// g_i sequence i's gradient over every trained factor and the head's modules to save. Exact, in
// one forward and one backward: sequences do not interact (attention is per sequence, every other
// op per token), so the batched backward's upstream gradient dy [out, N] of a linear holds every
// sequence's own gradient in its columns, and a LoRA linear's per-sequence gradients are
//   dB_i = s sum_{t in i} dy_t (A x_t)^T [out, r],   dA_i = s sum_{t in i} (B^T dy_t) x_t^T [r,
//   in].
// Norms: privacy::per_example_norm (direct, or from the token Gram matrices; automatic picks the
// cheaper per factor). The sum: the same GEMMs as the non-private step with the columns of A x
// (for dB) and of B^T dy (for dA) scaled by c_i: sum_i c_i dB_i = s dy (A x diag(c))^T. This
// beats ghost clipping (scale the loss gradient by c_i and run the backward again), whose second
// pass goes through every frozen base GEMM and attention again; here the second pass is only the
// LoRA gradient GEMMs, at the price of keeping dy [out, N] of each trained linear.
// The head: classifier.weight's g_i = dlogits_i pooled_i^T is rank one (norm ||dlogits_i||
// ||pooled_i||), classifier.bias's is dlogits_i. Other modules to save: config_error.
template <nn_backend B>
clipped_sum classification_clipped_grad_sum(
    const transformer_weights<B>& w, const adapter_set<B>& adapters, const token_batch& batch,
    std::span<const std::int32_t> labels, factor_set trains, double clip_norm,
    gradient_set<B>& grads, transformer_workspace<B>& ws,
    privacy::per_example_norm method = privacy::per_example_norm::automatic) {
  using T = typename B::scalar;
  using privacy::detail::on_host;
  using privacy::detail::scale_column_groups;
  privacy::check_clip_norm(clip_norm, "classification_clipped_grad_sum");
  const auto& c = w.config();
  detail::nn::check_batch(c, batch);
  detail::nn::check_targets(labels, std::size_t(batch.num_sequences()), c.num_classes, false,
                            "labels");
  const std::size_t cw = std::size_t(detail::nn::classifier_w(c.n_layers));
  for (const auto& [name, m] : adapters.modules_to_save()) {
    if (name != w.name(cw) && name != w.name(cw + 1)) {
      detail::raise<config_error>(
          "per-example clipping (sample-level DP): module to save '", name,
          "' has no per-example gradient here; expected only the classifier head ('", w.name(cw),
          "', '", w.name(cw + 1), "') besides the LoRA factors");
    }
  }
  detail::nn::bind_lora(w, adapters, trains, &grads, ws);
  const index_t n = batch.num_sequences(), len = batch.seq_len;
  ws.per_example.resize(ws.loras.size());
  for (std::size_t k = 0; k < ws.loras.size(); ++k) {
    ws.per_example[k].used = false;
    if (ws.loras[k].grad) ws.loras[k].record = &ws.per_example[k];
  }
  detail::nn::forward(c, batch, ws);
  clipped_sum out;
  out.loss_sum = detail::nn::classification_head(c, batch, labels, trains.any(), ws, true);
  if (!trains.any()) return out;
  detail::nn::backward(c, batch, ws);

  // Squared per-sequence norms [n].
  std::vector<double> sq(std::size_t(n), 0.0);
  for (std::size_t k = 0; k < ws.loras.size(); ++k) {
    const auto& rec = ws.per_example[k];
    if (!ws.loras[k].grad || !rec.used) continue;
    const double s = double(ws.loras[k].adapter->scaling);
    if (trains.b)
      privacy::detail::add_outer_norms<T>(on_host<B>(rec.dy), on_host<B>(*rec.ax), len, s, method,
                                          sq);
    if (trains.a)
      privacy::detail::add_outer_norms<T>(on_host<B>(rec.t), on_host<B>(*rec.x), len, s, method,
                                          sq);
  }
  const auto& head_w = ws.params[cw];
  const auto& head_b = ws.params[cw + 1];
  if (head_w.grad || head_b.grad) {
    const auto& dl = on_host<B>(ws.dlogits);     // [C, n]
    const auto& pooled = on_host<B>(ws.pooled);  // [d, n]
    for (index_t i = 0; i < n; ++i) {
      const double g = double(dl.col(i).squaredNorm());
      if (head_w.grad) sq[std::size_t(i)] += g * double(pooled.col(i).squaredNorm());
      if (head_b.grad) sq[std::size_t(i)] += g;
    }
  }
  const std::vector<double> factor = privacy::clip_factors(sq, clip_norm, out.clipped);

  // The clipped sum: the batch GEMMs with the per-sequence factors on the small side.
  for (std::size_t k = 0; k < ws.loras.size(); ++k) {
    const auto& l = ws.loras[k];
    const auto& rec = ws.per_example[k];
    if (!l.grad) continue;
    const auto& a = *l.adapter;
    if (!rec.used) {  // unreachable by the loss: its gradient is zero
      if (trains.b) l.grad->dB = B::zeros(B::rows(a.B), B::cols(a.B));
      if (trains.a) l.grad->dA = B::zeros(B::rows(a.A), B::cols(a.A));
      continue;
    }
    if (trains.b) {
      const auto axc = scale_column_groups<B>(*rec.ax, factor, len);  // [r, N]
      B::gemm(a.scaling, rec.dy, op::none, axc, op::transpose, T(0), l.grad->dB);
    }
    if (trains.a) {
      const auto tc = scale_column_groups<B>(rec.t, factor, len);  // [r, N]
      B::gemm(a.scaling, tc, op::none, *rec.x, op::transpose, T(0), l.grad->dA);
    }
  }
  if (head_w.grad || head_b.grad) {
    const auto dlc = scale_column_groups<B>(ws.dlogits, factor, 1);  // [C, n]
    if (head_w.grad) B::gemm(T(1), dlc, op::none, ws.pooled, op::transpose, T(0), *head_w.grad);
    if (head_b.grad) nn_primitives<B>::row_sums(dlc, *head_b.grad);
  }
  return out;
}

// Full-parameter classification step: every parameter's gradient in `grads` (w.zeros_like()).
template <nn_backend B>
double classification_loss_and_grad(const transformer_weights<B>& w, const token_batch& batch,
                                    std::span<const std::int32_t> labels,
                                    transformer_weights<B>& grads, transformer_workspace<B>& ws) {
  detail::nn::check_batch(w.config(), batch);
  detail::nn::check_targets(labels, std::size_t(batch.num_sequences()), w.config().num_classes,
                            false, "labels");
  detail::nn::check_same_config(w, grads);
  detail::nn::bind_full(w, &grads, ws);
  detail::nn::clear_full_gradients(grads, true);
  detail::nn::forward(w.config(), batch, ws);
  const double loss = detail::nn::classification_head(w.config(), batch, labels, true, ws);
  detail::nn::backward(w.config(), batch, ws);
  return loss;
}

// Full-parameter masked-LM step (pretraining): every parameter's gradient in `grads`.
template <nn_backend B>
double mlm_loss_and_grad(const transformer_weights<B>& w, const token_batch& batch,
                         std::span<const std::int32_t> targets, transformer_weights<B>& grads,
                         transformer_workspace<B>& ws) {
  detail::nn::check_batch(w.config(), batch);
  detail::nn::check_targets(targets, batch.ids.size(), w.config().vocab_size, true, "mlm targets");
  detail::nn::check_same_config(w, grads);
  detail::nn::bind_full(w, &grads, ws);
  detail::nn::clear_full_gradients(grads, false);
  detail::nn::forward(w.config(), batch, ws);
  const double loss = detail::nn::mlm_head(w.config(), targets, true, ws);
  detail::nn::backward(w.config(), batch, ws);
  return loss;
}

}  // namespace rolora
