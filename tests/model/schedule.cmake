# Pipeline schedules: the op lists against the DeepSeek DualPipe reference, and the simulator.
ferry_add_test(test_model_schedule SOURCES test_schedule.cpp LABELS unit LIBS ferry_model)
