#include "local_cluster.hpp"

#include "ferry/core/error.hpp"
#include "protocol_params.hpp"

namespace ferry {

void LocalCluster::Impl::claim(int rank) {
  std::lock_guard lock(mutex);
  if (rank < 0 || rank >= static_cast<int>(claimed.size())) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " is not in this LocalCluster of " +
                                     std::to_string(claimed.size()) + " ranks");
  }
  if (claimed[rank]) {
    fail(Errc::invalid_argument,
         "rank " + std::to_string(rank) + " of this LocalCluster already has a Buffer");
  }
  claimed[rank] = true;
}

void LocalCluster::Impl::release(int rank) {
  std::lock_guard lock(mutex);
  claimed[rank] = false;
}

kernels::host::LocalWorld& LocalCluster::Impl::claim_low_latency(int rank, std::size_t bytes) {
  std::lock_guard lock(mutex);
  if (rank < 0 || rank >= static_cast<int>(claimed.size())) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " is not in this LocalCluster of " +
                                     std::to_string(claimed.size()) + " ranks");
  }
  if (!low_latency) {
    kernels::protocol::Topology topo;
    topo.num_nodes = num_nodes;
    topo.local_size = local_size;
    low_latency = std::make_unique<kernels::host::LocalWorld>(topo, bytes);
    low_latency_claimed.assign(claimed.size(), false);
  }
  if (low_latency->bytes() != bytes) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " asks for a low-latency region of " +
                                     std::to_string(bytes) + " bytes but this LocalCluster's has " +
                                     std::to_string(low_latency->bytes()) + ": every rank must use the same");
  }
  if (low_latency_claimed[rank]) {
    fail(Errc::invalid_argument,
         "rank " + std::to_string(rank) + " of this LocalCluster already has a LowLatencyBuffer");
  }
  low_latency_claimed[rank] = true;
  return *low_latency;
}

void LocalCluster::Impl::release_low_latency(int rank) {
  std::lock_guard lock(mutex);
  low_latency_claimed[rank] = false;
}

LocalCluster::LocalCluster(int num_nodes, int local_size, const Config& config)
    : impl_(std::make_unique<Impl>()) {
  config.validate(num_nodes, local_size);
  auto layout = kernels::protocol::make_buffer_layout(layout_params(config, num_nodes, local_size));
  registered_bytes(config, layout);  // throws when Config::buffer_bytes is too small
  impl_->config = config;
  impl_->num_nodes = num_nodes;
  impl_->local_size = local_size;
  impl_->world = std::make_unique<kernels::host::LocalWorld>(layout);
  impl_->claimed.assign(num_nodes * local_size, false);
}

LocalCluster::~LocalCluster() = default;

int LocalCluster::num_nodes() const {
  return impl_->num_nodes;
}
int LocalCluster::local_size() const {
  return impl_->local_size;
}
int LocalCluster::num_ranks() const {
  return impl_->num_nodes * impl_->local_size;
}
const Config& LocalCluster::config() const {
  return impl_->config;
}

std::uint64_t LocalCluster::fabric_data_puts(int source, int target) const {
  using kernels::protocol::RingKind;
  return impl_->world->puts(source, target, RingKind::dispatch_rdma).puts +
         impl_->world->puts(source, target, RingKind::combine_rdma).puts;
}

}  // namespace ferry
