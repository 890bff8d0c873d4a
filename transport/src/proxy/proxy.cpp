// Proxy threads: drain command rings round-robin, call the fabric, publish credits and completions.
#include "ferry/transport/proxy.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "ferry/core/error.hpp"
#include "proxy/ring_memory.hpp"

#if defined(FERRY_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "ferry/transport/cuda_check.hpp"
#endif

namespace ferry::transport {
namespace {

// Commands taken from one ring before moving to the next, so one busy ring cannot starve the others; head is
// published once per batch rather than per command to keep the control line from bouncing between cores.
constexpr std::uint32_t kBatch = 64;

// Makes `device` current for this proxy thread (ProxyOptions::device says why).
void bind_device(int device) {
#if defined(FERRY_HAVE_CUDA)
  detail::check_cuda(cudaSetDevice(device), "proxy thread: cudaSetDevice(" + std::to_string(device) + ")");
#else
  fail(Errc::unsupported,
       "proxy thread: GPU " + std::to_string(device) + " asked for, but this build has no CUDA");
#endif
}

const char* op_name(CommandOp op) {
  switch (op) {
    case CommandOp::nop:
      return "nop";
    case CommandOp::put:
      return "put";
    case CommandOp::put_signal:
      return "put_signal";
    case CommandOp::atomic_add:
      return "atomic_add";
    case CommandOp::flush:
      return "flush";
  }
  return "unknown";
}

std::string describe(const Command& command) {
  std::string text = std::string(op_name(command.op));
  if (text == "unknown") text += " op " + std::to_string(static_cast<unsigned>(command.op));
  return text + " peer " + std::to_string(command.peer) + " region " + std::to_string(command.region) +
         " bytes " + std::to_string(command.bytes) + " local_offset " + std::to_string(command.local_offset) +
         " remote_offset " + std::to_string(command.remote_offset) + " signal_offset " +
         std::to_string(command.signal_offset) + " signal_add " + std::to_string(command.signal_add);
}

std::size_t round_up_to_power_of_two(std::size_t value) {
  std::size_t out = 1;
  while (out < value) out <<= 1;
  return out;
}

// Stores `message` and then (release) the error word, unless an earlier error is already recorded: the first
// failure is the one worth reporting.
// Returns whether it recorded.
bool record_error(CommandRingControl* control, Errc code, const std::string& message) {
  if (ring_load_acquire(&control->error) != 0) return false;
  std::size_t length = std::min<std::size_t>(message.size(), kCommandRingMessageBytes - 1);
  std::memcpy(control->message, message.data(), length);
  if (length < message.size() && length >= 3) std::memcpy(control->message + length - 3, "...", 3);
  control->message[length] = '\0';
  ring_store_release(&control->error, static_cast<std::uint32_t>(code) + 1);
  return true;
}

}  // namespace

// The consumer side of one ring; touched only by the proxy thread that drains it (own cache line: neighbours
// in the vector belong to other threads).
struct alignas(64) RingConsumer {
  int index = 0;
  CommandRingView view{};
  std::uint64_t head = 0;       // next command to execute
  std::uint64_t completed = 0;  // commands completed so far (published to control->completed)
  // Tickets of executed, not yet completed commands, oldest first (a circular buffer; fabric tickets rise in
  // issue order, so a ring's commands complete in its posting order).
  std::vector<std::uint64_t> pending;
  std::uint64_t pending_begin = 0;
  std::uint64_t pending_end = 0;
};

struct ProxyWorker {
  int index = 0;
  Fabric* fabric = nullptr;
  std::vector<RingConsumer*> rings;
  std::size_t max_in_flight = 0;
  std::size_t in_flight = 0;
  std::uint64_t last_ticket = 0;  // the highest ticket this thread's fabric handed out
  std::size_t failed_seen = 0;    // the fabric's failed peers already published
  std::atomic<std::uint64_t> executed{0};
  std::thread thread;
};

struct Proxy::Impl {
  ProxyOptions options;
  std::vector<std::unique_ptr<Fabric>> fabrics;
  std::vector<std::unique_ptr<detail::RingAllocation>> memory;
  std::vector<std::unique_ptr<ProducerRing>> rings;
  std::vector<RingConsumer> consumers;
  std::vector<std::unique_ptr<ProxyWorker>> workers;
  std::atomic<bool> stopping{false};
  bool stopped = false;
  std::vector<bool> marked_stopped;  // rings whose only recorded error is "the proxy was stopped"
  mutable std::mutex failed_mutex;
  std::vector<FailedPeer> failed;  // guarded by failed_mutex
  std::atomic<std::size_t> failed_count{0};

  void run(ProxyWorker& worker);
  bool drain(ProxyWorker& worker, RingConsumer& ring);
  std::uint64_t execute(ProxyWorker& worker, const Command& command);
  bool retire(ProxyWorker& worker);
  void publish_failed_peers(ProxyWorker& worker);
  void fail_rings(ProxyWorker& worker, Errc code, const std::string& message);
};

std::uint64_t Proxy::Impl::execute(ProxyWorker& worker, const Command& command) {
  Fabric& fabric = *worker.fabric;
  switch (command.op) {
    case CommandOp::nop:
      return worker.last_ticket;
    case CommandOp::put:
      worker.last_ticket = fabric.put(command.peer, command.region, command.local_offset, command.region,
                                      command.remote_offset, command.bytes);
      return worker.last_ticket;
    case CommandOp::put_signal:
      worker.last_ticket = fabric.put_signal(command.peer, command.region, command.local_offset,
                                             command.region, command.remote_offset, command.bytes,
                                             command.region, command.signal_offset, command.signal_add);
      return worker.last_ticket;
    case CommandOp::atomic_add:
      worker.last_ticket =
          fabric.atomic_add(command.peer, command.region, command.signal_offset, command.signal_add);
      return worker.last_ticket;
    case CommandOp::flush:
      // Blocks this thread (and so its other rings) until everything posted is visible; bounded by the
      // fabric's own deadline.
      fabric.flush();
      return worker.last_ticket;
  }
  fail(Errc::protocol, "unknown command op " + std::to_string(static_cast<unsigned>(command.op)));
}

bool Proxy::Impl::drain(ProxyWorker& worker, RingConsumer& ring) {
  std::uint64_t tail = ring_load_acquire(&ring.view.control->tail);
  std::uint32_t taken = 0;
  while (ring.head != tail && worker.in_flight < worker.max_in_flight && taken < kBatch) {
    // Copy the slot out first: execution may take long (flush) and the copy is what we act on.
    Command command = ring.view.slots[ring_slot_index(ring.head, ring.view.capacity)];
    std::uint64_t ticket = 0;
    try {
      ticket = execute(worker, command);
    } catch (const Error& e) {
      throw Error(e.code(), "proxy thread " + std::to_string(worker.index) + ", command ring " +
                                std::to_string(ring.index) + ", command #" + std::to_string(ring.head) +
                                " (" + describe(command) + "): " + e.what());
    }
    ring.pending[ring.pending_end & (ring.pending.size() - 1)] = ticket;
    ++ring.pending_end;
    ++ring.head;
    ++worker.in_flight;
    ++taken;
  }
  if (taken == 0) return false;
  ring_store_release(&ring.view.control->head, ring.head);
  worker.executed.fetch_add(taken, std::memory_order_relaxed);
  return true;
}

bool Proxy::Impl::retire(ProxyWorker& worker) {
  if (worker.in_flight == 0) return false;
  std::uint64_t done = worker.fabric->completed();
  bool moved = false;
  for (RingConsumer* ring : worker.rings) {
    std::uint64_t count = 0;
    while (ring->pending_begin < ring->pending_end &&
           ring->pending[ring->pending_begin & (ring->pending.size() - 1)] <= done) {
      ++ring->pending_begin;
      ++count;
    }
    if (count == 0) continue;
    ring->completed += count;
    worker.in_flight -= count;
    ring_store_release(&ring->view.control->completed, ring->completed);
    moved = true;
  }
  return moved;
}

void Proxy::Impl::run(ProxyWorker& worker) {
  Backoff backoff;
  try {
    if (options.device >= 0) bind_device(options.device);
    while (!stopping.load(std::memory_order_acquire)) {
      bool moved = false;
      for (RingConsumer* ring : worker.rings) moved |= drain(worker, *ring);
      moved |= worker.fabric->progress();
      moved |= retire(worker);
      if (worker.fabric->failed_peer_count() != worker.failed_seen) publish_failed_peers(worker);
      if (moved) {
        backoff.reset();
      } else {
        backoff.pause();
      }
    }
  } catch (const Error& e) {
    fail_rings(worker, e.code(), e.what());
  } catch (const std::exception& e) {
    fail_rings(worker, Errc::internal,
               "proxy thread " + std::to_string(worker.index) + " failed: " + e.what());
  }
}

void Proxy::Impl::publish_failed_peers(ProxyWorker& worker) {
  const std::vector<FailedPeer> now = worker.fabric->failed_peers();
  std::lock_guard lock(failed_mutex);
  for (std::size_t i = worker.failed_seen; i < now.size(); ++i) {
    const bool known = std::any_of(failed.begin(), failed.end(),
                                   [&](const FailedPeer& peer) { return peer.rank == now[i].rank; });
    if (!known) failed.push_back(now[i]);
  }
  worker.failed_seen = now.size();
  failed_count.store(failed.size(), std::memory_order_release);
}

void Proxy::Impl::fail_rings(ProxyWorker& worker, Errc code, const std::string& message) {
  // Publish what did complete before the failure, so producers know which sources they may reuse.
  try {
    retire(worker);
  } catch (const std::exception&) {
    // The fabric is broken; the counts stay where they were.
  }
  for (RingConsumer* ring : worker.rings) record_error(ring->view.control, code, message);
}

Proxy::Proxy(std::unique_ptr<Fabric> fabric, const ProxyOptions& options)
    : Proxy(
          [&] {
            std::vector<std::unique_ptr<Fabric>> fabrics;
            fabrics.push_back(std::move(fabric));
            return fabrics;
          }(),
          options) {}

Proxy::Proxy(std::vector<std::unique_ptr<Fabric>> fabrics, const ProxyOptions& options)
    : impl_(std::make_unique<Impl>()) {
  if (fabrics.empty()) fail(Errc::invalid_argument, "Proxy: no fabric given (one per proxy thread)");
  for (std::size_t i = 0; i < fabrics.size(); ++i) {
    if (!fabrics[i]) fail(Errc::invalid_argument, "Proxy: fabric " + std::to_string(i) + " is null");
  }
  if (options.rings < 1) {
    fail(Errc::invalid_argument,
         "ProxyOptions::rings is " + std::to_string(options.rings) + "; need at least 1");
  }
  if (!ring_capacity_ok(options.ring_slots) || options.ring_slots > (1u << 30)) {
    fail(Errc::invalid_argument, "ProxyOptions::ring_slots is " + std::to_string(options.ring_slots) +
                                     "; need a power of two up to 2^30");
  }
  if (options.max_in_flight == 0) fail(Errc::invalid_argument, "ProxyOptions::max_in_flight is 0");
  if (options.timeout <= Duration::zero())
    fail(Errc::invalid_argument, "ProxyOptions::timeout is not positive");

  Impl& impl = *impl_;
  impl.options = options;
  impl.fabrics = std::move(fabrics);
  const std::size_t pending_slots = round_up_to_power_of_two(options.max_in_flight);
  const std::size_t ring_bytes =
      sizeof(CommandRingControl) + std::size_t{options.ring_slots} * sizeof(Command);
  impl.consumers.resize(static_cast<std::size_t>(options.rings));
  for (int r = 0; r < options.rings; ++r) {
    auto memory = std::make_unique<detail::RingAllocation>(ring_bytes, options.memory);
    auto at = [&](void* base, std::size_t offset) { return static_cast<char*>(base) + offset; };
    CommandRingView host{reinterpret_cast<Command*>(at(memory->host(), sizeof(CommandRingControl))),
                         reinterpret_cast<CommandRingControl*>(memory->host()), options.ring_slots};
    CommandRingView device{nullptr, nullptr, options.ring_slots};
    if (memory->device() != nullptr) {
      device.slots = reinterpret_cast<Command*>(at(memory->device(), sizeof(CommandRingControl)));
      device.control = reinterpret_cast<CommandRingControl*>(memory->device());
    }
    impl.rings.push_back(std::unique_ptr<ProducerRing>(new ProducerRing(r, host, device, options.timeout)));
    RingConsumer& consumer = impl.consumers[static_cast<std::size_t>(r)];
    consumer.index = r;
    consumer.view = host;
    consumer.pending.assign(pending_slots, 0);
    impl.memory.push_back(std::move(memory));
  }
  for (std::size_t t = 0; t < impl.fabrics.size(); ++t) {
    auto worker = std::make_unique<ProxyWorker>();
    worker->index = static_cast<int>(t);
    worker->fabric = impl.fabrics[t].get();
    worker->max_in_flight = options.max_in_flight;
    for (std::size_t r = t; r < impl.consumers.size(); r += impl.fabrics.size()) {
      worker->rings.push_back(&impl.consumers[r]);
    }
    impl.workers.push_back(std::move(worker));
  }
  // Threads start last, once every structure they read is in place; a failure to start one stops the others.
  try {
    for (auto& worker : impl.workers)
      worker->thread = std::thread([&impl, w = worker.get()] { impl.run(*w); });
  } catch (const std::system_error& e) {
    stop();
    fail(Errc::system, std::string("Proxy: cannot start a proxy thread: ") + e.what());
  }
}

Proxy::~Proxy() {
  stop();
}

void Proxy::stop() {
  Impl& impl = *impl_;
  if (impl.stopped) return;
  impl.stopping.store(true, std::memory_order_release);
  for (auto& worker : impl.workers) {
    if (worker->thread.joinable()) worker->thread.join();
  }
  impl.stopped = true;
  impl.marked_stopped.assign(impl.consumers.size(), false);
  for (RingConsumer& ring : impl.consumers) {
    impl.marked_stopped[static_cast<std::size_t>(ring.index)] =
        record_error(ring.view.control, Errc::invalid_argument,
                     "command ring " + std::to_string(ring.index) + ": the proxy was stopped (" +
                         std::to_string(ring.head) + " commands executed, " + std::to_string(ring.completed) +
                         " completed)");
  }
}

int Proxy::num_rings() const {
  return static_cast<int>(impl_->rings.size());
}

int Proxy::num_threads() const {
  return static_cast<int>(impl_->workers.size());
}

ProducerRing& Proxy::ring(int index) {
  if (index < 0 || index >= num_rings()) {
    fail(Errc::invalid_argument, "Proxy::ring(" + std::to_string(index) + "): the proxy has " +
                                     std::to_string(num_rings()) + " rings");
  }
  return *impl_->rings[static_cast<std::size_t>(index)];
}

void Proxy::check_error() const {
  for (const auto& ring : impl_->rings) {
    auto index = static_cast<std::size_t>(ring->index());
    if (index < impl_->marked_stopped.size() && impl_->marked_stopped[index]) continue;
    ring->check_error();
  }
}

std::size_t Proxy::failed_peer_count() const {
  return impl_->failed_count.load(std::memory_order_acquire);
}

std::vector<FailedPeer> Proxy::failed_peers() const {
  std::lock_guard lock(impl_->failed_mutex);
  return impl_->failed;
}

std::uint64_t Proxy::commands_executed(int thread) const {
  if (thread < 0 || thread >= num_threads()) {
    fail(Errc::invalid_argument, "Proxy::commands_executed(" + std::to_string(thread) + "): the proxy has " +
                                     std::to_string(num_threads()) + " threads");
  }
  return impl_->workers[static_cast<std::size_t>(thread)]->executed.load(std::memory_order_relaxed);
}

}  // namespace ferry::transport
