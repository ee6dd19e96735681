#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "app/cli/arg_parser.hpp"
#include "app/cli/commands.hpp"
#include "core/config/experiment_file.hpp"
#include "core/eval/evaluate.hpp"
#include "core/eval/model_source.hpp"
#include "core/run/cancellation.hpp"
#include "core/store/schema.hpp"

namespace hl::cli {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

void print_table(const std::vector<eval::EvalResult>& rows) {
  std::printf("%-20s %-12s %-14s %12s %8s\n", "task", "mode", "metric", "value", "n");
  for (const auto& row : rows)
    std::printf("%-20s %-12s %-14s %12.4f %8lld\n", row.task.c_str(), row.mode.c_str(),
                row.metric.c_str(), row.value, (long long)row.n);
}

}  // namespace

int cmd_eval(const Args& args) {
  ArgParser parser("eval", "Evaluate a model directory or a run and record the results.");
  parser.option("--model", "DIR", "Hugging Face model directory (recorded as a new eval-only run)")
      .option("--run", "RUN", "evaluate this run's final model and record under the run")
      .option("--db", "DB", "runs database (default: $XDG_DATA_HOME/hybridlab/runs.sqlite)")
      .option("--experiment", "EXP.toml", "take tasks, modes, distances... from its [eval] section")
      .option("--tasks", "LIST",
              "comma list of ppl, ppl:FILE, passkey, mqar, mc:FILE, mc:FORMAT:FILE")
      .option("--modes", "LIST", "comma list of hybrid, window_only, linear_only, sinks_only, none")
      .option("--seq-len", "N", "ppl chunk length")
      .option("--distances", "LIST", "passkey / MQAR distances (capped by the model's context)")
      .option("--samples", "N", "passkey / MQAR samples per distance", "32")
      .option("--max-batches", "N", "ppl batches at most")
      .option("--batch-size", "N", "ppl chunks per batch")
      .option("--limit", "N", "multiple-choice items per task at most (0 = all)", "0")
      .option("--window", "W",
              "ppl split: within / beyond the first W tokens (default: the model's window)")
      .option("--base", "DIR",
              "base model for \"% of base\" (default: the run's or experiment's base)")
      .option("--seed", "S", "seed of the generated probes")
      .option("--device", "cpu|cuda|auto", "device", "cpu")
      .option("--dtype", "float32|bfloat16|float16", "weights' precision", "float32")
      .option("--progress", "json|bar|none",
              "progress output on stdout (default: bar, none with --json)")
      .flag("--layer-ablation",
            "also drop each layer's linear branch in turn (loss change per layer)")
      .flag("--no-base", "skip the base model comparison")
      .flag("--skip-malformed",
            "skip malformed task lines (reported with their line) instead of failing")
      .flag("--json", "print one JSON document instead of a table")
      .epilog(
          "Task files: JSONL exports of PIQA, ARC, HellaSwag, WinoGrande (partial scoring), "
          "MMLU (5-shot; lines with \"split\": \"dev\" serve as shots) or the generic "
          "{\"context\", \"choices\", \"gold\"}; the format is detected from the fields.");
  Status status = parser.parse(args);
  if (!status.ok() || parser.help_requested()) return finish_parse(parser, status);
  auto fail = [](const std::string& message) { return report_bad_input("eval", message); };
  if (parser.has("--model") == parser.has("--run")) return fail("give --model DIR or --run RUN");
  const std::string db = parser.has("--db") ? parser.get("--db") : store::default_db_path();

  eval::EvalPlan plan;
  plan.distances = {16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
  std::string base_dir;
  if (parser.has("--experiment")) {
    ExperimentParse parsed = load_experiment_file(parser.get("--experiment"));
    if (!parsed.ok()) return fail(parsed.errors.front().to_string());
    const ExperimentSpec& spec = *parsed.spec;
    plan.tasks = spec.eval.tasks;
    plan.modes = spec.eval.modes;
    plan.seq_len = spec.eval.seq_len > 0 ? spec.eval.seq_len : spec.data.seq_len;
    plan.batch_size = spec.data.batch_size;
    plan.max_batches = spec.eval.max_batches;
    plan.distances = spec.eval.distances;
    plan.layer_ablation = spec.eval.layer_ablation;
    plan.seed = static_cast<uint64_t>(spec.seed);
    base_dir = spec.model.base;
  }
  auto integer = [&](const char* option, int64_t& target, long long min_value) -> bool {
    if (!parser.has(option)) return true;
    auto value = parse_int_arg(option, parser.get(option), min_value);
    if (!value.ok()) return fail(value.error().message), false;
    target = *value;
    return true;
  };
  int64_t seed = static_cast<int64_t>(plan.seed);
  if (!integer("--seq-len", plan.seq_len, 8) || !integer("--samples", plan.probe_samples, 1) ||
      !integer("--max-batches", plan.max_batches, 1) ||
      !integer("--batch-size", plan.batch_size, 1) || !integer("--limit", plan.mc.limit, 0) ||
      !integer("--window", plan.window, 1) || !integer("--seed", seed, 0))
    return kExitBadInput;
  plan.seed = static_cast<uint64_t>(seed);
  if (parser.has("--tasks")) plan.tasks = split_list(parser.get("--tasks"));
  if (parser.has("--modes")) plan.modes = split_list(parser.get("--modes"));
  if (parser.has("--distances")) {
    plan.distances.clear();
    for (const auto& word : split_list(parser.get("--distances"))) {
      auto value = parse_int_arg("--distances", word, 1);
      if (!value.ok()) return fail(value.error().message);
      plan.distances.push_back(*value);
    }
  }
  if (parser.flag_set("--layer-ablation")) plan.layer_ablation = true;
  plan.mc.skip_malformed = parser.flag_set("--skip-malformed");
  const bool json = parser.flag_set("--json");
  auto mode = parse_progress_mode(parser.has("--progress") ? parser.get("--progress")
                                                           : (json ? "none" : "bar"));
  if (!mode.ok()) return fail(mode.error().message);

  auto prepared = eval::prepare_evaluation(plan);
  if (!prepared.ok()) return fail(prepared.error().to_string());

  std::filesystem::path dir = parser.get("--model");
  std::optional<int64_t> run_id;
  if (parser.has("--run")) {
    auto found = eval::find_run_model(db, parser.get("--run"));
    if (!found.ok()) return fail(found.error().to_string());
    dir = found->dir;
    run_id = found->run_id;
    if (base_dir.empty()) base_dir = found->base_model;
  }
  if (parser.has("--base")) base_dir = parser.get("--base");
  auto opened = eval::open_model(dir, parser.get("--device"), parser.get("--dtype"));
  if (!opened.ok()) return fail(opened.error().message);
  auto* model = &opened->model;
  auto* tokenizer = &opened->tokenizer;
  const bool converted = !(*model)->converted_layers().empty();

  std::optional<store::RunWriter> writer;
  if (run_id) {
    auto reopened = store::RunWriter::resume(db, *run_id);
    if (!reopened.ok()) return fail(reopened.error().to_string());
    writer.emplace(std::move(*reopened));
  } else {
    store::RunSpec spec;
    spec.name = "eval:" + std::filesystem::absolute(dir).lexically_normal().filename().string();
    spec.base_model = base_dir.empty() ? dir.string() : base_dir;
    spec.method = "eval";
    spec.device = opened->placement.device.str();
    auto created = store::RunWriter::create(db, spec);
    if (!created.ok()) return fail(created.error().to_string());
    writer.emplace(std::move(*created));
    std::string tasks, modes;
    for (const auto& t : plan.tasks)
      tasks += (tasks.empty() ? "" : ",") + t;
    for (const auto& m : plan.modes)
      modes += (modes.empty() ? "" : ",") + m;
    (void)writer->set_params({{"eval.model", std::filesystem::absolute(dir).string()},
                              {"eval.tasks", tasks},
                              {"eval.modes", modes},
                              {"eval.seq_len", std::to_string(plan.seq_len)}});
    (void)writer->set_status(store::RunStatus::running);
  }
  install_cancel_handlers();
  ProgressReporter progress(*mode, std::cout);
  progress.run_started(writer->run_id(), writer->uuid(), db);
  progress.begin_phase("evaluation", 0, 1, 1);
  eval::EvalContext context;
  context.writer = &*writer;
  context.progress = &progress;
  context.cancel = &cancel_requested();
  std::vector<std::string> warnings;
  context.warnings = &warnings;
  auto finish = [&](store::RunStatus final_status, const std::string& message) {
    if (!run_id) (void)writer->set_status(final_status, message);
    (void)writer->close();
    progress.finished(std::string(store::to_string(final_status)), message);
  };
  auto results = eval::evaluate(*model, **tokenizer, *prepared, context);
  if (!results.ok()) {
    const bool cancelled = cancel_requested().load();
    finish(cancelled ? store::RunStatus::cancelled : store::RunStatus::failed,
           results.error().to_string());
    return cancelled ? kExitCancelled : fail(results.error().to_string());
  }
  std::vector<eval::EvalResult> percent;
  if (converted && !base_dir.empty() && !parser.flag_set("--no-base")) {
    std::error_code ec;
    if (!std::filesystem::is_directory(base_dir, ec)) {
      progress.event("warning", "eval", "base model '" + base_dir + "' not found: no % of base");
    } else {
      auto base = eval::base_scores(db, base_dir, *prepared, opened->placement, context);
      if (!base.ok()) {
        progress.event("warning", "eval", "no % of base: " + base.error().to_string());
      } else {
        percent = eval::percent_of_base(*results, *base);
        for (const auto& row : percent)
          (void)writer->log_eval(row.task, row.mode, row.metric, row.value, row.n);
      }
    }
  }
  (void)eval::record_summary(*writer, *results, percent);
  finish(store::RunStatus::completed, "");
  std::vector<eval::EvalResult> all = *results;
  all.insert(all.end(), percent.begin(), percent.end());
  for (const auto& warning : warnings)
    std::cerr << "warning: eval: " << warning << "\n";
  if (json) {
    nlohmann::json doc{
        {"run", writer->run_id()}, {"model", dir.string()}, {"results", nlohmann::json::array()}};
    for (const auto& row : all)
      doc["results"].push_back({{"task", row.task},
                                {"mode", row.mode},
                                {"metric", row.metric},
                                {"value", row.value},
                                {"n", row.n}});
    std::cout << doc.dump(2) << "\n";
  } else {
    if (*mode == ProgressMode::bar) std::cout << "\n";
    print_table(all);
    std::printf("recorded as run %lld in %s\n", (long long)writer->run_id(), db.c_str());
  }
  return kExitOk;
}

}  // namespace hl::cli
