// The transformer's primitives on the Thrust backend: nn_primitives<thrust_backend<T, System>>,
// the nn_backend contract (core/concepts.hpp, shapes there) written once for every Thrust system
// (cpp, omp, cuda). Include it after (or instead of) rolora/backend/thrust/backend.hpp; link
// rolora::thrust_omp or rolora::thrust_cuda.
//
// How each primitive runs:
//   - element-wise work (bias, GELU, gathers, pooling's backward) is a thrust::transform or a
//     thrust::for_each over a counting iterator with a functor;
//   - per-column work (layer norm, softmax, cross-entropy) and per-row sums are one functor call
//     per column (row), which walks its column (row) in index order;
//   - the embedding's scatter-add is one functor call per feature (row of dtable^T), which walks
//     the tokens in order: repeated ids add up without atomics;
//   - GEMMs go through the backend's GEMM kernels: the attention's per-(sequence, head) products on
//     strided sub-blocks are a strided batched cuBLAS GEMM per head on CUDA, and on the host
//     systems one Thrust for_each over (sequence, head) whose body runs the blocked host GEMM.
// Every output element is computed by one call in a fixed order, so the results are the same bits
// for any thread count (and agree with nn_primitives<eigen_backend<T>> to rounding: the
// summation orders differ). No CUDA kernel is hand-written: Thrust expresses all of it.
// Scratch that the contract gives no place for (the attention's dL/dscores, device copies of
// token ids, per-column losses) lives in per-thread buffers that only grow.
#pragma once
// clang-format off
#include <rolora/backend/thrust/backend.hpp>  // first: it picks the Thrust device system
// clang-format on
#include <thrust/copy.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <rolora/core/concepts.hpp>
#include <span>
#include <utility>
#include <vector>

namespace rolora {
namespace detail::nn_thrust {

// Math on the host (cpp/omp) and the device (cuda) alike.
template <class T>
ROLORA_HOST_DEVICE inline T erf_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::erf(x);
#else
  return std::erf(x);
#endif
}
template <class T>
ROLORA_HOST_DEVICE inline T exp_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
template <class T>
ROLORA_HOST_DEVICE inline T log_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}
template <class T>
ROLORA_HOST_DEVICE inline T tanh_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::tanh(x);
#else
  return std::tanh(x);
#endif
}
template <class T>
ROLORA_HOST_DEVICE inline T sqrt_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// y [m, N] += b [m, 1] in every column; one call per element.
template <class T>
struct add_bias_fn {
  T* y;
  const T* b;
  index_t m;
  ROLORA_HOST_DEVICE void operator()(index_t e) const { y[e] += b[e % m]; }
};

// out[i] = sum_j x(i, j) (y(i, j) when y is set) over the n columns of [m, n]; one call per row.
template <class T>
struct row_sum_fn {
  const T* x;
  const T* y;  // null: plain sums
  T* out;
  index_t m, n;
  ROLORA_HOST_DEVICE void operator()(index_t i) const {
    T s = T(0);
    for (index_t j = 0; j < n; ++j) s += y ? x[i + j * m] * y[i + j * m] : x[i + j * m];
    out[i] = s;
  }
};

// Layer norm of column j of x [d, N]: xhat = (x - mean) rstd, y = gamma xhat + beta.
template <class T>
struct layer_norm_forward_fn {
  const T *x, *gamma, *beta;
  T eps;
  T *y, *xhat, *rstd;
  index_t d;
  ROLORA_HOST_DEVICE void operator()(index_t j) const {
    const T* xc = x + j * d;
    T* hc = xhat + j * d;
    T mean = T(0);
    for (index_t i = 0; i < d; ++i) mean += xc[i];
    mean /= T(d);
    T ss = T(0);
    for (index_t i = 0; i < d; ++i) {
      hc[i] = xc[i] - mean;
      ss += hc[i] * hc[i];
    }
    const T r = T(1) / sqrt_of(ss / T(d) + eps);
    rstd[j] = r;
    for (index_t i = 0; i < d; ++i) {
      hc[i] *= r;
      y[i + j * d] = gamma[i] * hc[i] + beta[i];
    }
  }
};

// dx column j = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma (= or += when accumulate).
template <class T>
struct layer_norm_backward_fn {
  const T *dy, *xhat, *rstd, *gamma;
  T* dx;
  index_t d;
  bool accumulate;
  ROLORA_HOST_DEVICE void operator()(index_t j) const {
    const T* dyc = dy + j * d;
    const T* hc = xhat + j * d;
    T m1 = T(0), m2 = T(0);
    for (index_t i = 0; i < d; ++i) {
      const T g = dyc[i] * gamma[i];
      m1 += g;
      m2 += g * hc[i];
    }
    m1 /= T(d);
    m2 /= T(d);
    const T r = rstd[j];
    T* dxc = dx + j * d;
    for (index_t i = 0; i < d; ++i) {
      const T v = r * (dyc[i] * gamma[i] - m1 - hc[i] * m2);
      dxc[i] = accumulate ? dxc[i] + v : v;
    }
  }
};

// RMSNorm of column j of x [d, N]: xhat = x rstd, rstd = 1 / sqrt(mean(x^2) + eps), y = w xhat.
template <class T>
struct rms_norm_forward_fn {
  const T *x, *w;
  T eps;
  T *y, *xhat, *rstd;
  index_t d;
  ROLORA_HOST_DEVICE void operator()(index_t j) const {
    const T* xc = x + j * d;
    T ss = T(0);
    for (index_t i = 0; i < d; ++i) ss += xc[i] * xc[i];
    const T r = T(1) / sqrt_of(ss / T(d) + eps);
    rstd[j] = r;
    for (index_t i = 0; i < d; ++i) {
      xhat[i + j * d] = xc[i] * r;
      y[i + j * d] = w[i] * xhat[i + j * d];
    }
  }
};

// dx column j = rstd (g - xhat mean(g xhat)), g = dy w (= or += when accumulate).
template <class T>
struct rms_norm_backward_fn {
  const T *dy, *xhat, *rstd, *w;
  T* dx;
  index_t d;
  bool accumulate;
  ROLORA_HOST_DEVICE void operator()(index_t j) const {
    const T* dyc = dy + j * d;
    const T* hc = xhat + j * d;
    T m = T(0);
    for (index_t i = 0; i < d; ++i) m += dyc[i] * w[i] * hc[i];
    m /= T(d);
    const T r = rstd[j];
    T* dxc = dx + j * d;
    for (index_t i = 0; i < d; ++i) {
      const T v = r * (dyc[i] * w[i] - hc[i] * m);
      dxc[i] = accumulate ? dxc[i] + v : v;
    }
  }
};

// Rotate-half rotary embedding of the pair (i, i + hd/2) of head h of column t of x
// [heads hd, N] at position t % L; one call per (t, h, i); inverse: the transpose.
template <class T>
struct rotary_fn {
  T* x;
  const T *cos, *sin;
  index_t heads, head_dim, len;
  bool inverse;
  ROLORA_HOST_DEVICE void operator()(index_t e) const {
    const index_t half = head_dim / 2, i = e % half, h = (e / half) % heads, t = e / (half * heads),
                  j = t % len;
    T* col = x + t * heads * head_dim + h * head_dim;
    const T c = cos[i + j * half], sn = inverse ? -sin[i + j * half] : sin[i + j * half];
    const T a = col[i], b = col[i + half];
    col[i] = a * c - b * sn;
    col[i + half] = b * c + a * sn;
  }
};

// SwiGLU: m = silu(gate) up; backward dgate = dm up sig (1 + gate (1 - sig)), dup = dm silu(gate).
template <class T>
struct swiglu_forward_fn {
  ROLORA_HOST_DEVICE T operator()(T gate, T up) const { return gate / (T(1) + exp_of(-gate)) * up; }
};
template <class T>
struct swiglu_backward_fn {
  const T *gate, *up, *dm;
  T *dgate, *dup;
  ROLORA_HOST_DEVICE void operator()(index_t e) const {
    const T sig = T(1) / (T(1) + exp_of(-gate[e]));
    const T dme = dm[e];
    dgate[e] = dme * up[e] * sig * (T(1) + gate[e] * (T(1) - sig));
    dup[e] = dme * gate[e] * sig;
  }
};

// tanh and its backward through the output: dx = dy (1 - y^2).
template <class T>
struct tanh_fn {
  ROLORA_HOST_DEVICE T operator()(T x) const { return tanh_of(x); }
};
template <class T>
struct tanh_backward_fn {
  ROLORA_HOST_DEVICE T operator()(T y, T dy) const { return dy * (T(1) - y * y); }
};

// Grouped-query attention's dk, dv: out (g dh + r, t) = sum over the group's query heads h of
// per_head (h dh + r, t), in head order; out [kv_heads dh, N], per_head [heads dh, N].
template <class T>
struct sum_head_groups_fn {
  const T* per_head;
  T* out;
  index_t kv_rows, head_dim, group;
  ROLORA_HOST_DEVICE void operator()(index_t e) const {
    const index_t row = e % kv_rows, t = e / kv_rows, g = row / head_dim, r = row % head_dim;
    const T* col = per_head + t * kv_rows * group;
    T acc = col[g * group * head_dim + r];
    for (index_t k = 1; k < group; ++k) acc += col[(g * group + k) * head_dim + r];
    out[e] = acc;
  }
};

// GELU, erf form: x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, and its derivative times dy.
template <class T>
struct gelu_forward_fn {
  ROLORA_HOST_DEVICE T operator()(T x) const {
    return T(0.5) * x * (T(1) + erf_of(x * T(0.70710678118654752440)));
  }
};
template <class T>
struct gelu_backward_fn {
  ROLORA_HOST_DEVICE T operator()(T x, T dy) const {
    return dy * (T(0.5) * (T(1) + erf_of(x * T(0.70710678118654752440))) +
                 x * exp_of(T(-0.5) * x * x) * T(0.39894228040143267794));
  }
};

// out (i, j) (= or +=) table (ids[j], i); table [V, d], out [d, N]; one call per element.
template <class T>
struct embedding_forward_fn {
  const T* table;
  const std::int32_t* ids;
  T* out;
  index_t vocab, d;
  bool accumulate;
  ROLORA_HOST_DEVICE void operator()(index_t e) const {
    const T v = table[index_t(ids[e / d]) + (e % d) * vocab];
    out[e] = accumulate ? out[e] + v : v;
  }
};

// dtable (ids[j], i) += dout (i, j) for j = 0, 1, ... in order; one call per feature i, so a
// repeated id's contributions add up in token order without atomics.
template <class T>
struct embedding_backward_fn {
  const T* dout;
  const std::int32_t* ids;
  T* dtable;
  index_t vocab, d, n;
  ROLORA_HOST_DEVICE void operator()(index_t i) const {
    for (index_t j = 0; j < n; ++j) dtable[index_t(ids[j]) + i * vocab] += dout[i + j * d];
  }
};

// Column `col` of probs [L, L H n] (sequence s = col / (L H), query j = col % L) becomes the
// softmax of its scores over the valid keys (key_valid [L, n]; causal: keys 0 .. j only),
// exactly 0 on the others; all 0 without a valid key.
template <class T>
struct masked_softmax_fn {
  T* probs;
  const T* key_valid;
  index_t len, heads;
  bool causal;
  ROLORA_HOST_DEVICE void operator()(index_t col) const {
    T* p = probs + col * len;
    const T* valid = key_valid + (col / (len * heads)) * len;
    const index_t keys = causal ? col % len + 1 : len;
    bool any = false;
    T m = T(0);
    for (index_t i = 0; i < keys; ++i) {
      if (valid[i] > T(0) && (!any || p[i] > m)) m = p[i];
      any = any || valid[i] > T(0);
    }
    T sum = T(0);
    for (index_t i = 0; i < len; ++i) {
      p[i] = any && i < keys && valid[i] > T(0) ? exp_of(p[i] - m) * valid[i] : T(0);
      sum += p[i];
    }
    if (any) {
      for (index_t i = 0; i < len; ++i) p[i] /= sum;
    }
  }
};

// Softmax backward on column `col`: ds = p (ds - p . ds), with ds = dL/dp on entry.
template <class T>
struct softmax_backward_fn {
  const T* probs;
  T* ds;
  index_t len;
  ROLORA_HOST_DEVICE void operator()(index_t col) const {
    const T* p = probs + col * len;
    T* g = ds + col * len;
    T pd = T(0);
    for (index_t i = 0; i < len; ++i) pd += p[i] * g[i];
    for (index_t i = 0; i < len; ++i) g[i] = p[i] * (g[i] - pd);
  }
};

// out (i, s) = sum_j w (j, s) h (i, s L + j); out [d, n]; one call per element.
template <class T>
struct pool_fn {
  const T *h, *w;
  T* out;
  index_t d, len;
  ROLORA_HOST_DEVICE void operator()(index_t e) const {
    const index_t i = e % d, s = e / d;
    T acc = T(0);
    for (index_t j = 0; j < len; ++j) acc += h[i + (s * len + j) * d] * w[j + s * len];
    out[e] = acc;
  }
};

// dh (i, s L + j) = w (j, s) dout (i, s); one call per element of dh [d, N].
template <class T>
struct pool_backward_fn {
  const T *dout, *w;
  T* dh;
  index_t d, len;
  ROLORA_HOST_DEVICE void operator()(index_t e) const {
    const index_t i = e % d, col = e / d, s = col / len;
    dh[e] = w[col % len + s * len] * dout[i + s * d];
  }
};

// Column j of x [m, N] becomes its softmax.
template <class T>
struct softmax_column_fn {
  T* x;
  index_t m;
  ROLORA_HOST_DEVICE void operator()(index_t j) const {
    T* c = x + j * m;
    T mx = c[0];
    for (index_t i = 1; i < m; ++i) mx = c[i] > mx ? c[i] : mx;
    T sum = T(0);
    for (index_t i = 0; i < m; ++i) {
      c[i] = exp_of(c[i] - mx);
      sum += c[i];
    }
    for (index_t i = 0; i < m; ++i) c[i] /= sum;
  }
};

// Cross-entropy of column j of logits [C, N] against targets[j] (-1: ignored, loss 0); writes
// loss[j] and, when dz is set, dz column j = grad_scale (softmax - onehot).
template <class T>
struct cross_entropy_fn {
  const T* z;
  const std::int32_t* targets;
  T* dz;  // null: loss only
  double* loss;
  T grad_scale;
  index_t m;
  ROLORA_HOST_DEVICE void operator()(index_t j) const {
    const T* c = z + j * m;
    const std::int32_t t = targets[j];
    if (t < 0) {
      if (dz) {
        for (index_t i = 0; i < m; ++i) dz[i + j * m] = T(0);
      }
      loss[j] = 0.0;
      return;
    }
    T mx = c[0];
    for (index_t i = 1; i < m; ++i) mx = c[i] > mx ? c[i] : mx;
    T sum = T(0);
    for (index_t i = 0; i < m; ++i) {
      const T e = exp_of(c[i] - mx);
      if (dz) dz[i + j * m] = e;
      sum += e;
    }
    if (dz) {
      for (index_t i = 0; i < m; ++i) dz[i + j * m] *= grad_scale / sum;
      dz[index_t(t) + j * m] -= grad_scale;
    }
    loss[j] = double(log_of(sum) + mx - c[t]);
  }
};

// A block operand of a batched product: block (s, h) starts at p + s stride_s + (h / group)
// stride_h and has leading dimension ld (group > 1: grouped-query attention's shared key/value
// heads).
template <class P>
struct strided_blocks {
  P p;
  index_t ld, stride_s, stride_h;
  index_t group = 1;
  ROLORA_HOST_DEVICE P block(index_t s, index_t h) const {
    return p + s * stride_s + (h / group) * stride_h;
  }
};

// Host systems: block (s, h) = i (s = i / heads) of c = alpha op(a) op(b) + beta c, by the
// backend's blocked host GEMM on the calling thread (the batch is what runs in parallel).
template <class T>
struct host_block_gemm_fn {
  strided_blocks<const T*> a, b;
  strided_blocks<T*> c;
  bool ta, tb;
  index_t m, n, k, heads;
  T alpha, beta;
  void operator()(index_t i) const {
    const index_t s = i / heads, h = i % heads;
    host_gemm<thrust::system::cpp::tag>(a.block(s, h), a.ld, ta, b.block(s, h), b.ld, tb, m, n, k,
                                        alpha, beta, c.block(s, h), c.ld);
  }
};

}  // namespace detail::nn_thrust

template <class T, class System>
struct nn_primitives<thrust_backend<T, System>> {
  using backend_type = thrust_backend<T, System>;
  using matrix = typename backend_type::matrix;
  static constexpr bool is_cuda = detail::thrust_system_traits<System>::is_cuda;

  static void set_zero(matrix& m, index_t rows, index_t cols) {
    if (!reshape(m, rows, cols)) thrust::fill(System{}, m.values().begin(), m.values().end(), T(0));
  }
  static void add_bias(matrix& y, const matrix& b) {
    for_each_index(y.size(), std::size_t(y.size()),
                   detail::nn_thrust::add_bias_fn<T>{y.data(), b.data(), y.rows()});
  }
  static void row_sums(const matrix& x, matrix& out) {
    reshape(out, x.rows(), 1);
    for_each_index(
        x.rows(), std::size_t(x.size()),
        detail::nn_thrust::row_sum_fn<T>{x.data(), nullptr, out.data(), x.rows(), x.cols()});
  }

  static void layer_norm_forward(const matrix& x, const matrix& gamma, const matrix& beta, T eps,
                                 matrix& y, matrix& xhat, matrix& rstd) {
    const index_t d = x.rows(), n = x.cols();
    reshape(y, d, n);
    reshape(xhat, d, n);
    reshape(rstd, n, 1);
    for_each_index(
        n, std::size_t(x.size()),
        detail::nn_thrust::layer_norm_forward_fn<T>{x.data(), gamma.data(), beta.data(), eps,
                                                    y.data(), xhat.data(), rstd.data(), d});
  }

  static void layer_norm_backward(const matrix& dy, const matrix& xhat, const matrix& rstd,
                                  const matrix& gamma, matrix& dx, bool accumulate, matrix* dgamma,
                                  matrix* dbeta) {
    const index_t d = dy.rows(), n = dy.cols();
    if (!accumulate) reshape(dx, d, n);
    for_each_index(
        n, std::size_t(dy.size()),
        detail::nn_thrust::layer_norm_backward_fn<T>{dy.data(), xhat.data(), rstd.data(),
                                                     gamma.data(), dx.data(), d, accumulate});
    if (dgamma) {
      reshape(*dgamma, d, 1);
      for_each_index(
          d, std::size_t(dy.size()),
          detail::nn_thrust::row_sum_fn<T>{dy.data(), xhat.data(), dgamma->data(), d, n});
    }
    if (dbeta) row_sums(dy, *dbeta);
  }

  static void gelu_forward(const matrix& x, matrix& y) {
    reshape(y, x.rows(), x.cols());
    transform(x, y, detail::nn_thrust::gelu_forward_fn<T>{});
  }
  // dx may be dy (the transformer computes it in place).
  static void gelu_backward(const matrix& x, const matrix& dy, matrix& dx) {
    reshape(dx, x.rows(), x.cols());
    transform(x, dy, dx, detail::nn_thrust::gelu_backward_fn<T>{});
  }

  static void embedding_forward(const matrix& table, std::span<const std::int32_t> ids,
                                bool accumulate, matrix& out) {
    const auto n = static_cast<index_t>(ids.size());
    const index_t d = table.cols();
    if (!accumulate) reshape(out, d, n);
    for_each_index(d * n, std::size_t(d * n),
                   detail::nn_thrust::embedding_forward_fn<T>{
                       table.data(), ids_on_system(ids), out.data(), table.rows(), d, accumulate});
  }
  static void embedding_backward(const matrix& dout, std::span<const std::int32_t> ids,
                                 matrix& dtable) {
    const index_t d = dout.rows();
    for_each_index(
        d, std::size_t(dout.size()),
        detail::nn_thrust::embedding_backward_fn<T>{dout.data(), ids_on_system(ids), dtable.data(),
                                                    dtable.rows(), d, dout.cols()});
  }

  // Per (sequence s, head h): P = masked column softmax of scale K_g^T Q_h, ctx_h = V_g P, with
  // g = h / (n_heads / kv_heads) (grouped-query attention; kv_heads 0: n_heads); causal: query j
  // attends to keys 0 .. j only.
  static void attention_forward(const matrix& q, const matrix& k, const matrix& v,
                                const matrix& key_valid, index_t n_heads, T scale, matrix& probs,
                                matrix& ctx, index_t kv_heads = 0, bool causal = false) {
    const index_t d = q.rows(), len = key_valid.rows(), n = key_valid.cols(), dh = d / n_heads;
    const index_t group = n_heads / (kv_heads > 0 ? kv_heads : n_heads), kv_d = k.rows();
    reshape(probs, len, len * n_heads * n);
    reshape(ctx, d, len * n);
    const auto act = [&](const matrix& m) { return head_blocks(m.data(), d, len, dh); };
    const auto kv = [&](const matrix& m) { return head_blocks(m.data(), kv_d, len, dh, group); };
    // probs block (s, h) [L keys, L queries] = scale K_g^T Q_h
    batched_gemm(n, n_heads, scale, kv(k), true, act(q), false, len, len, dh, T(0),
                 prob_blocks(probs.data(), len, n_heads));
    for_each_index(probs.cols(), std::size_t(probs.size()),
                   detail::nn_thrust::masked_softmax_fn<T>{probs.data(), key_valid.data(), len,
                                                           n_heads, causal});
    // ctx_h [dh, L] = V_g P
    batched_gemm(n, n_heads, T(1), kv(v), false, prob_blocks(probs.data(), len, n_heads), false, dh,
                 len, len, T(0), head_blocks(ctx.data(), d, len, dh));
  }

  // The gradients of attention_forward; dk, dv of a key/value head sum over its query heads (in
  // head order; each query head's share is formed apart first, so the batch runs in parallel).
  static void attention_backward(const matrix& q, const matrix& k, const matrix& v,
                                 const matrix& probs, const matrix& dctx, index_t n_heads, T scale,
                                 matrix& dq, matrix& dk, matrix& dv, index_t kv_heads = 0) {
    const index_t d = q.rows(), len = probs.rows(), n = q.cols() / len, dh = d / n_heads;
    const index_t group = n_heads / (kv_heads > 0 ? kv_heads : n_heads), kv_d = k.rows();
    reshape(dq, d, len * n);
    reshape(dk, kv_d, len * n);
    reshape(dv, kv_d, len * n);
    thread_local matrix ds;                  // [L, L H n]: dL/dscores of every (sequence, head)
    thread_local matrix dk_heads, dv_heads;  // [d, N]: per query head, when grouped
    reshape(ds, len, len * n_heads * n);
    matrix& dk_h = group > 1 ? dk_heads : dk;
    matrix& dv_h = group > 1 ? dv_heads : dv;
    reshape(dk_h, d, len * n);
    reshape(dv_h, d, len * n);
    const auto act = [&](const matrix& m) { return head_blocks(m.data(), d, len, dh); };
    const auto kv = [&](const matrix& m) { return head_blocks(m.data(), kv_d, len, dh, group); };
    const auto p = prob_blocks(probs.data(), len, n_heads);
    // dV_h = dctx_h P^T; dL/dP = V_g^T dctx_h
    batched_gemm(n, n_heads, T(1), act(dctx), false, p, true, dh, len, len, T(0),
                 head_blocks(dv_h.data(), d, len, dh));
    batched_gemm(n, n_heads, T(1), kv(v), true, act(dctx), false, len, len, dh, T(0),
                 prob_blocks(ds.data(), len, n_heads));
    for_each_index(ds.cols(), std::size_t(ds.size()),
                   detail::nn_thrust::softmax_backward_fn<T>{probs.data(), ds.data(), len});
    // dQ_h = scale K_g dS; dK_h = scale Q_h dS^T
    const auto dsb = prob_blocks(ds.data(), len, n_heads);
    batched_gemm(n, n_heads, scale, kv(k), false, dsb, false, dh, len, len, T(0),
                 head_blocks(dq.data(), d, len, dh));
    batched_gemm(n, n_heads, scale, act(q), false, dsb, true, dh, len, len, T(0),
                 head_blocks(dk_h.data(), d, len, dh));
    if (group > 1) {
      for (auto [from, to] : {std::pair{&dk_heads, &dk}, std::pair{&dv_heads, &dv}}) {
        for_each_index(
            to->size(), std::size_t(from->size()),
            detail::nn_thrust::sum_head_groups_fn<T>{from->data(), to->data(), kv_d, dh, group});
      }
    }
  }

  static void rms_norm_forward(const matrix& x, const matrix& w, T eps, matrix& y, matrix& xhat,
                               matrix& rstd) {
    const index_t d = x.rows(), n = x.cols();
    reshape(y, d, n);
    reshape(xhat, d, n);
    reshape(rstd, n, 1);
    for_each_index(n, std::size_t(x.size()),
                   detail::nn_thrust::rms_norm_forward_fn<T>{x.data(), w.data(), eps, y.data(),
                                                             xhat.data(), rstd.data(), d});
  }
  static void rms_norm_backward(const matrix& dy, const matrix& xhat, const matrix& rstd,
                                const matrix& w, matrix& dx, bool accumulate) {
    const index_t d = dy.rows(), n = dy.cols();
    if (!accumulate) reshape(dx, d, n);
    for_each_index(n, std::size_t(dy.size()),
                   detail::nn_thrust::rms_norm_backward_fn<T>{dy.data(), xhat.data(), rstd.data(),
                                                              w.data(), dx.data(), d, accumulate});
  }

  static void rotary(matrix& x, index_t heads, index_t head_dim, const matrix& cos,
                     const matrix& sin, bool inverse) {
    const index_t count = x.cols() * heads * (head_dim / 2);
    for_each_index(count, std::size_t(x.size()),
                   detail::nn_thrust::rotary_fn<T>{x.data(), cos.data(), sin.data(), heads,
                                                   head_dim, cos.cols(), inverse});
  }

  static void swiglu_forward(const matrix& gate, const matrix& up, matrix& m) {
    reshape(m, gate.rows(), gate.cols());
    transform(gate, up, m, detail::nn_thrust::swiglu_forward_fn<T>{});
  }
  static void swiglu_backward(const matrix& gate, const matrix& up, const matrix& dm, matrix& dgate,
                              matrix& dup) {
    reshape(dgate, gate.rows(), gate.cols());
    reshape(dup, gate.rows(), gate.cols());
    for_each_index(gate.size(), std::size_t(gate.size()),
                   detail::nn_thrust::swiglu_backward_fn<T>{gate.data(), up.data(), dm.data(),
                                                            dgate.data(), dup.data()});
  }

  static void tanh_forward(const matrix& x, matrix& y) {
    reshape(y, x.rows(), x.cols());
    transform(x, y, detail::nn_thrust::tanh_fn<T>{});
  }
  static void tanh_backward(const matrix& y, const matrix& dy, matrix& dx) {
    reshape(dx, y.rows(), y.cols());
    transform(y, dy, dx, detail::nn_thrust::tanh_backward_fn<T>{});
  }

  static void weighted_pool(const matrix& h, const matrix& w, matrix& out) {
    const index_t d = h.rows(), len = w.rows(), n = w.cols();
    reshape(out, d, n);
    for_each_index(d * n, std::size_t(h.size()),
                   detail::nn_thrust::pool_fn<T>{h.data(), w.data(), out.data(), d, len});
  }
  static void weighted_pool_backward(const matrix& dout, const matrix& w, matrix& dh) {
    const index_t d = dout.rows(), len = w.rows(), n = w.cols();
    reshape(dh, d, len * n);
    for_each_index(
        dh.size(), std::size_t(dh.size()),
        detail::nn_thrust::pool_backward_fn<T>{dout.data(), w.data(), dh.data(), d, len});
  }

  static void softmax_columns(matrix& x) {
    for_each_index(x.cols(), std::size_t(x.size()),
                   detail::nn_thrust::softmax_column_fn<T>{x.data(), x.rows()});
  }

  // Per-column losses on the system, summed on the host in column order (deterministic).
  static double softmax_cross_entropy(const matrix& logits, std::span<const std::int32_t> targets,
                                      T grad_scale, matrix* dlogits) {
    const index_t n = logits.cols();
    if (dlogits) reshape(*dlogits, logits.rows(), n);
    thread_local detail::thrust_vector_t<double, System> losses;
    thread_local std::vector<double> host_losses;
    if (losses.size() < std::size_t(n)) losses.resize(std::size_t(n));
    host_losses.resize(std::size_t(n));
    for_each_index(n, std::size_t(logits.size()),
                   detail::nn_thrust::cross_entropy_fn<T>{
                       logits.data(), ids_on_system(targets), dlogits ? dlogits->data() : nullptr,
                       thrust::raw_pointer_cast(losses.data()), grad_scale, logits.rows()});
    thrust::copy(losses.begin(), losses.begin() + n, host_losses.begin());
    double loss = 0.0;
    for (const double l : host_losses) loss += l;
    return loss;
  }

 private:
  // m becomes [rows, cols] (zeros) unless it already has that shape; true when it was remade.
  static bool reshape(matrix& m, index_t rows, index_t cols) {
    if (m.rows() == rows && m.cols() == cols) return false;
    m = matrix(rows, cols);
    return true;
  }

  // Host systems: small work stays on the calling thread (an OpenMP region costs more than it
  // saves; every element is computed the same way wherever it runs).
  static bool use_host_thread(std::size_t work) {
    if constexpr (is_cuda) {
      return false;
    } else {
      return work < detail::host_parallel_min;
    }
  }

  // out = f(x) (or f(x, y)) element-wise on System; out may be x or y.
  template <class F>
  static void transform(const matrix& x, matrix& out, F f) {
    if (use_host_thread(std::size_t(x.size()))) {
      thrust::transform(thrust::cpp::par, x.values().begin(), x.values().end(),
                        out.values().begin(), f);
    } else {
      thrust::transform(System{}, x.values().begin(), x.values().end(), out.values().begin(), f);
    }
  }
  template <class F>
  static void transform(const matrix& x, const matrix& y, matrix& out, F f) {
    if (use_host_thread(std::size_t(x.size()))) {
      thrust::transform(thrust::cpp::par, x.values().begin(), x.values().end(), y.values().begin(),
                        out.values().begin(), f);
    } else {
      thrust::transform(System{}, x.values().begin(), x.values().end(), y.values().begin(),
                        out.values().begin(), f);
    }
  }

  // f(i) for i in [0, count) on System; `work` estimates the total work (elements touched).
  template <class F>
  static void for_each_index(index_t count, std::size_t work, F f) {
    if (count <= 0) return;
    const thrust::counting_iterator<index_t> first(0);
    if (use_host_thread(work)) {
      thrust::for_each_n(thrust::cpp::par, first, count, f);
    } else {
      thrust::for_each_n(System{}, first, count, f);
    }
  }

  // Token ids (or targets) where the system's functors can read them: the host span itself on
  // cpp/omp; a per-thread device copy (which only grows) on CUDA.
  static const std::int32_t* ids_on_system(std::span<const std::int32_t> ids) {
    if constexpr (is_cuda) {
      thread_local detail::thrust_vector_t<std::int32_t, System> buffer;
      if (buffer.size() < ids.size()) buffer.resize(ids.size());
      thrust::copy(ids.begin(), ids.end(), buffer.begin());
      return thrust::raw_pointer_cast(buffer.data());
    } else {
      return ids.data();
    }
  }

  // Head h of sequence s of an activation [d, N]: rows h dh .. + dh - 1, columns s L .. + L - 1.
  // Group > 1: head h reads head h / group (grouped-query attention's keys and values).
  template <class P>
  static detail::nn_thrust::strided_blocks<P> head_blocks(P p, index_t d, index_t len, index_t dh,
                                                          index_t group = 1) {
    return {p, d, len * d, dh, group};
  }
  // Block (s, h) of probs [L, L H n]: columns (s H + h) L .. + L - 1.
  template <class P>
  static detail::nn_thrust::strided_blocks<P> prob_blocks(P p, index_t len, index_t heads) {
    return {p, len, heads * len * len, len * len};
  }

  // For every sequence s < n and head h < heads: c_sh [m, nc] = alpha op(a_sh) op(b_sh) + beta
  // c_sh. CUDA: one strided batched cuBLAS GEMM per head (the sequences are the batch: a
  // (sequence, head) grid has two strides, which one strided batch cannot express). Host
  // systems: the (sequence, head) blocks in parallel, each by the blocked host GEMM.
  template <class PA, class PB>
  static void batched_gemm(index_t n, index_t heads, T alpha,
                           detail::nn_thrust::strided_blocks<PA> a, bool ta,
                           detail::nn_thrust::strided_blocks<PB> b, bool tb, index_t m, index_t nc,
                           index_t k, T beta, detail::nn_thrust::strided_blocks<T*> c) {
    const detail::nn_thrust::strided_blocks<const T*> ca{a.p, a.ld, a.stride_s, a.stride_h,
                                                         a.group};
    const detail::nn_thrust::strided_blocks<const T*> cb{b.p, b.ld, b.stride_s, b.stride_h,
                                                         b.group};
    if constexpr (is_cuda) {
#if defined(__CUDACC__)
      for (index_t h = 0; h < heads; ++h) {
        detail::cublas_gemm_strided_batched(ca.block(0, h), ca.ld, ca.stride_s, ta, cb.block(0, h),
                                            cb.ld, cb.stride_s, tb, m, nc, k, alpha, beta,
                                            c.block(0, h), c.ld, c.stride_s, n);
      }
#endif
    } else {
      const detail::nn_thrust::host_block_gemm_fn<T> f{ca, cb, c,     ta,    tb,  m,
                                                       nc, k,  heads, alpha, beta};
      const thrust::counting_iterator<index_t> first(0);
      if (use_host_thread(std::size_t(n * heads * m * nc * k))) {
        thrust::for_each_n(thrust::cpp::par, first, n * heads, f);
      } else {
        thrust::for_each_n(System{}, first, n * heads, f);
      }
    }
  }
};

static_assert(hf_nn_backend<thrust_cpp_backend<float>> &&
              hf_nn_backend<thrust_cpp_backend<double>>);
#if defined(_OPENMP)
static_assert(hf_nn_backend<thrust_omp_backend<float>> &&
              hf_nn_backend<thrust_omp_backend<double>>);
#endif
#if defined(__CUDACC__)
static_assert(hf_nn_backend<thrust_cuda_backend<float>> &&
              hf_nn_backend<thrust_cuda_backend<double>>);
#endif

}  // namespace rolora
