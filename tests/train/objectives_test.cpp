// The attention-transfer loss and its logged parts, against the definition in float64.
#include "core/train/objectives.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace {

// Three layers' pairs: random outputs and row-normalised attention weights, never zero.
std::vector<hl::model::TransferPair> random_pairs() {
  torch::manual_seed(3);
  std::vector<hl::model::TransferPair> pairs;
  for (int64_t layer : {0, 2, 5}) {
    hl::model::TransferPair pair;
    pair.layer = layer;
    pair.student = torch::randn({2, 3, 5, 4}).requires_grad_();
    pair.teacher = torch::randn({2, 3, 5, 4});
    pair.student_weights = torch::softmax(torch::randn({2, 3, 5, 5}), -1).requires_grad_();
    pair.teacher_weights = torch::softmax(torch::randn({2, 3, 5, 5}), -1);
    pairs.push_back(pair);
  }
  return pairs;
}

TEST(TransferLoss, LoggedPartsMatchTheDefinition) {
  const auto pairs = random_pairs();
  const double mse_factor = 0.7, xent_factor = 0.2;
  const hl::train::TransferLoss loss = hl::train::transfer_loss(pairs, mse_factor, xent_factor);
  const hl::train::TransferLossValues values = hl::train::transfer_loss_values(loss.logged);

  double mse = 0, xent = 0, total = 0;
  std::vector<double> per_layer;
  for (const auto& pair : pairs) {
    const auto s = pair.student.detach().to(torch::kDouble), t = pair.teacher.to(torch::kDouble);
    const double layer_mse = (s - t).pow(2).mean().item<double>();
    const auto sw = pair.student_weights.detach().to(torch::kDouble);
    const auto tw = pair.teacher_weights.to(torch::kDouble);
    const double layer_xent = -(tw * sw.log()).sum(-1).mean().item<double>();
    mse += layer_mse / 3;
    xent += layer_xent / 3;
    per_layer.push_back(mse_factor * layer_mse + xent_factor * layer_xent);
    total += per_layer.back() / 3;
  }
  // float32 arithmetic against float64: 1e-5 relative.
  EXPECT_NEAR(values.mse, mse, 1e-5 * mse);
  EXPECT_NEAR(values.xent, xent, 1e-5 * xent);
  EXPECT_NEAR(values.total, total, 1e-5 * total);
  EXPECT_NEAR(loss.total.item<double>(), total, 1e-5 * total);
  ASSERT_EQ(values.per_layer.size(), per_layer.size());
  for (size_t i = 0; i < per_layer.size(); ++i)
    EXPECT_NEAR(values.per_layer[i], per_layer[i], 1e-5 * per_layer[i]) << "pair " << i;

  // The logged parts carry no graph; the total does, into the students only.
  EXPECT_FALSE(loss.logged.requires_grad());
  loss.total.backward();
  for (const auto& pair : pairs) {
    EXPECT_GT(pair.student.grad().abs().sum().item<double>(), 0.0);
    EXPECT_GT(pair.student_weights.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(TransferLoss, PartsNotAskedForAreZero) {
  const auto pairs = random_pairs();
  const auto values =
      hl::train::transfer_loss_values(hl::train::transfer_loss(pairs, 1.0, 0.0).logged);
  EXPECT_GT(values.mse, 0.0);
  EXPECT_EQ(values.xent, 0.0);
  EXPECT_NEAR(values.total, values.mse, 1e-6 * values.mse);
}

}  // namespace
