#include <iostream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/run/runner.hpp"
#include "core/store/schema.hpp"

namespace hl::cli {

int cmd_export(const Args& args) {
  ArgParser parser("export",
                   "Write a run's converted model as a Hugging Face directory (config.json with "
                   "a \"hybridlab\" attention section, weights with feature maps and window "
                   "factors, tokenizer), which --model loads back.");
  parser.option("--run", "RUN", "the run (id, uuid prefix or name)")
      .option("--db", "DB", "runs database (default: $XDG_DATA_HOME/hybridlab/runs.sqlite)")
      .option("--out", "DIR", "output directory")
      .flag("--keep-lora", "keep LoRA weights apart instead of merging them");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  auto fail = [](const std::string& message) { return report_bad_input("export", message); };
  if (!parser.has("--run")) return fail("--run RUN is required");
  if (!parser.has("--out")) return fail("--out DIR is required");
  const std::string db = parser.has("--db") ? parser.get("--db") : store::default_db_path();
  Status exported = export_run_model(db, parser.get("--run"), parser.get("--out"),
                                     !parser.flag_set("--keep-lora"));
  if (!exported.ok()) return fail(exported.error().to_string());
  std::cout << "exported run " << parser.get("--run") << " to " << parser.get("--out")
            << (parser.flag_set("--keep-lora") ? " (LoRA kept apart)\n" : " (LoRA merged)\n");
  return kExitOk;
}

}  // namespace hl::cli
