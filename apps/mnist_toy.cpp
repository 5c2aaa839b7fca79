// mnist_toy: the RoLoRA paper's non-linear toy on Fashion-MNIST. An MLP (784-256-256-10, GELU)
// is pretrained centrally on half of the training images, upright; the shifted task is the other
// half turned a quarter clockwise (same classes, new input geometry, so the features must change:
// a frozen head cannot fix it alone). FedIT, FFA-LoRA and RoLoRA then fine-tune LoRA adapters on
// fc1, fc2 and the head federatedly, over clients holding label-skewed shares of that half, and
// are tested on the rotated test set. Same pretrained model, same adapter initialisation and
// same split for every method.
//
// Prints a progress line per round; writes runs.csv (every round of every run), one
// <method>_r<rank>.npy trajectory per run, accuracy_r<rank>.svg per rank and, on request, the
// final adapters as .npy.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <rolora/federated/methods.hpp>
#include <rolora/io/npy.hpp>
#include <rolora/nn/mlp.hpp>
#include <rolora/rolora.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/exit_code.hpp"
#include "common/fashion_mnist.hpp"
#include "common/options.hpp"
#include "common/plot.hpp"
#include "common/report.hpp"

namespace {

using backend = rolora::eigen_backend<float>;
namespace apps = rolora::apps;
using features = rolora::labelled_features<float>;

struct settings {
  std::string data_dir = apps::fashion_mnist_dir;
  std::string cache = ".cache/fashion-mnist";
  std::vector<rolora::index_t> hidden{256, 256};
  std::size_t pretrain_epochs = 2;
  std::size_t pretrain_batch = 128;
  double pretrain_lr = 1e-3;
  std::uint64_t pretrain_seed = 0;  // fixed: every fine-tuning seed starts from the same model
  std::size_t clients = 10;
  apps::client_split split{"dirichlet", 0.3, 2};
  std::size_t max_train = 0;  // 0: the whole fine-tuning half
  std::vector<std::string> methods{"fedit", "ffa", "rolora"};
  std::vector<int> ranks{1, 2, 4};
  std::vector<std::string> targets;  // empty: every layer (fc1, fc2, head)
  bool train_head = false;
  double lora_alpha = 0;  // 0: alpha = r (scaling 1)
  std::size_t rounds = 30;
  std::size_t local_steps = 5;
  std::size_t batch = 32;
  // AdamW rates of docs/results.md, picked on the validation split at 10 clients.
  apps::learning_rates lr{{{"fedit", 3e-2}, {"ffa", 3e-1}, {"rolora", 3e-2}}, 1e-2};
  std::size_t eval_every = 5;
  bool validation = false;
  std::uint64_t seed = 0;
  std::size_t threads = 2;
  std::string out = "results/mnist_toy";
  bool save_adapters = false;
};

features columns(const apps::image_set& s, const std::vector<std::size_t>& rows) {
  features out{rolora::host_matrix<float>(s.x.rows(), rolora::index_t(rows.size())), {}};
  for (std::size_t j = 0; j < rows.size(); ++j) {
    out.x.col(rolora::index_t(j)) = s.x.col(rolora::index_t(rows[j]));
    out.labels.push_back(s.labels[rows[j]]);
  }
  return out;
}

std::string join(const std::vector<rolora::index_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : "-") + std::to_string(x);
  return s;
}

// Pretrains on `data` (every parameter trains, AdamW, shuffled minibatches), or reads the result
// from the cache when this recipe was run before.
rolora::mlp_weights<backend> pretrained(const settings& s, const features& data) {
  std::vector<rolora::index_t> widths{rolora::index_t(data.x.rows())};
  widths.insert(widths.end(), s.hidden.begin(), s.hidden.end());
  widths.push_back(10);
  rolora::mlp_weights<backend> model(widths, s.pretrain_seed);
  std::ostringstream recipe;
  recipe << "mlp_" << join(widths) << "_upright-even_e" << s.pretrain_epochs << "_b"
         << s.pretrain_batch << "_lr" << s.pretrain_lr << "_s" << s.pretrain_seed;
  const auto dir = std::filesystem::path(s.cache) / recipe.str();
  auto params = model.all_trainable();
  if (std::filesystem::exists(dir / "done")) {
    for (auto& [name, w] : params.modules_to_save()) {
      const auto m = rolora::load_npy_matrix<float>(dir / (name + ".npy"));
      if (m.rows() != w.rows() || m.cols() != w.cols()) {
        rolora::raise<rolora::shape_error>("cached ", name, " has the wrong shape; delete ",
                                           dir.string());
      }
      w = m;
    }
    model.assign(params);
    std::printf("pretrained model: %s\n", dir.c_str());
    return model;
  }
  std::printf("pretraining %s on %zu upright images (%zu epochs; once, then read from %s)\n",
              join(widths).c_str(), data.size(), s.pretrain_epochs, dir.c_str());
  rolora::mlp_task<backend> task(model, data);
  rolora::optimizer_state<backend> opt;
  const rolora::adamw adam{s.pretrain_lr, 0.9, 0.999, 1e-8, 0.0};
  std::vector<std::size_t> order(data.size());
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t epoch = 0; epoch < s.pretrain_epochs; ++epoch) {
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    rolora::random_engine rng(rolora::random_stream(s.pretrain_seed, rolora::stream::batching,
                                                    std::uint32_t(epoch), 0x5054));
    rolora::partial_shuffle(order, order.size(), rng);
    double sum = 0;
    std::size_t batches = 0;
    for (std::size_t first = 0; first < order.size(); first += s.pretrain_batch, ++batches) {
      const std::span<const std::size_t> batch(order.data() + first,
                                               std::min(s.pretrain_batch, order.size() - first));
      rolora::gradient_set<backend> g;
      sum += task.loss_and_grad(params, batch, rolora::factor_set{true, true}, g);
      opt.step(adam, params, g, rolora::factor_set{true, true});
    }
    std::printf("pretrain epoch %zu/%zu  loss %.4f  %.1f s\n", epoch + 1, s.pretrain_epochs,
                sum / double(batches),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    std::fflush(stdout);
  }
  model.assign(params);
  std::filesystem::create_directories(dir);
  for (const auto& [name, w] : model.parameters())
    rolora::save_npy(dir / (name + ".npy"), backend::to_host(w));
  std::FILE* done = std::fopen((dir / "done").c_str(), "w");
  if (done) std::fclose(done);
  return model;
}

struct run_result {
  std::string method;
  int rank;
  double lr;
  std::vector<apps::round_row> rows;
};

template <class Policy, class Aggregator>
run_result run_method(const std::string& method, Policy policy, Aggregator aggregator, int rank,
                      const settings& s, const rolora::mlp_weights<backend>& model,
                      const std::vector<features>& clients, const features& eval_set) {
  run_result result{method, rank, s.lr(method), {}};
  rolora::lora_config lc;
  lc.r = rank;
  lc.lora_alpha = s.lora_alpha > 0 ? s.lora_alpha : double(rank);
  rolora::adapter_set<backend> initial(
      model.lora_targets(s.targets.empty() ? model.layers() : s.targets), lc, s.seed);
  if (s.train_head) {
    initial.add_module_to_save("head.weight", model.at("head.weight"));
    initial.add_module_to_save("head.bias", model.at("head.bias"));
  }
  rolora::federation_config fc;
  fc.num_rounds = s.rounds;
  fc.local_steps = s.local_steps;
  fc.batch_size = s.batch;
  fc.local_optimizer = rolora::adamw{result.lr, 0.9, 0.999, 1e-8, 0.0};
  fc.threads = s.threads;
  fc.seed = s.seed;
  rolora::federation<backend, Policy, Aggregator> fed(policy, aggregator, fc, initial);
  std::vector<rolora::mlp_task<backend>> tasks;
  for (const auto& c : clients) tasks.emplace_back(model, c);

  apps::round_progress<backend> cb;
  char label[64];
  std::snprintf(label, sizeof label, "%-7s r=%-2d", method.c_str(), rank);
  cb.label = label;
  cb.rounds = s.rounds;
  cb.eval_every = s.eval_every;
  cb.eval_name = s.validation ? "val" : "test";
  cb.evaluate = [&](const rolora::adapter_set<backend>& global) {
    return rolora::evaluate_mlp(model, global, eval_set, s.threads);
  };
  fed.run(tasks, cb);
  result.rows = std::move(cb.rows);
  if (s.save_adapters) {
    rolora::save_adapters_npy(
        std::filesystem::path(s.out) / (method + "_r" + std::to_string(rank) + "_adapter"),
        fed.global());
  }
  return result;
}

// The paper's three methods (--methods), by name through rolora::visit_method.
run_result run_named(const std::string& m, int rank, const settings& s,
                     const rolora::mlp_weights<backend>& model,
                     const std::vector<features>& clients, const features& eval_set) {
  return rolora::visit_method(m, [&](auto policy, auto aggregator) {
    return run_method(m, policy, aggregator, rank, s, model, clients, eval_set);
  });
}

int run(const settings& s) {
  std::filesystem::create_directories(s.out);
  const auto start = std::chrono::steady_clock::now();
  const auto train = apps::load_fashion_mnist("train", s.data_dir, s.cache);
  const auto test = apps::load_fashion_mnist("t10k", s.data_dir, s.cache);

  // Pretraining: the even-numbered training images, upright. Fine-tuning: the odd-numbered ones,
  // rotated; a tenth of them (every tenth) held out for validation.
  std::vector<std::size_t> pre_rows, tune_rows, val_rows;
  for (std::size_t i = 0; i < train.labels.size(); ++i) {
    if (i % 2 == 0) {
      pre_rows.push_back(i);
    } else {
      (i % 20 == 1 ? val_rows : tune_rows).push_back(i);
    }
  }
  if (s.max_train > 0 && s.max_train < tune_rows.size()) tune_rows.resize(s.max_train);
  const apps::image_set rotated_train{apps::rotate_quarter(train.x), train.labels};
  const features upright_test{test.x, test.labels};
  const features rotated_test{apps::rotate_quarter(test.x), test.labels};
  const features validation = columns(rotated_train, val_rows);
  const features& eval_set = s.validation ? validation : rotated_test;

  const auto model = pretrained(s, columns(train, pre_rows));
  const rolora::adapter_set<backend> none;
  const auto [up_loss, up_acc] = rolora::evaluate_mlp(model, none, upright_test, s.threads);
  const auto [rot_loss, rot_acc] = rolora::evaluate_mlp(model, none, eval_set, s.threads);
  std::printf(
      "pretrained model: upright test accuracy %.4f, rotated %s accuracy %.4f (before "
      "fine-tuning)\n",
      up_acc, s.validation ? "validation" : "test", rot_acc);

  std::vector<int> tune_labels;
  for (auto r : tune_rows) tune_labels.push_back(train.labels[r]);
  std::string description;
  const auto parts =
      apps::split_among_clients(tune_labels, s.clients, s.split, s.seed, description);
  std::vector<features> clients;
  std::size_t smallest = tune_rows.size(), largest = 0;
  for (const auto& part : parts) {
    std::vector<std::size_t> rows;
    for (auto p : part) rows.push_back(tune_rows[p]);
    clients.push_back(columns(rotated_train, rows));
    smallest = std::min(smallest, rows.size());
    largest = std::max(largest, rows.size());
  }
  std::printf(
      "Fashion-MNIST, rotated a quarter: %zu fine-tuning images over %zu clients (%s; %zu..%zu "
      "each), %zu %s\n",
      tune_rows.size(), s.clients, description.c_str(), smallest, largest, eval_set.size(),
      s.validation ? "validation" : "test");

  apps::csv_file csv(std::filesystem::path(s.out) / "runs.csv",
                     "method,rank,lr,clients,split,seed,round,phase,train_loss,eval_loss,"
                     "eval_accuracy,aggregation_error,bytes_up,seconds");
  std::map<int, std::vector<apps::series>> curves;
  std::vector<run_result> results;
  for (const int rank : s.ranks) {
    for (const auto& m : s.methods) {
      results.push_back(run_named(m, rank, s, model, clients, eval_set));
      const auto& r = results.back();
      rolora::host_matrix<double> trajectory(rolora::index_t(r.rows.size()), 6);
      for (std::size_t i = 0; i < r.rows.size(); ++i) {
        const auto& row = r.rows[i];
        csv.row("%s,%d,%g,%zu,\"%s\",%llu,%zu,%s,%.9g,%.9g,%.9g,%.9g,%zu,%.3f\n", m.c_str(), rank,
                r.lr, s.clients, description.c_str(), static_cast<unsigned long long>(s.seed),
                row.round, row.phase.c_str(), row.train_loss, row.eval_loss, row.eval_accuracy,
                row.aggregation_error, row.total_bytes_up, row.seconds);
        trajectory.row(rolora::index_t(i)) << double(row.round), row.train_loss, row.eval_loss,
            row.eval_accuracy, row.aggregation_error, double(row.total_bytes_up);
      }
      csv.flush();
      rolora::save_npy(std::filesystem::path(s.out) / (m + "_r" + std::to_string(rank) + ".npy"),
                       trajectory);
      curves[rank].push_back(apps::accuracy_curve(m + " r=" + std::to_string(rank), r.rows));
    }
  }

  std::printf(
      "\nfinal %s accuracy (pretrained model: %.4f), %zu clients, %s, %zu rounds x %zu local "
      "steps\n",
      s.validation ? "validation" : "test", rot_acc, s.clients, description.c_str(), s.rounds,
      s.local_steps);
  std::printf("%-8s", "rank");
  for (const auto& m : s.methods) std::printf(" %10s", m.c_str());
  std::printf("\n");
  for (const int rank : s.ranks) {
    std::printf("%-8d", rank);
    for (const auto& r : results) {
      if (r.rank == rank) std::printf(" %10.4f", r.rows.back().eval_accuracy);
    }
    std::printf("\n");
  }
  for (const auto& [rank, lines] : curves) {
    const auto plot =
        (std::filesystem::path(s.out) / ("accuracy_r" + std::to_string(rank) + ".svg")).string();
    apps::chart c{"Fashion-MNIST rotated, MLP + LoRA rank " + std::to_string(rank) + ", " +
                      std::to_string(s.clients) + " clients (" + description + ")",
                  "round",
                  std::string(s.validation ? "validation" : "test") + " accuracy",
                  false,
                  "bottom right",
                  "*:*"};
    if (apps::draw_chart(plot, c, lines)) std::printf("wrote %s\n", plot.c_str());
  }
  std::printf(
      "wrote %s and <method>_r<rank>.npy (round, train_loss, eval_loss, eval_accuracy, "
      "aggregation_error, "
      "bytes_up); %.1f s in all\n",
      csv.path().c_str(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "The RoLoRA paper's non-linear toy on Fashion-MNIST: an MLP pretrained on upright images, "
      "LoRA-fine-tuned "
      "federatedly (FedIT, FFA-LoRA, RoLoRA) on images turned a quarter, over label-skewed "
      "clients."};
  settings s;
  app.add_option("--data-dir", s.data_dir, "the gzipped IDX files (Debian dataset-fashion-mnist)")
      ->capture_default_str();
  app.add_option("--cache", s.cache, "decoded images (.npy) and pretrained models")
      ->capture_default_str();
  app.add_option("--hidden", s.hidden, "hidden widths")
      ->delimiter(',')
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--pretrain-epochs", s.pretrain_epochs, "epochs of central pretraining")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  apps::shared_options shared(app);
  shared.clients(s.clients);
  shared.split(s.split, "fine-tuning images");
  app.add_option("--max-train", s.max_train,
                 "use only the first N fine-tuning images (0: all 27000)")
      ->capture_default_str();
  shared.methods(s.methods, true, {}, "");
  app.add_option("--ranks", s.ranks, "LoRA ranks to run")
      ->delimiter(',')
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--targets", s.targets, "adapted layers: fc1, fc2, ..., head (default: all)")
      ->delimiter(',');
  app.add_flag("--train-head", s.train_head,
               "also train the head's base weights (modules_to_save)");
  app.add_option("--lora-alpha", s.lora_alpha, "LoRA alpha (0: alpha = r, scaling 1)")
      ->capture_default_str();
  shared.rounds(s.rounds);
  shared.local_steps(s.local_steps, "local AdamW steps per round");
  shared.batch(s.batch);
  shared.lr(s.lr,
            "learning rate for every method (default: per method, tuned on the validation split: "
            "fedit 3e-2, ffa 3e-1, rolora 3e-2)");
  shared.eval_every(s.eval_every);
  shared.validation(s.validation,
                    "evaluate on the held-out rotated training images instead of test");
  shared.seed(s.seed);
  app.add_option("--pretrain-seed", s.pretrain_seed, "seed of the pretrained model")
      ->capture_default_str();
  shared.threads(s.threads);
  shared.out(s.out);
  app.add_flag(
      "--save-adapters", s.save_adapters,
      "write each run's final adapters as <method>_r<rank>_adapter/<module>.lora_{A,B}.npy");
  CLI11_PARSE(app, argc, argv);
  return apps::exit_code_of([&] {
    if (!std::filesystem::exists(std::filesystem::path(s.data_dir) /
                                 "train-images-idx3-ubyte.gz")) {
      std::fprintf(
          stderr,
          "no Fashion-MNIST under %s: install Debian's dataset-fashion-mnist (scripts/setup.sh)\n",
          s.data_dir.c_str());
      return 77;  // ctest's SKIP_RETURN_CODE
    }
    return run(s);
  });
}
