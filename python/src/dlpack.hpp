// The DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html) in both forms: the unversioned one that
// torch 1.13 and numpy 1.x exchange (a DLManagedTensor in a PyCapsule named "dltensor"), and DLPack 1.x's
// versioned one that torch 2.x and numpy 2.x hand out when asked with __dlpack__(max_version=(1, x)) (a
// DLManagedTensorVersioned in a capsule named "dltensor_versioned"). Written from the specification (Debian
// packages no dlpack.h); only what ferry's binding uses.
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

// DLPack 1.x: the version travels with the tensor; minor versions of one major version share the ABI.
struct Version {
  std::uint32_t major;
  std::uint32_t minor;
};

inline constexpr std::uint64_t kFlagReadOnly = 1ULL << 0;  // the consumer must not write the memory

struct ManagedTensorVersioned {
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned* self);
  std::uint64_t flags;
  Tensor dl_tensor;
};

// The version ferry reads (any 1.x; 1.1 added the float8 type codes) and the one its capsules declare.
inline constexpr std::uint32_t kMajorVersion = 1;
inline constexpr std::uint32_t kMinorVersion = 1;

// The capsule names of the exchange: a fresh capsule, and one a consumer has taken over.
inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kUsedCapsuleName = "used_dltensor";
inline constexpr const char* kVersionedCapsuleName = "dltensor_versioned";
inline constexpr const char* kUsedVersionedCapsuleName = "used_dltensor_versioned";

// The stream a consumer names for the legacy default stream (0 is not allowed for CUDA).
inline constexpr std::intptr_t kLegacyDefaultStream = 1;

}  // namespace ferry::python::dlpack
