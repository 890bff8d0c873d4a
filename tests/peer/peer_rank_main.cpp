// One rank of the multi-process peer tests, started by `ferry launch` (test_peer_launch.cpp runs it).
//
//   ferry_peer_rank shm --info-file PATH [--bytes N] [--kill-rank R]
//     shm peer memory: every rank writes a seeded pattern into its own segment, node barrier, every rank
//     checks every local peer's bytes. Rank 0 writes the job id into PATH first (the test checks /dev/shm for
//     it). With
//     --kill-rank R, rank R SIGKILLs itself right after the set-up returned (--kill-stage mapped, the
//     default) or instead of taking part in it (--kill-stage setup); the others then wait for it until launch
//     stops them.
//   ferry_peer_rank proxy --fabric ucx [--messages N] [--max-bytes B]
//     proxy + fabric: every rank sends every other rank randomized bytes in random-size pieces, each posted
//     as a put_signal through a command ring; receivers wait for their signal words and check every byte.
//   ferry_peer_rank cuda-ipc
//     cuda_ipc peer memory on GPU 0 across processes: each rank fills its buffer, every rank checks every
//     peer's.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/seed.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/fabric.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "ferry/transport/proxy.hpp"

#if defined(PEER_RANK_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

using namespace ferry;
using namespace ferry::transport;

namespace {

constexpr auto kTimeout = std::chrono::seconds(30);

std::map<std::string, std::string> parse_flags(int argc, char** argv, int first) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) fail(Errc::invalid_argument, "bad argument '" + key + "'");
    flags[key.substr(2)] = argv[++i];
  }
  return flags;
}

std::uint64_t flag_u64(const std::map<std::string, std::string>& flags, const std::string& name,
                       std::uint64_t fallback) {
  auto it = flags.find(name);
  return it == flags.end() ? fallback : std::stoull(it->second);
}

Peers peers_of(Group& group) {
  return ferry::runtime::group_peers(group, kTimeout);
}

// Rank 0 chooses the seed (FERRY_TEST_SEED, inherited through ferry launch, or a random one) and prints it;
// everyone uses it.
std::uint64_t shared_seed(Group& group) {
  std::uint64_t seed = ferry::test::test_seed();
  std::vector<std::uint8_t> mine(8);
  std::memcpy(mine.data(), &seed, 8);
  auto all = group.all_gather("seed", mine);
  std::memcpy(&seed, all[0].data(), 8);
  if (group.rank() == 0) {
    std::printf("peer rank: seed %llu (set FERRY_TEST_SEED to repeat)\n",
                static_cast<unsigned long long>(seed));
    std::fflush(stdout);
  }
  return seed;
}

std::uint8_t pattern_byte(std::uint64_t seed, int rank, std::size_t i) {
  std::uint64_t x = seed ^ (static_cast<std::uint64_t>(rank) << 48) ^ (i * 0x9e3779b97f4a7c15ull);
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 32;
  return static_cast<std::uint8_t>(x);
}

// Rank 0 hosts the store: it leaves only after every other rank has reported leaving, so nobody loses the
// store while waiting for its last reply.
void depart(Group& group) {
  const std::string key = "peer-rank/departed";
  if (group.rank() != 0) {
    group.store().add(key, 1);
    return;
  }
  Deadline deadline(kTimeout);
  Backoff backoff;
  while (group.store().add(key, 0) < group.world_size() - 1) {
    if (deadline.expired()) fail(Errc::timeout, "rank 0: not every rank departed");
    backoff.pause();
  }
}

int run_shm(Group& group, const std::map<std::string, std::string>& flags) {
  if (group.rank() == 0) {
    auto it = flags.find("info-file");
    if (it == flags.end()) fail(Errc::invalid_argument, "shm needs --info-file");
    std::ofstream(it->second) << group.job().job_id << "\n";
  }
  group.barrier("info written");
  const std::uint64_t seed = shared_seed(group);
  const std::size_t bytes = flag_u64(flags, "bytes", (4 << 20) + 40);
  const long long kill_rank = flags.count("kill-rank") ? std::stoll(flags.at("kill-rank")) : -1;
  Peers peers = peers_of(group);

  const std::string kill_stage = flags.count("kill-stage") ? flags.at("kill-stage") : "mapped";
  if (group.rank() == kill_rank && kill_stage == "setup") {
    // The others create their segments and wait for us inside set-up; launch then stops them with SIGTERM.
    std::printf("rank %d: dying during set-up with SIGKILL\n", group.rank());
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ::kill(::getpid(), SIGKILL);
  }
  auto memory = make_shm_peer_memory(peers, bytes);
  if (group.rank() == kill_rank) {
    std::printf("rank %d: mapped, now killing myself with SIGKILL\n", group.rank());
    std::fflush(stdout);
    ::kill(::getpid(), SIGKILL);
  }
  auto* own = static_cast<std::uint8_t*>(memory->local());
  for (std::size_t i = 0; i < bytes; ++i) own[i] = pattern_byte(seed, group.rank(), i);
  group.barrier("patterns written");
  std::size_t checked = 0;
  for (int local = 0; local < peers.local_size; ++local) {
    const int owner = peers.rank_of(peers.node(), local);
    const auto* theirs = static_cast<const std::uint8_t*>(memory->peer(local));
    for (std::size_t i = 0; i < bytes; ++i) {
      if (theirs[i] != pattern_byte(seed, owner, i)) {
        fail(Errc::internal, "rank " + std::to_string(group.rank()) + " reads byte " + std::to_string(i) +
                                 " of rank " + std::to_string(owner) + " as " + std::to_string(theirs[i]) +
                                 ", expected " + std::to_string(pattern_byte(seed, owner, i)));
      }
      ++checked;
    }
  }
  group.barrier("patterns checked");
  std::printf("rank %d: verified %zu bytes of %d local ranks\n", group.rank(), checked, peers.local_size);
  return 0;
}

// One piece of the bytes `source` sends `target`: [offset, offset + bytes) of the (source, target) block.
struct Piece {
  std::uint32_t offset;
  std::uint32_t bytes;
};

// The random split of a block into pieces, reproducible on both sides from the seed.
std::vector<Piece> split_block(std::uint64_t seed, int source, int target, std::size_t block,
                               std::size_t max_bytes) {
  std::mt19937_64 rng(seed ^ (static_cast<std::uint64_t>(source) << 32) ^ static_cast<std::uint64_t>(target));
  std::vector<Piece> pieces;
  std::size_t at = 0;
  while (at < block) {
    std::size_t size = std::min<std::size_t>(block - at, 1 + rng() % max_bytes);
    if (rng() % 16 == 0) size = std::min<std::size_t>(block - at, 1);  // odd tiny pieces too
    pieces.push_back({static_cast<std::uint32_t>(at), static_cast<std::uint32_t>(size)});
    at += size;
  }
  std::shuffle(pieces.begin(), pieces.end(), rng);  // pieces land out of address order
  return pieces;
}

int run_proxy(Group& group, const std::map<std::string, std::string>& flags) {
  const std::uint64_t seed = shared_seed(group);
  const int world = group.world_size();
  const int me = group.rank();
  const std::size_t block = flag_u64(flags, "block-bytes", 256 << 10);
  const std::size_t max_bytes = flag_u64(flags, "max-bytes", 8192);
  Peers peers = peers_of(group);
  FabricOptions fabric_options;
  fabric_options.kind = parse_fabric_kind(flags.count("fabric") ? flags.at("fabric") : "ucx");

  // Region 0: [send blocks, one per target][receive blocks, one per source][signal words, one per source].
  const std::size_t send_base = 0;
  const std::size_t recv_base = block * static_cast<std::size_t>(world);
  const std::size_t signal_base = 2 * recv_base;
  const std::size_t region_bytes = signal_base + 8 * static_cast<std::size_t>(world);
  auto fabric = make_fabric(peers, fabric_options);
  RegionId region = fabric->register_region(nullptr, region_bytes, MemoryKind::host);
  fabric->connect();
  auto* base = static_cast<std::uint8_t*>(fabric->region_base(region));
  std::printf("rank %d: %s\n", me, fabric->description().c_str());

  for (int target = 0; target < world; ++target) {
    std::uint8_t* send = base + send_base + block * static_cast<std::size_t>(target);
    for (std::size_t i = 0; i < block; ++i)
      send[i] = pattern_byte(seed ^ static_cast<std::uint64_t>(target), me, i);
  }
  group.barrier("regions ready");

  ProxyOptions proxy_options;
  proxy_options.ring_slots = 64;  // small: the ring wraps many times and credit waits happen
  proxy_options.max_in_flight = 32;
  proxy_options.memory = RingMemory::host;
  proxy_options.timeout = kTimeout;
  Proxy proxy(std::move(fabric), proxy_options);
  ProducerRing& ring = proxy.ring(0);

  std::size_t expected_signals = 0;
  for (int target = 0; target < world; ++target) {
    if (target == me) continue;
    for (const Piece& piece : split_block(seed, me, target, block, max_bytes)) {
      ring.post(make_put_signal(static_cast<std::uint16_t>(target), static_cast<std::uint8_t>(region),
                                send_base + block * static_cast<std::size_t>(target) + piece.offset,
                                recv_base + block * static_cast<std::size_t>(me) + piece.offset, piece.bytes,
                                static_cast<std::uint32_t>(signal_base + 8 * static_cast<std::size_t>(me)),
                                1));
    }
  }
  ring.post(make_flush());
  ring.wait_completed(ring.posted());
  std::printf("rank %d: %llu commands completed\n", me, static_cast<unsigned long long>(ring.posted()));

  for (int source = 0; source < world; ++source) {
    if (source == me) continue;
    const std::size_t pieces = split_block(seed, source, me, block, max_bytes).size();
    expected_signals += pieces;
    auto* signal =
        reinterpret_cast<std::uint64_t*>(base + signal_base + 8 * static_cast<std::size_t>(source));
    Deadline deadline(kTimeout);
    Backoff backoff;
    while (__atomic_load_n(signal, __ATOMIC_ACQUIRE) < pieces) {
      proxy.check_error();
      if (deadline.expired()) {
        fail(Errc::timeout, "rank " + std::to_string(me) + ": signal from rank " + std::to_string(source) +
                                " is " + std::to_string(__atomic_load_n(signal, __ATOMIC_ACQUIRE)) +
                                ", expected " + std::to_string(pieces));
      }
      backoff.pause();
    }
    if (__atomic_load_n(signal, __ATOMIC_ACQUIRE) != pieces) {
      fail(Errc::internal, "rank " + std::to_string(me) + ": signal from rank " + std::to_string(source) +
                               " overshot to " + std::to_string(*signal) + ", expected " +
                               std::to_string(pieces));
    }
    const std::uint8_t* received = base + recv_base + block * static_cast<std::size_t>(source);
    for (std::size_t i = 0; i < block; ++i) {
      const std::uint8_t expected = pattern_byte(seed ^ static_cast<std::uint64_t>(me), source, i);
      if (received[i] != expected) {
        fail(Errc::internal, "rank " + std::to_string(me) + ": byte " + std::to_string(i) + " from rank " +
                                 std::to_string(source) + " is " + std::to_string(received[i]) +
                                 ", expected " + std::to_string(expected));
      }
    }
  }
  // Everyone has everything before anyone tears its fabric down (the proxy keeps progressing meanwhile).
  group.barrier("verified");
  std::printf("rank %d: verified %zu bytes from %d ranks (%zu signals)\n", me,
              block * static_cast<std::size_t>(world - 1), world - 1, expected_signals);
  return 0;
}

#if defined(PEER_RANK_HAVE_CUDA)
int run_cuda_ipc(Group& group) {
  const std::size_t bytes = (2 << 20) + 512;
  Peers peers = peers_of(group);
  auto memory = make_cuda_ipc_peer_memory(peers, bytes, 0);
  auto check = [](cudaError_t status, const char* what) {
    if (status != cudaSuccess) fail(Errc::system, std::string(what) + ": " + cudaGetErrorString(status));
  };
  check(cudaMemset(memory->local(), 0x40 + group.rank(), bytes), "cudaMemset");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  group.barrier("written");
  std::vector<unsigned char> host(bytes);
  for (int local = 0; local < peers.local_size; ++local) {
    check(cudaMemcpy(host.data(), memory->peer(local), bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
    const int owner = peers.rank_of(peers.node(), local);
    for (std::size_t i = 0; i < bytes; ++i) {
      if (host[i] != 0x40 + owner) {
        fail(Errc::internal, "rank " + std::to_string(group.rank()) + ": byte " + std::to_string(i) +
                                 " of rank " + std::to_string(owner) + " is " + std::to_string(host[i]));
      }
    }
  }
  group.barrier("read");  // nobody frees its buffer while a peer still reads it
  std::printf("rank %d: cuda_ipc verified %d peers\n", group.rank(), peers.local_size);
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s shm|proxy [--flag value]...\n", argv[0]);
    return 2;
  }
  try {
    const std::string mode = argv[1];
    auto flags = parse_flags(argc, argv, 2);
    GroupOptions options;
    options.timeout = kTimeout;
    auto group = Group::from_env(options);
    int status = 2;
    if (mode == "shm") {
      status = run_shm(group, flags);
    } else if (mode == "proxy") {
      status = run_proxy(group, flags);
#if defined(PEER_RANK_HAVE_CUDA)
    } else if (mode == "cuda-ipc") {
      status = run_cuda_ipc(group);
#endif
    } else {
      std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
    }
    depart(group);
    return status;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
