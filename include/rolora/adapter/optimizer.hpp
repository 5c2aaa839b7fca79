// Local optimizers for the trained LoRA factors: SGD (with momentum and weight decay, as
// torch.optim.SGD) and AdamW (as torch.optim.AdamW). Settings are plain values; the moments live
// in an optimizer_state made inside the run.
#pragma once
#include <cmath>
#include <cstddef>
#include <map>
#include <rolora/adapter/adapter_set.hpp>
#include <rolora/adapter/lora.hpp>
#include <rolora/core/concepts.hpp>
#include <rolora/core/error.hpp>
#include <string>
#include <variant>

namespace rolora {

struct sgd {
  double lr = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;
};

struct adamw {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

using optimizer = std::variant<sgd, adamw>;

// Gradients of an adapter set: per adapted module {dA, dB}, and per module to save a gradient
// shaped like its weight.
template <backend Backend>
struct gradient_set {
  std::map<std::string, lora_gradients<Backend>> adapters;
  std::map<std::string, typename Backend::matrix> modules_to_save;

  lora_gradients<Backend>& operator[](const std::string& module) { return adapters[module]; }
};

// Moments of one client's optimizer over the factors it trains.
template <backend Backend>
class optimizer_state {
 public:
  // One step on the factors in `trains`: params -= update(grads).
  void step(const optimizer& opt, adapter_set<Backend>& params, const gradient_set<Backend>& grads,
            factor_set trains) {
    ++steps_;
    for (auto& [name, p] : params) {
      const auto& g = gradient_of(grads.adapters, name);
      auto& m = moments_[name];
      if (trains.a) update(opt, p.A, g.dA, m.a);
      if (trains.b) update(opt, p.B, g.dB, m.b);
    }
    if (!trains.any()) return;
    for (auto& [name, w] : params.modules_to_save()) {
      update(opt, w, gradient_of(grads.modules_to_save, name), saved_moments_[name]);
    }
  }
  std::size_t steps() const { return steps_; }

  using matrix = typename Backend::matrix;
  // The moment buffers by name, what a checkpoint keeps (federated/checkpoint.hpp):
  // "lora/<module>/<a|b>/<first|second>" and "save/<module to save>/<first|second>".
  std::map<std::string, matrix> buffers() const {
    std::map<std::string, matrix> out;
    const auto put = [&](const std::string& key, const moment_pair& m) {
      if (!m.ready) return;
      out.emplace(key + "/first", m.first);
      out.emplace(key + "/second", m.second);
    };
    for (const auto& [name, m] : moments_) {
      put("lora/" + name + "/a", m.a);
      put("lora/" + name + "/b", m.b);
    }
    for (const auto& [name, m] : saved_moments_) put("save/" + name, m);
    return out;
  }
  // The state `buffers()` and `steps()` describe; value_error on a name it cannot have written.
  static optimizer_state restore(std::size_t steps, const std::map<std::string, matrix>& buffers) {
    optimizer_state s;
    s.steps_ = steps;
    for (const auto& [key, value] : buffers) {
      const auto last = key.rfind('/');
      const std::string head = last == std::string::npos ? "" : key.substr(0, last);
      const std::string which = last == std::string::npos ? "" : key.substr(last + 1);
      moment_pair* m = nullptr;
      if (head.starts_with("lora/") && (head.ends_with("/a") || head.ends_with("/b")) &&
          head.size() > 7) {
        auto& mm = s.moments_[head.substr(5, head.size() - 7)];
        m = head.back() == 'a' ? &mm.a : &mm.b;
      } else if (head.starts_with("save/") && head.size() > 5) {
        m = &s.saved_moments_[head.substr(5)];
      }
      if (!m || (which != "first" && which != "second")) {
        detail::raise<value_error>("optimizer state: unknown moment buffer '", key, "'");
      }
      (which == "first" ? m->first : m->second) = value;
      m->ready = true;
    }
    const auto complete = [](const moment_pair& m) {
      return !m.ready ||
             (Backend::rows(m.first) == Backend::rows(m.second) &&
              Backend::cols(m.first) == Backend::cols(m.second) && Backend::rows(m.first) > 0);
    };
    for (const auto& [name, m] : s.moments_) {
      if (!complete(m.a) || !complete(m.b)) {
        detail::raise<value_error>("optimizer state: module '", name,
                                   "' needs a first and a second moment of one shape");
      }
    }
    for (const auto& [name, m] : s.saved_moments_) {
      if (!complete(m)) {
        detail::raise<value_error>("optimizer state: module to save '", name,
                                   "' needs a first and a second moment of one shape");
      }
    }
    return s;
  }

 private:
  using T = typename Backend::scalar;
  struct moment_pair {
    matrix first, second;  // momentum buffer / AdamW m and v, shaped like the factor
    bool ready = false;
  };
  struct module_moments {
    moment_pair a, b;
  };

  void update(const optimizer& opt, matrix& p, const matrix& g, moment_pair& m) {
    if (Backend::rows(g) != Backend::rows(p) || Backend::cols(g) != Backend::cols(p)) {
      detail::raise<shape_error>("optimizer: gradient expected ",
                                 detail::shape_string(Backend::rows(p), Backend::cols(p)), ", got ",
                                 detail::shape_string(Backend::rows(g), Backend::cols(g)));
    }
    if (!m.ready) {
      m.first = Backend::zeros(Backend::rows(p), Backend::cols(p));
      m.second = m.first;
      m.ready = true;
    }
    if (const auto* s = std::get_if<sgd>(&opt)) {
      matrix d = g;  // torch.optim.SGD: d = g + wd p; buf = mu buf + d; p -= lr buf
      if (s->weight_decay != 0.0) Backend::axpy(T(s->weight_decay), p, d);
      if (s->momentum != 0.0) {
        Backend::scale(T(s->momentum), m.first);
        Backend::axpy(T(1), d, m.first);
        Backend::axpy(T(-s->lr), m.first, p);
      } else {
        Backend::axpy(T(-s->lr), d, p);
      }
    } else {
      const auto& a = std::get<adamw>(opt);
      const adamw_coefficients<T> k{T(a.lr),
                                    T(a.beta1),
                                    T(a.beta2),
                                    T(a.eps),
                                    T(a.weight_decay),
                                    T(1.0 - std::pow(a.beta1, double(steps_))),
                                    T(1.0 - std::pow(a.beta2, double(steps_)))};
      Backend::adamw_update(p, g, m.first, m.second, k);
    }
  }

  template <class Map>
  static const typename Map::mapped_type& gradient_of(const Map& grads, const std::string& name) {
    const auto it = grads.find(name);
    if (it == grads.end()) {
      detail::raise<config_error>("optimizer: no gradient for module '", name, "'");
    }
    return it->second;
  }

  std::map<std::string, module_moments> moments_;
  std::map<std::string, moment_pair> saved_moments_;
  std::size_t steps_ = 0;
};

}  // namespace rolora
