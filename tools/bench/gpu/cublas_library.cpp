#include "bench/gpu/cublas_library.hpp"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ferry/core/env.hpp"
#include "ferry/core/error.hpp"

namespace ferry::gpu_bench::detail {

namespace {

const std::string kLibraryName = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);

// The directory of the libcudart this process runs with, where a toolkit keeps libcublas too.
std::string cudart_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) == 0 || info.dli_fname == nullptr)
    return {};
  std::string path = info.dli_fname;
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

template <typename Function>
void find_symbol(void* library, const char* name, Function& function) {
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) fail(Errc::unsupported, kLibraryName + " has no " + name);
  function = reinterpret_cast<Function>(symbol);
}

}  // namespace

CublasLibrary::CublasLibrary() {
  std::vector<std::string> candidates;
  if (auto chosen = env::get("FERRY_CUBLAS_LIBRARY"); chosen && !chosen->empty()) {
    candidates.push_back(*chosen);
  } else {
    candidates.push_back(kLibraryName);
    if (std::string directory = cudart_directory(); !directory.empty()) {
      candidates.push_back(directory + "/" + kLibraryName);
    }
  }
  std::string tried;
  for (const auto& candidate : candidates) {
    library_ = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library_ != nullptr) break;
    const char* error = dlerror();
    tried += (tried.empty() ? "" : "; ") + candidate + ": " + (error != nullptr ? error : "not found");
  }
  if (library_ == nullptr) {
    fail(Errc::unsupported, "cannot load cuBLAS (" + tried + "); set FERRY_CUBLAS_LIBRARY to its path");
  }
  find_symbol(library_, "cublasCreate_v2", create);
  find_symbol(library_, "cublasDestroy_v2", destroy);
  find_symbol(library_, "cublasSetStream_v2", set_stream);
  find_symbol(library_, "cublasGemmEx", gemm_ex);
  find_symbol(library_, "cublasGetStatusString", status_string);
}

const CublasLibrary& CublasLibrary::get() {
  // Loaded on first use; a failure is thrown to each caller (and retried by the next).
  static std::mutex mutex;
  static std::unique_ptr<const CublasLibrary> library;
  std::lock_guard lock(mutex);
  if (!library) library.reset(new CublasLibrary());
  return *library;
}

void CublasLibrary::check(cublasStatus_t status, const char* what) const {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail(Errc::system, std::string(what) + ": " + status_string(status) + " (cublasStatus_t " +
                         std::to_string(static_cast<int>(status)) + ")");
}

CublasHandle::CublasHandle(cudaStream_t stream) : library_(CublasLibrary::get()) {
  library_.check(library_.create(&handle_), "cublasCreate");
  cublasStatus_t status = library_.set_stream(handle_, stream);
  if (status != CUBLAS_STATUS_SUCCESS) {
    library_.destroy(handle_);
    library_.check(status, "cublasSetStream");
  }
}

CublasHandle::~CublasHandle() {
  library_.destroy(handle_);
}

}  // namespace ferry::gpu_bench::detail
