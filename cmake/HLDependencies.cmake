# Third-party packages. Debian packages on CPU machines; on the GPU machine
# scripts/gpu-build.sh points CMAKE_PREFIX_PATH at an unpacked Debian prefix and
# at the PyTorch install's libtorch.

find_package(SQLite3 REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(Threads REQUIRED)

if(NOT HL_SPEC_ONLY)
  find_package(Torch REQUIRED)
  # TorchConfig puts its ABI flag into CMAKE_CXX_FLAGS; targets that do not link
  # torch still need the same flag so that std::string crosses library borders.
  set(HL_TORCH_HAS_CUDA OFF)
  if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
    set(HL_TORCH_HAS_CUDA ON)
  endif()
endif()

# CUDA: the kernels compile wherever nvcc is found (CI has nvcc but no GPU);
# they are linked into the dispatch only when LibTorch itself has CUDA.
set(HL_CUDA_ENABLED OFF)
if(NOT HL_SPEC_ONLY AND NOT HL_CUDA STREQUAL "OFF")
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX}
     AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90a)
    endif()
    set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no CUDA20 flags for nvcc
    enable_language(CUDA)
    set(HL_CUDA_ENABLED ON)
  elseif(HL_CUDA STREQUAL "ON")
    message(FATAL_ERROR "HL_CUDA=ON but no CUDA compiler was found (set CUDACXX)")
  endif()
endif()

set(HL_GUI_ENABLED OFF)
if(HL_GUI AND NOT HL_SPEC_ONLY)
  find_package(Qt6 COMPONENTS Widgets PrintSupport Test QUIET)
  find_package(QCustomPlotQt6 QUIET)
  if(Qt6_FOUND AND QCustomPlotQt6_FOUND)
    set(HL_GUI_ENABLED ON)
  else()
    message(STATUS "Qt 6 or QCustomPlotQt6 not found: the workbench GUI is not built")
  endif()
endif()

if(HL_TESTS)
  find_package(GTest REQUIRED)
endif()
if(HL_BENCH)
  find_package(benchmark QUIET)
endif()
