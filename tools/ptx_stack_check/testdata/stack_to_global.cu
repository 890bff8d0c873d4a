// Wrong on purpose: the proof that ferry-ptx-stack-check flags what it is there for (test
// ptx_stack_check.deliberate_fault expects findings here). This is the defect the CUDA executor had before it
// first ran: a copy routine that reads with `ld.global` is handed the address of a header on the thread's
// stack, which nvcc writes with st.local and reads back with ld.global (an illegal address on a GPU).
#include <cstddef>
#include <cstdint>

namespace {

struct Header {
  std::int32_t source_rank;
  std::int32_t source_token;
  std::uint64_t fingerprint;
  std::uint64_t reserved[2];
};

__device__ __forceinline__ int4 load_global(const int4* address) {
  int4 value;
  asm volatile("ld.global.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w)
               : "l"(address)
               : "memory");
  return value;
}

__device__ void copy_vectors(void* dst, const void* src, int count) {
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x))
    static_cast<int4*>(dst)[i] = load_global(static_cast<const int4*>(src) + i);
}

}  // namespace

__global__ void header_through_global_path(std::byte* slot, std::int32_t rank, std::uint64_t fingerprint) {
  Header header{};
  header.source_rank = rank;
  header.source_token = static_cast<std::int32_t>(blockIdx.x);
  header.fingerprint = fingerprint;
  copy_vectors(slot + blockIdx.x * sizeof(Header), &header, sizeof(Header) / sizeof(int4));
}
