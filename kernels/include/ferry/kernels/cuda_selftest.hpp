// A tiny kernel that proves the CUDA backend can run code on a device: every block writes a pattern that the
// host checks. Used by `ferry topo` and tests/gpu. Only declared when ferry is built with CUDA.
#pragma once

#include <string>

namespace ferry::kernels {

// Runs the self-test on `device` with `blocks` blocks; returns an empty string on success, else what failed.
std::string cuda_selftest(int device, int blocks);

}  // namespace ferry::kernels
