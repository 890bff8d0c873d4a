// The DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html), the unversioned form that torch 1.13,
// numpy 1.22+ and torch 2.x all exchange by default: a DLManagedTensor inside a PyCapsule named "dltensor".
// Written from the specification (Debian packages no dlpack.h); only what ferry's binding uses.
#pragma once

#include <cstdint>

namespace ferry::python::dlpack {

enum DeviceType : std::int32_t {
  kCPU = 1,
  kCUDA = 2,
  kCUDAHost = 3,
  kCUDAManaged = 13,
};

struct Device {
  std::int32_t device_type;
  std::int32_t device_id;
};

enum TypeCode : std::uint8_t {
  kInt = 0,
  kUInt = 1,
  kFloat = 2,
  kBfloat = 4,
  kBool = 6,
  kFloat8_e4m3fn = 10,  // DLPack 1.1
};

struct DataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  std::int32_t ndim;
  DataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // in elements; nullptr: compact row-major
  std::uint64_t byte_offset;
};

struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

// The capsule names of the exchange: a fresh capsule, and one a consumer has taken over.
inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kUsedCapsuleName = "used_dltensor";

}  // namespace ferry::python::dlpack
