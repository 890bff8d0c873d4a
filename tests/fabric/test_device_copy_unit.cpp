// The device_copy fabric without a GPU: its kind, its refusal to be made from Peers, what a DeviceCopyWorld
// says where it cannot run, and the shared bookkeeping (rank claims, region counts, signal-word owners) that
// every fabric of a world goes through. tests/gpu/test_gpu_device_copy.cpp moves bytes on a GPU.
#include <catch2/catch.hpp>

#include "fabric/device_copy_shared.hpp"
#include "ferry/core/error.hpp"
#include "ferry/devices.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/device_copy.hpp"
#include "ferry/transport/fabric.hpp"
#include "support/check_error.hpp"

using ferry::Errc;
using ferry::test::check_error;
using ferry::transport::FabricKind;
using ferry::transport::detail::DeviceCopyShared;
using ferry::transport::detail::DeviceRegion;

TEST_CASE("device_copy is a fabric kind that only a DeviceCopyWorld makes") {
  CHECK(std::string(to_string(FabricKind::device_copy)) == "device_copy");
  CHECK(ferry::transport::parse_fabric_kind("device_copy") == FabricKind::device_copy);

  ferry::Group group = ferry::Group::from_job(ferry::JobEnv{});
  ferry::transport::Peers peers;
  peers.store = &group.store();
  ferry::transport::FabricOptions options;
  options.kind = FabricKind::device_copy;
  check_error([&] { ferry::transport::make_fabric(peers, options); }, Errc::invalid_argument,
              "DeviceCopyWorld::make_fabric(rank)");
}

TEST_CASE("a DeviceCopyWorld runs where a GPU is and says why not elsewhere") {
  auto machine = ferry::probe_machine();
  if (machine.gpus.empty()) {
    INFO("no GPU here: " << machine.gpu_status);
#if defined(FERRY_HAVE_CUDA)
    check_error([] { ferry::transport::DeviceCopyWorld world(2, 0); }, Errc::unsupported, "no usable GPU");
#else
    check_error([] { ferry::transport::DeviceCopyWorld world(2, 0); }, Errc::unsupported, "has no CUDA");
#endif
    return;
  }
  ferry::transport::DeviceCopyWorld world(2, 0);
  CHECK(world.num_ranks() == 2);
  auto fabric = world.make_fabric(1);
  CHECK(fabric->kind() == FabricKind::device_copy);
  check_error([&] { world.make_fabric(1); }, Errc::invalid_argument, "rank 1 already has its fabric");
  check_error([] { ferry::transport::DeviceCopyWorld world(2, 1 << 20); }, Errc::invalid_argument,
              "outside the");
}

TEST_CASE("device_copy bookkeeping: one fabric per rank, equal region counts, connected peers only") {
  DeviceCopyShared shared(3, 0, std::chrono::seconds(1));
  shared.claim_rank(0);
  shared.claim_rank(1);
  check_error([&] { shared.claim_rank(1); }, Errc::invalid_argument, "rank 1 already has its fabric");
  check_error([&] { shared.claim_rank(3); }, Errc::invalid_argument,
              "rank 3 is outside the world of 3 ranks");
  check_error([&] { shared.claim_rank(-1); }, Errc::invalid_argument, "rank -1 is outside");

  int block[4];
  shared.add_region(0, DeviceRegion{&block[0], 64});
  shared.add_region(0, DeviceRegion{&block[1], 128});
  shared.add_region(1, DeviceRegion{&block[2], 64});
  check_error([&] { shared.connected_regions(0, "put", 1); }, Errc::invalid_argument,
              "put from rank 1: rank 0 has not connected");
  shared.connect(0);
  check_error([&] { shared.connect(1); }, Errc::invalid_argument,
              "rank 1 registered 1 regions but rank 0 registered 2");
  shared.add_region(1, DeviceRegion{&block[3], 256});
  shared.connect(1);

  auto regions = shared.connected_regions(1, "put", 0);
  REQUIRE(regions.size() == 2);
  CHECK(regions[1].base == &block[3]);
  CHECK(regions[1].bytes == 256);
  check_error([&] { shared.connected_regions(2, "put_signal", 0); }, Errc::invalid_argument,
              "put_signal from rank 0: rank 2 has not connected");
  check_error([&] { shared.connected_regions(7, "put", 0); }, Errc::invalid_argument,
              "put: peer rank 7 is outside the world of 3 ranks");

  shared.leave(1);
  check_error([&] { shared.connected_regions(1, "atomic_add", 0); }, Errc::invalid_argument,
              "the fabric of rank 1 has been destroyed");
}

TEST_CASE("device_copy bookkeeping: a signal word has one source rank") {
  DeviceCopyShared shared(4, 0, std::chrono::seconds(1));
  shared.claim_signal_word(2, 0, 1, 64, "put_signal");
  shared.claim_signal_word(2, 0, 1, 64, "atomic_add");  // the same source again is fine
  shared.claim_signal_word(3, 0, 1, 72, "put_signal");  // another word
  shared.claim_signal_word(3, 1, 1, 64, "put_signal");  // the same offset on another target
  check_error([&] { shared.claim_signal_word(3, 0, 1, 64, "put_signal"); }, Errc::invalid_argument,
              "put_signal: rank 3 signals the word at offset 64 of region 1 of rank 0, which rank 2 already "
              "signals");
}
