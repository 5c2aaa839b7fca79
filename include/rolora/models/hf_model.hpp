// Forward and backward of the Hugging Face families (hf_config.hpp) with LoRA adapters on their
// linears, written from the Hugging Face modeling code, on any hf_nn_backend (core/concepts.hpp):
// eigen_backend<T> (the default) and thrust_backend<T, System> (T = float or double).
//
// Encoders (BertForSequenceClassification, RobertaForSequenceClassification), post-LN:
//   h0 = LN(word[ids] + position[pos] + token_type[types])   pos = j (BERT); RoBERTa counts the
//        non-pad ids from padding_idx + 1 and gives pad tokens padding_idx
//   layer: a = LN1(h + o(attention(q h, k h, v h))),  h' = LN2(a + out(GELU(intermediate a)))
//   BERT head:    logits = classifier(tanh(pooler h_L[first token]))
//   RoBERTa head: logits = classifier.out_proj(tanh(classifier.dense h_L[first token]))
//   loss = mean cross-entropy over the sequences
// Decoders (LlamaForCausalLM, Qwen2ForCausalLM), pre-norm:
//   h0 = embed[ids]
//   layer: x = RMS1(h); q, k, v = rotary(q x), rotary(k x), v x      (rotate-half layout)
//          h2 = h + o(causal grouped-query attention(q, k, v))
//          h' = h2 + down(silu(gate RMS2(h2)) * up RMS2(h2))
//   logits = lm_head RMS_f(h_L)  (lm_head = embed when tied)
//   loss = mean over every predicted token of -log p(labels[j + 1] | tokens <= j); labels < 0
//          (Hugging Face's -100) are not predicted
// Attention masks padded keys (attention_mask 0) with weight exactly 0, as the Hugging Face
// additive mask of the dtype's minimum does after the softmax; a query with no key to attend to
// gets a zero context. No dropout anywhere (training here is deterministic).
//
// A linear y = W x + b computes W x + b + s B (A x) (+ residual x) when the adapter_set has an
// adapter under the linear's PEFT module path (linear_name); modules_to_save named
// "<head module>.weight" / ".bias" (e.g. "classifier.out_proj.weight") replace the head's
// tensors and train with the adapters. The backward stops at the lowest layer with a trained
// adapter. Activations are column-major, one token per column, sequence-major (token j of
// sequence s is column s L + j). Every step is a backend call (GEMMs, nn_primitives), so the
// Thrust backends run it where their matrices live; only the index bookkeeping (masks,
// positions, rotary angles) is formed on the host.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/core/error.hpp>
#include <rolora/models/hf_weights.hpp>
#include <rolora/nn/nn_backend.hpp>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace rolora::models {

// n sequences of L tokens, sequence-major: ids[s * seq_len + j].
struct hf_batch {
  index_t seq_len = 0;
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> attention_mask;  // 1: a token, 0: padding; empty: all 1
  std::vector<std::int32_t> token_types;     // encoders; empty: all 0

  index_t num_sequences() const {
    return seq_len > 0 ? static_cast<index_t>(ids.size()) / seq_len : 0;
  }
  bool valid(std::size_t t) const { return attention_mask.empty() || attention_mask[t] != 0; }

  void check(const hf_config& c) const {
    if (seq_len < 1 || ids.empty() || ids.size() % std::size_t(seq_len) != 0) {
      rolora::detail::raise<shape_error>("hf_batch: ", ids.size(),
                                         " ids are not whole sequences of seq_len ", seq_len);
    }
    const index_t max_len = c.kind == family::roberta
                                ? c.max_position_embeddings - c.pad_token_id - 1
                                : c.max_position_embeddings;
    if (is_encoder(c.kind) && seq_len > max_len) {
      rolora::detail::raise<shape_error>("hf_batch: seq_len ", seq_len, " exceeds the model's ",
                                         max_len, " positions");
    }
    for (std::size_t t = 0; t < ids.size(); ++t) {
      if (ids[t] < 0 || ids[t] >= c.vocab_size) {
        rolora::detail::raise<value_error>("hf_batch: token id ", ids[t], " at ", t,
                                           " outside the vocabulary [0, ", c.vocab_size, ")");
      }
    }
    if (!attention_mask.empty() && attention_mask.size() != ids.size()) {
      rolora::detail::raise<shape_error>("hf_batch: attention_mask has ", attention_mask.size(),
                                         " entries for ", ids.size(), " ids");
    }
    if (!token_types.empty()) {
      if (token_types.size() != ids.size()) {
        rolora::detail::raise<shape_error>("hf_batch: token_types has ", token_types.size(),
                                           " entries for ", ids.size(), " ids");
      }
      for (const auto t : token_types) {
        if (t < 0 || t >= c.type_vocab_size) {
          rolora::detail::raise<value_error>("hf_batch: token type ", t, " outside [0, ",
                                             c.type_vocab_size, ")");
        }
      }
    }
  }
};

// Buffers of one evaluation, reused across calls with the same shapes (one per thread).
template <class T, class B = eigen_backend<T>>
struct hf_workspace {
  using matrix = typename B::matrix;
  struct layer {
    matrix x;                    // [d, N] the layer's input
    matrix q, k, v, probs, ctx;  // [q_dim, N], [kv_dim, N] x2, [L, L H n], [q_dim, N]
    matrix xhat1, rstd1, a;      // norm 1: normalised input, [N, 1], output [d, N]
    matrix h2;                   // h + o(ctx)
    matrix xhat2, rstd2, b;      // norm 2 (encoders: b is the layer output)
    matrix u, g, m;              // encoders: intermediate, GELU(u); decoders: gate, up,
                                 // silu(gate) * up
    std::array<matrix, max_linears_per_layer> ax;  // [r, N]: A x of each adapted linear
  };
  std::vector<layer> layers;
  matrix top, final_xhat, final_rstd, hf;  // decoders: final norm; encoders: top = h_L
  matrix key_valid;                        // [L, n]
  matrix first_token;                      // [L, n]: 1 in row 0 (encoders' head input)
  matrix cls, head_hidden, logits, dlogits;
  matrix cos, sin;  // [head_dim / 2, L]
  host_matrix<T> key_valid_host, first_token_host, cos_host, sin_host;
  std::vector<std::int32_t> positions, no_token_types;
  matrix dx, dy, da, dctx, dq, dk, dv, dg, du, dm, tmp, bt_dy;
};

namespace detail::hf {

template <class B>
using matrix_t = typename B::matrix;
template <class B>
using prims = nn_primitives<B>;

// What backward needs to know about one linear.
template <class B>
struct linear_binding {
  const hf_linear<typename B::scalar, B>* base = nullptr;
  const lora_adapter<B>* adapter = nullptr;
  lora_gradients<B>* grad = nullptr;  // null: frozen
};

// c = op(w) x + beta c for a frozen weight held in T (w) or in bf16 (w_bf16, w empty).
template <class B>
void frozen_product(const matrix_t<B>& w, const bf16_matrix& w_bf16, op op_w, const matrix_t<B>& x,
                    typename B::scalar beta, matrix_t<B>& c) {
  if constexpr (frozen_bf16_backend<B>) {
    if (w.size() == 0) {
      B::frozen_gemm(w_bf16, op_w, x, beta, c);
      return;
    }
  }
  B::gemm(typename B::scalar(1), w, op_w, x, op::none, beta, c);
}

template <class B>
void linear_forward(const linear_binding<B>& l, const matrix_t<B>& x, matrix_t<B>& ax,
                    matrix_t<B>& y) {
  using T = typename B::scalar;
  frozen_product<B>(l.base->weight, l.base->weight_bf16, op::none, x, T(0), y);
  if (l.base->has_bias()) prims<B>::add_bias(y, l.base->bias);
  if (l.adapter) {
    B::gemm(T(1), l.adapter->A, op::none, x, op::none, T(0), ax);
    B::gemm(l.adapter->scaling, l.adapter->B, op::none, ax, op::none, T(1), y);
    if (l.adapter->has_residual())
      B::gemm(T(1), l.adapter->residual, op::none, x, op::none, T(1), y);
  }
}

// Gradients of the trained factors for dy, and dx (+)= dL/dx when dx is not null.
template <class B>
void linear_backward(const linear_binding<B>& l, factor_set trains, const matrix_t<B>& x,
                     const matrix_t<B>& ax, const matrix_t<B>& dy, matrix_t<B>& bt_dy,
                     matrix_t<B>* dx, bool accumulate) {
  using T = typename B::scalar;
  const T beta = accumulate ? T(1) : T(0);
  if (l.adapter && (l.grad || dx)) {
    B::gemm(T(1), l.adapter->B, op::transpose, dy, op::none, T(0), bt_dy);  // [r, N]
  }
  if (l.adapter && l.grad) {
    if (trains.b) B::gemm(l.adapter->scaling, dy, op::none, ax, op::transpose, T(0), l.grad->dB);
    if (trains.a) B::gemm(l.adapter->scaling, bt_dy, op::none, x, op::transpose, T(0), l.grad->dA);
  }
  if (!dx) return;
  frozen_product<B>(l.base->weight, l.base->weight_bf16, op::transpose, dy, beta, *dx);
  if (l.adapter) {
    B::gemm(l.adapter->scaling, l.adapter->A, op::transpose, bt_dy, op::none, T(1), *dx);
    if (l.adapter->has_residual()) {
      B::gemm(T(1), l.adapter->residual, op::transpose, dy, op::none, T(1), *dx);
    }
  }
}

// Rotary inverse frequencies as transformers computes them, with Llama-3's rope_scaling.
inline std::vector<double> rope_inv_freq(const hf_config& c) {
  const index_t half = c.head_dim / 2;
  std::vector<double> f(static_cast<std::size_t>(half));
  for (index_t i = 0; i < half; ++i) {
    f[std::size_t(i)] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
  }
  if (!c.rope_scaling) return f;
  const auto& s = *c.rope_scaling;
  const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (auto& x : f) {
    const double wavelen = 2 * std::numbers::pi / x;
    if (wavelen > low_wavelen) {
      x /= s.factor;
    } else if (wavelen >= high_wavelen) {  // medium band: interpolate
      const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      x = (1 - smooth) * x / s.factor + smooth * x;
    }
  }
  return f;
}

template <class B>
const matrix_t<B>& saved_or(const adapter_set<B>& adapters, const std::string& name,
                            const matrix_t<B>& fallback) {
  const auto& saved = adapters.modules_to_save();
  const auto it = saved.find(name);
  return it == saved.end() ? fallback : it->second;
}

// Index of the lowest layer with a trained adapter; num_layers when none trains.
template <class T, class B>
index_t lowest_trained_layer(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                             factor_set trains) {
  if (!trains.any()) return model.config.num_layers;
  for (index_t i = 0; i < model.config.num_layers; ++i) {
    for (std::size_t r = 0; r < linears_per_layer(model.config.kind); ++r) {
      if (adapters.contains(linear_name(model.config.kind, i, r))) return i;
    }
  }
  return model.config.num_layers;
}

template <class T, class B>
linear_binding<B> bind(const hf_model<T, B>& model, const adapter_set<B>& adapters, index_t layer,
                       std::size_t role, std::type_identity_t<gradient_set<B>>* grads) {
  linear_binding<B> b{&model.layers[std::size_t(layer)].linears[role], nullptr, nullptr};
  const std::string name = linear_name(model.config.kind, layer, role);
  if (adapters.contains(name)) {
    b.adapter = &adapters.at(name);
    if (grads) b.grad = &(*grads)[name];
  }
  return b;
}

// Hugging Face's attention scaling, 1 / sqrt(head_dim): one value for forward and backward.
template <class T>
T attention_scale(const hf_config& c) {
  return T(1) / std::sqrt(T(c.head_dim));
}

template <class T, class B>
void key_valid_of(const hf_batch& batch, hf_workspace<T, B>& ws) {
  const index_t len = batch.seq_len, n = batch.num_sequences();
  ws.key_valid_host.resize(len, n);
  for (index_t s = 0; s < n; ++s) {
    for (index_t j = 0; j < len; ++j) {
      ws.key_valid_host(j, s) = batch.valid(std::size_t(s * len + j));
    }
  }
  rolora::detail::nn::assign_from_host<B>(ws.key_valid, ws.key_valid_host);
}

// out = embed_tokens[ids] as columns [d, n].
template <class T, class B>
void embed(const hf_model<T, B>& model, std::span<const std::int32_t> ids, matrix_t<B>& out) {
  if constexpr (frozen_bf16_backend<B>) {
    if (model.base_in_bf16())
      return B::frozen_gather_rows(model.embed_tokens_bf16, ids, false, out);
  }
  prims<B>::embedding_forward(model.embed_tokens, ids, false, out);
}

// c = op(lm_head) x: logits [V, N] from hidden states, or (op::transpose) back.
template <class T, class B>
void output_product(const hf_model<T, B>& model, op op_w, const matrix_t<B>& x, matrix_t<B>& c) {
  if (model.config.tie_word_embeddings) {
    frozen_product<B>(model.embed_tokens, model.embed_tokens_bf16, op_w, x, T(0), c);
  } else {
    frozen_product<B>(model.lm_head.weight, model.lm_head.weight_bf16, op_w, x, T(0), c);
  }
}

// ----- encoders ------------------------------------------------------------------------------

template <class T, class B>
void encoder_forward(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                     const hf_batch& batch, hf_workspace<T, B>& ws) {
  const hf_config& c = model.config;
  batch.check(c);
  const index_t len = batch.seq_len, n = batch.num_sequences(), tokens = len * n;
  const T eps = T(c.layer_norm_eps), scale = attention_scale<T>(c);
  key_valid_of(batch, ws);

  // Embeddings: word + position + token type, then LayerNorm.
  ws.positions.resize(std::size_t(tokens));
  for (index_t s = 0; s < n; ++s) {
    index_t count = 0;
    for (index_t j = 0; j < len; ++j) {
      const auto t = std::size_t(s * len + j);
      if (c.kind == family::bert) {
        ws.positions[t] = std::int32_t(j);
      } else {  // create_position_ids_from_input_ids: by id, not by attention_mask
        const bool real = batch.ids[t] != c.pad_token_id;
        count += real;
        ws.positions[t] = std::int32_t(real ? count + c.pad_token_id : c.pad_token_id);
      }
    }
  }
  ws.no_token_types.assign(batch.token_types.empty() ? std::size_t(tokens) : 0, 0);
  auto& h = ws.tmp;
  embed(model, batch.ids, h);
  prims<B>::embedding_forward(model.position_embeddings, ws.positions, true, h);
  prims<B>::embedding_forward(model.token_type_embeddings,
                              batch.token_types.empty() ? ws.no_token_types : batch.token_types,
                              true, h);
  ws.layers.resize(std::size_t(c.num_layers));
  prims<B>::layer_norm_forward(h, model.embed_norm_weight, model.embed_norm_bias, eps,
                               ws.layers[0].x, ws.dx, ws.dy);  // dx, dy: scratch here

  for (index_t i = 0; i < c.num_layers; ++i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, nullptr); };
    linear_forward(lin(0), L.x, L.ax[0], L.q);
    linear_forward(lin(1), L.x, L.ax[1], L.k);
    linear_forward(lin(2), L.x, L.ax[2], L.v);
    prims<B>::attention_forward(L.q, L.k, L.v, ws.key_valid, c.num_heads, scale, L.probs, L.ctx,
                                c.num_heads, false);
    linear_forward(lin(3), L.ctx, L.ax[3], L.h2);
    B::axpy(T(1), L.x, L.h2);
    prims<B>::layer_norm_forward(L.h2, W.norm1_weight, W.norm1_bias, eps, L.a, L.xhat1, L.rstd1);
    linear_forward(lin(4), L.a, L.ax[4], L.u);
    prims<B>::gelu_forward(L.u, L.g);
    linear_forward(lin(5), L.g, L.ax[5], L.m);
    B::axpy(T(1), L.a, L.m);
    auto& out = i + 1 < c.num_layers ? ws.layers[std::size_t(i + 1)].x : ws.top;
    prims<B>::layer_norm_forward(L.m, W.norm2_weight, W.norm2_bias, eps, out, L.xhat2, L.rstd2);
  }

  // Head on the first token of each sequence: cls = h_L(:, s L) (a pool with weight 1 on it).
  if (ws.first_token_host.rows() != len || ws.first_token_host.cols() != n) {  // else as before
    ws.first_token_host.setZero(len, n);
    ws.first_token_host.row(0).setOnes();
    rolora::detail::nn::assign_from_host<B>(ws.first_token, ws.first_token_host);
  }
  prims<B>::weighted_pool(ws.top, ws.first_token, ws.cls);
  const auto names = model.head_modules();
  const auto& hidden_lin = c.kind == family::bert ? model.pooler : model.head.at(names[0]);
  const std::string hidden_name = c.kind == family::bert ? "bert.pooler.dense" : names[0];
  const auto& out_lin = model.head.at(names.back());
  const auto& hw = saved_or(adapters, hidden_name + ".weight", hidden_lin.weight);
  const auto& hb = saved_or(adapters, hidden_name + ".bias", hidden_lin.bias);
  B::gemm(T(1), hw, op::none, ws.cls, op::none, T(0), ws.head_hidden);
  prims<B>::add_bias(ws.head_hidden, hb);
  prims<B>::tanh_forward(ws.head_hidden, ws.head_hidden);
  const auto& ow = saved_or(adapters, names.back() + ".weight", out_lin.weight);
  const auto& ob = saved_or(adapters, names.back() + ".bias", out_lin.bias);
  B::gemm(T(1), ow, op::none, ws.head_hidden, op::none, T(0), ws.logits);
  prims<B>::add_bias(ws.logits, ob);
}

// Gradients of the mean loss whose logits gradient is ws.dlogits [C, n].
template <class T, class B>
void encoder_backward(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                      factor_set trains, gradient_set<B>& grads, hf_workspace<T, B>& ws) {
  const hf_config& c = model.config;
  const T scale = attention_scale<T>(c);
  const auto names = model.head_modules();
  const std::string hidden_name = c.kind == family::bert ? "bert.pooler.dense" : names[0];
  const auto& hidden_lin = c.kind == family::bert ? model.pooler : model.head.at(names[0]);
  const auto& saved = adapters.modules_to_save();
  auto trained = [&](const std::string& name) { return trains.any() && saved.count(name); };

  // logits = Wo t + bo, t = tanh(Wh cls + bh).
  const auto& ow = saved_or(adapters, names.back() + ".weight", model.head.at(names.back()).weight);
  if (trained(names.back() + ".weight")) {
    B::gemm(T(1), ws.dlogits, op::none, ws.head_hidden, op::transpose, T(0),
            grads.modules_to_save[names.back() + ".weight"]);
  }
  if (trained(names.back() + ".bias")) {
    prims<B>::row_sums(ws.dlogits, grads.modules_to_save[names.back() + ".bias"]);
  }
  B::gemm(T(1), ow, op::transpose, ws.dlogits, op::none, T(0), ws.dg);  // [d, n] dL/dt
  prims<B>::tanh_backward(ws.head_hidden, ws.dg, ws.dg);                // through tanh
  if (trained(hidden_name + ".weight")) {
    B::gemm(T(1), ws.dg, op::none, ws.cls, op::transpose, T(0),
            grads.modules_to_save[hidden_name + ".weight"]);
  }
  if (trained(hidden_name + ".bias")) {
    prims<B>::row_sums(ws.dg, grads.modules_to_save[hidden_name + ".bias"]);
  }
  const index_t lowest = lowest_trained_layer(model, adapters, trains);
  if (lowest >= c.num_layers) return;
  const auto& hw = saved_or(adapters, hidden_name + ".weight", hidden_lin.weight);
  B::gemm(T(1), hw, op::transpose, ws.dg, op::none, T(0), ws.du);  // [d, n] dL/dcls
  prims<B>::weighted_pool_backward(ws.du, ws.first_token, ws.dx);  // [d, N], 0 off the first

  for (index_t i = c.num_layers - 1; i >= lowest; --i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, &grads); };
    // out = LN2(m), m = a + output(g), g = GELU(u), u = intermediate(a).
    prims<B>::layer_norm_backward(ws.dx, L.xhat2, L.rstd2, W.norm2_weight, ws.dy, false, nullptr,
                                  nullptr);
    ws.da = ws.dy;
    linear_backward(lin(5), trains, L.g, L.ax[5], ws.dy, ws.bt_dy, &ws.dg, false);
    prims<B>::gelu_backward(L.u, ws.dg, ws.du);
    linear_backward(lin(4), trains, L.a, L.ax[4], ws.du, ws.bt_dy, &ws.da, true);
    // a = LN1(h2), h2 = x + o(ctx).
    prims<B>::layer_norm_backward(ws.da, L.xhat1, L.rstd1, W.norm1_weight, ws.dy, false, nullptr,
                                  nullptr);
    linear_backward(lin(3), trains, L.ctx, L.ax[3], ws.dy, ws.bt_dy, &ws.dctx, false);
    prims<B>::attention_backward(L.q, L.k, L.v, L.probs, ws.dctx, c.num_heads, scale, ws.dq, ws.dk,
                                 ws.dv, c.num_heads);
    const bool below = i > lowest;  // dL/dx is needed by a lower layer
    if (below) ws.dx = ws.dy;
    linear_backward(lin(0), trains, L.x, L.ax[0], ws.dq, ws.bt_dy, below ? &ws.dx : nullptr, true);
    linear_backward(lin(1), trains, L.x, L.ax[1], ws.dk, ws.bt_dy, below ? &ws.dx : nullptr, true);
    linear_backward(lin(2), trains, L.x, L.ax[2], ws.dv, ws.bt_dy, below ? &ws.dx : nullptr, true);
    if (i == 0) break;
  }
}

// ----- decoders ------------------------------------------------------------------------------

template <class T, class B>
void decoder_forward(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                     const hf_batch& batch, hf_workspace<T, B>& ws) {
  const hf_config& c = model.config;
  batch.check(c);
  const index_t len = batch.seq_len;
  const T eps = T(c.rms_norm_eps), scale = attention_scale<T>(c);
  key_valid_of(batch, ws);
  const auto inv_freq = rope_inv_freq(c);
  const index_t half = c.head_dim / 2;
  ws.cos_host.resize(half, len);
  ws.sin_host.resize(half, len);
  for (index_t j = 0; j < len; ++j) {
    for (index_t i = 0; i < half; ++i) {
      const double angle = double(j) * inv_freq[std::size_t(i)];
      ws.cos_host(i, j) = T(std::cos(angle));
      ws.sin_host(i, j) = T(std::sin(angle));
    }
  }
  rolora::detail::nn::assign_from_host<B>(ws.cos, ws.cos_host);
  rolora::detail::nn::assign_from_host<B>(ws.sin, ws.sin_host);
  ws.layers.resize(std::size_t(c.num_layers));
  embed(model, batch.ids, ws.layers[0].x);
  for (index_t i = 0; i < c.num_layers; ++i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, nullptr); };
    prims<B>::rms_norm_forward(L.x, W.norm1_weight, eps, L.a, L.xhat1, L.rstd1);
    linear_forward(lin(0), L.a, L.ax[0], L.q);
    linear_forward(lin(1), L.a, L.ax[1], L.k);
    linear_forward(lin(2), L.a, L.ax[2], L.v);
    prims<B>::rotary(L.q, c.num_heads, c.head_dim, ws.cos, ws.sin, false);
    prims<B>::rotary(L.k, c.num_kv_heads, c.head_dim, ws.cos, ws.sin, false);
    prims<B>::attention_forward(L.q, L.k, L.v, ws.key_valid, c.num_heads, scale, L.probs, L.ctx,
                                c.num_kv_heads, true);
    linear_forward(lin(3), L.ctx, L.ax[3], L.h2);
    B::axpy(T(1), L.x, L.h2);
    prims<B>::rms_norm_forward(L.h2, W.norm2_weight, eps, L.b, L.xhat2, L.rstd2);
    linear_forward(lin(4), L.b, L.ax[4], L.u);  // gate
    linear_forward(lin(5), L.b, L.ax[5], L.g);  // up
    prims<B>::swiglu_forward(L.u, L.g, L.m);
    auto& out = i + 1 < c.num_layers ? ws.layers[std::size_t(i + 1)].x : ws.top;
    linear_forward(lin(6), L.m, L.ax[6], out);
    B::axpy(T(1), L.h2, out);
  }
  prims<B>::rms_norm_forward(ws.top, model.final_norm_weight, eps, ws.hf, ws.final_xhat,
                             ws.final_rstd);
  output_product(model, op::none, ws.hf, ws.logits);
}

template <class T, class B>
void decoder_backward(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                      factor_set trains, gradient_set<B>& grads, hf_workspace<T, B>& ws) {
  const hf_config& c = model.config;
  const T scale = attention_scale<T>(c);
  const index_t lowest = lowest_trained_layer(model, adapters, trains);
  if (lowest >= c.num_layers) return;
  output_product(model, op::transpose, ws.dlogits, ws.dy);
  prims<B>::rms_norm_backward(ws.dy, ws.final_xhat, ws.final_rstd, model.final_norm_weight, ws.dx,
                              false);
  for (index_t i = c.num_layers - 1; i >= lowest; --i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, &grads); };
    // out = h2 + down(m), m = silu(gate) * up.
    linear_backward(lin(6), trains, L.m, L.ax[6], ws.dx, ws.bt_dy, &ws.dm, false);
    prims<B>::swiglu_backward(L.u, L.g, ws.dm, ws.du, ws.dg);
    linear_backward(lin(4), trains, L.b, L.ax[4], ws.du, ws.bt_dy, &ws.da, false);
    linear_backward(lin(5), trains, L.b, L.ax[5], ws.dg, ws.bt_dy, &ws.da, true);
    prims<B>::rms_norm_backward(ws.da, L.xhat2, L.rstd2, W.norm2_weight, ws.dx,
                                true);  // dx: dL/dh2
    // h2 = x + o(ctx); ctx = attention(rotary(q a), rotary(k a), v a); a = RMS1(x).
    linear_backward(lin(3), trains, L.ctx, L.ax[3], ws.dx, ws.bt_dy, &ws.dctx, false);
    prims<B>::attention_backward(L.q, L.k, L.v, L.probs, ws.dctx, c.num_heads, scale, ws.dq, ws.dk,
                                 ws.dv, c.num_kv_heads);
    prims<B>::rotary(ws.dq, c.num_heads, c.head_dim, ws.cos, ws.sin, true);
    prims<B>::rotary(ws.dk, c.num_kv_heads, c.head_dim, ws.cos, ws.sin, true);
    const bool below = i > lowest;
    linear_backward(lin(0), trains, L.a, L.ax[0], ws.dq, ws.bt_dy, below ? &ws.da : nullptr, false);
    linear_backward(lin(1), trains, L.a, L.ax[1], ws.dk, ws.bt_dy, below ? &ws.da : nullptr, true);
    linear_backward(lin(2), trains, L.a, L.ax[2], ws.dv, ws.bt_dy, below ? &ws.da : nullptr, true);
    if (below) prims<B>::rms_norm_backward(ws.da, L.xhat1, L.rstd1, W.norm1_weight, ws.dx, true);
    if (i == 0) break;
  }
}

template <class B>
void require_hf_backend() {
  static_assert(hf_nn_backend<B>,
                "rolora::models: the backend does not provide the Hugging Face families' "
                "primitives (hf_nn_backend in rolora/core/concepts.hpp); include "
                "rolora/backend/thrust/nn_primitives.hpp for a Thrust backend");
}

}  // namespace detail::hf

// Causal-LM targets of sequences of length `len` laid end to end: column s L + j predicts
// labels[s L + j + 1]; the last token of each sequence and labels < 0 predict nothing (-1).
// What causal_lm_loss_and_grad scores; evaluations that count right predictions use it too.
inline void next_token_targets(std::span<const std::int32_t> labels, index_t len,
                               std::vector<std::int32_t>& targets) {
  targets.assign(labels.size(), -1);
  for (std::size_t t = 0; t < labels.size(); ++t) {
    if ((index_t(t) + 1) % len != 0 && labels[t + 1] >= 0) targets[t] = labels[t + 1];
  }
}

// Classification logits [num_labels, n] of an encoder (in ws.logits).
template <class T, class B>
const typename B::matrix& classification_logits(const hf_model<T, B>& model,
                                                const adapter_set<B>& adapters,
                                                const hf_batch& batch, hf_workspace<T, B>& ws) {
  detail::hf::require_hf_backend<B>();
  if (!is_encoder(model.config.kind)) {
    rolora::detail::raise<config_error>("classification_logits: ", family_name(model.config.kind),
                                        " is a decoder; use causal_lm_logits");
  }
  detail::hf::encoder_forward(model, adapters, batch, ws);
  return ws.logits;
}

// Next-token logits [vocab, n L] of a decoder (in ws.logits).
template <class T, class B>
const typename B::matrix& causal_lm_logits(const hf_model<T, B>& model,
                                           const adapter_set<B>& adapters, const hf_batch& batch,
                                           hf_workspace<T, B>& ws) {
  detail::hf::require_hf_backend<B>();
  if (is_encoder(model.config.kind)) {
    rolora::detail::raise<config_error>("causal_lm_logits: ", family_name(model.config.kind),
                                        " is an encoder; use classification_logits");
  }
  detail::hf::decoder_forward(model, adapters, batch, ws);
  return ws.logits;
}

// Mean cross-entropy of an encoder over the batch's labels (one per sequence, in
// [0, num_labels)), and the gradients of the trained factors (`trains`) and modules to save.
template <class T, class B>
double classification_loss_and_grad(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                                    const hf_batch& batch, std::span<const std::int32_t> labels,
                                    factor_set trains, std::type_identity_t<gradient_set<B>>* grads,
                                    hf_workspace<T, B>& ws) {
  classification_logits(model, adapters, batch, ws);
  const index_t n = batch.num_sequences();
  if (labels.size() != std::size_t(n)) {
    rolora::detail::raise<shape_error>("classification: ", labels.size(), " labels for ", n,
                                       " sequences");
  }
  for (const auto l : labels) {
    if (l < 0 || l >= model.config.num_labels) {
      rolora::detail::raise<value_error>("classification: label ", l, " outside [0, ",
                                         model.config.num_labels, ")");
    }
  }
  const double sum = detail::hf::prims<B>::softmax_cross_entropy(ws.logits, labels, T(1) / T(n),
                                                                 grads ? &ws.dlogits : nullptr);
  if (grads) detail::hf::encoder_backward(model, adapters, trains, *grads, ws);
  return sum / double(n);
}

// Mean next-token cross-entropy of a decoder over every predicted token (labels [n L], Hugging
// Face's convention: the model shifts them, labels < 0 are ignored), and the gradients.
// `predicted` receives the number of predicted tokens. A batch with none has loss 0.
template <class T, class B>
double causal_lm_loss_and_grad(const hf_model<T, B>& model, const adapter_set<B>& adapters,
                               const hf_batch& batch, std::span<const std::int32_t> labels,
                               factor_set trains, std::type_identity_t<gradient_set<B>>* grads,
                               hf_workspace<T, B>& ws, std::size_t* predicted = nullptr) {
  causal_lm_logits(model, adapters, batch, ws);
  if (labels.size() != batch.ids.size()) {
    rolora::detail::raise<shape_error>("causal LM: ", labels.size(), " labels for ",
                                       batch.ids.size(), " tokens");
  }
  for (const auto l : labels) {
    if (l >= model.config.vocab_size) {
      rolora::detail::raise<value_error>("causal LM: label ", l, " outside the vocabulary [0, ",
                                         model.config.vocab_size, ")");
    }
  }
  thread_local std::vector<std::int32_t> targets;
  next_token_targets(labels, batch.seq_len, targets);
  std::size_t count = 0;
  for (const auto t : targets) count += t >= 0;
  if (predicted) *predicted = count;
  const T scale = count ? T(1) / T(count) : T(0);
  const double sum = detail::hf::prims<B>::softmax_cross_entropy(ws.logits, targets, scale,
                                                                 grads ? &ws.dlogits : nullptr);
  if (grads && count) detail::hf::decoder_backward(model, adapters, trains, *grads, ws);
  return count ? sum / double(count) : 0.0;
}

// The modules a LoRA adapter can go on: every layer's linears, as module_shape with PEFT names.
template <class T, class B>
std::vector<module_shape> adaptable_modules(const hf_model<T, B>& model) {
  std::vector<module_shape> out;
  for (index_t i = 0; i < model.config.num_layers; ++i) {
    for (std::size_t r = 0; r < linears_per_layer(model.config.kind); ++r) {
      const auto& w = model.layers[std::size_t(i)].linears[r];
      out.push_back({linear_name(model.config.kind, i, r), w.out_features(), w.in_features()});
    }
  }
  return out;
}

}  // namespace rolora::models
