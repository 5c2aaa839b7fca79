// Every contract of rolora, in one place: the extension points a user implements and the
// optional members rolora detects on them.
//
//   backend               where matrices live and how the algebra runs on them; optional,
//                         detected: frozen_bf16_backend (frozen bf16 matrices)
//   nn_backend            a backend plus the transformer's primitives (nn_primitives<B>)
//   hf_nn_backend         an nn_backend that also runs the Hugging Face families (rolora/models)
//   update_policy         which factors train and travel in round t (+ check_policy_round)
//   aggregator_for        how the server merges uploads; optional, detected:
//     round_aware_aggregator, heterogeneous_rank_aggregator, residual_tracking_aggregator
//   factor_reducer        one factor's next value from the clients' copies, which
//                         factorwise<R> turns into an aggregator
//   client_task           a client's data and loss; optional, detected: closed_form_b_task,
//                         per_example_clip_task (sample-level DP-SGD)
//   round_begin_callback, round_end_callback
//                         what federation::run calls around each round (each optional)
//   round_transport       how a round's downloads reach the clients and their uploads come
//                         back (in_process, mpi::transport); optional, detected: finish_round
//
// Each concept lists every member a type must provide and what it must mean. Templates that take
// such a type check it with a static_assert whose message says which contract is not met, so a
// type that does not fit fails to compile with a sentence instead of a page of template errors.
// docs/concepts.md lists the same set with parameter types.
#pragma once
#include <Eigen/Core>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <rolora/core/error.hpp>
#include <rolora/core/shape.hpp>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

namespace rolora {

// Matrices on the host, the common currency between backends and with users (column-major).
template <class T>
using host_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// Coefficients of one AdamW step (Loshchilov & Hutter), bias corrections included.
template <class T>
struct adamw_coefficients {
  T lr, beta1, beta2, eps, weight_decay;
  T bias_correction1, bias_correction2;  // 1 - beta1^t, 1 - beta2^t
};

// `T::name` is a constant expression convertible to std::string_view: a `static constexpr`
// member. (A non-static member would pass a plain `{ T::name }` check and fail much later.)
template <class T>
concept named_by_constant = requires {
  { T::name } -> std::convertible_to<std::string_view>;
}
&&!std::is_member_pointer_v<decltype(&T::name)> && requires {
  typename std::integral_constant<std::size_t, std::string_view(T::name).size()>;
};

// ---------------------------------------------------------------------------------------------
// backend: where matrices live and how the algebra runs on them.
//
// A backend is a stateless type with
//   scalar                      float or double
//   matrix                      owning, copyable, movable, column-major storage of scalars
//   name                        static constexpr std::string_view, e.g. "eigen"
//   zeros(rows, cols)           a new matrix of zeros
//   rows(m), cols(m)            its extents
//   gemm(alpha, a, op_a, b, op_b, beta, c)
//                               c = alpha * op_a(a) * op_b(b) + beta * c; c must not alias a or b;
//                               when beta == 0, c is resized and its old values are never read
//   axpy(alpha, x, y)           y += alpha * x (same shape)
//   scale(alpha, x)             x *= alpha
//   dot(x, y)                   sum_ij x_ij y_ij
//   all_finite(x)               no NaN and no infinity
//   to_host(x), from_host(h)    copies to and from host_matrix<scalar>
//   orthonormalize_rows(a)      a [r, n] with r <= n becomes Q^T with orthonormal rows such that
//                               a_old = L * a_new; returns L [r, r] (lower triangular, positive
//                               diagonal, so the result is unique)
//   solve_spd_right(g, x)       x <- x * g^{-1} for a symmetric positive definite g [n, n];
//                               throws value_error if g is not positive definite
//   adamw_update(p, g, m, v, coefficients)
//                               one fused AdamW step on parameter p with gradient g and moments
// ---------------------------------------------------------------------------------------------
template <class B>
concept backend = requires {
  typename B::scalar;
  typename B::matrix;
}
&&std::floating_point<typename B::scalar>&& std::copyable<typename B::matrix>&&
    named_by_constant<B>&& requires(typename B::matrix& m, const typename B::matrix& c,
                                    typename B::scalar s, const host_matrix<typename B::scalar>& h,
                                    const adamw_coefficients<typename B::scalar>& k, index_t n) {
  { B::zeros(n, n) } -> std::same_as<typename B::matrix>;
  { B::rows(c) } -> std::convertible_to<index_t>;
  { B::cols(c) } -> std::convertible_to<index_t>;
  B::gemm(s, c, op::none, c, op::transpose, s, m);
  B::axpy(s, c, m);
  B::scale(s, m);
  { B::dot(c, c) } -> std::convertible_to<typename B::scalar>;
  { B::all_finite(c) } -> std::same_as<bool>;
  { B::to_host(c) } -> std::same_as<host_matrix<typename B::scalar>>;
  { B::from_host(h) } -> std::same_as<typename B::matrix>;
  { B::orthonormalize_rows(m) } -> std::same_as<typename B::matrix>;
  B::solve_spd_right(c, m);
  B::adamw_update(m, c, m, m, k);
};

// ---------------------------------------------------------------------------------------------
// frozen_bf16_backend (optional, detected): a backend that can hold a frozen matrix in bfloat16
// and multiply it with its own matrices, accumulating in its scalar type. A frozen base in bf16
// (transformer_weights::convert_base_to_bf16) needs it: half the memory of an fp32 base, and a
// bf16 GEMM kernel where the hardware has one.
//
//   frozen_matrix               owning, movable, column-major bf16 storage
//   to_frozen(const matrix& m) -> frozen_matrix
//                               m rounded to bf16 (to nearest, ties to even)
//   to_matrix(const frozen_matrix& f) -> matrix
//                               its value in the scalar type (exact)
//   rows(f), cols(f)            its extents
//   frozen_gemm(const frozen_matrix& w, op op_w, const matrix& x, scalar beta, matrix& c)
//                               c = op_w(w) x + beta c, accumulated in the scalar type; x may be
//                               rounded to bf16 first (what a bf16 GEMM kernel does); c must not
//                               alias x; when beta == 0, c is resized and its old values never read
//   frozen_gather_rows(const frozen_matrix& table, ids, bool accumulate, matrix& out)
//                               out [cols, N] column j = (or += when accumulate) row ids[j] of
//                               table (an embedding lookup; ids a std::span<const std::int32_t>)
// eigen_backend<float> models it (backend/eigen/backend.hpp).
// ---------------------------------------------------------------------------------------------
template <class B>
concept frozen_bf16_backend = backend<B> && std::movable<typename B::frozen_matrix> &&
    requires(const typename B::frozen_matrix& f, const typename B::matrix& c, typename B::matrix& m,
             typename B::scalar s, std::span<const std::int32_t> ids, bool flag) {
  { B::to_frozen(c) } -> std::same_as<typename B::frozen_matrix>;
  { B::to_matrix(f) } -> std::same_as<typename B::matrix>;
  { B::rows(f) } -> std::convertible_to<index_t>;
  { B::cols(f) } -> std::convertible_to<index_t>;
  B::frozen_gemm(f, op::none, c, s, m);
  B::frozen_gather_rows(f, ids, flag, m);
};

namespace detail {
struct no_frozen_matrix {};  // what a backend without frozen_bf16_backend has in its place
template <class B>
struct frozen_matrix_of {
  using type = no_frozen_matrix;
};
template <frozen_bf16_backend B>
struct frozen_matrix_of<B> {
  using type = typename B::frozen_matrix;
};
}  // namespace detail

// B::frozen_matrix when B models frozen_bf16_backend, else an empty placeholder type.
template <class B>
using frozen_matrix_t = typename detail::frozen_matrix_of<B>::type;

// Which LoRA factors a statement is about: trained, uploaded, or kept on the client.
struct factor_set {
  bool a = false;
  bool b = false;
  friend constexpr bool operator==(factor_set, factor_set) = default;
  constexpr bool any() const { return a || b; }
  // "A", "B", "AB" or "-": used in progress lines and logs.
  constexpr std::string_view label() const { return a ? (b ? "AB" : "A") : (b ? "B" : "-"); }
};
inline constexpr factor_set no_factors{false, false};
inline constexpr factor_set only_a{true, false};
inline constexpr factor_set only_b{false, true};
inline constexpr factor_set both_factors{true, true};

// ---------------------------------------------------------------------------------------------
// update_policy: which LoRA factors a client trains and uploads in round t = 0, 1, 2, ...
//
// A policy is a small value type holding only hyper-parameters, with
//   name                        static constexpr std::string_view, e.g. "alternating"
//   trains(std::size_t t) -> factor_set
//                               the factors clients optimise in round t (at least one)
//   shares(std::size_t t) -> factor_set
//                               the factors clients upload and the server aggregates in round t;
//                               a subset of trains(t)
//   keeps_local() -> factor_set factors that never travel: each client keeps its own copy across
//                               rounds and the server's copy is not used by clients (FedSA's B);
//                               disjoint from shares(t) for every t
// Factors that are neither shared nor kept local are synchronised from the server each round.
// The three invariants are values, not types: check_policy_round checks them when a round starts.
// ---------------------------------------------------------------------------------------------
template <class P>
concept update_policy = std::copyable<P> && named_by_constant<P> &&
    requires(const P& p, std::size_t t) {
  { p.trains(t) } -> std::same_as<factor_set>;
  { p.shares(t) } -> std::same_as<factor_set>;
  { p.keeps_local() } -> std::same_as<factor_set>;
};

// The update_policy invariants at round t: trains(t) names a factor, shares(t) is within
// trains(t), keeps_local() is disjoint from shares(t). Throws config_error naming the policy
// otherwise. federation calls it when a round starts; like every error of a round, the message
// then begins with "round <t>: ".
template <update_policy P>
void check_policy_round(const P& policy, std::size_t t) {
  const factor_set trains = policy.trains(t), shares = policy.shares(t);
  const factor_set local = policy.keeps_local();
  if (!trains.any()) {
    detail::raise<config_error>("policy '", P::name,
                                "': trains(t) must name at least one factor, got none");
  }
  if ((shares.a && !trains.a) || (shares.b && !trains.b)) {
    detail::raise<config_error>("policy '", P::name, "': shares(t) = ", shares.label(),
                                " must be within trains(t) = ", trains.label());
  }
  if ((local.a && shares.a) || (local.b && shares.b)) {
    detail::raise<config_error>("policy '", P::name, "': keeps_local() = ", local.label(),
                                " must be disjoint from shares(t) = ", shares.label());
  }
}

template <backend B>
class adapter_set;
template <backend B>
struct client_update;
template <backend B>
struct gradient_set;
struct round_report;

// ---------------------------------------------------------------------------------------------
// aggregator: how the server merges the clients' uploads into the next global adapters.
//
//   name                        static constexpr std::string_view, e.g. "fedavg"
//   merge(const adapter_set<B>& global, std::span<const client_update<B>> updates,
//         std::span<const double> weights, factor_set shared) -> adapter_set<B>
//                               returns the next global adapters. `updates` are the clients'
//                               uploads (client_update, aggregate/aggregate.hpp: the one upload
//                               type, as the server decoded it) with their adapters after local
//                               training, already checked by the caller (detail::check_update:
//                               same modules and shapes as `global`, finite values); `weights`
//                               are non-negative and sum to 1; `shared` names the factors the
//                               clients uploaded this round: the merge must read only those from
//                               the updates and keep the others as they are in `global`.
//                               It must not modify its arguments, so that a throw leaves the
//                               server's state as it was. Modules to save (dense trainable
//                               modules) are not its business: rolora::aggregate averages them.
// Aggregators are generic over the backend: merge is a member template (or an overload set).
// aggregate/factorwise.hpp turns a reducer of one factor's client copies into a whole aggregator.
//
// Optional members, detected by rolora::aggregate (aggregate/aggregate.hpp):
//   merge(global, updates, weights, shared, std::size_t round) -> adapter_set<B>
//                               round_aware_aggregator: preferred over the four-argument merge;
//                               for strategies that draw from a round-dependent stream
//                               (flora_stack re-initialises A each round).
//   static constexpr bool accepts_heterogeneous_ranks = true
//                               heterogeneous_rank_aggregator: uploads of rank 1 <= r_i <= r
//                               (lora_A [r_i, in], lora_B [out, r_i], finite non-zero scaling)
//                               are accepted (aggregate/ranks.hpp); every other aggregator gets
//                               uploads of exactly the global shapes.
//   residual_update_scalars(global, updates, shared) -> std::size_t
//                               residual_tracking_aggregator: for strategies that change the
//                               adapters' dense residual, how many scalars one client needs to
//                               receive to bring its residual from before the round to after it
//                               (dense out x in for FedEx-LoRA, the stacked factors for FLoRA).
//                               Absent: the residual never changes.
// ---------------------------------------------------------------------------------------------
template <class G, class B>
concept aggregator_for = backend<B> && std::copyable<G> && named_by_constant<G> &&
    requires(const G& g, const adapter_set<B>& global, std::span<const client_update<B>> updates,
             std::span<const double> weights, factor_set shared) {
  { g.merge(global, updates, weights, shared) } -> std::same_as<adapter_set<B>>;
};

template <class G, class B>
concept round_aware_aggregator = requires(const G& g, const adapter_set<B>& global,
                                          std::span<const client_update<B>> updates,
                                          std::span<const double> weights, factor_set shared,
                                          std::size_t round) {
  { g.merge(global, updates, weights, shared, round) } -> std::same_as<adapter_set<B>>;
};

template <class G>
concept heterogeneous_rank_aggregator = requires {
  requires bool(G::accepts_heterogeneous_ranks);
};

// mean_of_factors_aggregator: merge of a single update (weight 1) returns that update's shared
// factors, possibly post-processed (orthonormalize_a), so that client-level DP can hand it the
// noised mean of the clipped updates (privacy/client_dp.hpp). Declared, not inferred:
//   static constexpr bool mean_of_factors = true
template <class G>
concept mean_of_factors_aggregator = requires {
  requires bool(G::mean_of_factors);
};

// product_mean_aggregator: its merge reads the clients only through the weighted means of their
// factors and of their scaled products s_i B_i A_i (FlexLoRA's svd_resplit, FedEx-LoRA's
// fedex_residual), so that secure aggregation can run it from sums with dense uploads
// (federated/secure_sum.hpp). Declared, with the merge from those means:
//   static constexpr bool mean_of_products = true
//   merge_means(const adapter_set<B>& global, const adapter_set<B>& mean,
//               const std::map<std::string, B::matrix>& products, factor_set shared)
//       -> adapter_set<B>
//     mean      `global` with each shared factor (and module to save) replaced by the clients'
//               weighted mean
//     products  module -> sum_i w_i s_i B_i A_i [out, in] (normalised weights), for every
//               module when the round shares both factors, else empty
//   and merge_means(global, mean, products, shared) equals merge(global, updates, w, shared) to
//   rounding for the updates whose means these are.
template <class G>
concept product_mean_aggregator = requires {
  requires bool(G::mean_of_products);
};

template <class G, class B>
concept residual_tracking_aggregator = requires(const G& g, const adapter_set<B>& global,
                                                std::span<const client_update<B>> updates,
                                                factor_set shared) {
  { g.residual_update_scalars(global, updates, shared) } -> std::convertible_to<std::size_t>;
};

// ---------------------------------------------------------------------------------------------
// factor_reducer: what factorwise<R> (aggregate/factorwise.hpp) turns into a whole aggregator,
// the next global value of one factor of one module from the clients' copies of it.
//
//   name                        static constexpr std::string_view, the aggregator's name
//   one of
//   operator()(std::span<const host_matrix<T>> copies, std::span<const double> weights) const
//       -> host_matrix<T>       host_factor_reducer: on host copies (T = B::scalar)
//   template <backend B>
//   operator()(std::span<const typename B::matrix* const> copies, std::span<const double> weights,
//              typename B::matrix& out) const
//                               backend_factor_reducer: on the backend's matrices, writing `out`
//                               (which holds the global factor)
// copies come in update order, all shaped like the global factor; weights are the w_i.
// ---------------------------------------------------------------------------------------------
template <class R, class B>
concept backend_factor_reducer = backend<B> &&
    requires(const R& r, std::span<const typename B::matrix* const> copies,
             std::span<const double> weights, typename B::matrix& out) {
  r.template operator()<B>(copies, weights, out);
};

template <class R, class B>
concept host_factor_reducer = backend<B> &&
    requires(const R& r, std::span<const host_matrix<typename B::scalar>> copies,
             std::span<const double> weights) {
  { r(copies, weights) } -> std::convertible_to<host_matrix<typename B::scalar>>;
};

template <class R, class B>
concept factor_reducer = named_by_constant<R> && std::copyable<R> &&
    (backend_factor_reducer<R, B> || host_factor_reducer<R, B>);

// ---------------------------------------------------------------------------------------------
// client_task: a client's data and loss. The federation never sees the data, only this.
//
//   num_samples() -> std::size_t   n_i, the local sample count (weights and batching use it)
//   loss(const adapter_set<B>& adapters) -> double
//                                   the mean loss over all local samples
//   loss_and_grad(const adapter_set<B>& adapters, std::span<const std::size_t> batch,
//                 factor_set trains, gradient_set<B>& grads) -> double
//                                   the mean loss over the samples `batch` (indices < n_i) and,
//                                   for every module and every factor in `trains`, its gradient
//                                   in grads[module].dA / .dB (shaped like the factor). Factors
//                                   not in `trains` need no gradient. When `trains` names any
//                                   factor, also the gradient of every module to save of
//                                   `adapters` in grads.modules_to_save[name] (shaped like it).
// Optional, detected:
//   solve_b(adapter_set<B>& adapters)
//                                   closed_form_b_task: sets every B to its exact minimiser given
//                                   A (closed-form least squares); used for B-only rounds when
//                                   federation_config::closed_form_b is set (RoLoRA-linear).
// A task object is used by one thread at a time.
// ---------------------------------------------------------------------------------------------
template <class Task, class Backend>
concept client_task = backend<Backend> &&
    requires(Task& t, const adapter_set<Backend>& adapters, std::span<const std::size_t> batch,
             factor_set trains, gradient_set<Backend>& grads) {
  { t.num_samples() } -> std::convertible_to<std::size_t>;
  { t.loss(adapters) } -> std::convertible_to<double>;
  { t.loss_and_grad(adapters, batch, trains, grads) } -> std::convertible_to<double>;
};

template <class Task, class Backend>
concept closed_form_b_task = requires(Task& t, adapter_set<Backend>& adapters) {
  t.solve_b(adapters);
};

// What per_example_clip_task::clipped_grad_sum returns besides the gradients.
struct clipped_sum {
  double loss_sum = 0.0;    // sum over the batch's examples of their loss (not the mean)
  std::size_t clipped = 0;  // examples whose gradient norm was above C (and so scaled to C)
};

// per_example_clip_task (optional, detected; sample-level DP-SGD, privacy/dp_sgd.hpp):
//   clipped_grad_sum(const adapter_set<B>& adapters, std::span<const std::size_t> batch,
//                    factor_set trains, double clip_norm, gradient_set<B>& grads) -> clipped_sum
//       writes into grads, shaped as loss_and_grad's, the clipped SUM over the batch's examples
//         sum_i min(1, C / ||g_i||) g_i      (Abadi et al. 2016, Algorithm 1's clip)
//       where g_i is the gradient of example i's own loss (not divided by the batch size) with
//       respect to every factor in `trains` of every adapter and, when `trains` names any, every
//       module to save, all flattened into one vector (||g_i|| its L2 norm, C = clip_norm > 0).
//       Each example's term must be exact: computed from that example alone, never from a
//       batch mean. An empty batch gives zero gradients (of the same shapes) and loss_sum 0. A
//       module to save whose per-example gradient the task cannot form: config_error.
// Models: theory::linear_regression_task, classification_task (nn/classification_task.hpp).
template <class Task, class Backend>
concept per_example_clip_task = client_task<Task, Backend> &&
    requires(Task& t, const adapter_set<Backend>& adapters, std::span<const std::size_t> batch,
             factor_set trains, double clip_norm, gradient_set<Backend>& grads) {
  { t.clipped_grad_sum(adapters, batch, trains, clip_norm, grads) } -> std::same_as<clipped_sum>;
};

// ---------------------------------------------------------------------------------------------
// Callbacks of federation::run(tasks, callbacks...): a callback implements only the events it
// cares about (each detected, none required; federated/callbacks.hpp ships the common ones).
//
//   on_round_begin(std::size_t round)
//                               round_begin_callback: before round `round` trains
//   on_round_end(const round_report& report, const adapter_set<B>& global) -> void or bool
//                               round_end_callback: after the round committed; returning true
//                               stops the run after this round
// ---------------------------------------------------------------------------------------------
template <class C>
concept round_begin_callback = requires(C& c, std::size_t round) {
  c.on_round_begin(round);
};

template <class C, class B>
concept round_end_callback = requires(C& c, const round_report& report,
                                      const adapter_set<B>& global) {
  c.on_round_end(report, global);
};

// ---------------------------------------------------------------------------------------------
// round_transport: how the rounds of a federation reach its clients. The one round loop,
// rolora::run_round and rolora::run (federated/federation.hpp), is written once over it; the
// server's state, sampling, checks and merge are the loop's, never the transport's. Models:
// rolora::in_process (threads of this process, the default) and rolora::mpi::transport.
//
// A transport T, for a server type S (federation_server<...>) and a client_task type Task, has
//   is_server() const -> bool   whether this process holds the server and runs the rounds
//                               (in-process: always); false: it only hosts clients (serve)
//   exchange(S& server, const round_plan& plan, std::vector<Task>& tasks) -> uploads
//                               on the server's process, during round plan.round: deliver
//                               server.download(plan, c) to every client c of plan.reporting,
//                               have it trained there (train_locally(tasks[c], download,
//                               server.config())) and return the uploads that came back, in any
//                               order, as a value server.complete_round(plan, uploads) accepts.
//                               A client not heard from is left out; one that sent something
//                               undecodable is a bad upload of that client. It must not change
//                               the server (complete_round checks, merges and commits), and it
//                               must give the same upload bits as train_locally in this process.
//   serve<typename S::backend_type>(std::vector<Task>& tasks, const federation_config& config)
//                               on a client-only process: answer the downloads of the clients it
//                               hosts until the server's process calls finish()
//   finish()                    on the server's process, once after the last round: the
//                               federation is over (client processes' serve returns)
// Optional, detected:
//   finish_round(const round_plan& plan, round_report& report)
//                               after complete_round, before report.seconds is set: what the
//                               transport adds to the report (MPI: the clients it timed out, in
//                               dropped and rejected) and logs
// A transport is used by one thread at a time; the loop catches and re-throws its errors with
// the round's name, and calls nothing after a failed round (not even finish()).
// ---------------------------------------------------------------------------------------------
struct round_plan;
struct federation_config;

template <class T, class Server, class Task>
concept round_transport = requires(T& t, const T& ct, Server& server, const round_plan& plan,
                                   std::vector<Task>& tasks, const federation_config& config) {
  { ct.is_server() } -> std::convertible_to<bool>;
  { server.complete_round(plan, t.exchange(server, plan, tasks)) } -> std::same_as<round_report>;
  t.template serve<typename Server::backend_type>(tasks, config);
  t.finish();
};

// ---------------------------------------------------------------------------------------------
// nn_backend: a backend whose nn_primitives<B> specialisation provides the primitives the
// transformer of rolora/nn needs (backend/eigen/nn_primitives.hpp for eigen_backend). They are a
// separate type so that a user of the core compiles none of them. The model checks shapes
// before it calls a primitive, so primitives may assume them.
//
// Activations are column-major with one token per column; "N" is the number of tokens, "L" the
// sequence length, "n" the number of sequences (N = n L, sequence-major: token j of sequence s is
// column s L + j). Every output is resized to its shape; an output that already has that shape
// is reused without allocating. Vectors are [k, 1] matrices. `matrix` is B::matrix, `scalar`
// B::scalar, ids and targets are std::span<const std::int32_t>; all static:
//
//   set_zero(matrix& m, index_t rows, index_t cols)
//                                m = 0 [rows, cols]
//   add_bias(matrix& y, const matrix& b)
//                                y [m, N] += b [m, 1] in every column
//   row_sums(const matrix& x, matrix& out)
//                                out [m, 1] = sum over the columns of x [m, N] (a bias gradient)
//   layer_norm_forward(x, gamma, beta, scalar eps, matrix& y, matrix& xhat, matrix& rstd)
//                                per column: xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps)
//                                (biased variance, as torch.nn.LayerNorm), y = gamma * xhat + beta;
//                                x, y, xhat [d, N], gamma, beta [d, 1], rstd [N, 1]
//   layer_norm_backward(dy, xhat, rstd, gamma, matrix& dx, bool accumulate, matrix* dgamma,
//                       matrix* dbeta)
//                                dx [d, N] = (or += when accumulate) dL/dx for upstream dy;
//                                dgamma, dbeta [d, 1] are written when not null
//   gelu_forward(const matrix& x, matrix& y)
//                                y = x Phi(x), the erf form (torch.nn.GELU() default)
//   gelu_backward(const matrix& x, const matrix& dy, matrix& dx)
//                                dx = dy * (Phi(x) + x phi(x))
//   embedding_forward(const matrix& table, ids, bool accumulate, matrix& out)
//                                out [d, N] column j = (or +=) row ids[j] of table [V, d]
//   embedding_backward(const matrix& dout, ids, matrix& dtable)
//                                row ids[j] of dtable [V, d] += column j of dout [d, N]
//                                (scatter-add; repeated ids add up)
//   attention_forward(q, k, v, key_valid, index_t n_heads, scalar scale, matrix& probs,
//                     matrix& ctx)
//                                q, k, v, ctx [d, N]; key_valid [L, n] is 1 for a key that may be
//                                attended to and 0 for one that never is (padding); for sequence
//                                s and head h (rows h dh .. h dh + dh - 1, dh = d / n_heads):
//                                P = softmax over each column of scale * K_h^T Q_h restricted to
//                                the valid keys (masked entries exactly 0), ctx_h = V_h P; a
//                                sequence without a valid key gets P = 0 and ctx = 0.
//                                probs [L, L n_heads n]: P of (s, h) in columns (s n_heads + h) L
//                                .. + L - 1, rows = keys, columns = queries.
//   attention_backward(q, k, v, probs, dctx, index_t n_heads, scalar scale, matrix& dq,
//                      matrix& dk, matrix& dv)
//                                the gradients of attention_forward for upstream dctx [d, N]
//   weighted_pool(const matrix& h, const matrix& w, matrix& out)
//                                out [d, n] column s = sum_j w(j, s) h(:, s L + j); w [L, n]
//   weighted_pool_backward(const matrix& dout, const matrix& w, matrix& dh)
//                                dh [d, N] column s L + j = w(j, s) dout(:, s)
//   softmax_columns(matrix& x)   in place, each column of x becomes its softmax
//   softmax_cross_entropy(const matrix& logits, targets, scalar grad_scale, matrix* dlogits)
//       -> double                sum over columns j with targets[j] >= 0 of
//                                -log softmax(logits(:, j))[targets[j]] (targets[j] = -1: ignored);
//                                when dlogits is not null it gets [C, N] =
//                                grad_scale * (softmax - onehot) (zero in ignored columns)
// ---------------------------------------------------------------------------------------------
template <class B>
struct nn_primitives;  // specialised per backend on the nn side

template <class B>
concept nn_backend = backend<B> &&
    requires(typename B::matrix& m, const typename B::matrix& c, typename B::matrix* p,
             typename B::scalar s, index_t i, bool flag, std::span<const std::int32_t> ids) {
  nn_primitives<B>::set_zero(m, i, i);
  nn_primitives<B>::add_bias(m, c);
  nn_primitives<B>::row_sums(c, m);
  nn_primitives<B>::layer_norm_forward(c, c, c, s, m, m, m);
  nn_primitives<B>::layer_norm_backward(c, c, c, c, m, flag, p, p);
  nn_primitives<B>::gelu_forward(c, m);
  nn_primitives<B>::gelu_backward(c, c, m);
  nn_primitives<B>::embedding_forward(c, ids, flag, m);
  nn_primitives<B>::embedding_backward(c, ids, m);
  nn_primitives<B>::attention_forward(c, c, c, c, i, s, m, m);
  nn_primitives<B>::attention_backward(c, c, c, c, c, i, s, m, m, m);
  nn_primitives<B>::weighted_pool(c, c, m);
  nn_primitives<B>::weighted_pool_backward(c, c, m);
  nn_primitives<B>::softmax_columns(m);
  { nn_primitives<B>::softmax_cross_entropy(c, ids, s, p) } -> std::convertible_to<double>;
};

// ---------------------------------------------------------------------------------------------
// hf_nn_backend: an nn_backend whose primitives also run the Hugging Face families of
// rolora/models (Llama-style decoders, BERT/RoBERTa heads). Shapes as nn_backend's; hd is the
// head dimension:
//
//   attention_forward(q, k, v, key_valid, n_heads, scale, probs, ctx, index_t kv_heads,
//                     bool causal)
//                                as nn_backend's, with grouped-query attention: k, v [kv_heads hd,
//                                N] and query head h reads key/value head h / (n_heads /
//                                kv_heads); causal: query j attends to keys 0 .. j only (a query
//                                with no key to attend to gets P = 0 and ctx = 0)
//   attention_backward(q, k, v, probs, dctx, n_heads, scale, dq, dk, dv, index_t kv_heads)
//                                its gradients; dk, dv of a key/value head sum over its query heads
//   rms_norm_forward(x, w, scalar eps, matrix& y, matrix& xhat, matrix& rstd)
//                                per column: rstd = 1 / sqrt(mean(x^2) + eps), xhat = x rstd,
//                                y = w * xhat (LlamaRMSNorm); x, y, xhat [d, N], w [d, 1], rstd [N,
//                                1]
//   rms_norm_backward(dy, xhat, rstd, w, matrix& dx, bool accumulate)
//                                dx [d, N] = (or +=) dL/dx for upstream dy (w frozen)
//   rotary(matrix& x, index_t heads, index_t hd, cos, sin, bool inverse)
//                                in place on x [heads hd, N]: the rotate-half rotation of each
//                                head's pairs (i, i + hd/2) by the angle of position j (column
//                                s L + j), cos, sin [hd / 2, L]; inverse: the transpose (backward)
//   swiglu_forward(gate, up, matrix& m)
//                                m = silu(gate) * up, all [f, N]
//   swiglu_backward(gate, up, dm, matrix& dgate, matrix& dup)
//                                its gradients for upstream dm
//   tanh_forward(x, matrix& y)   y = tanh(x) (y may be x)
//   tanh_backward(y, dy, matrix& dx)
//                                dx = dy (1 - y^2) for y = tanh(x) (dx may be dy)
// eigen_backend and thrust_backend model it.
// ---------------------------------------------------------------------------------------------
template <class B>
concept hf_nn_backend = nn_backend<B> &&
    requires(typename B::matrix& m, const typename B::matrix& c, typename B::scalar s, index_t i,
             bool flag) {
  nn_primitives<B>::attention_forward(c, c, c, c, i, s, m, m, i, flag);
  nn_primitives<B>::attention_backward(c, c, c, c, c, i, s, m, m, m, i);
  nn_primitives<B>::rms_norm_forward(c, c, s, m, m, m);
  nn_primitives<B>::rms_norm_backward(c, c, c, c, m, flag);
  nn_primitives<B>::rotary(m, i, i, c, c, flag);
  nn_primitives<B>::swiglu_forward(c, c, m);
  nn_primitives<B>::swiglu_backward(c, c, c, m, m);
  nn_primitives<B>::tanh_forward(c, m);
  nn_primitives<B>::tanh_backward(c, c, m);
};

}  // namespace rolora
