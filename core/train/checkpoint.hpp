// Training checkpoints: the trainable weights, the optimiser, the schedule, the random
// generators and the data position, written so that a crash at any moment leaves the last
// complete checkpoint readable (each checkpoint is a folder that is renamed into place,
// and a small pointer file, itself replaced atomically, names the newest one).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <limits>
#include <optional>
#include <string>

#include "core/model/decoder.hpp"
#include "core/train/lr_schedule.hpp"
#include "core/util/error.hpp"

namespace hl::train {

/// Where a run stands; enough, with the weights and optimiser, to continue it exactly.
struct TrainingState {
  int64_t stage = 0;             ///< index of the stage in progress
  int64_t step = 0;              ///< next step of that stage
  int64_t global_step = 0;       ///< logged step of the next step (continues across stages)
  int64_t batches_consumed = 0;  ///< training batches drawn so far (data position)
  LrSchedule::State lr;
  std::string ssd_rng;    ///< SsdSampler state
  std::string torch_rng;  ///< LibTorch CPU generator state, hex
  double best_val = std::numeric_limits<double>::infinity();
  int64_t evals_without_improvement = 0;
  int64_t ssd_dropped = 0, ssd_units = 0;  ///< realised-rate counters of the stage
};

/// The checkpoints of one run, in one folder.
class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  /// Writes a checkpoint of the model's conversion weights (feature maps, window factors,
  /// LoRA adapters), the optimiser (if any) and the state; keeps only the newest two.
  Status save(const TrainingState& state, model::CausalLM& model,
              torch::optim::Optimizer* optimizer);
  /// The newest complete checkpoint's state, or nullopt when there is none.
  Result<std::optional<TrainingState>> latest_state() const;
  /// Loads the newest checkpoint's weights into `model` and, if given, the optimiser.
  Status restore(model::CausalLM& model, torch::optim::Optimizer* optimizer) const;

  /// Keeps the conversion weights as the best of `stage` so far.
  Status save_best(model::CausalLM& model, int64_t stage);
  /// Loads the best weights of `stage` back; false when none were saved.
  Result<bool> restore_best(model::CausalLM& model, int64_t stage) const;

  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

/// The LibTorch CPU generator state as hex text, and back.
std::string save_torch_rng();
Status restore_torch_rng(const std::string& hex);

}  // namespace hl::train
