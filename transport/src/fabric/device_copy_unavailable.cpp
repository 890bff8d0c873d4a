// DeviceCopyWorld in builds without CUDA: says why it cannot run.
#include "fabric/device_copy_shared.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/device_copy.hpp"

namespace ferry::transport {

DeviceCopyWorld::DeviceCopyWorld(int, int, Duration) {
  fail(Errc::unsupported, "DeviceCopyWorld: this build of ferry has no CUDA (configure with nvcc present)");
}

DeviceCopyWorld::~DeviceCopyWorld() = default;

// Never reached: the constructor always throws.
int DeviceCopyWorld::num_ranks() const {
  return 0;
}

int DeviceCopyWorld::device() const {
  return -1;
}

std::unique_ptr<Fabric> DeviceCopyWorld::make_fabric(int) {
  fail(Errc::unsupported, "DeviceCopyWorld: this build of ferry has no CUDA");
}

}  // namespace ferry::transport
