#include "ferry/tensor.hpp"

#include <cstring>

#include "host_block_cache.hpp"
#include "tensor_access.hpp"

#include "ferry/core/error.hpp"

namespace ferry {

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return "bf16";
    case DType::fp32:
      return "fp32";
    case DType::fp8_e4m3:
      return "fp8_e4m3";
    case DType::int64:
      return "int64";
    case DType::uint8:
      return "uint8";
    case DType::int32:
      return "int32";
  }
  return "unknown";
}

std::size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return 2;
    case DType::fp32:
      return 4;
    case DType::fp8_e4m3:
      return 1;
    case DType::int64:
      return 8;
    case DType::uint8:
      return 1;
    case DType::int32:
      return 4;
  }
  return 0;
}

TensorView::TensorView(const void* data, std::initializer_list<std::int64_t> shape, DType dtype,
                       Device device)
    : data_(const_cast<void*>(data)), dtype_(dtype), device_(device) {
  if (shape.size() > kMaxDims) {
    fail(Errc::invalid_argument, "a tensor view has at most " + std::to_string(kMaxDims) +
                                     " dimensions, not " + std::to_string(shape.size()));
  }
  for (std::int64_t extent : shape) {
    if (extent < 0) fail(Errc::invalid_argument, "a tensor view cannot have a negative extent");
    shape_[ndim_++] = extent;
  }
}

std::int64_t TensorView::numel() const {
  if (ndim_ == 0) return data_ ? 1 : 0;
  std::int64_t count = 1;
  for (int d = 0; d < ndim_; ++d) count *= shape_[d];
  return count;
}

std::string TensorView::describe() const {
  if (empty()) return "an empty view";
  std::string text = "[";
  for (int d = 0; d < ndim_; ++d) text += (d ? ", " : "") + std::to_string(shape_[d]);
  text += "] ";
  text += to_string(dtype_);
  if (device_ == Device::cuda) text += " (cuda)";
  return text;
}

Tensor::Tensor(std::initializer_list<std::int64_t> shape, DType dtype, Init init, Device device) {
  view_ = TensorView(nullptr, shape, dtype);
  // One byte at least, so even an empty tensor has a valid data pointer.
  std::size_t bytes = view_.bytes() > 0 ? view_.bytes() : 1;
  if (device == Device::cuda) {
    storage_ = detail::allocate_device_block(bytes, init == Init::zeros);
  } else {
    detail::HostBlock block = detail::allocate_host_block(bytes);
    const detail::HostBlockDeleter deleter = block.get_deleter();
    storage_ = std::shared_ptr<std::byte>(block.release(), deleter);
    if (init == Init::zeros) std::memset(storage_.get(), 0, bytes);
  }
  view_ = TensorView(storage_.get(), shape, dtype, device);
}

namespace detail {

Tensor TensorAccess::adopt(std::shared_ptr<std::byte> storage, std::initializer_list<std::int64_t> shape,
                           DType dtype, Device device) {
  Tensor tensor;
  tensor.view_ = TensorView(storage.get(), shape, dtype, device);
  tensor.storage_ = std::move(storage);
  return tensor;
}

}  // namespace detail

}  // namespace ferry
