// What every GPU test file shares: the skip without a CUDA device.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

/// Skips the current test where no CUDA device is present.
#define HL_REQUIRE_GPU()                                                \
  do {                                                                  \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)
