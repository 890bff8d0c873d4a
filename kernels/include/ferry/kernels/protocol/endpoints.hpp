// The two ends of one ring, as seen by the role that uses it.
//
// A ring joins a producer rank and a consumer rank. Depending on where the other end is (Reach), the producer
// writes slots directly (self: its own buffer; node: a local peer's buffer, the NVLink path) or assembles them
// in its staging area and puts them across the fabric followed by one signal that advances the tail.
//
// The Io policy (host: kernels/host; device: the proxy's command ring) supplies:
//   std::byte* local()                 this rank's buffer
//   std::byte* node_peer(int local)    a local rank's buffer (peer memory)
//   void put(int rank, size_t src_offset, size_t dst_offset, size_t bytes)     to a rank on another node
//   void signal(int rank, size_t word_offset, uint64_t add)  ordered after this lane's earlier puts to `rank`
//   Traffic& traffic()
// The At policy supplies the memory orders (memory_order.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/ring.hpp"
#include "ferry/kernels/protocol/step.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace ferry::kernels::protocol {

enum class Reach : std::uint8_t { self, node, fabric };

FERRY_HD inline Reach reach_between(const Topology& topo, int from, int to) {
  if (from == to) return Reach::self;
  return topo.node_of(from) == topo.node_of(to) ? Reach::node : Reach::fabric;
}

FERRY_HD inline std::uint64_t* counter_word(std::byte* base, std::size_t offset) {
  return reinterpret_cast<std::uint64_t*>(base + offset);
}

FERRY_HD inline PathCount& path_of(Traffic& traffic, Reach reach) {
  return reach == Reach::fabric ? traffic.fabric : reach == Reach::node ? traffic.node : traffic.self;
}

// Peer indices: `mine` is the other end's index in this rank's view of the family, `theirs` this rank's index in
// the other end's view (for the rdma families that is a node, for the nvl families a local rank).
template <class At, class Io>
struct Producer {
  const RingFamily* family = nullptr;
  int channel = 0;
  int mine = 0;
  int theirs = 0;
  int consumer_rank = 0;
  Reach reach = Reach::self;
  std::byte* local = nullptr;
  std::byte* consumer = nullptr;  // the consumer's buffer when reachable by pointer (self, node)

  FERRY_HD Producer() = default;
  FERRY_HD Producer(Io& io, const Topology& topo, const RingFamily& ring_family, int ring_channel, int my_rank,
                    int peer_rank, int mine_index, int theirs_index)
      : family(&ring_family),
        channel(ring_channel),
        mine(mine_index),
        theirs(theirs_index),
        consumer_rank(peer_rank),
        reach(reach_between(topo, my_rank, peer_rank)),
        local(io.local()),
        consumer(reach == Reach::fabric ? nullptr : io.node_peer(topo.local_of(peer_rank))) {}

  FERRY_HD std::uint64_t tail() const { return At::load_relaxed(counter_word(local, family->out_tail(channel, mine))); }
  FERRY_HD std::uint64_t head() const {
    return At::load_acquire(counter_word(local, family->out_head(channel, mine)));
  }
  FERRY_HD std::uint64_t credit() const { return protocol::credit(tail(), head(), family->slots); }

  // Where to write the message with ring counter `counter` (tail + i for the i-th unpublished one).
  FERRY_HD std::byte* slot(std::uint64_t counter) const {
    if (reach == Reach::fabric) return local + family->staging_slot(channel, mine, counter);
    return consumer + family->slot(channel, theirs, counter);
  }

  // Publishes the next `count` written slots, each `used_bytes` long.
  FERRY_HD void publish(Io& io, std::uint64_t count, std::size_t used_bytes) {
    std::uint64_t first = tail();
    std::uint64_t next = first + count;
    if (reach == Reach::fabric) {
      for (std::uint64_t i = 0; i < count; ++i) {
        io.put(consumer_rank, family->staging_slot(channel, mine, first + i), family->slot(channel, theirs, first + i),
               used_bytes);
      }
      io.signal(consumer_rank, family->in_tail(channel, theirs), count);
      io.traffic().fabric_puts += count;
      io.traffic().fabric_signals += 1;
    } else {
      At::store_release(counter_word(consumer, family->in_tail(channel, theirs)), next);
    }
    At::store_relaxed(counter_word(local, family->out_tail(channel, mine)), next);
    PathCount& path = path_of(io.traffic(), reach);
    path.messages += count;
    path.bytes += count * used_bytes;
  }

  FERRY_HD Wait credit_wait(std::int64_t done, std::int64_t expected) const {
    Wait wait;
    wait.kind = WaitKind::credit;
    wait.ring = family->kind;
    wait.peer_rank = consumer_rank;
    wait.head = head();
    wait.tail = tail();
    wait.done = done;
    wait.expected = expected;
    return wait;
  }
};

template <class At, class Io>
struct Consumer {
  const RingFamily* family = nullptr;
  int channel = 0;
  int mine = 0;
  int theirs = 0;
  int producer_rank = 0;
  Reach reach = Reach::self;
  std::byte* local = nullptr;
  std::byte* producer = nullptr;  // the producer's buffer when reachable by pointer (self, node)

  FERRY_HD Consumer() = default;
  FERRY_HD Consumer(Io& io, const Topology& topo, const RingFamily& ring_family, int ring_channel, int my_rank,
                    int peer_rank, int mine_index, int theirs_index)
      : family(&ring_family),
        channel(ring_channel),
        mine(mine_index),
        theirs(theirs_index),
        producer_rank(peer_rank),
        reach(reach_between(topo, my_rank, peer_rank)),
        local(io.local()),
        producer(reach == Reach::fabric ? nullptr : io.node_peer(topo.local_of(peer_rank))) {}

  FERRY_HD std::uint64_t head() const { return At::load_relaxed(counter_word(local, family->in_head(channel, mine))); }
  FERRY_HD std::uint64_t tail() const {
    return At::load_acquire(counter_word(local, family->in_tail(channel, mine)));
  }
  FERRY_HD std::uint64_t ready() const { return protocol::ready(tail(), head()); }

  FERRY_HD const std::byte* slot(std::uint64_t counter) const {
    return local + family->slot(channel, mine, counter);
  }

  // Returns `count` consumed slots to the producer as credit.
  FERRY_HD void release(Io& io, std::uint64_t count) {
    std::uint64_t next = head() + count;
    At::store_relaxed(counter_word(local, family->in_head(channel, mine)), next);
    if (reach == Reach::fabric) {
      io.signal(producer_rank, family->out_head(channel, theirs), count);
      io.traffic().fabric_signals += 1;
    } else {
      At::store_release(counter_word(producer, family->out_head(channel, theirs)), next);
    }
  }

  FERRY_HD Wait data_wait(std::int64_t done, std::int64_t expected) const {
    Wait wait;
    wait.kind = WaitKind::data;
    wait.ring = family->kind;
    wait.peer_rank = producer_rank;
    wait.head = head();
    wait.tail = tail();
    wait.done = done;
    wait.expected = expected;
    return wait;
  }
};

}  // namespace ferry::kernels::protocol
