// The command ring: how a producer (a CUDA kernel, or a CPU channel worker) asks a proxy thread to drive the
// fabric. The producer writes fixed-size 32-byte commands into a single-producer ring in host memory (pinned
// and mapped for the GPU when CUDA is present); a proxy thread drains it, calls the fabric, and publishes how
// far it has consumed (head: slots the producer may reuse, i.e. credits) and how many commands have completed
// (their source bytes may be reused).
//
// This header is shared by host and device code: plain structs, no std:: containers, every function FERRY_HD.
// Memory ordering: the producer writes a slot, then publishes tail with a release store; the proxy acquires
// tail, copies the slot, executes it, and returns credits with a release store of head. On the GPU the loads
// and stores are ld.acquire / st.release at system scope (the ring lives in host memory, across PCIe).
//
// Counters are 64-bit and never wrap in practice (2^64 commands); a slot index is counter & (capacity - 1).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FERRY_HD __host__ __device__
#else
#define FERRY_HD
#endif

namespace ferry::transport {

enum class CommandOp : std::uint8_t {
  nop = 0,         // does nothing; completes once every earlier command of its ring has
  put = 1,         // RDMA write of `bytes` from (region, local_offset) to the peer's (region, remote_offset)
  put_signal = 2,  // as put, then adds signal_add to the peer's 64-bit word at (region, signal_offset),
                   // visible only after the payload; bytes may be 0 (signal only)
  atomic_add = 3,  // adds signal_add to the peer's 64-bit word at (region, signal_offset)
  flush = 4,       // completes once every earlier operation of this proxy thread is visible at its target
};

// One request. Source, target and signal word all live in fabric region `region` (region i of this rank pairs
// with region i of the peer). Signal words sit in the first 4 GiB of the region and are 8-byte aligned.
struct Command {
  CommandOp op;
  std::uint8_t region;
  std::uint16_t peer;  // global rank
  std::uint32_t bytes;
  std::uint64_t local_offset;
  std::uint64_t remote_offset;
  std::uint32_t signal_offset;
  std::uint32_t signal_add;
};
static_assert(sizeof(Command) == 32, "a command is exactly 32 bytes: two 16-byte stores from a GPU thread");

// The ring's control block. Each counter has its own cache line so the producer's tail stores and the proxy's
// head/completed stores do not bounce one line between CPU cores (or across PCIe).
struct CommandRingControl {
  alignas(64) std::uint64_t tail;       // commands published by the producer
  alignas(64) std::uint64_t head;       // commands the proxy has copied out (their slots are free again)
  alignas(64) std::uint64_t completed;  // commands whose fabric operation completed (in ring order)
  alignas(64) std::uint32_t error;      // 0 while healthy; else 1 + ferry::Errc of the failure
  char message[316];                    // NUL-terminated reason, written before `error` is released
};
static_assert(sizeof(CommandRingControl) == 512, "control block layout is shared with device code");

inline constexpr std::uint32_t kCommandRingMessageBytes = sizeof(CommandRingControl::message);

// Pointers to one ring as some address space sees it (host pointers for the CPU, mapped device pointers for a
// kernel). `capacity` is a power of two.
struct CommandRingView {
  Command* slots;
  CommandRingControl* control;
  std::uint32_t capacity;
};

FERRY_HD inline std::uint64_t ring_load_acquire(const std::uint64_t* address) {
#if defined(__CUDA_ARCH__)
  std::uint64_t value;
  asm volatile("ld.acquire.sys.u64 %0, [%1];" : "=l"(value) : "l"(address) : "memory");
  return value;
#else
  return __atomic_load_n(address, __ATOMIC_ACQUIRE);
#endif
}

FERRY_HD inline void ring_store_release(std::uint64_t* address, std::uint64_t value) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.release.sys.u64 [%0], %1;" ::"l"(address), "l"(value) : "memory");
#else
  __atomic_store_n(address, value, __ATOMIC_RELEASE);
#endif
}

FERRY_HD inline std::uint32_t ring_load_acquire(const std::uint32_t* address) {
#if defined(__CUDA_ARCH__)
  std::uint32_t value;
  asm volatile("ld.acquire.sys.u32 %0, [%1];" : "=r"(value) : "l"(address) : "memory");
  return value;
#else
  return __atomic_load_n(address, __ATOMIC_ACQUIRE);
#endif
}

FERRY_HD inline void ring_store_release(std::uint32_t* address, std::uint32_t value) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.release.sys.u32 [%0], %1;" ::"l"(address), "r"(value) : "memory");
#else
  __atomic_store_n(address, value, __ATOMIC_RELEASE);
#endif
}

// A ring capacity must be a power of two (slot index = counter & (capacity - 1)).
FERRY_HD inline constexpr bool ring_capacity_ok(std::uint64_t capacity) {
  return capacity != 0 && (capacity & (capacity - 1)) == 0;
}

FERRY_HD inline std::uint32_t ring_slot_index(std::uint64_t counter, std::uint32_t capacity) {
  return static_cast<std::uint32_t>(counter & (capacity - 1));
}

// Commands a producer may publish before it must wait: capacity minus what the proxy has not yet consumed.
FERRY_HD inline std::uint64_t ring_credits(std::uint64_t tail, std::uint64_t head, std::uint32_t capacity) {
  return capacity - (tail - head);
}

// Writes one command into its slot. On the GPU as two 16-byte stores (a plain struct copy is one narrow
// store per field, six of them over PCIe): generic addressing, since the slot is host memory mapped for the
// GPU; every slot is 16-byte aligned (the slots follow the 512-byte control block in page-aligned memory).
FERRY_HD inline void ring_store_command(Command* slot, const Command& command) {
#if defined(__CUDA_ARCH__)
  std::uint32_t words[8];
  __builtin_memcpy(words, &command, sizeof(Command));
  auto* bytes = reinterpret_cast<unsigned char*>(slot);
  asm volatile("st.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(bytes), "r"(words[0]), "r"(words[1]), "r"(words[2]),
               "r"(words[3])
               : "memory");
  asm volatile("st.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(bytes + 16), "r"(words[4]), "r"(words[5]),
               "r"(words[6]), "r"(words[7])
               : "memory");
#else
  *slot = command;
#endif
}

// The producer's side of one ring. It is the only writer of tail, so it keeps its own copy, and it re-reads
// the proxy's head only when the credits it last saw run out (one cross-core load per refill, not per
// command).
struct CommandRingProducer {
  CommandRingView ring;
  std::uint64_t tail;       // next command number to publish (== ring.control->tail)
  std::uint64_t head_seen;  // the proxy's head as last read

  // Publishes `command` when a slot is free and returns true; returns false (nothing written) when the ring
  // is full. Never blocks: the caller decides how to wait (and checks control->error while it does).
  FERRY_HD bool try_post(const Command& command) {
    if (ring_credits(tail, head_seen, ring.capacity) == 0) {
      head_seen = ring_load_acquire(&ring.control->head);
      if (ring_credits(tail, head_seen, ring.capacity) == 0) return false;
    }
    ring_store_command(&ring.slots[ring_slot_index(tail, ring.capacity)], command);
    ++tail;
    ring_store_release(&ring.control->tail, tail);
    return true;
  }
};

FERRY_HD inline Command make_put(std::uint16_t peer, std::uint8_t region, std::uint64_t local_offset,
                                 std::uint64_t remote_offset, std::uint32_t bytes) {
  return Command{CommandOp::put, region, peer, bytes, local_offset, remote_offset, 0, 0};
}

FERRY_HD inline Command make_put_signal(std::uint16_t peer, std::uint8_t region, std::uint64_t local_offset,
                                        std::uint64_t remote_offset, std::uint32_t bytes,
                                        std::uint32_t signal_offset, std::uint32_t signal_add) {
  return Command{CommandOp::put_signal, region,        peer,          bytes,
                 local_offset,          remote_offset, signal_offset, signal_add};
}

FERRY_HD inline Command make_atomic_add(std::uint16_t peer, std::uint8_t region, std::uint32_t signal_offset,
                                        std::uint32_t add) {
  return Command{CommandOp::atomic_add, region, peer, 0, 0, 0, signal_offset, add};
}

FERRY_HD inline Command make_flush() {
  return Command{CommandOp::flush, 0, 0, 0, 0, 0, 0, 0};
}

FERRY_HD inline Command make_nop() {
  return Command{CommandOp::nop, 0, 0, 0, 0, 0, 0, 0};
}

}  // namespace ferry::transport
