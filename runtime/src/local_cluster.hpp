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

  void claim(int rank);
  void release(int rank);
};

}  // namespace ferry
