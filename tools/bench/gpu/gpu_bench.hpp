// Physical bounds for GPU figures, measured in the same run as the figures they sit next to: a plain copy
// kernel held to N SMs, a full-GPU device copy, and a cuBLAS GEMM on the SMs that communication leaves, alone
// and while a communication function runs beside it. No CUDA types here: streams travel as void*
// (cudaStream_t).
//
// Every function throws ferry::Error: Errc::unsupported (with the reason) where no GPU is usable or the build
// has no CUDA, Errc::invalid_argument for bad arguments, Errc::system naming the CUDA or cuBLAS call that
// failed, Errc::internal when a result does not check out (a copy that is not byte for byte the source).
// Timings are medians over `iters` runs timed with CUDA events, after a warm-up; buffers hold random data.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace ferry::gpu_bench {

struct GpuDescription {
  std::string name;
  int sms = 0;
  std::size_t l2_bytes = 0;
  std::size_t memory_bytes = 0;
  int compute_capability = 0;  // major * 10 + minor
};

// Throws Errc::unsupported with the reason when `device` cannot be used.
GpuDescription describe_gpu(int device);

struct CopyResult {
  int sms = 0;      // blocks launched, one per SM
  double gbps = 0;  // (bytes read + bytes written) / median time, 1e9 bytes per second
  double ms = 0;    // median time of one copy
};

// The copy kernel: a persistent grid of exactly `sms` blocks of 1024 threads, each block alone on its SM (it
// reserves more than half an SM's shared memory), striding over `bytes` with 16-byte non-allocating loads,
// four in flight per thread. `bytes` is rounded down to a multiple of 16.
CopyResult measure_copy_kernel(int device, int sms, std::size_t bytes, int iters);

// cudaMemcpyAsync device to device over the whole GPU, GB/s counted as the copy kernel's.
double measure_device_copy(int device, std::size_t bytes, int iters);

// The copy kernel as a load for other measurements: buffers allocated once, each call enqueues one copy on
// `stream` and returns at once.
class CopyKernelLoad {
 public:
  CopyKernelLoad(int device, int sms, std::size_t bytes);
  ~CopyKernelLoad();
  CopyKernelLoad(const CopyKernelLoad&) = delete;
  CopyKernelLoad& operator=(const CopyKernelLoad&) = delete;
  void operator()(void* stream) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Two streams on disjoint SM sets of one GPU: the communication side gets at least `comm_sms` SMs (green
// contexts round to the driver's partition granularity, 8 SMs on Hopper) and the compute side the rest. Where
// green contexts are missing (driver or toolkit before 12.4, or their check fails), two plain streams that
// share every SM, and mode() says why.
class SmPartition {
 public:
  // allow_green = false asks for plain streams straight away.
  SmPartition(int device, int comm_sms, bool allow_green = true);
  ~SmPartition();
  SmPartition(const SmPartition&) = delete;
  SmPartition& operator=(const SmPartition&) = delete;

  void* compute_stream() const;
  void* comm_stream() const;
  int compute_sms() const;  // SMs the compute side may use (all of them with plain streams)
  int comm_sms() const;
  bool green() const;
  // "green contexts: compute 112 SMs, comm 20 SMs" or "plain streams (all 132 SMs shared): <reason>".
  const std::string& mode() const;

  // Work enqueued by the caller on one side runs with that side's context current (a no-op with plain
  // streams): use it around launches into that side's stream.
  class Enter {
   public:
    Enter(const SmPartition& partition, bool comm_side);
    ~Enter();
    Enter(const Enter&) = delete;
    Enter& operator=(const Enter&) = delete;

   private:
    const SmPartition* pushed_ = nullptr;  // the partition whose context was pushed, to pop it
  };

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct GemmOptions {
  int m = 8192, n = 8192, k = 8192;  // bf16 operands, fp32 accumulation, bf16 output
  int iters = 20;
  bool allow_green = true;
};

struct GemmResult {
  double tflops_full = 0;     // the GEMM alone on the whole GPU (no partition)
  double tflops_alone = 0;    // alone on the compute side of the partition
  double tflops_loaded = 0;   // on the compute side while `comm` runs on the other
  double slowdown = 0;        // loaded time / alone time - 1
  double comm_ms_alone = 0;   // one comm call alone on its side (median)
  bool comm_covered = false;  // comm ran from before the first loaded GEMM to after the last
  int compute_sms = 0;
  int comm_sms = 0;
  std::string mode;  // SmPartition::mode(), plus why green contexts were dropped if a run needed to
};

// `comm(stream)` enqueues one round of communication on `stream` and returns without waiting for it (as a
// kernel launch does); it is called repeatedly so that it covers the whole loaded measurement. With green
// contexts the comm side's context is current during the call.
GemmResult measure_gemm_overlap(int device, int comm_sms, const std::function<void(void* stream)>& comm,
                                const GemmOptions& options = {});

}  // namespace ferry::gpu_bench
