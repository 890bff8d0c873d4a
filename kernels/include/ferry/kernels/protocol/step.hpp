// What a role's step reports: whether anything moved, whether the role is finished, and when it is stuck,
// what it waits for (so a timeout names rank, channel, stage, peer, head and tail) or what it found wrong.
#pragma once

#include <cstdint>

#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/hd.hpp"

namespace ferry::kernels::protocol {

enum class Stage : std::uint8_t {
  notify_send,
  notify_receive,
  dispatch_send,
  dispatch_forward,
  dispatch_receive,
  combine_send,
  combine_forward,
  combine_receive,
  // The low-latency mode (low_latency_roles.hpp).
  low_latency_acquire,
  low_latency_dispatch_send,
  low_latency_dispatch_receive,
  low_latency_combine_send,
  low_latency_combine_receive,
  low_latency_release,
  low_latency_barrier,
};

enum class WaitKind : std::uint8_t {
  none,
  credit,  // the ring at peer_rank is full: waiting for it to consume (head) what we published (tail)
  data,    // our ring from peer_rank is empty: waiting for it to publish (tail) past what we consumed (head)
};

struct Wait {
  WaitKind kind = WaitKind::none;
  RingKind ring = RingKind::notify;
  int peer_rank = -1;
  std::uint64_t head = 0;
  std::uint64_t tail = 0;
  std::int64_t done = 0;      // messages this role moved on that ring in this operation
  std::int64_t expected = 0;  // messages it must move there in this operation (0: not known to this role)
};

enum class FaultKind : std::uint8_t {
  none,
  wrong_operation,   // a message from another operation: ranks run different operation sequences
  wrong_source,      // a message from a rank that cannot use this ring
  wrong_token,       // a combine row for another token than the one the order prescribes
  wrong_hidden,      // the sender runs with another hidden size
  wrong_payload,     // the sender runs with another element type
  wrong_topk,        // the sender runs with another number of topk slots
  wrong_experts,     // the sender runs with another number of experts
  wrong_channels,    // the sender runs the operation with another number of channels
  wrong_settings,    // the sender's settings fingerprint differs (Config, chunk sizes)
  bad_mask,          // a dispatch message without targets or with targets beyond the node
  too_many,          // more messages from one source than it announced
  routing_mismatch,  // a token's expert ids disagree with the layout it is dispatched by (expected: the node)
  bad_expert,        // a token names an expert id outside [0, E) (got: the id, expected: E)
  past_capacity,     // combine of a dispatch whose rows or relay records overflowed its worst-case sizing
                     // (got: the row or record index, expected: the capacity): never read past the arrays
  stacked_arrivals,  // low-latency: arrivals of two or more operations in one word (got: how many), none
                     // taken between: a peer ran a use of the buffer ahead of this rank
  bad_count_block,   // low-latency: a block of counts laid out for another shape, or never written (got: its
                     // check word, expected: this rank's)
};

struct Fault {
  FaultKind kind = FaultKind::none;
  RingKind ring = RingKind::notify;
  int peer_rank = -1;
  std::int64_t got = 0;
  std::int64_t expected = 0;
  std::int64_t token = -1;  // the source token concerned, when the fault is about one

  FERRY_HD bool any() const { return kind != FaultKind::none; }
};

struct StepResult {
  bool progressed = false;
  bool done = false;
  Stage stage = Stage::dispatch_send;
  Wait wait;    // meaningful when !progressed && !done
  Fault fault;  // when set, the operation cannot finish
};

// Messages and bytes per path, counted by the roles: "fabric" crossed nodes, "node" went to another local
// rank's memory, "self" stayed with this rank (written straight into its own outputs, or read from its own
// results).
struct PathCount {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
};

struct Traffic {
  PathCount fabric;
  PathCount node;
  PathCount self;
  std::uint64_t fabric_puts =
      0;  // fabric writes of message bytes (a chunk of slots is one, or two at a wrap)
  std::uint64_t fabric_signals = 0;  // fabric atomics: tails published and credits returned

  FERRY_HD void add(const Traffic& other) {
    fabric.messages += other.fabric.messages;
    fabric.bytes += other.fabric.bytes;
    node.messages += other.node.messages;
    node.bytes += other.node.bytes;
    self.messages += other.self.messages;
    self.bytes += other.self.bytes;
    fabric_puts += other.fabric_puts;
    fabric_signals += other.fabric_signals;
  }
};

// Which of a role's independent items (destinations, source nodes, rings) one instance of the role handles:
// on the GPU several warp groups split a role this way, on the host one instance takes all. Items are visited
// from a channel-dependent start so that channels do not all hit the same peer first (no incast).
struct RoleSlice {
  int index = 0;
  int count = 1;

  FERRY_HD bool owns(int item) const { return item % count == index; }
};

FERRY_HD inline int rotated(int i, int items, int channel) {
  return items == 0 ? 0 : (i + channel) % items;
}

}  // namespace ferry::kernels::protocol
