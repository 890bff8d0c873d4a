# Fuzz targets, declared once (fuzz/CMakeLists.txt) and built two ways:
#
# - the `fuzz` preset (FERRY_FUZZ=ON, clang): a libFuzzer executable per target from just the sources it
#   needs, so CI does not build the whole library again for them, with AddressSanitizer and
#   UndefinedBehaviorSanitizer. Two ctest tests per target (label `fuzz`):
#     fuzz.NAME.corpus  replays every input of the corpus once;
#     fuzz.NAME         fuzzes for SECONDS (default FERRY_FUZZ_SECONDS) from the corpus and prints libFuzzer's
#                       final stats (stat::number_of_executed_units: the executions fuzzed). New inputs go to
#                       the build tree, crashes to <build>/fuzz/artifacts/NAME/, never into the repository.
# - every other preset: the same harness with a plain main() that replays the corpus against the library the
#   tests use (test "fuzz corpus replay: NAME", label unit). A crash the fuzzer found is added to the corpus
#   (crash-<what>), so it stays a regular regression test under default, asan and tsan.
#
#   ferry_add_fuzz_target(NAME
#     SOURCES harness.cpp                       # defines LLVMFuzzerTestOneInput
#     LIBRARY_SOURCES ${PROJECT_SOURCE_DIR}/...  # fuzz preset: the library sources the harness calls
#     CORPUS corpus/NAME                        # inputs, in the repository
#     [LIBS target ...]                         # fuzz preset: header-only dependencies (nlohmann_json)
#     [LINK target ...]                         # other presets: what to link (default ferry_internal)
#     [SECONDS n])
set(FERRY_FUZZ_SECONDS 15 CACHE STRING "Seconds each fuzz target runs under ctest (fuzz preset)")
set(FERRY_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
                     -fno-omit-frame-pointer)
# Library sources nearly every target needs: ferry::Error.
set(FERRY_FUZZ_CORE_SOURCES ${PROJECT_SOURCE_DIR}/core/src/error.cpp ${PROJECT_SOURCE_DIR}/core/src/file_read.cpp)

function(ferry_add_fuzz_target name)
  cmake_parse_arguments(ARG "" "CORPUS;SECONDS" "SOURCES;LIBRARY_SOURCES;LIBS;LINK" ${ARGN})
  if(NOT ARG_CORPUS OR NOT ARG_SOURCES)
    message(FATAL_ERROR "ferry_add_fuzz_target(${name}): SOURCES and CORPUS are required")
  endif()
  if(NOT ARG_SECONDS)
    set(ARG_SECONDS ${FERRY_FUZZ_SECONDS})
  endif()
  if(NOT ARG_LINK)
    set(ARG_LINK ferry_internal)
  endif()
  get_filename_component(corpus ${ARG_CORPUS} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  set(internal_includes ${PROJECT_SOURCE_DIR}/transport/src ${PROJECT_SOURCE_DIR}/runtime/src)

  if(NOT FERRY_FUZZ)
    set(target fuzz_replay_${name})
    add_executable(${target} ${ARG_SOURCES} ${PROJECT_SOURCE_DIR}/fuzz/replay_main.cpp)
    target_include_directories(${target} PRIVATE ${internal_includes})
    target_link_libraries(${target} PRIVATE ${ARG_LINK})
    add_test(NAME "fuzz corpus replay: ${name}" COMMAND ${target} ${corpus})
    set_tests_properties("fuzz corpus replay: ${name}" PROPERTIES LABELS unit TIMEOUT 300)
    return()
  endif()

  set(target fuzz_${name})
  add_executable(${target} ${ARG_SOURCES} ${ARG_LIBRARY_SOURCES})
  target_compile_options(${target} PRIVATE ${FERRY_FUZZ_FLAGS} -Wall -Wextra)
  target_link_options(${target} PRIVATE ${FERRY_FUZZ_FLAGS})
  target_include_directories(${target} PRIVATE
    ${PROJECT_SOURCE_DIR}/core/include ${PROJECT_SOURCE_DIR}/transport/include ${PROJECT_SOURCE_DIR}/kernels/include
    ${PROJECT_SOURCE_DIR}/runtime/include ${PROJECT_SOURCE_DIR}/model/include ${internal_includes})
  target_link_libraries(${target} PRIVATE ${ARG_LIBS})

  set(scratch ${CMAKE_CURRENT_BINARY_DIR}/new_inputs/${name})
  set(artifacts ${CMAKE_CURRENT_BINARY_DIR}/artifacts/${name})
  file(MAKE_DIRECTORY ${scratch} ${artifacts})
  add_test(NAME fuzz.${name}.corpus COMMAND ${target} -runs=0 ${corpus})
  # -timeout: no input may take a second; -rss_limit_mb: nor gigabytes.
  add_test(NAME fuzz.${name}
           COMMAND ${target} -max_total_time=${ARG_SECONDS} -timeout=2 -rss_limit_mb=1536 -print_final_stats=1
                   -artifact_prefix=${artifacts}/ ${scratch} ${corpus})
  set_tests_properties(fuzz.${name}.corpus fuzz.${name} PROPERTIES LABELS fuzz TIMEOUT 300)
endfunction()
