// The primitives the transformer of rolora/nn needs from a backend beyond the core algebra.
//
// The model (nn/transformer.hpp) is written once against this contract; eigen_backend implements
// it (backend/eigen.hpp), and a device backend implements the same members to run the model
// unchanged. Shapes are checked by the model before it calls a primitive, so primitives may
// assume them.
#pragma once
#include <concepts>
#include <cstdint>
#include <span>

#include <rolora/core/concepts.hpp>

namespace rolora {

// ---------------------------------------------------------------------------------------------
// nn_backend: a backend (core/concepts.hpp) with these static members as well. Activations are
// column-major with one token per column; "N" is the number of tokens, "L" the sequence length,
// "n" the number of sequences (N = n L, sequence-major: token j of sequence s is column s L + j).
// Every output is resized to its shape; an output that already has that shape is reused without
// allocating. Vectors are [k, 1] matrices.
//
//   set_zero(m, rows, cols)      m = 0 [rows, cols]
//   add_bias(y, b)               y [m, N] += b [m, 1] in every column
//   row_sums(x, out)             out [m, 1] = sum over the columns of x [m, N] (a bias gradient)
//   layer_norm_forward(x, gamma, beta, eps, y, xhat, rstd)
//                                per column: xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps)
//                                (biased variance, as torch.nn.LayerNorm), y = gamma * xhat + beta;
//                                x, y, xhat [d, N], gamma, beta [d, 1], rstd [N, 1]
//   layer_norm_backward(dy, xhat, rstd, gamma, dx, accumulate, dgamma, dbeta)
//                                dx [d, N] = (or += when accumulate) dL/dx for upstream dy;
//                                dgamma, dbeta [d, 1] are written when not null
//   gelu_forward(x, y)           y = x Phi(x), the erf form (torch.nn.GELU() default)
//   gelu_backward(x, dy, dx)     dx = dy * (Phi(x) + x phi(x))
//   embedding_forward(table, ids, accumulate, out)
//                                out [d, N] column j = (or +=) row ids[j] of table [V, d]
//   embedding_backward(dout, ids, dtable)
//                                row ids[j] of dtable [V, d] += column j of dout [d, N]
//                                (scatter-add; repeated ids add up)
//   attention_forward(q, k, v, key_valid, n_heads, scale, probs, ctx)
//                                q, k, v, ctx [d, N]; key_valid [L, n] is 1 for a key that may be
//                                attended to and 0 for one that never is (padding); for sequence
//                                s and head h (rows h dh .. h dh + dh - 1, dh = d / n_heads):
//                                P = softmax over each column of scale * K_h^T Q_h restricted to
//                                the valid keys (masked entries exactly 0), ctx_h = V_h P; a
//                                sequence without a valid key gets P = 0 and ctx = 0.
//                                probs [L, L n_heads n]: P of (s, h) in columns (s n_heads + h) L
//                                .. + L - 1, rows = keys, columns = queries.
//   attention_backward(q, k, v, probs, dctx, n_heads, scale, dq, dk, dv)
//                                the gradients of attention_forward for upstream dctx [d, N]
//   weighted_pool(h, w, out)     out [d, n] column s = sum_j w(j, s) h(:, s L + j); w [L, n]
//   weighted_pool_backward(dout, w, dh)
//                                dh [d, N] column s L + j = w(j, s) dout(:, s)
//   softmax_columns(x)           in place, each column of x becomes its softmax
//   softmax_cross_entropy(logits, targets, grad_scale, dlogits) -> double
//                                sum over columns j with targets[j] >= 0 of
//                                -log softmax(logits(:, j))[targets[j]] (targets[j] = -1: ignored);
//                                when dlogits is not null it gets [C, N] =
//                                grad_scale * (softmax - onehot) (zero in ignored columns)
// ---------------------------------------------------------------------------------------------
template <class B>
concept nn_backend =
    backend<B> &&
    requires(typename B::matrix& m, const typename B::matrix& c, typename B::matrix* p,
             typename B::scalar s, index_t i, bool flag, std::span<const std::int32_t> ids) {
      B::set_zero(m, i, i);
      B::add_bias(m, c);
      B::row_sums(c, m);
      B::layer_norm_forward(c, c, c, s, m, m, m);
      B::layer_norm_backward(c, c, c, c, m, flag, p, p);
      B::gelu_forward(c, m);
      B::gelu_backward(c, c, m);
      B::embedding_forward(c, ids, flag, m);
      B::embedding_backward(c, ids, m);
      B::attention_forward(c, c, c, c, i, s, m, m);
      B::attention_backward(c, c, c, c, c, i, s, m, m, m);
      B::weighted_pool(c, c, m);
      B::weighted_pool_backward(c, c, m);
      B::softmax_columns(m);
      { B::softmax_cross_entropy(c, ids, s, p) } -> std::convertible_to<double>;
    };

}  // namespace rolora
