// GPU peer tests (run where a GPU is; gpu_main.cpp exits 77 elsewhere): cuda_ipc peer memory between virtual
// ranks of one process and between processes, and a CUDA kernel producing into a command ring drained by the
// proxy. scripts/gpu-check runs it from the staged copies (the programs it starts are found beside it).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "common/sibling_program.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "ferry/transport/proxy.hpp"
#include "gpu_ring_producer.hpp"
#include "launch_run.hpp"
#include "rank_threads.hpp"
#include "scripted_fabric.hpp"

using namespace std::chrono_literals;
using namespace ferry::transport;
using Catch::Matchers::Contains;

TEST_CASE("cuda_ipc peer memory between virtual ranks of one process uses plain device pointers", "[gpu]") {
  const std::string job = ferry::test::unique_job_id("cuda-ipc-virtual");
  const std::size_t bytes = (1 << 20) + 256;
  using ferry::test::expect;
  // Rank threads throw what they find (expect); run_ranks rethrows it here, where Catch2 reports it.
  REQUIRE_NOTHROW(ferry::test::run_ranks(3, 3, job, [&](ferry::Group& group) {
    const std::string me = "rank " + std::to_string(group.rank()) + ": ";
    auto peers = ferry::test::peers_of(group, 30s);
    auto memory = make_cuda_ipc_peer_memory(peers, bytes, 0);
    expect(memory->kind() == MemoryKind::cuda, me + "kind() is not cuda");
    expect(memory->bytes() == bytes, me + "bytes() differs");
    expect(cudaSetDevice(0) == cudaSuccess, me + "cudaSetDevice");
    expect(cudaMemset(memory->local(), 0x10 + group.rank(), bytes) == cudaSuccess, me + "cudaMemset");
    expect(cudaDeviceSynchronize() == cudaSuccess, me + "cudaDeviceSynchronize");
    group.barrier("written");
    std::vector<unsigned char> host(bytes);
    for (int peer = 0; peer < 3; ++peer) {
      expect(cudaMemcpy(host.data(), memory->peer(peer), bytes, cudaMemcpyDeviceToHost) == cudaSuccess,
             me + "cudaMemcpy from peer " + std::to_string(peer));
      const auto bad =
          std::find_if(host.begin(), host.end(), [&](unsigned char b) { return b != 0x10 + peer; });
      expect(bad == host.end(), me + "byte " + std::to_string(bad - host.begin()) + " of peer " +
                                    std::to_string(peer) + " is wrong");
    }
    group.barrier("read");
  }));
}

TEST_CASE("cuda_ipc peer memory across processes through ferry launch", "[gpu]") {
  const ferry::test::Outcome outcome = ferry::test::run(
      ferry::test::sibling_program(FERRY_BIN) + " launch --nodes 1 --ranks-per-node 2 --timeout 120 -- " +
      ferry::test::sibling_program(PEER_RANK_BIN) + " cuda-ipc");
  CHECK(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Contains("rank 0: cuda_ipc verified") && Contains("rank 1: cuda_ipc verified"));
}

TEST_CASE("a CUDA kernel posts commands into a mapped ring and the proxy drains them in order", "[gpu]") {
  auto fabric = std::make_unique<ferry::test::ScriptedFabric>();
  auto* seen = fabric.get();
  ProxyOptions options;
  options.ring_slots = 256;
  options.memory = RingMemory::cuda_mapped;
  options.timeout = 60s;
  Proxy proxy(std::move(fabric), options);
  ProducerRing& ring = proxy.ring(0);
  REQUIRE(ring.device_mapped());

  constexpr std::uint64_t kCount = 200000;
  auto start = std::chrono::steady_clock::now();
  std::uint64_t posted = ferry::test::gpu_post_commands(ring.device_view(), kCount, 60'000'000'000ull);
  REQUIRE(posted == kCount);
  // The kernel took the producer role: completion is read from the control block directly.
  ferry::Deadline deadline(60s);
  ferry::Backoff backoff;
  while (ring.completed() < kCount && !deadline.expired()) backoff.pause();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(ring.completed() == kCount);
  std::cout << "GPU -> proxy: " << kCount << " commands in " << seconds << " s = " << kCount / seconds / 1e6
            << " M commands/s\n";
  auto ops = seen->ops();
  REQUIRE(ops.size() == kCount);
  for (std::uint64_t i = 0; i < kCount; ++i) {
    INFO("command " << i);
    REQUIRE(ops[i] == ferry::test::expected_op(ferry::test::gpu_expected_command(i)));
  }
}
