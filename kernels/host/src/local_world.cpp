#include "ferry/kernels/host/local_world.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

#include "ferry/core/error.hpp"
#include "ferry/kernels/host/host_io.hpp"

namespace ferry::kernels::host {

namespace {

constexpr int kLedgerFamilies = protocol::kRingKinds;  // indexed by RingKind

bool inside(std::size_t offset, std::size_t start, std::size_t bytes) {
  return offset >= start && offset < start + bytes;
}

}  // namespace

void LocalWorld::Free::operator()(std::byte* pointer) const {
  std::free(pointer);
}

class LocalWorld::Node final : public NodeMemory {
 public:
  Node(const LocalWorld& world, int node) : world_(world), node_(node) {}
  std::byte* base(int local_rank) const override {
    return world_.buffer(world_.layout_.params.topo.rank_of(node_, local_rank));
  }

 private:
  const LocalWorld& world_;
  int node_;
};

class LocalWorld::Remote final : public RemoteMemory {
 public:
  Remote(LocalWorld& world, int rank) : world_(world), rank_(rank) {}

  std::unique_ptr<RemoteWriter> open_writer() override { return std::make_unique<Writer>(world_, rank_); }

 private:
  class Writer final : public RemoteWriter {
   public:
    Writer(LocalWorld& world, int rank) : world_(world), rank_(rank) {}
    void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) override {
      std::memcpy(world_.buffer(rank) + dst_offset, world_.buffer(rank_) + src_offset, bytes);
      world_.record_put(rank_, rank, dst_offset, bytes);
    }
    void signal(int rank, std::size_t word_offset, std::uint64_t add) override {
      // Release: the memcpys of earlier puts by this thread become visible no later than the new count.
      std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(world_.buffer(rank) + word_offset))
          .fetch_add(add, std::memory_order_release);
    }

   private:
    LocalWorld& world_;
    int rank_;
  };

  LocalWorld& world_;
  int rank_;
};

LocalWorld::LocalWorld(const protocol::BufferLayout& layout) : layout_(layout) {
  const protocol::Topology& topo = layout.params.topo;
  int ranks = topo.num_ranks();
  for (int rank = 0; rank < ranks; ++rank) {
    void* memory = std::aligned_alloc(protocol::kRegionAlignment, layout.total_bytes);
    if (memory == nullptr) {
      fail(Errc::system, "cannot allocate the " + std::to_string(layout.total_bytes) +
                             "-byte buffer of rank " + std::to_string(rank) + " for an in-process world");
    }
    std::memset(memory, 0, layout.total_bytes);
    buffers_.emplace_back(static_cast<std::byte*>(memory));
  }
  for (int node = 0; node < topo.num_nodes; ++node) nodes_.push_back(std::make_unique<Node>(*this, node));
  for (int rank = 0; rank < ranks; ++rank) remotes_.push_back(std::make_unique<Remote>(*this, rank));
  std::size_t words = static_cast<std::size_t>(ranks) * ranks * kLedgerFamilies * 2;
  ledger_ = std::make_unique<std::atomic<std::uint64_t>[]>(words);
  for (std::size_t i = 0; i < words; ++i) ledger_[i].store(0, std::memory_order_relaxed);
}

LocalWorld::LocalWorld(const protocol::Topology& topo, std::size_t bytes)
    : LocalWorld([&] {
        protocol::BufferLayout raw;
        raw.params.topo = topo;
        raw.total_bytes = bytes;
        return raw;
      }()) {
  with_rings_ = false;
}

LocalWorld::~LocalWorld() = default;

RankMemory LocalWorld::memory(int rank) {
  RankMemory memory;
  memory.local = buffer(rank);
  memory.bytes = layout_.total_bytes;
  memory.node = nodes_[layout_.params.topo.node_of(rank)].get();
  memory.remote = remotes_[rank].get();
  return memory;
}

void LocalWorld::record_put(int source, int target, std::size_t dst_offset, std::size_t bytes) {
  if (!with_rings_) return;
  int family = -1;
  for (int kind = 0; kind < protocol::kRingKinds; ++kind) {
    const protocol::RingFamily& ring = layout_.families[kind];
    // A fabric put lands in a ring's slots (data) or, for a signal-only command, nowhere: count data only.
    if (inside(dst_offset, ring.data, ring.data_bytes())) family = kind;
  }
  if (family < 0) {
    fail(Errc::internal, "rank " + std::to_string(source) + " put " + std::to_string(bytes) +
                             " bytes at offset " + std::to_string(dst_offset) + " of rank " +
                             std::to_string(target) + ", outside every ring");
  }
  std::size_t index =
      ((static_cast<std::size_t>(source) * num_ranks() + target) * kLedgerFamilies + family) * 2;
  ledger_[index].fetch_add(1, std::memory_order_relaxed);
  ledger_[index + 1].fetch_add(bytes, std::memory_order_relaxed);
}

PutTally LocalWorld::puts(int source, int target, protocol::RingKind kind) const {
  std::size_t index =
      ((static_cast<std::size_t>(source) * num_ranks() + target) * kLedgerFamilies + static_cast<int>(kind)) *
      2;
  return {ledger_[index].load(std::memory_order_relaxed), ledger_[index + 1].load(std::memory_order_relaxed)};
}

}  // namespace ferry::kernels::host
