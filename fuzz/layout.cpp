// Fuzzes ferry::compute_layout, the first thing dispatch does with a caller's routing: arguments that are
// wrong must be refused with a ferry::Error (any other exception, a crash or a sanitizer report is a bug),
// and an accepted routing must give counts that agree with the routing itself.
//
// Input: byte 0 = flags (bit 0: ids taken modulo the expert count so most are valid; bit 1: a wrong dtype;
// bit 2: a 1-D tensor), bytes 1..6 = ranks, local size, experts (2 bytes), max nodes, top-k (signed, so bad
// values come up), then the expert ids, 2 bytes each.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/layout.hpp"
#include "ferry/tensor.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 7) return 0;
  const std::uint8_t flags = data[0];
  const int num_ranks = static_cast<std::int8_t>(data[1]);
  const int local_size = static_cast<std::int8_t>(data[2]);
  const std::int64_t num_experts = static_cast<std::int16_t>(data[3] | (data[4] << 8));
  const int max_nodes = static_cast<std::int8_t>(data[5]);
  const int topk = data[6] % 12;
  data += 7;
  size -= 7;
  const std::int64_t tokens = topk == 0 ? 0 : static_cast<std::int64_t>(size / 2 / topk);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(tokens * topk));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    std::int64_t id = static_cast<std::int16_t>(data[2 * i] | (data[2 * i + 1] << 8));
    if ((flags & 1) && num_experts > 0) id = (id < 0 ? -id : id) % (num_experts + 1) - 1;  // -1: empty slot
    ids[i] = id;
  }
  const ferry::DType dtype = (flags & 2) ? ferry::DType::fp32 : ferry::DType::int64;
  const ferry::TensorView view = (flags & 4) ? ferry::TensorView(ids.data(), {tokens * topk}, dtype)
                                             : ferry::TensorView(ids.data(), {tokens, topk}, dtype);
  ferry::Layout layout;
  try {
    layout = ferry::compute_layout(view, num_experts, num_ranks, local_size, max_nodes);
  } catch (const ferry::Error& error) {
    FUZZ_CHECK(error.code() == ferry::Errc::invalid_argument);
    return 0;
  }

  // Accepted: every count must follow from the routing.
  FUZZ_CHECK(layout.num_tokens == tokens);
  FUZZ_CHECK(layout.num_ranks == num_ranks && layout.local_size == local_size);
  const std::int64_t per_rank = num_experts / num_ranks;
  const int nodes = num_ranks / local_size;
  FUZZ_CHECK(static_cast<int>(layout.tokens_per_node.size()) == nodes);
  std::vector<std::int64_t> per_expert(static_cast<std::size_t>(num_experts), 0);
  std::vector<std::int64_t> to_rank(static_cast<std::size_t>(num_ranks), 0);
  std::vector<std::int64_t> to_node(static_cast<std::size_t>(nodes), 0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<bool> rank_hit(static_cast<std::size_t>(num_ranks), false);
    std::vector<bool> node_hit(static_cast<std::size_t>(nodes), false);
    for (int k = 0; k < topk; ++k) {
      const std::int64_t id = ids[static_cast<std::size_t>(t * topk + k)];
      FUZZ_CHECK(id >= -1 && id < num_experts);
      if (id < 0) continue;
      ++per_expert[static_cast<std::size_t>(id)];
      const int rank = static_cast<int>(id / per_rank);
      rank_hit[rank] = true;
      node_hit[rank / local_size] = true;
    }
    int touched = 0;
    for (int n = 0; n < nodes; ++n) {
      touched += node_hit[n] ? 1 : 0;
      to_node[n] += node_hit[n] ? 1 : 0;
    }
    FUZZ_CHECK(touched <= max_nodes);
    for (int r = 0; r < num_ranks; ++r) {
      FUZZ_CHECK(layout.in_rank(t, r) == rank_hit[r]);
      to_rank[r] += rank_hit[r] ? 1 : 0;
    }
  }
  FUZZ_CHECK(layout.tokens_per_expert == per_expert);
  FUZZ_CHECK(layout.tokens_per_rank == to_rank);
  FUZZ_CHECK(layout.tokens_per_node == to_node);
  return 0;
}
