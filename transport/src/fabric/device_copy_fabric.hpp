// The device_copy fabric of one virtual rank (device_copy.hpp says what it promises): puts are
// device-to-device copies on this fabric's stream, signals are host-kept values copied in after the payload.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "fabric/device_copy_shared.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::transport {

class DeviceCopyFabric final : public Fabric {
 public:
  DeviceCopyFabric(std::shared_ptr<detail::DeviceCopyShared> shared, int rank);
  ~DeviceCopyFabric() override;

  FabricKind kind() const override { return FabricKind::device_copy; }
  std::string description() const override;
  RegionId register_region(void* base, std::size_t bytes, MemoryKind kind) override;
  void connect() override;
  std::uint64_t put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                    std::size_t remote_offset, std::size_t bytes) override;
  std::uint64_t put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                           std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                           std::size_t signal_offset, std::uint64_t signal_add) override;
  std::uint64_t atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) override;
  std::uint64_t fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) override;
  std::uint64_t completed() const override { return completed_; }
  bool progress() override;
  void flush() override;
  void* region_base(RegionId region) const override;
  std::size_t region_bytes(RegionId region) const override;

 private:
  // Pinned host words the signal copies read from. A slot is reused only once the copy that read it is done.
  static constexpr std::size_t kStagingSlots = 1024;

  void check_usable() const;
  void check_connected(const char* op) const;
  // Runs a CUDA call's status through ferry::Error; a failure breaks the fabric.
  void check(cudaError_t status, const std::string& what);
  [[noreturn]] void break_with(Errc code, const std::string& message);

  const detail::DeviceRegion& local_region(const char* op, RegionId region, std::size_t offset,
                                           std::size_t bytes) const;
  char* remote_address(const char* op, int peer, RegionId region, std::size_t offset, std::size_t bytes);
  struct SignalWord {
    std::uint64_t* address;  // on the device
    std::uint64_t* value;    // its value as this fabric keeps it
  };
  // Checks the word, and on its first use claims it for this rank and reads its value from the device.
  SignalWord signal_word(const char* op, int peer, RegionId region, std::size_t offset);
  // Enqueues the copy of the word's new value (old + add) and returns the old value. The staging word it
  // copies from stays reserved until ticket `reader_ticket` has completed.
  std::uint64_t enqueue_signal(const char* op, const SignalWord& word, std::uint64_t add,
                               std::uint64_t reader_ticket);
  std::uint64_t* take_staging_slot(std::uint64_t reader_ticket);
  std::uint64_t read_device_word(const std::uint64_t* word, const char* op);

  void record_pending();
  void wait_until_completed(std::uint64_t ticket, const char* what);
  void wait_idle(const char* what);

  std::shared_ptr<detail::DeviceCopyShared> shared_;
  const int rank_;
  const int device_;
  bool connected_ = false;
  std::optional<Error> broken_;

  cudaStream_t stream_ = nullptr;
  std::uint64_t* staging_ = nullptr;
  std::vector<std::uint64_t> staging_reader_;  // ticket of the copy that reads slot i (0: none pending)
  std::uint64_t next_staging_ = 0;

  std::vector<detail::DeviceRegion> regions_;
  std::vector<void*> owned_;  // regions this fabric allocated (freed in the destructor)
  std::vector<std::optional<std::vector<detail::DeviceRegion>>> peers_;  // peer regions, once looked up
  std::map<std::tuple<int, RegionId, std::size_t>, std::uint64_t> signal_values_;

  // Tickets: issued_ handed out, recorded_ covered by an event on the stream, completed_ known done.
  std::uint64_t issued_ = 0;
  std::uint64_t recorded_ = 0;
  std::uint64_t completed_ = 0;
  std::deque<std::pair<std::uint64_t, cudaEvent_t>> events_;  // (highest ticket covered, event), in order
  std::vector<cudaEvent_t> spare_events_;
};

}  // namespace ferry::transport
