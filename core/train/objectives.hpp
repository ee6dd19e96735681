// Training losses: attention transfer (per-head output MSE and Hedgehog attention-weight
// cross-entropy, DESIGN §2) and next-token cross-entropy.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "core/model/decoder.hpp"

namespace hl::train {

/// The attention-transfer loss of one forward and its parts.
struct TransferLoss {
  torch::Tensor total;  ///< mse_factor * mse + xent_factor * xent (differentiable)
  /// Detached float32 on the loss's device: total, mse, xent, then each pair's weighted loss.
  /// Reading it waits for the forward, so callers read it (transfer_loss_values) once the
  /// backward is queued.
  torch::Tensor logged;
};

/// TransferLoss::logged on the host.
struct TransferLossValues {
  double total = 0;
  double mse = 0;                 ///< mean over converted layers of the per-layer MSE
  double xent = 0;                ///< mean over converted layers of the per-layer CE
  std::vector<double> per_layer;  ///< weighted loss of each pair, in pair order
};

/// Copies the logged parts to the host (one copy; it waits for the kernels that make them).
TransferLossValues transfer_loss_values(const torch::Tensor& logged);

/// mse_factor * MSE(student, teacher) + xent_factor * CE(teacher weights, student weights),
/// each a mean over elements (rows for CE) and then over the converted layers. Student
/// weights are clamped at 1e-12 before the log.
TransferLoss transfer_loss(const std::vector<model::TransferPair>& pairs, double mse_factor,
                           double xent_factor);

/// Mean next-token cross-entropy of logits [B, N, V] against targets [B, N].
torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace hl::train
