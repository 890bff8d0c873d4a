// The two ends of one ring, as seen by the role that uses it (policy: io.hpp).
//
// A ring joins a producer rank and a consumer rank. Depending on where the other end is (Reach), the producer
// writes slots directly (self: its own buffer; node: a local peer's buffer, the NVLink path) or assembles
// them in its staging area and puts them across the fabric: a chunk of contiguous slots as one put (two when
// it wraps), then one signal that advances the tail. Consumers return credit in batches (credit_batch,
// ring.hpp), and always when they have taken the operation's last message from the ring.
//
// Each role keeps a RingState per ring it uses for the operation: where the operation's window starts and how
// far this end has got. The counters in the buffer that only this end writes (out_tail, in_head) are written
// back as it goes, for the next operation to start from; nothing reads them during an operation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/io.hpp"
#include "ferry/kernels/protocol/ring.hpp"
#include "ferry/kernels/protocol/step.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace ferry::kernels::protocol {

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

// One end's progress on one ring in the current operation.
struct RingState {
  std::uint64_t base = 0;      // the ring's counter when the operation started (both ends agree)
  std::uint64_t count = 0;     // messages published (producer) or consumed (consumer) in this operation
  std::uint64_t returned = 0;  // consumer: messages already returned to the producer as credit
};

// Which ring, from one end: `mine` is the other end's index in this rank's view of the family, `theirs` this
// rank's index in the other end's view.
struct RingRef {
  const RingFamily* family = nullptr;
  int channel = 0;
  int peer_rank = 0;
  int mine = 0;
  int theirs = 0;
};

// The three ways two ranks are joined by a ring of one family (the same formulas on both ends):
// a fabric ring between rail partners, this rank and its partner on remote node index `remote`;
FERRY_HD inline RingRef rail_ring(const Topology& topo, int rank, const RingFamily& family, int channel,
                                  int remote) {
  const int own = topo.node_of(rank);
  const int node = remote_node(own, remote);
  return RingRef{&family, channel, topo.rail_partner(rank, node), remote, remote_index(node, own)};
}
// a node ring carrying tokens of remote node index `remote` between this rank and local rank `local`;
FERRY_HD inline RingRef relay_ring(const Topology& topo, int rank, const RingFamily& family, int channel,
                                   int local, int remote) {
  const int NR = topo.num_remote_nodes();
  return RingRef{&family, channel, topo.rank_of(topo.node_of(rank), local), local * NR + remote,
                 topo.local_of(rank) * NR + remote};
}
// and a direct ring between this rank and local rank `local`.
FERRY_HD inline RingRef direct_ring(const Topology& topo, int rank, const RingFamily& family, int channel,
                                    int local) {
  return RingRef{&family, channel, topo.rank_of(topo.node_of(rank), local), local, topo.local_of(rank)};
}

template <class Io>
struct Producer {
  RingRef ref;
  Reach reach = Reach::self;
  std::byte* local = nullptr;
  std::byte* consumer = nullptr;  // the consumer's buffer when reachable by pointer (self, node)
  std::size_t stride = 0;
  std::size_t used = 0;  // bytes of a message that matter
  RingWindow window;
  RingState* state = nullptr;

  Producer() = default;  // defaulted: nvcc infers host and device (an annotation is ignored with a warning)
  FERRY_HD Producer(Io& io, const Topology& topo, int my_rank, const RingRef& ring, std::size_t slot_stride,
                    std::size_t used_bytes, RingState& ring_state)
      : ref(ring),
        reach(reach_between(topo, my_rank, ring.peer_rank)),
        local(io.local()),
        consumer(reach == Reach::fabric ? nullptr : io.node_peer(topo.local_of(ring.peer_rank))),
        stride(slot_stride),
        used(used_bytes),
        window{ring_state.base, ring.family->window_slots(slot_stride)},
        state(&ring_state) {}

  // Starts an operation on this ring: the window begins at this end's tail.
  FERRY_HD static void begin(Io& io, const RingRef& ring, RingState& state) {
    state.base = io.load_private(counter_word(io.local(), ring.family->out_tail(ring.channel, ring.mine)));
    state.count = 0;
    state.returned = 0;
  }

  FERRY_HD std::uint64_t tail() const { return state->base + state->count; }
  FERRY_HD std::uint64_t head(Io& io) const {
    return io.load_acquire(counter_word(local, ref.family->out_head(ref.channel, ref.mine)), reach);
  }
  FERRY_HD std::uint64_t credit(Io& io) const { return window.credit(tail(), head(io)); }

  // Where to write the i-th unpublished message.
  FERRY_HD std::byte* slot(std::uint64_t i) const {
    std::size_t at = window.position(tail() + i) * stride;
    if (reach == Reach::fabric) return local + ref.family->staging_data(ref.channel, ref.mine) + at;
    return consumer + ref.family->ring_data(ref.channel, ref.theirs) + at;
  }

  // Publishes the next `count` written slots.
  FERRY_HD void publish(Io& io, std::uint64_t count) {
    if (count == 0) return;
    io.sync();  // every thread's writes into the slots are done
    const std::uint64_t next = tail() + count;
    if (io.leader()) {
      if (reach == Reach::fabric) {
        put_span(io, window.position(tail()), count);
        io.signal(ref.peer_rank, ref.family->in_tail(ref.channel, ref.theirs), count);
        io.traffic().fabric_signals += 1;
      } else {
        io.store_release(counter_word(consumer, ref.family->in_tail(ref.channel, ref.theirs)), next, reach);
      }
      io.store_private(counter_word(local, ref.family->out_tail(ref.channel, ref.mine)), next);
    }
    state->count += count;
    PathCount& path = path_of(io.traffic(), reach);
    path.messages += count;
    path.bytes += count * used;
  }

  FERRY_HD Wait credit_wait(Io& io, std::int64_t done, std::int64_t expected) const {
    Wait wait;
    wait.kind = WaitKind::credit;
    wait.ring = ref.family->kind;
    wait.peer_rank = ref.peer_rank;
    wait.head = head(io);
    wait.tail = tail();
    wait.done = done;
    wait.expected = expected;
    return wait;
  }

 private:
  // Contiguous slots are contiguous bytes in the staging area and in the remote ring: one put per run of
  // them.
  FERRY_HD void put_span(Io& io, std::uint64_t first, std::uint64_t count) const {
    std::uint64_t before_wrap = min_u64(count, window.slots - first);
    put_run(io, first, before_wrap);
    if (count > before_wrap) put_run(io, 0, count - before_wrap);
  }
  FERRY_HD void put_run(Io& io, std::uint64_t position, std::uint64_t count) const {
    std::size_t offset = position * stride;
    io.put(ref.peer_rank, ref.family->staging_data(ref.channel, ref.mine) + offset,
           ref.family->ring_data(ref.channel, ref.theirs) + offset, (count - 1) * stride + used);
    io.traffic().fabric_puts += 1;
  }
};

template <class Io>
struct Consumer {
  RingRef ref;
  Reach reach = Reach::self;
  std::byte* local = nullptr;
  std::byte* producer = nullptr;  // the producer's buffer when reachable by pointer (self, node)
  std::size_t stride = 0;
  RingWindow window;
  RingState* state = nullptr;

  Consumer() = default;
  FERRY_HD Consumer(Io& io, const Topology& topo, int my_rank, const RingRef& ring, std::size_t slot_stride,
                    RingState& ring_state)
      : ref(ring),
        reach(reach_between(topo, my_rank, ring.peer_rank)),
        local(io.local()),
        producer(reach == Reach::fabric ? nullptr : io.node_peer(topo.local_of(ring.peer_rank))),
        stride(slot_stride),
        window{ring_state.base, ring.family->window_slots(slot_stride)},
        state(&ring_state) {}

  // Starts an operation on this ring: the window begins at this end's head.
  FERRY_HD static void begin(Io& io, const RingRef& ring, RingState& state) {
    state.base = io.load_private(counter_word(io.local(), ring.family->in_head(ring.channel, ring.mine)));
    state.count = 0;
    state.returned = 0;
  }

  FERRY_HD std::uint64_t head() const { return state->base + state->count; }
  FERRY_HD std::uint64_t tail(Io& io) const {
    return io.load_acquire(counter_word(local, ref.family->in_tail(ref.channel, ref.mine)), reach);
  }
  FERRY_HD std::uint64_t ready(Io& io) const { return protocol::ready(tail(io), head()); }

  // The i-th message not yet consumed.
  FERRY_HD const std::byte* slot(std::uint64_t i) const {
    return local + ref.family->ring_data(ref.channel, ref.mine) + window.position(head() + i) * stride;
  }

  // Marks `count` more messages as read (their slots are no longer needed).
  FERRY_HD void consume(std::uint64_t count) { state->count += count; }

  // Returns consumed slots to the producer as credit once `batch` have piled up, or all of them when `last`
  // (the operation takes nothing more from this ring).
  FERRY_HD void release(Io& io, std::uint64_t batch, bool last) {
    const std::uint64_t unreturned = state->count - state->returned;
    if (unreturned == 0 || (unreturned < batch && !last)) return;
    io.sync();  // every thread is done reading the slots
    const std::uint64_t next = head();
    if (io.leader()) {
      if (reach == Reach::fabric) {
        io.signal(ref.peer_rank, ref.family->out_head(ref.channel, ref.theirs), unreturned);
        io.traffic().fabric_signals += 1;
      } else {
        io.store_release(counter_word(producer, ref.family->out_head(ref.channel, ref.theirs)), next, reach);
      }
      io.store_private(counter_word(local, ref.family->in_head(ref.channel, ref.mine)), next);
    }
    state->returned = state->count;
  }

  FERRY_HD Wait data_wait(Io& io, std::int64_t done, std::int64_t expected) const {
    Wait wait;
    wait.kind = WaitKind::data;
    wait.ring = ref.family->kind;
    wait.peer_rank = ref.peer_rank;
    wait.head = head();
    wait.tail = tail(io);
    wait.done = done;
    wait.expected = expected;
    return wait;
  }
};

}  // namespace ferry::kernels::protocol
