// Every rank of an N x L cluster as "virtual ranks" of this process on one GPU: the GPU twin of LocalCluster.
// Each rank's registered buffer is device memory of that GPU; node peers are plain device pointers (the
// NVLink path's semantics, unchanged); puts between nodes are executed by a transport::Proxy as
// device-to-device copies plus the signal (transport::DeviceCopyWorld), from command rings the kernels post
// into. All ranks' blocks run in one cooperative launch per operation (DeviceEngine), so several processes
// never time-slice spinning kernels.
//
//   VirtualCluster cluster(params, options);       // params.topo: N x L x channels
//   auto results = cluster.engine().dispatch(shape, inputs, nullptr, stream);
//   cluster.engine().finish(stream, &results);
#pragma once

#include <memory>

#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"

namespace ferry::kernels::cuda {

class VirtualCluster {
 public:
  VirtualCluster(const protocol::LayoutParams& params, const DeviceOptions& options);
  ~VirtualCluster();
  VirtualCluster(const VirtualCluster&) = delete;
  VirtualCluster& operator=(const VirtualCluster&) = delete;

  int num_ranks() const;
  const protocol::BufferLayout& layout() const;
  DeviceEngine& engine();
  // Commands the proxy has executed so far (puts and signals between nodes), all ranks together.
  std::uint64_t proxy_commands() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::kernels::cuda
