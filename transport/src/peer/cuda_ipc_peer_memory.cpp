// CUDA IPC peer regions: cudaMalloc + cudaIpcGetMemHandle, handles exchanged through the store, opened with
// cudaIpcOpenMemHandle by ranks in other processes. Ranks that share a process (virtual ranks on one or more
// GPUs) cannot open their own process's handles, so they use each other's plain device pointers instead.
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fabric/fabric_common.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/cuda_check.hpp"
#include "ferry/transport/peer_memory.hpp"

namespace ferry::transport {
namespace {

void check(cudaError_t status, const std::string& what) {
  detail::check_cuda(status, "cuda_ipc peer memory: " + what);
}

// Identifies this process among the ranks of a node. Not the pid: ranks of one node may sit in different pid
// namespaces, where pids repeat.
std::uint64_t process_token() {
  static const std::uint64_t token = [] {
    std::random_device source;
    std::uint64_t value = (std::uint64_t{source()} << 32) ^ source();
    return value ^ static_cast<std::uint64_t>(getpid());
  }();
  return token;
}

class CudaIpcPeerMemory final : public PeerMemory {
 public:
  CudaIpcPeerMemory(int device, std::size_t bytes, int local_rank, int local_size)
      : device_(device),
        bytes_(bytes),
        local_rank_(local_rank),
        pointers_(static_cast<std::size_t>(local_size)),
        imported_(static_cast<std::size_t>(local_size), false) {}

  // On this region's GPU, putting back the thread's context after (DeviceScope: restoring "device 0" by hand
  // would create a context there on a thread that had none).
  ~CudaIpcPeerMemory() override {
    detail::DeviceScope scope(device_, std::nothrow);
    for (std::size_t i = 0; i < pointers_.size(); ++i) {
      if (imported_[i]) cudaIpcCloseMemHandle(pointers_[i]);
    }
    if (own_ != nullptr) cudaFree(own_);
  }

  void allocate() {
    check(cudaMalloc(&own_, bytes_),
          "cudaMalloc(" + std::to_string(bytes_) + " bytes) on device " + std::to_string(device_));
    check(cudaMemset(own_, 0, bytes_), "cudaMemset");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after cudaMemset");
    pointers_[static_cast<std::size_t>(local_rank_)] = own_;
  }

  void set_peer(int local_rank, void* pointer, bool imported) {
    pointers_[static_cast<std::size_t>(local_rank)] = pointer;
    imported_[static_cast<std::size_t>(local_rank)] = imported;
  }

  void* own() const { return own_; }
  void* local() override { return own_; }
  void* peer(int local_rank) override {
    if (local_rank < 0 || local_rank >= static_cast<int>(pointers_.size())) {
      fail(Errc::invalid_argument, "cuda_ipc peer memory: local rank " + std::to_string(local_rank) +
                                       " is outside the node's " + std::to_string(pointers_.size()) +
                                       " ranks");
    }
    return pointers_[static_cast<std::size_t>(local_rank)];
  }
  std::size_t bytes() const override { return bytes_; }
  MemoryKind kind() const override { return MemoryKind::cuda; }

 private:
  int device_;
  std::size_t bytes_;
  int local_rank_;
  void* own_ = nullptr;
  std::vector<void*> pointers_;
  std::vector<bool> imported_;  // opened with cudaIpcOpenMemHandle (closed in the destructor)
};

// Lets `device` load and store memory of `peer_device` (same process). Enabling twice is fine.
void enable_peer_access(int device, int peer_device) {
  if (device == peer_device) return;
  int can_access = 0;
  check(cudaDeviceCanAccessPeer(&can_access, device, peer_device),
        "cudaDeviceCanAccessPeer(" + std::to_string(device) + ", " + std::to_string(peer_device) + ")");
  if (!can_access) {
    fail(Errc::unsupported, "cuda_ipc peer memory: GPU " + std::to_string(device) + " cannot access GPU " +
                                std::to_string(peer_device) + " directly (no P2P between them)");
  }
  cudaError_t status = cudaDeviceEnablePeerAccess(peer_device, 0);
  if (status == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();  // clear the sticky-until-read status
    return;
  }
  check(status, "cudaDeviceEnablePeerAccess(" + std::to_string(peer_device) + ") on device " +
                    std::to_string(device));
}

}  // namespace

std::unique_ptr<PeerMemory> make_cuda_ipc_peer_memory(const Peers& peers, std::size_t bytes, int device,
                                                      const std::string& tag) {
  if (peers.store == nullptr) fail(Errc::invalid_argument, "cuda_ipc peer memory: Peers::store is null");
  if (peers.local_size < 1 || peers.local_rank < 0 || peers.local_rank >= peers.local_size) {
    fail(Errc::invalid_argument, "cuda_ipc peer memory: local rank " + std::to_string(peers.local_rank) +
                                     " is outside the node's " + std::to_string(peers.local_size) + " ranks");
  }
  if (bytes == 0) fail(Errc::invalid_argument, "cuda_ipc peer memory: bytes is 0");
  if (tag.empty()) fail(Errc::invalid_argument, "cuda_ipc peer memory: tag is empty");
  std::string reason;
  const int count = detail::visible_gpus(reason);
  if (count == 0) fail(Errc::unsupported, "cuda_ipc peer memory: " + reason);
  if (device < 0 || device >= count) {
    fail(Errc::invalid_argument, "cuda_ipc peer memory: device " + std::to_string(device) +
                                     " is outside the " + std::to_string(count) + " visible GPUs");
  }

  detail::DeviceScope scope(device);
  auto memory = std::make_unique<CudaIpcPeerMemory>(device, bytes, peers.local_rank, peers.local_size);
  memory->allocate();
  cudaIpcMemHandle_t handle{};
  check(cudaIpcGetMemHandle(&handle, memory->own()), "cudaIpcGetMemHandle");

  detail::BlobWriter writer;
  writer.u64(process_token());
  writer.u32(static_cast<std::uint32_t>(device));
  writer.u64(reinterpret_cast<std::uintptr_t>(memory->own()));
  writer.u64(bytes);
  writer.bytes(&handle, sizeof(handle));
  const std::string node_key = "ferry/cuda_ipc/" + tag + "/node" + std::to_string(peers.node());
  auto all = peers.store->all_gather(node_key + "/handles", peers.local_rank, peers.local_size, writer.take(),
                                     peers.timeout);

  for (int local = 0; local < peers.local_size; ++local) {
    if (local == peers.local_rank) continue;
    const int peer_rank = peers.rank_of(peers.node(), local);
    detail::BlobReader reader(all[static_cast<std::size_t>(local)],
                              "cuda_ipc descriptor of rank " + std::to_string(peer_rank));
    std::uint64_t token = reader.u64();
    int peer_device = static_cast<int>(reader.u32());
    std::uint64_t pointer = reader.u64();
    std::uint64_t peer_bytes = reader.u64();
    Bytes handle_bytes = reader.bytes();
    reader.expect_end();
    if (peer_bytes != bytes) {
      fail(Errc::invalid_argument, "cuda_ipc peer memory '" + tag + "': rank " + std::to_string(peer_rank) +
                                       " asked for " + std::to_string(peer_bytes) + " bytes but rank " +
                                       std::to_string(peers.rank) + " for " + std::to_string(bytes));
    }
    if (handle_bytes.size() != sizeof(cudaIpcMemHandle_t)) {
      fail(Errc::protocol, "cuda_ipc descriptor of rank " + std::to_string(peer_rank) + " carries a " +
                               std::to_string(handle_bytes.size()) + "-byte handle");
    }
    if (token == process_token()) {
      enable_peer_access(device, peer_device);
      memory->set_peer(local, reinterpret_cast<void*>(static_cast<std::uintptr_t>(pointer)), false);
      continue;
    }
    cudaIpcMemHandle_t peer_handle{};
    std::memcpy(&peer_handle, handle_bytes.data(), sizeof(peer_handle));
    void* mapped = nullptr;
    check(cudaIpcOpenMemHandle(&mapped, peer_handle, cudaIpcMemLazyEnablePeerAccess),
          "cudaIpcOpenMemHandle for rank " + std::to_string(peer_rank) + " (its GPU " +
              std::to_string(peer_device) + ")");
    memory->set_peer(local, mapped, true);
  }
  peers.store->barrier(node_key + "/opened", peers.local_rank, peers.local_size, peers.timeout);
  return memory;
}

}  // namespace ferry::transport
