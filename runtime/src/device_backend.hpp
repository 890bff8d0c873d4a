// The CUDA side of a Buffer (Buffer(group, config, Device::cuda)): the registered buffer in device memory of
// this rank's GPU, node peers through CUDA IPC, other nodes through a proxy and a fabric that registers
// device memory, and the CUDA executor (kernels/cuda) running every operation on the Buffer's communication
// stream after the caller's stream. Operations return Events backed by CUDA events: the host can wait on them
// (bounded, raising what a role recorded), a stream can wait on them without the host.
#pragma once

#include <cstddef>
#include <memory>

#include "ferry/buffer.hpp"
#include "ferry/kernels/host/engine.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"

namespace ferry {

class DeviceBackend {
 public:
  // Collective over the group.
  DeviceBackend(Group& group, const Config& config, const kernels::protocol::BufferLayout& layout,
                std::size_t bytes);
  ~DeviceBackend();
  DeviceBackend(const DeviceBackend&) = delete;
  DeviceBackend& operator=(const DeviceBackend&) = delete;

  // The layout kernel runs on the Buffer's stream after the work already enqueued on `stream` (the caller's
  // cudaStream_t; nullptr: the legacy default stream).
  Layout layout(const TensorView& topk_idx, std::int64_t num_experts, int max_nodes, void* stream);
  Pending<DispatchResult> dispatch(const DispatchInputs& inputs, const Layout& layout,
                                   const DispatchOptions& options, const kernels::host::OpSettings& settings);
  Pending<DispatchResult> dispatch(const TensorView& x, const TensorView& x_scales, const Handle& handle,
                                   const DispatchOptions& options, const kernels::host::OpSettings& settings);
  Pending<CombineResult> combine(const TensorView& y, const Handle& handle, const CombineOptions& options,
                                 const kernels::host::OpSettings& settings);
  BufferTraffic traffic() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
