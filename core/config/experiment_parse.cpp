// TOML -> ExperimentSpec. Structural problems (syntax, types, unknown or misplaced keys) are
// found here with the line of the offending node; range and combination checks come from
// validate() and get their line by looking their key path up in the parsed document.
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/config/experiment_file.hpp"
#include "core/config/toml_text.hpp"

namespace hl {
namespace {

constexpr std::size_t kMaxFileBytes = 16u << 20;

int line_of(const toml::source_region& region) {
  return static_cast<int>(region.begin.line);
}

std::string describe_type(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::replace(text.begin(), text.end(), '\r', ' ');
  return text;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitution});
    }
  }
  return row[b.size()];
}

struct Context {
  std::string file;
  std::vector<Error> errors;

  void error(int line, std::string key, std::string message) {
    errors.push_back(
        make_error(one_line(std::move(message)), Location{file, line, std::move(key)}));
  }
};

std::string child_path(std::string_view parent, std::string_view key) {
  return parent.empty() ? std::string(key) : std::string(parent) + "." + std::string(key);
}

std::string item_path(std::string_view parent, size_t index) {
  return std::string(parent) + "[" + std::to_string(index) + "]";
}

// Reads the keys of one table and reports, at the end, every key nobody asked for.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string path, Context& context)
      : table_(table), path_(std::move(path)), context_(context) {}

  std::string path_of(std::string_view key) const { return child_path(path_, key); }
  int line() const { return line_of(table_.source()); }

  /// The node under `key` (or null), which counts as a known key from now on.
  const toml::node* take(std::string_view key) {
    known_.emplace(key);
    return table_.get(key);
  }

  void type_error(std::string_view key, const toml::node& node, std::string_view expected) {
    context_.error(line_of(node.source()), path_of(key),
                   "must be " + std::string(expected) + ", not " + describe_type(node));
  }

  void read(std::string_view key, std::string& out) {
    if (const toml::node* node = take(key)) {
      if (const auto* value = node->as_string()) {
        out = value->get();
      } else {
        type_error(key, *node, "a string");
      }
    }
  }
  void read(std::string_view key, int64_t& out) {
    if (const toml::node* node = take(key)) {
      if (const auto* value = node->as_integer()) {
        out = value->get();
      } else {
        type_error(key, *node, "an integer");
      }
    }
  }
  void read(std::string_view key, double& out) {
    if (const toml::node* node = take(key)) {
      if (const auto* value = node->as_floating_point()) {
        out = value->get();
      } else if (const auto* integer = node->as_integer()) {
        out = static_cast<double>(integer->get());
      } else {
        type_error(key, *node, "a number");
      }
    }
  }
  void read(std::string_view key, bool& out) {
    if (const toml::node* node = take(key)) {
      if (const auto* value = node->as_boolean()) {
        out = value->get();
      } else {
        type_error(key, *node, "true or false");
      }
    }
  }
  void read(std::string_view key, std::vector<std::string>& out) {
    read_list<std::string>(key, out, "a string", "an array of strings");
  }
  void read(std::string_view key, std::vector<int64_t>& out) {
    read_list<int64_t>(key, out, "an integer", "an array of integers");
  }

  /// A sub-table under `key` (a [section] or an inline table), or null if absent or wrong.
  const toml::table* table(std::string_view key) {
    const toml::node* node = take(key);
    if (!node) return nullptr;
    if (const auto* table = node->as_table()) return table;
    type_error(key, *node, "a table");
    return nullptr;
  }

  /// Marks `key` as known but not allowed here; reports it if present.
  void forbid(std::string_view key, const std::string& message) {
    if (const toml::node* node = take(key))
      context_.error(line_of(node->source()), path_of(key), message);
  }

  /// Reports the keys that no read/take/forbid asked for.
  void reject_unknown() {
    const std::string where = path_.empty() ? "the top level" : "[" + path_ + "]";
    for (auto&& [key, node] : table_) {
      if (known_.count(std::string(key.str()))) continue;
      std::string message = "unknown key `" + std::string(key.str()) + "` in " + where;
      std::string_view best;
      size_t best_distance = 3;  // suggest only close misspellings
      for (const std::string& candidate : known_) {
        const size_t distance = edit_distance(key.str(), candidate);
        if (distance < best_distance) {
          best_distance = distance;
          best = candidate;
        }
      }
      if (!best.empty()) message += "; did you mean `" + std::string(best) + "`?";
      int line = line_of(key.source());
      if (line == 0) line = line_of(node.source());
      context_.error(line, path_of(key.str()), message);
    }
  }

 private:
  template <class T>
  void read_list(std::string_view key, std::vector<T>& out, std::string_view item_type,
                 std::string_view list_type) {
    const toml::node* node = take(key);
    if (!node) return;
    const auto* array = node->as_array();
    if (!array) {
      type_error(key, *node, list_type);
      return;
    }
    std::vector<T> items;
    bool all_good = true;
    for (size_t i = 0; i < array->size(); ++i) {
      const toml::node& item = *array->get(i);
      if (const auto* value = item.as<T>()) {
        items.push_back(value->get());
      } else {
        context_.error(line_of(item.source()), item_path(path_of(key), i),
                       "must be " + std::string(item_type) + ", not " + describe_type(item));
        all_good = false;
      }
    }
    if (all_good) out = std::move(items);
  }

  const toml::table& table_;
  std::string path_;
  Context& context_;
  std::set<std::string, std::less<>> known_;
};

// An integer or float node as a double.
double number_of(const toml::node& node) {
  if (const auto* integer = node.as_integer()) return static_cast<double>(integer->get());
  return node.as_floating_point()->get();
}

void read_schedule(TableReader& reader, Context& context, std::string_view key, Schedule& out) {
  const toml::node* node = reader.take(key);
  if (!node) return;
  const std::string path = reader.path_of(key);
  const auto* array = node->as_array();
  if (!array) {
    reader.type_error(key, *node, "a list of values or of [step, value] points");
    return;
  }
  Schedule schedule;
  size_t numbers = 0, pairs = 0;
  for (const toml::node& item : *array) {
    if (item.is_number()) ++numbers;
    if (item.is_array()) ++pairs;
  }
  if (numbers > 0 && pairs > 0) {
    context.error(line_of(node->source()), path,
                  "mixes plain values and [step, value] points; use one form");
    return;
  }
  bool all_good = true;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& item = *array->get(i);
    const std::string item_key = item_path(path, i);
    if (item.is_number()) {
      schedule.values.push_back(number_of(item));
      continue;
    }
    const auto* point = item.as_array();
    if (!point || point->size() != 2 || !point->get(0)->is_integer() ||
        !point->get(1)->is_number()) {
      context.error(line_of(item.source()), item_key,
                    "must be a number or a [step, value] pair with an integer step");
      all_good = false;
      continue;
    }
    schedule.points.push_back({point->get(0)->as_integer()->get(), number_of(*point->get(1))});
  }
  if (all_good) out = std::move(schedule);
}

SsdSpec read_ssd(const toml::table& table, const std::string& path, Context& context) {
  SsdSpec ssd;
  TableReader reader(table, path, context);
  read_schedule(reader, context, "swa_dropout", ssd.swa_dropout);
  if (reader.take("window")) {
    ssd.window = Schedule{};
    read_schedule(reader, context, "window", *ssd.window);
  }
  reader.read("granularity", ssd.granularity);
  reader.reject_unknown();
  return ssd;
}

constexpr std::string_view kTransferKeys[] = {"objective", "mse_factor", "xent_factor"};
constexpr std::string_view kLoraKeys[] = {"rank",    "alpha",  "dropout",
                                          "targets", "layers", "train_feature_maps"};

StageSpec read_stage(const toml::table& table, size_t index, Context& context) {
  const std::string path = item_path("stage", index);
  TableReader reader(table, path, context);

  std::string kind;
  if (const toml::node* node = reader.take("kind")) {
    if (const auto* value = node->as_string()) {
      kind = value->get();
    } else {
      reader.type_error("kind", *node, "a string");
    }
  } else {
    context.error(reader.line(), reader.path_of("kind"),
                  "is required: \"attention_transfer\" or \"lora_finetune\"");
  }
  const bool transfer = kind == kAttentionTransfer;
  const bool lora = kind == kLoraFinetune;

  StageSpec stage = default_stage(lora ? kLoraFinetune : kAttentionTransfer);
  stage.kind = kind;
  if (!kind.empty()) stage.name = kind;

  // The objective decides the other transfer defaults, so it is read first.
  if (!lora) {
    std::string objective = stage.transfer.objective;
    reader.read("objective", objective);
    stage.transfer = default_transfer_options(objective);
    if (std::find(choices::kObjectives.begin(), choices::kObjectives.end(), objective) !=
        choices::kObjectives.end())
      stage.train_mode = std::string(train_mode_for_objective(objective));
  }

  reader.read("name", stage.name);
  reader.read("steps", stage.steps);
  reader.read("lr", stage.lr);
  reader.read("weight_decay", stage.weight_decay);
  reader.read("lr_schedule", stage.lr_schedule);
  reader.read("warmup_steps", stage.warmup_steps);
  reader.read("plateau_factor", stage.plateau_factor);
  reader.read("plateau_patience", stage.plateau_patience);
  reader.read("grad_accum", stage.grad_accum);
  reader.read("max_grad_norm", stage.max_grad_norm);
  reader.read("log_every", stage.log_every);
  reader.read("usage_every", stage.usage_every);
  reader.read("eval_every", stage.eval_every);
  reader.read("eval_batches", stage.eval_batches);
  reader.read("early_stop_patience", stage.early_stop_patience);
  reader.read("checkpoint_every", stage.checkpoint_every);
  reader.read("train_mode", stage.train_mode);

  if (lora) {
    for (std::string_view key : kTransferKeys)
      reader.forbid(key, "`" + std::string(key) + "` is only valid in an attention_transfer stage");
  } else {
    reader.read("mse_factor", stage.transfer.mse_factor);
    reader.read("xent_factor", stage.transfer.xent_factor);
  }
  if (transfer) {
    for (std::string_view key : kLoraKeys)
      reader.forbid(key, "`" + std::string(key) + "` is only valid in a lora_finetune stage");
  } else {
    reader.read("rank", stage.lora.rank);
    reader.read("alpha", stage.lora.alpha);
    reader.read("dropout", stage.lora.dropout);
    reader.read("targets", stage.lora.targets);
    reader.read("layers", stage.lora.layers);
    reader.read("train_feature_maps", stage.lora.train_feature_maps);
  }

  if (const toml::table* ssd = reader.table("ssd")) {
    stage.ssd = read_ssd(*ssd, reader.path_of("ssd"), context);
  }
  reader.reject_unknown();
  return stage;
}

ExperimentSpec read_experiment(const toml::table& root, Context& context) {
  ExperimentSpec spec;
  TableReader reader(root, "", context);
  reader.read("name", spec.name);
  reader.read("seed", spec.seed);
  reader.read("description", spec.description);

  if (const toml::table* table = reader.table("model")) {
    TableReader model(*table, "model", context);
    model.read("base", spec.model.base);
    model.read("dtype", spec.model.dtype);
    model.read("device", spec.model.device);
    model.read("autocast", spec.model.autocast);
    model.reject_unknown();
  }

  if (const toml::table* table = reader.table("data")) {
    TableReader data(*table, "data", context);
    DataSpec& out = spec.data;
    data.read("train", out.train);
    data.read("val", out.val);
    data.read("format", out.format);
    data.read("text_field", out.text_field);
    data.read("prompt_template", out.prompt_template);
    data.read("seq_len", out.seq_len);
    data.read("batch_size", out.batch_size);
    data.read("val_fraction", out.val_fraction);
    data.read("passkey_weight", out.passkey_weight);
    data.read("mqar_weight", out.mqar_weight);
    data.read("max_train_tokens", out.max_train_tokens);
    data.reject_unknown();
  }

  if (const toml::table* table = reader.table("attention")) {
    TableReader attention(*table, "attention", context);
    AttentionSpec& out = spec.attention;
    attention.read("kind", out.kind);
    attention.read("window", out.window);
    attention.read("overlap", out.overlap);
    attention.read("feature_map", out.feature_map);
    attention.read("feature_dim", out.feature_dim);
    attention.read("feature_init", out.feature_init);
    attention.read("window_factor_init", out.window_factor_init);
    attention.read("affine_factors", out.affine_factors);
    attention.read("softmax_layers", out.softmax_layers);
    attention.read("sinks", out.sinks);
    attention.reject_unknown();
  }

  if (const toml::node* node = reader.take("stage")) {
    if (const auto* stages = node->as_array()) {
      for (size_t i = 0; i < stages->size(); ++i) {
        const toml::node& item = *stages->get(i);
        if (const auto* table = item.as_table()) {
          spec.stages.push_back(read_stage(*table, i, context));
        } else {
          context.error(
              line_of(item.source()), item_path("stage", i),
              "each stage must be a table written as [[stage]], not " + describe_type(item));
        }
      }
    } else {
      context.error(line_of(node->source()), "stage",
                    "must be an array of tables written as [[stage]] (double brackets), not " +
                        describe_type(*node));
    }
  }

  if (const toml::table* table = reader.table("eval")) {
    TableReader eval(*table, "eval", context);
    EvalSpec& out = spec.eval;
    eval.read("tasks", out.tasks);
    eval.read("modes", out.modes);
    eval.read("seq_len", out.seq_len);
    eval.read("max_batches", out.max_batches);
    eval.read("distances", out.distances);
    eval.read("layer_ablation", out.layer_ablation);
    eval.reject_unknown();
  }

  reader.reject_unknown();
  return spec;
}

// Line of the node at `key`, or of its nearest enclosing node that the file has.
int line_for_key(const toml::table& root, std::string key) {
  while (!key.empty()) {
    if (const toml::node* node = toml::at_path(root, key).node()) {
      if (int line = line_of(node->source()); line > 0) return line;
    }
    const size_t cut = key.find_last_of(".[");
    if (cut == std::string::npos) break;
    key.resize(cut);
  }
  return 1;
}

// A key covers another when they are equal or the other lies inside it.
bool covers(const std::string& outer, const std::string& inner) {
  if (!inner.starts_with(outer)) return false;
  return inner.size() == outer.size() || inner[outer.size()] == '.' || inner[outer.size()] == '[';
}

std::pair<int, int> line_and_column(std::string_view text, size_t offset) {
  int line = 1, column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

std::string hex_byte(unsigned char byte) {
  char buffer[8];
  std::snprintf(buffer, sizeof buffer, "0x%02X", byte);
  return buffer;
}

ExperimentParse failure(std::string file, int line, std::string message) {
  ExperimentParse result;
  result.errors.push_back(
      make_error(one_line(std::move(message)), Location{std::move(file), line, ""}));
  return result;
}

}  // namespace

ExperimentParse parse_experiment(std::string_view text, std::string_view source_name) {
  const std::string file(source_name);
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) {
    auto [line, column] = line_and_column(text, nul);
    return failure(
        file, line,
        "is a binary file, not TOML text (NUL byte at column " + std::to_string(column) + ")");
  }
  if (auto bad = find_invalid_utf8(text)) {
    auto [line, column] = line_and_column(text, *bad);
    return failure(file, line,
                   "is not UTF-8 text (invalid byte " +
                       hex_byte(static_cast<unsigned char>(text[*bad])) + " at column " +
                       std::to_string(column) + "); save the file as UTF-8");
  }
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return failure(file, 0,
                   "is empty; an experiment needs at least [model] base = \"DIR\" and one "
                   "[[stage]]");
  }

  toml::table root;
#if TOML_EXCEPTIONS
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    return failure(file, line_of(error.source()),
                   "is not valid TOML: " + std::string(error.description()) + " (column " +
                       std::to_string(error.source().begin.column) + ")");
  }
#else
  toml::parse_result parsed = toml::parse(text, source_name);
  if (!parsed) {
    const toml::parse_error& error = parsed.error();
    return failure(file, line_of(error.source()),
                   "is not valid TOML: " + std::string(error.description()) + " (column " +
                       std::to_string(error.source().begin.column) + ")");
  }
  root = std::move(parsed).table();
#endif

  Context context{file, {}};
  ExperimentSpec spec = read_experiment(root, context);
  const std::vector<Error> structural = context.errors;
  for (Error& error : validate(spec)) {
    const bool already_reported = std::any_of(
        structural.begin(), structural.end(),
        [&](const Error& earlier) { return covers(earlier.where.key, error.where.key); });
    if (already_reported) continue;
    error.where.file = file;
    error.where.line = line_for_key(root, error.where.key);
    context.errors.push_back(std::move(error));
  }

  ExperimentParse result;
  result.errors = std::move(context.errors);
  std::stable_sort(result.errors.begin(), result.errors.end(),
                   [](const Error& a, const Error& b) { return a.where.line < b.where.line; });
  if (result.errors.empty()) result.spec = std::move(spec);
  return result;
}

ExperimentParse load_experiment_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::not_found)
    return failure(path, 0, "cannot read the file: no such file or directory");
  if (ec) return failure(path, 0, "cannot read the file: " + ec.message());
  if (std::filesystem::is_directory(status))
    return failure(path, 0, "is a directory, not an experiment file");

  std::FILE* stream = std::fopen(path.c_str(), "rb");
  if (!stream)
    return failure(path, 0, std::string("cannot read the file: ") + std::strerror(errno));
  std::string text;
  char buffer[1 << 16];
  bool too_large = false;
  while (size_t count = std::fread(buffer, 1, sizeof buffer, stream)) {
    text.append(buffer, count);
    if (text.size() > kMaxFileBytes) {
      too_large = true;
      break;
    }
  }
  const bool read_failed = std::ferror(stream) != 0;
  const int read_errno = errno;
  std::fclose(stream);
  if (read_failed)
    return failure(path, 0, std::string("cannot read the file: ") + std::strerror(read_errno));
  if (too_large) {
    return failure(path, 0,
                   "is larger than " + std::to_string(kMaxFileBytes >> 20) +
                       " MiB, too large for an experiment file");
  }
  return parse_experiment(text, path);
}

}  // namespace hl
