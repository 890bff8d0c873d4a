// Builds without CUDA: cuda_ipc peer memory exists as a name that says why it cannot run.
#include "ferry/core/error.hpp"
#include "ferry/transport/peer_memory.hpp"

namespace ferry::transport {

std::unique_ptr<PeerMemory> make_cuda_ipc_peer_memory(const Peers&, std::size_t, int, const std::string&) {
  fail(Errc::unsupported, "cuda_ipc peer memory: this build of ferry has no CUDA (nvcc was not found)");
}

}  // namespace ferry::transport
