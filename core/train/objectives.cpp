#include "core/train/objectives.hpp"

namespace hl::train {

TransferLoss transfer_loss(const std::vector<model::TransferPair>& pairs, double mse_factor,
                           double xent_factor) {
  TORCH_CHECK(!pairs.empty(), "attention transfer needs at least one converted layer");
  TransferLoss loss;
  torch::Tensor total;
  for (const auto& pair : pairs) {
    torch::Tensor layer_loss;
    if (mse_factor > 0) {
      torch::Tensor mse = (pair.student.to(torch::kFloat32) - pair.teacher.to(torch::kFloat32))
                              .pow(2)
                              .mean();
      loss.mse += mse.item<double>() / double(pairs.size());
      layer_loss = mse_factor * mse;
    }
    if (xent_factor > 0) {
      TORCH_CHECK(pair.student_weights.defined() && pair.teacher_weights.defined(),
                  "cross-entropy transfer needs attention weights");
      torch::Tensor log_student = pair.student_weights.to(torch::kFloat32).clamp_min(1e-12).log();
      torch::Tensor xent = -(pair.teacher_weights.to(torch::kFloat32) * log_student).sum(-1).mean();
      loss.xent += xent.item<double>() / double(pairs.size());
      layer_loss = layer_loss.defined() ? layer_loss + xent_factor * xent : xent_factor * xent;
    }
    loss.per_layer.push_back(layer_loss.item<double>());
    total = total.defined() ? total + layer_loss : layer_loss;
  }
  loss.total = total / double(pairs.size());
  return loss;
}

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}));
}

}  // namespace hl::train
