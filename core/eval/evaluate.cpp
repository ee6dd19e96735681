#include "core/eval/evaluate.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/eval/answers.hpp"
#include "core/eval/likelihood.hpp"
#include "core/store/run_reader.hpp"

namespace hl::eval {

namespace fs = std::filesystem;
using kernels::AttentionMode;

namespace {

constexpr const char* kBaseMethod = "base-eval";
constexpr const char* kBaseMode = "softmax";
constexpr int64_t kDefaultWindow = 64;
constexpr int64_t kProbeBatch = 16;

// FNV-1a, 64 bit: a fingerprint, not a defence against crafted collisions.
struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i)
      h = (h ^ p[i]) * 1099511628211ull;
  }
  void text(const std::string& s) { bytes(s.data(), s.size() + 1); }
  void number(int64_t v) { bytes(&v, sizeof v); }
  std::string hex() const {
    std::ostringstream out;
    out << std::hex << h;
    return out.str();
  }
};

Status hash_file(Fnv& fnv, const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("cannot read the file", {path.string()});
  std::error_code ec;
  const auto size = static_cast<int64_t>(fs::file_size(path, ec));
  fnv.number(size);
  std::vector<char> buffer(1 << 16);
  auto read_at = [&](int64_t offset, int64_t count) {
    in.clear();
    in.seekg(offset);
    while (count > 0 && in) {
      in.read(buffer.data(), std::min<int64_t>(count, int64_t(buffer.size())));
      fnv.bytes(buffer.data(), static_cast<size_t>(in.gcount()));
      count -= in.gcount();
      if (in.gcount() == 0) break;
    }
  };
  constexpr int64_t kWhole = int64_t{64} << 20;
  if (size <= kWhole) {
    read_at(0, size);
  } else {
    read_at(0, int64_t{1} << 20);  // the safetensors header and the first tensors
    for (int i = 1; i <= 64; ++i)
      read_at(size / 65 * i, int64_t{1} << 16);
  }
  return Status::Ok();
}

bool is_converted(model::CausalLM& model) {
  return !model->converted_layers().empty();
}

int64_t model_window(model::CausalLM& model, const EvalPlan& plan) {
  if (plan.window > 0) return plan.window;
  auto layers = model->converted_layers();
  return layers.empty() ? kDefaultWindow : model->attention(layers.front())->conversion().window;
}

int64_t max_context(model::CausalLM& model) {
  const int64_t positions = model->config().max_position_embeddings;
  return positions > 0 ? positions : INT64_MAX;
}

// Text chunks for a ppl task, at most max_batches batches (smaller batches when the text
// is short).
Result<std::vector<data::Batch>> text_batches(const PreparedTask& task, const EvalPlan& plan,
                                              const io::Tokenizer& tokenizer) {
  std::vector<data::Batch> batches;
  for (int64_t batch_size = plan.batch_size; batch_size >= 1 && batches.empty(); batch_size /= 2) {
    const bool builtin = task.file.empty();
    auto source = data::open_text_source(builtin ? "builtin:fortunes" : task.file.string());
    if (!source.ok()) return source.error();
    std::unique_ptr<data::TextSource> text = std::move(*source);
    if (builtin)
      text = data::make_split_source(std::move(text), data::SplitSide::kValidation, 0.05, 0);
    data::PackerOptions packing;
    packing.seq_len = plan.seq_len;
    auto stream = data::make_token_packer(std::move(text), tokenizer, packing);
    for (int64_t i = 0; i < plan.max_batches; ++i) {
      auto batch = data::next_batch(*stream, batch_size);
      if (!batch.ok()) return batch.error();
      if (!batch->has_value()) break;
      batches.push_back(std::move(**batch));
    }
  }
  if (batches.empty())
    return make_error("the text holds fewer than " + std::to_string(plan.seq_len + 1) +
                          " tokens (lower --seq-len)",
                      {task.file.empty() ? "builtin:fortunes" : task.file.string()});
  return batches;
}

// Probe batches of one distance, or nullopt (with the reason) when the sample does not fit.
struct ProbeSet {
  int64_t distance = 0;
  std::vector<data::Batch> batches;
};

Result<std::vector<ProbeSet>> probe_sets(PreparedTask::Kind kind, const EvalPlan& plan,
                                         const io::Tokenizer& tokenizer, int64_t context_limit,
                                         std::vector<std::string>& notes) {
  std::vector<ProbeSet> sets;
  const std::string name = kind == PreparedTask::Kind::passkey ? "passkey" : "mqar";
  for (int64_t distance : plan.distances) {
    data::LongRangeOptions options;
    options.task = kind == PreparedTask::Kind::passkey ? data::LongRangeTask::kPasskey
                                                       : data::LongRangeTask::kMqar;
    options.distances = {distance};
    options.seed = plan.seed + 5000 + static_cast<uint64_t>(distance);
    // Chunks of seq_len tokens, or the shortest longer size (from a few) that holds every
    // sample at this distance; the generator pads in front, and samples differ in length
    // (MQAR's query order).
    ProbeSet set{distance, {}};
    int64_t needed = 0;
    for (int64_t slack : {32, 64, 128, 256, 512}) {
      options.seq_len = std::max(plan.seq_len, distance + slack);
      auto made = data::make_long_range_stream(tokenizer, options);
      if (!made.ok()) continue;
      set.batches.clear();
      bool fits = true;
      for (int64_t left = plan.probe_samples; left > 0 && fits; left -= kProbeBatch) {
        auto batch = data::next_batch(**made, std::min(left, kProbeBatch));
        fits = batch.ok() && batch->has_value();
        if (fits) set.batches.push_back(std::move(**batch));
      }
      if (fits) {
        needed = options.seq_len;
        break;
      }
    }
    if (needed == 0)
      return make_error(name + ": cannot build samples at distance " + std::to_string(distance));
    if (needed > context_limit) {
      notes.push_back(name + " at distance " + std::to_string(distance) +
                      " skipped: a sample needs " + std::to_string(needed) +
                      " tokens, more than the model's context of " + std::to_string(context_limit));
      continue;
    }
    sets.push_back(std::move(set));
  }
  return sets;
}

class Recorder {
 public:
  explicit Recorder(EvalContext& context) : context_(context) {}
  void add(const std::string& task, const std::string& mode, const std::string& metric,
           double value, int64_t n) {
    results.push_back({task, mode, metric, value, n});
    if (context_.writer) (void)context_.writer->log_eval(task, mode, metric, value, n);
  }
  void note(const std::string& level, const std::string& message) {
    if (context_.progress) context_.progress->event(level, "eval", message);
    if (context_.writer) (void)context_.writer->log_event(level, "eval", message);
    if (level == "warning" && context_.warnings) context_.warnings->push_back(message);
  }
  std::vector<EvalResult> results;

 private:
  EvalContext& context_;
};

std::string format_value(double value) {
  std::ostringstream out;
  out.precision(4);
  out << value;
  return out.str();
}

const EvalResult* find_row(const std::vector<EvalResult>& rows, const std::string& task,
                           const std::string& mode, const std::string& metric) {
  const EvalResult* found = nullptr;
  for (const auto& row : rows)
    if (row.task == task && row.mode == mode && row.metric == metric) found = &row;
  return found;
}

// The cache key of the base scores: every setting that changes a task's numbers.
std::string settings_key(const PreparedEval& prepared, const EvalContext& context) {
  const EvalPlan& plan = prepared.plan;
  Fnv fnv;
  for (int64_t v : {plan.seq_len, plan.batch_size, plan.max_batches, plan.probe_samples,
                    plan.mc.limit, plan.mc.mmlu_shots, static_cast<int64_t>(plan.seed)})
    fnv.number(v);
  for (int64_t d : plan.distances)
    fnv.number(d);
  if (context.text_batches) {
    for (const auto& batch : *context.text_batches) {
      const auto tokens = batch.tokens.contiguous();
      fnv.bytes(tokens.data_ptr(), static_cast<size_t>(tokens.numel() * tokens.element_size()));
    }
  }
  return fnv.hex();
}

}  // namespace

Result<PreparedEval> prepare_evaluation(const EvalPlan& plan) {
  PreparedEval prepared;
  prepared.plan = plan;
  if (plan.tasks.empty()) return make_error("no task to evaluate");
  if (plan.seq_len < 8)
    return make_error("seq_len must be at least 8, got " + std::to_string(plan.seq_len));
  if (plan.batch_size < 1 || plan.max_batches < 1 || plan.probe_samples < 1)
    return make_error("batch size, batch count and probe samples must be >= 1");
  for (int64_t d : plan.distances)
    if (d < 1) return make_error("distances must be >= 1, got " + std::to_string(d));
  std::set<std::string> names;
  for (const std::string& spec : plan.tasks) {
    PreparedTask task;
    task.spec = spec;
    std::error_code ec;
    if (spec == "ppl" || spec == "passkey" || spec == "mqar") {
      task.name = spec;
      task.kind = spec == "ppl"       ? PreparedTask::Kind::ppl
                  : spec == "passkey" ? PreparedTask::Kind::passkey
                                      : PreparedTask::Kind::mqar;
      if (task.kind != PreparedTask::Kind::ppl && plan.distances.empty())
        return make_error("task '" + spec + "' needs at least one distance");
    } else if (spec.starts_with("ppl:") && spec.size() > 4) {
      task.kind = PreparedTask::Kind::ppl;
      task.file = spec.substr(4);
      if (!fs::is_regular_file(task.file, ec))
        return make_error("task '" + spec + "': no such file", {task.file.string()});
      if (fs::file_size(task.file, ec) == 0)
        return make_error("task '" + spec + "': the text file is empty", {task.file.string()});
      task.name = "ppl:" + task.file.stem().string();
    } else if (spec.starts_with("mc:") && spec.size() > 3) {
      task.kind = PreparedTask::Kind::mc;
      std::string rest = spec.substr(3);
      McLoadOptions options = plan.mc;
      if (auto colon = rest.find(':'); colon != std::string::npos) {
        if (auto format = parse_mc_format(rest.substr(0, colon))) {
          options.format = *format;
          rest = rest.substr(colon + 1);
        }
      }
      task.file = rest;
      if (!fs::is_regular_file(task.file, ec))
        return make_error("task '" + spec + "': no such file", {task.file.string()});
      auto loaded = load_mc_task(task.file, options);
      if (!loaded.ok()) return loaded.error();
      task.mc = std::move(*loaded);
      task.name = task.mc.name;
    } else {
      return make_error("unknown task '" + spec +
                        "' (known: ppl, ppl:FILE, passkey, mqar, mc:FILE, mc:FORMAT:FILE with "
                        "FORMAT one of generic, piqa, arc, hellaswag, winogrande, mmlu)");
    }
    if (!names.insert(task.name).second)
      return make_error("task '" + spec + "' is listed twice (as '" + task.name + "')");
    prepared.tasks.push_back(std::move(task));
  }
  if (plan.modes.empty()) return make_error("no mode to evaluate");
  for (const std::string& name : plan.modes) {
    auto mode = kernels::parse_attention_mode(name);
    if (!mode || *mode == AttentionMode::softmax)
      return make_error("unknown mode '" + name +
                        "' (known: hybrid, window_only, linear_only, sinks_only, none)");
    if (std::find(prepared.modes.begin(), prepared.modes.end(), *mode) == prepared.modes.end())
      prepared.modes.push_back(*mode);
  }
  return prepared;
}

Result<std::vector<EvalResult>> evaluate(model::CausalLM& model, const io::Tokenizer& tokenizer,
                                         const PreparedEval& prepared, EvalContext& context) {
  torch::NoGradGuard no_grad;
  model->eval();
  const bool converted = is_converted(model);
  const int64_t context_limit = max_context(model);
  Recorder record(context);
  EvalPlan plan = prepared.plan;
  if (plan.seq_len > context_limit) {
    record.note("warning", "seq_len " + std::to_string(plan.seq_len) +
                               " cut to the model's context of " + std::to_string(context_limit));
    plan.seq_len = context_limit;
  }
  const int64_t window = model_window(model, plan);
  for (const auto& task : prepared.tasks)
    for (const auto& skipped : task.mc.skipped)
      record.note("warning", "skipped malformed line: " + skipped.to_string());

  // Inputs shared by every mode, made once.
  std::map<std::string, std::vector<data::Batch>> texts;
  std::map<std::string, std::vector<ProbeSet>> probes;
  const std::vector<data::Batch>* ablation_text = nullptr;
  for (const auto& task : prepared.tasks) {
    if (task.kind == PreparedTask::Kind::ppl) {
      if (task.file.empty() && context.text_batches && !context.text_batches->empty()) continue;
      auto batches = text_batches(task, plan, tokenizer);
      if (!batches.ok()) return batches.error();
      texts[task.name] = std::move(*batches);
    } else if (task.kind != PreparedTask::Kind::mc) {
      std::vector<std::string> notes;
      auto sets = probe_sets(task.kind, plan, tokenizer, context_limit, notes);
      if (!sets.ok()) return sets.error();
      for (const auto& note : notes)
        record.note("warning", note);
      probes[task.name] = std::move(*sets);
    }
  }
  auto batches_of = [&](const PreparedTask& task) -> const std::vector<data::Batch>& {
    auto found = texts.find(task.name);
    return found != texts.end() ? found->second : *context.text_batches;
  };

  std::vector<std::pair<std::string, std::optional<AttentionMode>>> modes;
  if (converted) {
    for (AttentionMode mode : prepared.modes)
      modes.emplace_back(kernels::to_string(mode), mode);
  } else {
    modes.emplace_back(kBaseMode, std::nullopt);
  }
  for (const auto& [mode_name, mode] : modes) {
    model::ForwardOptions options;
    options.mode = mode;
    for (const auto& task : prepared.tasks) {
      if (context.cancel && context.cancel->load()) return make_error("cancelled");
      switch (task.kind) {
        case PreparedTask::Kind::ppl: {
          PositionLoss loss;
          for (const auto& batch : batches_of(task))
            loss.add(position_loss(model, batch.tokens, window, options));
          if (!ablation_text) ablation_text = &batches_of(task);
          record.add(task.name, mode_name, "ppl", loss.ppl(), loss.count);
          if (loss.within)
            record.add(task.name, mode_name, "ppl_within_w", loss.ppl_within(), loss.within);
          if (loss.beyond)
            record.add(task.name, mode_name, "ppl_beyond_w", loss.ppl_beyond(), loss.beyond);
          record.note("info", task.name + " " + mode_name + ": ppl " + format_value(loss.ppl()) +
                                  " (within w=" + std::to_string(window) + ": " +
                                  format_value(loss.ppl_within()) +
                                  ", beyond: " + format_value(loss.ppl_beyond()) + ")");
          break;
        }
        case PreparedTask::Kind::passkey:
        case PreparedTask::Kind::mqar: {
          AnswerScore total;
          for (const auto& set : probes[task.name]) {
            AnswerScore score;
            for (const auto& batch : set.batches)
              score.add(score_answers(model, batch.tokens, batch.answer_mask, options));
            total.add(score);
            record.add(task.name, mode_name, "acc@" + std::to_string(set.distance),
                       score.exact_accuracy(), score.answers);
            // Per answer token: graded where exact match of a long key is all or nothing.
            record.add(task.name, mode_name, "token_acc@" + std::to_string(set.distance),
                       score.token_accuracy(), score.tokens);
          }
          if (total.answers == 0) break;
          record.add(task.name, mode_name, "acc", total.exact_accuracy(), total.answers);
          record.add(task.name, mode_name, "token_acc", total.token_accuracy(), total.tokens);
          record.note("info", task.name + " " + mode_name + ": acc " +
                                  format_value(total.exact_accuracy()));
          break;
        }
        case PreparedTask::Kind::mc: {
          McScore score;
          for (const auto& item : task.mc.items) {
            auto scored = score_mc_item(model, tokenizer, item, context_limit, options);
            if (!scored.ok())
              return make_error(scored.error().message, {task.file.string(), item.line, ""});
            score.add(item, *scored);
          }
          record.add(task.name, mode_name, "acc", score.acc(), score.items);
          record.add(task.name, mode_name, "acc_norm", score.acc_norm(), score.items);
          record.note("info", task.name + " " + mode_name + ": acc " + format_value(score.acc()) +
                                  ", acc_norm " + format_value(score.acc_norm()));
          break;
        }
      }
    }
  }

  if (plan.layer_ablation && converted) {
    if (!ablation_text) {
      PreparedTask builtin;
      builtin.name = "ppl";
      auto batches = text_batches(builtin, plan, tokenizer);
      if (!batches.ok()) return batches.error();
      texts["<ablation>"] = std::move(*batches);
      ablation_text = &texts["<ablation>"];
    }
    const data::Batch& batch = ablation_text->front();
    const double base_loss = mean_token_loss(model, batch.tokens);
    for (int64_t layer : model->converted_layers()) {
      model::ForwardOptions options;
      options.ablate_layer = layer;
      const double delta = mean_token_loss(model, batch.tokens, options) - base_loss;
      if (context.writer)
        (void)context.writer->log_layer_scalar("ablation/loss_delta", 0, int(layer), -1, delta);
      record.add("ablation", "layer" + std::to_string(layer), "loss_delta", delta,
                 batch.tokens.size(0));
    }
  }
  if (context.writer)
    if (auto flushed = context.writer->flush(); !flushed.ok()) return flushed.error();
  return record.results;
}

Result<std::string> model_fingerprint(const fs::path& dir) {
  Fnv fnv;
  if (auto s = hash_file(fnv, dir / "config.json"); !s.ok()) return s.error();
  std::vector<fs::path> weights;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".safetensors") weights.push_back(entry.path());
  if (ec) return make_error("cannot list the model directory: " + ec.message(), {dir.string()});
  if (weights.empty()) return make_error("no *.safetensors weights", {dir.string()});
  std::sort(weights.begin(), weights.end());
  for (const auto& file : weights) {
    fnv.text(file.filename().string());
    if (auto s = hash_file(fnv, file); !s.ok()) return s.error();
  }
  return fnv.hex();
}

Result<std::vector<EvalResult>> base_scores(const std::string& db_path, const fs::path& base_dir,
                                            const PreparedEval& prepared,
                                            const model::Placement& placement,
                                            const EvalContext& context) {
  auto fingerprint = model_fingerprint(base_dir);
  if (!fingerprint.ok()) return fingerprint.error();
  const std::string settings = settings_key(prepared, context);
  const std::map<std::string, std::string> params{{"eval.fingerprint", *fingerprint},
                                                  {"eval.settings", settings}};
  std::optional<int64_t> cached;
  std::vector<EvalResult> rows;
  std::error_code ec;
  if (fs::exists(db_path, ec)) {
    auto reader = store::RunReader::open(db_path);
    if (!reader.ok()) return reader.error();
    store::RunFilter filter;
    filter.method = kBaseMethod;
    filter.params = params;
    auto runs = reader->list_runs(filter);
    if (!runs.ok()) return runs.error();
    for (const auto& run : *runs)
      if (run.info.status == store::RunStatus::completed) cached = run.info.id;
    if (cached) {
      auto evals = reader->evals({*cached});
      if (!evals.ok()) return evals.error();
      for (const auto& row : *evals)
        if (row.mode == kBaseMode)
          rows.push_back({row.task, row.mode, row.metric, row.value, row.n});
    }
  }
  PreparedEval missing = prepared;
  missing.plan.layer_ablation = false;
  missing.tasks.clear();
  for (const auto& task : prepared.tasks) {
    const bool have = std::any_of(rows.begin(), rows.end(),
                                  [&](const EvalResult& row) { return row.task == task.name; });
    if (!have) missing.tasks.push_back(task);
  }
  if (missing.tasks.empty()) return rows;

  if (context.progress)
    context.progress->event("info", "eval",
                            "evaluating the base model " + base_dir.string() + " for % of base");
  auto tokenizer = io::load_tokenizer(base_dir);
  if (!tokenizer.ok()) return tokenizer.error();
  auto base = model::load_model(base_dir, placement);
  if (!base.ok()) return base.error();
  if (is_converted(*base))
    return make_error("the base model is itself converted; % of base needs a softmax model",
                      {base_dir.string()});
  std::optional<store::RunWriter> writer;
  if (cached) {
    auto reopened = store::RunWriter::resume(db_path, *cached);
    if (!reopened.ok()) return reopened.error();
    writer.emplace(std::move(*reopened));
  } else {
    store::RunSpec spec;
    spec.name = "base:" + fs::absolute(base_dir).lexically_normal().filename().string();
    spec.base_model = base_dir.string();
    spec.method = kBaseMethod;
    spec.device = placement.device.str();
    auto created = store::RunWriter::create(db_path, spec);
    if (!created.ok()) return created.error();
    writer.emplace(std::move(*created));
    auto with_base = params;
    with_base["eval.base"] = fs::absolute(base_dir).lexically_normal().string();
    if (auto s = writer->set_params(with_base); !s.ok()) return s.error();
  }
  (void)writer->set_status(store::RunStatus::running);
  EvalContext base_context;
  base_context.writer = &*writer;
  base_context.text_batches = context.text_batches;
  base_context.cancel = context.cancel;
  auto scored = evaluate(*base, **tokenizer, missing, base_context);
  if (!scored.ok()) {
    (void)writer->set_status(store::RunStatus::failed, scored.error().message);
    (void)writer->close();
    return scored.error();
  }
  (void)writer->set_status(store::RunStatus::completed);
  if (auto s = writer->close(); !s.ok()) return s.error();
  rows.insert(rows.end(), scored->begin(), scored->end());
  return rows;
}

std::vector<EvalResult> percent_of_base(const std::vector<EvalResult>& scores,
                                        const std::vector<EvalResult>& base) {
  std::vector<EvalResult> out;
  std::set<std::pair<std::string, std::string>> done;
  for (const auto& row : scores) {
    if (row.task == "ablation" || row.mode == kBaseMode) continue;
    if (!done.insert({row.task, row.mode}).second) continue;
    const bool ppl = row.task.rfind("ppl", 0) == 0;
    const EvalResult* mine = nullptr;
    const EvalResult* theirs = nullptr;
    for (const char* metric :
         ppl ? std::vector<const char*>{"ppl"} : std::vector<const char*>{"acc_norm", "acc"}) {
      mine = find_row(scores, row.task, row.mode, metric);
      theirs = find_row(base, row.task, kBaseMode, metric);
      if (mine && theirs) break;
    }
    if (!mine || !theirs) continue;
    const double ratio = ppl ? theirs->value / mine->value : mine->value / theirs->value;
    if (!std::isfinite(ratio)) continue;  // a base accuracy of 0 has no meaningful ratio
    out.push_back({row.task, row.mode, "pct_of_base", 100.0 * ratio, mine->n});
  }
  return out;
}

Status record_summary(store::RunWriter& writer, const std::vector<EvalResult>& scores,
                      const std::vector<EvalResult>& percent) {
  std::string headline;
  for (const auto& row : scores)
    if (row.task != "ablation" && (headline.empty() || row.mode == "hybrid")) headline = row.mode;
  for (const auto& row : scores) {
    if (row.mode != headline) continue;
    if (row.task == "ppl" && row.metric == "ppl") (void)writer.set_summary("ppl", row.value);
    if (row.task != "ppl" && row.metric == "acc")
      (void)writer.set_summary(row.task + "_acc", row.value);
    if (row.metric == "acc_norm") (void)writer.set_summary(row.task + "_acc_norm", row.value);
  }
  double sum = 0;
  int count = 0;
  for (const auto& row : percent)
    if (row.mode == headline) sum += row.value, ++count;
  if (count) (void)writer.set_summary("pct_of_base", sum / count);
  return writer.flush();
}

}  // namespace hl::eval
