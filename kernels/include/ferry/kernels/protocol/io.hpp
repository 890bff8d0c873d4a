// The execution policy ("Io") every role is written against, so one role template runs on the host (one
// thread per role, plain memory operations: kernels/host/host_io.hpp) and on the GPU (a group of warps per
// role: kernels/cuda/device_io.cuh).
//
// A role instance may be executed by a group of threads at once. Every thread of the group runs the same role
// code on its own copy of the role's state and must take the same branches, so every value a branch depends
// on must be the same in every thread: counters come from load_acquire (which gives the group one value),
// messages are read only after the acquire that published them, and nothing else of the group's own making is
// read back. Work on bulk bytes is shared (copy, reduce); scalar stores and fabric posts are made once, by
// the leader. A role's state lives in arrays the executor provides (shared memory on the GPU): every thread
// reads them, and a role changes them only through commit(), so all threads see one state at every step.
//
//   std::byte* local()                    this rank's registered buffer
//   std::byte* node_peer(int local_rank)  a local rank's buffer (peer memory: shm on the host, NVLink on
//                                         a GPU)
//   bool leader()                         whether this thread makes the group's scalar stores and posts
//   void sync()                           every thread of the group has finished its copies and reads so far
//   uint64_t load_acquire(const uint64_t* word, Reach reach)
//                                         acquire at the scope the writer needs (its reach); one value per
//                                         group
//   uint64_t load_private(const uint64_t* word)
//                                         a counter only this role writes, read when the role is built
//   void store_release(uint64_t* word, uint64_t value, Reach reach)   leader only, after sync()
//   void store_private(uint64_t* word, uint64_t value)                leader only
//   template <class T> void store(T* dst, T value)                    leader only; also how a value the
//                                         thread holds (a message header) is written into a slot
//   template <class T> void commit(T* dst, const T& value)            sync(), the leader stores, sync():
//                                         for the role's own state, which the group shares (see below)
//   void copy(void* dst, const void* src, size_t bytes)               shared by the group; both ends in
//                                         memory every thread of the group reads (on the GPU: global
//                                         memory, copied with global-space accesses), never a thread's own
//                                         local object: that goes through store()
//   void reduce(const ReduceRows& job)                                shared by the group (numeric.hpp)
//   void put(int rank, size_t src_offset, size_t dst_offset, size_t bytes)   leader only; to another node
//   void signal(int rank, size_t word_offset, uint64_t add)   leader only; visible after this Io's
//                                                             earlier puts to `rank` have landed
//   Traffic& traffic()                    this thread's tally (the leader's is the one that counts)
#pragma once

#include <cstdint>

namespace ferry::kernels::protocol {

// Where the other end of a ring is, which is also the scope its counters need: self (this rank's own memory,
// read and written by its own roles), node (another local rank: shared memory or NVLink peer memory, system
// scope), fabric (another node: written by the NIC or the proxy, system scope).
enum class Reach : std::uint8_t { self, node, fabric };

}  // namespace ferry::kernels::protocol
