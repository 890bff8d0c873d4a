#include "op_settings.hpp"

#include "ferry/core/error.hpp"

namespace ferry {

namespace {

// The fields every rank must share, by name: they decide the buffer layout and the credit rules.
struct SharedField {
  const char* name;
  int Config::*field;
};
constexpr SharedField kSharedFields[] = {
    {"num_sms", &Config::num_sms},
    {"max_nodes", &Config::max_nodes},
    {"max_hidden", &Config::max_hidden},
    {"max_topk", &Config::max_topk},
    {"rdma_ring_slots", &Config::rdma_ring_slots},
    {"rdma_chunk", &Config::rdma_chunk},
    {"nvl_ring_slots", &Config::nvl_ring_slots},
    {"nvl_chunk", &Config::nvl_chunk},
};

// FNV-1a over the values that must agree between ranks for one operation.
std::uint64_t fingerprint(const Config& buffer, int channels, int rdma_chunk, int nvl_chunk) {
  std::uint64_t hash = 1469598103934665603ull;
  auto mix = [&hash](long long value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= static_cast<std::uint64_t>(value >> (8 * byte)) & 0xffu;
      hash *= 1099511628211ull;
    }
  };
  for (long long value : {static_cast<long long>(buffer.num_sms), static_cast<long long>(buffer.max_nodes),
                          static_cast<long long>(buffer.max_hidden), static_cast<long long>(buffer.max_topk),
                          static_cast<long long>(buffer.rdma_ring_slots),
                          static_cast<long long>(buffer.nvl_ring_slots), static_cast<long long>(channels),
                          static_cast<long long>(rdma_chunk), static_cast<long long>(nvl_chunk)}) {
    mix(value);
  }
  return hash;
}

}  // namespace

void check_call_config(const Config& buffer, const Config& call) {
  auto require_same = [&](const char* field, long long value, long long buffers) {
    if (value != buffers) {
      fail(Errc::invalid_argument,
           "the per-call Config has " + std::string(field) + " = " + std::to_string(value) +
               " but the Buffer was built with " + std::to_string(buffers) +
               ": a per-call Config may change only num_sms, rdma_chunk and nvl_chunk");
    }
  };
  require_same("max_nodes", call.max_nodes, buffer.max_nodes);
  require_same("max_hidden", call.max_hidden, buffer.max_hidden);
  require_same("max_topk", call.max_topk, buffer.max_topk);
  require_same("rdma_ring_slots", call.rdma_ring_slots, buffer.rdma_ring_slots);
  require_same("nvl_ring_slots", call.nvl_ring_slots, buffer.nvl_ring_slots);
  if (call.num_sms < 2 || call.num_sms % 2 != 0 || call.num_sms > buffer.num_sms) {
    fail(Errc::invalid_argument, "the per-call Config has num_sms = " + std::to_string(call.num_sms) +
                                     ": it must be even, >= 2 and at most the Buffer's " +
                                     std::to_string(buffer.num_sms));
  }
  if (call.rdma_chunk < 1 || call.rdma_chunk > buffer.rdma_ring_slots) {
    fail(Errc::invalid_argument,
         "the per-call Config has rdma_chunk = " + std::to_string(call.rdma_chunk) +
             ": it must be in [1, rdma_ring_slots = " + std::to_string(buffer.rdma_ring_slots) + "]");
  }
  if (call.nvl_chunk < 1 || call.nvl_chunk > buffer.nvl_ring_slots) {
    fail(Errc::invalid_argument,
         "the per-call Config has nvl_chunk = " + std::to_string(call.nvl_chunk) +
             ": it must be in [1, nvl_ring_slots = " + std::to_string(buffer.nvl_ring_slots) + "]");
  }
}

kernels::host::OpSettings op_settings(const Config& buffer, const Config* call, int channels) {
  const Config& used = call != nullptr ? *call : buffer;
  if (call != nullptr) check_call_config(buffer, *call);
  kernels::host::OpSettings settings;
  settings.channels = channels > 0 ? channels : (call != nullptr ? call->num_channels() : 0);
  settings.rdma_chunk = used.rdma_chunk;
  settings.nvl_chunk = used.nvl_chunk;
  const int effective_channels = settings.channels > 0 ? settings.channels : buffer.num_channels();
  settings.fingerprint = fingerprint(buffer, effective_channels, settings.rdma_chunk, settings.nvl_chunk);
  return settings;
}

std::string config_mismatch(const Config& mine, int my_rank, const Config& theirs, int their_rank) {
  for (const SharedField& shared : kSharedFields) {
    if (mine.*shared.field == theirs.*shared.field) continue;
    return "rank " + std::to_string(their_rank) + " has Config::" + shared.name + " = " +
           std::to_string(theirs.*shared.field) + " but rank " + std::to_string(my_rank) + " has " +
           std::to_string(mine.*shared.field);
  }
  return "";
}

}  // namespace ferry
