// Tensors between Python and ferry through DLPack, without copies, so that one build serves every framework
// that speaks DLPack (torch 1.13 and 2.x, numpy, ...) and nothing links against libtorch.
//
// In: an object with __dlpack__ (or a DLPack capsule) becomes an ImportedTensor, which owns the producer's
// managed tensor, and with it the producer's memory, until it is dropped, and offers a ferry::TensorView of
// that memory. ferry asks for DLPack 1.x's versioned capsule (max_version) and takes the unversioned one
// from producers that predate it (torch 1.13, numpy 1.x). Out: an Exported wraps memory ferry owns (a Tensor,
// the vector of a Layout...) and hands it out as either kind of capsule, as the consumer asks, whose deleter
// drops ferry's reference, whichever thread the consumer frees it on.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dlpack.hpp"
#include "ferry/tensor.hpp"

namespace ferry::python {

namespace py = pybind11;

// How ferry asks for a tensor.
struct ImportRequest {
  bool as_fp8 = false;  // the bytes are fp8 e4m3 (frameworks without a float8 dtype hand them over as uint8)
  bool cuda = false;    // the tensor lives on a GPU
  // CUDA: the stream ferry's operation will read the tensor on (cudaStream_t; 0, the legacy default stream,
  // is passed as DLPack's 1), handed to __dlpack__(stream=...) so that the producer orders its pending work
  // before it. None: no synchronisation is asked for (-1).
  std::optional<std::intptr_t> stream;
  bool writable = false;  // ferry writes the memory: a producer's read-only tensor is refused
};

class ImportedTensor {
 public:
  // name: the argument's name, for error messages. Throws Errc::invalid_argument naming `name` for a dtype
  // ferry does not take, more than 3 dimensions, a layout that is not contiguous row-major, a DLPack major
  // version ferry does not read, or a read-only tensor where ferry writes.
  ImportedTensor(py::handle object, const std::string& name, const ImportRequest& request);
  ~ImportedTensor();  // the producer's deleter, with the GIL held (numpy's deleter touches Python objects)
  ImportedTensor(const ImportedTensor&) = delete;
  ImportedTensor& operator=(const ImportedTensor&) = delete;

  const TensorView& view() const { return view_; }
  int device_type() const { return device_type_; }
  int device_id() const { return device_id_; }
  // The versioned capsule's DLPack version; nullopt for an unversioned capsule.
  std::optional<std::pair<int, int>> dlpack_version() const;

 private:
  const dlpack::Tensor& tensor() const;
  void release();                                                        // the producer's deleter, once
  void describe(const std::string& name, const ImportRequest& request);  // view_ and the device, after checks

  dlpack::ManagedTensor* legacy_ = nullptr;
  dlpack::ManagedTensorVersioned* versioned_ = nullptr;
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

  // A fresh capsule (__dlpack__); each one shares the memory. versioned: DLPack 1.x's "dltensor_versioned"
  // (asked for with max_version >= (1, 0)), else the unversioned "dltensor".
  py::capsule capsule(bool versioned) const;
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
