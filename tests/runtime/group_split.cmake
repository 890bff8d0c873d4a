# Group::split: sub-groups of a job (runtime/src/group_split.cpp) and the store's key prefix under them.
ferry_add_test(test_group_split SOURCES group_split_test.cpp LABELS unit LIBS ferry_test_dispatch)

# Across processes through `ferry launch`: the rank program and the tests that start it.
add_executable(ferry_group_split_worker group_split_worker.cpp)
target_link_libraries(ferry_group_split_worker PRIVATE ferry ferry_internal ferry_test_dispatch)
foreach(test_name test_group_split_launch test_group_split_netns)
  if(test_name STREQUAL "test_group_split_launch")
    set(label multiprocess)
    set(source group_split_launch_test.cpp)
  else()
    set(label netns)
    set(source group_split_netns_test.cpp)
  endif()
  ferry_add_test(${test_name} SOURCES ${source} LABELS ${label} LIBS ferry_test_dispatch)
  target_compile_definitions(${test_name} PRIVATE GROUP_SPLIT_WORKER_BIN="$<TARGET_FILE:ferry_group_split_worker>")
  add_dependencies(${test_name} ferry_group_split_worker ferry_cli)
endforeach()
