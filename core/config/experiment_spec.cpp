#include "core/config/experiment_spec.hpp"

namespace hl {

StageSpec default_stage(std::string_view kind) {
  StageSpec stage;
  stage.kind = std::string(kind);
  stage.name = std::string(kind);
  if (kind == kLoraFinetune) {
    stage.lr = 1e-4;
    stage.lr_schedule = "constant";
  }
  return stage;
}

TransferOptions default_transfer_options(std::string_view objective) {
  TransferOptions options;
  options.objective = std::string(objective);
  if (objective == "attention_weights") {
    // Hedgehog-style transfer matches attention weights only.
    options.mse_factor = 0.0;
    options.xent_factor = 1.0;
  }
  return options;
}

std::string_view train_mode_for_objective(std::string_view objective) {
  return objective == "hybrid_output" ? "hybrid" : "linear_only";
}

}  // namespace hl
