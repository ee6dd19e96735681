#include "core/model/step_graph.hpp"

#include <torch/version.h>

#include <stdexcept>

#if defined(HL_WITH_CUDA_KERNELS) && TORCH_VERSION_MAJOR >= 2
#define HL_STEP_GRAPH 1
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace hl::model {

#ifdef HL_STEP_GRAPH

struct StepGraph::Impl {
  c10::cuda::CUDAStream stream;
  std::unique_ptr<at::cuda::CUDAGraph> graph = std::make_unique<at::cuda::CUDAGraph>();
};

std::string StepGraph::unsupported(const torch::Device& device) {
  if (!device.is_cuda()) return "the model is not on a CUDA device";
  return {};
}

StepGraph::StepGraph(const torch::Device& device)
    : impl_(new Impl{c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())}) {}

namespace {

// The stream switch, with the device idle on both sides: work queued before on the previous
// stream is done before the graph's stream reads its results, and the other way round after.
struct StreamUse {
  explicit StreamUse(c10::cuda::CUDAStream stream)
      : guard((c10::cuda::device_synchronize(), stream)) {}
  ~StreamUse() {
    try {
      guard.current_stream().synchronize();
    } catch (const std::exception&) {
      // A destructor may not throw: the next call that checks reports the CUDA error.
    }
  }
  c10::cuda::CUDAStreamGuard guard;
};

}  // namespace

std::shared_ptr<void> StepGraph::use_stream() {
  return std::make_shared<StreamUse>(impl_->stream);
}

void StepGraph::capture(const std::function<void()>& step) {
  if (captured_) throw std::logic_error("StepGraph: captured already");
  const c10::cuda::CUDAStreamGuard guard(impl_->stream);
  // The capture's allocations come from a pool of the graph's own, which the replays reuse.
  // Relaxed: other host threads (autograd's worker, which runs the backward) may call CUDA
  // functions that the default mode forbids during a capture.
  impl_->graph->capture_begin({0, 0}, cudaStreamCaptureModeRelaxed);
  std::string failure;
  try {
    step();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  try {
    impl_->graph->capture_end();
  } catch (const std::exception& e) {
    if (failure.empty()) failure = e.what();
  }
  if (!failure.empty()) {
    reset();
    throw std::runtime_error("the step could not be captured as a CUDA graph: " + failure);
  }
  captured_ = true;
}

void StepGraph::replay() {
  if (!captured_) throw std::logic_error("StepGraph: nothing captured");
  impl_->graph->replay();
}

void StepGraph::reset() {
  impl_->graph = std::make_unique<at::cuda::CUDAGraph>();
  captured_ = false;
}

#else

struct StepGraph::Impl {};

std::string StepGraph::unsupported(const torch::Device&) {
  return "this build has no CUDA graphs (it needs the CUDA kernels and LibTorch 2)";
}

StepGraph::StepGraph(const torch::Device&) {
  throw std::logic_error("StepGraph: " + unsupported(torch::kCPU));
}

// Unreachable: no StepGraph can be made in this build.
std::shared_ptr<void> StepGraph::use_stream() {
  return nullptr;
}
void StepGraph::capture(const std::function<void()>&) {}
void StepGraph::replay() {}
void StepGraph::reset() {}

#endif

StepGraph::~StepGraph() = default;

}  // namespace hl::model
