# Common compile settings for every HybridLab target.
function(hl_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
  if(HL_SANITIZE)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer>)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# Sources of one module folder (foo/*.cpp), so that adding a file needs no CMake edit.
function(hl_glob_sources out)
  set(files)
  foreach(dir IN LISTS ARGN)
    file(GLOB found CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${dir}/*.cpp)
    list(APPEND files ${found})
  endforeach()
  set(${out} ${files} PARENT_SCOPE)
endfunction()

# Reuse one LibTorch precompiled header in every target that includes torch.
function(hl_use_torch_pch target)
  if(TARGET hl_torch_pch AND NOT target STREQUAL "hl_torch_pch")
    target_precompile_headers(${target} REUSE_FROM hl_torch_pch)
  endif()
endfunction()
