#include "app/cli/arg_parser.hpp"
#include "app/cli/pending.hpp"

namespace hl::cli {

int cmd_export(const Args& args) {
  ArgParser parser("export", "Write a run's converted model as a Hugging Face directory.");
  parser.option("--run", "RUN", "the run (id, uuid prefix or name)")
      .option("--db", "DB", "runs database")
      .option("--out", "DIR", "output directory")
      .flag("--keep-lora", "keep LoRA weights apart instead of merging them");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  return not_available_yet("export", "conversion engine, issue 6");
}

}  // namespace hl::cli
