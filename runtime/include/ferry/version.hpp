#pragma once

namespace ferry {

// The library's version as "major.minor.patch", and whether it was built with the CUDA backend.
const char* version() noexcept;
bool built_with_cuda() noexcept;

}  // namespace ferry
