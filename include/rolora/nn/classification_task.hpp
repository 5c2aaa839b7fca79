// Sequence classification with the transformer as a federated client task, and its evaluation.
//
// classification_task models rolora::client_task (federated/task.hpp): a client owns its token
// sequences and labels, shares the frozen base model read-only with every other client, and
// keeps its own workspace, so clients train in parallel without sharing mutable state.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/parallel.hpp>
#include <rolora/federated/task.hpp>
#include <rolora/nn/transformer.hpp>
#include <span>
#include <vector>

namespace rolora {

// Sequences [n, seq_len] (sequence-major) with one label each.
struct labelled_sequences {
  token_batch tokens;
  std::vector<std::int32_t> labels;

  std::size_t size() const { return labels.size(); }

  // The sequences at `rows`, in that order.
  labelled_sequences select(std::span<const std::size_t> rows) const {
    labelled_sequences out;
    select_into(rows, out);
    return out;
  }
  // The same into `out`, whose storage is reused (no allocation once it has held as many).
  void select_into(std::span<const std::size_t> rows, labelled_sequences& out) const {
    out.tokens.seq_len = tokens.seq_len;
    out.tokens.ids.clear();
    out.labels.clear();
    out.tokens.ids.reserve(rows.size() * std::size_t(tokens.seq_len));
    out.labels.reserve(rows.size());
    for (const std::size_t r : rows) {
      if (r >= size()) {
        detail::raise<value_error>("labelled_sequences: row ", r, " out of range [0, ", size(),
                                   ")");
      }
      const auto first = tokens.ids.begin() + std::ptrdiff_t(r * std::size_t(tokens.seq_len));
      out.tokens.ids.insert(out.tokens.ids.end(), first, first + tokens.seq_len);
      out.labels.push_back(labels[r]);
    }
  }

  void check() const {
    if (tokens.seq_len < 1 || tokens.ids.size() != labels.size() * std::size_t(tokens.seq_len)) {
      detail::raise<shape_error>("labelled_sequences: expected ", labels.size(), " x ",
                                 tokens.seq_len, " token ids for ", labels.size(), " labels, got ",
                                 tokens.ids.size());
    }
  }
};

// One client: its local data over a shared, frozen model. Activations live in a workspace per
// thread, not per client: twenty clients on two threads hold two sets of buffers.
template <nn_backend B>
class classification_task {
 public:
  classification_task(const transformer_weights<B>& model, labelled_sequences data)
      : model_(&model), data_(std::move(data)) {
    data_.check();
    if (data_.size() == 0) detail::raise<value_error>("classification_task: a client without data");
  }

  std::size_t num_samples() const { return data_.size(); }
  const labelled_sequences& data() const { return data_; }

  // Mean cross-entropy over all local samples, in chunks of 64 sequences.
  double loss(const adapter_set<B>& adapters) {
    double sum = 0.0;
    std::vector<std::size_t> rows;
    for (std::size_t first = 0; first < data_.size(); first += 64) {
      rows.clear();
      for (std::size_t r = first; r < std::min(data_.size(), first + 64); ++r) rows.push_back(r);
      const auto part = data_.select(rows);
      sum += classification_loss(*model_, adapters, part.tokens, part.labels, workspace()) *
             double(rows.size());
    }
    return sum / double(data_.size());
  }

  double loss_and_grad(const adapter_set<B>& adapters, std::span<const std::size_t> batch,
                       factor_set trains, gradient_set<B>& grads) {
    data_.select_into(batch, batch_);
    return classification_loss_and_grad(*model_, adapters, batch_.tokens, batch_.labels, trains,
                                        grads, workspace());
  }

  // Sample-level DP-SGD (per_example_clip_task): the clipped sum of the batch's per-sequence
  // gradients, exact (classification_clipped_grad_sum); an empty batch gives zero gradients.
  clipped_sum clipped_grad_sum(
      const adapter_set<B>& adapters, std::span<const std::size_t> batch, factor_set trains,
      double clip_norm, gradient_set<B>& grads,
      privacy::per_example_norm method = privacy::per_example_norm::automatic) {
    if (batch.empty()) {
      privacy::check_clip_norm(clip_norm, "classification_task::clipped_grad_sum");
      privacy::zero_gradients(adapters, trains, grads);
      return {};
    }
    data_.select_into(batch, batch_);
    return classification_clipped_grad_sum(*model_, adapters, batch_.tokens, batch_.labels, trains,
                                           clip_norm, grads, workspace(), method);
  }

  // The calling thread's activation buffers, shared by every task (and evaluate) on it.
  static transformer_workspace<B>& workspace() {
    thread_local transformer_workspace<B> ws;
    return ws;
  }

 private:
  const transformer_weights<B>* model_;
  labelled_sequences data_;
  labelled_sequences batch_;  // the current minibatch
};

struct evaluation {
  double loss = 0.0;      // mean cross-entropy
  double accuracy = 0.0;  // fraction predicted right
  std::vector<std::int32_t> predictions;
};

// Loss, accuracy and predictions of `adapters` on `data`, over `threads` threads. The data are
// cut into fixed chunks of `chunk` sequences whatever the thread count, so every number is the
// same bits for any `threads`.
template <nn_backend B>
evaluation evaluate(const transformer_weights<B>& model, const adapter_set<B>& adapters,
                    const labelled_sequences& data, std::size_t threads = 1,
                    std::size_t chunk = 64) {
  data.check();
  const std::size_t n = data.size(), chunks = (n + chunk - 1) / chunk;
  std::vector<double> losses(chunks);
  evaluation out;
  out.predictions.resize(n);
  detail::parallel_for(chunks, threads, [&](std::size_t c) {
    std::vector<std::size_t> rows;
    for (std::size_t r = c * chunk; r < std::min(n, (c + 1) * chunk); ++r) rows.push_back(r);
    const auto part = data.select(rows);
    const auto logits = B::to_host(
        classification_logits(model, adapters, part.tokens, classification_task<B>::workspace()));
    for (index_t s = 0; s < logits.cols(); ++s) {
      const auto col = logits.col(s).template cast<double>();
      index_t best = 0;
      const double top = col.maxCoeff(&best);
      losses[c] +=
          top + std::log((col.array() - top).exp().sum()) - col(part.labels[std::size_t(s)]);
      out.predictions[rows[std::size_t(s)]] = static_cast<std::int32_t>(best);
    }
  });
  std::size_t right = 0;
  for (std::size_t i = 0; i < n; ++i) right += out.predictions[i] == data.labels[i];
  for (const double l : losses) out.loss += l;  // in chunk order: same bits for any thread count
  out.loss /= double(n);
  out.accuracy = double(right) / double(n);
  return out;
}

}  // namespace rolora
