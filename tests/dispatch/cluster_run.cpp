#include "cluster_run.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>

namespace ferry::test {

namespace {

TensorView rows_view(const std::vector<std::uint8_t>& bytes, std::int64_t rows, std::int64_t hidden,
                     DType dtype) {
  return TensorView(bytes.data(), {rows, hidden}, dtype);
}

template <typename T>
std::vector<T> wait_all(std::vector<Pending<T>>& pending) {
  std::vector<T> results;
  for (Pending<T>& one : pending) results.push_back(std::move(one.wait()));
  return results;
}

std::string where(int rank, std::int64_t row, const Source& source) {
  return "rank " + std::to_string(rank) + " row " + std::to_string(row) + " (source rank " +
         std::to_string(source.rank) + " token " + std::to_string(source.token) + ")";
}

bool all_zero(const void* data, std::size_t bytes) {
  const auto* begin = static_cast<const std::uint8_t*>(data);
  for (std::size_t i = 0; i < bytes; ++i) {
    if (begin[i] != 0) return false;
  }
  return true;
}

}  // namespace

DispatchInputs inputs_of(const Scenario& scenario, int rank) {
  const RankData& data = scenario.ranks[rank];
  DispatchInputs inputs;
  inputs.x = rows_view(data.x, data.num_tokens, scenario.hidden, scenario.dtype);
  if (scenario.dtype == DType::fp8_e4m3) {
    inputs.x_scales = TensorView(data.scales.data(), {data.num_tokens, scenario.scale_blocks()}, DType::fp32);
  }
  inputs.topk_idx = TensorView(data.topk.data(), {data.num_tokens, scenario.num_topk}, DType::int64);
  inputs.topk_weights = TensorView(data.weights.data(), {data.num_tokens, scenario.num_topk}, DType::fp32);
  return inputs;
}

std::mt19937_64 seeded(const char* test) {
  return std::mt19937_64(announce_seed(test));
}

ClusterRun::ClusterRun(const Scenario& scenario, const Config& config)
    : cluster(std::make_unique<LocalCluster>(scenario.num_nodes, scenario.local_size, config)) {
  for (int r = 0; r < scenario.num_ranks(); ++r) buffers.push_back(std::make_unique<Buffer>(*cluster, r));
}

std::vector<DispatchResult> ClusterRun::dispatch(const Scenario& scenario, const DispatchOptions& options) {
  std::vector<Pending<DispatchResult>> pending;
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    DispatchInputs inputs = inputs_of(scenario, r);
    Layout layout = buffers[r]->get_layout(inputs.topk_idx, scenario.num_experts);
    pending.push_back(buffers[r]->dispatch(inputs, layout, options));
  }
  return wait_all(pending);
}

std::vector<DispatchResult> ClusterRun::dispatch_cached(const Scenario& scenario,
                                                        const std::vector<DispatchResult>& first) {
  std::vector<Pending<DispatchResult>> pending;
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    DispatchInputs inputs = inputs_of(scenario, r);
    pending.push_back(buffers[r]->dispatch(inputs.x, inputs.x_scales, first[r].handle));
  }
  return wait_all(pending);
}

std::vector<Tensor> ClusterRun::combine(const std::vector<std::vector<std::uint8_t>>& results,
                                        std::int64_t hidden, DType dtype,
                                        const std::vector<DispatchResult>& dispatched) {
  std::vector<Pending<CombineResult>> pending;
  for (std::size_t r = 0; r < buffers.size(); ++r) {
    std::int64_t rows = dispatched[r].handle.recv_rows();
    pending.push_back(buffers[r]->combine(rows_view(results[r], rows, hidden, dtype), dispatched[r].handle));
  }
  std::vector<Tensor> outputs;
  for (Pending<CombineResult>& one : pending) outputs.push_back(std::move(one.wait().out));
  return outputs;
}

TrafficCounters ClusterRun::total(TrafficCounters BufferTraffic::*kind) const {
  TrafficCounters sum;
  for (const auto& buffer : buffers) {
    TrafficCounters one = buffer->traffic().*kind;
    sum.fabric.messages += one.fabric.messages;
    sum.fabric.bytes += one.fabric.bytes;
    sum.node.messages += one.node.messages;
    sum.node.bytes += one.node.bytes;
    sum.self.messages += one.self.messages;
    sum.self.bytes += one.self.bytes;
    sum.fabric_puts += one.fabric_puts;
    sum.fabric_signals += one.fabric_signals;
  }
  return sum;
}

std::string check_dispatch_rank(const Scenario& scenario, const std::vector<Source>& want, int r,
                                const DispatchResult& got, bool with_topk, std::int64_t worst_rows,
                                int expert_alignment) {
  return check_dispatch_rank(scenario, want, r, got, DispatchCheck{with_topk, worst_rows, expert_alignment});
}

std::string check_dispatch_rank(const Scenario& scenario, const std::vector<Source>& want, int r,
                                const DispatchResult& got, const DispatchCheck& check) {
  const bool with_topk = check.with_topk;
  const std::int64_t worst_rows = check.worst_rows;
  const std::size_t row_bytes = scenario.row_bytes();
  const int K = scenario.num_topk;
  const std::int64_t blocks = scenario.scale_blocks();
  std::int64_t received = static_cast<std::int64_t>(want.size());
  std::int64_t rows = worst_rows > 0 ? worst_rows : received;
  if (got.num_recv_tokens != received) {
    return "rank " + std::to_string(r) + " received " + std::to_string(got.num_recv_tokens) +
           " tokens, expected " + std::to_string(received);
  }
  if (got.recv_x.size(0) != rows || got.recv_x.size(1) != scenario.hidden ||
      got.recv_x.dtype() != scenario.dtype) {
    return "rank " + std::to_string(r) + " recv_x is " + got.recv_x.view().describe();
  }
  if (got.handle.num_recv_tokens() != received) return "rank " + std::to_string(r) + " handle count differs";
  std::vector<std::int64_t> per_expert(scenario.experts_per_rank(), 0);
  const auto* recv_x = static_cast<const std::uint8_t*>(got.recv_x.data());
  for (std::int64_t i = 0; i < received; ++i) {
    const Source& source = want[i];
    const RankData& data = scenario.ranks[source.rank];
    if (check.with_records &&
        (got.handle.recv_src_rank()[i] != source.rank || got.handle.recv_src_token()[i] != source.token)) {
      return where(r, i, source) + ": the handle records source rank " +
             std::to_string(got.handle.recv_src_rank()[i]) + " token " +
             std::to_string(got.handle.recv_src_token()[i]);
    }
    if (std::memcmp(recv_x + i * row_bytes, data.x.data() + source.token * row_bytes, row_bytes) != 0) {
      return where(r, i, source) + ": recv_x differs from the source row";
    }
    if (scenario.dtype == DType::fp8_e4m3 &&
        std::memcmp(got.recv_x_scales.data_as<float>() + i * blocks,
                    data.scales.data() + source.token * blocks, blocks * sizeof(float)) != 0) {
      return where(r, i, source) + ": recv_x_scales differ from the source scales";
    }
    if (!with_topk) continue;
    for (int k = 0; k < K; ++k) {
      std::int64_t expert = data.topk[source.token * K + k];
      bool local = expert >= 0 && scenario.rank_of_expert(expert) == r;
      std::int64_t want_id = local ? expert - r * scenario.experts_per_rank() : -1;
      float want_weight = local ? data.weights[source.token * K + k] : 0.0f;
      std::int64_t got_id = got.recv_topk_idx.data_as<std::int64_t>()[i * K + k];
      float got_weight = got.recv_topk_weights.data_as<float>()[i * K + k];
      if (got_id != want_id || std::memcmp(&got_weight, &want_weight, sizeof(float)) != 0) {
        std::string row_text;
        for (int j = 0; j < K; ++j) {
          row_text += " " + std::to_string(data.topk[source.token * K + j]) + "->" +
                      std::to_string(got.recv_topk_idx.data_as<std::int64_t>()[i * K + j]);
        }
        return where(r, i, source) + " slot " + std::to_string(k) + ": got expert " + std::to_string(got_id) +
               " weight " + std::to_string(got_weight) + ", expected " + std::to_string(want_id) +
               " weight " + std::to_string(want_weight) + "; source row vs received:" + row_text;
      }
      if (local) ++per_expert[want_id];
    }
  }
  for (std::int64_t i = received; i < rows; ++i) {  // worst-case padding
    if (!all_zero(recv_x + i * row_bytes, row_bytes))
      return "rank " + std::to_string(r) + " padding row " + std::to_string(i) + " is not zero";
    if (scenario.dtype == DType::fp8_e4m3 &&
        !all_zero(got.recv_x_scales.data_as<float>() + i * blocks, blocks * sizeof(float))) {
      return "rank " + std::to_string(r) + " padding row " + std::to_string(i) + " has scales";
    }
    for (int k = 0; with_topk && k < K; ++k) {
      if (got.recv_topk_idx.data_as<std::int64_t>()[i * K + k] != -1) {
        return "rank " + std::to_string(r) + " padding row " + std::to_string(i) + " has an expert";
      }
      if (!all_zero(got.recv_topk_weights.data_as<float>() + i * K + k, sizeof(float))) {
        return "rank " + std::to_string(r) + " padding row " + std::to_string(i) + " has a weight";
      }
    }
  }
  for (std::int64_t& count : per_expert) {
    count = (count + check.expert_alignment - 1) / check.expert_alignment * check.expert_alignment;
  }
  if (with_topk && got.tokens_per_local_expert != per_expert) {
    return "rank " + std::to_string(r) + " tokens_per_local_expert differs from the received topk ids" +
           (check.expert_alignment > 1 ? " rounded up to " + std::to_string(check.expert_alignment) : "");
  }
  return "";
}

std::string check_dispatch(const Scenario& scenario, const std::vector<std::vector<Source>>& sources,
                           const std::vector<DispatchResult>& results, bool with_topk,
                           std::int64_t worst_rows, int expert_alignment) {
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    std::string diff =
        check_dispatch_rank(scenario, sources[r], r, results[r], with_topk, worst_rows, expert_alignment);
    if (!diff.empty()) return diff;
  }
  return "";
}

std::string check_combine_rank(const Scenario& scenario, const std::vector<std::uint8_t>& expected, int s,
                               const Tensor& out) {
  std::size_t row_bytes = scenario.hidden * element_size(out.dtype());
  if (out.size(0) != scenario.ranks[s].num_tokens || out.size(1) != scenario.hidden) {
    return "rank " + std::to_string(s) + " combine output is " + out.view().describe();
  }
  for (std::int64_t t = 0; t < scenario.ranks[s].num_tokens; ++t) {
    if (std::memcmp(static_cast<const std::uint8_t*>(out.data()) + t * row_bytes,
                    expected.data() + t * row_bytes, row_bytes) != 0) {
      std::string detail;
      for (std::size_t b = 0; b < row_bytes; ++b) {
        const auto got = static_cast<const std::uint8_t*>(out.data())[t * row_bytes + b];
        const auto want = expected[t * row_bytes + b];
        if (got == want) continue;
        detail = ": first differing byte " + std::to_string(b) + " of " + std::to_string(row_bytes) +
                 " (got " + std::to_string(got) + ", expected " + std::to_string(want) + ")";
        break;
      }
      return "rank " + std::to_string(s) + " combined token " + std::to_string(t) +
             " differs from the reference" + detail;
    }
  }
  return "";
}

std::string check_combine(const Scenario& scenario, const std::vector<std::vector<std::uint8_t>>& expected,
                          const std::vector<Tensor>& outputs) {
  for (int s = 0; s < scenario.num_ranks(); ++s) {
    std::string diff = check_combine_rank(scenario, expected[s], s, outputs[s]);
    if (!diff.empty()) return diff;
  }
  return "";
}

std::string check_rail_only(const ClusterRun& run, const Scenario& scenario) {
  int R = scenario.num_ranks();
  for (int s = 0; s < R; ++s) {
    for (int t = 0; t < R; ++t) {
      std::uint64_t puts = run.cluster->fabric_data_puts(s, t);
      bool rail = s % scenario.local_size == t % scenario.local_size &&
                  s / scenario.local_size != t / scenario.local_size;
      if (puts > 0 && !rail) {
        return std::to_string(puts) + " fabric data puts from rank " + std::to_string(s) + " to rank " +
               std::to_string(t) + ", which is not its rail partner on another node";
      }
    }
  }
  return "";
}

Config small_config(std::mt19937_64& rng, std::int64_t max_hidden, int max_topk) {
  auto pick = [&](std::initializer_list<int> values) {
    return *(values.begin() + std::uniform_int_distribution<std::size_t>(0, values.size() - 1)(rng));
  };
  Config config;
  config.num_sms = pick({2, 4, 6, 8});
  config.max_hidden = static_cast<int>(max_hidden);
  config.max_topk = max_topk;
  config.rdma_ring_slots = pick({1, 2, 4, 8});
  config.rdma_chunk = std::uniform_int_distribution<int>(1, config.rdma_ring_slots)(rng);
  config.nvl_ring_slots = pick({1, 2, 4, 8});
  config.nvl_chunk = std::uniform_int_distribution<int>(1, config.nvl_ring_slots)(rng);
  config.host_workers = pick({1, 2});
  config.timeout = std::chrono::seconds(20);
  return config;
}

}  // namespace ferry::test
