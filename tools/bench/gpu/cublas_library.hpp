// cuBLAS, opened with dlopen the first time a GEMM is measured. Linking it would make every start of `ferry`
// map half a gigabyte of cuBLAS (about half a second each, and `ferry launch` starts many), for a benchmark
// that few runs use.
#pragma once

#include <cublas_api.h>

namespace ferry::gpu_bench::detail {

class CublasLibrary {
 public:
  // Loads libcublas.so.<major> once: from FERRY_CUBLAS_LIBRARY when set, else the loader's search path, else
  // beside the libcudart this process uses. Throws Errc::unsupported naming every place it looked.
  static const CublasLibrary& get();

  using Create = cublasStatus_t (*)(cublasHandle_t*);
  using Destroy = cublasStatus_t (*)(cublasHandle_t);
  using SetStream = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
  using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                    const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                                    int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                                    cublasGemmAlgo_t);
  using StatusString = const char* (*)(cublasStatus_t);

  Create create = nullptr;
  Destroy destroy = nullptr;
  SetStream set_stream = nullptr;
  GemmEx gemm_ex = nullptr;
  StatusString status_string = nullptr;

  // Throws Errc::system "<what>: <cuBLAS status>" unless status is CUBLAS_STATUS_SUCCESS.
  void check(cublasStatus_t status, const char* what) const;

 private:
  CublasLibrary();
  void* library_ = nullptr;  // never closed: cuBLAS stays loaded for the process
};

// A cuBLAS handle bound to the current context and `stream`.
class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream);
  ~CublasHandle();
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  const CublasLibrary& library_;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace ferry::gpu_bench::detail
