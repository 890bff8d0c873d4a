// The low-latency mode's protocol pieces without a cluster: the branchless e4m3 conversion against
// numeric.hpp's, the host's vectorised fp8 cast and weighted sum against the protocol's reference forms and
// the test reference, DeepEP's scale rules, the region layout and the words' encoding.
#include <catch2/catch.hpp>
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
    CHECK(layout.release_word(1, shape.num_ranks - 1) + 8 <= layout.release_base);
    CHECK(layout.release_base_word(1, shape.num_ranks - 1) + 8 <= layout.counts);
    CHECK(layout.count_word(true, 1, E - 1) + 8 <= layout.seen);
    CHECK(layout.seen_word(true, 1, E - 1) + 8 <= layout.send[0]);
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
// count word of a region has one writer, whichever operations use the buffer for a dispatch or a combine.
TEST_CASE("low-latency: every count word has one writer in dispatch and combine alike", "[lowlat]") {
  for (auto shape : {p::LowLatencyShape{8, 128, 4, 8}, p::LowLatencyShape{8, 128, 4, 4},
                     p::LowLatencyShape{4, 128, 3, 9}}) {
    const p::LowLatencyLayout layout = p::make_low_latency_layout(shape);
    const int R = shape.num_ranks;
    const std::int64_t E = shape.num_experts, L = shape.local_experts();
    std::map<std::size_t, int> writer;  // word offset -> the rank that writes it
    std::string clash;
    auto wrote = [&](std::size_t word, int rank) {
      CHECK(word >= layout.counts);
      CHECK(word + 8 <= layout.counts + layout.count_words_bytes());
      const auto [at, fresh] = writer.emplace(word, rank);
      if (!fresh && at->second != rank && clash.empty())
        clash = "word " + std::to_string(word) + " by " + std::to_string(at->second) + " and " +
                std::to_string(rank);
    };
    for (int b = 0; b < p::kLowLatencyBuffers; ++b) {
      // Dispatch: source s publishes word (local expert, s) at the expert's rank (the publish role's index).
      for (std::int64_t le = 0; le < L; ++le)
        for (int source = 0; source < R; ++source)
          wrote(layout.count_word(false, b, le * R + source), source);
      // Combine: the rank of expert e returns word e at every source.
      for (std::int64_t expert = 0; expert < E; ++expert)
        wrote(layout.count_word(true, b, expert), static_cast<int>(expert / L));
    }
    INFO("R " << R << " E " << E);
    CHECK(clash == "");
    CHECK(writer.size() == static_cast<std::size_t>(2 * p::kLowLatencyBuffers * E));
    // The private copies sit apart from every count word.
    CHECK(layout.seen >= layout.counts + layout.count_words_bytes());
  }
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
