// The list of RDMA devices ibverbs sees, owned: freed with ibv_free_device_list (the verbs fabric and the
// transport probe both walk it).
#pragma once

#include <infiniband/verbs.h>

#include <memory>

namespace ferry::transport::detail {

struct DeviceListDeleter {
  void operator()(ibv_device** list) const { ibv_free_device_list(list); }
};
using DeviceList = std::unique_ptr<ibv_device*, DeviceListDeleter>;

}  // namespace ferry::transport::detail
