#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/config/experiment_file.hpp"
#include "core/run/cancellation.hpp"
#include "core/run/runner.hpp"
#include "core/store/run_reader.hpp"
#include "core/store/schema.hpp"
#include "core/train/pretrain.hpp"
#include "core/util/paths.hpp"

namespace hl::cli {
namespace fs = std::filesystem;
namespace {

constexpr const char* kDemoRuns[] = {"demo.toml", "demo-ssd.toml"};

fs::path program_dir() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::current_path() : self.parent_path();
}

// Trains the tiny base model where the demo experiments look for it, unless it is there.
Result<fs::path> prepare_base(const fs::path& experiments, ProgressReporter& progress) {
  const fs::path demo = experiments / kDemoRuns[0];
  ExperimentParse parsed = load_experiment_file(demo.string());
  if (!parsed.ok()) return parsed.errors.front();
  const std::string& base = parsed.spec->model.base;
  auto find_base = [&]() -> std::optional<fs::path> {
    auto found = find_experiment_path(base, experiments);
    if (found && fs::exists(*found / "config.json")) return found;
    return std::nullopt;
  };
  if (auto found = find_base()) return *found;
  auto preset = train::pretrain_preset("tiny");
  if (!preset.ok()) return preset.error();
  train::PretrainRequest request;
  request.preset = *preset;
  request.out_dir = default_pretrain_dir("tiny");
  progress.event("info", "demo",
                 "the tiny base model is not there yet; pretraining it into " +
                     request.out_dir.string() + " (about 5-10 minutes on 2 cores)");
  auto report = train::pretrain(request, progress, &cancel_requested());
  if (!report.ok()) return report.error();
  if (cancel_requested()) return make_error("cancelled while pretraining the tiny base model");
  if (auto found = find_base()) return *found;
  return make_error("pretrained into " + request.out_dir.string() + " but " + demo.string() +
                    " looks for model.base = '" + base + "'; point it there");
}

// The demo's point in numbers: linear-branch mass per layer at the last logged step, and
// passkey accuracy with the window only, for each run.
void print_comparison(const std::string& db_path, const std::vector<int64_t>& run_ids) {
  auto reader = store::RunReader::open(db_path);
  if (!reader.ok()) return;
  std::vector<std::string> names;
  std::map<int, std::vector<double>> mass;  // layer -> per run
  for (size_t r = 0; r < run_ids.size(); ++r) {
    auto info = reader->run(run_ids[r]);
    names.push_back(info.ok() ? info->name : std::to_string(run_ids[r]));
    auto matrix = reader->layer_matrix(run_ids[r], "usage/linear_mass");
    if (!matrix.ok() || matrix->steps.empty()) continue;
    for (size_t l = 0; l < matrix->layers.size(); ++l) {
      auto& row = mass[matrix->layers[l]];
      row.resize(run_ids.size(), NAN);
      row[r] = matrix->at(l, matrix->steps.size() - 1);
    }
  }
  std::printf(
      "\nlinear-branch attention mass per layer at the last step (0 = linear branch unused)\n");
  std::printf("  layer");
  for (const auto& name : names)
    std::printf("  %14s", name.c_str());
  std::printf("\n");
  for (const auto& [layer, values] : mass) {
    std::printf("  %5d", layer);
    for (double v : values)
      std::printf("  %14.3f", v);
    std::printf("\n");
  }
  auto evals = reader->evals(run_ids);
  if (!evals.ok()) return;
  std::printf(
      "\nevaluation by attention mode (ppl: lower is better; passkey: share of key "
      "digits right, chance 0.29)\n");
  std::map<std::string, std::vector<double>> table;
  for (const auto& row : *evals) {
    if (row.metric != "ppl" && !(row.task == "passkey" && row.metric == "token_acc")) continue;
    auto& values = table[row.task + " " + row.mode + " " + row.metric];
    values.resize(run_ids.size(), NAN);
    for (size_t r = 0; r < run_ids.size(); ++r)
      if (run_ids[r] == row.run) values[r] = row.value;
  }
  for (const auto& [key, values] : table) {
    std::printf("  %-34s", key.c_str());
    for (double v : values)
      std::printf("  %14.3f", v);
    std::printf("\n");
  }
}

}  // namespace

int cmd_demo(const Args& args) {
  ArgParser parser("demo",
                   "The built-in demo on CPU: pretrain the tiny base model if needed, then run "
                   "LoLCATs (experiments/demo.toml) and LoLCATs+SSD (demo-ssd.toml) and compare "
                   "their per-layer branch usage.");
  parser.option("--db", "DB", "runs database (default: $XDG_DATA_HOME/hybridlab/runs.sqlite)")
      .option("--experiments", "DIR",
              "folder with demo.toml and demo-ssd.toml (default: found "
              "next to the program, or $HL_EXPERIMENTS_DIR)")
      .option("--progress", "json|bar|none", "progress output on stdout", "bar")
      .flag("--prepare-only", "only make sure the tiny base model exists, then print its path");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  auto fail = [](const std::string& message) { return report_bad_input("demo", message); };
  auto mode = parse_progress_mode(parser.get("--progress"));
  if (!mode.ok()) return fail(mode.error().message);
  std::optional<fs::path> experiments = parser.has("--experiments")
                                            ? std::optional(fs::path(parser.get("--experiments")))
                                            : find_experiments_dir(program_dir());
  if (!experiments) return fail("the experiments folder was not found; pass --experiments DIR");
  for (const char* file : kDemoRuns)
    if (!fs::exists(*experiments / file))
      return fail((*experiments / file).string() + " does not exist");

  install_cancel_handlers();
  ProgressReporter progress(*mode, std::cout);
  auto base = prepare_base(*experiments, progress);
  if (!base.ok()) {
    if (cancel_requested()) return kExitCancelled;
    std::cerr << "error: demo: " << base.error().to_string() << "\n";
    return kExitInternal;
  }
  if (parser.flag_set("--prepare-only")) {
    std::cout << base->string() << "\n";
    return kExitOk;
  }

  const std::string db_path = parser.has("--db") ? parser.get("--db") : store::default_db_path();
  std::vector<int64_t> run_ids;
  for (const char* file : kDemoRuns) {
    RunRequest request;
    request.experiment_path = (*experiments / file).string();
    request.db_path = db_path;
    RunOutcome outcome = run_experiment(request, progress, cancel_requested());
    if (outcome.exit_code == kExitBadInput) return fail(outcome.message);
    if (outcome.exit_code != kExitOk) {
      std::cerr << "error: demo: " << file << " ended " << outcome.message << "\n";
      return outcome.exit_code;
    }
    run_ids.push_back(outcome.run_id);
  }
  if (*mode != ProgressMode::json) print_comparison(db_path, run_ids);
  std::printf(
      "\nruns %lld and %lld are in %s; watch or compare them in the workbench "
      "(hybridlab --db %s)\n",
      (long long)run_ids[0], (long long)run_ids[1], db_path.c_str(), db_path.c_str());
  return kExitOk;
}

}  // namespace hl::cli
