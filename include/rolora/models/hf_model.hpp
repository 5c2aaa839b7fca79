// Forward and backward of the Hugging Face families (hf_config.hpp) with LoRA adapters on their
// linears, written from the Hugging Face modeling code, on the CPU (Eigen, T = float or double).
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
// sequence s is column s L + j).
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/backend/eigen/backend.hpp>
#include <rolora/backend/eigen/nn_primitives.hpp>
#include <rolora/core/error.hpp>
#include <rolora/models/hf_weights.hpp>
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
template <class T>
struct hf_workspace {
  using matrix = host_matrix<T>;
  struct layer {
    matrix x;                    // [d, N] the layer's input
    matrix q, k, v, probs, ctx;  // [q_dim, N], [kv_dim, N] x2, [L, L H n], [q_dim, N]
    matrix xhat1, rstd1, a;      // norm 1: normalised input, [N, 1], output [d, N]
    matrix h2;                   // decoders: h + o(ctx)
    matrix xhat2, rstd2, b;      // norm 2 (encoders: b is the layer output)
    matrix u, g, m;              // encoders: intermediate, GELU(u); decoders: gate, up,
                                 // silu(gate) * up
    std::array<matrix, max_linears_per_layer> ax;  // [r, N]: A x of each adapted linear
  };
  std::vector<layer> layers;
  matrix top, final_xhat, final_rstd, hf;  // decoders: final norm; encoders: top = h_L
  matrix key_valid;                        // [L, n]
  matrix cls, head_hidden, logits, dlogits;
  matrix cos, sin;  // [head_dim / 2, L]
  std::vector<std::int32_t> positions;
  matrix dx, dy, da, dctx, dq, dk, dv, dg, du, dm, tmp, bt_dy;
};

namespace detail::hf {

template <class T>
using matrix_t = host_matrix<T>;
template <class T>
using backend_t = eigen_backend<T>;
template <class T>
using prims = nn_primitives<eigen_backend<T>>;

// What backward needs to know about one linear.
template <class T>
struct linear_binding {
  const hf_linear<T>* base = nullptr;
  const lora_adapter<backend_t<T>>* adapter = nullptr;
  lora_gradients<backend_t<T>>* grad = nullptr;  // null: frozen
};

// c = op(w) x + beta c for a frozen weight held in T (w) or in bf16 (w_bf16, w empty).
template <class T>
void frozen_product(const matrix_t<T>& w, const bf16_matrix& w_bf16, op op_w, const matrix_t<T>& x,
                    T beta, matrix_t<T>& c) {
  if constexpr (std::is_same_v<T, float>) {
    if (w.size() == 0) {
      backend_t<T>::frozen_gemm(w_bf16, op_w, x, beta, c);
      return;
    }
  }
  backend_t<T>::gemm(T(1), w, op_w, x, op::none, beta, c);
}

template <class T>
void linear_forward(const linear_binding<T>& l, const matrix_t<T>& x, matrix_t<T>& ax,
                    matrix_t<T>& y) {
  using B = backend_t<T>;
  frozen_product(l.base->weight, l.base->weight_bf16, op::none, x, T(0), y);
  if (l.base->has_bias()) y.colwise() += l.base->bias.col(0);
  if (l.adapter) {
    B::gemm(T(1), l.adapter->A, op::none, x, op::none, T(0), ax);
    B::gemm(l.adapter->scaling, l.adapter->B, op::none, ax, op::none, T(1), y);
    if (l.adapter->has_residual())
      B::gemm(T(1), l.adapter->residual, op::none, x, op::none, T(1), y);
  }
}

// Gradients of the trained factors for dy, and dx (+)= dL/dx when dx is not null.
template <class T>
void linear_backward(const linear_binding<T>& l, factor_set trains, const matrix_t<T>& x,
                     const matrix_t<T>& ax, const matrix_t<T>& dy, matrix_t<T>& bt_dy,
                     matrix_t<T>* dx, bool accumulate) {
  using B = backend_t<T>;
  const T beta = accumulate ? T(1) : T(0);
  if (l.adapter && (l.grad || dx)) {
    B::gemm(T(1), l.adapter->B, op::transpose, dy, op::none, T(0), bt_dy);  // [r, N]
  }
  if (l.adapter && l.grad) {
    if (trains.b) B::gemm(l.adapter->scaling, dy, op::none, ax, op::transpose, T(0), l.grad->dB);
    if (trains.a) B::gemm(l.adapter->scaling, bt_dy, op::none, x, op::transpose, T(0), l.grad->dA);
  }
  if (!dx) return;
  frozen_product(l.base->weight, l.base->weight_bf16, op::transpose, dy, beta, *dx);
  if (l.adapter) {
    B::gemm(l.adapter->scaling, l.adapter->A, op::transpose, bt_dy, op::none, T(1), *dx);
    if (l.adapter->has_residual()) {
      B::gemm(T(1), l.adapter->residual, op::transpose, dy, op::none, T(1), *dx);
    }
  }
}

// Attention over the keys allowed for each query: key_valid(i, s) and, when causal, i <= j.
// q [H hd, N]; k, v [KV hd, N]; query head h reads key/value head h / (H / KV) (repeat_kv).
template <class T>
void attention_forward(const matrix_t<T>& q, const matrix_t<T>& k, const matrix_t<T>& v,
                       const matrix_t<T>& key_valid, index_t heads, index_t kv_heads,
                       index_t head_dim, bool causal, matrix_t<T>& probs, matrix_t<T>& ctx) {
  const index_t len = key_valid.rows(), n = key_valid.cols(), group = heads / kv_heads;
  const T scale = T(1) / std::sqrt(T(head_dim));
  probs.resize(len, len * heads * n);
  ctx.resize(heads * head_dim, len * n);
  for (index_t s = 0; s < n; ++s) {
    for (index_t h = 0; h < heads; ++h) {
      const index_t g = h / group;
      auto p = probs.middleCols((s * heads + h) * len, len);  // [L keys, L queries]
      prims<T>::block_gemm(scale, k.block(g * head_dim, s * len, head_dim, len), op::transpose,
                           q.block(h * head_dim, s * len, head_dim, len), op::none, p);
      for (index_t j = 0; j < len; ++j) {  // softmax over the allowed keys of query j
        const index_t keys = causal ? j + 1 : len;
        auto scores = p.col(j).head(keys).array();
        const auto allowed = key_valid.col(s).head(keys).array() > T(0);
        const T top = allowed.select(scores, std::numeric_limits<T>::lowest()).maxCoeff();
        p.col(j).tail(len - keys).setZero();
        if (!allowed.any()) {
          scores.setZero();
          continue;
        }
        scores = allowed.select((scores - top).exp(), T(0));
        scores /= scores.sum();
      }
      prims<T>::block_gemm(T(1), v.block(g * head_dim, s * len, head_dim, len), op::none, p,
                           op::none, ctx.block(h * head_dim, s * len, head_dim, len));
    }
  }
}

template <class T>
void attention_backward(const matrix_t<T>& q, const matrix_t<T>& k, const matrix_t<T>& v,
                        const matrix_t<T>& probs, const matrix_t<T>& dctx, index_t heads,
                        index_t kv_heads, index_t head_dim, matrix_t<T>& ds, matrix_t<T>& dq,
                        matrix_t<T>& dk, matrix_t<T>& dv) {
  const index_t len = probs.rows(), n = q.cols() / len, group = heads / kv_heads;
  const T scale = T(1) / std::sqrt(T(head_dim));
  dq.resize(q.rows(), q.cols());
  dk.resize(k.rows(), k.cols());  // every block is written by its group's first query head
  dv.resize(v.rows(), v.cols());
  ds.resize(len, len);
  for (index_t s = 0; s < n; ++s) {
    for (index_t h = 0; h < heads; ++h) {
      const index_t g = h / group;
      const auto p = probs.middleCols((s * heads + h) * len, len);
      const auto dc = dctx.block(h * head_dim, s * len, head_dim, len);
      // dv, dk of key/value head g: written by its first query head, added by the others.
      auto dv_g = dv.block(g * head_dim, s * len, head_dim, len);
      auto dk_g = dk.block(g * head_dim, s * len, head_dim, len);
      const bool first = h % group == 0;
      if (first) {
        prims<T>::block_gemm(T(1), dc, op::none, p, op::transpose, dv_g);
      } else {
        dv_g.noalias() += dc * p.transpose();
      }
      prims<T>::block_gemm(T(1), v.block(g * head_dim, s * len, head_dim, len), op::transpose, dc,
                           op::none, ds);  // dL/dp [L keys, L queries]
      for (index_t j = 0; j < len; ++j) {
        const T pd = p.col(j).dot(ds.col(j));
        ds.col(j).array() = p.col(j).array() * (ds.col(j).array() - pd);
      }
      prims<T>::block_gemm(scale, k.block(g * head_dim, s * len, head_dim, len), op::none, ds,
                           op::none, dq.block(h * head_dim, s * len, head_dim, len));
      if (first) {
        prims<T>::block_gemm(scale, q.block(h * head_dim, s * len, head_dim, len), op::none, ds,
                             op::transpose, dk_g);
      } else {
        dk_g.noalias() += scale * q.block(h * head_dim, s * len, head_dim, len) * ds.transpose();
      }
    }
  }
}

// RMSNorm (LlamaRMSNorm): y = w * x / sqrt(mean(x^2) + eps); xhat = x * rstd.
template <class T>
void rms_norm_forward(const matrix_t<T>& x, const matrix_t<T>& w, T eps, matrix_t<T>& y,
                      matrix_t<T>& xhat, matrix_t<T>& rstd) {
  const index_t d = x.rows(), n = x.cols();
  y.resize(d, n);
  xhat.resize(d, n);
  rstd.resize(n, 1);
  for (index_t j = 0; j < n; ++j) {
    const T r = T(1) / std::sqrt(x.col(j).squaredNorm() / T(d) + eps);
    rstd(j, 0) = r;
    xhat.col(j) = x.col(j) * r;
    y.col(j) = w.col(0).cwiseProduct(xhat.col(j));
  }
}
// dx (+)= rstd (g - xhat mean(g * xhat)) with g = dy * w (the weight is frozen).
template <class T>
void rms_norm_backward(const matrix_t<T>& dy, const matrix_t<T>& xhat, const matrix_t<T>& rstd,
                       const matrix_t<T>& w, matrix_t<T>& dx, bool accumulate) {
  const index_t d = dy.rows(), n = dy.cols();
  if (!accumulate) dx.resize(d, n);
  for (index_t j = 0; j < n; ++j) {
    const auto g = (dy.col(j).array() * w.col(0).array()).eval();
    const T m = (g * xhat.col(j).array()).sum() / T(d);
    if (accumulate) {
      dx.col(j).array() += rstd(j, 0) * (g - xhat.col(j).array() * m);
    } else {
      dx.col(j).array() = rstd(j, 0) * (g - xhat.col(j).array() * m);
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

// In place on x [heads hd, N]: the rotate-half rotation of apply_rotary_pos_emb at each token's
// position (column s L + j has position j); inverse = true applies the transpose (backward).
template <class T>
void apply_rotary(matrix_t<T>& x, index_t heads, index_t head_dim, index_t len,
                  const matrix_t<T>& cos, const matrix_t<T>& sin, bool inverse) {
  const index_t half = head_dim / 2;
  for (index_t t = 0; t < x.cols(); ++t) {
    const index_t j = t % len;
    for (index_t h = 0; h < heads; ++h) {
      T* col = x.col(t).data() + h * head_dim;
      for (index_t i = 0; i < half; ++i) {
        const T c = cos(i, j), sn = inverse ? -sin(i, j) : sin(i, j);
        const T a = col[i], b = col[i + half];
        col[i] = a * c - b * sn;
        col[i + half] = b * c + a * sn;
      }
    }
  }
}

template <class T>
const matrix_t<T>& saved_or(const adapter_set<backend_t<T>>& adapters, const std::string& name,
                            const matrix_t<T>& fallback) {
  const auto& saved = adapters.modules_to_save();
  const auto it = saved.find(name);
  return it == saved.end() ? fallback : it->second;
}

// Index of the lowest layer with a trained adapter; num_layers when none trains.
template <class T>
index_t lowest_trained_layer(const hf_model<T>& model, const adapter_set<backend_t<T>>& adapters,
                             factor_set trains) {
  if (!trains.any()) return model.config.num_layers;
  for (index_t i = 0; i < model.config.num_layers; ++i) {
    for (std::size_t r = 0; r < linears_per_layer(model.config.kind); ++r) {
      if (adapters.contains(linear_name(model.config.kind, i, r))) return i;
    }
  }
  return model.config.num_layers;
}

template <class T>
linear_binding<T> bind(const hf_model<T>& model, const adapter_set<backend_t<T>>& adapters,
                       index_t layer, std::size_t role,
                       std::type_identity_t<gradient_set<backend_t<T>>>* grads) {
  linear_binding<T> b{&model.layers[std::size_t(layer)].linears[role], nullptr, nullptr};
  const std::string name = linear_name(model.config.kind, layer, role);
  if (adapters.contains(name)) {
    b.adapter = &adapters.at(name);
    if (grads) b.grad = &(*grads)[name];
  }
  return b;
}

template <class T>
void key_valid_of(const hf_batch& batch, matrix_t<T>& key_valid) {
  const index_t len = batch.seq_len, n = batch.num_sequences();
  key_valid.resize(len, n);
  for (index_t s = 0; s < n; ++s) {
    for (index_t j = 0; j < len; ++j) key_valid(j, s) = batch.valid(std::size_t(s * len + j));
  }
}

// out = embed_tokens[ids] as columns [d, n].
template <class T>
void embed(const hf_model<T>& model, std::span<const std::int32_t> ids, matrix_t<T>& out) {
  if (model.base_in_bf16()) {
    rolora::detail::gather_rows(model.embed_tokens_bf16, ids, false, out);
  } else {
    rolora::detail::gather_rows(model.embed_tokens, ids, false, out);
  }
}

// c = op(lm_head) x: logits [V, N] from hidden states, or (op::transpose) back.
template <class T>
void output_product(const hf_model<T>& model, op op_w, const matrix_t<T>& x, matrix_t<T>& c) {
  if (model.config.tie_word_embeddings) {
    frozen_product(model.embed_tokens, model.embed_tokens_bf16, op_w, x, T(0), c);
  } else {
    frozen_product(model.lm_head.weight, model.lm_head.weight_bf16, op_w, x, T(0), c);
  }
}

// ----- encoders ------------------------------------------------------------------------------

template <class T>
void encoder_forward(const hf_model<T>& model, const adapter_set<backend_t<T>>& adapters,
                     const hf_batch& batch, hf_workspace<T>& ws) {
  const hf_config& c = model.config;
  batch.check(c);
  const index_t len = batch.seq_len, n = batch.num_sequences(), tokens = len * n;
  const T eps = T(c.layer_norm_eps);
  key_valid_of(batch, ws.key_valid);

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
  auto& h = ws.tmp;
  embed(model, batch.ids, h);
  rolora::detail::gather_rows(model.position_embeddings, ws.positions, true, h);
  if (batch.token_types.empty()) {
    h.colwise() += model.token_type_embeddings.row(0).transpose();
  } else {
    rolora::detail::gather_rows(model.token_type_embeddings, batch.token_types, true, h);
  }
  ws.layers.resize(std::size_t(c.num_layers));
  prims<T>::layer_norm_forward(h, model.embed_norm_weight, model.embed_norm_bias, eps,
                               ws.layers[0].x, ws.dx, ws.dy);  // dx, dy: scratch here

  for (index_t i = 0; i < c.num_layers; ++i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, nullptr); };
    linear_forward(lin(0), L.x, L.ax[0], L.q);
    linear_forward(lin(1), L.x, L.ax[1], L.k);
    linear_forward(lin(2), L.x, L.ax[2], L.v);
    attention_forward(L.q, L.k, L.v, ws.key_valid, c.num_heads, c.num_heads, c.head_dim, false,
                      L.probs, L.ctx);
    linear_forward(lin(3), L.ctx, L.ax[3], L.h2);
    L.h2 += L.x;
    prims<T>::layer_norm_forward(L.h2, W.norm1_weight, W.norm1_bias, eps, L.a, L.xhat1, L.rstd1);
    linear_forward(lin(4), L.a, L.ax[4], L.u);
    prims<T>::gelu_forward(L.u, L.g);
    linear_forward(lin(5), L.g, L.ax[5], L.m);
    L.m += L.a;
    auto& out = i + 1 < c.num_layers ? ws.layers[std::size_t(i + 1)].x : ws.top;
    prims<T>::layer_norm_forward(L.m, W.norm2_weight, W.norm2_bias, eps, out, L.xhat2, L.rstd2);
  }

  // Head on the first token of each sequence.
  ws.cls.resize(c.hidden_size, n);
  for (index_t s = 0; s < n; ++s) ws.cls.col(s) = ws.top.col(s * len);
  using B = backend_t<T>;
  const auto names = model.head_modules();
  const auto& hidden_lin = c.kind == family::bert ? model.pooler : model.head.at(names[0]);
  const std::string hidden_name = c.kind == family::bert ? "bert.pooler.dense" : names[0];
  const auto& out_lin = model.head.at(names.back());
  const auto& hw = saved_or(adapters, hidden_name + ".weight", hidden_lin.weight);
  const auto& hb = saved_or(adapters, hidden_name + ".bias", hidden_lin.bias);
  B::gemm(T(1), hw, op::none, ws.cls, op::none, T(0), ws.head_hidden);
  ws.head_hidden.colwise() += hb.col(0);
  ws.head_hidden = ws.head_hidden.array().tanh().matrix();
  const auto& ow = saved_or(adapters, names.back() + ".weight", out_lin.weight);
  const auto& ob = saved_or(adapters, names.back() + ".bias", out_lin.bias);
  B::gemm(T(1), ow, op::none, ws.head_hidden, op::none, T(0), ws.logits);
  ws.logits.colwise() += ob.col(0);
}

// Gradients of the mean loss whose logits gradient is ws.dlogits [C, n].
template <class T>
void encoder_backward(const hf_model<T>& model, const adapter_set<backend_t<T>>& adapters,
                      const hf_batch& batch, factor_set trains, gradient_set<backend_t<T>>& grads,
                      hf_workspace<T>& ws) {
  using B = backend_t<T>;
  const hf_config& c = model.config;
  const index_t len = batch.seq_len, n = batch.num_sequences();
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
    grads.modules_to_save[names.back() + ".bias"] = ws.dlogits.rowwise().sum();
  }
  B::gemm(T(1), ow, op::transpose, ws.dlogits, op::none, T(0), ws.dg);  // [d, n] dL/dt
  ws.dg.array() *= T(1) - ws.head_hidden.array().square();              // through tanh
  if (trained(hidden_name + ".weight")) {
    B::gemm(T(1), ws.dg, op::none, ws.cls, op::transpose, T(0),
            grads.modules_to_save[hidden_name + ".weight"]);
  }
  if (trained(hidden_name + ".bias")) {
    grads.modules_to_save[hidden_name + ".bias"] = ws.dg.rowwise().sum();
  }
  const index_t lowest = lowest_trained_layer(model, adapters, trains);
  if (lowest >= c.num_layers) return;
  const auto& hw = saved_or(adapters, hidden_name + ".weight", hidden_lin.weight);
  B::gemm(T(1), hw, op::transpose, ws.dg, op::none, T(0), ws.du);  // [d, n] dL/dcls
  ws.dx.setZero(c.hidden_size, len * n);
  for (index_t s = 0; s < n; ++s) ws.dx.col(s * len) = ws.du.col(s);

  for (index_t i = c.num_layers - 1; i >= lowest; --i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, &grads); };
    // out = LN2(m), m = a + output(g), g = GELU(u), u = intermediate(a).
    prims<T>::layer_norm_backward(ws.dx, L.xhat2, L.rstd2, W.norm2_weight, ws.dy, false, nullptr,
                                  nullptr);
    ws.da = ws.dy;
    linear_backward(lin(5), trains, L.g, L.ax[5], ws.dy, ws.bt_dy, &ws.dg, false);
    prims<T>::gelu_backward(L.u, ws.dg, ws.du);
    linear_backward(lin(4), trains, L.a, L.ax[4], ws.du, ws.bt_dy, &ws.da, true);
    // a = LN1(h2), h2 = x + o(ctx).
    prims<T>::layer_norm_backward(ws.da, L.xhat1, L.rstd1, W.norm1_weight, ws.dy, false, nullptr,
                                  nullptr);
    linear_backward(lin(3), trains, L.ctx, L.ax[3], ws.dy, ws.bt_dy, &ws.dctx, false);
    attention_backward(L.q, L.k, L.v, L.probs, ws.dctx, c.num_heads, c.num_heads, c.head_dim,
                       ws.tmp, ws.dq, ws.dk, ws.dv);
    const bool below = i > lowest;  // dL/dx is needed by a lower layer
    if (below) ws.dx = ws.dy;
    linear_backward(lin(0), trains, L.x, L.ax[0], ws.dq, ws.bt_dy, below ? &ws.dx : nullptr, true);
    linear_backward(lin(1), trains, L.x, L.ax[1], ws.dk, ws.bt_dy, below ? &ws.dx : nullptr, true);
    linear_backward(lin(2), trains, L.x, L.ax[2], ws.dv, ws.bt_dy, below ? &ws.dx : nullptr, true);
    if (i == 0) break;
  }
}

// ----- decoders ------------------------------------------------------------------------------

template <class T>
void decoder_forward(const hf_model<T>& model, const adapter_set<backend_t<T>>& adapters,
                     const hf_batch& batch, hf_workspace<T>& ws) {
  const hf_config& c = model.config;
  batch.check(c);
  const index_t len = batch.seq_len;
  const T eps = T(c.rms_norm_eps);
  key_valid_of(batch, ws.key_valid);
  const auto inv_freq = rope_inv_freq(c);
  const index_t half = c.head_dim / 2;
  ws.cos.resize(half, len);
  ws.sin.resize(half, len);
  for (index_t j = 0; j < len; ++j) {
    for (index_t i = 0; i < half; ++i) {
      const double angle = double(j) * inv_freq[std::size_t(i)];
      ws.cos(i, j) = T(std::cos(angle));
      ws.sin(i, j) = T(std::sin(angle));
    }
  }
  ws.layers.resize(std::size_t(c.num_layers));
  embed(model, batch.ids, ws.layers[0].x);
  for (index_t i = 0; i < c.num_layers; ++i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, nullptr); };
    rms_norm_forward(L.x, W.norm1_weight, eps, L.a, L.xhat1, L.rstd1);
    linear_forward(lin(0), L.a, L.ax[0], L.q);
    linear_forward(lin(1), L.a, L.ax[1], L.k);
    linear_forward(lin(2), L.a, L.ax[2], L.v);
    apply_rotary(L.q, c.num_heads, c.head_dim, len, ws.cos, ws.sin, false);
    apply_rotary(L.k, c.num_kv_heads, c.head_dim, len, ws.cos, ws.sin, false);
    attention_forward(L.q, L.k, L.v, ws.key_valid, c.num_heads, c.num_kv_heads, c.head_dim, true,
                      L.probs, L.ctx);
    linear_forward(lin(3), L.ctx, L.ax[3], L.h2);
    L.h2 += L.x;
    rms_norm_forward(L.h2, W.norm2_weight, eps, L.b, L.xhat2, L.rstd2);
    linear_forward(lin(4), L.b, L.ax[4], L.u);  // gate
    linear_forward(lin(5), L.b, L.ax[5], L.g);  // up
    L.m = (L.u.array() / (T(1) + (-L.u.array()).exp()) * L.g.array()).matrix();
    auto& out = i + 1 < c.num_layers ? ws.layers[std::size_t(i + 1)].x : ws.top;
    linear_forward(lin(6), L.m, L.ax[6], out);
    out += L.h2;
  }
  rms_norm_forward(ws.top, model.final_norm_weight, eps, ws.hf, ws.final_xhat, ws.final_rstd);
  output_product(model, op::none, ws.hf, ws.logits);
}

template <class T>
void decoder_backward(const hf_model<T>& model, const adapter_set<backend_t<T>>& adapters,
                      const hf_batch& batch, factor_set trains, gradient_set<backend_t<T>>& grads,
                      hf_workspace<T>& ws) {
  const hf_config& c = model.config;
  const index_t len = batch.seq_len;
  const index_t lowest = lowest_trained_layer(model, adapters, trains);
  if (lowest >= c.num_layers) return;
  output_product(model, op::transpose, ws.dlogits, ws.dy);
  rms_norm_backward(ws.dy, ws.final_xhat, ws.final_rstd, model.final_norm_weight, ws.dx, false);
  for (index_t i = c.num_layers - 1; i >= lowest; --i) {
    auto& L = ws.layers[std::size_t(i)];
    const auto& W = model.layers[std::size_t(i)];
    auto lin = [&](std::size_t r) { return bind(model, adapters, i, r, &grads); };
    // out = h2 + down(m), m = silu(gate) * up.
    linear_backward(lin(6), trains, L.m, L.ax[6], ws.dx, ws.bt_dy, &ws.dm, false);
    const auto sig = (T(1) / (T(1) + (-L.u.array()).exp())).eval();
    ws.du = (ws.dm.array() * L.g.array() * sig * (T(1) + L.u.array() * (T(1) - sig))).matrix();
    ws.dg = (ws.dm.array() * L.u.array() * sig).matrix();
    linear_backward(lin(4), trains, L.b, L.ax[4], ws.du, ws.bt_dy, &ws.da, false);
    linear_backward(lin(5), trains, L.b, L.ax[5], ws.dg, ws.bt_dy, &ws.da, true);
    rms_norm_backward(ws.da, L.xhat2, L.rstd2, W.norm2_weight, ws.dx, true);  // dx: dL/dh2
    // h2 = x + o(ctx); ctx = attention(rotary(q a), rotary(k a), v a); a = RMS1(x).
    linear_backward(lin(3), trains, L.ctx, L.ax[3], ws.dx, ws.bt_dy, &ws.dctx, false);
    attention_backward(L.q, L.k, L.v, L.probs, ws.dctx, c.num_heads, c.num_kv_heads, c.head_dim,
                       ws.tmp, ws.dq, ws.dk, ws.dv);
    apply_rotary(ws.dq, c.num_heads, c.head_dim, len, ws.cos, ws.sin, true);
    apply_rotary(ws.dk, c.num_kv_heads, c.head_dim, len, ws.cos, ws.sin, true);
    const bool below = i > lowest;
    linear_backward(lin(0), trains, L.a, L.ax[0], ws.dq, ws.bt_dy, below ? &ws.da : nullptr, false);
    linear_backward(lin(1), trains, L.a, L.ax[1], ws.dk, ws.bt_dy, below ? &ws.da : nullptr, true);
    linear_backward(lin(2), trains, L.a, L.ax[2], ws.dv, ws.bt_dy, below ? &ws.da : nullptr, true);
    if (below) rms_norm_backward(ws.da, L.xhat1, L.rstd1, W.norm1_weight, ws.dx, true);
    if (i == 0) break;
  }
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
template <class T>
const host_matrix<T>& classification_logits(const hf_model<T>& model,
                                            const adapter_set<eigen_backend<T>>& adapters,
                                            const hf_batch& batch, hf_workspace<T>& ws) {
  if (!is_encoder(model.config.kind)) {
    rolora::detail::raise<config_error>("classification_logits: ", family_name(model.config.kind),
                                        " is a decoder; use causal_lm_logits");
  }
  detail::hf::encoder_forward(model, adapters, batch, ws);
  return ws.logits;
}

// Next-token logits [vocab, n L] of a decoder (in ws.logits).
template <class T>
const host_matrix<T>& causal_lm_logits(const hf_model<T>& model,
                                       const adapter_set<eigen_backend<T>>& adapters,
                                       const hf_batch& batch, hf_workspace<T>& ws) {
  if (is_encoder(model.config.kind)) {
    rolora::detail::raise<config_error>("causal_lm_logits: ", family_name(model.config.kind),
                                        " is an encoder; use classification_logits");
  }
  detail::hf::decoder_forward(model, adapters, batch, ws);
  return ws.logits;
}

// Mean cross-entropy of an encoder over the batch's labels (one per sequence, in
// [0, num_labels)), and the gradients of the trained factors (`trains`) and modules to save.
template <class T>
double classification_loss_and_grad(const hf_model<T>& model,
                                    const adapter_set<eigen_backend<T>>& adapters,
                                    const hf_batch& batch, std::span<const std::int32_t> labels,
                                    factor_set trains,
                                    std::type_identity_t<gradient_set<eigen_backend<T>>>* grads,
                                    hf_workspace<T>& ws) {
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
  const double sum = detail::hf::prims<T>::softmax_cross_entropy(ws.logits, labels, T(1) / T(n),
                                                                 grads ? &ws.dlogits : nullptr);
  if (grads) detail::hf::encoder_backward(model, adapters, batch, trains, *grads, ws);
  return sum / double(n);
}

// Mean next-token cross-entropy of a decoder over every predicted token (labels [n L], Hugging
// Face's convention: the model shifts them, labels < 0 are ignored), and the gradients.
// `predicted` receives the number of predicted tokens. A batch with none has loss 0.
template <class T>
double causal_lm_loss_and_grad(const hf_model<T>& model,
                               const adapter_set<eigen_backend<T>>& adapters, const hf_batch& batch,
                               std::span<const std::int32_t> labels, factor_set trains,
                               std::type_identity_t<gradient_set<eigen_backend<T>>>* grads,
                               hf_workspace<T>& ws, std::size_t* predicted = nullptr) {
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
  const double sum = detail::hf::prims<T>::softmax_cross_entropy(ws.logits, targets, scale,
                                                                 grads ? &ws.dlogits : nullptr);
  if (grads && count) detail::hf::decoder_backward(model, adapters, batch, trains, *grads, ws);
  return count ? sum / double(count) : 0.0;
}

// The modules a LoRA adapter can go on: every layer's linears, as module_shape with PEFT names.
template <class T>
std::vector<module_shape> adaptable_modules(const hf_model<T>& model) {
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
