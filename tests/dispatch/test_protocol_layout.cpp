// The protocol's arithmetic: channel slices, ring counters, per-token routing facts, slot formats and the
// buffer layout (every ring, staging area and counter in its own aligned, non-overlapping place).
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <vector>

#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/message.hpp"
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

TEST_CASE("ring windows give credit and readiness across any value", "[unit]") {
  for (std::uint64_t base : {std::uint64_t{0}, std::uint64_t{1} << 40, std::uint64_t{1} << 62}) {
    p::RingWindow window{base, 4};
    std::uint64_t head = base;
    std::uint64_t tail = base + 3;
    CHECK(p::ready(tail, head) == 3);
    CHECK(window.credit(tail, head) == 1);
    CHECK(window.credit(tail, head + 3) == 4);
    // The previous operation's messages still occupy the bytes: no credit until they are all released.
    if (base > 0) CHECK(window.credit(base, base - 1) == 0);
    CHECK(window.position(base + 5) == 1);
    CHECK(window.position(base) == 0);
    p::RingWindow odd{base, 3};
    CHECK(odd.position(base + 7) == 1);
  }
  CHECK(p::is_power_of_two(1));
  CHECK_FALSE(p::is_power_of_two(6));
  CHECK_FALSE(p::is_power_of_two(0));
}

TEST_CASE("credit batches never starve a producer that waits for a whole chunk", "[unit]") {
  for (std::uint64_t slots : {1, 2, 4, 8, 16, 64}) {
    for (std::uint64_t chunk = 1; chunk <= slots; ++chunk) {
      const std::uint64_t batch = p::credit_batch(slots, chunk);
      INFO("slots " << slots << " chunk " << chunk << " batch " << batch);
      CHECK(batch >= 1);
      CHECK(batch <= chunk);
      // A stalled producer has more than slots - chunk messages outstanding; once the consumer has taken them
      // all, it holds at least that many unreturned and must return them.
      CHECK(batch <= slots - chunk + 1);
    }
  }
}

TEST_CASE("remote nodes are numbered without the own node", "[unit]") {
  for (int own = 0; own < 5; ++own) {
    int index = 0;
    for (int other = 0; other < 5; ++other) {
      if (other == own) continue;
      CHECK(p::remote_index(own, other) == index);
      CHECK(p::remote_node(own, index) == other);
      ++index;
    }
  }
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

TEST_CASE("message formats fit their operation and the largest one fits every ring", "[unit]") {
  for (std::int64_t hidden : {1, 100, 128, 7168}) {
    for (int topk : {0, 1, 8, 13}) {
      for (auto kind : {p::PayloadKind::bf16, p::PayloadKind::fp32, p::PayloadKind::fp8_e4m3}) {
        p::DispatchFormat dispatch = p::dispatch_format(kind, hidden, topk);
        CHECK(dispatch.stride % p::kSlotAlignment == 0);
        CHECK(dispatch.payload % p::kRowAlignment == 0);
        CHECK(dispatch.topk_weights >= dispatch.topk_ids + 4 * topk);
        CHECK(dispatch.scales >= dispatch.topk_weights + 4 * topk);
        const std::size_t scales = kind == p::PayloadKind::fp8_e4m3 ? 4 * p::scale_blocks(hidden) : 0;
        CHECK(dispatch.payload >= dispatch.scales + scales);
        CHECK(dispatch.row_bytes() == static_cast<std::size_t>(hidden * p::element_bytes(kind)));
        CHECK(dispatch.used <= dispatch.stride);
        CHECK(dispatch.stride <= p::max_dispatch_stride(hidden, topk > 0 ? topk : 1));
        if (kind == p::PayloadKind::fp8_e4m3) continue;
        p::CombineFormat combine = p::combine_format(kind, hidden, topk);
        CHECK(combine.payload % p::kRowAlignment == 0);
        CHECK(combine.payload >= combine.topk_weights + 4 * topk);
        CHECK(combine.used <= combine.stride);
        CHECK(combine.stride <= p::max_combine_stride(hidden, topk > 0 ? topk : 1));
      }
    }
  }
  // bf16 rows get about twice the slots of fp32 rows in the same ring.
  p::LayoutParams params;
  params.topo = {2, 2, 1};
  params.max_hidden = 7168;
  params.max_topk = 8;
  params.rdma_slots = 32;
  params.nvl_slots = 16;
  p::BufferLayout layout = p::make_buffer_layout(params);
  const p::RingFamily& rdma = layout.family(p::RingKind::dispatch_rdma);
  CHECK(rdma.window_slots(p::dispatch_format(p::PayloadKind::fp32, 7168, 8).stride) == 32);
  CHECK(rdma.window_slots(p::dispatch_format(p::PayloadKind::bf16, 7168, 8).stride) == 63);
  CHECK(rdma.window_slots(p::dispatch_format(p::PayloadKind::fp8_e4m3, 7168, 8).stride) == 122);
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
    const int NR = params.topo.num_nodes - 1;
    const int L = params.topo.local_size;
    const int expected_peers[p::kRingKinds] = {params.topo.num_ranks(), NR, L * NR, L, L, L * NR, NR};

    struct Span {
      std::size_t begin, end;
    };
    std::vector<Span> spans;
    for (int i = 0; i < p::kRingKinds; ++i) {
      const p::RingFamily& family = layout.families[i];
      CHECK(static_cast<int>(family.kind) == i);
      CHECK(family.peers == expected_peers[i]);
      CHECK(family.data % p::kRegionAlignment == 0);
      CHECK(family.ring_bytes % p::kSlotAlignment == 0);
      if (family.peers == 0) {
        CHECK(family.data_bytes() == 0);
        continue;
      }
      spans.push_back({family.counters, family.counters + family.counter_bytes()});
      if (family.data_bytes() > 0) spans.push_back({family.data, family.data + family.data_bytes()});
      if (family.has_staging) spans.push_back({family.staging, family.staging + family.data_bytes()});
      // Counter words are 8-byte aligned and distinct; the last ring ends at the end of the data region.
      int last_channel = family.channels - 1, last_peer = family.peers - 1;
      CHECK(family.out_tail(last_channel, last_peer) + 8 <= family.counters + family.counter_bytes());
      CHECK(family.in_tail(0, 0) % 8 == 0);
      CHECK(family.in_head(0, 0) - family.in_tail(0, 0) == p::kCounterStride);
      CHECK(family.ring_data(last_channel, last_peer) + family.ring_bytes ==
            family.data + family.data_bytes());
    }
    std::sort(spans.begin(), spans.end(), [](Span a, Span b) { return a.begin < b.begin; });
    for (std::size_t i = 1; i < spans.size(); ++i) REQUIRE(spans[i - 1].end <= spans[i].begin);
    REQUIRE(spans.back().end <= layout.total_bytes);
  }
}
