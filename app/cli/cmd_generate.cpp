#include "app/cli/arg_parser.hpp"
#include "app/cli/pending.hpp"

namespace hl::cli {

int cmd_generate(const Args& args) {
  ArgParser parser("generate", "Generate text; hybrid and linear layers decode in constant memory.");
  parser.option("--model", "DIR", "Hugging Face model directory")
      .option("--run", "RUN", "use this run's converted model")
      .option("--db", "DB", "runs database")
      .option("--prompt", "TEXT", "the prompt")
      .option("--max-new", "N", "tokens to generate", "64")
      .option("--temperature", "T", "0 = greedy", "0")
      .option("--top-k", "K", "sample from the K most likely tokens (0 = off)", "0")
      .option("--top-p", "P", "nucleus sampling threshold (1 = off)", "1")
      .option("--device", "cpu|cuda", "device", "cpu");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  return not_available_yet("generate", "generation, issue 7");
}

}  // namespace hl::cli
