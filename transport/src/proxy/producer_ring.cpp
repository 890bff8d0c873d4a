// The producer's side of a command ring: posting with credit waits, completion waits, and surfacing the
// proxy's recorded error as a ferry::Error.
#include <cstring>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/transport/proxy.hpp"

namespace ferry::transport {
namespace {

std::string milliseconds(Duration duration) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count()) + " ms";
}

}  // namespace

ProducerRing::ProducerRing(int index, CommandRingView host, CommandRingView device, Duration timeout)
    : index_(index), producer_{host, 0, 0}, device_view_(device), timeout_(timeout) {}

std::string ProducerRing::describe() const {
  const CommandRingControl* control = producer_.ring.control;
  return "command ring " + std::to_string(index_) + " (capacity " + std::to_string(producer_.ring.capacity) +
         ", posted " + std::to_string(producer_.tail) + ", consumed by the proxy " +
         std::to_string(ring_load_acquire(&control->head)) + ", completed " +
         std::to_string(ring_load_acquire(&control->completed)) + ")";
}

void ProducerRing::throw_error() const {
  const CommandRingControl* control = producer_.ring.control;
  std::uint32_t word = ring_load_acquire(&control->error);
  std::string message(control->message, strnlen(control->message, kCommandRingMessageBytes));
  auto code = static_cast<Errc>(word - 1);
  if (word == 0 || word - 1 > static_cast<std::uint32_t>(Errc::internal)) code = Errc::internal;
  // The proxy recorded a ferry::Error's what(): do not repeat its "ferry: <category>: " prefix.
  const std::string prefix = "ferry: " + std::string(to_string(code)) + ": ";
  if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
  throw Error(code, message);
}

void ProducerRing::check_error() const {
  if (ring_load_acquire(&producer_.ring.control->error) != 0) throw_error();
}

bool ProducerRing::try_post(const Command& command) {
  check_error();
  return producer_.try_post(command);
}

void ProducerRing::post(const Command& command) {
  if (try_post(command)) return;
  Deadline deadline(timeout_);
  Backoff backoff;
  while (!producer_.try_post(command)) {
    check_error();
    if (deadline.expired()) {
      fail(Errc::timeout, describe() + ": no free slot within " + milliseconds(timeout_) +
                              " (the proxy thread is not consuming commands)");
    }
    backoff.pause();
  }
}

std::uint64_t ProducerRing::completed() const {
  return ring_load_acquire(&producer_.ring.control->completed);
}

void ProducerRing::wait_completed(std::uint64_t count) {
  if (count > producer_.tail) {
    fail(Errc::invalid_argument,
         describe() + ": waiting for " + std::to_string(count) + " completions, more than were posted");
  }
  if (completed() >= count) return;
  Deadline deadline(timeout_);
  Backoff backoff;
  while (completed() < count) {
    check_error();
    if (deadline.expired()) {
      fail(Errc::timeout, describe() + ": " + std::to_string(count) + " completions not reached within " +
                              milliseconds(timeout_));
    }
    backoff.pause();
  }
}

CommandRingView ProducerRing::device_view() const {
  if (device_view_.slots == nullptr) {
    fail(Errc::unsupported,
         "command ring " + std::to_string(index_) +
             " lives in ordinary host memory, not mapped for a GPU (RingMemory::host, or no "
             "CUDA device when the proxy was created)");
  }
  return device_view_;
}

}  // namespace ferry::transport
