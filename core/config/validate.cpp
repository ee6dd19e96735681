// Range and combination checks of an ExperimentSpec. The messages are what users see next to
// the key (CLI: "file:line: key: message"; GUI editor: inline), so they say what is allowed
// and what was found.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <string>

#include "core/config/experiment_spec.hpp"
#include "core/config/toml_text.hpp"

namespace hl {
namespace {

std::string show(int64_t value) {
  return std::to_string(value);
}
std::string show(double value) {
  return toml_float(value);
}

template <class Range>
bool contains(const Range& range, std::string_view value) {
  return std::find(range.begin(), range.end(), value) != range.end();
}

template <class Range>
std::string quoted_list(const Range& range) {
  std::string out;
  for (std::string_view item : range) {
    if (!out.empty()) out += ", ";
    out += toml_quote(item);
  }
  return out;
}

class Checker {
 public:
  explicit Checker(std::vector<Error>& errors) : errors_(errors) {}

  void fail(std::string key, std::string message) {
    errors_.push_back(make_error(std::move(message), Location{"", 0, std::move(key)}));
  }

  void at_least(const std::string& key, int64_t value, int64_t min) {
    if (value < min) fail(key, "must be >= " + show(min) + " (got " + show(value) + ")");
  }
  void at_least(const std::string& key, double value, double min) {
    if (!(value >= min) || !std::isfinite(value))
      fail(key, "must be a finite number >= " + show(min) + " (got " + show(value) + ")");
  }
  void above(const std::string& key, double value, double min) {
    if (!(value > min) || !std::isfinite(value))
      fail(key, "must be a finite number > " + show(min) + " (got " + show(value) + ")");
  }
  // [lo, hi)
  void half_open(const std::string& key, double value, double lo, double hi) {
    if (!(value >= lo && value < hi))
      fail(key, "must be in [" + show(lo) + ", " + show(hi) + ") (got " + show(value) + ")");
  }
  // (lo, hi)
  void open(const std::string& key, double value, double lo, double hi) {
    if (!(value > lo && value < hi))
      fail(key, "must be strictly between " + show(lo) + " and " + show(hi) + " (got " +
                    show(value) + ")");
  }
  // [lo, hi]
  void closed(const std::string& key, double value, double lo, double hi) {
    if (!(value >= lo && value <= hi))
      fail(key, "must be in [" + show(lo) + ", " + show(hi) + "] (got " + show(value) + ")");
  }

  template <class Range>
  void one_of(const std::string& key, const std::string& value, const Range& allowed) {
    if (!contains(allowed, value))
      fail(key, "must be one of " + quoted_list(allowed) + " (got " + toml_quote(value) + ")");
  }

  void utf8(const std::string& key, const std::string& value) {
    if (auto offset = find_invalid_utf8(value))
      fail(key, "is not valid UTF-8 (bad byte at offset " + std::to_string(*offset) + ")");
  }
  void non_empty(const std::string& key, const std::string& value) {
    if (value.empty()) fail(key, "must not be empty");
    utf8(key, value);
  }

  void layer_list(const std::string& key, const std::vector<int64_t>& layers) {
    std::set<int64_t> seen;
    for (size_t i = 0; i < layers.size(); ++i) {
      const std::string item = key + "[" + std::to_string(i) + "]";
      if (layers[i] < 0) {
        fail(item, "layer indices must be >= 0 (got " + show(layers[i]) + ")");
      } else if (!seen.insert(layers[i]).second) {
        fail(item, "layer " + show(layers[i]) + " is listed twice");
      }
    }
  }

  template <class Range>
  void choice_list(const std::string& key, const std::vector<std::string>& items,
                   const Range& allowed, std::string_view what) {
    std::set<std::string> seen;
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string item = key + "[" + std::to_string(i) + "]";
      if (!contains(allowed, items[i])) {
        fail(item, "unknown " + std::string(what) + " " + toml_quote(items[i]) +
                       "; allowed: " + quoted_list(allowed));
      } else if (!seen.insert(items[i]).second) {
        fail(item, std::string(what) + " " + toml_quote(items[i]) + " is listed twice");
      }
    }
  }

 private:
  std::vector<Error>& errors_;
};

void check_sources(Checker& check, const std::string& key, const std::vector<std::string>& list) {
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item = key + "[" + std::to_string(i) + "]";
    const std::string& source = list[i];
    if (source.empty()) {
      check.fail(item, "must be a file path or \"builtin:<name>\", not an empty string");
    } else if (source == "builtin:") {
      check.fail(item, "\"builtin:\" needs a data set name, e.g. \"builtin:fortunes\"");
    }
    check.utf8(item, source);
  }
}

void check_prompt_template(Checker& check, const std::string& prompt) {
  const std::string key = "data.prompt_template";
  check.utf8(key, prompt);
  for (std::string_view needed : {"{instruction}", "{output}"}) {
    if (prompt.find(needed) == std::string::npos)
      check.fail(key, "must contain the placeholder " + std::string(needed));
  }
  // Only {identifier} patterns count as placeholders, so other braces may appear literally.
  for (size_t open = prompt.find('{'); open != std::string::npos;
       open = prompt.find('{', open + 1)) {
    size_t end = open + 1;
    while (end < prompt.size() &&
           (std::islower(static_cast<unsigned char>(prompt[end])) || prompt[end] == '_'))
      ++end;
    if (end == open + 1 || end >= prompt.size() || prompt[end] != '}') continue;
    const std::string name = prompt.substr(open + 1, end - open - 1);
    if (name != "instruction" && name != "input" && name != "output")
      check.fail(key, "has unknown placeholder {" + name +
                          "}; only {instruction}, {input} and {output} are filled in");
  }
}

void check_schedule(Checker& check, const std::string& key, const Schedule& schedule,
                    int64_t stage_steps, bool window_sizes) {
  if (!schedule.values.empty() && !schedule.points.empty()) {
    check.fail(key, "has both a value list and [step, value] points; use one form");
    return;
  }
  if (schedule.values.empty() && schedule.points.empty()) {
    check.fail(key, "must not be empty: give a list of values or of [step, value] points");
    return;
  }
  auto check_value = [&](const std::string& item, double value) {
    if (window_sizes) {
      if (!(value >= 1) || value != std::floor(value) || !std::isfinite(value))
        check.fail(item, "window sizes must be whole numbers >= 1 (got " + show(value) + ")");
    } else {
      check.closed(item, value, 0.0, 1.0);
    }
  };
  for (size_t i = 0; i < schedule.values.size(); ++i)
    check_value(key + "[" + std::to_string(i) + "]", schedule.values[i]);
  for (size_t i = 0; i < schedule.points.size(); ++i) {
    const std::string item = key + "[" + std::to_string(i) + "]";
    const SchedulePoint& point = schedule.points[i];
    if (i == 0 && point.step != 0) {
      check.fail(item, "the first point must be at step 0 (got " + show(point.step) + ")");
    } else if (i > 0 && point.step <= schedule.points[i - 1].step) {
      check.fail(item, "steps must increase strictly (" + show(point.step) + " follows " +
                           show(schedule.points[i - 1].step) + ")");
    } else if (point.step >= stage_steps) {
      check.fail(item, "step " + show(point.step) + " is not inside the stage, which has " +
                           show(stage_steps) + " steps");
    }
    check_value(item, point.value);
  }
}

// Keys of the other stage kind must stay at their defaults, so that writing the spec and
// reading it back gives the same spec.
void check_inactive_options(Checker& check, const std::string& prefix, const StageSpec& stage) {
  if (stage.kind == kAttentionTransfer) {
    const LoraOptions lora;
    const std::string only = " is only valid in a lora_finetune stage";
    if (stage.lora.rank != lora.rank) check.fail(prefix + "rank", "`rank`" + only);
    if (stage.lora.alpha != lora.alpha) check.fail(prefix + "alpha", "`alpha`" + only);
    if (stage.lora.dropout != lora.dropout) check.fail(prefix + "dropout", "`dropout`" + only);
    if (stage.lora.targets != lora.targets) check.fail(prefix + "targets", "`targets`" + only);
    if (stage.lora.layers != lora.layers) check.fail(prefix + "layers", "`layers`" + only);
    if (stage.lora.train_feature_maps != lora.train_feature_maps)
      check.fail(prefix + "train_feature_maps", "`train_feature_maps`" + only);
  } else {
    const TransferOptions transfer;
    const std::string only = " is only valid in an attention_transfer stage";
    if (stage.transfer.objective != transfer.objective)
      check.fail(prefix + "objective", "`objective`" + only);
    if (stage.transfer.mse_factor != transfer.mse_factor)
      check.fail(prefix + "mse_factor", "`mse_factor`" + only);
    if (stage.transfer.xent_factor != transfer.xent_factor)
      check.fail(prefix + "xent_factor", "`xent_factor`" + only);
  }
}

void check_stage(Checker& check, const ExperimentSpec& spec, size_t index) {
  const StageSpec& stage = spec.stages[index];
  const std::string prefix = "stage[" + std::to_string(index) + "].";
  const bool known_kind = contains(choices::kStageKinds, stage.kind);
  if (!known_kind) {
    check.fail(prefix + "kind", "must be \"attention_transfer\" or \"lora_finetune\" (got " +
                                    toml_quote(stage.kind) + ")");
  }
  check.non_empty(prefix + "name", stage.name);
  check.at_least(prefix + "steps", stage.steps, int64_t{1});
  check.above(prefix + "lr", stage.lr, 0.0);
  check.at_least(prefix + "weight_decay", stage.weight_decay, 0.0);
  check.one_of(prefix + "lr_schedule", stage.lr_schedule, choices::kLrSchedules);
  check.at_least(prefix + "warmup_steps", stage.warmup_steps, int64_t{0});
  if (stage.warmup_steps > 0 && stage.warmup_steps >= stage.steps) {
    check.fail(prefix + "warmup_steps", "must be less than the stage's steps (" +
                                            show(stage.warmup_steps) + " >= " + show(stage.steps) +
                                            ")");
  }
  check.open(prefix + "plateau_factor", stage.plateau_factor, 0.0, 1.0);
  check.at_least(prefix + "plateau_patience", stage.plateau_patience, int64_t{1});
  check.at_least(prefix + "grad_accum", stage.grad_accum, int64_t{1});
  check.at_least(prefix + "max_grad_norm", stage.max_grad_norm, 0.0);
  check.at_least(prefix + "log_every", stage.log_every, int64_t{1});
  check.at_least(prefix + "usage_every", stage.usage_every, int64_t{1});
  check.at_least(prefix + "eval_every", stage.eval_every, int64_t{1});
  check.at_least(prefix + "eval_batches", stage.eval_batches, int64_t{1});
  check.at_least(prefix + "early_stop_patience", stage.early_stop_patience, int64_t{0});
  check.at_least(prefix + "checkpoint_every", stage.checkpoint_every, int64_t{1});
  check.one_of(prefix + "train_mode", stage.train_mode, choices::kTrainModes);

  if (known_kind) check_inactive_options(check, prefix, stage);
  if (stage.kind == kAttentionTransfer) {
    const TransferOptions& transfer = stage.transfer;
    check.one_of(prefix + "objective", transfer.objective, choices::kObjectives);
    check.at_least(prefix + "mse_factor", transfer.mse_factor, 0.0);
    check.at_least(prefix + "xent_factor", transfer.xent_factor, 0.0);
    if (transfer.objective == "attention_weights" && !(transfer.xent_factor > 0)) {
      check.fail(prefix + "xent_factor",
                 "must be > 0 with objective \"attention_weights\", which transfers attention "
                 "weights by cross-entropy");
    } else if (transfer.mse_factor == 0 && transfer.xent_factor == 0) {
      check.fail(prefix + "mse_factor",
                 "mse_factor and xent_factor are both 0, so the transfer loss is always 0");
    }
    if (contains(choices::kObjectives, transfer.objective) &&
        contains(choices::kTrainModes, stage.train_mode) &&
        stage.train_mode != train_mode_for_objective(transfer.objective)) {
      check.fail(prefix + "train_mode",
                 "objective " + toml_quote(transfer.objective) + " trains a " +
                     std::string(train_mode_for_objective(transfer.objective)) +
                     " student, so train_mode must be " +
                     toml_quote(train_mode_for_objective(transfer.objective)) + " (got " +
                     toml_quote(stage.train_mode) + ")");
    }
  } else if (stage.kind == kLoraFinetune) {
    const LoraOptions& lora = stage.lora;
    check.at_least(prefix + "rank", lora.rank, int64_t{1});
    check.above(prefix + "alpha", lora.alpha, 0.0);
    check.half_open(prefix + "dropout", lora.dropout, 0.0, 1.0);
    if (lora.targets.empty())
      check.fail(prefix + "targets", "must list at least one projection, e.g. [\"q\", \"v\"]");
    check.choice_list(prefix + "targets", lora.targets, choices::kLoraTargets, "LoRA target");
    check.layer_list(prefix + "layers", lora.layers);
  }

  if (stage.ssd) {
    const SsdSpec& ssd = *stage.ssd;
    const std::string ssd_key = prefix + "ssd";
    if (spec.attention.kind != "hybrid") {
      check.fail(ssd_key,
                 "SSD drops the sliding-window branch, so it needs attention.kind = "
                 "\"hybrid\" (got " +
                     toml_quote(spec.attention.kind) + ")");
    } else if (stage.train_mode == "linear_only") {
      check.fail(ssd_key,
                 "SSD drops the sliding-window branch, but this stage trains in linear_only "
                 "mode, which has none");
    }
    check_schedule(check, ssd_key + ".swa_dropout", ssd.swa_dropout, stage.steps, false);
    if (ssd.window) check_schedule(check, ssd_key + ".window", *ssd.window, stage.steps, true);
    check.one_of(ssd_key + ".granularity", ssd.granularity, choices::kSsdGranularities);
  }
}

void check_eval(Checker& check, const EvalSpec& eval) {
  std::set<std::string> seen;
  for (size_t i = 0; i < eval.tasks.size(); ++i) {
    const std::string key = "eval.tasks[" + std::to_string(i) + "]";
    const std::string& task = eval.tasks[i];
    check.utf8(key, task);
    const bool with_file = (task.starts_with("ppl:") && task.size() > 4) ||
                           (task.starts_with("mc:") && task.size() > 3);
    if (task == "ppl:" || task == "mc:") {
      check.fail(key, toml_quote(task) + " needs a file after the colon");
    } else if (!with_file && !contains(choices::kPlainEvalTasks, task)) {
      check.fail(key, "unknown task " + toml_quote(task) +
                          "; allowed: \"ppl\", \"ppl:PATH\", \"passkey\", \"mqar\", \"mc:PATH\"");
    } else if (!seen.insert(task).second) {
      check.fail(key, "task " + toml_quote(task) + " is listed twice");
    }
  }
  if (eval.modes.empty()) check.fail("eval.modes", "must list at least one mode");
  check.choice_list("eval.modes", eval.modes, choices::kEvalModes, "mode");
  check.at_least("eval.seq_len", eval.seq_len, int64_t{0});
  check.at_least("eval.max_batches", eval.max_batches, int64_t{1});
  for (size_t i = 0; i < eval.distances.size(); ++i)
    check.at_least("eval.distances[" + std::to_string(i) + "]", eval.distances[i], int64_t{1});
}

}  // namespace

std::vector<Error> validate(const ExperimentSpec& spec) {
  std::vector<Error> errors;
  Checker check(errors);

  check.non_empty("name", spec.name);
  check.at_least("seed", spec.seed, int64_t{0});
  check.utf8("description", spec.description);

  if (spec.model.base.empty()) {
    check.fail("model.base",
               "is required: set it to the directory of the pretrained model to convert");
  }
  check.utf8("model.base", spec.model.base);
  check.one_of("model.dtype", spec.model.dtype, choices::kDtypes);
  check.one_of("model.device", spec.model.device, choices::kDevices);
  check.one_of("model.autocast", spec.model.autocast, choices::kAutocast);
  if (spec.model.autocast == "bfloat16") {
    if (spec.model.device == "cpu")
      check.fail("model.autocast", "runs on CUDA only, but model.device is \"cpu\"");
    if (spec.model.dtype != "float32")
      check.fail("model.autocast",
                 "needs model.dtype = \"float32\" (the fp32 master weights), "
                 "but it is \"" +
                     spec.model.dtype + "\"");
  }

  const DataSpec& data = spec.data;
  if (data.train.empty())
    check.fail("data.train", "must list at least one source, e.g. [\"builtin:fortunes\"]");
  check_sources(check, "data.train", data.train);
  check_sources(check, "data.val", data.val);
  check.one_of("data.format", data.format, choices::kDataFormats);
  check.non_empty("data.text_field", data.text_field);
  check_prompt_template(check, data.prompt_template);
  check.at_least("data.seq_len", data.seq_len, int64_t{8});
  check.at_least("data.batch_size", data.batch_size, int64_t{1});
  check.half_open("data.val_fraction", data.val_fraction, 0.0, 1.0);
  check.at_least("data.passkey_weight", data.passkey_weight, 0.0);
  check.at_least("data.mqar_weight", data.mqar_weight, 0.0);
  check.at_least("data.max_train_tokens", data.max_train_tokens, int64_t{0});

  const AttentionSpec& attention = spec.attention;
  check.one_of("attention.kind", attention.kind, choices::kAttentionKinds);
  check.at_least("attention.window", attention.window, int64_t{1});
  check.one_of("attention.feature_map", attention.feature_map, choices::kFeatureMaps);
  check.at_least("attention.feature_dim", attention.feature_dim, int64_t{1});
  check.one_of("attention.feature_init", attention.feature_init, choices::kFeatureInits);
  check.open("attention.window_factor_init", attention.window_factor_init, 0.0, 1.0);
  check.layer_list("attention.softmax_layers", attention.softmax_layers);
  check.at_least("attention.sinks", attention.sinks, int64_t{1});

  if (spec.stages.empty()) check.fail("stage", "at least one [[stage]] is required");
  for (size_t i = 0; i < spec.stages.size(); ++i)
    check_stage(check, spec, i);

  check_eval(check, spec.eval);
  return errors;
}

}  // namespace hl
