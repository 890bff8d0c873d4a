// A CUDA stream a test owns. Declare it before everything enqueued on it: results and outputs free their
// memory in stream order on it, so it must be destroyed last (after a synchronize).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "ferry/core/error.hpp"

namespace ferry::test {

class OwnedStream {
 public:
  // cudaStreamDefault orders the stream after the legacy default stream (cudaMemset, cudaMemcpy); a stream
  // that is captured into a CUDA graph wants cudaStreamNonBlocking.
  explicit OwnedStream(unsigned flags = cudaStreamDefault) {
    if (const cudaError_t status = cudaStreamCreateWithFlags(&stream_, flags); status != cudaSuccess)
      fail(Errc::system, std::string("cudaStreamCreateWithFlags: ") + cudaGetErrorName(status));
  }
  ~OwnedStream() {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace ferry::test
