# Runs every test case of the given Catch2 executables with FERRY_TEST_NETNS_UNAVAILABLE set (the netns probe
# then fails as it would on a machine without network namespaces) and checks that each one exits 77 (ctest:
# skipped) and says why, instead of passing or failing.
#   cmake -DEXECUTABLES="a|b" -P check_skips.cmake
string(REPLACE "|" ";" EXECUTABLES "${EXECUTABLES}")
set(ENV{FERRY_TEST_NETNS_UNAVAILABLE} "checking that netns tests skip")
set(checked 0)
foreach(executable IN LISTS EXECUTABLES)
  # Catch2 2.x exits with the number of tests listed.
  execute_process(COMMAND ${executable} --list-test-names-only OUTPUT_VARIABLE names RESULT_VARIABLE listed)
  if(NOT listed MATCHES "^[0-9]+$" OR names STREQUAL "")
    message(FATAL_ERROR "${executable} --list-test-names-only failed (${listed}): ${names}")
  endif()
  string(REPLACE "\n" ";" names "${names}")
  foreach(name IN LISTS names)
    if(name STREQUAL "")
      continue()
    endif()
    # Catch2 reads commas and brackets in a test spec as operators: escape them.
    string(REGEX REPLACE "([,\\[])" "\\\\\\1" spec "${name}")
    execute_process(COMMAND ${executable} "${spec}" OUTPUT_VARIABLE out ERROR_VARIABLE out
                    RESULT_VARIABLE code TIMEOUT 60)
    if(NOT code EQUAL 77 OR NOT out MATCHES "SKIPPED: ferry launch --netns cannot run here: simulated")
      message(FATAL_ERROR "'${name}' (${executable}) exited ${code} without reporting a skip:\n${out}")
    endif()
    math(EXPR checked "${checked} + 1")
  endforeach()
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "no netns test cases found in: ${EXECUTABLES}")
endif()
message(STATUS "${checked} netns test cases report skipped when namespaces are unavailable")
