#include "app/cli/arg_parser.hpp"
#include "app/cli/pending.hpp"

namespace hl::cli {

int cmd_pretrain(const Args& args) {
  ArgParser parser("pretrain",
                   "Train a softmax base model from scratch and write it as a Hugging Face "
                   "directory with its tokenizer.");
  parser.option("--preset", "tiny|small", "model size preset (tiny: CPU, small: GPU)")
      .option("--out", "DIR", "output directory")
      .option("--corpus", "PATH", "training text (default: the fortunes corpus)", std::nullopt,
              true)
      .option("--steps", "N", "training steps (default: the preset's)")
      .option("--device", "cpu|cuda", "device", "cpu")
      .option("--progress", "json|bar|none", "progress output on stdout", "bar");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  return not_available_yet("pretrain", "decoder and checkpoints, issue 4");
}

}  // namespace hl::cli
