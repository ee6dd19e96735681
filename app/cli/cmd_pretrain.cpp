#include <cstdio>
#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/run/cancellation.hpp"
#include "core/run/progress.hpp"
#include "core/train/pretrain.hpp"
#include "core/util/paths.hpp"

namespace hl::cli {
namespace fs = std::filesystem;

int cmd_pretrain(const Args& args) {
  ArgParser parser("pretrain",
                   "Train a softmax base model from scratch and write it as a Hugging Face "
                   "directory with its tokenizer.");
  parser.option("--preset", "tiny|small", "model size preset (tiny: CPU, small: GPU)", "tiny")
      .option("--out", "DIR",
              "output directory (default: $XDG_DATA_HOME/hybridlab/models/<preset>-base, where "
              "experiment files find models/<preset>-base)")
      .option("--corpus", "PATH", "training text (default: the fortunes corpus)", std::nullopt,
              true)
      .option("--steps", "N", "training steps (default: the preset's)")
      .option("--lr", "LR", "peak learning rate (default: the preset's)")
      .option("--answer-weight", "W",
              "extra loss weight on the answer tokens of the generated tasks (default: the "
              "preset's)")
      .option("--seed", "S", "random seed", "0")
      .option("--device", "cpu|cuda|auto", "device", "cpu")
      .option("--progress", "json|bar|none", "progress output on stdout", "bar");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  auto fail = [](const std::string& message) { return report_bad_input("pretrain", message); };
  auto preset = train::pretrain_preset(parser.get("--preset"));
  if (!preset.ok()) return fail("--preset: " + preset.error().message);
  if (parser.has("--steps")) {
    auto steps = parse_int_arg("--steps", parser.get("--steps"), 1);
    if (!steps.ok()) return fail(steps.error().message);
    preset->steps = *steps;
  }
  for (auto [option, field] : {std::pair{"--lr", &preset->lr},
                               std::pair{"--answer-weight", &preset->answer_loss_weight}}) {
    if (!parser.has(option)) continue;
    try {
      size_t used = 0;
      *field = std::stod(parser.get(option), &used);
      if (used != parser.get(option).size() || !(*field >= 0)) throw std::invalid_argument("");
    } catch (const std::exception&) {
      return fail(std::string(option) + ": expected a non-negative number, got '" +
                  parser.get(option) + "'");
    }
  }
  auto seed = parse_int_arg("--seed", parser.get("--seed"), 0);
  if (!seed.ok()) return fail(seed.error().message);
  auto mode = parse_progress_mode(parser.get("--progress"));
  if (!mode.ok()) return fail(mode.error().message);

  train::PretrainRequest request;
  request.preset = *preset;
  request.out_dir =
      parser.has("--out") ? fs::path(parser.get("--out")) : default_pretrain_dir(preset->name);
  if (parser.has("--corpus")) request.corpus = parser.get_all("--corpus");
  request.device = parser.get("--device");
  request.seed = static_cast<uint64_t>(*seed);
  install_cancel_handlers();
  ProgressReporter progress(*mode, std::cout);
  auto report = train::pretrain(request, progress, &cancel_requested());
  if (!report.ok()) return fail(report.error().to_string());
  std::printf("\nsaved %s (%lld parameters, %lld steps, %.0f s)\n",
              request.out_dir.string().c_str(), (long long)report->parameters,
              (long long)report->steps, report->seconds);
  std::printf("held-out loss %.3f nats/token (unigram baseline %.3f)\n", report->val_loss,
              report->unigram_loss);
  for (size_t i = 0; i < report->passkey_accuracy.size(); ++i)
    std::printf(
        "passkey at distance %4lld: %5.1f%% of keys exact, %5.1f%% of digits "
        "(chance: 29%% of digits)\n",
        (long long)report->passkey_accuracy[i].first, 100.0 * report->passkey_accuracy[i].second,
        100.0 * report->passkey_token_accuracy[i].second);
  return cancel_requested() ? kExitCancelled : kExitOk;
}

}  // namespace hl::cli
