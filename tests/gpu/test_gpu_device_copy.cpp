// The device_copy fabric on a GPU (gpu_main.cpp exits 77 where there is none): random puts between 2 and 4
// virtual ranks checked byte for byte, a signal that is visible only after its payload (also while spinning
// blocks hold every SM), flush/fetch_add and a word's first value, arguments refused by name, and a kernel
// that posts put_signal commands into a cuda-mapped ring drained by a transport::Proxy.
#include <cuda_runtime_api.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <future>
#include <iostream>
#include <random>
#include <thread>
#include <vector>

#include "common/seed.hpp"
#include "device_copy_kernels.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/device_copy.hpp"
#include "ferry/transport/proxy.hpp"
#include "support/check_error.hpp"

using namespace std::chrono_literals;
using ferry::Errc;
using ferry::test::check_error;
using ferry::transport::DeviceCopyWorld;
using ferry::transport::Fabric;
using ferry::transport::MemoryKind;

namespace {

constexpr std::uint64_t kKernelTimeoutNs = 30'000'000'000ull;

void cuda_ok(cudaError_t status, const char* what) {
  INFO(what << ": " << cudaGetErrorName(status) << " (" << cudaGetErrorString(status) << ")");
  REQUIRE(status == cudaSuccess);
}

class Stream {
 public:
  Stream() {
    cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

  // Polls until the stream is idle; a kernel that never ends fails the test instead of hanging it (each test
  // kernel also gives up on its own after kKernelTimeoutNs).
  void wait(std::chrono::seconds limit = 60s) const {
    ferry::Deadline deadline(limit);
    ferry::Backoff backoff;
    cudaError_t status;
    while ((status = cudaStreamQuery(stream_)) == cudaErrorNotReady && !deadline.expired()) backoff.pause();
    cuda_ok(status, "waiting for the test kernel");
  }

 private:
  cudaStream_t stream_ = nullptr;
};

// Host memory the GPU writes while the host watches (mapped, so no copy is needed to read it).
template <typename T>
class Mapped {
 public:
  Mapped() {
    cuda_ok(cudaHostAlloc(reinterpret_cast<void**>(&host_), sizeof(T), cudaHostAllocMapped), "cudaHostAlloc");
    std::memset(static_cast<void*>(host_), 0, sizeof(T));
    cuda_ok(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_), host_, 0),
            "cudaHostGetDevicePointer");
  }
  ~Mapped() { cudaFreeHost(host_); }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  T* device() const { return device_; }
  T* host() const { return host_; }

 private:
  T* host_ = nullptr;
  T* device_ = nullptr;
};

// Reads a 64-bit field that a kernel publishes with a release store.
std::uint64_t acquire(const std::uint64_t& field) {
  return __atomic_load_n(&field, __ATOMIC_ACQUIRE);
}

std::vector<std::uint8_t> pattern(std::uint64_t seed, std::size_t bytes) {
  std::vector<std::uint8_t> out(bytes);
  for (std::size_t i = 0; i < bytes; ++i) out[i] = ferry::test::pattern_byte(seed, i);
  return out;
}

void upload(void* device, const std::vector<std::uint8_t>& bytes) {
  cuda_ok(cudaMemcpy(device, bytes.data(), bytes.size(), cudaMemcpyHostToDevice), "cudaMemcpy to the device");
}

std::vector<std::uint8_t> download(const void* device, std::size_t bytes) {
  std::vector<std::uint8_t> out(bytes);
  cuda_ok(cudaMemcpy(out.data(), device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy from the device");
  return out;
}

// Index of the first byte where a and b differ, or -1.
long first_difference(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return static_cast<long>(i);
  }
  return -1;
}

std::uint64_t device_copy_seed() {
  return ferry::test::announce_seed("device_copy");
}

// Two virtual ranks for the chunk tests: rank 0's region holds `chunks` chunks of pattern bytes; rank 1's
// region has its signal word at offset 0 and receives chunk k at kDataAt + k * chunk, which a receiver kernel
// checks as its signal arrives.
struct ChunkPair {
  static constexpr std::size_t kDataAt = 4096;

  ChunkPair(std::size_t chunk_bytes, std::uint64_t chunk_count)
      : chunk(chunk_bytes), chunks(chunk_count), seed(device_copy_seed()) {
    sender = world.make_fabric(0);
    receiver = world.make_fabric(1);
    sender->register_region(nullptr, chunk * chunks, MemoryKind::cuda);
    receiver->register_region(nullptr, kDataAt + chunk * chunks, MemoryKind::cuda);
    sender->connect();
    receiver->connect();
    source = pattern(seed, chunk * chunks);
    upload(sender->region_base(0), source);
    target = static_cast<std::uint8_t*>(receiver->region_base(0));
  }

  ferry::test::ReceiverPlan plan() const {
    return {reinterpret_cast<const std::uint64_t*>(target),
            target + kDataAt,
            chunk,
            chunks,
            seed,
            kKernelTimeoutNs};
  }

  // After the kernel: every chunk was checked in order as it arrived, and every byte landed.
  void check_received(const ferry::test::ReceiverReport& report) const {
    CHECK(acquire(report.timed_out) == 0);
    INFO("first bad byte at offset " << report.bad_offset << " of chunk " << report.bad_chunk);
    CHECK(acquire(report.bad_chunk) == 0);
    CHECK(acquire(report.chunks_checked) == chunks);
    CHECK(first_difference(download(target + kDataAt, chunk * chunks), source) == -1);
  }

  const std::size_t chunk;
  const std::uint64_t chunks;
  const std::uint64_t seed;
  DeviceCopyWorld world{2, 0, 30s};
  std::unique_ptr<Fabric> sender, receiver;
  std::vector<std::uint8_t> source;
  std::uint8_t* target = nullptr;
};

}  // namespace

TEST_CASE("device_copy: random puts and signals between virtual ranks land byte for byte", "[gpu]") {
  const int ranks = GENERATE(2, 4);
  const std::uint64_t seed = device_copy_seed();
  INFO("ranks " << ranks << ", seed " << seed);
  // Each rank's region: a source area it never receives into, then one destination slice per source rank
  // (puts of different sources run on different streams, so they must not overlap), then one signal word per
  // source rank.
  constexpr std::size_t kSource = 256 << 10;
  constexpr std::size_t kSlice = 256 << 10;
  const std::size_t words_at = kSource + kSlice * ranks;
  const std::size_t region_bytes = words_at + 8 * ranks;

  DeviceCopyWorld world(ranks, 0, 30s);
  std::vector<std::unique_ptr<Fabric>> fabrics;
  std::vector<std::vector<std::uint8_t>> expected;
  for (int r = 0; r < ranks; ++r) {
    fabrics.push_back(world.make_fabric(r));
    REQUIRE(fabrics[r]->register_region(nullptr, region_bytes, MemoryKind::cuda) == 0);
    expected.push_back(pattern(seed + r, region_bytes));
    std::memset(expected[r].data() + words_at, 0, 8 * ranks);  // signal words start at zero
    upload(fabrics[r]->region_base(0), expected[r]);
  }
  for (auto& fabric : fabrics) fabric->connect();

  // Plan every rank's operations and apply them to the expected bytes in each rank's own order.
  struct Op {
    int target;
    std::size_t source_offset, target_offset, bytes;
    bool signal;
  };
  std::vector<std::vector<Op>> plans(ranks);
  std::mt19937_64 draw(seed);
  for (int r = 0; r < ranks; ++r) {
    for (int i = 0; i < 300; ++i) {
      Op op{};
      op.target = static_cast<int>(draw() % ranks);
      op.bytes = draw() % 4 == 0 ? draw() % 64 : draw() % (64 << 10);
      op.source_offset = draw() % (kSource - op.bytes + 1);
      op.target_offset = kSource + kSlice * r + draw() % (kSlice - op.bytes + 1);
      op.signal = draw() % 3 == 0;
      std::memcpy(expected[op.target].data() + op.target_offset, expected[r].data() + op.source_offset,
                  op.bytes);
      if (op.signal) {
        std::uint64_t word;
        std::memcpy(&word, expected[op.target].data() + words_at + 8 * r, 8);
        ++word;
        std::memcpy(expected[op.target].data() + words_at + 8 * r, &word, 8);
      }
      plans[r].push_back(op);
    }
  }

  // One thread per rank, as one proxy thread per rank would drive them. Odd ranks wait through progress(),
  // even ranks through flush().
  std::vector<std::future<void>> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.push_back(std::async(std::launch::async, [&, r] {
      Fabric& fabric = *fabrics[r];
      std::minstd_rand progress_now(static_cast<std::uint32_t>(seed) + r);
      std::uint64_t last = 0;
      for (const Op& op : plans[r]) {
        last = op.signal ? fabric.put_signal(op.target, 0, op.source_offset, 0, op.target_offset, op.bytes, 0,
                                             words_at + 8 * r, 1)
                         : fabric.put(op.target, 0, op.source_offset, 0, op.target_offset, op.bytes);
        if (progress_now() % 8 == 0) fabric.progress();
      }
      if (r % 2 == 0) {
        fabric.flush();
      } else {
        ferry::Deadline deadline(30s);
        ferry::Backoff backoff;
        while (fabric.completed() < last && !deadline.expired()) {
          if (!fabric.progress()) backoff.pause();
        }
      }
      if (fabric.completed() != last) {
        throw std::runtime_error("rank " + std::to_string(r) + ": completed() is " +
                                 std::to_string(fabric.completed()) + ", last ticket " +
                                 std::to_string(last));
      }
    }));
  }
  for (auto& thread : threads) REQUIRE_NOTHROW(thread.get());

  for (int r = 0; r < ranks; ++r) {
    INFO("region of rank " << r);
    CHECK(first_difference(download(fabrics[r]->region_base(0), region_bytes), expected[r]) == -1);
  }
}

// gpu-check runs this case first ([copy-engines]): the multi-node virtual clusters rely on it.
TEST_CASE("device_copy: a signal is visible only after its payload, also while blocks hold every SM",
          "[gpu][copy-engines]") {
  const bool fill_gpu = GENERATE(false, true);
  INFO("fill_gpu " << fill_gpu);
  ChunkPair pair((1 << 20) + 13, 24);  // odd size: neither end of a chunk is aligned
  Mapped<ferry::test::ReceiverReport> report;
  Stream stream;
  int blocks = 0;
  cuda_ok(ferry::test::launch_receiver(pair.plan(), report.device(), fill_gpu, stream.get(), &blocks),
          "launching the receiver");
  std::cout << "receiver kernel: " << blocks << " blocks\n";

  const std::size_t chunk = pair.chunk;
  for (std::uint64_t k = 0; k < pair.chunks; ++k) {
    pair.sender->put_signal(1, 0, k * chunk, 0, ChunkPair::kDataAt + k * chunk, chunk, 0, 0, 1);
    // One chunk in flight: the kernel checks it the moment its signal lands.
    ferry::Deadline deadline(30s);
    ferry::Backoff backoff;
    while (acquire(report.host()->chunks_checked) < k + 1 && acquire(report.host()->finished) == 0 &&
           !deadline.expired()) {
      if (!pair.sender->progress()) backoff.pause();
    }
    if (acquire(report.host()->finished) != 0) break;
  }
  pair.sender->flush();
  stream.wait();
  pair.check_received(*report.host());
}

TEST_CASE("device_copy: flush, fetch_add, and a signal word's value starts from the device", "[gpu]") {
  DeviceCopyWorld world(2, 0, 30s);
  auto zero = world.make_fabric(0);
  auto one = world.make_fabric(1);
  zero->register_region(nullptr, 4096, MemoryKind::cuda);
  one->register_region(nullptr, 4096, MemoryKind::cuda);
  zero->connect();
  one->connect();
  auto* word = static_cast<std::uint8_t*>(one->region_base(0)) + 64;
  const std::uint64_t start = 1000;
  cuda_ok(cudaMemcpy(word, &start, 8, cudaMemcpyHostToDevice), "setting the word");

  auto read_word = [&] {
    std::uint64_t value = 0;
    cuda_ok(cudaMemcpy(&value, word, 8, cudaMemcpyDeviceToHost), "reading the word");
    return value;
  };
  const std::uint64_t first = zero->atomic_add(1, 0, 64, 5);
  const std::uint64_t second = zero->put_signal(1, 0, 0, 0, 1024, 512, 0, 64, 7);
  CHECK(second == first + 1);
  zero->flush();
  CHECK(zero->completed() == second);
  CHECK(read_word() == 1012);
  CHECK(zero->fetch_add(1, 0, 64, 10) == 1012);
  CHECK(read_word() == 1022);  // fetch_add returns once the new value has landed
  CHECK(zero->fetch_add(1, 0, 64, 0) == 1022);
  CHECK_FALSE(zero->progress());  // nothing left in flight
}

TEST_CASE("device_copy: bad arguments are refused by name", "[gpu]") {
  DeviceCopyWorld world(3, 0, 30s);
  auto zero = world.make_fabric(0);
  auto one = world.make_fabric(1);
  auto two = world.make_fabric(2);
  check_error([&] { zero->register_region(nullptr, 4096, MemoryKind::host); }, Errc::unsupported,
              "device memory only");
  std::vector<std::uint8_t> host(4096);
  check_error([&] { zero->register_region(host.data(), host.size(), MemoryKind::cuda); },
              Errc::invalid_argument, "not device memory of GPU 0");
  check_error([&] { zero->register_region(nullptr, 0, MemoryKind::cuda); }, Errc::invalid_argument,
              "0 bytes");
  for (auto* fabric : {zero.get(), one.get(), two.get()})
    fabric->register_region(nullptr, 4096, MemoryKind::cuda);
  void* extra = nullptr;
  cuda_ok(cudaMalloc(&extra, 1 << 16), "cudaMalloc");
  two->register_region(extra, 1 << 16, MemoryKind::cuda);  // caller memory; rank 2 now has two regions
  check_error([&] { zero->put(1, 0, 0, 0, 0, 8); }, Errc::invalid_argument, "put before connect()");
  zero->connect();
  check_error([&] { zero->put(1, 0, 0, 0, 0, 8); }, Errc::invalid_argument,
              "put from rank 0: rank 1 has not connected");
  one->connect();
  check_error([&] { two->connect(); }, Errc::invalid_argument,
              "rank 2 registered 2 regions but rank 0 registered 1");

  check_error([&] { zero->put(3, 0, 0, 0, 0, 8); }, Errc::invalid_argument,
              "peer rank 3 is outside the world of 3");
  check_error([&] { zero->put(1, 0, 0, 0, 4090, 8); }, Errc::invalid_argument,
              "remote range [4090, +8) exceeds region 0 of rank 1 (4096 bytes)");
  check_error([&] { zero->put(1, 0, 4095, 0, 0, 2); }, Errc::invalid_argument,
              "local range [4095, +2) exceeds region 0 of rank 0");
  check_error([&] { zero->put(1, 1, 0, 0, 0, 8); }, Errc::invalid_argument, "rank 0 has no local region 1");
  check_error([&] { zero->put(1, 0, 0, 2, 0, 8); }, Errc::invalid_argument, "rank 1 has no region 2");
  check_error([&] { zero->atomic_add(1, 0, 12, 1); }, Errc::invalid_argument, "not 8-byte aligned");
  check_error([&] { zero->put_signal(1, 0, 0, 0, 0, 8, 0, 4096, 1); }, Errc::invalid_argument,
              "remote range [4096, +8) exceeds region 0 of rank 1");
  check_error([&] { zero->connect(); }, Errc::invalid_argument, "connect() called twice");
  check_error([&] { zero->register_region(nullptr, 64, MemoryKind::cuda); }, Errc::invalid_argument,
              "after connect()");

  // A word has one source rank: its value is kept on the host by that rank's fabric.
  zero->atomic_add(1, 0, 256, 1);
  check_error([&] { one->atomic_add(1, 0, 256, 1); }, Errc::invalid_argument,
              "rank 1 signals the word at offset 256 of region 0 of rank 1, which rank 0 already signals");
  // Refused operations leave the fabric usable.
  zero->put(1, 0, 0, 0, 512, 64);
  zero->flush();
  two.reset();
  cudaFree(extra);
}

TEST_CASE("device_copy: a kernel posts put_signal commands that a Proxy turns into device copies", "[gpu]") {
  ChunkPair pair(64 << 10, 1000);  // more chunks than the ring holds: the kernel waits for credit
  const auto plan = pair.plan();
  ferry::transport::ProxyOptions options;
  options.ring_slots = 256;
  options.memory = ferry::transport::RingMemory::cuda_mapped;
  options.timeout = 30s;
  ferry::transport::Proxy proxy(std::move(pair.sender), options);
  auto& ring = proxy.ring(0);
  REQUIRE(ring.device_mapped());

  ferry::test::ProducerPlan producer{ring.device_view(), 1, 0, ChunkPair::kDataAt, 0, pair.chunk, pair.chunks,
                                     kKernelTimeoutNs};
  Mapped<std::uint64_t> posted;
  Mapped<ferry::test::ReceiverReport> report;
  Stream stream;
  cuda_ok(ferry::test::launch_producer_and_receiver(producer, posted.device(), plan, report.device(),
                                                    stream.get()),
          "launching producer and receiver");
  stream.wait();
  CHECK(acquire(*posted.host()) == pair.chunks);
  ring.wait_completed(pair.chunks);
  proxy.check_error();
  pair.check_received(*report.host());
}
