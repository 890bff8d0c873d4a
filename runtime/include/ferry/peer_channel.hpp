// ferry::PeerChannel — ordered, reliable point-to-point messages between ranks of a Group, over the fabric
// (pipeline-parallel activations and gradients between stages).
//
//   ferry::PeerChannel channel(group);                       // collective: every rank of the group
//   ferry::Event sent = channel.send(next_stage, activations);   // returns at once
//   ferry::Event got = channel.recv(prev_stage, input);          // input: exactly the size the peer sent
//   ...                                                          // overlap compute here
//   got.wait();                                                  // rethrows what went wrong, naming the peer
//   sent.wait();
//
// Each rank registers one receive region with the fabric: slots_per_peer slots of max_message_bytes for every
// sender. send() copies the message into a staging slot and writes it into the receiver's next free slot
// followed by a signal; recv() waits for the next message from that peer, copies it out and returns the
// slot's credit to the sender. A sender runs at most slots_per_peer messages ahead of its receiver; further
// sends stay queued (their Events pending) until credit returns. A thread owned by the channel drives the
// fabric, so sends and recvs never block each other or the caller: a rank may queue a send that waits for
// credit and then a recv from the same peer, while that peer does the same.
//
// Ordering: messages from one sender to one receiver arrive in send order, and the k-th recv from a peer gets
// that peer's k-th message to this rank. Sends to self are copies through the same slots.
//
// Events: a send's Event completes once the message has left this rank (the fabric completed the write; the
// caller's bytes were copied out before that and may be reused then); a recv's completes once the message is
// in the caller's span. A recv into a span whose size differs from the message fails its Event naming both
// sizes; that message is consumed, so later recvs stay paired with later sends. Every wait has
// config.timeout, counted from the moment an operation reaches the front of its (peer, direction) queue: an
// operation that waits longer fails with Errc::timeout naming the peer and what it waited for. A peer that
// dies surfaces as Errc::peer_failure naming it; the fabric is then broken, so every pending and later
// operation of the channel fails with that error.
//
// Memory: about 2 x world_size x slots_per_peer x max_message_bytes registered per rank (receive slots for
// every sender, and staging slots for the writes in flight to every peer).
//
// Threads: send, recv and stats may be called from any thread; operations issued from several threads to one
// peer are ordered as their calls were. The fabric comes from FERRY_FABRIC (ucx or verbs; noop moves nothing
// and is refused).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "ferry/buffer.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"

namespace ferry {

struct PeerChannelConfig {
  std::size_t max_message_bytes = std::size_t{1} << 20;  // largest message
  int slots_per_peer = 8;  // messages in flight per (sender, receiver) before send waits for the receiver
  Duration timeout = kDefaultTimeout;  // every wait; errors name the peer and what was awaited

  // Throws Errc::invalid_argument naming the field when the config cannot work for `world_size` ranks.
  void validate(int world_size) const;
};

class PeerChannel {
 public:
  // Collective: every rank of the group constructs its channel with the same config (and, when a group holds
  // several channels, in the same order). The group must outlive the channel.
  PeerChannel(Group& group, const PeerChannelConfig& config = {});
  // Finishes the operations already issued (each bounded by the timeout; what is still pending after one
  // timeout fails), then tears down collectively: every rank must destroy its channel.
  ~PeerChannel();
  PeerChannel(const PeerChannel&) = delete;
  PeerChannel& operator=(const PeerChannel&) = delete;

  int rank() const;
  int world_size() const;
  const PeerChannelConfig& config() const;

  // Sends `bytes` (0 .. max_message_bytes) to `peer` (self included). The bytes must stay untouched until the
  // Event completes. Throws Errc::invalid_argument for a peer out of range or a message too large.
  Event send(int peer, std::span<const std::byte> bytes);
  // Receives the next message from `peer` into `bytes`, which must be exactly the message's size. Throws
  // Errc::invalid_argument for a peer out of range or a span larger than max_message_bytes.
  Event recv(int peer, std::span<std::byte> bytes);

  // Completed operations so far (failed ones are not counted).
  struct Stats {
    std::uint64_t messages_sent = 0, bytes_sent = 0, messages_received = 0, bytes_received = 0;
  };
  Stats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
