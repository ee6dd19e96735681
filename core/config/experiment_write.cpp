// ExperimentSpec -> TOML, every field explicit, in the order of the file format's sections.
#include <cmath>
#include <sstream>

#include "core/config/experiment_file.hpp"
#include "core/config/toml_text.hpp"

namespace hl {
namespace {

std::string format(const std::string& value) {
  return toml_quote(value);
}
std::string format(int64_t value) {
  return std::to_string(value);
}
std::string format(double value) {
  return toml_float(value);
}
std::string format(bool value) {
  return value ? "true" : "false";
}

template <class T>
std::string format(const std::vector<T>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += format(items[i]);
  }
  return out + "]";
}

// Window sizes are whole numbers and read best as integers; anything else stays a float.
std::string format_schedule_value(double value, bool whole_numbers) {
  if (whole_numbers && value == std::floor(value) && std::fabs(value) < 9.0e15)
    return std::to_string(static_cast<int64_t>(value));
  return toml_float(value);
}

std::string format_schedule(const Schedule& schedule, bool whole_numbers) {
  std::string out = "[";
  if (!schedule.points.empty()) {
    for (size_t i = 0; i < schedule.points.size(); ++i) {
      if (i > 0) out += ", ";
      out += "[" + std::to_string(schedule.points[i].step) + ", " +
             format_schedule_value(schedule.points[i].value, whole_numbers) + "]";
    }
  } else {
    for (size_t i = 0; i < schedule.values.size(); ++i) {
      if (i > 0) out += ", ";
      out += format_schedule_value(schedule.values[i], whole_numbers);
    }
  }
  return out + "]";
}

class Writer {
 public:
  template <class T>
  void field(std::string_view key, const T& value) {
    out_ << key << " = " << format(value) << '\n';
  }
  void raw(std::string_view key, const std::string& value) {
    out_ << key << " = " << value << '\n';
  }
  void header(std::string_view line) { out_ << '\n' << line << '\n'; }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

}  // namespace

std::string to_toml(const ExperimentSpec& spec) {
  Writer w;
  w.field("name", spec.name);
  w.field("seed", spec.seed);
  w.field("description", spec.description);

  w.header("[model]");
  w.field("base", spec.model.base);
  w.field("dtype", spec.model.dtype);
  w.field("device", spec.model.device);
  w.field("autocast", spec.model.autocast);

  const DataSpec& data = spec.data;
  w.header("[data]");
  w.field("train", data.train);
  w.field("val", data.val);
  w.field("format", data.format);
  w.field("text_field", data.text_field);
  w.field("prompt_template", data.prompt_template);
  w.field("seq_len", data.seq_len);
  w.field("batch_size", data.batch_size);
  w.field("val_fraction", data.val_fraction);
  w.field("passkey_weight", data.passkey_weight);
  w.field("mqar_weight", data.mqar_weight);
  w.field("max_train_tokens", data.max_train_tokens);

  const AttentionSpec& attention = spec.attention;
  w.header("[attention]");
  w.field("kind", attention.kind);
  w.field("window", attention.window);
  w.field("overlap", attention.overlap);
  w.field("feature_map", attention.feature_map);
  w.field("feature_dim", attention.feature_dim);
  w.field("feature_init", attention.feature_init);
  w.field("window_factor_init", attention.window_factor_init);
  w.field("affine_factors", attention.affine_factors);
  w.field("softmax_layers", attention.softmax_layers);
  w.field("sinks", attention.sinks);

  for (const StageSpec& stage : spec.stages) {
    w.header("[[stage]]");
    w.field("kind", stage.kind);
    w.field("name", stage.name);
    w.field("steps", stage.steps);
    w.field("lr", stage.lr);
    w.field("weight_decay", stage.weight_decay);
    w.field("lr_schedule", stage.lr_schedule);
    w.field("warmup_steps", stage.warmup_steps);
    w.field("plateau_factor", stage.plateau_factor);
    w.field("plateau_patience", stage.plateau_patience);
    w.field("grad_accum", stage.grad_accum);
    w.field("max_grad_norm", stage.max_grad_norm);
    w.field("log_every", stage.log_every);
    w.field("usage_every", stage.usage_every);
    w.field("eval_every", stage.eval_every);
    w.field("eval_batches", stage.eval_batches);
    w.field("early_stop_patience", stage.early_stop_patience);
    w.field("checkpoint_every", stage.checkpoint_every);
    w.field("train_mode", stage.train_mode);
    if (stage.kind == kLoraFinetune) {
      w.field("rank", stage.lora.rank);
      w.field("alpha", stage.lora.alpha);
      w.field("dropout", stage.lora.dropout);
      w.field("targets", stage.lora.targets);
      w.field("layers", stage.lora.layers);
      w.field("train_feature_maps", stage.lora.train_feature_maps);
    } else {
      w.field("objective", stage.transfer.objective);
      w.field("mse_factor", stage.transfer.mse_factor);
      w.field("xent_factor", stage.transfer.xent_factor);
    }
    if (stage.ssd) {
      w.header("[stage.ssd]");
      w.raw("swa_dropout", format_schedule(stage.ssd->swa_dropout, false));
      if (stage.ssd->window) w.raw("window", format_schedule(*stage.ssd->window, true));
      w.field("granularity", stage.ssd->granularity);
    }
  }

  const EvalSpec& eval = spec.eval;
  w.header("[eval]");
  w.field("tasks", eval.tasks);
  w.field("modes", eval.modes);
  w.field("seq_len", eval.seq_len);
  w.field("max_batches", eval.max_batches);
  w.field("distances", eval.distances);
  w.field("layer_ablation", eval.layer_ablation);
  return w.text();
}

}  // namespace hl
