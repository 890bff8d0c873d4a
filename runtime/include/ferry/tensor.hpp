// Tensors at ferry's API: a non-owning view (pointer, shape, element type, device) for inputs, and a small
// owning host tensor for the outputs ferry allocates. ferry never copies inputs: a view must stay valid until
// the operation that received it has finished (its Event).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

namespace ferry {

enum class DType : std::uint8_t { bf16, fp32, fp8_e4m3, int64, uint8, int32 };
enum class Device : std::uint8_t { host, cuda };

const char* to_string(DType dtype);
std::size_t element_size(DType dtype);

class TensorView {
 public:
  static constexpr int kMaxDims = 4;

  TensorView() = default;  // the empty view: no data, no dimensions
  TensorView(const void* data, std::initializer_list<std::int64_t> shape, DType dtype,
             Device device = Device::host);

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int dim() const { return ndim_; }
  std::int64_t size(int d) const { return shape_[d]; }
  std::int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * element_size(dtype_); }
  bool empty() const { return data_ == nullptr && ndim_ == 0; }

  // "[4, 128] bf16": for error messages.
  std::string describe() const;

 private:
  void* data_ = nullptr;
  std::array<std::int64_t, kMaxDims> shape_{};
  int ndim_ = 0;
  DType dtype_ = DType::fp32;
  Device device_ = Device::host;
};

namespace detail {
struct TensorAccess;  // ferry's own allocators (not installed)
// Returns a host tensor's memory to ferry's block cache (large blocks are recycled between operations).
struct HostBlockDeleter {
  std::size_t capacity = 0;  // the block's size class; 0: a small block, freed at once
  void operator()(std::byte* block) const;
};
}  // namespace detail

// A tensor that owns its memory: host memory (64-byte aligned), or device memory of the current CUDA device.
// Zero-initialised unless asked otherwise: ferry asks for uninitialized memory only where it writes every
// byte itself. Copies share the memory (the last one frees it), as framework tensors do. Device memory is
// usable on any stream once the constructor returns and is freed in stream order (no device-wide
// synchronisation): finish the work that reads a device tensor before dropping its last copy, as with a
// framework's caching allocator.
class Tensor {
 public:
  enum class Init : std::uint8_t { zeros, uninitialized };

  Tensor() = default;
  Tensor(std::initializer_list<std::int64_t> shape, DType dtype, Init init = Init::zeros,
         Device device = Device::host);

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }  // NOLINT: a tensor is usable wherever a view is
  void* data() const { return view_.data(); }
  template <typename T>
  T* data_as() const {
    return view_.data_as<T>();
  }
  DType dtype() const { return view_.dtype(); }
  Device device() const { return view_.device(); }
  int dim() const { return view_.dim(); }
  std::int64_t size(int d) const { return view_.size(d); }
  std::int64_t numel() const { return view_.numel(); }
  std::size_t bytes() const { return view_.bytes(); }

 private:
  friend struct detail::TensorAccess;
  std::shared_ptr<std::byte> storage_;
  TensorView view_;
};

}  // namespace ferry
