// A multilayer perceptron classifier with LoRA adapters, and its federated client task: the small
// non-linear network on which the RoLoRA paper's extended version checks its linear-model insight
// before language models (apps/mnist_toy.cpp runs it on Fashion-MNIST).
//
// Layers "fc1", ..., "fc{L-1}" and "head", widths {in, hidden..., classes}:
//   h_0 = x [in, n],  h_l = GELU(W_l h_{l-1} + b_l (+ s B_l A_l h_{l-1})),  logits = head(h_{L-1})
//   [C, n]
// Parameters "<layer>.weight" [out, in] and "<layer>.bias" [out, 1]. An adapter named "<layer>"
// adapts that layer; a module to save of a parameter's name replaces it and trains (PEFT's
// modules_to_save, as the transformer's "classifier.weight"). Full training (pretraining) is an
// adapter set holding every parameter as a module to save (mlp_weights::all_trainable).
//
// mlp_task models rolora::client_task (federated/task.hpp). The layers are nn/transformer.hpp's
// linear_forward / linear_backward; the backend needs the nn_backend primitives.
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/optimizer.hpp>
#include <rolora/core/error.hpp>
#include <rolora/core/parallel.hpp>
#include <rolora/core/rng.hpp>
#include <rolora/nn/transformer.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace rolora {

template <nn_backend B>
class mlp_weights {
 public:
  using matrix = typename B::matrix;

  // nn.Linear's default initialisation: W and b ~ U(-1/sqrt(in), 1/sqrt(in)), from
  // random_stream(seed, stream::data, layer, 0x4D4C) ("ML").
  mlp_weights(std::vector<index_t> widths, std::uint64_t seed) : widths_(std::move(widths)) {
    if (widths_.size() < 2) {
      detail::raise<config_error>("mlp: need at least an input and an output width, got ",
                                  widths_.size(), " widths");
    }
    for (std::size_t l = 0; l + 1 < widths_.size(); ++l) {
      const index_t in = widths_[l], out = widths_[l + 1];
      if (in < 1 || out < 1) detail::raise<config_error>("mlp: widths must be >= 1");
      names_.push_back(l + 2 == widths_.size() ? "head" : "fc" + std::to_string(l + 1));
      const random_stream rs(seed, stream::data, std::uint32_t(l), 0x4D4C);
      const double bound = 1.0 / std::sqrt(double(in));
      host_matrix<typename B::scalar> w(out, in), b(out, 1);
      for (index_t i = 0; i < w.size(); ++i)
        w.data()[i] = typename B::scalar(bound * (2 * rs.uniform(std::uint64_t(i)) - 1));
      for (index_t i = 0; i < out; ++i)
        b(i) = typename B::scalar(bound * (2 * rs.uniform(std::uint64_t(w.size() + i)) - 1));
      params_.emplace(names_.back() + ".weight", B::from_host(w));
      params_.emplace(names_.back() + ".bias", B::from_host(b));
    }
  }

  const std::vector<index_t>& widths() const { return widths_; }
  const std::vector<std::string>& layers() const { return names_; }  // "fc1", ..., "head"
  const std::map<std::string, matrix>& parameters() const { return params_; }
  const matrix& at(const std::string& name) const { return checked(name)->second; }

  // The shapes of the named layers, for adapter_set's constructor.
  std::vector<module_shape> lora_targets(const std::vector<std::string>& layers) const {
    std::vector<module_shape> out;
    for (const auto& name : layers) {
      const auto& w = at(name + ".weight");
      out.push_back({name, B::rows(w), B::cols(w)});
    }
    return out;
  }

  // Every parameter as a module to save, no adapter: what full training trains.
  adapter_set<B> all_trainable() const {
    adapter_set<B> out;
    for (const auto& [name, p] : params_) out.add_module_to_save(name, p);
    return out;
  }

  // Takes the modules to save of `trained` as the new parameters (after full training).
  void assign(const adapter_set<B>& trained) {
    for (const auto& [name, m] : trained.modules_to_save()) {
      auto it = checked(name);
      if (B::rows(m) != B::rows(it->second) || B::cols(m) != B::cols(it->second)) {
        detail::raise<shape_error>("mlp: '", name, "' expected ",
                                   detail::shape_string(B::rows(it->second), B::cols(it->second)),
                                   ", got ", detail::shape_string(B::rows(m), B::cols(m)));
      }
      params_.at(name) = m;
    }
  }

 private:
  typename std::map<std::string, matrix>::const_iterator checked(const std::string& name) const {
    const auto it = params_.find(name);
    if (it == params_.end()) detail::raise<config_error>("mlp: no parameter '", name, "'");
    return it;
  }

  std::vector<index_t> widths_;
  std::vector<std::string> names_;
  std::map<std::string, matrix> params_;
};

// Activations of one evaluation, reused across calls on one thread.
template <nn_backend B>
struct mlp_workspace {
  using matrix = typename B::matrix;
  std::vector<matrix> inputs;  // [width_l, n]: input of layer l (inputs[0] = x)
  std::vector<matrix> pre;     // [width_{l+1}, n]: W h + b before GELU
  std::vector<matrix> ax;      // [r, n] per layer
  matrix logits, dlogits, dy, dx, t;
};

namespace detail::nn {

template <nn_backend B>
struct mlp_bindings {
  std::vector<binding<B>> w, b;
  std::vector<lora_binding<B>> lora;
};

// Which matrices each layer uses (base, module to save, adapter) and where gradients go.
template <nn_backend B>
mlp_bindings<B> bind_mlp(const mlp_weights<B>& m, const adapter_set<B>& adapters, factor_set trains,
                         gradient_set<B>* grads) {
  for (const auto& [name, a] : adapters) {
    if (!m.parameters().count(name + ".weight")) {
      detail::raise<config_error>("mlp: adapter '", name, "' names no layer (fc1.., head)");
    }
    const auto& w = m.at(name + ".weight");
    if (a.out_features() != B::rows(w) || a.in_features() != B::cols(w)) {
      detail::raise<shape_error>("mlp: adapter '", name, "' is for a ",
                                 detail::shape_string(a.out_features(), a.in_features()),
                                 " weight, the layer's is ",
                                 detail::shape_string(B::rows(w), B::cols(w)));
    }
  }
  const bool train = grads && trains.any();
  mlp_bindings<B> out;
  for (const auto& layer : m.layers()) {
    for (auto [suffix, list] : {std::pair{".weight", &out.w}, std::pair{".bias", &out.b}}) {
      const std::string name = layer + suffix;
      const auto& saved = adapters.modules_to_save();
      const auto it = saved.find(name);
      if (it == saved.end()) {
        list->push_back({&m.at(name), nullptr});
      } else {
        if (B::rows(it->second) != B::rows(m.at(name)) ||
            B::cols(it->second) != B::cols(m.at(name))) {
          detail::raise<shape_error>("mlp: module to save '", name, "' has the wrong shape");
        }
        list->push_back({&it->second, train ? &grads->modules_to_save[name] : nullptr});
      }
    }
    const bool adapted = adapters.contains(layer);
    out.lora.push_back(
        {adapted ? &adapters.at(layer) : nullptr, adapted && train ? &(*grads)[layer] : nullptr});
  }
  return out;
}

// Forward to ws.logits [C, n].
template <nn_backend B>
void mlp_forward(const mlp_bindings<B>& p, const typename B::matrix& x, mlp_workspace<B>& ws) {
  const std::size_t layers = p.w.size();
  ws.inputs.resize(layers);
  ws.pre.resize(layers);
  ws.ax.resize(layers);
  ws.inputs[0] = x;
  for (std::size_t l = 0; l < layers; ++l) {
    auto& y = l + 1 == layers ? ws.logits : ws.pre[l];
    linear_forward<B>(p.w[l], p.b[l], p.lora[l], ws.inputs[l], ws.ax[l], y);
    if (l + 1 < layers) nn_primitives<B>::gelu_forward(ws.pre[l], ws.inputs[l + 1]);
  }
}

// Backward from ws.dlogits: gradients into the bindings' buffers.
template <nn_backend B>
void mlp_backward(const mlp_bindings<B>& p, factor_set trains, mlp_workspace<B>& ws) {
  ws.dy = ws.dlogits;
  for (std::size_t l = p.w.size(); l-- > 0;) {
    const bool below = l > 0;
    linear_backward<B>(p.w[l], p.b[l], p.lora[l], trains, ws.inputs[l], ws.ax[l], ws.dy, ws.t,
                       below ? &ws.dx : nullptr, false);
    if (below) nn_primitives<B>::gelu_backward(ws.pre[l - 1], ws.dx, ws.dy);
  }
}

}  // namespace detail::nn

// Logits [C, n] of the columns of x [in, n].
template <nn_backend B>
typename B::matrix mlp_logits(const mlp_weights<B>& m, const adapter_set<B>& adapters,
                              const typename B::matrix& x, mlp_workspace<B>& ws) {
  detail::nn::mlp_forward(detail::nn::bind_mlp<B>(m, adapters, no_factors, nullptr), x, ws);
  return ws.logits;
}

// Samples as columns of a host matrix with one label each.
template <class T>
struct labelled_features {
  host_matrix<T> x;                  // [in, n]
  std::vector<std::int32_t> labels;  // [n]
  std::size_t size() const { return labels.size(); }
};

// One client: its features over the shared, frozen MLP.
template <nn_backend B>
class mlp_task {
 public:
  using T = typename B::scalar;
  mlp_task(const mlp_weights<B>& model, labelled_features<T> data)
      : model_(&model), data_(std::move(data)) {
    if (data_.size() == 0 || std::size_t(data_.x.cols()) != data_.size() ||
        data_.x.rows() != model.widths().front()) {
      detail::raise<shape_error>("mlp_task: expected features [", model.widths().front(),
                                 ", n] with n = ", data_.size(), " >= 1 labels, got ",
                                 detail::shape_string(data_.x.rows(), data_.x.cols()));
    }
    for (const auto y : data_.labels) {
      if (y < 0 || y >= model.widths().back()) {
        detail::raise<value_error>("mlp_task: label ", y, " outside [0, ", model.widths().back(),
                                   ")");
      }
    }
  }

  std::size_t num_samples() const { return data_.size(); }

  // Mean cross-entropy over all local samples.
  double loss(const adapter_set<B>& adapters) {
    std::vector<std::size_t> all(data_.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    gradient_set<B> none;
    return loss_and_grad(adapters, all, no_factors, none);
  }

  double loss_and_grad(const adapter_set<B>& adapters, std::span<const std::size_t> batch,
                       factor_set trains, gradient_set<B>& grads) {
    host_matrix<T> xb(data_.x.rows(), index_t(batch.size()));
    std::vector<std::int32_t> yb(batch.size());
    for (std::size_t j = 0; j < batch.size(); ++j) {
      xb.col(index_t(j)) = data_.x.col(index_t(batch[j]));
      yb[j] = data_.labels[batch[j]];
    }
    auto& ws = workspace();
    const auto p = detail::nn::bind_mlp(*model_, adapters, trains, &grads);
    detail::nn::mlp_forward(p, B::from_host(xb), ws);
    const double n = double(batch.size());
    const double sum = nn_primitives<B>::softmax_cross_entropy(
        ws.logits, yb, T(1.0 / n), trains.any() ? &ws.dlogits : nullptr);
    if (trains.any()) detail::nn::mlp_backward(p, trains, ws);
    return sum / n;
  }

  static mlp_workspace<B>& workspace() {
    thread_local mlp_workspace<B> ws;
    return ws;
  }

 private:
  const mlp_weights<B>* model_;
  labelled_features<T> data_;
};

// Loss and accuracy on `data` in fixed chunks (same bits for any thread count).
template <nn_backend B>
std::pair<double, double> evaluate_mlp(const mlp_weights<B>& m, const adapter_set<B>& adapters,
                                       const labelled_features<typename B::scalar>& data,
                                       std::size_t threads = 1, std::size_t chunk = 512) {
  const std::size_t n = data.size(), chunks = (n + chunk - 1) / chunk;
  std::vector<double> losses(chunks);
  std::vector<std::size_t> right(chunks);
  detail::parallel_for(chunks, threads, [&](std::size_t c) {
    const index_t first = index_t(c * chunk), count = index_t(std::min(n, (c + 1) * chunk)) - first;
    const auto logits = B::to_host(mlp_logits(
        m, adapters, B::from_host(host_matrix<typename B::scalar>(data.x.middleCols(first, count))),
        mlp_task<B>::workspace()));
    for (index_t s = 0; s < count; ++s) {
      const auto col = logits.col(s).template cast<double>();
      index_t best = 0;
      const double top = col.maxCoeff(&best);
      const auto y = data.labels[std::size_t(first + s)];
      losses[c] += top + std::log((col.array() - top).exp().sum()) - col(y);
      right[c] += best == y;
    }
  });
  double loss = 0;
  std::size_t correct = 0;
  for (std::size_t c = 0; c < chunks; ++c) {
    loss += losses[c];
    correct += right[c];
  }
  return {loss / double(n), double(correct) / double(n)};
}

}  // namespace rolora
