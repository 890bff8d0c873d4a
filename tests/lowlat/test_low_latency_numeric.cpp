// The low-latency mode's protocol pieces without a cluster: the branchless e4m3 conversion against
// numeric.hpp's, the host's vectorised fp8 cast and weighted sum against the protocol's reference forms and
// the test reference, DeepEP's scale rules, the region layout and the words' encoding.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "dispatch/cluster_run.hpp"
#include "dispatch/low_latency_reference.hpp"
#include "ferry/kernels/host/low_latency_numeric.hpp"
#include "ferry/kernels/protocol/low_latency_roles.hpp"
#include "ferry/low_latency.hpp"

namespace p = ferry::kernels::protocol;
namespace h = ferry::kernels::host;

TEST_CASE("low-latency: the branchless e4m3 conversion gives numeric.hpp's bits for every kind of float",
          "[lowlat]") {
  std::uint64_t checked = 0;
  // Every 509th bit pattern: all exponents, signs, NaNs and infinities, mantissas of every rounding case.
  for (std::uint64_t bits = 0; bits < (std::uint64_t{1} << 32); bits += 509) {
    const float value = p::bits_to_float(static_cast<std::uint32_t>(bits));
    if (p::float_to_e4m3_branchless(value) != p::float_to_e4m3(value)) {
      FAIL("bits " << bits << ": branchless " << int{p::float_to_e4m3_branchless(value)} << ", numeric.hpp "
                   << int{p::float_to_e4m3(value)});
    }
    ++checked;
  }
  // Ties and the edges: exact halves between e4m3 values, the subnormal boundary, 448 and just above.
  for (float value : {0.0f, -0.0f, 448.0f, 464.0f, 480.0f, 1e30f, 0.015625f, 0.0146484375f, 0.001953125f,
                      0.0009765625f, 0.00048828125f, 1.0625f, 1.1875f, -1.0625f, 3.0e-8f}) {
    CHECK(int{p::float_to_e4m3_branchless(value)} == int{p::float_to_e4m3(value)});
  }
  CHECK(checked > 8'000'000);
}

// Inf, NaN of either sign and payload, -0 and denormals, pinned to the bits the GPU writes: the GPU's
// arithmetic returns the canonical NaN, so the host must write that too (e4m3 0x7f, bf16 0x7fc0).
TEST_CASE("low-latency: Inf, NaN, -0 and denormals cast and sum to pinned bits", "[lowlat]") {
  const float negative_nan = p::bits_to_float(0xffc00000u);  // x86's default NaN
  const float payload_nan = p::bits_to_float(0x7f800001u);
  CHECK(int{p::float_to_bf16(negative_nan)} == 0x7fc0);
  CHECK(int{p::float_to_bf16(payload_nan)} == 0x7fc0);
  CHECK(int{p::float_to_bf16(-INFINITY)} == 0xff80);
  CHECK(int{p::float_to_bf16(-0.0f)} == 0x8000);
  CHECK(int{p::float_to_bf16(p::bits_to_float(0x00010000u))} == 0x0001);  // a bf16 denormal kept
  CHECK(int{p::float_to_bf16(p::bits_to_float(0x00000001u))} == 0x0000);  // below half of it: zero
  for (float nan : {negative_nan, payload_nan, NAN}) {
    CHECK(int{p::float_to_e4m3(nan)} == 0x7f);
    CHECK(int{p::float_to_e4m3_branchless(nan)} == 0x7f);
  }
  CHECK(int{p::float_to_e4m3_branchless(-INFINITY)} == 0xfe);  // saturates
  CHECK(int{p::float_to_e4m3_branchless(-0.0f)} == 0x80);

  // Block 0 holds +Inf: amax is Inf, the scale 0, so Inf and NaN become NaN and the rest (signed) zeros.
  // Block 1 is finite but for a negative NaN, which amax leaves out: 2.0 maps to 448.
  std::vector<std::uint16_t> x(256, 0);
  x[0] = 0x7f80;    // +Inf
  x[1] = 0xffc1;    // -NaN with a payload
  x[2] = 0x8000;    // -0
  x[3] = 0x0001;    // the smallest bf16 denormal
  x[4] = 0x3f80;    // 1
  x[128] = 0x8000;  // -0
  x[129] = 0x0001;  // denormal
  x[130] = 0xffc1;  // -NaN
  x[131] = 0x4000;  // 2
  for (bool round_scale : {false, true}) {
    INFO("round_scale " << round_scale);
    std::vector<std::uint8_t> host_bits(256), protocol_bits(256);
    std::vector<float> host_scales(2), protocol_scales(2);
    h::quantize_row({x.data(), 256, round_scale, host_bits.data(), host_scales.data()});
    p::quantize_row({x.data(), 256, round_scale, protocol_bits.data(), protocol_scales.data()});
    CHECK(host_bits == protocol_bits);
    CHECK(p::float_bits(host_scales[0]) == p::float_bits(protocol_scales[0]));
    CHECK(p::float_bits(host_scales[1]) == p::float_bits(protocol_scales[1]));
    if (round_scale) {
      // Inf * 2^-126 saturates; 2^127 is the largest power-of-two scale.
      CHECK(std::vector<int>(host_bits.begin(), host_bits.begin() + 5) ==
            std::vector<int>{0x7e, 0x7f, 0x80, 0x00, 0x00});
      CHECK(p::float_bits(host_scales[0]) == 0x7f000000u);
    } else {
      CHECK(std::vector<int>(host_bits.begin(), host_bits.begin() + 5) ==
            std::vector<int>{0x7f, 0x7f, 0x80, 0x00, 0x00});
      CHECK(p::float_bits(host_scales[0]) == 0x7f800000u);  // amax / 448 of Inf
    }
    CHECK(std::vector<int>(host_bits.begin() + 128, host_bits.begin() + 132) ==
          std::vector<int>{0x80, 0x00, 0x7f, round_scale ? 0x78 : 0x7e});
    for (int i = 5; i < 128; ++i) CHECK(int{host_bits[i]} == 0);
  }

  // Weighted sum: 0 * Inf and 0 * NaN are NaN, Inf stays, the sum starts at +0 so -0 terms give +0.
  const std::vector<std::uint16_t> row0 = {0x7f80, 0xffc1, 0x3f80, 0x8000, 0x8000, 0x0001, 0, 0};
  const std::vector<std::uint16_t> row1 = {0x3f80, 0x3f80, 0x7f80, 0x8000, 0x8000, 0x0001, 0, 0};
  p::WeightedRows job;
  job.hidden = 8;
  job.count = 2;
  job.rows[0] = row0.data();
  job.rows[1] = row1.data();
  job.weights[0] = 0.0f;
  job.weights[1] = 1.0f;
  std::vector<std::uint16_t> host_sum(8), protocol_sum(8);
  job.out = host_sum.data();
  h::weighted_sum(job);
  job.out = protocol_sum.data();
  p::weighted_sum_rows(job);
  CHECK(host_sum == protocol_sum);
  CHECK(host_sum == std::vector<std::uint16_t>{0x7fc0, 0x7fc0, 0x7f80, 0x0000, 0x0000, 0x0001, 0, 0});
  job.weights[0] = -1.0f;  // -1 * -0 = +0, then + -0
  job.out = host_sum.data();
  h::weighted_sum(job);
  CHECK(int{host_sum[3]} == 0x0000);
  CHECK(int{host_sum[1]} == 0x7fc0);  // -1 * -NaN
}

TEST_CASE("low-latency: the host's fp8 cast and weighted sum give the reference bits", "[lowlat]") {
  auto rng = ferry::test::seeded("low-latency numerics");
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int round = 0; round < 50; ++round) {
    const std::int64_t hidden = 128 * (1 + static_cast<std::int64_t>(rng() % 8));
    const float magnitude = round % 5 == 0 ? 0.0f : std::pow(10.0f, static_cast<float>(rng() % 12) - 6.0f);
    std::vector<std::uint16_t> x(hidden);
    for (auto& value : x) value = p::float_to_bf16(normal(rng) * magnitude);
    const bool round_scale = rng() % 2 == 0;
    std::vector<std::uint8_t> fast(hidden), reference;
    std::vector<float> fast_scales(hidden / 128), reference_scales;
    h::quantize_row({x.data(), hidden, round_scale, fast.data(), fast_scales.data()});
    ferry::test::reference_fp8_row(x.data(), hidden, round_scale, reference, reference_scales);
    CHECK(fast == reference);
    CHECK(fast_scales == reference_scales);
    if (round_scale) {
      for (float scale : fast_scales) {
        int exponent = 0;
        CHECK(std::frexp(scale, &exponent) == 0.5f);  // a power of two: UE8M0 holds it exactly
        CHECK(p::ue8m0_of(scale) == exponent - 1 + 127);
      }
    }
    std::vector<std::uint8_t> protocol_form(hidden);
    std::vector<float> protocol_scales(hidden / 128);
    p::quantize_row({x.data(), hidden, round_scale, protocol_form.data(), protocol_scales.data()});
    CHECK(protocol_form == reference);

    p::WeightedRows job;
    job.hidden = hidden;
    job.count = static_cast<int>(rng() % (p::kLowLatencyMaxTopk + 1));
    std::vector<std::vector<std::uint16_t>> rows(job.count, std::vector<std::uint16_t>(hidden));
    for (int k = 0; k < job.count; ++k) {
      for (auto& value : rows[k]) value = p::float_to_bf16(normal(rng));
      job.rows[k] = rows[k].data();
      job.weights[k] = std::abs(normal(rng));
    }
    std::vector<std::uint16_t> fast_sum(hidden), reference_sum(hidden);
    job.out = fast_sum.data();
    h::weighted_sum(job);
    job.out = reference_sum.data();
    p::weighted_sum_rows(job);
    CHECK(fast_sum == reference_sum);
  }
}

TEST_CASE("low-latency: the region holds every slot once, the words first", "[lowlat]") {
  for (auto shape : {p::LowLatencyShape{128, 7168, 4, 256}, p::LowLatencyShape{1, 8, 1, 1},
                     p::LowLatencyShape{12, 384, 9, 27}}) {
    const p::LowLatencyLayout layout = p::make_low_latency_layout(shape);
    const std::int64_t T = shape.max_tokens;
    const std::int64_t E = shape.num_experts;
    const std::int64_t L = shape.local_experts();
    const std::size_t fp8 = p::low_latency_message(true, shape.hidden).stride;
    const std::size_t bf16 = p::low_latency_message(false, shape.hidden).stride;
    CHECK(std::max(fp8, bf16) == layout.message_bytes);
    CHECK(layout.release_word(1, shape.num_ranks - 1) + 8 <= layout.release_due);
    CHECK(layout.release_due_word(1, shape.num_ranks - 1) + 8 <= layout.arrival);
    CHECK(layout.arrival_word(1, shape.num_ranks - 1) + 8 <= layout.arrival_seen);
    CHECK(layout.arrival_seen_word(1, shape.num_ranks - 1) + 8 <= layout.counts);
    CHECK(layout.count_in(1, shape.num_ranks - 1, L) + 8 <= layout.counts_out);  // L: the check word
    CHECK(layout.count_out(1, shape.num_ranks - 1, L) + 8 <= layout.send[0]);
    for (int b = 0; b < 2; ++b) {
      // Staging: every (expert, position) message and the token scratch fit before the receive slots.
      CHECK(layout.token_scratch(b, T - 1, bf16) + bf16 <= layout.recv[b]);
      CHECK(layout.combine_staging(b, L - 1, shape.rows_per_expert() - 1) + layout.combine_row <=
            layout.recv[b]);
      const std::size_t end = b == 0 ? layout.send[1] : layout.total_bytes;
      CHECK(layout.dispatch_slot(b, L - 1, shape.num_ranks - 1, T - 1, bf16) + bf16 <= end);
      CHECK(layout.combine_slot(b, E - 1, T - 1) + layout.combine_row <= end);
    }
    CHECK(ferry::get_low_latency_rdma_size_hint(T, shape.hidden, shape.num_ranks, E) == layout.total_bytes);
  }
  // The words carry the operation and the count, and nothing else reads as a count.
  const std::uint32_t tag = p::low_latency_tag(1025, true);
  CHECK(tag == p::low_latency_tag(1, true));
  CHECK(tag != p::low_latency_tag(1, false));
  const std::uint64_t word = p::low_latency_signal(tag, 0);
  CHECK(word != 0);
  CHECK(p::signal_count(word) == 0);
  CHECK(p::signal_tag(word) == tag);
  CHECK(p::signal_count(p::low_latency_signal(tag, p::kLowLatencyMaxTokens)) == p::kLowLatencyMaxTokens);
  CHECK(p::low_latency_signal(2047, p::kLowLatencyMaxTokens) < (std::uint64_t{1} << 32));  // the proxy's add
  CHECK(p::range_begin(p::pack_range(123456, 789)) == 123456);
  CHECK(p::range_count(p::pack_range(123456, 789)) == 789);
}

// The protocol's promise that lets a fabric keep a word's value itself (the GPU's device_copy fabric): every
// signal word of a region has one writer, whichever operations use the buffer for a dispatch or a combine;
// and every count a peer publishes has a place of its own, apart from the words.
TEST_CASE("low-latency: every word and count has one writer in dispatch and combine alike", "[lowlat]") {
  for (auto shape : {p::LowLatencyShape{8, 128, 4, 8}, p::LowLatencyShape{8, 128, 4, 4},
                     p::LowLatencyShape{4, 128, 3, 9}}) {
    const p::LowLatencyLayout layout = p::make_low_latency_layout(shape);
    const int R = shape.num_ranks;
    const std::int64_t E = shape.num_experts, L = shape.local_experts();
    std::map<std::size_t, int> writer;  // word offset -> the rank that writes it
    std::string clash;
    auto wrote = [&](std::size_t word, int rank) {
      const auto [at, fresh] = writer.emplace(word, rank);
      if (!fresh && at->second != rank && clash.empty())
        clash = "word " + std::to_string(word) + " by " + std::to_string(at->second) + " and " +
                std::to_string(rank);
    };
    std::size_t counts = 0;
    for (int b = 0; b < p::kLowLatencyBuffers; ++b) {
      for (int peer = 0; peer < R; ++peer) {
        // Dispatch and combine alike: peer's arrival, and its counts (one per local expert of the dispatch's
        // destination, or of the combine's expert rank: the peer itself) followed by the block's check.
        wrote(layout.arrival_word(b, peer), peer);
        CHECK(layout.arrival_word(b, peer) + 8 <= layout.arrival_seen);
        for (std::int64_t le = 0; le <= L; ++le) {
          const std::size_t count = layout.count_in(b, peer, le);
          CHECK(count >= layout.counts);
          CHECK(count + 8 <= layout.counts + layout.count_blocks_bytes());
          wrote(count, peer);
          ++counts;
          // A peer's block is contiguous: one put carries it.
          CHECK(count == layout.count_in(b, peer, 0) + 8 * static_cast<std::size_t>(le));
          CHECK(layout.count_out(b, peer, le) - layout.counts_out == count - layout.counts);
        }
      }
    }
    INFO("R " << R << " E " << E);
    CHECK(clash == "");
    CHECK(counts == static_cast<std::size_t>(p::kLowLatencyBuffers * (E + R)));
    CHECK(writer.size() == static_cast<std::size_t>(p::kLowLatencyBuffers * (R + E + R)));
    // The private copies and the staged blocks sit apart from everything peers write.
    CHECK(layout.arrival_seen >= layout.arrival + 8 * static_cast<std::size_t>(p::kLowLatencyBuffers * R));
    CHECK(layout.counts_out >= layout.counts + layout.count_blocks_bytes());
    CHECK(layout.count_block_bytes() == 8 * static_cast<std::size_t>(L + 1));
  }
}

// What both executors derive from an operation's number (the GPU in every phase kernel, from its device
// counter), and when both give up on a role that stopped moving.
TEST_CASE("low-latency: an operation's number gives its buffer and tags, and when a role is stuck",
          "[lowlat]") {
  p::LowLatencyDispatchPlan dispatch;
  p::LowLatencyCombinePlan combine;
  for (std::uint32_t operation : {0u, 1u, 5u, 2048u}) {
    const p::LowLatencyDispatchPlan d = p::at_operation(dispatch, operation);
    const p::LowLatencyCombinePlan c = p::at_operation(combine, operation);
    CHECK(d.ctx.operation == operation);
    CHECK(d.ctx.buffer == static_cast<int>(operation % 2));
    CHECK(d.tag == p::low_latency_tag(operation, false));
    CHECK(c.ctx.buffer == d.ctx.buffer);
    CHECK(c.tag == p::low_latency_tag(operation, true));
  }
  CHECK(p::low_latency_stuck_after_ns(2'000'000'000ull) == 5'000'000'000ull);
  CHECK(p::low_latency_stuck_after_ns(0) == 1'000'000'000ull);
  // Saturates where std::chrono::nanoseconds still holds it.
  CHECK(p::low_latency_stuck_after_ns(~std::uint64_t{0}) == 0x7fffffffffffffffull);
  CHECK(p::low_latency_stuck_after_ns(0x7fffffffffffffffull / 2) == 0x7fffffffffffffffull);
}

TEST_CASE("low-latency: rows take their positions in (token, slot) order per expert", "[lowlat]") {
  const std::vector<std::int64_t> topk = {3,  1,  -1,  //
                                          1,  3,  2,   //
                                          -1, -1, 3};
  std::vector<std::int32_t> slot(9), count(4);
  CHECK(!p::assign_slots(topk.data(), 3, 3, 4, slot.data(), count.data()).any());
  CHECK(slot == std::vector<std::int32_t>{0, 0, -1, 1, 1, 0, -1, -1, 2});
  CHECK(count == std::vector<std::int32_t>{0, 2, 1, 3});
  const std::vector<std::int64_t> bad = {0, 7, -2};
  const p::SlotProblem out_of_range = p::assign_slots(bad.data(), 1, 3, 4, slot.data(), count.data());
  CHECK(out_of_range.index == 1);
  CHECK(!out_of_range.duplicate);
  const std::vector<std::int64_t> twice = {2, -1, 2};
  const p::SlotProblem duplicate = p::assign_slots(twice.data(), 1, 3, 4, slot.data(), count.data());
  CHECK(duplicate.index == 2);
  CHECK(duplicate.duplicate);
}
