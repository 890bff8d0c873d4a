# Pipeline traces: the recorder, Chrome trace reading and writing, overlap metrics, the SVG timeline and
# `ferry trace` (run as a process, hence the dependency on the CLI).
ferry_add_test(test_model_trace SOURCES test_trace.cpp LABELS unit LIBS ferry_model)
add_dependencies(test_model_trace ferry_cli)
