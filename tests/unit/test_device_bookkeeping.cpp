// The CUDA executor's host-side bookkeeping, proven on the CPU with fake completions and a fake device:
//   - LaunchKeeper (kernels/cuda/launch_keeper.hpp): an operation's launch plans and pinned staging are never
//     let go, or handed to another operation, before that operation's OWN completion;
//   - DeviceBlockCache (runtime/src/device_block_cache.hpp): stream-ordered reuse, the bound on cached bytes,
//     release on pressure, and teardown with blocks still held;
//   - the failure record (kernels/cuda/device_report.hpp): it names the rank and operation of the plan the
//     role ran (a combine's, not the dispatch part of the launch plan), and reads as the error users see;
//   - the host's wait (ProgressDeadline, core/deadline.hpp): it gives up only when the kernels' heartbeat
//     stands still, never because an operation that progresses is long;
//   - residency (device_engine.hpp): every block of every rank sharing a GPU must fit at once, counted over
//     the ranks of other threads and processes too.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "device_block_cache.hpp"
#include "device_report.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "launch_keeper.hpp"

namespace kc = ferry::kernels::cuda;
namespace p = ferry::kernels::protocol;
using ferry::detail::DeviceBlockCache;
using ferry::detail::DeviceMemoryApi;

namespace {

std::uint32_t test_seed(const char* name) {
  std::uint32_t seed = std::random_device{}();
  if (const char* fixed = std::getenv("FERRY_TEST_SEED"))
    seed = static_cast<std::uint32_t>(std::strtoul(fixed, nullptr, 10));
  std::cout << name << " seed " << seed << " (set FERRY_TEST_SEED to replay)" << std::endl;
  return seed;
}

struct Staging {
  std::size_t size = 0;
};

std::shared_ptr<Staging> make_staging(std::size_t size) {
  return std::make_shared<Staging>(Staging{size});
}

}  // namespace

// ---- LaunchKeeper ----

TEST_CASE("launch keeper: a queued operation keeps its staging when an earlier one completes", "[device]") {
  // The defect this replaces: the first operation's completion let go of every kept plan, so the staging of
  // an operation queued behind it went back to the pool and the next launch rewrote it before the queued
  // cudaMemcpyAsync had read it.
  kc::LaunchKeeper<Staging> keeper;
  keeper.reserve(2, 4, make_staging);
  bool first_done = false, second_done = false;
  keeper.begin();
  const auto first = keeper.stage(4);
  keeper.end([&] { return first_done; });
  keeper.begin();
  const auto second = keeper.stage(4);
  keeper.end([&] { return second_done; });
  REQUIRE(first != nullptr);
  REQUIRE(second != nullptr);
  CHECK(first != second);

  first_done = true;
  CHECK(keeper.collect() == 1);
  keeper.begin();
  const auto third = keeper.stage(4);
  keeper.end([] { return false; });
  CHECK(third == first);  // the completed operation's buffer is reused
  CHECK(third != second);
  CHECK(keeper.holder_of(second.get()) == 2);

  second_done = true;
  CHECK(keeper.collect() == 1);  // the third has not completed
  CHECK(keeper.holder_of(second.get()) == 0);
  CHECK(keeper.staging_buffers() == 2);
}

TEST_CASE("launch keeper: staging comes only from the buffers reserved up front, never mid-run", "[device]") {
  // A page-locked allocation while another rank's kernel spins on the same GPU keeps this rank's next kernel
  // from starting (CUDA's implicit synchronisation): every buffer is made before the first operation, and
  // when all are held the engine is told so (nullptr) and waits for one to pass instead of allocating.
  kc::LaunchKeeper<Staging> keeper;
  int made = 0;
  keeper.reserve(2, 3, [&made](std::size_t size) {
    ++made;
    return make_staging(size);
  });
  CHECK(made == 2);
  std::vector<bool> done(3, false);
  std::vector<std::shared_ptr<Staging>> held;
  for (int op = 0; op < 2; ++op) {
    keeper.begin();
    held.push_back(keeper.stage(3));
    keeper.end([&done, op] { return done[op]; });
  }
  REQUIRE(held[0] != nullptr);
  REQUIRE(held[1] != nullptr);
  keeper.begin();
  CHECK(keeper.stage(3) == nullptr);  // both held: no new buffer
  CHECK(keeper.stage(4) == nullptr);  // nor a larger one
  CHECK(made == 2);
  CHECK(keeper.staging_buffers() == 2);
  done[1] = true;  // the engine's wait: collect until one is free
  keeper.collect();
  const auto freed = keeper.stage(3);
  CHECK(freed == held[1]);
  CHECK(keeper.holder_of(freed.get()) == 3);
  keeper.end([&done] { return done[2]; });
  CHECK(made == 2);
}

TEST_CASE("launch keeper: kept resources live until their own operation completes", "[device]") {
  kc::LaunchKeeper<Staging> keeper;
  std::vector<bool> done(3, false);
  std::vector<std::weak_ptr<int>> kept;
  for (int op = 0; op < 3; ++op) {
    keeper.begin();
    auto resource = std::make_shared<int>(op);
    kept.push_back(resource);
    keeper.keep(resource);
    keeper.end([&done, op] { return done[op]; });
  }
  done[1] = true;  // completions may be seen in any order
  keeper.collect();
  CHECK(!kept[0].expired());
  CHECK(kept[1].expired());
  CHECK(!kept[2].expired());
  done[0] = done[2] = true;
  CHECK(keeper.collect() == 0);
  CHECK(kept[0].expired());
  CHECK(kept[2].expired());
}

TEST_CASE("launch keeper: an operation without a completion test waits for release_all", "[device]") {
  kc::LaunchKeeper<Staging> keeper;
  keeper.begin();
  auto resource = std::make_shared<int>(1);
  std::weak_ptr<int> watch = resource;
  keeper.keep(std::move(resource));
  keeper.end({});  // the engine could not record an event
  CHECK(keeper.collect() == 1);
  CHECK(!watch.expired());
  keeper.release_all();
  CHECK(watch.expired());
  CHECK(keeper.operations_held() == 0);
}

TEST_CASE("launch keeper: the engine waits for operations that can complete, not for those that cannot",
          "[device]") {
  // A captured operation completes when its graph lets go (a flag the graph's user object sets); one whose
  // event or user object could not be made is held until the engine goes, and is not waited for.
  kc::LaunchKeeper<Staging> keeper;
  bool graph_gone = false;
  keeper.begin();
  keeper.keep(std::make_shared<int>(1));
  keeper.end([&] { return graph_gone; });
  keeper.begin();
  keeper.end({});
  CHECK(keeper.collect() == 2);
  CHECK(keeper.awaiting() == 1);
  graph_gone = true;
  CHECK(keeper.collect() == 1);
  CHECK(keeper.awaiting() == 0);
  CHECK(keeper.operations_held() == 1);
}

TEST_CASE("launch keeper: random issue and completion never reuse a held staging buffer", "[device]") {
  const std::uint32_t seed = test_seed("launch keeper");
  std::mt19937 random(seed);
  INFO("seed " << seed);
  kc::LaunchKeeper<Staging> keeper;
  keeper.reserve(8, 4, make_staging);
  std::vector<char> completed;  // by operation id - 1; operations complete in issue order (one stream)
  std::map<const Staging*, std::uint64_t> last_holder;
  std::uint64_t frontier = 0;  // operations 1..frontier have completed
  int violations = 0;
  for (int step = 0; step < 2000; ++step) {
    const int action = std::uniform_int_distribution<int>(0, 3)(random);
    if (action <= 1) {  // issue an operation of one or two launches
      const std::uint64_t id = keeper.begin();
      completed.push_back(0);
      const int launches = 1 + std::uniform_int_distribution<int>(0, 1)(random);
      for (int l = 0; l < launches; ++l) {
        const std::size_t size = 1 + std::uniform_int_distribution<std::size_t>(0, 3)(random);
        auto staging = keeper.stage(size);
        if (staging == nullptr) {  // all held: as the engine, wait until the stream passes what came before
          for (std::uint64_t i = 0; i + 1 < id; ++i) completed[i] = 1;
          frontier = id - 1;
          keeper.collect();
          staging = keeper.stage(size);
        }
        REQUIRE(staging != nullptr);
        if (staging->size < size) ++violations;
        auto previous = last_holder.find(staging.get());
        if (previous != last_holder.end() && previous->second != id && !completed[previous->second - 1])
          ++violations;  // handed out while the operation whose copy reads it may still be queued
        last_holder[staging.get()] = id;
      }
      keeper.end([&completed, id] { return completed[id - 1] != 0; });
    } else if (action == 2 && frontier < completed.size()) {  // the stream passes some operations
      frontier += std::uniform_int_distribution<std::uint64_t>(1, completed.size() - frontier)(random);
      for (std::uint64_t i = 0; i < frontier; ++i) completed[i] = 1;
    } else {
      keeper.collect();
    }
  }
  CHECK(violations == 0);
  for (auto& done : completed) done = 1;
  CHECK(keeper.collect() == 0);
}

// ---- DeviceBlockCache ----

namespace {

// A device of `capacity` bytes; blocks are real heap bytes (so ASan sees a double release), markers pass
// when the test says their stream has.
class FakeDevice final : public DeviceMemoryApi {
 public:
  struct State {
    std::mutex mutex;
    std::size_t capacity = 1 << 20;
    std::size_t used = 0;
    std::map<void*, std::size_t> live;
    std::map<void*, std::pair<Stream, bool>> markers;   // stream, passed
    std::vector<std::pair<void*, Stream>> released_on;  // every release, in order: block, stream
    int allocations = 0;
    int releases = 0;
    int marks = 0;
  };
  explicit FakeDevice(std::shared_ptr<State> state) : state_(std::move(state)) {}

  void* allocate(std::size_t bytes, Stream) override {
    std::lock_guard lock(state_->mutex);
    if (state_->used + bytes > state_->capacity) return nullptr;
    void* block = std::malloc(bytes);
    state_->used += bytes;
    state_->live[block] = bytes;
    ++state_->allocations;
    return block;
  }
  void release(void* block, Stream stream) noexcept override {
    std::lock_guard lock(state_->mutex);
    state_->released_on.emplace_back(block, stream);
    auto it = state_->live.find(block);
    if (it == state_->live.end()) std::abort();  // released twice, or never allocated here
    state_->used -= it->second;
    state_->live.erase(it);
    std::free(block);
    ++state_->releases;
  }
  Marker mark(Stream stream) noexcept override {
    std::lock_guard lock(state_->mutex);
    void* marker = std::malloc(1);
    state_->markers[marker] = {stream, false};
    ++state_->marks;
    return marker;
  }
  bool passed(Marker marker) noexcept override {
    std::lock_guard lock(state_->mutex);
    return state_->markers.at(marker).second;
  }
  void forget(Marker marker) noexcept override {
    std::lock_guard lock(state_->mutex);
    if (state_->markers.erase(marker) != 1) std::abort();
    std::free(marker);
  }

 private:
  std::shared_ptr<State> state_;
};

void pass_stream(FakeDevice::State& state, DeviceMemoryApi::Stream stream) {
  std::lock_guard lock(state.mutex);
  for (auto& [marker, entry] : state.markers) {
    if (entry.first == stream) entry.second = true;
  }
}

DeviceMemoryApi::Stream stream_id(std::uintptr_t id) {
  return reinterpret_cast<DeviceMemoryApi::Stream>(id);
}

}  // namespace

TEST_CASE("device block cache: size classes", "[device]") {
  CHECK(DeviceBlockCache::size_class(1) == 512);
  CHECK(DeviceBlockCache::size_class(512) == 512);
  CHECK(DeviceBlockCache::size_class(513) == 768);
  CHECK(DeviceBlockCache::size_class(769) == 1024);
  CHECK(DeviceBlockCache::size_class(3 << 20) == 3 << 20);
  CHECK(DeviceBlockCache::size_class((3 << 20) + 1) == 4 << 20);
}

TEST_CASE("device block cache: reuse is at once on the same stream, after the marker on another",
          "[device]") {
  auto state = std::make_shared<FakeDevice::State>();
  auto cache = DeviceBlockCache::create(std::make_unique<FakeDevice>(state), 1 << 20);
  const auto s1 = stream_id(1), s2 = stream_id(2);

  void* first = nullptr;
  {
    auto block = cache->allocate(1000, s1);
    first = block.get();
  }
  CHECK(cache->stats().cached_bytes == 1024);
  {
    auto again = cache->allocate(900, s1);  // same class, same stream: at once
    CHECK(again.get() == first);
  }
  CHECK(state->allocations == 1);

  auto other = cache->allocate(1000, s2);  // s1 has not passed its marker: new memory
  CHECK(other.get() != first);
  CHECK(state->allocations == 2);
  other.reset();

  pass_stream(*state, s1);
  auto third = cache->allocate(1000, stream_id(3));  // s1's block, now that s1 has passed its marker
  CHECK(third.get() == first);
  CHECK(state->allocations == 2);
  const ferry::detail::DeviceCacheStats stats = cache->stats();
  CHECK(stats.reuses == 2);
  CHECK(stats.in_use_bytes == 1024);
  CHECK(stats.cached_bytes == 1024);  // s2's block
}

TEST_CASE("device block cache: cached bytes stay under the bound, oldest released first", "[device]") {
  auto state = std::make_shared<FakeDevice::State>();
  auto cache = DeviceBlockCache::create(std::make_unique<FakeDevice>(state), 4096);
  const auto s = stream_id(1);
  auto a = cache->allocate(2048, s);
  auto b = cache->allocate(2048, s);
  auto c = cache->allocate(2048, s);
  void* oldest = a.get();
  a.reset();
  b.reset();
  CHECK(state->releases == 0);
  c.reset();  // three 2 KiB blocks cached would be 6 KiB
  CHECK(cache->stats().cached_bytes == 4096);
  CHECK(state->releases == 1);
  CHECK(state->live.count(oldest) == 0);
}

TEST_CASE("device block cache: out of memory releases what is cached and tries again", "[device]") {
  auto state = std::make_shared<FakeDevice::State>();
  state->capacity = 6144;
  auto cache = DeviceBlockCache::create(std::make_unique<FakeDevice>(state), 1 << 20);
  cache->allocate(2048, stream_id(1)).reset();     // cached
  auto big = cache->allocate(4096, stream_id(2));  // 2048 + 4096 fit
  CHECK(state->releases == 0);
  big.reset();
  auto bigger = cache->allocate(6144, stream_id(2));  // only after both cached blocks went back
  CHECK(bigger != nullptr);
  CHECK(state->releases == 2);
  CHECK(cache->stats().cached_bytes == 0);
  try {
    cache->allocate(8192, stream_id(2));
    FAIL("allocated past the device");
  } catch (const ferry::Error& error) {
    CHECK(error.code() == ferry::Errc::system);
    CHECK(std::string(error.what()).find("no block of 8192 bytes") != std::string::npos);
  }
}

TEST_CASE("device block cache: tensors outlive the Buffer's cache without a use after free", "[device]") {
  auto state = std::make_shared<FakeDevice::State>();
  auto cache = DeviceBlockCache::create(std::make_unique<FakeDevice>(state), 1 << 20);
  std::weak_ptr<DeviceBlockCache> watch = cache;
  auto held = cache->allocate(4096, stream_id(1));
  cache->allocate(4096, stream_id(1)).reset();
  cache->close();  // the Buffer goes: what is cached goes back
  CHECK(state->releases == 1);
  const int marks = state->marks;
  cache.reset();
  CHECK(!watch.expired());  // the held block keeps the cache object, not the Buffer
  held.reset();             // straight back to the device: no marker on a stream that may be gone
  CHECK(state->releases == 2);
  CHECK(state->marks == marks);
  CHECK(watch.expired());
  CHECK(state->live.empty());
  CHECK(state->markers.empty());
}

TEST_CASE(
    "device block cache: blocks go back to the device in the order of the stream they were last used on",
    "[device]") {
  // A device-wide free (cudaFree) would make a rank's thread wait for another rank's kernel on the same GPU,
  // which may be waiting for this rank: every release names the block's stream (cudaFreeAsync there).
  auto state = std::make_shared<FakeDevice::State>();
  state->capacity = 8192;
  auto cache = DeviceBlockCache::create(std::make_unique<FakeDevice>(state), 2048);
  const auto s1 = stream_id(1), s2 = stream_id(2), s3 = stream_id(3);
  auto a = cache->allocate(2048, s1);
  void* const block_a = a.get();
  a.reset();  // cached for s1
  pass_stream(*state, s1);
  auto reused = cache->allocate(2048, s3);  // s1's block, handed to s3
  CHECK(reused.get() == block_a);
  auto b = cache->allocate(2048, s2);
  void* const block_b = b.get();
  b.reset();       // cached for s2 (2048 bytes: at the bound)
  reused.reset();  // cached for s3: over the bound, so s2's (older) block goes, on s2
  REQUIRE(state->released_on.size() == 1);
  CHECK(state->released_on[0] == std::make_pair(block_b, s2));
  auto big = cache->allocate(8192, s1);  // out of memory: the cached block (now s3's) goes, on s3
  REQUIRE(state->released_on.size() == 2);
  CHECK(state->released_on[1] == std::make_pair(block_a, s3));
  void* const block_big = big.get();
  cache->close();
  big.reset();  // after the Buffer: at once, still on its stream
  REQUIRE(state->released_on.size() == 3);
  CHECK(state->released_on[2] == std::make_pair(block_big, s1));
  CHECK(state->live.empty());
}

TEST_CASE("device block cache: threads allocating and dropping at once", "[device]") {
  auto state = std::make_shared<FakeDevice::State>();
  auto cache = DeviceBlockCache::create(std::make_unique<FakeDevice>(state), 64 << 10);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, &state, t] {
      for (int i = 0; i < 300; ++i) {
        auto block = cache->allocate(static_cast<std::size_t>(512 << (i % 5)), stream_id(1 + t % 2));
        if (i % 7 == 0) pass_stream(*state, stream_id(1 + (t + 1) % 2));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const ferry::detail::DeviceCacheStats stats = cache->stats();
  CHECK(stats.in_use_bytes == 0);
  CHECK(stats.cached_bytes <= (64 << 10));
  CHECK(stats.allocations == stats.releases + state->live.size());
  cache->close();
  CHECK(state->live.empty());
}

// ---- failure records ----

TEST_CASE("a combine's failure record names the combine's rank and operation", "[device]") {
  // A launch plan carries a dispatch plan and a combine plan; a combine fills only the second. The record
  // used to name dispatch.ctx.rank, so every combine failure said "rank 0".
  p::DispatchPlan dispatch;  // as a combine's launch plan leaves it: rank 0, operation 0
  p::CombinePlan combine;
  combine.ctx.rank = 3;
  combine.ctx.operation = 17;
  p::RoleOutcome outcome;
  outcome.end = p::RoleEnd::timeout;
  outcome.last.stage = p::Stage::combine_receive;
  outcome.last.wait.kind = p::WaitKind::data;
  outcome.last.wait.ring = p::RingKind::combine_rdma;
  outcome.last.wait.peer_rank = 5;
  outcome.last.wait.head = 8;
  outcome.last.wait.tail = 6;
  const kc::DeviceFailure failure = kc::failure_of(outcome, false);
  REQUIRE(failure == kc::DeviceFailure::timeout);
  const kc::DeviceReport report = kc::make_report(failure, combine.ctx, 1, outcome, 0);
  CHECK(report.rank == 3);
  CHECK(report.rank != dispatch.ctx.rank);
  CHECK(report.operation == 17);
  try {
    kc::throw_report(report, std::chrono::milliseconds(1500));
    FAIL("no error");
  } catch (const ferry::Error& error) {
    const std::string text = error.what();
    INFO(text);
    CHECK(error.code() == ferry::Errc::timeout);
    CHECK(text.find("GPU rank 3 channel 1") != std::string::npos);
    CHECK(text.find("combine-receive") != std::string::npos);
    CHECK(text.find("peer rank 5") != std::string::npos);
    CHECK(text.find("head 8, tail 6") != std::string::npos);
  }
}

TEST_CASE("failure records: which ending records what", "[device]") {
  p::RoleOutcome outcome;
  CHECK(kc::failure_of(outcome, false) == kc::DeviceFailure::none);
  outcome.end = p::RoleEnd::aborted;  // stopped because another group failed: that one reports
  CHECK(kc::failure_of(outcome, false) == kc::DeviceFailure::none);
  CHECK(kc::failure_of(outcome, true) == kc::DeviceFailure::proxy);
  outcome.end = p::RoleEnd::fault;
  CHECK(kc::failure_of(outcome, false) == kc::DeviceFailure::fault);

  p::OpContext ctx;
  ctx.rank = 2;
  outcome.last.stage = p::Stage::dispatch_forward;
  outcome.last.fault.kind = p::FaultKind::wrong_operation;
  outcome.last.fault.ring = p::RingKind::dispatch_rdma;
  CHECK_THROWS_MATCHES(kc::throw_report(kc::make_report(kc::DeviceFailure::fault, ctx, 0, outcome, 0), {}),
                       ferry::Error, Catch::Predicate<ferry::Error>([](const ferry::Error& error) {
                         return error.code() == ferry::Errc::protocol &&
                                std::string(error.what()).find("GPU rank 2 channel 0") != std::string::npos;
                       }));
  CHECK_THROWS_MATCHES(
      kc::throw_report(kc::make_report(kc::DeviceFailure::proxy, ctx, -1, outcome, 0xffffffffu), {}),
      ferry::Error, Catch::Predicate<ferry::Error>([](const ferry::Error& error) {
        return error.code() == ferry::Errc::timeout &&
               std::string(error.what()).find("GPU rank 2 notify") != std::string::npos;
      }));
}

// ---- the host's wait ----

TEST_CASE("the host's wait gives up only when the heartbeat stands still", "[device]") {
  using namespace std::chrono_literals;
  const ferry::Clock::time_point t0{};
  ferry::ProgressDeadline wait(10s, t0);
  CHECK_FALSE(wait.expired(0, t0));
  CHECK_FALSE(wait.expired(0, t0 + 9s));
  CHECK(wait.expired(0, t0 + 10s));  // no progress for the patience
  // An operation that progresses is waited for however long it takes: every beat restarts the patience.
  ferry::ProgressDeadline long_one(10s, t0);
  std::uint64_t beat = 0;
  for (int minute = 1; minute <= 60; ++minute) {
    beat += 1000;
    CHECK_FALSE(long_one.expired(beat, t0 + std::chrono::minutes(minute)));
  }
  CHECK_FALSE(long_one.expired(beat, t0 + 60min + 9s));
  CHECK(long_one.expired(beat, t0 + 60min + 10s));
  // The first reading starts the watch, whatever the value (a heartbeat left by an earlier operation).
  ferry::ProgressDeadline late(10s, t0);
  CHECK_FALSE(late.expired(123456, t0 + 20s));
  CHECK(late.expired(123456, t0 + 30s));
}

// ---- residency ----

TEST_CASE("ranks sharing a GPU: every rank's blocks are counted, by name", "[device]") {
  // One engine alone fits; the same blocks with the other ranks on the GPU do not, and the message says
  // how many of whose.
  CHECK(kc::residency_problem("dispatch", 40, 1, 0, 384, 16384, 1, 132).empty());
  const std::string problem = kc::residency_problem("dispatch", 40, 1, 3, 384, 16384, 1, 132);
  INFO(problem);
  CHECK(problem.find("dispatch: every block of the 4 ranks on this GPU (1 of this engine, 3 of other threads "
                     "or processes)") == 0);
  CHECK(problem.find("4 x 40 = 160 blocks of 384 threads and 16384 bytes") != std::string::npos);
  CHECK(problem.find("1 per SM x 132 SMs = 132") != std::string::npos);
  CHECK(problem.find("use fewer ranks per GPU or a smaller num_sms") != std::string::npos);
  // A virtual cluster runs all its ranks in one engine: the same count.
  CHECK_FALSE(kc::residency_problem("combine", 40, 4, 0, 384, 16384, 1, 132).empty());
  CHECK(kc::residency_problem("combine", 32, 4, 0, 384, 16384, 1, 132).empty());
}

TEST_CASE("rank threads sharing a GPU need a hardware queue per stream, or are refused by name", "[device]") {
  // CUDA_DEVICE_MAX_CONNECTIONS as CUDA reads it: 8 unless set, at most 32.
  CHECK(kc::device_connections(nullptr) == 8);
  CHECK(kc::device_connections("") == 8);
  CHECK(kc::device_connections("16") == 16);
  CHECK(kc::device_connections("64") == 32);
  CHECK(kc::device_connections("zero") == 8);
  CHECK(kc::device_connections("0") == 8);
  // One rank per process never shares a context; two rank threads fit the default 8 queues (2 x 3 + 1 = 7).
  CHECK(kc::connections_problem(1, 1).empty());
  CHECK(kc::connections_problem(2, 8).empty());
  // Three do not (10 streams): the message names the variable and the way out.
  const std::string problem = kc::connections_problem(3, 8);
  INFO(problem);
  CHECK(problem.find("3 ranks of this process share one GPU: their 10 streams") == 0);
  CHECK(problem.find("CUDA_DEVICE_MAX_CONNECTIONS gives 8") != std::string::npos);
  CHECK(problem.find("set CUDA_DEVICE_MAX_CONNECTIONS=32") != std::string::npos);
  CHECK(problem.find("at most 10") != std::string::npos);
  CHECK(kc::connections_problem(3, 32).empty());
  CHECK(kc::connections_problem(10, 32).empty());
  CHECK_FALSE(kc::connections_problem(11, 32).empty());
}
