// Pretraining of a small softmax base model from scratch, so that the project has real
// trained weights to convert without downloading any: natural text (fortunes by default)
// mixed with generated long-range tasks, so the model learns to use context beyond the
// window sizes a conversion uses.
#pragma once

#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

#include "core/io/hf_config.hpp"
#include "core/run/progress.hpp"
#include "core/util/error.hpp"

namespace hl::train {

/// A model size with its training recipe.
struct PretrainPreset {
  std::string name;
  io::ModelConfig config;  ///< vocab_size is set from the tokenizer
  int64_t seq_len = 256;
  int64_t batch_size = 16;
  int64_t steps = 600;
  double lr = 3e-3;
  int64_t warmup_steps = 30;
  double passkey_weight = 0.5;
  double mqar_weight = 0.1;
  /// Extra weight of the loss on answer tokens of the generated tasks: they are a few tokens
  /// in a long sample, and without it retrieval forms too late for a CPU-sized budget.
  double answer_loss_weight = 1.0;
  std::vector<int64_t> distances;       ///< passkey distances trained on and evaluated
  std::vector<int64_t> mqar_distances;  ///< recall distances (its samples are longer)
};

/// "tiny" (CPU, a few minutes on 2 cores) or "small" (GPU, tens of millions of parameters).
Result<PretrainPreset> pretrain_preset(const std::string& name);

/// What to pretrain and where to put it.
struct PretrainRequest {
  PretrainPreset preset;
  std::filesystem::path out_dir;
  std::vector<std::string> corpus{"builtin:fortunes"};
  std::string device = "cpu";
  uint64_t seed = 0;
};

/// Quality of the finished model, also written to out_dir/pretrain_report.json.
struct PretrainReport {
  double val_loss = 0;      ///< next-token loss on held-out text (nats)
  double unigram_loss = 0;  ///< the same text under the training unigram distribution
  std::vector<std::pair<int64_t, double>> passkey_accuracy;        ///< (distance, exact accuracy)
  std::vector<std::pair<int64_t, double>> passkey_token_accuracy;  ///< (distance, per digit)
  double seconds = 0;
  int64_t steps = 0;
  int64_t parameters = 0;
};

/// Trains the preset and saves an HF-layout directory (config.json, model.safetensors,
/// tokenizer.json, tokenizer_config.json). Stops early (saving what it has) when `cancel`
/// becomes true.
Result<PretrainReport> pretrain(const PretrainRequest& request, ProgressReporter& progress,
                                const std::atomic<bool>* cancel = nullptr);

}  // namespace hl::train
