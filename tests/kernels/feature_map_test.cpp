// Feature maps of DESIGN §1: each kind against its formula, shapes, per-head weights,
// initialisations, the 1e-12 clamp and bad input.
#include "kernels/feature_map.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace hl::kernels {
namespace {

constexpr int64_t kHeads = 3, kDim = 6, kProjection = 4;

FeatureMap make_map(FeatureMapKind kind, FeatureMapInit init = FeatureMapInit::kaiming_uniform,
                    bool bias = false) {
  FeatureMapOptions options;
  options.kind = kind;
  options.heads = kHeads;
  options.head_dim = kDim;
  options.feature_dim = kProjection;
  options.init = init;
  options.bias = bias;
  FeatureMap map(options);
  map->to(torch::kDouble);
  return map;
}

// r = x W_h (+ b_h), head by head with explicit loops over heads.
torch::Tensor projection(const FeatureMap& map, const torch::Tensor& x) {
  std::vector<torch::Tensor> heads;
  for (int64_t h = 0; h < x.size(1); ++h) {
    auto r = torch::matmul(x.select(1, h), map->weight[h]);
    if (map->bias.defined()) r = r + map->bias[h];
    heads.push_back(r);
  }
  return torch::stack(heads, 1);
}

torch::Tensor softmax_by_hand(const torch::Tensor& r) {
  const auto e = torch::exp(r - std::get<0>(r.max(-1, true)));
  return e / e.sum(-1, true);
}

class FeatureMapKinds : public ::testing::TestWithParam<FeatureMapKind> {};

TEST_P(FeatureMapKinds, MatchesItsFormula) {
  const FeatureMapKind kind = GetParam();
  torch::manual_seed(3);
  auto map = make_map(kind, FeatureMapInit::kaiming_uniform, /*bias=*/true);
  const auto x = torch::randn({2, kHeads, 5, kDim}, torch::kDouble) * 2;
  const auto phi = map->forward(x);
  const auto r = projection(map, x);
  torch::Tensor expected;
  switch (kind) {
    case FeatureMapKind::hedgehog:
    case FeatureMapKind::hedgehog_full:
      expected = torch::cat({softmax_by_hand(r), softmax_by_hand(-r)}, -1).clamp(1e-12);
      break;
    case FeatureMapKind::exp:
      expected = torch::cat({torch::exp(r - std::get<0>(r.max(-1, true))),
                             torch::exp(-r + std::get<0>(r.min(-1, true)))},
                            -1)
                     .clamp(1e-12);
      break;
    case FeatureMapKind::t2r:
    case FeatureMapKind::relu:
      expected = torch::where(r > 0, r, torch::zeros_like(r)).clamp(1e-12);
      break;
    case FeatureMapKind::elu:
      expected = torch::where(r > 0, 1 + r, torch::exp(r)).clamp(1e-12);
      break;
    case FeatureMapKind::identity:
      expected = r;
      break;
  }
  ASSERT_EQ(phi.sizes(), expected.sizes());
  EXPECT_EQ(phi.size(3), map->feature_count());
  EXPECT_TRUE(torch::allclose(phi, expected, 1e-12, 1e-14));
  if (kind != FeatureMapKind::identity) {
    EXPECT_GE(phi.min().item<double>(), 1e-12);
  } else {
    EXPECT_LT(phi.min().item<double>(), 0.0);  // no clamp
  }
  // Gradients reach the per-head weights.
  phi.sum().backward();
  ASSERT_TRUE(map->weight.grad().defined());
  EXPECT_EQ(map->weight.grad().sizes(), map->weight.sizes());
}

INSTANTIATE_TEST_SUITE_P(AllKinds, FeatureMapKinds,
                         ::testing::Values(FeatureMapKind::hedgehog, FeatureMapKind::hedgehog_full,
                                           FeatureMapKind::t2r, FeatureMapKind::elu,
                                           FeatureMapKind::relu, FeatureMapKind::exp,
                                           FeatureMapKind::identity),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(FeatureMap, FeatureCountsAndParameters) {
  EXPECT_EQ(make_map(FeatureMapKind::hedgehog)->feature_count(), 2 * kProjection);
  EXPECT_EQ(make_map(FeatureMapKind::hedgehog_full)->feature_count(), 2 * kDim);
  EXPECT_EQ(make_map(FeatureMapKind::hedgehog_full)->weight.sizes(),
            (std::vector<int64_t>{kHeads, kDim, kDim}));
  EXPECT_EQ(make_map(FeatureMapKind::exp)->feature_count(), 2 * kProjection);
  EXPECT_EQ(make_map(FeatureMapKind::relu)->feature_count(), kProjection);
  EXPECT_EQ(make_map(FeatureMapKind::elu)->feature_count(), kProjection);
  // t2r always carries a bias; the others only on request.
  EXPECT_TRUE(make_map(FeatureMapKind::t2r)->bias.defined());
  EXPECT_EQ(make_map(FeatureMapKind::t2r)->parameters().size(), 2u);
  EXPECT_FALSE(make_map(FeatureMapKind::hedgehog)->bias.defined());
  EXPECT_EQ(make_map(FeatureMapKind::hedgehog)->parameters().size(), 1u);
}

TEST(FeatureMap, IdentityInitialisationProjectsOntoTheFirstCoordinates) {
  torch::manual_seed(5);
  auto map = make_map(FeatureMapKind::identity, FeatureMapInit::identity, /*bias=*/true);
  const auto x = torch::randn({2, kHeads, 7, kDim}, torch::kDouble);
  EXPECT_TRUE(torch::equal(map->forward(x), x.narrow(3, 0, kProjection)));
  EXPECT_EQ(map->bias.abs().max().item<double>(), 0.0);
  // Hedgehog with eye(d, p): softmax of the first p coordinates.
  auto hedgehog = make_map(FeatureMapKind::hedgehog, FeatureMapInit::identity);
  const auto r = x.narrow(3, 0, kProjection);
  EXPECT_TRUE(torch::allclose(hedgehog->forward(x).narrow(3, 0, kProjection), softmax_by_hand(r),
                              1e-12, 1e-14));
}

TEST(FeatureMap, KaimingInitialisationIsBoundedAndNotIdentity) {
  torch::manual_seed(6);
  auto map = make_map(FeatureMapKind::hedgehog, FeatureMapInit::kaiming_uniform);
  const double bound = 1.0 / std::sqrt(static_cast<double>(kDim));
  EXPECT_LE(map->weight.abs().max().item<double>(), bound);
  EXPECT_GT(map->weight.std().item<double>(), 0.3 * bound);
  EXPECT_FALSE(torch::equal(map->weight[0], map->weight[1]));
}

TEST(FeatureMap, EachHeadUsesItsOwnWeight) {
  torch::manual_seed(7);
  auto map = make_map(FeatureMapKind::relu, FeatureMapInit::identity);
  const auto x = torch::randn({1, kHeads, 4, kDim}, torch::kDouble);
  const auto before = map->forward(x).detach();
  {
    torch::NoGradGuard no_grad;
    map->weight[1].mul_(-1);
  }
  const auto after = map->forward(x).detach();
  EXPECT_TRUE(torch::equal(before.select(1, 0), after.select(1, 0)));
  EXPECT_TRUE(torch::equal(before.select(1, 2), after.select(1, 2)));
  EXPECT_FALSE(torch::equal(before.select(1, 1), after.select(1, 1)));
}

// Grouped-query k: a single kv head serves all three maps, as if repeated to each; its gradient
// is the sum of the three maps' gradients.
TEST(FeatureMap, OneInputHeadServesItsGroupOfMaps) {
  torch::manual_seed(8);
  auto map = make_map(FeatureMapKind::hedgehog);
  const auto k = torch::randn({2, 1, 5, kDim}, torch::kDouble).requires_grad_(true);
  const auto repeated = k.detach().repeat_interleave(kHeads, 1).requires_grad_(true);
  const auto dphi = torch::randn({2, kHeads, 5, 2 * kProjection}, torch::kDouble);
  const auto phi = map->forward(k);
  const auto want = map->forward(repeated);
  EXPECT_TRUE(torch::allclose(phi, want, 0, 1e-14));
  phi.backward(dphi);
  want.backward(dphi);
  EXPECT_TRUE(torch::allclose(k.grad(), repeated.grad().sum(1, true), 0, 1e-12));
  // Two input heads do not divide three maps.
  EXPECT_THROW(map->forward(torch::randn({1, 2, 4, kDim}, torch::kDouble)), std::invalid_argument);
}

TEST(FeatureMap, NamesRoundTrip) {
  for (const auto kind :
       {FeatureMapKind::hedgehog, FeatureMapKind::hedgehog_full, FeatureMapKind::t2r,
        FeatureMapKind::elu, FeatureMapKind::relu, FeatureMapKind::exp, FeatureMapKind::identity}) {
    EXPECT_EQ(parse_feature_map_kind(to_string(kind)), kind);
  }
  EXPECT_FALSE(parse_feature_map_kind("softmax").has_value());
  EXPECT_EQ(parse_feature_map_init("kaiming_uniform"), FeatureMapInit::kaiming_uniform);
  EXPECT_FALSE(parse_feature_map_init("zeros").has_value());
}

TEST(FeatureMap, BadInputIsRejectedWithAMessage) {
  auto map = make_map(FeatureMapKind::hedgehog);
  try {
    map->forward(torch::randn({1, kHeads + 1, 4, kDim}, torch::kDouble));
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("got [1, 4, 4, 6]"), std::string::npos)
        << error.what();
  }
  EXPECT_THROW(map->forward(torch::randn({1, kHeads, 4, kDim}, torch::kFloat)),
               std::invalid_argument);
  FeatureMapOptions bad;
  bad.feature_dim = 0;
  EXPECT_THROW(FeatureMap{bad}, std::invalid_argument);
}

// The free paired activation: hedgehog and exp on the CPU are the formulas (the module tests
// above check them through forward); kinds without a pair are refused by name.
TEST(FeatureMap, PairedActivationTakesOnlyPairedKinds) {
  const torch::Tensor r = torch::randn({3, 5}, torch::kDouble);
  const torch::Tensor hedgehog = paired_activation(r, FeatureMapKind::hedgehog_full);
  EXPECT_TRUE(torch::allclose(hedgehog.narrow(1, 0, 5), torch::softmax(r, -1)));
  EXPECT_TRUE(torch::allclose(hedgehog.narrow(1, 5, 5), torch::softmax(-r, -1)));
  const torch::Tensor exp = paired_activation(r, FeatureMapKind::exp);
  EXPECT_TRUE(torch::allclose(exp.narrow(1, 5, 5), torch::exp(r.amin(-1, true) - r)));
  try {
    paired_activation(r, FeatureMapKind::relu);
    FAIL() << "relu has no pair";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("relu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hl::kernels
