// AdamW whose update runs as one fused multi-tensor kernel on CUDA.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <unordered_map>
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

 private:
  bool fused_applies() const;
  void fused_step();

  // Each parameter's step count on its device, as the fused update reads it, and the host
  // count it mirrors (a restored state differs, and the device copy is made again).
  struct DeviceStep {
    torch::Tensor count;
    int64_t mirrors = -1;
  };
  std::unordered_map<const void*, DeviceStep> device_steps_;
  int64_t fused_steps_ = 0;
};

}  // namespace hl::train
