# cmake -P script: install, build the consumer against the install tree, run it. Fails on the first error.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}${err}")
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "install test: '${ARGN}' failed with status ${status}")
  endif()
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(required include/ferry/ferry.hpp lib/libferry.so bin/ferry lib/cmake/ferry/ferryConfig.cmake)
  if(NOT EXISTS ${prefix}/${required})
    message(FATAL_ERROR "install test: ${required} missing from the install tree")
  endif()
endforeach()
# A sanitized libferry needs a sanitized program around it (the runtime must come first).
set(flags "")
if(SANITIZE STREQUAL "address")
  set(flags "-fsanitize=address,undefined")
elseif(SANITIZE STREQUAL "thread")
  set(flags "-fsanitize=thread")
endif()
run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/consumer -G ${GENERATOR}
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS=${flags}")
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer)
run(${WORK_DIR}/consumer/consumer)
# The installed command must run from the install tree (its RPATH finds the installed library).
run(${prefix}/bin/ferry topo)
# The installed Python package, where it was built, imports from the install tree (its extension's RPATH finds
# the installed library) and bootstraps a one-rank Buffer.
if(PYTHON)
  set(ENV{PYTHONPATH} ${prefix}/${PYTHON_DIR})
  file(WRITE ${WORK_DIR}/use_ferry.py [=[
import os
import ferry
assert ferry.__file__.startswith(os.environ["PYTHONPATH"]), ferry.__file__
buffer = ferry.Buffer(None)
print("installed ferry", ferry.__version__, "from", os.path.dirname(ferry.__file__), "rank", buffer.rank, "of",
      buffer.group_size)
]=])
  run(${PYTHON} ${WORK_DIR}/use_ferry.py)
endif()
