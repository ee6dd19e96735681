#include "core/train/objectives.hpp"

namespace hl::train {

TransferLoss transfer_loss(const std::vector<model::TransferPair>& pairs, double mse_factor,
                           double xent_factor) {
  TORCH_CHECK(!pairs.empty(), "attention transfer needs at least one converted layer");
  torch::Tensor total, mse_sum, xent_sum;
  std::vector<torch::Tensor> per_layer;
  auto add = [](torch::Tensor& sum, const torch::Tensor& x) { sum = sum.defined() ? sum + x : x; };
  for (const auto& pair : pairs) {
    torch::Tensor layer_loss;
    if (mse_factor > 0) {
      torch::Tensor mse =
          (pair.student.to(torch::kFloat32) - pair.teacher.to(torch::kFloat32)).pow(2).mean();
      add(mse_sum, mse.detach());
      layer_loss = mse_factor * mse;
    }
    if (xent_factor > 0) {
      TORCH_CHECK(pair.student_weights.defined() && pair.teacher_weights.defined(),
                  "cross-entropy transfer needs attention weights");
      torch::Tensor log_student = pair.student_weights.to(torch::kFloat32).clamp_min(1e-12).log();
      torch::Tensor xent = -(pair.teacher_weights.to(torch::kFloat32) * log_student).sum(-1).mean();
      add(xent_sum, xent.detach());
      layer_loss = layer_loss.defined() ? layer_loss + xent_factor * xent : xent_factor * xent;
    }
    per_layer.push_back(layer_loss.detach());
    add(total, layer_loss);
  }
  const double layers = double(pairs.size());
  TransferLoss loss;
  loss.total = total / layers;
  const torch::Tensor zero = torch::zeros({}, loss.total.options().dtype(torch::kFloat32));
  std::vector<torch::Tensor> logged{loss.total.detach().to(torch::kFloat32),
                                    mse_sum.defined() ? mse_sum / layers : zero,
                                    xent_sum.defined() ? xent_sum / layers : zero};
  logged.insert(logged.end(), per_layer.begin(), per_layer.end());
  loss.logged = torch::stack(logged);
  return loss;
}

TransferLossValues transfer_loss_values(const torch::Tensor& logged) {
  const torch::Tensor host = logged.to(torch::kCPU, torch::kDouble).contiguous();
  const double* v = host.data_ptr<double>();
  TransferLossValues values;
  values.total = v[0];
  values.mse = v[1];
  values.xent = v[2];
  values.per_layer.assign(v + 3, v + host.numel());
  return values;
}

torch::Tensor next_token_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}));
}

}  // namespace hl::train
