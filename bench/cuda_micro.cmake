# Raw CUDA microbenchmarks (no Google Benchmark, no LibTorch), run on the GPU machine. They are
# built with the tests too wherever nvcc is, so that CI keeps every CUDA source compiling.
function(hl_add_cuda_micro name)
  add_executable(hl_bench_${name} ${PROJECT_SOURCE_DIR}/bench/${name}.cu)
  target_include_directories(hl_bench_${name} PRIVATE ${PROJECT_SOURCE_DIR})
  # Beside the other benchmarks: <build>/bench/hl_bench_<name>.
  set_target_properties(hl_bench_${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY
                                                    ${PROJECT_BINARY_DIR}/bench)
endfunction()
# The decode step's time floor (kernels that do less and less of its work).
hl_add_cuda_micro(launch_floor)
# How far several consumer warpgroups' chains overlap on one SM (KERNEL_NOTES session 19).
hl_add_cuda_micro(chain_overlap)
# The fused key kernel's m64n32 building blocks: checked against float64, then timed.
hl_add_cuda_micro(key_tile_n32)
