// The GPU side of a LowLatencyBuffer(group, config, Device::cuda): the region in device memory of this rank's
// GPU (node peers through CUDA IPC, other nodes through a proxy whose fabric registers device memory), the
// low-latency CUDA executor (kernels/cuda/low_latency_engine) running every half of an operation on the
// buffer's own stream after the caller's stream, the mask in device memory, and Events backed by CUDA events.
//
// Failures: the kernels record a fault or a phase that stopped moving in host memory mapped for the GPU.
// They are read when an Event of the buffer is waited for (the wait lets the buffer's stream drain first, so
// the records are whole: they may be a later operation's), and at the start of the next call when the stream
// happens to be idle; the first one is kept (every later read raises it) until clean(). Calls on one buffer
// come from one thread at a time (a record read while another thread enqueues may be half written).
//
// No CUDA types here: pointers are device pointers, a stream is a cudaStream_t passed as void*.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "ferry/buffer.hpp"
#include "ferry/group.hpp"
#include "ferry/kernels/protocol/low_latency_roles.hpp"
#include "ferry/low_latency.hpp"
#include "ferry/tensor.hpp"

namespace ferry {

class LowLatencyDevice {
 public:
  // Collective over the group. `gone`: the store's news of dead ranks ([R] host words that outlive this
  // object: StoreWatch::lost_words), or null.
  LowLatencyDevice(Group& group, const LowLatencyConfig& config, const std::uint64_t* gone);
  // Drains the stream, reads what the kernels recorded (for Events still unsettled), waits at a barrier
  // until no peer writes into this region any more, then frees everything.
  ~LowLatencyDevice();
  LowLatencyDevice(const LowLatencyDevice&) = delete;
  LowLatencyDevice& operator=(const LowLatencyDevice&) = delete;

  std::byte* region() const;
  std::uint64_t* mask() const;        // [R] in device memory
  const std::uint64_t* gone() const;  // the store's words as the GPU addresses them; null without news

  // A CUDA graph capture a stream takes part in (cudaStreamGetCaptureInfo's id).
  struct Capture {
    bool active = false;
    unsigned long long id = 0;
  };

  // A device tensor for work on the buffer's stream: from the buffer's cache, or, for a call captured into a
  // CUDA graph (`for_graph`), memory of its own that stays until the graph is destroyed (a graph may be
  // launched at any time, so nothing it addresses may serve another call) and the caller drops the tensor.
  Tensor tensor(std::initializer_list<std::int64_t> shape, DType dtype, bool for_graph = false);
  // Around every call: begin_call() first (drops the memory of graphs that are gone); end_captured_call()
  // when a captured call ends, returned or thrown, hands its memory to the graph being captured on
  // `caller` (a user object the graph owns says when it lets go).
  void begin_call();
  void end_captured_call(void* caller) noexcept;
  // Before anything of a call is claimed or enqueued (the buffer stays usable); returns the capture the
  // caller's stream is in. Throws Errc::invalid_argument for the legacy default stream (nullptr) when other
  // ranks of this process share the GPU (they would share that stream), for a stream whose capture was
  // invalidated, and while the buffer's stream takes part in a capture the caller's stream is not in (a
  // capture still open on another stream).
  Capture check_stream(void* caller);
  // Whether the buffer's stream takes part in a capture now: then nothing may wait for it or query it.
  bool in_capture();
  // Work the caller's stream (nullptr: the legacy default stream) has enqueued comes before what is enqueued
  // on the buffer's stream next.
  void follow(void* caller);
  // The caller's stream waits for what the buffer's stream has enqueued so far.
  void lead(void* caller);
  // On the buffer's stream.
  void copy(void* to, const void* from, std::size_t bytes);
  void fill(void* to, int byte, std::size_t bytes);

  void dispatch_send(const kernels::protocol::LowLatencyDispatchPlan& plan);
  void dispatch_receive(const kernels::protocol::LowLatencyDispatchPlan& plan);
  void combine_send(const kernels::protocol::LowLatencyCombinePlan& plan);
  void combine_receive(const kernels::protocol::LowLatencyCombinePlan& plan);
  // Zero copy's early acquire of the staging the next combine sends from (the engine's acquire_staging).
  void acquire_staging(const kernels::protocol::LowLatencyContext& ctx);
  // After a receive half: its counts and waits added into the caller's statistics tensors (device memory of
  // this GPU; null: not wanted).
  void add_dispatch_stats(const kernels::protocol::LowLatencyDispatchPlan& plan,
                          std::int32_t* recv_per_local_expert, std::int64_t* wait_per_source);
  void add_combine_stats(const kernels::protocol::LowLatencyCombinePlan& plan, std::int64_t* wait_per_source);
  // clean_low_latency_buffer's kernel (collective, synchronises); forgets the kept failure.
  void clean(const kernels::protocol::LowLatencyContext& ctx, std::uint64_t epoch);

  // `capturing` in these two: the call's Capture from check_stream, which also tells whether the buffer's
  // stream is in a capture (it is in one only with the caller's, check_stream refuses otherwise).
  // Completes when the buffer's stream passes this point; its wait() waits for the stream to drain and
  // raises what the kernels recorded. `capturing`: an Event already complete (the work runs when the graph is
  // launched; order after the launch instead).
  Event event(bool capturing);
  // Raises the kept failure, or one the kernels recorded, when the work enqueued so far has run; else
  // nothing (it does not wait). `capturing`: the kept failure only (querying the stream then would
  // invalidate the capture).
  void raise_failures(bool capturing);
  // Throws Errc::invalid_argument naming `what` while the buffer's stream is in a capture.
  void refuse_in_capture(const char* what);

  // The caller's mask (low_latency_update_mask_buffer): after the work enqueued so far. A rank a wait masked
  // stays masked. These and clean() synchronise the buffer's stream: refused while it is in a capture.
  void set_mask(int rank, bool masked);
  std::vector<std::uint64_t> read_mask();
  void clear_mask();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
