// The typed experiment: what an experiment TOML file resolves to, every field with its default.
// Enumerated fields are strings (the names users write); the allowed names are listed in
// hl::choices so editors can offer them and consumers can map them to their own enums.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config/schedule.hpp"
#include "core/util/error.hpp"

namespace hl {

namespace choices {
inline constexpr std::array<std::string_view, 3> kDtypes{"float32", "bfloat16", "float16"};
inline constexpr std::array<std::string_view, 3> kDevices{"auto", "cpu", "cuda"};
/// Compute precision of training steps on CUDA: "none" keeps model.dtype throughout.
inline constexpr std::array<std::string_view, 2> kAutocast{"none", "bfloat16"};
inline constexpr std::array<std::string_view, 4> kDataFormats{"auto", "text", "jsonl", "alpaca"};
inline constexpr std::array<std::string_view, 3> kAttentionKinds{"softmax", "linear", "hybrid"};
inline constexpr std::array<std::string_view, 7> kFeatureMaps{
    "hedgehog", "hedgehog_full", "exp", "t2r", "relu", "elu", "identity"};
inline constexpr std::array<std::string_view, 2> kFeatureInits{"identity", "kaiming"};
inline constexpr std::array<std::string_view, 2> kStageKinds{"attention_transfer", "lora_finetune"};
inline constexpr std::array<std::string_view, 3> kLrSchedules{"constant", "cosine", "plateau"};
inline constexpr std::array<std::string_view, 2> kTrainModes{"hybrid", "linear_only"};
inline constexpr std::array<std::string_view, 3> kObjectives{"hybrid_output", "linear_output",
                                                             "attention_weights"};
inline constexpr std::array<std::string_view, 7> kLoraTargets{"q",    "k",  "v",   "o",
                                                              "gate", "up", "down"};
inline constexpr std::array<std::string_view, 4> kSsdGranularities{"step", "layer", "head",
                                                                   "sequence"};
inline constexpr std::array<std::string_view, 5> kEvalModes{"hybrid", "window_only", "linear_only",
                                                            "sinks_only", "none"};
/// Eval tasks without an argument; "ppl:PATH" and "mc:PATH" take a file.
inline constexpr std::array<std::string_view, 3> kPlainEvalTasks{"ppl", "passkey", "mqar"};
}  // namespace choices

inline constexpr std::string_view kAttentionTransfer = "attention_transfer";
inline constexpr std::string_view kLoraFinetune = "lora_finetune";

/// Alpaca-style instruction prompt; {instruction}, {input} and {output} are filled per example.
inline constexpr std::string_view kDefaultPromptTemplate =
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}";

/// [model]: the pretrained checkpoint to convert.
struct ModelSpec {
  std::string base;  ///< Hugging Face layout directory; required
  std::string dtype = "float32";
  std::string device = "auto";
  /// "bfloat16": training steps compute matrix products in bf16 (CUDA autocast) while the
  /// weights stay in model.dtype = float32.
  std::string autocast = "none";

  bool operator==(const ModelSpec&) const = default;
};

/// [data]: training / validation text and how it is batched.
struct DataSpec {
  std::vector<std::string> train{"builtin:fortunes"};  ///< paths or "builtin:<name>"
  std::vector<std::string> val;                        ///< empty: split val_fraction off train
  std::string format = "auto";
  std::string text_field = "text";  ///< JSON field holding the text for format "jsonl"
  std::string prompt_template{kDefaultPromptTemplate};
  int64_t seq_len = 256;
  int64_t batch_size = 8;
  double val_fraction = 0.05;
  double passkey_weight = 0.0;   ///< weight of generated passkey-retrieval sequences in the mix
  double mqar_weight = 0.0;      ///< weight of generated multi-query associative recall sequences
  int64_t max_train_tokens = 0;  ///< 0 = no limit

  bool operator==(const DataSpec&) const = default;
};

/// [attention]: what the converted attention layers are.
struct AttentionSpec {
  std::string kind = "hybrid";
  int64_t window = 64;
  bool overlap = false;  ///< linear branch also covers the window
  std::string feature_map = "hedgehog";
  int64_t feature_dim = 64;
  std::string feature_init = "identity";
  double window_factor_init = 0.1;
  bool affine_factors = false;          ///< linear factor 1 - g_h instead of 1
  std::vector<int64_t> softmax_layers;  ///< layers kept as full softmax attention
  int64_t sinks = 8;                    ///< tokens the sinks_only diagnostic attends to

  bool operator==(const AttentionSpec&) const = default;
};

/// Scheduled sliding-window dropout of one stage.
struct SsdSpec {
  Schedule swa_dropout{{0.9, 0.75, 0.5}, {}};  ///< probability of dropping the window branch
  std::optional<Schedule> window;              ///< window sizes; absent = attention.window
  std::string granularity = "layer";

  bool operator==(const SsdSpec&) const = default;
};

/// Options of attention_transfer stages (left at their defaults in other stages).
struct TransferOptions {
  std::string objective = "hybrid_output";
  double mse_factor = 1000.0;
  double xent_factor = 0.0;

  bool operator==(const TransferOptions&) const = default;
};

/// Options of lora_finetune stages (left at their defaults in other stages).
struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::vector<std::string> targets{"q", "k", "v", "o"};
  std::vector<int64_t> layers;  ///< empty = every converted layer
  bool train_feature_maps = false;

  bool operator==(const LoraOptions&) const = default;
};

/// One [[stage]]. The member defaults are those of an attention_transfer stage; use
/// default_stage() for another kind.
struct StageSpec {
  std::string kind{kAttentionTransfer};
  std::string name{kAttentionTransfer};
  int64_t steps = 400;
  double lr = 1e-2;
  double weight_decay = 0.0;
  std::string lr_schedule = "plateau";
  int64_t warmup_steps = 0;
  double plateau_factor = 0.1;
  int64_t plateau_patience = 10;
  int64_t grad_accum = 1;
  double max_grad_norm = 1.0;  ///< 0 = no clipping
  int64_t log_every = 10;
  int64_t usage_every = 50;
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t early_stop_patience = 0;  ///< evaluations without improvement; 0 = off
  int64_t checkpoint_every = 100;
  std::string train_mode = "hybrid";  ///< attention mode the student trains in
  std::optional<SsdSpec> ssd;         ///< absent = no SSD
  TransferOptions transfer;
  LoraOptions lora;

  bool operator==(const StageSpec&) const = default;
};

/// [eval]: what is measured after training.
struct EvalSpec {
  std::vector<std::string> tasks{"ppl"};
  std::vector<std::string> modes{"hybrid"};
  int64_t seq_len = 0;  ///< 0 = data.seq_len
  int64_t max_batches = 16;
  std::vector<int64_t> distances{16, 32, 64, 128, 256};  ///< passkey / recall distances
  bool layer_ablation = false;

  bool operator==(const EvalSpec&) const = default;
};

/// A whole experiment file. Default-constructed it is not valid yet: it lacks model.base and
/// stages.
struct ExperimentSpec {
  std::string name = "experiment";
  int64_t seed = 0;
  std::string description;
  ModelSpec model;
  DataSpec data;
  AttentionSpec attention;
  std::vector<StageSpec> stages;  ///< the [[stage]] tables, run in order
  EvalSpec eval;

  bool operator==(const ExperimentSpec&) const = default;
};

/// A stage of `kind` with that kind's defaults (name, lr, lr_schedule).
StageSpec default_stage(std::string_view kind);

/// Transfer options with the defaults for `objective` (attention_weights: CE only).
TransferOptions default_transfer_options(std::string_view objective);

/// The train_mode an attention_transfer objective implies ("hybrid" or "linear_only").
std::string_view train_mode_for_objective(std::string_view objective);

/// Range and combination checks; each error's key is a dotted path such as
/// "stage[1].ssd.granularity" (stage indices from 0) and its file/line are left empty.
std::vector<Error> validate(const ExperimentSpec& spec);

}  // namespace hl
