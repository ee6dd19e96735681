// A step (a training step, a decode step) captured once as a CUDA graph and replayed.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

namespace hl::model {

/// One step recorded on a CUDA stream of its own and replayed: a replay costs the host one
/// launch instead of the step's many small ones, so the step takes the GPU's time. Everything
/// the step reads from outside must stay at the addresses it had at the capture (a static input
/// copied into, the parameters, the optimiser's or the decode cache's state), and the step may
/// not read anything back to the host.
class StepGraph {
 public:
  /// Why steps on `device` cannot be captured in this build; empty where they can.
  static std::string unsupported(const torch::Device& device);

  /// A stream of `device`'s for the steps; precondition: unsupported(device) is empty.
  explicit StepGraph(const torch::Device& device);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  /// Makes the graph's stream the current one while the result lives. Run the eager steps
  /// before the capture there too: the capture needs the workspaces they make for the stream.
  std::shared_ptr<void> use_stream();
  /// Records `step` without running it. Throws std::runtime_error with the reason where the
  /// step cannot be captured; the graph then stays empty.
  void capture(const std::function<void()>& step);
  /// Runs the recorded step on the current stream (use_stream's, where that is held).
  void replay();
  /// Drops the recorded step (and its memory) so that another can be captured on the same
  /// stream, e.g. after the model changed a launch argument the recording holds.
  void reset();
  bool captured() const { return captured_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool captured_ = false;
};

}  // namespace hl::model
