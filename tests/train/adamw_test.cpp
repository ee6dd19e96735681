// hl::train::AdamW: torch's AdamW on the CPU; on CUDA the fused update, checked against torch's
// unfused step (fp32) and against the update's formula in float64 (bf16), across a
// checkpoint's save and restore, and captured in a CUDA graph. clip_grad_norm against torch's.
#include "core/train/adamw.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "core/model/step_graph.hpp"
#include "kernels/attention_test_support.hpp"

namespace {

using hl::kernels::test::relative_error;

torch::optim::AdamWOptions options() {
  return torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).weight_decay(0.1).eps(1e-8);
}

// Parameters of a few shapes (one scalar among them), random, never zero.
std::vector<torch::Tensor> make_params(torch::Device device, torch::Dtype dtype) {
  torch::manual_seed(7);
  std::vector<torch::Tensor> params;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{33, 17}, {1000}, {}, {4, 5, 6}})
    params.push_back(
        (torch::randn(shape, torch::kDouble) + 0.5).to(device, dtype).requires_grad_());
  return params;
}

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> out;
  for (const auto& p : params)
    out.push_back(p.detach().clone().requires_grad_());
  return out;
}

// Fresh random gradients (float64 masters) for step `step`, the same for every optimiser.
std::vector<torch::Tensor> gradients(const std::vector<torch::Tensor>& params, int step) {
  torch::manual_seed(100 + step);
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    grads.push_back(torch::randn(p.sizes(), torch::kDouble) * 0.3 + 0.05);
  return grads;
}

void set_grads(std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads) {
  for (size_t i = 0; i < params.size(); ++i)
    params[i].mutable_grad() = grads[i].to(params[i].device(), params[i].scalar_type());
}

// `steps` steps of ours and of torch's AdamW from the same parameters and gradients.
struct SideBySide {
  std::vector<torch::Tensor> ours, theirs;
  int64_t fused_steps = 0;
};

SideBySide side_by_side(torch::Device device, int steps) {
  SideBySide run{make_params(device, torch::kFloat32), {}};
  run.theirs = clones(run.ours);
  hl::train::AdamW fused(run.ours, options());
  torch::optim::AdamW reference(run.theirs, options());
  for (int step = 0; step < steps; ++step) {
    const auto grads = gradients(run.ours, step);
    set_grads(run.ours, grads);
    set_grads(run.theirs, grads);
    fused.step();
    reference.step();
  }
  run.fused_steps = fused.fused_steps();
  return run;
}

TEST(AdamW, CpuIsTorchsStep) {
  const SideBySide run = side_by_side(torch::kCPU, 3);
  EXPECT_EQ(run.fused_steps, 0);
  for (size_t i = 0; i < run.ours.size(); ++i)
    EXPECT_TRUE(torch::equal(run.ours[i], run.theirs[i])) << "parameter " << i;
}

// `to` takes `from`'s state through a checkpoint's save and load.
void load_saved_state(hl::train::AdamW& from, hl::train::AdamW& to) {
  std::ostringstream saved;
  torch::save(from, saved);
  std::istringstream in(saved.str());
  torch::load(to, in);
}

bool skip_without_fused_cuda() {
  return !torch::cuda::is_available() || !hl::train::AdamW::fused_available();
}

// fp32: the fused update against torch's unfused one, 5 steps; they differ only in rounding
// (fused multiply-adds, the bias corrections' order), well under 1e-5 relative.
TEST(AdamW, FusedMatchesTorchFp32) {
  if (skip_without_fused_cuda()) GTEST_SKIP() << "needs CUDA and LibTorch 2";
  const SideBySide run = side_by_side(torch::kCUDA, 5);
  EXPECT_EQ(run.fused_steps, 5);
  const auto start = make_params(torch::kCUDA, torch::kFloat32);
  for (size_t i = 0; i < run.ours.size(); ++i) {
    EXPECT_LT(relative_error(run.ours[i], run.theirs[i]), 1e-5) << "parameter " << i;
    EXPECT_GT(relative_error(run.ours[i], start[i]), 1e-3) << "parameter " << i << " did not move";
  }
}

// bf16 parameters and moments: against the formula in float64 from the same bf16 start, with
// the stored values rounded to bf16 after each step as the fused update stores them; 1e-2.
TEST(AdamW, FusedBf16MatchesFormula) {
  if (skip_without_fused_cuda()) GTEST_SKIP() << "needs CUDA and LibTorch 2";
  auto params = make_params(torch::kCUDA, torch::kBFloat16);
  std::vector<torch::Tensor> p64, m64, v64;
  for (const auto& p : params) {
    p64.push_back(p.detach().to(torch::kCPU, torch::kDouble));
    m64.push_back(torch::zeros_like(p64.back()));
    v64.push_back(torch::zeros_like(p64.back()));
  }
  hl::train::AdamW fused(params, options());
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, wd = 0.1, eps = 1e-8;
  auto bf16 = [](const torch::Tensor& x) { return x.to(torch::kBFloat16).to(torch::kDouble); };
  for (int step = 1; step <= 5; ++step) {
    auto grads = gradients(params, step);
    set_grads(params, grads);
    fused.step();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto g = bf16(grads[i]);
      const auto decayed = p64[i] * (1 - lr * wd);
      m64[i] = bf16(b1 * m64[i] + (1 - b1) * g);
      v64[i] = bf16(b2 * v64[i] + (1 - b2) * g * g);
      const double c1 = 1 - std::pow(b1, step), c2 = 1 - std::pow(b2, step);
      p64[i] = bf16(decayed - (lr / c1) * m64[i] / (v64[i].sqrt() / std::sqrt(c2) + eps));
    }
  }
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_LT(relative_error(params[i].cpu(), p64[i]), 1e-2) << "parameter " << i;
}

// A checkpoint in the middle: the restored optimiser continues as the one that went on.
TEST(AdamW, FusedResumesFromSavedState) {
  if (skip_without_fused_cuda()) GTEST_SKIP() << "needs CUDA and LibTorch 2";
  auto going_on = make_params(torch::kCUDA, torch::kFloat32);
  hl::train::AdamW first(going_on, options());
  for (int step = 0; step < 2; ++step) {
    set_grads(going_on, gradients(going_on, step));
    first.step();
  }
  auto resumed = clones(going_on);
  hl::train::AdamW second(resumed, options());
  load_saved_state(first, second);
  for (int step = 2; step < 5; ++step) {
    const auto grads = gradients(going_on, step);
    set_grads(going_on, grads);
    set_grads(resumed, grads);
    first.step();
    second.step();
  }
  EXPECT_EQ(second.fused_steps(), 3);
  for (size_t i = 0; i < going_on.size(); ++i)
    EXPECT_TRUE(torch::equal(going_on[i], resumed[i])) << "parameter " << i;
}

// Replays of a captured step() against eager steps of a twin with the same gradients and
// learning rates: the same parameters, and the host's step counts follow the replays (a
// checkpoint saved after them resumes as the eager twin goes on). A replay with the skip flag
// set leaves everything as it was.
TEST(AdamW, CapturedStepReplaysAsEagerSteps) {
  if (skip_without_fused_cuda()) GTEST_SKIP() << "needs CUDA and LibTorch 2";
  if (!hl::model::StepGraph::unsupported(torch::kCUDA).empty()) GTEST_SKIP() << "no CUDA graphs";
  auto eager_params = make_params(torch::kCUDA, torch::kFloat32);
  auto graph_params = clones(eager_params);
  hl::train::AdamW eager(eager_params, options()), graphed(graph_params, options());
  hl::model::StepGraph graph(torch::kCUDA);
  const auto stream = graph.use_stream();
  auto set_lr = [](hl::train::AdamW& opt, double lr) {
    for (auto& group : opt.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  };
  // An eager step first (the state and the device step counts), then the capture.
  set_grads(eager_params, gradients(eager_params, 0));
  set_grads(graph_params, gradients(graph_params, 0));
  eager.step();
  graphed.step();
  const torch::Tensor skip = torch::zeros({}, torch::TensorOptions(torch::kCUDA));
  graphed.skip_when(skip);
  graph.capture([&] { graphed.step(); });
  graphed.skip_when({});
  for (int step = 1; step <= 4; ++step) {
    const double lr = 1e-2 / step;
    const auto grads = gradients(eager_params, step);
    set_grads(eager_params, grads);
    for (size_t i = 0; i < graph_params.size(); ++i)
      graph_params[i].grad().copy_(grads[i].to(graph_params[i].options()));
    set_lr(eager, lr);
    set_lr(graphed, lr);
    eager.step();
    graphed.before_replay();
    graph.replay();
  }
  for (size_t i = 0; i < graph_params.size(); ++i)
    EXPECT_LT(relative_error(graph_params[i], eager_params[i]), 1e-6) << "parameter " << i;

  std::vector<torch::Tensor> before;
  for (const auto& p : graph_params)
    before.push_back(p.detach().clone());
  skip.fill_(1.0);
  graph.replay();  // no before_replay: a skipped step is not counted
  skip.fill_(0.0);
  for (size_t i = 0; i < graph_params.size(); ++i)
    EXPECT_TRUE(torch::equal(graph_params[i], before[i])) << "parameter " << i << " moved";

  auto resumed_params = clones(graph_params);
  hl::train::AdamW resumed(resumed_params, options());
  load_saved_state(graphed, resumed);
  const auto grads = gradients(eager_params, 5);
  set_grads(eager_params, grads);
  set_grads(resumed_params, grads);
  eager.step();
  resumed.step();
  for (size_t i = 0; i < resumed_params.size(); ++i)
    EXPECT_LT(relative_error(resumed_params[i], eager_params[i]), 1e-6) << "parameter " << i;
}

// Clipping equals torch's clip_grad_norm_ where it scales and leaves the gradients bit for bit
// where the norm is under the bound.
TEST(AdamW, ClipGradNormIsTorchs) {
  const torch::Device device = torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
  for (const double bound : {0.5, 1e3}) {
    auto ours = make_params(device, torch::kFloat32);
    auto theirs = clones(ours);
    const auto grads = gradients(ours, 1);
    set_grads(ours, grads);
    set_grads(theirs, grads);
    hl::train::clip_grad_norm(ours, bound);
    torch::nn::utils::clip_grad_norm_(theirs, bound);
    double squares = 0;
    for (size_t i = 0; i < ours.size(); ++i) {
      EXPECT_LT(relative_error(ours[i].grad(), theirs[i].grad()), 1e-6) << bound << " " << i;
      if (bound > 1) EXPECT_TRUE(torch::equal(ours[i].grad(), theirs[i].grad())) << i;
      squares += ours[i].grad().to(torch::kDouble).pow(2).sum().item<double>();
    }
    if (bound < 1) EXPECT_NEAR(std::sqrt(squares), bound, 1e-5) << "the joint norm after clipping";
  }
}

}  // namespace
