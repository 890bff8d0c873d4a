#include "dlpack_bridge.hpp"

#include <string>

#include "ferry/core/error.hpp"

namespace ferry::python {

namespace {

std::string describe_type(const dlpack::DataType& type) {
  return "DLPack type code " + std::to_string(type.code) + " with " + std::to_string(type.bits) + " bits" +
         (type.lanes != 1 ? " x " + std::to_string(type.lanes) + " lanes" : "");
}

DType ferry_type_of(const dlpack::DataType& type, const std::string& name, bool as_fp8) {
  if (type.lanes == 1) {
    if (type.code == dlpack::kBfloat && type.bits == 16) return DType::bf16;
    if (type.code == dlpack::kFloat && type.bits == 32) return DType::fp32;
    if (type.code == dlpack::kInt && type.bits == 64) return DType::int64;
    if (type.code == dlpack::kInt && type.bits == 32) return DType::int32;
    if (type.code == dlpack::kFloat8_e4m3fn && type.bits == 8) return DType::fp8_e4m3;
    if ((type.code == dlpack::kUInt || type.code == dlpack::kBool) && type.bits == 8) {
      return as_fp8 ? DType::fp8_e4m3 : DType::uint8;
    }
  }
  fail(Errc::invalid_argument, name + " has " + describe_type(type) +
                                   ", which ferry does not take (bf16, fp32, fp8 e4m3, int64, int32, bool)");
}

// Compact row-major, as ferry reads rows in place (a dimension of size 1, or an empty tensor, may have any
// strides).
bool row_major(const dlpack::Tensor& t) {
  if (t.strides == nullptr) return true;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] == 0) return true;  // no element: any strides will do
  }
  std::int64_t expected = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    if (t.shape[d] != 1 && t.strides[d] != expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

std::string shape_text(const dlpack::Tensor& t) {
  std::string text = "[";
  for (int d = 0; d < t.ndim; ++d) text += (d ? ", " : "") + std::to_string(t.shape[d]);
  return text + "]";
}

struct ExportContext {
  dlpack::ManagedTensor managed{};
  std::shared_ptr<const void> owner;
  std::vector<std::int64_t> shape;
};

void delete_export(dlpack::ManagedTensor* managed) {
  delete static_cast<ExportContext*>(managed->manager_ctx);
}

// A capsule nobody consumed still owns its tensor; one a consumer renamed belongs to the consumer.
void capsule_destructor(PyObject* capsule) {
  if (PyCapsule_IsValid(capsule, dlpack::kUsedCapsuleName)) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule, dlpack::kCapsuleName));
  if (managed != nullptr) {
    managed->deleter(managed);
  } else {
    PyErr_Clear();
  }
  PyErr_Restore(type, value, traceback);
}

}  // namespace

ImportedTensor::ImportedTensor(py::handle object, const std::string& name, bool as_fp8, bool cuda) {
  py::object capsule;
  if (PyCapsule_CheckExact(object.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(object);
  } else if (py::hasattr(object, "__dlpack__")) {
    capsule = cuda ? object.attr("__dlpack__")(py::arg("stream") = -1) : object.attr("__dlpack__")();
  } else {
    fail(Errc::invalid_argument, name + " is a " +
                                     std::string(py::str(py::type::of(object).attr("__name__"))) +
                                     ", not a tensor (ferry takes any object with __dlpack__)");
  }
  auto* managed =
      static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), dlpack::kCapsuleName));
  if (managed == nullptr) {
    PyErr_Clear();
    fail(Errc::invalid_argument, name + ": its __dlpack__ gave no unused \"dltensor\" capsule");
  }
  // From here the tensor is ours to release (the producer's capsule destructor leaves a used capsule alone),
  // also when a check below refuses it.
  PyCapsule_SetName(capsule.ptr(), dlpack::kUsedCapsuleName);
  managed_ = managed;
  try {
    describe(name, as_fp8);
  } catch (...) {
    if (managed_->deleter != nullptr) managed_->deleter(managed_);
    managed_ = nullptr;
    throw;
  }
}

void ImportedTensor::describe(const std::string& name, bool as_fp8) {
  const dlpack::Tensor& t = managed_->dl_tensor;
  device_type_ = t.device.device_type;
  device_id_ = t.device.device_id;
  if (device_type_ != dlpack::kCPU && device_type_ != dlpack::kCUDA && device_type_ != dlpack::kCUDAHost) {
    fail(Errc::invalid_argument, name + " lives on DLPack device type " + std::to_string(device_type_) +
                                     ": ferry takes CPU or CUDA tensors");
  }
  const DType dtype = ferry_type_of(t.dtype, name, as_fp8);
  if (!row_major(t)) {
    fail(Errc::invalid_argument,
         name + " " + shape_text(t) +
             " is not contiguous: ferry reads its rows in place (pass a contiguous tensor)");
  }
  const Device device = device_type_ == dlpack::kCUDA ? Device::cuda : Device::host;
  void* data = static_cast<std::byte*>(t.data) + t.byte_offset;
  switch (t.ndim) {
    case 1:
      view_ = TensorView(data, {t.shape[0]}, dtype, device);
      break;
    case 2:
      view_ = TensorView(data, {t.shape[0], t.shape[1]}, dtype, device);
      break;
    case 3:  // the low-latency mode's expert-major rows [local experts, slots, hidden]
      view_ = TensorView(data, {t.shape[0], t.shape[1], t.shape[2]}, dtype, device);
      break;
    default:
      fail(Errc::invalid_argument, name + " " + shape_text(t) + " has " + std::to_string(t.ndim) +
                                       " dimensions: ferry takes 1-D, 2-D or 3-D tensors");
  }
  // An empty tensor may come without memory; ferry's checks read data() == nullptr as "no data".
  if (view_.numel() == 0 && data == nullptr) {
    static std::int64_t placeholder = 0;
    const std::int64_t* n = t.shape;
    view_ = t.ndim == 1   ? TensorView(&placeholder, {n[0]}, dtype, device)
            : t.ndim == 2 ? TensorView(&placeholder, {n[0], n[1]}, dtype, device)
                          : TensorView(&placeholder, {n[0], n[1], n[2]}, dtype, device);
  }
}

ImportedTensor::~ImportedTensor() {
  if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
}

Exported::Exported(std::shared_ptr<const void> owner, void* data, std::vector<std::int64_t> shape,
                   dlpack::DataType dtype, dlpack::Device device)
    : owner_(std::move(owner)), data_(data), shape_(std::move(shape)), dtype_(dtype), device_(device) {}

dlpack::DataType dlpack_type_of(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return {dlpack::kBfloat, 16, 1};
    case DType::fp32:
      return {dlpack::kFloat, 32, 1};
    case DType::int64:
      return {dlpack::kInt, 64, 1};
    case DType::int32:
      return {dlpack::kInt, 32, 1};
    case DType::fp8_e4m3:  // as bytes: torch 1.13 and numpy have no float8, torch 2.x re-views them
    case DType::uint8:
      return {dlpack::kUInt, 8, 1};
  }
  return {dlpack::kUInt, 8, 1};
}

Exported Exported::of(const Tensor& tensor, int cuda_device) {
  std::vector<std::int64_t> shape;
  for (int d = 0; d < tensor.dim(); ++d) shape.push_back(tensor.size(d));
  const dlpack::Device device = tensor.device() == Device::cuda ? dlpack::Device{dlpack::kCUDA, cuda_device}
                                                                : dlpack::Device{dlpack::kCPU, 0};
  return Exported(std::make_shared<const Tensor>(tensor), tensor.data(), std::move(shape),
                  dlpack_type_of(tensor.dtype()), device);
}

const TensorView& view_or_empty(const ImportedTensor* tensor) {
  static const TensorView empty;
  return tensor != nullptr ? tensor->view() : empty;
}

py::object export_or_none(const Tensor& tensor, int cuda_device) {
  if (tensor.data() == nullptr && tensor.dim() == 0) return py::none();
  return py::cast(Exported::of(tensor, cuda_device));
}

py::capsule Exported::capsule() const {
  auto* context = new ExportContext;
  context->owner = owner_;
  context->shape = shape_;
  dlpack::Tensor& t = context->managed.dl_tensor;
  t.data = data_;
  t.device = device_;
  t.ndim = static_cast<std::int32_t>(context->shape.size());
  t.dtype = dtype_;
  t.shape = context->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  context->managed.manager_ctx = context;
  context->managed.deleter = delete_export;
  return py::capsule(&context->managed, dlpack::kCapsuleName, capsule_destructor);
}

py::tuple Exported::device_pair() const {
  return py::make_tuple(device_.device_type, device_.device_id);
}

void register_dlpack(py::module_& module) {
  py::class_<ImportedTensor>(module, "ImportedTensor",
                             "A tensor handed to ferry through DLPack: keeps the producer's memory alive "
                             "until dropped. Made by import_tensor().")
      .def_property_readonly("shape",
                             [](const ImportedTensor& t) {
                               py::list shape;
                               for (int d = 0; d < t.view().dim(); ++d) shape.append(t.view().size(d));
                               return py::tuple(shape);
                             })
      .def_property_readonly("dtype", [](const ImportedTensor& t) { return to_string(t.view().dtype()); })
      .def_property_readonly(
          "device", [](const ImportedTensor& t) { return py::make_tuple(t.device_type(), t.device_id()); });
  module.def(
      "import_tensor",
      [](py::handle object, const std::string& name, bool as_fp8, bool cuda) {
        return std::make_unique<ImportedTensor>(object, name, as_fp8, cuda);
      },
      py::arg("tensor"), py::arg("name"), py::arg("as_fp8") = false, py::arg("cuda") = false,
      "Takes `tensor` (anything with __dlpack__, or a DLPack capsule) without copying it.\n\n"
      "name names the argument in errors; as_fp8 reads uint8 bytes as fp8 e4m3; cuda: a GPU tensor (no "
      "stream "
      "synchronisation is asked for: ferry orders its stream after the caller's). Raises ValueError for a "
      "dtype ferry does not take, more than 3 dimensions, or a tensor that is not contiguous.");
  py::class_<Exported>(module, "Exported",
                       "Memory ferry owns, handed out through DLPack (torch.from_dlpack, numpy.from_dlpack); "
                       "every consumer shares it, and it is freed when the last one lets go.")
      .def(
          "__dlpack__", [](const Exported& e, py::args, py::kwargs) { return e.capsule(); },
          "A fresh \"dltensor\" capsule of this memory (the stream argument is not needed: ferry's events "
          "order "
          "the work).")
      .def("__dlpack_device__", &Exported::device_pair)
      .def_property_readonly("shape", [](const Exported& e) { return py::tuple(py::cast(e.shape())); });
}

}  // namespace ferry::python
