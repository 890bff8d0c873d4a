# Resource checks of CUDA kernels, in CI without a GPU.
#
#   ferry_cuda_resources(NAME <label> TARGET <target> SOURCES <file.cu>... SHAPES <shapes file>)
#
# Compiles SOURCES (which belong to TARGET) with -Xptxas=-v and keeps ptxas's report for every architecture in
# CMAKE_CUDA_ARCHITECTURES in <object>.ptxas.txt in the build tree (cmake/ptxas_log.sh, as the target's CUDA
# compiler launcher, in front of any launcher already set, such as ccache). Registers the test
# cuda_resources.<label> (label unit): ferry-cuda-resources checks the report against SHAPES and fails on any
# register spill, on a kernel whose registers and shared memory cannot place the declared blocks per SM for its
# declared block size, on a kernel without a line in SHAPES, on a line that matches no kernel, and on a kernel
# missing an architecture. It writes the table to <build>/cuda_resources/<label>.md.
#
# SHAPES has one line per kernel: "name threads_per_block blocks_per_sm dynamic_shared_bytes" (name: the
# kernel's unqualified name without template arguments; '#' starts a comment). Source file names must be unique
# within TARGET (the object is found by name). Does nothing in builds without CUDA.
function(ferry_cuda_resources)
  cmake_parse_arguments(ARG "" "NAME;TARGET;SHAPES" "SOURCES" ${ARGN})
  if(NOT FERRY_HAVE_CUDA)
    return()
  endif()
  if(NOT ARG_NAME OR NOT ARG_TARGET OR NOT ARG_SHAPES OR NOT ARG_SOURCES)
    message(FATAL_ERROR "ferry_cuda_resources: NAME, TARGET, SOURCES and SHAPES are required")
  endif()
  get_filename_component(shapes "${ARG_SHAPES}" ABSOLUTE)

  set_property(SOURCE ${ARG_SOURCES} TARGET_DIRECTORY ${ARG_TARGET} APPEND PROPERTY COMPILE_OPTIONS -Xptxas=-v)
  get_target_property(launcher ${ARG_TARGET} CUDA_COMPILER_LAUNCHER)
  if(NOT launcher)
    set(launcher "")
  endif()
  set(log_launcher "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/ptxas_log.sh")
  if(NOT "${log_launcher}" IN_LIST launcher)
    set_property(TARGET ${ARG_TARGET} PROPERTY CUDA_COMPILER_LAUNCHER bash "${log_launcher}" ${launcher})
  endif()

  set(objects "")
  foreach(source IN LISTS ARG_SOURCES)
    get_filename_component(file_name "${source}" NAME)
    string(REPLACE "." "[.]" pattern "${file_name}")
    list(APPEND objects "$<FILTER:$<TARGET_OBJECTS:${ARG_TARGET}>,INCLUDE,/${pattern}[.]o$>")
  endforeach()
  set(archs "")
  foreach(arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
    string(REGEX REPLACE "-(real|virtual)$" "" arch "${arch}")
    list(APPEND archs "sm_${arch}")
  endforeach()
  string(JOIN "," archs ${archs})

  if(NOT FERRY_BUILD_TESTS)
    return()
  endif()
  file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/cuda_resources")
  add_test(NAME cuda_resources.${ARG_NAME}
           COMMAND ferry-cuda-resources --shapes "${shapes}" --archs "${archs}"
                   --report "${CMAKE_BINARY_DIR}/cuda_resources/${ARG_NAME}.md" ${objects})
  set_tests_properties(cuda_resources.${ARG_NAME} PROPERTIES LABELS unit TIMEOUT 60)
endfunction()
