#include "dlpack_bridge.hpp"

#include <pybind11/stl.h>

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
  dlpack::ManagedTensorVersioned versioned{};
  std::shared_ptr<const void> owner;
  std::vector<std::int64_t> shape;
};

void delete_export(dlpack::ManagedTensor* managed) {
  delete static_cast<ExportContext*>(managed->manager_ctx);
}

void delete_versioned_export(dlpack::ManagedTensorVersioned* managed) {
  delete static_cast<ExportContext*>(managed->manager_ctx);
}

// A capsule nobody consumed still owns its tensor; one a consumer renamed belongs to the consumer.
template <typename Managed>
void release_unconsumed(PyObject* capsule, const char* name, const char* used_name) {
  if (PyCapsule_IsValid(capsule, used_name)) return;
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
  if (managed != nullptr) {
    managed->deleter(managed);
  } else {
    PyErr_Clear();
  }
  PyErr_Restore(type, value, traceback);
}

void capsule_destructor(PyObject* capsule) {
  release_unconsumed<dlpack::ManagedTensor>(capsule, dlpack::kCapsuleName, dlpack::kUsedCapsuleName);
}

void versioned_capsule_destructor(PyObject* capsule) {
  release_unconsumed<dlpack::ManagedTensorVersioned>(capsule, dlpack::kVersionedCapsuleName,
                                                     dlpack::kUsedVersionedCapsuleName);
}

// The producer's capsule for `request`: __dlpack__ asked for DLPack 1.x (max_version), and asked again
// without it where the producer predates it (a TypeError: torch 1.13, numpy 1.x); a CUDA tensor is asked with
// the stream ferry will read it on (the handshake that orders the producer's pending work before ferry's).
py::object request_capsule(py::handle object, const ImportRequest& request) {
  py::dict kwargs;
  py::dict versioned;  // a dict of its own (assigning a py::dict shares it)
  if (request.cuda) {
    const std::intptr_t stream = request.stream ? *request.stream : -1;
    const py::int_ named(stream == 0 ? dlpack::kLegacyDefaultStream : stream);
    kwargs["stream"] = named;
    versioned["stream"] = named;
  }
  py::object dlpack = object.attr("__dlpack__");
  versioned["max_version"] = py::make_tuple(dlpack::kMajorVersion, dlpack::kMinorVersion);
  try {
    return dlpack(**versioned);
  } catch (py::error_already_set& error) {
    if (!error.matches(PyExc_TypeError)) throw;
  }
  return dlpack(**kwargs);
}

}  // namespace

ImportedTensor::ImportedTensor(py::handle object, const std::string& name, const ImportRequest& request) {
  py::object capsule;
  if (PyCapsule_CheckExact(object.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(object);
  } else if (py::hasattr(object, "__dlpack__")) {
    capsule = request_capsule(object, request);
  } else {
    fail(Errc::invalid_argument, name + " is a " +
                                     std::string(py::str(py::type::of(object).attr("__name__"))) +
                                     ", not a tensor (ferry takes any object with __dlpack__)");
  }
  PyObject* raw = capsule.ptr();
  if (PyCapsule_IsValid(raw, dlpack::kVersionedCapsuleName)) {
    auto* managed = static_cast<dlpack::ManagedTensorVersioned*>(
        PyCapsule_GetPointer(raw, dlpack::kVersionedCapsuleName));
    if (managed->version.major != dlpack::kMajorVersion) {
      // Left unconsumed: the producer's capsule destructor releases it.
      fail(Errc::invalid_argument, name + " comes in a DLPack " + std::to_string(managed->version.major) +
                                       "." + std::to_string(managed->version.minor) +
                                       " capsule: ferry reads DLPack " +
                                       std::to_string(dlpack::kMajorVersion) + ".x");
    }
    PyCapsule_SetName(raw, dlpack::kUsedVersionedCapsuleName);
    versioned_ = managed;
  } else if (PyCapsule_IsValid(raw, dlpack::kCapsuleName)) {
    PyCapsule_SetName(raw, dlpack::kUsedCapsuleName);
    legacy_ = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(raw, dlpack::kUsedCapsuleName));
  } else {
    fail(Errc::invalid_argument,
         name + ": its __dlpack__ gave no unused \"dltensor\" or \"dltensor_versioned\" capsule");
  }
  // From here the tensor is ours to release (the producer's capsule destructor leaves a used capsule alone),
  // also when a check below refuses it.
  try {
    describe(name, request);
  } catch (...) {
    release();
    throw;
  }
}

const dlpack::Tensor& ImportedTensor::tensor() const {
  return versioned_ != nullptr ? versioned_->dl_tensor : legacy_->dl_tensor;
}

void ImportedTensor::release() {
  if (versioned_ != nullptr && versioned_->deleter != nullptr) versioned_->deleter(versioned_);
  if (legacy_ != nullptr && legacy_->deleter != nullptr) legacy_->deleter(legacy_);
  versioned_ = nullptr;
  legacy_ = nullptr;
}

std::optional<std::pair<int, int>> ImportedTensor::dlpack_version() const {
  if (versioned_ == nullptr) return std::nullopt;
  return std::pair<int, int>(static_cast<int>(versioned_->version.major),
                             static_cast<int>(versioned_->version.minor));
}

void ImportedTensor::describe(const std::string& name, const ImportRequest& request) {
  const dlpack::Tensor& t = tensor();
  if (request.writable && versioned_ != nullptr && (versioned_->flags & dlpack::kFlagReadOnly) != 0) {
    fail(Errc::invalid_argument, name + " is read-only (its producer says so) but ferry writes into it");
  }
  device_type_ = t.device.device_type;
  device_id_ = t.device.device_id;
  if (device_type_ != dlpack::kCPU && device_type_ != dlpack::kCUDA && device_type_ != dlpack::kCUDAHost) {
    fail(Errc::invalid_argument, name + " lives on DLPack device type " + std::to_string(device_type_) +
                                     ": ferry takes CPU or CUDA tensors");
  }
  const DType dtype = ferry_type_of(t.dtype, name, request.as_fp8);
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
  release();
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

py::capsule Exported::capsule(bool versioned) const {
  auto* context = new ExportContext;
  context->owner = owner_;
  context->shape = shape_;
  dlpack::Tensor& t = versioned ? context->versioned.dl_tensor : context->managed.dl_tensor;
  t.data = data_;
  t.device = device_;
  t.ndim = static_cast<std::int32_t>(context->shape.size());
  t.dtype = dtype_;
  t.shape = context->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  if (versioned) {
    context->versioned.version = {dlpack::kMajorVersion, dlpack::kMinorVersion};
    context->versioned.flags =
        0;  // writable: the consumer shares ferry's result, as with the unversioned form
    context->versioned.manager_ctx = context;
    context->versioned.deleter = delete_versioned_export;
    return py::capsule(&context->versioned, dlpack::kVersionedCapsuleName, versioned_capsule_destructor);
  }
  context->managed.manager_ctx = context;
  context->managed.deleter = delete_export;
  return py::capsule(&context->managed, dlpack::kCapsuleName, capsule_destructor);
}

namespace {

// __dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None) of the DLPack protocol. The stream
// needs nothing: ferry's Python layer has already ordered the caller's stream after the operation, or handed
// the caller an event to wait on (async_finish), as DeepEP does.
py::capsule exported_dlpack(const Exported& e, const py::kwargs& kwargs) {
  bool versioned = false;
  if (kwargs.contains("max_version") && !kwargs["max_version"].is_none()) {
    const auto version = kwargs["max_version"].cast<py::tuple>();
    versioned = version.size() >= 1 && version[0].cast<int>() >= static_cast<int>(dlpack::kMajorVersion);
  }
  if (kwargs.contains("dl_device") && !kwargs["dl_device"].is_none()) {
    const auto device = kwargs["dl_device"].cast<std::pair<int, int>>();
    const py::tuple own = e.device_pair();
    if (device.first != own[0].cast<int>() || device.second != own[1].cast<int>()) {
      throw py::buffer_error("ferry's result lives on DLPack device (" + std::to_string(own[0].cast<int>()) +
                             ", " + std::to_string(own[1].cast<int>()) + ") and cannot be copied to another");
    }
  }
  if (kwargs.contains("copy") && !kwargs["copy"].is_none() && kwargs["copy"].cast<bool>()) {
    throw py::buffer_error("ferry hands out its results without a copy (copy=True is not supported)");
  }
  return e.capsule(versioned);
}

}  // namespace

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
          "device", [](const ImportedTensor& t) { return py::make_tuple(t.device_type(), t.device_id()); })
      .def_property_readonly(
          "dlpack_version",
          [](const ImportedTensor& t) -> py::object {
            if (const auto version = t.dlpack_version())
              return py::make_tuple(version->first, version->second);
            return py::none();
          },
          "(major, minor) of the versioned capsule it came in; None for an unversioned one.");
  module.def(
      "import_tensor",
      [](py::handle object, const std::string& name, bool as_fp8, bool cuda,
         std::optional<std::intptr_t> stream, bool writable) {
        return std::make_unique<ImportedTensor>(object, name, ImportRequest{as_fp8, cuda, stream, writable});
      },
      py::arg("tensor"), py::arg("name"), py::arg("as_fp8") = false, py::arg("cuda") = false,
      py::arg("stream") = py::none(), py::arg("writable") = false,
      "Takes `tensor` (anything with __dlpack__, or a DLPack capsule) without copying it.\n\n"
      "DLPack 1.x's versioned capsule is asked for first (max_version), the unversioned one from producers "
      "that predate it. name names the argument in errors; as_fp8 reads uint8 bytes as fp8 e4m3; cuda: a GPU "
      "tensor, asked for with __dlpack__(stream=stream), the CUDA stream ferry's operation reads it on (0: "
      "the legacy default stream; None: no synchronisation asked); writable: ferry writes into it (a "
      "read-only tensor is refused). Raises ValueError for a dtype ferry does not take, more than 3 "
      "dimensions, or a tensor that is not contiguous.");
  py::class_<Exported>(module, "Exported",
                       "Memory ferry owns, handed out through DLPack (torch.from_dlpack, numpy.from_dlpack); "
                       "every consumer shares it, and it is freed when the last one lets go.")
      .def("__dlpack__", &exported_dlpack,
           "A fresh capsule of this memory: DLPack 1.x's versioned one when max_version >= (1, 0), else the "
           "unversioned one. stream needs nothing (ferry's events order the work); another dl_device or "
           "copy=True raise BufferError (ferry does not copy).")
      .def("__dlpack_device__", &Exported::device_pair)
      .def_property_readonly("shape", [](const Exported& e) { return py::tuple(py::cast(e.shape())); });
}

}  // namespace ferry::python
