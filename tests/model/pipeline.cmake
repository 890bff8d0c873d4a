# Pipeline stages and the B/W split, in-process against the whole model.
ferry_add_test(test_model_pipeline_stage SOURCES test_pipeline_stage.cpp LABELS unit LIBS ferry_model)
# Every schedule under `ferry launch` (2 nodes x 2 ranks) against plain expert parallelism; the trace.
ferry_add_test(test_model_pipeline_launch SOURCES test_pipeline_launch.cpp LABELS multiprocess LIBS ferry_model)
add_dependencies(test_model_pipeline_launch ferry_cli)
# PP = 4 on 2 nodes x 4 ranks with MTP: DualPipe, DualPipeV and 1F1B against plain expert parallelism, the
# overlap ratio from DualPipe's traces.
ferry_add_test(test_model_pipeline_pp4 SOURCES test_pipeline_pp4.cpp LABELS multiprocess LIBS ferry_model)
add_dependencies(test_model_pipeline_pp4 ferry_cli)
