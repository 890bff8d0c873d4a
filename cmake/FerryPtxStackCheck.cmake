# A check of the PTX nvcc makes, in CI without a GPU: no global-space access takes an address from the stack.
#
#   ferry_ptx_stack_check(NAME <label> SOURCES <file.cu>... [TARGET <target>] [EXPECT_FINDINGS])
#
# Compiles SOURCES to PTX once per architecture in CMAKE_CUDA_ARCHITECTURES (an object library per
# architecture with CUDA_PTX_COMPILATION, built with everything else; with TARGET, that target's include
# directories and definitions, so the PTX is the PTX of the target's code) and registers the test
# ptx_stack_check.<label> (label unit): tools/ptx_stack_check fails it when an ld/st/atom/red/... in the global
# state space takes an address derived from %SP, %SPL, cvta.local or a .local symbol (a generic pointer to a
# local object: illegal address at run time), or when a file holds no function. EXPECT_FINDINGS turns the test
# around, for code that is wrong on purpose (the check's own proof). Does nothing in builds without CUDA or
# without tests.
function(ferry_ptx_stack_check)
  cmake_parse_arguments(ARG "EXPECT_FINDINGS" "NAME;TARGET" "SOURCES" ${ARGN})
  if(NOT FERRY_HAVE_CUDA OR NOT FERRY_BUILD_TESTS)
    return()
  endif()
  if(NOT ARG_NAME OR NOT ARG_SOURCES)
    message(FATAL_ERROR "ferry_ptx_stack_check: NAME and SOURCES are required")
  endif()
  set(files "")
  foreach(arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
    string(REGEX REPLACE "-(real|virtual)$" "" arch "${arch}")
    set(library ferry_ptx_${ARG_NAME}_sm${arch})
    add_library(${library} OBJECT ${ARG_SOURCES})
    set_target_properties(${library} PROPERTIES CUDA_PTX_COMPILATION ON CUDA_ARCHITECTURES ${arch})
    target_link_libraries(${library} PRIVATE ferry_warnings CUDA::cudart)
    if(ARG_TARGET)
      target_include_directories(${library} PRIVATE $<TARGET_PROPERTY:${ARG_TARGET},INCLUDE_DIRECTORIES>)
      target_compile_definitions(${library} PRIVATE $<TARGET_PROPERTY:${ARG_TARGET},COMPILE_DEFINITIONS>)
    endif()
    list(APPEND files "$<TARGET_OBJECTS:${library}>")
  endforeach()
  set(expect "")
  if(ARG_EXPECT_FINDINGS)
    set(expect --expect-findings)
  endif()
  add_test(NAME ptx_stack_check.${ARG_NAME} COMMAND ferry-ptx-stack-check ${expect} ${files} COMMAND_EXPAND_LISTS)
  set_tests_properties(ptx_stack_check.${ARG_NAME} PROPERTIES LABELS unit TIMEOUT 60)
endfunction()
