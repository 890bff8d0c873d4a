# PeerChannel tests: in-process ranks as threads (unit), and whole jobs through `ferry launch` (multiprocess,
# netns) running peer_channel_worker.

# One rank of a multi-process PeerChannel test.
add_executable(peer_channel_worker peer_channel_worker.cpp)
target_link_libraries(peer_channel_worker PRIVATE ferry ferry_internal)
target_include_directories(peer_channel_worker PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
# Checking every byte is the bulk of its work: optimize it even in Debug builds so tests stay quick.
target_compile_options(peer_channel_worker PRIVATE -O2)

ferry_add_test(test_peer_channel SOURCES peer_channel_test.cpp LABELS unit)

foreach(test test_peer_channel_launch test_peer_channel_netns)
  if(test STREQUAL "test_peer_channel_launch")
    ferry_add_test(${test} SOURCES peer_channel_launch_test.cpp LABELS multiprocess)
  else()
    ferry_add_test(${test} SOURCES peer_channel_netns_test.cpp LABELS multiprocess netns)
  endif()
  target_compile_definitions(${test} PRIVATE PEER_CHANNEL_WORKER="$<TARGET_FILE:peer_channel_worker>")
  target_include_directories(${test} PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
  add_dependencies(${test} peer_channel_worker ferry_cli)
endforeach()
