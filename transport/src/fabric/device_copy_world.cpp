// DeviceCopyWorld with CUDA: checks the GPU once, then hands out one DeviceCopyFabric per rank.
#include "fabric/device_copy_fabric.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/cuda_check.hpp"
#include "ferry/transport/device_copy.hpp"

namespace ferry::transport {

DeviceCopyWorld::DeviceCopyWorld(int num_ranks, int device, Duration timeout) {
  if (num_ranks < 1) {
    fail(Errc::invalid_argument,
         "DeviceCopyWorld: num_ranks is " + std::to_string(num_ranks) + "; need at least 1");
  }
  if (timeout <= Duration::zero()) fail(Errc::invalid_argument, "DeviceCopyWorld: timeout is not positive");
  std::string reason;
  const int count = detail::visible_gpus(reason);
  if (count == 0) fail(Errc::unsupported, "DeviceCopyWorld: " + reason);
  if (device < 0 || device >= count) {
    fail(Errc::invalid_argument, "DeviceCopyWorld: device " + std::to_string(device) + " is outside the " +
                                     std::to_string(count) + " visible GPUs");
  }
  shared_ = std::make_shared<detail::DeviceCopyShared>(num_ranks, device, timeout);
}

DeviceCopyWorld::~DeviceCopyWorld() = default;

int DeviceCopyWorld::num_ranks() const {
  return shared_->num_ranks();
}

int DeviceCopyWorld::device() const {
  return shared_->device;
}

std::unique_ptr<Fabric> DeviceCopyWorld::make_fabric(int rank) {
  shared_->claim_rank(rank);
  return std::make_unique<DeviceCopyFabric>(shared_, rank);
}

}  // namespace ferry::transport
