// Runs the low-latency mode on an in-process cluster: one LowLatencyBuffer per rank of a LocalCluster, every
// rank's call issued from this thread (hook and async modes: all sends first, then the receives) or from a
// thread per rank (plain calls, which return with their results). Ranks marked in `masked` take no part and
// every other rank masks them first. Results are compared with the reference (low_latency_reference.hpp).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dispatch/low_latency_reference.hpp"
#include "ferry/buffer.hpp"
#include "ferry/low_latency.hpp"

namespace ferry::test {

enum class CallMode { hook, async, plain };

inline const char* to_string(CallMode mode) {
  return mode == CallMode::hook ? "hook" : mode == CallMode::async ? "async" : "plain";
}

// The normal mode's settings do not matter here: the smallest Config a LocalCluster accepts.
inline Config tiny_normal_config() {
  Config config;
  config.num_sms = 2;
  config.max_hidden = 8;
  config.max_topk = 1;
  config.rdma_ring_slots = 1;
  config.rdma_chunk = 1;
  config.nvl_ring_slots = 1;
  config.nvl_chunk = 1;
  config.max_nodes = 1;
  return config;
}

class LowLatencyCluster {
 public:
  LowLatencyCluster(int num_nodes, int local_size, std::size_t bytes,
                    Duration timeout = std::chrono::seconds(20), int host_lanes = 1)
      : cluster_(std::make_unique<LocalCluster>(num_nodes, local_size, tiny_normal_config())) {
    for (int r = 0; r < num_nodes * local_size; ++r) {
      buffers_.push_back(
          std::make_unique<LowLatencyBuffer>(*cluster_, r, LowLatencyConfig{bytes, timeout, host_lanes}));
    }
  }

  int num_ranks() const { return static_cast<int>(buffers_.size()); }
  LowLatencyBuffer& buffer(int rank) { return *buffers_[rank]; }

  void mask_everywhere(const Masked& masked) {
    for (int r = 0; r < num_ranks(); ++r) {
      if (masked[r]) continue;
      for (int v = 0; v < num_ranks(); ++v)
        if (masked[v]) buffers_[r]->low_latency_update_mask_buffer(v, true);
    }
  }

  // Every unmasked rank's dispatch of the scenario; results of masked ranks stay empty.
  std::vector<std::optional<LowLatencyDispatchResult>> dispatch(const LowLatencyScenario& scenario,
                                                                const DispatchFlags& flags, CallMode mode,
                                                                const Masked& masked) {
    std::vector<std::optional<LowLatencyDispatchResult>> results(num_ranks());
    auto call = [&](int r) {
      LowLatencyDispatchOptions options;
      options.use_fp8 = flags.fp8;
      options.round_scale = flags.round_scale;
      options.use_ue8m0 = flags.ue8m0;
      options.async_finish = mode == CallMode::async;
      options.return_recv_hook = mode == CallMode::hook;
      results[r] = buffers_[r]->low_latency_dispatch(scenario.x(r), scenario.topk(r), scenario.max_tokens,
                                                     scenario.num_experts, options);
    };
    run(mode, masked, call, [&](int r) {
      if (mode == CallMode::hook) results[r]->hook();
      if (mode == CallMode::async) results[r]->event.wait();
    });
    return results;
  }

  // Every unmasked rank's combine of the expert outputs test::fill_expert_outputs makes for its dispatch.
  std::vector<std::vector<std::uint16_t>> combine(
      const LowLatencyScenario& scenario, const std::vector<std::optional<LowLatencyDispatchResult>>& sent,
      CallMode mode, const Masked& masked, bool zero_copy) {
    const std::int64_t L = scenario.local_experts();
    std::vector<std::vector<std::uint16_t>> y(num_ranks()), out(num_ranks());
    std::vector<std::optional<LowLatencyCombineResult>> results(num_ranks());
    auto call = [&](int r) {
      const LowLatencyHandle& handle = sent[r]->handle;
      TensorView x;
      if (zero_copy) {
        x = buffers_[r]->get_next_low_latency_combine_buffer(handle);
        fill_expert_outputs(scenario, r, *sent[r], x.data_as<std::uint16_t>());
      } else {
        y[r].resize(static_cast<std::size_t>(L * scenario.rows_per_expert() * scenario.hidden));
        fill_expert_outputs(scenario, r, *sent[r], y[r].data());
        x = TensorView(y[r].data(), {L, scenario.rows_per_expert(), scenario.hidden}, DType::bf16);
      }
      out[r].resize(static_cast<std::size_t>(scenario.ranks[r].num_tokens * scenario.hidden));
      LowLatencyCombineOptions options;
      options.zero_copy = zero_copy;
      options.async_finish = mode == CallMode::async;
      options.return_recv_hook = mode == CallMode::hook;
      options.out = TensorView(out[r].data(), {scenario.ranks[r].num_tokens, scenario.hidden}, DType::bf16);
      results[r] =
          buffers_[r]->low_latency_combine(x, scenario.topk(r), scenario.weights(r), handle, options);
    };
    run(mode, masked, call, [&](int r) {
      if (mode == CallMode::hook) results[r]->hook();
      if (mode == CallMode::async) results[r]->event.wait();
    });
    return out;
  }

  void clean(const LowLatencyScenario& scenario) {
    std::vector<std::thread> threads;
    std::vector<std::string> errors(num_ranks());
    for (int r = 0; r < num_ranks(); ++r) {
      threads.emplace_back([&, r] {
        try {
          buffers_[r]->low_latency_clean_mask_buffer();
          buffers_[r]->clean_low_latency_buffer(scenario.max_tokens, scenario.hidden, scenario.num_experts);
        } catch (const std::exception& error) {
          errors[r] = error.what();
        }
      });
    }
    for (auto& thread : threads) thread.join();
    for (const auto& error : errors)
      if (!error.empty()) throw std::runtime_error(error);
  }

 private:
  // Issues `call` on every unmasked rank, then `finish`; plain calls get a thread per rank. The first error
  // of any rank is rethrown here, on the test's thread.
  template <class Call, class Finish>
  void run(CallMode mode, const Masked& masked, Call call, Finish finish) {
    if (mode == CallMode::plain) {
      std::vector<std::thread> threads;
      std::vector<std::string> errors(num_ranks());
      for (int r = 0; r < num_ranks(); ++r) {
        if (masked[r]) continue;
        threads.emplace_back([&, r] {
          try {
            call(r);
          } catch (const std::exception& error) {
            errors[r] = error.what();
          }
        });
      }
      for (auto& thread : threads) thread.join();
      for (const auto& error : errors)
        if (!error.empty()) throw std::runtime_error(error);
      return;
    }
    for (int r = 0; r < num_ranks(); ++r)
      if (!masked[r]) call(r);
    for (int r = 0; r < num_ranks(); ++r)
      if (!masked[r]) finish(r);
  }

  std::unique_ptr<LocalCluster> cluster_;
  std::vector<std::unique_ptr<LowLatencyBuffer>> buffers_;
};

}  // namespace ferry::test
