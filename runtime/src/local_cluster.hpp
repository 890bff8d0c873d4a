// LocalCluster's insides, shared with Buffer: the in-process world and which ranks have a Buffer.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "ferry/buffer.hpp"
#include "ferry/kernels/host/local_world.hpp"

namespace ferry {

struct LocalCluster::Impl {
  Config config;
  int num_nodes = 0;
  int local_size = 0;
  std::unique_ptr<kernels::host::LocalWorld> world;
  std::mutex mutex;
  std::vector<bool> claimed;  // ranks that have a live Buffer
  // The low-latency regions (LowLatencyBuffer), made by the first rank that builds one, every rank's of the
  // same size.
  std::unique_ptr<kernels::host::LocalWorld> low_latency;
  std::vector<bool> low_latency_claimed;

  void claim(int rank);
  void release(int rank);
  kernels::host::LocalWorld& claim_low_latency(int rank, std::size_t bytes);
  void release_low_latency(int rank);
};

}  // namespace ferry
