// Small pieces that CUDA-using code shares (transport, tools, tests; not installed): turning a CUDA status
// into ferry::Error, and making a device current for a scope without disturbing the caller's choice. Exists
// only in builds with CUDA (the functions live in libferry).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <memory>
#include <new>
#include <string>

namespace ferry::transport::detail {

// A failed runtime call also leaves the calling thread's "last error" set until cudaGetLastError reads it.
// ferry reports its failures itself, so it clears that after each one: else the framework's next launch check
// (cudaGetLastError) would report ferry's error ("out of memory", "too many blocks in cooperative launch")
// as its own kernel's. A sticky error (a kernel fault) stays: every later call returns it anyway.
inline void forget_last_error() noexcept {
  static_cast<void>(cudaGetLastError());
}

// Throws Errc::system "<what>: <error name> (<error text>)" unless status is cudaSuccess (clearing the
// thread's last error first). `what` names the call and its subject ("cudaMalloc(4096 bytes) on device 0").
void check_cuda(cudaError_t status, const std::string& what);

// "<error name> (<error text>)" of a status, for messages that carry more than one.
std::string describe_cuda(cudaError_t status);

// The number of GPUs this process sees; 0 with `reason` saying why ("no usable GPU (cudaGetDeviceCount:
// ...)") when it sees none. cudaGetDeviceCount leaves its argument untouched on failure
// (cudaErrorInsufficientDriver without a GPU), so the status is checked first.
int visible_gpus(std::string& reason);

// Makes `device` current for the calling thread while it lives, then puts back exactly the context the
// thread had: the one it had bound, or none. Restoring "none" matters: since CUDA 12 cudaSetDevice creates
// the device's primary context, so a guard that restored "device 0" on a thread that had never used CUDA
// would make a context on GPU 0 in every process of a job (hundreds of MiB each). Without the driver's
// context entry points (never in practice) it falls back to restoring the previous device when it differed.
// Every place where ferry calls CUDA from a thread it does not own (a user's thread waiting on an Event, a
// deleter on whatever thread drops the last reference) opens one.
class DeviceScope {
 public:
  explicit DeviceScope(int device);  // throws Errc::system when the device cannot be made current
  DeviceScope(int device, std::nothrow_t) noexcept;  // for destructors: tries, never throws
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  cudaError_t enter(int device) noexcept;

  bool restore_ = false;
  void* context_ = nullptr;  // the thread's context before (CUcontext), nullptr: none
  int previous_ = -1;        // fallback: the thread's device before
};

// The calling thread's CUDA graph capture mode relaxed while it lives, then put back. For calls CUDA counts
// as "potentially unsafe" while any capture is open (cudaEventQuery, cudaStreamQuery and synchronisation of a
// stream that is not being captured, cudaMalloc) when they touch nothing of the capture: in the default
// global mode they would fail and invalidate a capture open on any thread (a framework capturing on its
// thread while ferry's threads work, or the capturing thread asking whether an earlier operation finished).
// Nests. `needed` false: does nothing (for code that relaxes only while an operation is captured).
class RelaxedCaptureMode {
 public:
  explicit RelaxedCaptureMode(bool needed = true) noexcept : restore_(needed) {
    if (needed && cudaThreadExchangeStreamCaptureMode(&mode_) != cudaSuccess) {
      forget_last_error();
      restore_ = false;
    }
  }
  ~RelaxedCaptureMode() {
    if (restore_ && cudaThreadExchangeStreamCaptureMode(&mode_) != cudaSuccess) forget_last_error();
  }
  RelaxedCaptureMode(const RelaxedCaptureMode&) = delete;
  RelaxedCaptureMode& operator=(const RelaxedCaptureMode&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
  bool restore_ = true;
};

// Makes `graph` (a graph being captured) own a CUDA user object that sets the returned flag once the graph,
// every clone and every executable instance of it are gone and their launches have ended: then what the
// graph's work addresses may be released (by the caller's own thread: CUDA calls the object's destructor on
// a thread of its own, where no CUDA call is allowed). Null when CUDA refuses the object: keep what the graph
// addresses until the end. Throws std::bad_alloc only.
std::shared_ptr<const std::atomic<bool>> flag_when_graph_lets_go(cudaGraph_t graph);

// A CUDA event of `device` without timing (recorded to learn when a stream has passed a point), created and
// destroyed on that device whichever thread does it.
class DeviceEvent {
 public:
  explicit DeviceEvent(int device);  // throws Errc::system
  ~DeviceEvent();
  DeviceEvent(const DeviceEvent&) = delete;
  DeviceEvent& operator=(const DeviceEvent&) = delete;

  cudaEvent_t get() const { return event_; }
  void record(cudaStream_t stream);  // throws Errc::system
  // Whether the stream has passed the recorded point; an error also counts (nothing queued behind it will run
  // any more), except cudaErrorCapturedEvent: an event recorded during a CUDA graph capture never passes
  // (what it marks runs at every launch of the graph), so whatever waits for it holds on. Safe while a
  // capture is open on any thread (RelaxedCaptureMode).
  bool passed() const;

 private:
  int device_;
  cudaEvent_t event_ = nullptr;
};

}  // namespace ferry::transport::detail
