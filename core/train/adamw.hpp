// AdamW whose update runs as one fused multi-tensor kernel on CUDA.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hl::train {

/// torch::optim::AdamW whose step, where every parameter with a gradient is a dense CUDA
/// tensor and amsgrad is off, runs LibTorch's fused multi-tensor AdamW (a few kernel launches
/// for all parameters, fp32 arithmetic whatever their dtype) instead of ~7 ops a parameter;
/// elsewhere torch's own step. The state stays torch's AdamWParamState, so checkpoints save and
/// restore it either way.
class AdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;

  torch::Tensor step(LossClosure closure = nullptr) override;

  /// Whether this build's LibTorch has the fused update (2.0 and later).
  static bool fused_available();
  /// Steps taken by the fused update so far.
  int64_t fused_steps() const { return fused_steps_; }

  /// Whether step() can be captured in a CUDA graph now: it takes the fused update, and every
  /// parameter with a gradient has its state (made by an eager step first).
  bool capturable() const;
  /// step() while its stream is being captured records the update without counting it: before
  /// each replay, this writes every group's learning rate into the tensor the recorded update
  /// reads and counts the step in the host's state (which checkpoints save).
  void before_replay();
  /// A float flag on the parameters' device that the fused update reads: where it is 1 the
  /// update leaves parameters, moments and step counts as they were (a captured step whose loss
  /// was not finite). Undefined: none.
  void skip_when(torch::Tensor flag) { skip_flag_ = std::move(flag); }

 private:
  bool fused_applies() const;
  void fused_step();
  torch::Tensor& lr_tensor(size_t group, const torch::Device& device);

  // Each parameter's step count on its device, as the fused update reads it, and the host
  // count it mirrors (a restored state differs, and the device copy is made again).
  struct DeviceStep {
    torch::Tensor count;
    int64_t mirrors = -1;
  };
  std::unordered_map<const void*, DeviceStep> device_steps_;
  // Each group's learning rate on each device, as the fused update reads it.
  std::map<std::pair<size_t, int>, torch::Tensor> lr_tensors_;
  torch::Tensor skip_flag_;
  int64_t fused_steps_ = 0;
};

/// Scales the gradients of `params` so that their joint 2-norm is at most max_norm, as
/// torch::nn::utils::clip_grad_norm_ does, but without reading the norm back to the host (a
/// wait for the GPU, which a CUDA graph capture refuses).
void clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace hl::train
