// The protocol's arithmetic: channel slices, ring counters, per-token routing facts, slot formats and the
// buffer layout (every ring, staging area and counter in its own aligned, non-overlapping place).
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <vector>

#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/ring.hpp"
#include "ferry/kernels/protocol/routing.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace p = ferry::kernels::protocol;

TEST_CASE("channels cut the tokens into contiguous slices in order", "[unit]") {
  for (std::int64_t tokens = 0; tokens < 50; ++tokens) {
    for (int channels = 1; channels <= 10; ++channels) {
      std::int64_t next = 0;
      for (int c = 0; c < channels; ++c) {
        p::TokenRange range = p::channel_tokens(tokens, channels, c);
        REQUIRE(range.begin == next);
        REQUIRE(range.end >= range.begin);
        for (std::int64_t t = range.begin; t < range.end; ++t)
          REQUIRE(p::channel_of_token(tokens, channels, t) == c);
        next = range.end;
      }
      REQUIRE(next == tokens);
    }
  }
}

TEST_CASE("ring counters give credit and readiness across any value", "[unit]") {
  for (std::uint64_t base : {std::uint64_t{0}, std::uint64_t{1} << 40, ~std::uint64_t{0} - 3}) {
    std::uint64_t head = base;
    std::uint64_t tail = base + 3;  // may wrap: the arithmetic is modular
    CHECK(p::ready(tail, head) == 3);
    CHECK(p::credit(tail, head, 4) == 1);
    CHECK(p::credit(tail, head + 3, 4) == 4);
  }
  CHECK(p::slot_of(13, 8) == 5);
  CHECK(p::slot_of(16, 8) == 0);
  CHECK(p::is_power_of_two(1));
  CHECK_FALSE(p::is_power_of_two(6));
  CHECK_FALSE(p::is_power_of_two(0));
}

TEST_CASE("routing facts of one token", "[unit]") {
  p::Topology topo{3, 2, 1};    // 6 ranks
  p::ExpertSplit split{12, 2};  // rank r owns experts 2r, 2r+1
  std::int64_t row[] = {0, 5, -1, 10, 11};
  p::TokenRoute route = p::route_token(row, 5, split, topo);
  REQUIRE(route.valid());
  CHECK(route.node_mask ==
        0b111);  // experts 0 (rank 0, node 0), 5 (rank 2, node 1), 10 and 11 (rank 5, node 2)
  CHECK(route.num_nodes() == 3);
  CHECK(p::local_mask_on_node(row, 5, 0, split, topo) == 0b01);
  CHECK(p::local_mask_on_node(row, 5, 1, split, topo) == 0b01);
  CHECK(p::local_mask_on_node(row, 5, 2, split, topo) == 0b10);
  CHECK(split.local_id(11, 5) == 1);
  CHECK(split.local_id(11, 4) == -1);
  CHECK(topo.rail_partner(3, 2) == 5);

  std::int64_t bad[] = {1, 12};
  CHECK(p::route_token(bad, 2, split, topo).bad_slot == 1);
  std::int64_t negative[] = {-2};
  CHECK(p::route_token(negative, 1, split, topo).bad_slot == 0);
}

TEST_CASE("slot formats hold the largest message", "[unit]") {
  for (std::int64_t hidden : {1, 100, 128, 7168}) {
    for (int topk : {1, 8, 13}) {
      p::DispatchSlotFormat dispatch = p::make_dispatch_slot_format(hidden, topk);
      CHECK(dispatch.stride % p::kSlotAlignment == 0);
      CHECK(dispatch.payload % p::kPayloadAlignment == 0);
      CHECK(dispatch.topk_weights >= dispatch.topk_ids + 4 * topk);
      CHECK(dispatch.scales >= dispatch.topk_weights + 4 * topk);
      CHECK(dispatch.payload >= dispatch.scales + 4 * p::scale_blocks(hidden));
      for (auto kind : {p::PayloadKind::bf16, p::PayloadKind::fp32, p::PayloadKind::fp8_e4m3}) {
        CHECK(dispatch.used_bytes(kind, hidden) <= dispatch.stride);
      }
      p::CombineSlotFormat combine = p::make_combine_slot_format(hidden);
      CHECK(combine.used_bytes(p::PayloadKind::fp32, hidden) <= combine.stride);
    }
  }
}

TEST_CASE("the buffer layout gives every ring its own aligned bytes", "[unit]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    p::LayoutParams params;
    params.topo = {1 + static_cast<int>(rng() % 4), 1 + static_cast<int>(rng() % 5),
                   1 + static_cast<int>(rng() % 6)};
    params.max_hidden = 1 + rng() % 700;
    params.max_topk = 1 + rng() % 9;
    params.rdma_slots = 1u << (rng() % 4);
    params.nvl_slots = 1u << (rng() % 4);
    p::BufferLayout layout = p::make_buffer_layout(params);
    INFO("trial " << trial);

    struct Span {
      std::size_t begin, end;
    };
    std::vector<Span> spans;
    for (p::RingKind kind : {p::RingKind::notify, p::RingKind::dispatch_rdma, p::RingKind::dispatch_nvl,
                             p::RingKind::combine_nvl, p::RingKind::combine_rdma}) {
      const p::RingFamily& family = layout.family(kind);
      CHECK(family.kind == kind);
      CHECK(family.data % p::kRegionAlignment == 0);
      CHECK(family.slot_bytes % p::kSlotAlignment == 0);
      spans.push_back({family.counters, family.counters + family.counter_bytes()});
      spans.push_back({family.data, family.data + family.data_bytes()});
      if (family.has_staging) spans.push_back({family.staging, family.staging + family.data_bytes()});
      // Counter words are 8-byte aligned and distinct; the last slot ends inside the data region.
      int last_channel = family.channels - 1, last_peer = family.peers - 1;
      CHECK(family.out_tail(last_channel, last_peer) + 8 <= family.counters + family.counter_bytes());
      CHECK(family.in_tail(0, 0) % 8 == 0);
      CHECK(family.in_head(0, 0) - family.in_tail(0, 0) == p::kCounterStride);
      CHECK(family.slot(last_channel, last_peer, family.slots - 1) + family.slot_bytes ==
            family.data + family.data_bytes());
      CHECK(family.slot(0, 0, family.slots) == family.slot(0, 0, 0));  // counters wrap onto slots
    }
    std::sort(spans.begin(), spans.end(), [](Span a, Span b) { return a.begin < b.begin; });
    for (std::size_t i = 1; i < spans.size(); ++i) REQUIRE(spans[i - 1].end <= spans[i].begin);
    REQUIRE(spans.back().end <= layout.total_bytes);
    CHECK(layout.dispatch_rdma.peers == params.topo.num_nodes);
    CHECK(layout.dispatch_nvl.peers == params.topo.local_size);
    CHECK(layout.notify.peers == params.topo.num_ranks());
  }
}
