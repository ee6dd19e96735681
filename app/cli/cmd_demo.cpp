#include "app/cli/arg_parser.hpp"
#include "app/cli/pending.hpp"

namespace hl::cli {

int cmd_demo(const Args& args) {
  ArgParser parser("demo",
                   "The built-in demo on CPU: pretrain the tiny base model if needed, then run "
                   "LoLCATs and LoLCATs+SSD and compare their per-layer branch usage.");
  parser.option("--db", "DB", "runs database")
      .option("--models", "DIR", "where the tiny base model lives", "models")
      .option("--progress", "json|bar|none", "progress output on stdout", "bar");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  return not_available_yet("demo", "conversion engine, issue 6");
}

}  // namespace hl::cli
