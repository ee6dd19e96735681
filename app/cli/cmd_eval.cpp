#include "app/cli/arg_parser.hpp"
#include "app/cli/pending.hpp"

namespace hl::cli {

int cmd_eval(const Args& args) {
  ArgParser parser("eval", "Evaluate a model directory or a run and record the results.");
  parser.option("--model", "DIR", "Hugging Face model directory")
      .option("--run", "RUN", "evaluate this run's converted model")
      .option("--db", "DB", "runs database")
      .option("--tasks", "LIST", "comma list of ppl[:FILE], passkey, mqar, mc:FILE", "ppl")
      .option("--modes", "LIST",
              "comma list of hybrid, window_only, linear_only, sinks_only, none", "hybrid")
      .option("--seq-len", "N", "context length")
      .option("--device", "cpu|cuda", "device", "cpu")
      .flag("--json", "print one JSON document instead of a table");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  return not_available_yet("eval", "evaluation, issue 7");
}

}  // namespace hl::cli
