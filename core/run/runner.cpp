#include "core/run/runner.hpp"

#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/config/experiment_file.hpp"
#include "core/data/packing.hpp"
#include "core/eval/answers.hpp"
#include "core/eval/evaluate.hpp"
#include "core/eval/model_source.hpp"
#include "core/io/tokenizer.hpp"
#include "core/model/autocast.hpp"
#include "core/model/model_io.hpp"
#include "core/model/step_graph.hpp"
#include "core/store/run_reader.hpp"
#include "core/store/run_writer.hpp"
#include "core/store/schema.hpp"
#include "core/train/adamw.hpp"
#include "core/train/checkpoint.hpp"
#include "core/train/lr_schedule.hpp"
#include "core/train/objectives.hpp"
#include "core/train/ssd.hpp"
#include "core/util/paths.hpp"

namespace hl {

namespace fs = std::filesystem;
using kernels::AttentionMode;

namespace {

constexpr int kExitOk = 0, kExitInternal = 1, kExitBadInput = 2, kExitCancelled = 130;

// ---------------------------------------------------------------------------------------
// Experiment -> store parameters

void flatten(const toml::node& node, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (const auto* table = node.as_table()) {
    for (const auto& [key, value] : *table)
      flatten(value,
              prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str()), out);
  } else if (const auto* array = node.as_array()) {
    if (array->is_array_of_tables()) {
      for (size_t i = 0; i < array->size(); ++i)
        flatten(*array->get(i), prefix + "[" + std::to_string(i) + "]", out);
    } else {
      std::ostringstream text;
      text << *array;
      out[prefix] = text.str();
    }
  } else if (const auto* text = node.as_string()) {
    out[prefix] = text->get();
  } else {
    std::ostringstream value;
    node.visit([&](const auto& leaf) { value << leaf; });
    out[prefix] = value.str();
  }
}

std::map<std::string, std::string> experiment_params(const ExperimentSpec& spec) {
  std::map<std::string, std::string> params;
  try {
    flatten(toml::parse(to_toml(spec)), "", params);
  } catch (const toml::parse_error&) {
    assert(false && "to_toml must produce valid TOML");
  }
  return params;
}

std::string method_name(const ExperimentSpec& spec) {
  std::string method = spec.attention.kind == "softmax" ? "softmax" : "custom";
  bool ssd = false;
  for (const auto& stage : spec.stages) {
    if (stage.ssd) ssd = true;
    if (stage.kind != kAttentionTransfer) continue;
    if (stage.transfer.objective == "hybrid_output")
      method = "lolcats";
    else if (stage.transfer.objective == "linear_output")
      method = "linear_then_hybrid";
    else
      method = "hedgecats";
  }
  return ssd ? method + "+ssd" : method;
}

// ---------------------------------------------------------------------------------------
// Data

struct Data {
  std::unique_ptr<io::Tokenizer> tokenizer;
  std::unique_ptr<data::ChunkStream> train;
  std::vector<data::Batch> val;
  int64_t consumed = 0;  // batches drawn from `train`
};

data::TextFormat text_format(const std::string& name) {
  if (name == "text") return data::TextFormat::kPlain;
  if (name == "jsonl") return data::TextFormat::kJson;
  if (name == "alpaca") return data::TextFormat::kInstruction;
  return data::TextFormat::kAuto;
}

Result<std::unique_ptr<data::ChunkStream>> packed_stream(const ExperimentSpec& spec,
                                                         const std::vector<std::string>& files,
                                                         data::SplitSide side, bool split,
                                                         const io::Tokenizer& tokenizer) {
  std::vector<data::WeightedStream> parts;
  for (const auto& file : files) {
    auto source = data::open_text_source(file, text_format(spec.data.format), spec.data.text_field);
    if (!source.ok()) return make_error(source.error().to_string(), {"", 0, "data.train"});
    std::unique_ptr<data::TextSource> text = std::move(*source);
    if (split)
      text = data::make_split_source(std::move(text), side, spec.data.val_fraction,
                                     static_cast<uint64_t>(spec.seed));
    data::PackerOptions packing;
    packing.seq_len = spec.data.seq_len;
    packing.loop = side == data::SplitSide::kTrain;
    parts.push_back({data::make_token_packer(std::move(text), tokenizer, packing), 1.0});
  }
  if (side == data::SplitSide::kTrain) {
    for (auto [task, weight] : {std::pair{data::LongRangeTask::kPasskey, spec.data.passkey_weight},
                                std::pair{data::LongRangeTask::kMqar, spec.data.mqar_weight}}) {
      if (weight <= 0) continue;
      data::LongRangeOptions options;
      options.task = task;
      options.seq_len = spec.data.seq_len;
      options.distances = spec.eval.distances;
      options.seed = static_cast<uint64_t>(spec.seed) + 101 + static_cast<uint64_t>(task);
      auto stream = data::make_long_range_stream(tokenizer, options);
      if (!stream.ok()) return stream.error();
      parts.push_back({std::move(*stream), weight});
    }
    // Text parts share the weight that the generated tasks leave.
    double generated = spec.data.passkey_weight + spec.data.mqar_weight;
    const size_t text_parts = files.size();
    for (size_t i = 0; i < text_parts; ++i)
      parts[i].weight = std::max(1e-6, 1.0 - std::min(generated, 0.95)) / double(text_parts);
  }
  if (parts.size() == 1) return std::move(parts.front().stream);
  return data::make_mixed_stream(std::move(parts), static_cast<uint64_t>(spec.seed));
}

Result<Data> open_data(const ExperimentSpec& spec, const fs::path& base) {
  Data out;
  auto tokenizer = io::load_tokenizer(base);
  if (!tokenizer.ok()) return tokenizer.error();
  out.tokenizer = std::move(*tokenizer);
  const bool split = spec.data.val.empty();
  auto train = packed_stream(spec, spec.data.train, data::SplitSide::kTrain, split, *out.tokenizer);
  if (!train.ok()) return train.error();
  out.train = std::move(*train);
  auto val = packed_stream(spec, split ? spec.data.train : spec.data.val,
                           data::SplitSide::kValidation, split, *out.tokenizer);
  if (!val.ok()) return val.error();
  int64_t wanted = spec.eval.max_batches;
  for (const auto& stage : spec.stages)
    wanted = std::max(wanted, stage.eval_batches);
  for (int64_t i = 0; i < wanted; ++i) {
    auto batch = data::next_batch(**val, spec.data.batch_size);
    if (!batch.ok()) return batch.error();
    if (!batch->has_value()) break;
    out.val.push_back(std::move(**batch));
  }
  if (out.val.empty())
    return make_error(
        "the validation text holds less than one batch of " + std::to_string(spec.data.batch_size) +
            " x " + std::to_string(spec.data.seq_len + 1) +
            " tokens (a plain-text file is one document, so val_fraction cannot split it: give "
            "data.val files, or lower data.seq_len or data.batch_size)",
        {"", 0, "data"});
  return out;
}

Result<data::Batch> next_train_batch(Data& data, int64_t batch_size) {
  auto batch = data::next_batch(*data.train, batch_size);
  if (!batch.ok()) return batch.error();
  if (!batch->has_value())
    return make_error("the training data holds less than one batch", {"", 0, "data.train"});
  ++data.consumed;
  return std::move(**batch);
}

// ---------------------------------------------------------------------------------------
// Model set-up per stage

model::ConversionOptions conversion_options(const AttentionSpec& a) {
  model::ConversionOptions c;
  c.kind = a.kind == "linear" ? AttentionMode::linear_only : AttentionMode::hybrid;
  c.window = a.window;
  c.overlap = a.overlap;
  c.feature_map = *kernels::parse_feature_map_kind(a.feature_map);
  c.feature_dim = a.feature_dim;
  c.feature_init = a.feature_init == "kaiming" ? kernels::FeatureMapInit::kaiming_uniform
                                               : kernels::FeatureMapInit::identity;
  c.window_factor_init = a.window_factor_init;
  c.affine_factors = a.affine_factors;
  c.sinks = a.sinks;
  c.softmax_layers = a.softmax_layers;
  return c;
}

// Why the stage's steps cannot replay a captured CUDA graph; empty where they can.
std::string step_graph_unsupported(const StageSpec& stage, const torch::Device& device) {
  if (const char* env = std::getenv("HL_STEP_GRAPH"); env && std::string(env) == "0")
    return "HL_STEP_GRAPH=0";
  if (std::string why = model::StepGraph::unsupported(device); !why.empty()) return why;
  if (stage.kind == kLoraFinetune && stage.lora.dropout > 0) return "LoRA dropout draws noise";
  return {};
}

// Attaches the stage's adapters (LoRA stages) and returns the parameters it trains, in a
// fixed order (the optimiser's state is saved and loaded in that order).
std::vector<torch::Tensor> prepare_stage(model::CausalLM& model, const StageSpec& stage) {
  for (auto& p : model->parameters())
    p.set_requires_grad(false);
  std::vector<torch::Tensor> trainable;
  const bool lora = stage.kind == kLoraFinetune;
  if (lora) {
    bool attached = false;
    for (int64_t layer = 0; layer < model->num_layers() && !attached; ++layer)
      attached = model::projection(model, layer, stage.lora.targets.front())->has_lora();
    if (!attached)
      model::attach_lora(model, stage.lora.rank, stage.lora.alpha, stage.lora.dropout,
                         stage.lora.targets, stage.lora.layers);
  }
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    const bool is_lora = name.find(".lora.") != std::string::npos;
    const bool is_conversion = model::is_conversion_parameter(name) && !is_lora;
    if ((lora && is_lora) || (is_conversion && (!lora || stage.lora.train_feature_maps))) {
      item.value().set_requires_grad(true);
      trainable.push_back(item.value());
    }
  }
  return trainable;
}

double resident_memory_mb() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

void set_window(model::CausalLM& model, int64_t window) {
  for (int64_t layer : model->converted_layers())
    model->attention(layer)->set_window(window);
}

// ---------------------------------------------------------------------------------------
// One run

// The compute dtype of `[model] autocast` (checked before a run starts); nullopt for "none".
std::optional<torch::ScalarType> autocast_dtype(const std::string& name) {
  if (name == "none") return std::nullopt;
  auto dtype = model::parse_dtype_name(name);
  return dtype.ok() ? std::optional<torch::ScalarType>(*dtype) : std::nullopt;
}

class Runner {
 public:
  Runner(ExperimentSpec spec, model::CausalLM model, Data data, store::RunWriter writer,
         train::CheckpointStore checkpoints, torch::Device device, ProgressReporter& progress,
         const std::atomic<bool>& cancel, int64_t max_steps)
      : spec_(std::move(spec)),
        model_(std::move(model)),
        data_(std::move(data)),
        writer_(std::move(writer)),
        checkpoints_(std::move(checkpoints)),
        device_(device),
        progress_(progress),
        cancel_(cancel),
        max_steps_(max_steps) {}

  // Trains every stage from `state` on; returns the exit code.
  int train(train::TrainingState state, bool resuming);
  // The [eval] section: perplexity and long-range probes per mode, layer ablation.
  Status evaluate();
  Status save_final_model();

  store::RunWriter& writer() { return writer_; }

 private:
  struct StepResult {
    double loss = 0;
    std::map<std::string, double> scalars;
    std::vector<double> per_layer;
    std::vector<model::LayerUsage> usage;
  };

  // What a step leaves on the device to read: the loss and attention transfer's logged parts.
  struct StepLoss {
    torch::Tensor loss, transfer_parts;
  };
  // The stage's step as a CUDA graph (model::StepGraph), where the stage allows one.
  struct GraphedStep {
    std::unique_ptr<model::StepGraph> graph;
    std::shared_ptr<void> stream;  // the graph's stream, current for the whole stage
    // The captured step's inputs per micro-batch (tokens, SSD's drop masks per layer), copied
    // into before each replay, and its losses.
    std::vector<torch::Tensor> tokens;
    std::vector<std::vector<torch::Tensor>> drops;
    std::vector<StepLoss> losses;
    int64_t window = 0;       // the converted layers' window at the capture (a launch argument)
    int64_t eager_steps = 0;  // on the graph's stream so far
  };

  Result<StepResult> run_step(const StageSpec& stage, const torch::Tensor& tokens, bool want_usage,
                              const std::vector<torch::Tensor>& drop, bool training);
  // The forward, the loss and (training) the backward of `tokens` (on the device), nothing read.
  StepLoss queue_step(const StageSpec& stage, const torch::Tensor& tokens,
                      model::ForwardOptions options, bool training);
  Result<StepResult> read_loss(const StageSpec& stage, const StepLoss& queued);
  // One optimiser step as a replay of the stage's captured step (capturing it first); empty
  // where this step runs eagerly instead.
  Result<std::optional<StepResult>> graphed_step(
      const StageSpec& stage, GraphedStep& graphed, const std::vector<data::Batch>& batches,
      const std::vector<std::vector<torch::Tensor>>& drops,
      const std::vector<torch::Tensor>& trainable, train::AdamW& optimizer);
  Result<double> validation_loss(const StageSpec& stage);
  void log_usage(const std::vector<model::LayerUsage>& usage, int64_t step);
  Status checkpoint(const train::TrainingState& state, torch::optim::Optimizer* optimizer) {
    // What was logged before the checkpoint must be on disk before it: a resume replays
    // only the steps after it, so rows still in the writer's batch would be lost in a kill.
    if (Status flushed = writer_.flush(); !flushed.ok()) return flushed;
    return checkpoints_.save(state, model_, optimizer);
  }

  ExperimentSpec spec_;
  model::CausalLM model_;
  Data data_;
  store::RunWriter writer_;
  train::CheckpointStore checkpoints_;
  torch::Device device_;
  ProgressReporter& progress_;
  const std::atomic<bool>& cancel_;
  int64_t max_steps_;
  double last_loss_ = NAN;
  std::optional<torch::ScalarType> autocast_ = autocast_dtype(spec_.model.autocast);
};

Result<Runner::StepResult> Runner::run_step(const StageSpec& stage, const torch::Tensor& tokens,
                                            bool want_usage, const std::vector<torch::Tensor>& drop,
                                            bool training) {
  const torch::Tensor on_device = tokens.to(device_);
  model::ForwardOptions options;
  options.window_drop = drop;
  // Usage describes the hybrid as it runs at inference: a layer whose window SSD dropped in
  // this step would show linear mass 1 whatever it learned, so it is measured without drops.
  const bool any_drop = std::any_of(drop.begin(), drop.end(), [](const torch::Tensor& mask) {
    return mask.defined() && mask.any().item<bool>();
  });
  std::vector<model::LayerUsage> usage;
  options.want_usage = want_usage && !any_drop;
  options.usage = &usage;
  // The backward is queued before the loss is read (which waits for the forward), so that on a
  // GPU the host queues it while the forward runs; a loss that is not finite stops the run
  // here, before the optimiser step could spoil the weights.
  auto result = read_loss(stage, queue_step(stage, on_device, options, training));
  if (!result.ok()) return result;
  result->usage = std::move(usage);
  if (want_usage && any_drop) {
    torch::NoGradGuard no_grad;
    model::ForwardOptions measure;
    measure.want_usage = true;
    measure.usage = &result->usage;
    measure.stop_after_layer = model_->converted_layers().back();
    model_->hidden_states(on_device.narrow(1, 0, on_device.size(1) - 1), measure);
  }
  return result;
}

Runner::StepLoss Runner::queue_step(const StageSpec& stage, const torch::Tensor& tokens,
                                    model::ForwardOptions options, bool training) {
  const int64_t n = tokens.size(1) - 1;
  const torch::Tensor inputs = tokens.narrow(1, 0, n);
  StepLoss queued;
  // The forward and the loss only: backward follows the dtypes the forward recorded.
  std::optional<model::AutocastScope> autocast;
  if (autocast_) autocast.emplace(*autocast_);
  if (stage.kind == kAttentionTransfer) {
    std::vector<model::TransferPair> pairs;
    options.transfer = &pairs;
    options.transfer_student_mode =
        stage.train_mode == "linear_only" ? AttentionMode::linear_only : AttentionMode::hybrid;
    options.transfer_weights = stage.transfer.xent_factor > 0;
    options.stop_after_layer = model_->converted_layers().back();
    model_->hidden_states(inputs, options);
    train::TransferLoss transfer =
        train::transfer_loss(pairs, stage.transfer.mse_factor, stage.transfer.xent_factor);
    queued.loss = transfer.total;
    queued.transfer_parts = transfer.logged;
  } else {
    options.mode =
        stage.train_mode == "linear_only" ? AttentionMode::linear_only : AttentionMode::hybrid;
    queued.loss = train::next_token_loss(model_->forward(inputs, options), tokens.narrow(1, 1, n));
  }
  autocast.reset();
  if (training) (queued.loss / double(stage.grad_accum)).backward();
  return queued;
}

Result<Runner::StepResult> Runner::read_loss(const StageSpec& stage, const StepLoss& queued) {
  StepResult result;
  if (stage.kind == kAttentionTransfer) {
    const train::TransferLossValues values = train::transfer_loss_values(queued.transfer_parts);
    result.loss = values.total;
    result.per_layer = values.per_layer;
    if (stage.transfer.mse_factor > 0) result.scalars["loss/mse"] = values.mse;
    if (stage.transfer.xent_factor > 0) result.scalars["loss/xent"] = values.xent;
  } else {
    result.loss = queued.loss.item<double>();
  }
  if (!std::isfinite(result.loss))
    return make_error("the loss became " + std::to_string(result.loss) + " (try a lower lr)");
  return result;
}

Result<std::optional<Runner::StepResult>> Runner::graphed_step(
    const StageSpec& stage, GraphedStep& graphed, const std::vector<data::Batch>& batches,
    const std::vector<std::vector<torch::Tensor>>& drops,
    const std::vector<torch::Tensor>& trainable, train::AdamW& optimizer) {
  // Eager steps on the graph's stream first: the capture needs the workspaces (cuBLAS's, the
  // allocator's blocks) and the optimiser state that they make.
  constexpr int64_t kEagerStepsBeforeCapture = 3;
  const size_t micro_batches = batches.size();
  // SSD's window schedule changes the window a few times a stage: each value is captured anew.
  const int64_t window = model_->attention(model_->converted_layers().front())->conversion().window;
  if (graphed.graph->captured() && window != graphed.window) graphed.graph->reset();
  if (!graphed.graph->captured()) {
    if (graphed.eager_steps < kEagerStepsBeforeCapture || !optimizer.capturable())
      return std::optional<StepResult>();
    graphed.tokens.clear();
    graphed.drops.assign(micro_batches, {});
    for (size_t m = 0; m < micro_batches; ++m) {
      graphed.tokens.push_back(batches[m].tokens.to(device_));
      for (const auto& mask : drops[m])
        graphed.drops[m].push_back(mask.to(device_));  // CUDA: a copy of its own
    }
    // Gradients set to none: the captured backward makes them, at addresses the replays keep
    // (the micro-batches after the first add to them).
    for (auto& p : trainable)
      p.mutable_grad() = torch::Tensor();
    try {
      graphed.graph->capture([&] {
        graphed.losses.clear();
        std::vector<torch::Tensor> totals;
        for (size_t m = 0; m < micro_batches; ++m) {
          model::ForwardOptions options;
          options.window_drop = graphed.drops[m];
          graphed.losses.push_back(queue_step(stage, graphed.tokens[m], options, true));
          totals.push_back(graphed.losses.back().loss.to(torch::kFloat32));
        }
        // A loss that is not finite leaves the weights as they were (read after the replay).
        optimizer.skip_when(
            torch::stack(totals).isfinite().all().logical_not().to(torch::kFloat32));
        if (stage.max_grad_norm > 0) train::clip_grad_norm(trainable, stage.max_grad_norm);
        optimizer.step();
      });
    } catch (const std::runtime_error& e) {
      optimizer.skip_when({});
      graphed.graph.reset();  // eager steps from here on
      (void)writer_.log_event("warning", "graph", e.what());
      progress_.event("warning", "graph", e.what());
      return std::optional<StepResult>();
    }
    optimizer.skip_when({});
    graphed.window = window;
    (void)writer_.log_event("info", "graph",
                            "stage " + stage.name +
                                ": its steps replay a CUDA graph (captured after " +
                                std::to_string(graphed.eager_steps) + " eager steps, window " +
                                std::to_string(window) + ")");
  }
  for (size_t m = 0; m < micro_batches; ++m) {
    if (!batches[m].tokens.sizes().equals(graphed.tokens[m].sizes()) ||
        drops[m].size() != graphed.drops[m].size())
      return std::optional<StepResult>();
  }
  for (size_t m = 0; m < micro_batches; ++m) {
    graphed.tokens[m].copy_(batches[m].tokens);
    for (size_t l = 0; l < drops[m].size(); ++l)
      graphed.drops[m][l].copy_(drops[m][l]);
  }
  optimizer.before_replay();
  graphed.graph->replay();
  // As the eager step: the first micro-batch's parts, the mean of their losses.
  auto result = read_loss(stage, graphed.losses.front());
  if (!result.ok()) return result.error();
  for (size_t m = 1; m < micro_batches; ++m) {
    auto more = read_loss(stage, graphed.losses[m]);
    if (!more.ok()) return more.error();
    result->loss += more->loss;
  }
  result->loss /= double(micro_batches);
  return std::optional<StepResult>(std::move(*result));
}

Result<double> Runner::validation_loss(const StageSpec& stage) {
  torch::NoGradGuard no_grad;
  model_->eval();
  double sum = 0;
  int64_t count = 0;
  for (const auto& batch : data_.val) {
    if (count >= stage.eval_batches) break;
    auto step = run_step(stage, batch.tokens, false, {}, false);
    if (!step.ok()) return step.error();
    sum += step->loss;
    ++count;
  }
  model_->train();
  return sum / double(std::max<int64_t>(count, 1));
}

void Runner::log_usage(const std::vector<model::LayerUsage>& usage, int64_t step) {
  for (const auto& layer : usage) {
    const int l = static_cast<int>(layer.layer);
    for (auto [key, values] : {std::pair{"usage/linear_mass", layer.linear_mass},
                               std::pair{"usage/linear_output_share", layer.linear_output_share}}) {
      auto accessor = values.accessor<float, 1>();
      for (int64_t h = 0; h < values.size(0); ++h)
        (void)writer_.log_layer_scalar(key, step, l, int(h), accessor[h]);
      (void)writer_.log_layer_scalar(key, step, l, -1, values.mean().item<double>());
    }
  }
  for (int64_t layer : model_->converted_layers()) {
    torch::Tensor g = torch::sigmoid(model_->attention(layer)->window_factors.detach()).cpu();
    for (int64_t h = 0; h < g.size(0); ++h)
      (void)writer_.log_layer_scalar("usage/window_factor", step, int(layer), int(h),
                                     g[h].item<double>());
    (void)writer_.log_layer_scalar("usage/window_factor", step, int(layer), -1,
                                   g.mean().item<double>());
  }
}

int Runner::train(train::TrainingState state, bool resuming) {
  const int stages = static_cast<int>(spec_.stages.size());
  // Stages before the resumed one only need their adapters attached (their weights come
  // from the checkpoint).
  for (int64_t s = 0; s < std::min<int64_t>(state.stage, stages); ++s)
    prepare_stage(model_, spec_.stages[s]);
  if (resuming && state.stage >= stages) {  // training was done; evaluation was not
    if (auto restored = checkpoints_.restore(model_, nullptr); !restored.ok()) {
      (void)writer_.set_status(store::RunStatus::failed, restored.error().to_string());
      return kExitInternal;
    }
    return kExitOk;
  }
  int64_t steps_this_process = 0;

  for (int64_t s = state.stage; s < stages; ++s) {
    const StageSpec& stage = spec_.stages[s];
    std::vector<torch::Tensor> trainable = prepare_stage(model_, stage);
    if (trainable.empty()) {
      (void)writer_.set_status(store::RunStatus::failed,
                               "stage " + stage.name + " has nothing to train");
      return kExitBadInput;
    }
    train::AdamW optimizer(trainable,
                           torch::optim::AdamWOptions(stage.lr).weight_decay(stage.weight_decay));
    train::LrScheduleKind kind = train::LrScheduleKind::constant;
    train::parse_lr_schedule(stage.lr_schedule, &kind);
    train::LrSchedule schedule(kind, stage.lr, stage.steps, stage.warmup_steps,
                               stage.plateau_factor, stage.plateau_patience);
    train::SsdGranularity granularity = train::SsdGranularity::layer;
    if (stage.ssd) train::parse_ssd_granularity(stage.ssd->granularity, &granularity);
    train::SsdSampler ssd(granularity, static_cast<uint64_t>(spec_.seed) * 7919 + uint64_t(s));

    if (resuming && s == state.stage) {
      if (auto restored = checkpoints_.restore(model_, &optimizer); !restored.ok()) {
        (void)writer_.set_status(store::RunStatus::failed, restored.error().to_string());
        return kExitInternal;
      }
      schedule.restore(state.lr);
      if (!state.ssd_rng.empty()) ssd.restore_state(state.ssd_rng);
      if (!state.torch_rng.empty()) (void)train::restore_torch_rng(state.torch_rng);
      for (int64_t i = data_.consumed; i < state.batches_consumed; ++i)
        if (auto skipped = next_train_batch(data_, spec_.data.batch_size); !skipped.ok()) break;
      (void)writer_.log_event(
          "info", "resume",
          "resumed stage " + stage.name + " at step " + std::to_string(state.step));
      progress_.event("info", "resume",
                      "stage " + stage.name + " from step " + std::to_string(state.step));
    } else {
      state.step = 0;
      state.best_val = std::numeric_limits<double>::infinity();
      state.evals_without_improvement = 0;
      state.ssd_dropped = state.ssd_units = 0;
    }
    resuming = false;
    // On CUDA the steps replay one captured step where the stage allows (the host's time per
    // step goes; bench/RESULTS.md, Conversion training).
    GraphedStep graphed;
    if (const std::string why = step_graph_unsupported(stage, device_); why.empty()) {
      graphed.graph = std::make_unique<model::StepGraph>(device_);
      graphed.stream = graphed.graph->use_stream();
    } else if (device_.is_cuda()) {
      (void)writer_.log_event("info", "graph",
                              "stage " + stage.name + " runs its steps eagerly: " + why);
    }
    model_->train();
    progress_.begin_phase(stage.name, int(s), stages, stage.steps);
    (void)writer_.log_event("info", "stage",
                            "stage " + std::to_string(s) + " (" + stage.kind + ") started");

    auto snapshot = [&]() {
      state.stage = s;
      state.lr = schedule.state();
      state.ssd_rng = ssd.save_state();
      state.torch_rng = train::save_torch_rng();
      state.batches_consumed = data_.consumed;
      return checkpoint(state, &optimizer);
    };
    if (state.step == 0) {
      if (auto saved = snapshot(); !saved.ok()) {
        (void)writer_.set_status(store::RunStatus::failed, saved.error().to_string());
        return kExitInternal;
      }
    }

    auto last_time = std::chrono::steady_clock::now();
    int64_t tokens_since = 0;
    bool stopped_early = false;
    for (; state.step < stage.steps; ++state.step) {
      if (cancel_.load() || (max_steps_ > 0 && steps_this_process >= max_steps_)) {
        auto saved = snapshot();
        (void)writer_.log_event("warning", "cancel",
                                "cancelled at step " + std::to_string(state.step));
        (void)writer_.set_status(store::RunStatus::cancelled,
                                 saved.ok()
                                     ? "cancelled; resume with --resume "
                                     : "cancelled; checkpoint failed: " + saved.error().message);
        progress_.finished("cancelled", "checkpoint written");
        return kExitCancelled;
      }
      const int64_t step = state.step;
      const int64_t logged_step = state.global_step;
      double p = 0;
      if (stage.ssd) {
        p = schedule_value(stage.ssd->swa_dropout, step, stage.steps);
        if (stage.ssd->window)
          set_window(model_,
                     int64_t(std::lround(schedule_value(*stage.ssd->window, step, stage.steps))));
      }
      const double lr = schedule.lr_at(step);
      for (auto& group : optimizer.param_groups())
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      const bool want_usage = step % stage.usage_every == 0 || step + 1 == stage.steps;

      // The step's micro-batches and, under SSD, their drop masks, drawn in the same order
      // whether the step replays the graph or runs eagerly.
      std::vector<data::Batch> batches;
      std::vector<std::vector<torch::Tensor>> drops(stage.grad_accum);
      for (int64_t micro = 0; micro < stage.grad_accum; ++micro) {
        auto batch = next_train_batch(data_, spec_.data.batch_size);
        if (!batch.ok()) {
          (void)writer_.set_status(store::RunStatus::failed, batch.error().to_string());
          return kExitBadInput;
        }
        if (stage.ssd) {
          train::SsdDraw draw = ssd.draw(p, model_->num_layers(), batch->tokens.size(0),
                                         model_->config().num_attention_heads);
          state.ssd_dropped += draw.dropped_units;
          state.ssd_units += draw.units;
          drops[micro] = std::move(draw.masks);
        }
        tokens_since += batch->tokens.size(0) * (batch->tokens.size(1) - 1);
        batches.push_back(std::move(*batch));
      }
      auto fail = [&](const Error& error) {
        (void)writer_.set_status(store::RunStatus::failed, error.to_string());
        progress_.finished("failed", error.to_string());
        return kExitInternal;
      };
      std::optional<StepResult> replayed;
      if (graphed.graph && !want_usage) {
        auto tried = graphed_step(stage, graphed, batches, drops, trainable, optimizer);
        if (!tried.ok()) return fail(tried.error());
        replayed = std::move(*tried);
      }
      StepResult result;
      if (replayed) {
        result = std::move(*replayed);
      } else {
        optimizer.zero_grad();
        for (int64_t micro = 0; micro < stage.grad_accum; ++micro) {
          std::vector<torch::Tensor> drop;
          for (const auto& mask : drops[micro])
            drop.push_back(mask.to(device_));
          auto micro_result =
              run_step(stage, batches[micro].tokens, want_usage && micro == 0, drop, true);
          if (!micro_result.ok()) return fail(micro_result.error());
          if (micro == 0)
            result = std::move(*micro_result);
          else
            result.loss += micro_result->loss;
        }
        result.loss /= double(stage.grad_accum);
        if (stage.max_grad_norm > 0) train::clip_grad_norm(trainable, stage.max_grad_norm);
        optimizer.step();
        ++graphed.eager_steps;
      }
      ++steps_this_process;
      ++state.global_step;
      last_loss_ = result.loss;

      if (want_usage) log_usage(result.usage, logged_step);
      if (step % stage.log_every == 0 || step + 1 == stage.steps) {
        auto now = std::chrono::steady_clock::now();
        const double seconds = std::chrono::duration<double>(now - last_time).count();
        const double rate = double(tokens_since) / std::max(seconds, 1e-9);
        last_time = now;
        tokens_since = 0;
        result.scalars["loss"] = result.loss;
        result.scalars["lr"] = lr;
        result.scalars["tokens_per_s"] = rate;
        result.scalars["memory_mb"] = resident_memory_mb();
        if (!model_->converted_layers().empty())
          result.scalars["window"] =
              double(model_->attention(model_->converted_layers().front())->conversion().window);
        if (stage.ssd) {
          result.scalars["ssd/p"] = p;
          result.scalars["ssd/realised"] =
              state.ssd_units ? double(state.ssd_dropped) / double(state.ssd_units) : 0.0;
        }
        for (const auto& [key, value] : result.scalars)
          (void)writer_.log_scalar(key, logged_step, value);
        auto layers = model_->converted_layers();
        for (size_t i = 0; i < result.per_layer.size() && i < layers.size(); ++i)
          (void)writer_.log_scalar("loss/layer/" + std::to_string(layers[i]), logged_step,
                                   result.per_layer[i]);
        progress_.step(step + 1, result.scalars, rate);
      }
      const bool eval_now = (step + 1) % stage.eval_every == 0 || step + 1 == stage.steps;
      if (eval_now) {
        auto val = validation_loss(stage);
        if (!val.ok()) {
          (void)writer_.set_status(store::RunStatus::failed, val.error().to_string());
          return kExitInternal;
        }
        (void)writer_.log_scalar("val/loss", logged_step, *val);
        if (schedule.report_validation(*val))
          (void)writer_.log_event(
              "info", "lr", "learning rate reduced to " + std::to_string(schedule.lr_at(step + 1)));
        if (*val < state.best_val) {
          state.best_val = *val;
          state.evals_without_improvement = 0;
          (void)checkpoints_.save_best(model_, s);
        } else if (stage.early_stop_patience > 0 &&
                   ++state.evals_without_improvement >= stage.early_stop_patience) {
          (void)writer_.log_event(
              "info", "early_stop",
              "stage " + stage.name + " stopped early at step " + std::to_string(step + 1));
          progress_.event("info", "early_stop", "at step " + std::to_string(step + 1));
          stopped_early = true;
        }
      }
      if ((step + 1) % stage.checkpoint_every == 0 && step + 1 < stage.steps) {
        state.step = step + 1;
        if (auto saved = snapshot(); !saved.ok())
          (void)writer_.log_event("error", "checkpoint", saved.error().to_string());
        state.step = step;
      }
      if (stopped_early) break;
    }
    // Keep the best weights of the stage (best on validation, as LoLCATs does).
    if (auto restored = checkpoints_.restore_best(model_, s); restored.ok() && *restored)
      (void)writer_.log_event("info", "best",
                              "stage " + stage.name + " keeps its best weights (val " +
                                  std::to_string(state.best_val) + ")");
    if (stage.ssd) set_window(model_, spec_.attention.window);
    state.stage = s + 1;
    state.step = 0;
    (void)writer_.set_summary("final_loss", last_loss_);
    (void)writer_.set_summary("stage" + std::to_string(s) + "/best_val", state.best_val);
  }
  // A completed training leaves a checkpoint past the last stage, so a resume goes straight
  // to evaluation.
  state.stage = stages;
  state.batches_consumed = data_.consumed;
  (void)checkpoint(state, nullptr);
  return kExitOk;
}

Status Runner::evaluate() {
  // The same code path as `hybridlab-cli eval`: the run's validation batches serve "ppl".
  const EvalSpec& spec = spec_.eval;
  eval::EvalPlan plan;
  plan.tasks = spec.tasks;
  plan.modes = spec.modes;
  plan.seq_len = spec.seq_len > 0 ? spec.seq_len : spec_.data.seq_len;
  plan.batch_size = spec_.data.batch_size;
  plan.max_batches = spec.max_batches;
  plan.distances = spec.distances;
  plan.layer_ablation = spec.layer_ablation;
  plan.seed = static_cast<uint64_t>(spec_.seed);
  auto prepared = eval::prepare_evaluation(plan);
  if (!prepared.ok()) return make_error(prepared.error().to_string(), {"", 0, "eval"});
  std::vector<data::Batch> text(
      data_.val.begin(),
      data_.val.begin() + std::min<int64_t>(spec.max_batches, int64_t(data_.val.size())));
  eval::EvalContext context;
  context.writer = &writer_;
  context.progress = &progress_;
  context.text_batches = &text;
  context.cancel = &cancel_;
  auto results = eval::evaluate(model_, *data_.tokenizer, *prepared, context);
  if (!results.ok()) return results.error();
  std::vector<eval::EvalResult> percent;
  auto dtype = model::parse_dtype_name(spec_.model.dtype);
  if (dtype.ok()) {
    auto base = eval::base_scores(writer_.db_path(), spec_.model.base, *prepared, {*dtype, device_},
                                  context);
    if (base.ok()) {
      percent = eval::percent_of_base(*results, *base);
      for (const auto& row : percent)
        (void)writer_.log_eval(row.task, row.mode, row.metric, row.value, row.n);
    } else {
      progress_.event("warning", "eval", "no % of base: " + base.error().to_string());
    }
  }
  return eval::record_summary(writer_, *results, percent);
}

Status Runner::save_final_model() {
  const fs::path out = checkpoints_.dir() / "model";
  model_->to(torch::kCPU);
  Status saved = model::save_model(model_, out);
  model_->to(device_);
  if (!saved.ok()) return saved;
  // The converted model keeps its base model's tokenizer.
  if (Status copied = model::copy_tokenizer_files(spec_.model.base, out); !copied.ok())
    return copied;
  return writer_.add_artifact("model", out.string(), R"({"format":"hf","lora":"separate"})");
}

// ---------------------------------------------------------------------------------------

RunOutcome bad_input(const std::string& message) {
  return {kExitBadInput, 0, message};
}

std::string looked_in(const fs::path& experiment_dir) {
  return "looked in the working directory, " +
         (experiment_dir.empty() ? std::string(".") : experiment_dir.string()) + " and " +
         default_data_dir().string();
}

// Relative model and data paths are looked up where a user would expect them (see
// find_experiment_path); the spec then holds absolute paths.
Status resolve_experiment_paths(ExperimentSpec& spec, const std::string& experiment_path) {
  const fs::path experiment_dir = fs::path(experiment_path).parent_path();
  auto base = find_experiment_path(spec.model.base, experiment_dir);
  std::error_code ec;
  if (!base || !fs::is_directory(*base, ec)) {
    std::string hint;
    if (fs::path(spec.model.base).filename() == "tiny-base")
      hint = " (make the demo model with `hybridlab-cli pretrain --preset tiny`; it goes to " +
             default_pretrain_dir("tiny").string() + ")";
    return make_error(
        "'" + spec.model.base + "' is not a model directory; " + looked_in(experiment_dir) + hint,
        {experiment_path, 0, "model.base"});
  }
  spec.model.base = base->string();
  for (auto* files : {&spec.data.train, &spec.data.val}) {
    for (std::string& file : *files) {
      if (file.rfind("builtin:", 0) == 0) continue;
      auto found = find_experiment_path(file, experiment_dir);
      if (!found)
        return make_error(
            "data file '" + file + "' not found; " + looked_in(experiment_dir),
            {experiment_path, 0, files == &spec.data.train ? "data.train" : "data.val"});
      file = found->string();
    }
  }
  return Status::Ok();
}

}  // namespace

Status export_run_model(const std::string& db_path, const std::string& run_reference,
                        const std::filesystem::path& out_dir, bool merge_lora) {
  auto from = eval::find_run_model(db_path, run_reference);
  if (!from.ok()) return from.error();
  auto model = model::load_model(from->dir);
  if (!model.ok()) return model.error();
  if (merge_lora) model::merge_lora(*model);
  if (Status saved = model::save_model(*model, out_dir); !saved.ok()) return saved;
  return model::copy_tokenizer_files(from->dir, out_dir);
}

std::string checkpoint_dir_for(const std::string& db_path, const std::string& run_uuid) {
  fs::path db = fs::absolute(db_path);
  return (db.parent_path() / "checkpoints" / run_uuid).string();
}

RunOutcome run_experiment(const RunRequest& request, ProgressReporter& progress,
                          const std::atomic<bool>& cancel) {
  try {
    const std::string db_path =
        request.db_path.empty() ? store::default_db_path() : request.db_path;
    ExperimentSpec spec;
    std::optional<int64_t> resume_id;
    std::optional<train::TrainingState> resume_state;
    std::string run_uuid;

    if (!request.resume.empty()) {
      auto reader = store::RunReader::open(db_path);
      if (!reader.ok()) return bad_input(reader.error().to_string());
      auto id = reader->find_run(request.resume);
      if (!id.ok()) return bad_input("--resume: " + id.error().to_string());
      auto info = reader->run(*id);
      if (!info.ok()) return bad_input(info.error().to_string());
      if (info->status == store::RunStatus::completed)
        return bad_input("run " + std::to_string(*id) + " is already completed");
      auto parsed = parse_experiment(info->experiment, "run " + std::to_string(*id));
      if (!parsed.ok()) return bad_input(parsed.errors.front().to_string());
      spec = *parsed.spec;
      resume_id = *id;
      run_uuid = info->uuid;
      auto state = train::CheckpointStore(checkpoint_dir_for(db_path, run_uuid)).latest_state();
      if (!state.ok()) return bad_input(state.error().to_string());
      if (!state->has_value())
        return bad_input("run " + std::to_string(*id) + " has no checkpoint to resume from");
      resume_state = **state;
    } else {
      ExperimentParse parsed = load_experiment_file(request.experiment_path);
      if (!parsed.ok()) return bad_input(parsed.errors.front().to_string());
      spec = *parsed.spec;
      // Stored absolute, so that a resume finds the same files from any directory.
      if (auto resolved = resolve_experiment_paths(spec, request.experiment_path); !resolved.ok())
        return bad_input(resolved.error().to_string());
    }

    // Everything that can be wrong with the inputs is checked before the run is recorded.
    auto device = model::resolve_device(request.device_override.empty() ? spec.model.device
                                                                        : request.device_override);
    if (!device.ok()) return bad_input(device.error().message);
    if (spec.model.autocast != "none" && !device->is_cuda())
      return bad_input("model.autocast = \"" + spec.model.autocast +
                       "\" runs on CUDA only, but this run's device is " + device->str());
    auto dtype = model::parse_dtype_name(spec.model.dtype);
    if (!dtype.ok()) return bad_input(dtype.error().message);
    const fs::path base = spec.model.base;
    torch::manual_seed(static_cast<uint64_t>(spec.seed));
    auto model = model::load_model(base, {*dtype, *device});
    if (!model.ok()) return bad_input("model.base: " + model.error().to_string());
    // A base that is already converted (an exported run) keeps its conversion and trains on.
    const bool already_converted = !(*model)->converted_layers().empty();
    if (spec.attention.kind != "softmax" && !already_converted)
      (*model)->convert(conversion_options(spec.attention));
    if ((*model)->converted_layers().empty())
      return bad_input(
          "attention: no layer is converted (kind is softmax or every layer is in softmax_layers)");
    auto data = open_data(spec, base);
    if (!data.ok()) return bad_input(data.error().to_string());

    std::optional<store::RunWriter> writer;
    if (resume_id) {
      auto reopened = store::RunWriter::resume(db_path, *resume_id);
      if (!reopened.ok()) return {kExitInternal, 0, reopened.error().to_string()};
      writer.emplace(std::move(*reopened));
    } else {
      store::RunSpec run;
      run.name = spec.name;
      run.experiment = to_toml(spec);
      run.base_model = spec.model.base;
      run.device = device->str();
      run.method = method_name(spec);
      auto created = store::RunWriter::create(db_path, run);
      if (!created.ok()) return {kExitInternal, 0, created.error().to_string()};
      writer.emplace(std::move(*created));
      (void)writer->set_params(experiment_params(spec));
    }
    const int64_t run_id = writer->run_id();
    const std::string checkpoint_dir = checkpoint_dir_for(db_path, writer->uuid());
    progress.run_started(run_id, writer->uuid(), db_path);
    (void)writer->set_status(store::RunStatus::running);
    (void)writer->add_artifact("checkpoints", checkpoint_dir);

    Runner runner(spec, std::move(*model), std::move(*data), std::move(*writer),
                  train::CheckpointStore(checkpoint_dir), *device, progress, cancel,
                  request.max_steps);
    train::TrainingState state;
    if (resume_state) state = *resume_state;
    int code = kExitOk;
    try {
      code = runner.train(state, resume_state.has_value());
    } catch (const std::exception& error) {
      (void)runner.writer().set_status(store::RunStatus::failed, error.what());
      (void)runner.writer().close();
      progress.finished("failed", error.what());
      return {kExitInternal, run_id, error.what()};
    }
    if (code != kExitOk) {
      (void)runner.writer().close();
      return {code, run_id, code == kExitCancelled ? "cancelled" : "failed"};
    }
    progress.begin_phase("evaluation", int(spec.stages.size()), int(spec.stages.size()) + 1, 1);
    if (auto evaluated = runner.evaluate(); !evaluated.ok()) {
      (void)runner.writer().set_status(store::RunStatus::failed, evaluated.error().to_string());
      (void)runner.writer().close();
      progress.finished("failed", evaluated.error().to_string());
      return {kExitInternal, run_id, evaluated.error().to_string()};
    }
    if (auto saved = runner.save_final_model(); !saved.ok())
      (void)runner.writer().log_event("error", "export", saved.error().to_string());
    (void)runner.writer().set_status(store::RunStatus::completed);
    (void)runner.writer().close();
    progress.finished("completed", "");
    return {kExitOk, run_id, "completed"};
  } catch (const std::exception& error) {
    progress.finished("failed", error.what());
    return {kExitInternal, 0, error.what()};
  }
}

}  // namespace hl
