// pretrain: makes the base model of the federated fine-tuning application, deterministically: a
// masked-byte LM (BERT's 15% masking) on Debian's fortunes and on the SpamAssassin e-mails the
// corpus split sets aside for it (disjoint from every fine-tuning and test e-mail). Writes the
// checkpoint (safetensors), a CSV of the loss per step and a plot of it.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <rolora/rolora.hpp>
#include <string>

#include "common/backend_options.hpp"
#include "common/exit_code.hpp"
#include "common/options.hpp"
#include "common/plot.hpp"
#include "common/report.hpp"
#include "common/spam_task.hpp"

namespace apps = rolora::apps;

// The whole run on one backend (--backend).
template <class Backend>
int run(const apps::spam_task_config& c, const std::filesystem::path& dir, const std::string& out,
        bool force) {
  const auto& p = c.pretrain;
  const auto config = apps::default_model(c.max_len, c.model_layers);
  if (!force && apps::load_checkpoint<Backend>(c.checkpoint, config, apps::pretraining_recipe(c))) {
    std::printf("%s is up to date (same model and recipe); --force pretrains again\n",
                c.checkpoint.c_str());
    return 0;
  }
  const auto emails = rolora::data::read_spam_assassin(dir);
  const auto split = rolora::data::split_corpus(rolora::data::labels_of(emails), apps::corpus_seed,
                                                apps::corpus_fractions);
  const auto windows = rolora::data::make_windows(
      rolora::data::pretraining_documents(emails, split.pretrain), c.max_len);
  std::printf("corpus: %zu windows of %zu tokens (%.2f MB of text); model: %zu weights\n",
              windows.count(), c.max_len, double(windows.count() * (c.max_len - 1)) / 1e6,
              rolora::transformer_weights<Backend>(config, 0).num_scalars());
  rolora::transformer_weights<Backend> w(config, p.seed);
  auto pc = p;
  pc.threads = c.threads;
  const std::size_t per_micro = (pc.batch + pc.micro_batches - 1) / pc.micro_batches;
  const auto history =
      apps::pretrain(w, pc, [&](std::size_t step, std::size_t micro, std::size_t n) {
        const auto b =
            rolora::data::pretraining_batch(windows, pc.seed, step, micro * per_micro, n);
        return apps::mlm_batch{rolora::token_batch{rolora::index_t(b.seq_len), b.inputs},
                               b.targets};
      });
  apps::save_checkpoint(c.checkpoint, w, apps::pretraining_recipe(c));
  std::printf("wrote %s\n", c.checkpoint.c_str());

  const auto csv_path = std::filesystem::path(out) / "pretrain_loss.csv";
  apps::series line{"masked-byte LM loss", {}, "lines lw 1.5"};
  {
    apps::csv_file csv(csv_path, "step,mlm_loss");
    for (std::size_t s = 0; s < history.size(); ++s) {
      csv.row("%zu,%.9g\n", s + 1, history[s]);
      line.points.emplace_back(double(s + 1), history[s]);
    }
  }
  const auto plot = (std::filesystem::path(out) / "pretrain_loss.svg").string();
  if (apps::draw_chart(
          plot,
          {"Pretraining (masked-byte LM)", "step", "cross-entropy (nats)", false, "top right"},
          {line})) {
    std::printf("wrote %s and %s\n", csv_path.c_str(), plot.c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{
      "Pretrain rolora's small transformer with a masked-byte LM (the base model of "
      "federated_finetune, which calls the same code when the checkpoint is missing)."};
  apps::spam_task_config c;
  auto& p = c.pretrain;
  std::string out = "results/pretrain";
  bool force = false;
  std::string backend_name = "eigen";
  apps::shared_options shared(app);
  app.add_option("--steps", p.steps, "optimizer steps")
      ->check(CLI::Range(1, 10000000))
      ->capture_default_str();
  shared.batch(p.batch, "sequences per step");
  shared.lr(p.lr, "AdamW peak learning rate");
  shared.seed(p.seed, "seed of the initial weights, batches and masks");
  apps::add_corpus_options(app, c, "window length in tokens (CLS + bytes)", "checkpoint to write");
  shared.threads(c.threads, "threads (the result does not depend on it)");
  shared.out(out, "folder for the loss CSV and plot");
  app.add_flag("--force", force, "pretrain even when a matching checkpoint exists");
  apps::add_backend_option(app, backend_name);
  CLI11_PARSE(app, argc, argv);
  apps::finish_corpus_options(app, c);
  return apps::exit_code_of([&] {
    const auto dir = rolora::data::spam_assassin_dir(c.data_dir);
    if (!std::filesystem::is_directory(dir)) {
      std::fprintf(stderr, "error: no corpus under %s: run `bash scripts/fetch_data.sh` first\n",
                   dir.string().c_str());
      return 2;
    }
    return apps::with_backend(backend_name, [&]<class B>(B) { return run<B>(c, dir, out, force); });
  });
}
