#include "ferry/version.hpp"

namespace ferry {

const char* version() noexcept {
  return FERRY_VERSION_STRING;
}

bool built_with_cuda() noexcept {
#ifdef FERRY_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace ferry
