// Tensors between Python and ferry through DLPack, without copies, so that one build serves every framework
// that speaks DLPack (torch 1.13 and 2.x, numpy, ...) and nothing links against libtorch.
//
// In: an object with __dlpack__ (or a "dltensor" capsule) becomes an ImportedTensor, which owns the
// producer's DLManagedTensor, and with it the producer's memory, until it is dropped, and offers a
// ferry::TensorView of that memory. Out: an Exported wraps memory ferry owns (a Tensor, the vector of a
// Layout...) and hands it out as a capsule whose deleter drops ferry's reference, whichever thread the
// consumer frees it on.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dlpack.hpp"
#include "ferry/tensor.hpp"

namespace ferry::python {

namespace py = pybind11;

class ImportedTensor {
 public:
  // name: the argument's name, for error messages. as_fp8: the bytes are fp8 e4m3 (frameworks without a
  // float8 dtype hand them over as uint8). cuda: the object lives on a GPU; it is asked for its capsule
  // without a stream to synchronise with, because ferry orders its own stream after the caller's. Throws
  // Errc::invalid_argument naming `name` for a dtype ferry does not take, more than 3 dimensions, or a layout
  // that is not contiguous row-major.
  ImportedTensor(py::handle object, const std::string& name, bool as_fp8, bool cuda);
  ~ImportedTensor();  // the producer's deleter, with the GIL held (numpy's deleter touches Python objects)
  ImportedTensor(const ImportedTensor&) = delete;
  ImportedTensor& operator=(const ImportedTensor&) = delete;

  const TensorView& view() const { return view_; }
  int device_type() const { return device_type_; }
  int device_id() const { return device_id_; }

 private:
  void describe(const std::string& name, bool as_fp8);  // view_ and the device, after the checks

  dlpack::ManagedTensor* managed_ = nullptr;
  TensorView view_;
  int device_type_ = dlpack::kCPU;
  int device_id_ = 0;
};

// A view of memory `owner` keeps alive, in a form DLPack consumers take.
class Exported {
 public:
  Exported(std::shared_ptr<const void> owner, void* data, std::vector<std::int64_t> shape,
           dlpack::DataType dtype, dlpack::Device device);

  // A ferry Tensor (bf16, fp32, int64, int32, uint8; fp8_e4m3 as uint8 bytes), on the given CUDA device when
  // the tensor is a device tensor.
  static Exported of(const Tensor& tensor, int cuda_device);

  py::capsule capsule() const;    // a fresh "dltensor" capsule (__dlpack__); each one shares the memory
  py::tuple device_pair() const;  // (device type, device id) (__dlpack_device__)
  const std::vector<std::int64_t>& shape() const { return shape_; }

 private:
  std::shared_ptr<const void> owner_;
  void* data_;
  std::vector<std::int64_t> shape_;
  dlpack::DataType dtype_;
  dlpack::Device device_;
};

dlpack::DataType dlpack_type_of(DType dtype);

// An optional argument's view: the empty view for None.
const TensorView& view_or_empty(const ImportedTensor* tensor);

// An Exported of `tensor`, or None for the empty Tensor (an output the operation does not have).
py::object export_or_none(const Tensor& tensor, int cuda_device);

void register_dlpack(py::module_& module);

}  // namespace ferry::python
