// The protocol's Io policy on the GPU (protocol/io.hpp): a role instance is run by a group of whole warps of
// one block. Every thread runs the role code on its own copy of the role object; the group shares the role's
// state in shared memory, which only the leader (the group's first thread) writes, between two named
// barriers. Counter loads are made by the leader and broadcast through shared memory, so every thread takes
// the same branches. Bulk bytes are moved by all threads with 16-byte accesses; fabric writes are posted by
// the leader into the group's own command ring (host memory mapped for the GPU), which a proxy thread drains.
//
// Memory orders: a counter that only this GPU's blocks touch (Reach::self) is acquired and released at gpu
// scope; counters written by another GPU over NVLink, by the proxy or by a NIC at system scope. Before a
// counter is released or a put is posted, the group's writes are ordered by the named barrier (all threads)
// and, for posts, a system-scope fence by the leader, so the copy engine or the NIC reads finished bytes.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "device_report.hpp"
#include "ferry/kernels/protocol/io.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/kernels/protocol/step.hpp"
#include "ferry/transport/command_ring.hpp"

namespace ferry::kernels::cuda {

namespace p = protocol;

// ---- memory operations ----

__device__ __forceinline__ std::uint64_t global_time_ns() {
  std::uint64_t now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  return now;
}

__device__ __forceinline__ std::uint64_t load_acquire_sys(const std::uint64_t* word) {
  std::uint64_t value;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(value) : "l"(word) : "memory");
  return value;
}

__device__ __forceinline__ std::uint64_t load_acquire_gpu(const std::uint64_t* word) {
  std::uint64_t value;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(value) : "l"(word) : "memory");
  return value;
}

__device__ __forceinline__ void store_release_sys(std::uint64_t* word, std::uint64_t value) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(word), "l"(value) : "memory");
}

__device__ __forceinline__ void store_release_gpu(std::uint64_t* word, std::uint64_t value) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(word), "l"(value) : "memory");
}

__device__ __forceinline__ std::uint32_t load_acquire_sys(const std::uint32_t* word) {
  std::uint32_t value;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(value) : "l"(word) : "memory");
  return value;
}

// 16 bytes, not kept in L1 (ring slots are rewritten by other GPUs and the copy engine; streamed rows are
// read once), coherent at L2.
__device__ __forceinline__ int4 load_stream(const int4* address) {
  int4 value;
  asm volatile("ld.global.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w)
               : "l"(address)
               : "memory");
  return value;
}

__device__ __forceinline__ void store_stream(int4* address, int4 value) {
  asm volatile("st.global.v4.s32 [%0], {%1, %2, %3, %4};" ::"l"(address), "r"(value.x), "r"(value.y),
               "r"(value.z), "r"(value.w)
               : "memory");
}

// ---- the heartbeat ----

// The executor's abort word and its heartbeat share one allocation of device memory (kAbortWords words):
// word 0 is the abort word, words 2-3 the heartbeat, the globaltimer of the latest progress any role of the
// executor made (rounded to windows of 2^kHeartbeatShift ns).
inline constexpr int kAbortWords = 4;
inline constexpr int kHeartbeatShift = 20;  // ~1.05 ms
__host__ __device__ inline std::uint64_t* heartbeat_word(std::uint32_t* abort) {
  return reinterpret_cast<std::uint64_t*>(abort + 2);
}

// ---- a role group ----

// `threads` consecutive threads of the block (whole warps) from `first`, synchronised by named barrier
// `barrier` (1..15; 0 is __syncthreads).
struct GroupShape {
  int first = 0;
  int threads = 32;
  int barrier = 1;
};

// Copies `bytes` with every thread of the group: 16-byte accesses when both ends allow them, four in flight
// per thread; narrower ones otherwise.
__device__ inline void group_copy(void* dst, const void* src, std::size_t bytes, int lane, int threads) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  std::size_t done = 0;
  if (((reinterpret_cast<std::uintptr_t>(d) | reinterpret_cast<std::uintptr_t>(s)) & 15u) == 0) {
    const std::size_t vectors = bytes / 16;
    auto* dv = reinterpret_cast<int4*>(d);
    const auto* sv = reinterpret_cast<const int4*>(s);
    constexpr int kInFlight = 4;
    std::size_t i = lane;
    for (; i + (kInFlight - 1) * threads < vectors; i += kInFlight * threads) {
      int4 v[kInFlight];
#pragma unroll
      for (int k = 0; k < kInFlight; ++k) v[k] = load_stream(sv + i + k * threads);
#pragma unroll
      for (int k = 0; k < kInFlight; ++k) store_stream(dv + i + k * threads, v[k]);
    }
    for (; i < vectors; i += threads) store_stream(dv + i, load_stream(sv + i));
    done = vectors * 16;
  } else if (((reinterpret_cast<std::uintptr_t>(d) | reinterpret_cast<std::uintptr_t>(s)) & 3u) == 0) {
    const std::size_t words = bytes / 4;
    for (std::size_t i = lane; i < words; i += threads) {
      reinterpret_cast<std::uint32_t*>(d)[i] = reinterpret_cast<const volatile std::uint32_t*>(s)[i];
    }
    done = words * 4;
  }
  for (std::size_t i = done + lane; i < bytes; i += threads)
    d[i] = reinterpret_cast<const volatile unsigned char*>(s)[i];
}

// Loads elements [e, e + n) of a row of `kind` (bf16 or fp32) as floats, 16-byte loads when possible.
__device__ __forceinline__ void load_elements(p::PayloadKind kind, const std::byte* row, std::int64_t e,
                                              int n, float* out) {
  if (kind == p::PayloadKind::fp32) {
    const float* values = reinterpret_cast<const float*>(row) + e;
    if (n == 8 && (reinterpret_cast<std::uintptr_t>(values) & 15u) == 0) {
      const int4 a = load_stream(reinterpret_cast<const int4*>(values));
      const int4 b = load_stream(reinterpret_cast<const int4*>(values) + 1);
      out[0] = __int_as_float(a.x), out[1] = __int_as_float(a.y), out[2] = __int_as_float(a.z);
      out[3] = __int_as_float(a.w), out[4] = __int_as_float(b.x), out[5] = __int_as_float(b.y);
      out[6] = __int_as_float(b.z), out[7] = __int_as_float(b.w);
      return;
    }
    for (int i = 0; i < n; ++i) out[i] = reinterpret_cast<const volatile float*>(values)[i];
    return;
  }
  const std::uint16_t* values = reinterpret_cast<const std::uint16_t*>(row) + e;
  if (n == 8 && (reinterpret_cast<std::uintptr_t>(values) & 15u) == 0) {
    const int4 v = load_stream(reinterpret_cast<const int4*>(values));
    const std::uint32_t words[4] = {static_cast<std::uint32_t>(v.x), static_cast<std::uint32_t>(v.y),
                                    static_cast<std::uint32_t>(v.z), static_cast<std::uint32_t>(v.w)};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = p::bf16_to_float(static_cast<std::uint16_t>(words[i] & 0xffffu));
      out[2 * i + 1] = p::bf16_to_float(static_cast<std::uint16_t>(words[i] >> 16));
    }
    return;
  }
  for (int i = 0; i < n; ++i)
    out[i] = p::bf16_to_float(reinterpret_cast<const volatile std::uint16_t*>(values)[i]);
}

__device__ __forceinline__ void store_elements(p::PayloadKind kind, std::byte* row, std::int64_t e, int n,
                                               const float* values) {
  if (kind == p::PayloadKind::fp32) {
    float* out = reinterpret_cast<float*>(row) + e;
    for (int i = 0; i < n; ++i) out[i] = values[i];
    return;
  }
  std::uint16_t* out = reinterpret_cast<std::uint16_t*>(row) + e;
  for (int i = 0; i < n; ++i) out[i] = p::float_to_bf16(values[i]);
}

// The reduction of protocol/numeric.hpp (ReduceRows), elements shared out 8 at a time; per element the same
// additions in the same order as on the host, so the bits are the same.
__device__ inline void group_reduce(const p::ReduceRows& job, int lane, int threads) {
  constexpr int kWidth = 8;
  const int terms = job.num_terms + (job.group_size > 0 ? 1 : 0);
  for (std::int64_t e = static_cast<std::int64_t>(lane) * kWidth; e < job.hidden;
       e += static_cast<std::int64_t>(threads) * kWidth) {
    const int n = job.hidden - e < kWidth ? static_cast<int>(job.hidden - e) : kWidth;
    float acc[kWidth];
    float values[kWidth];
    if (job.bias != nullptr) {
      load_elements(job.kind, job.bias, e, n, acc);
    } else {
#pragma unroll
      for (int i = 0; i < kWidth; ++i) acc[i] = 0.0f;
    }
    int next_term = 0;
    for (int t = 0; t < terms; ++t) {
      if (job.group_size > 0 && t == job.group_at) {
        float part[kWidth];
#pragma unroll
        for (int i = 0; i < kWidth; ++i) part[i] = 0.0f;
        for (int g = 0; g < job.group_size; ++g) {
          load_elements(job.kind, job.group[g], e, n, values);
          for (int i = 0; i < n; ++i) part[i] = __fadd_rn(part[i], values[i]);
        }
        for (int i = 0; i < n; ++i) {
          const float rounded =
              job.kind == p::PayloadKind::fp32 ? part[i] : p::bf16_to_float(p::float_to_bf16(part[i]));
          acc[i] = __fadd_rn(acc[i], rounded);
        }
        continue;
      }
      load_elements(job.kind, job.terms[next_term++], e, n, values);
      for (int i = 0; i < n; ++i) acc[i] = __fadd_rn(acc[i], values[i]);
    }
    store_elements(job.kind, job.out, e, n, acc);
  }
}

// Where the group's fabric writes go: its own command ring (it is the ring's only producer) and the fabric
// region of the registered buffer.
struct ProxyPort {
  transport::CommandRingView ring{};
  std::uint8_t region = 0;
  bool present = false;
};

// The Io of one thread of a role group. `broadcast` points at two 64-bit words of shared memory owned by the
// group; `abort` at the operation's abort word (device memory), set by the first group that fails.
class DeviceIo {
 public:
  __device__ DeviceIo(const GroupShape& shape, std::byte* local, std::byte* const* node_peers,
                      std::uint64_t* broadcast, std::uint32_t* abort, const ProxyPort& port,
                      std::uint64_t timeout_ns)
      : shape_(shape),
        local_(local),
        node_peers_(node_peers),
        broadcast_(broadcast),
        abort_(abort),
        port_(port),
        timeout_ns_(timeout_ns) {
    if (leader() && port_.present) {
      producer_.ring = port_.ring;
      producer_.tail = transport::ring_load_acquire(&port_.ring.control->tail);
      producer_.head_seen = transport::ring_load_acquire(&port_.ring.control->head);
    }
  }

  __device__ std::byte* local() const { return local_; }
  __device__ std::byte* node_peer(int local_rank) const { return node_peers_[local_rank]; }
  __device__ int lane() const { return static_cast<int>(threadIdx.x) - shape_.first; }
  __device__ bool leader() const { return lane() == 0; }
  __device__ void sync() const {
    asm volatile("bar.sync %0, %1;" ::"r"(shape_.barrier), "r"(shape_.threads) : "memory");
  }

  __device__ std::uint64_t broadcast(std::uint64_t value) {
    if (leader()) broadcast_[slot_] = value;
    sync();
    value = reinterpret_cast<volatile std::uint64_t*>(broadcast_)[slot_];
    slot_ ^=
        1;  // the next broadcast writes the other word: every thread has read this one before that barrier
    return value;
  }

  __device__ std::uint64_t load_acquire(const std::uint64_t* word, p::Reach reach) {
    std::uint64_t value = 0;
    if (leader()) value = reach == p::Reach::self ? load_acquire_gpu(word) : load_acquire_sys(word);
    return broadcast(value);
  }
  __device__ std::uint64_t load_private(const std::uint64_t* word) const {
    return *reinterpret_cast<const volatile std::uint64_t*>(word);
  }
  __device__ void store_release(std::uint64_t* word, std::uint64_t value, p::Reach reach) const {
    if (reach == p::Reach::self) {
      store_release_gpu(word, value);
    } else {
      store_release_sys(word, value);
    }
  }
  __device__ void store_private(std::uint64_t* word, std::uint64_t value) const {
    *reinterpret_cast<volatile std::uint64_t*>(word) = value;
  }
  template <class T>
  __device__ void store(T* dst, T value) const {
    if (leader()) *dst = value;
  }
  template <class T>
  __device__ void commit(T* dst, const T& value) const {
    sync();
    if (leader()) *dst = value;
    sync();
  }
  __device__ void copy(void* dst, const void* src, std::size_t bytes) const {
    group_copy(dst, src, bytes, lane(), shape_.threads);
  }
  __device__ void reduce(const p::ReduceRows& job) const { group_reduce(job, lane(), shape_.threads); }

  // Leader only. A put is held until the next post so that the signal which always follows it rides on the
  // same command (put_signal).
  __device__ void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) {
    release_held();
    held_ = {true, rank, src_offset, dst_offset, bytes};
  }
  __device__ void signal(int rank, std::size_t word_offset, std::uint64_t add) {
    const auto peer = static_cast<std::uint16_t>(rank);
    const auto offset = static_cast<std::uint32_t>(word_offset);
    const auto amount = static_cast<std::uint32_t>(add);
    if (held_.valid && held_.rank == rank) {
      post(transport::make_put_signal(peer, port_.region, held_.src, held_.dst,
                                      static_cast<std::uint32_t>(held_.bytes), offset, amount));
      held_.valid = false;
      return;
    }
    release_held();
    post(transport::make_put_signal(peer, port_.region, 0, 0, 0, offset, amount));
  }
  __device__ p::Traffic& traffic() { return traffic_; }

  __device__ std::uint64_t now() { return broadcast(leader() ? global_time_ns() : 0); }
  // Asked only while the role is stuck. Besides the executor's abort word, the leader of a group with a
  // command ring reads the ring's error word: a proxy that failed (its fabric died) is reported at once as
  // the proxy's error, not later as this role's timeout (post() reads it only while the ring is full).
  __device__ bool aborted() {
    std::uint64_t stop = 0;
    if (leader()) {
      if (!proxy_failed_ && port_.present) {
        const std::uint32_t error = load_acquire_sys(&port_.ring.control->error);
        if (error != 0) {
          proxy_failed_ = true;
          proxy_error_ = error;
        }
      }
      stop = (proxy_failed_ || *reinterpret_cast<volatile std::uint32_t*>(abort_) != 0) ? 1 : 0;
    }
    return broadcast(stop) != 0;
  }
  // The role made progress at `now` (its previous progress at `before`): the leader bumps the executor's
  // heartbeat (device memory beside the abort word, which the host reads to tell a slow operation from a
  // stuck one) at most once per ~1 ms window of globaltimer, so the hot path costs a compare.
  __device__ void progressed(std::uint64_t before, std::uint64_t now) const {
    if (leader() && ((before ^ now) >> kHeartbeatShift) != 0)
      *reinterpret_cast<volatile std::uint64_t*>(heartbeat_word(abort_)) = now;
  }
  __device__ static void pause(unsigned attempt) {
    const unsigned shift = attempt < 7 ? attempt : 7;
    __nanosleep(32u << shift);
  }

  __device__ bool proxy_failed() const { return proxy_failed_; }
  __device__ std::uint32_t proxy_error() const { return proxy_error_; }

 private:
  __device__ void release_held() {
    if (!held_.valid) return;
    held_.valid = false;
    post(transport::make_put(static_cast<std::uint16_t>(held_.rank), port_.region, held_.src, held_.dst,
                             static_cast<std::uint32_t>(held_.bytes)));
  }

  // Waits (bounded) for a free slot in the group's command ring. The group's writes to the bytes the command
  // names are finished (barrier) and made visible to the system (fence) first.
  __device__ void post(const transport::Command& command) {
    if (proxy_failed_) return;
    __threadfence_system();
    const std::uint64_t start = global_time_ns();
    unsigned attempt = 0;
    while (!producer_.try_post(command)) {
      const std::uint32_t error = load_acquire_sys(&port_.ring.control->error);
      if (error != 0 || global_time_ns() - start > timeout_ns_) {
        proxy_failed_ = true;
        proxy_error_ = error != 0 ? error : 0xffffffffu;
        return;
      }
      pause(attempt++);
    }
  }

  struct Held {
    bool valid = false;
    int rank = 0;
    std::size_t src = 0;
    std::size_t dst = 0;
    std::size_t bytes = 0;
  };

  GroupShape shape_;
  std::byte* local_;
  std::byte* const* node_peers_;
  std::uint64_t* broadcast_;
  std::uint32_t* abort_;
  ProxyPort port_;
  std::uint64_t timeout_ns_;
  int slot_ = 0;
  transport::CommandRingProducer producer_{};
  Held held_;
  p::Traffic traffic_;
  bool proxy_failed_ = false;
  std::uint32_t proxy_error_ = 0;
};

}  // namespace ferry::kernels::cuda
