#include "ferry/config.hpp"

#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <type_traits>

#include "ferry/core/error.hpp"
#include "protocol_params.hpp"

namespace ferry {

namespace {

[[noreturn]] void reject(const std::string& field, long long value, const std::string& why) {
  fail(Errc::invalid_argument, "Config::" + field + " = " + std::to_string(value) + " " + why);
}

void require_ring(const char* slots_name, int slots, const char* chunk_name, int chunk) {
  if (slots < 1 || !kernels::protocol::is_power_of_two(static_cast<std::uint64_t>(slots))) {
    reject(slots_name, slots, "must be a power of two >= 1");
  }
  if (chunk < 1 || chunk > slots)
    reject(chunk_name, chunk, "must be in [1, " + std::string(slots_name) + "]");
}

// Whether a JSON value can be stored in a field of type Field without changing it.
template <class Field>
bool fits(const nlohmann::json& value) {
  if constexpr (std::is_same_v<Field, bool>) {
    return value.is_boolean();
  } else if (value.is_number_unsigned()) {
    return value.get<unsigned long long>() <=
           static_cast<unsigned long long>(std::numeric_limits<Field>::max());
  } else if (value.is_number_integer()) {
    const long long v = value.get<long long>();
    return v >= static_cast<long long>(std::numeric_limits<Field>::min()) &&
           (v < 0 || static_cast<unsigned long long>(v) <= std::numeric_limits<Field>::max());
  }
  return false;
}

// Fields a JSON file may set, in the order to_json writes them.
template <class Visit>
void for_each_field(Config& config, Visit visit) {
  visit("num_sms", config.num_sms);
  visit("max_nodes", config.max_nodes);
  visit("max_hidden", config.max_hidden);
  visit("max_topk", config.max_topk);
  visit("rdma_ring_slots", config.rdma_ring_slots);
  visit("rdma_chunk", config.rdma_chunk);
  visit("nvl_ring_slots", config.nvl_ring_slots);
  visit("nvl_chunk", config.nvl_chunk);
  visit("buffer_bytes", config.buffer_bytes);
  visit("host_workers", config.host_workers);
  visit("host_thread_per_role", config.host_thread_per_role);
  visit("host_lanes", config.host_lanes);
}

}  // namespace

void Config::validate(int num_nodes, int local_size) const {
  if (num_sms < 2 || num_sms % 2 != 0)
    reject("num_sms", num_sms, "must be even and >= 2 (a channel is 2 SMs)");
  if (max_nodes < 1) reject("max_nodes", max_nodes, "must be >= 1");
  if (max_hidden < 1) reject("max_hidden", max_hidden, "must be >= 1");
  if (max_topk < 1 || max_topk > 255) reject("max_topk", max_topk, "must be in [1, 255]");
  require_ring("rdma_ring_slots", rdma_ring_slots, "rdma_chunk", rdma_chunk);
  require_ring("nvl_ring_slots", nvl_ring_slots, "nvl_chunk", nvl_chunk);
  if (timeout <= Duration::zero()) reject("timeout", timeout.count(), "ns must be positive");
  if (host_workers < 0) reject("host_workers", host_workers, "must be >= 0 (0: automatic)");
  if (host_lanes < 1 || host_lanes > 32) reject("host_lanes", host_lanes, "must be in [1, 32]");
  if (num_nodes < 1 || num_nodes > kernels::protocol::kMaxNodes) {
    fail(Errc::invalid_argument, "a cluster of " + std::to_string(num_nodes) + " nodes: ferry supports 1.." +
                                     std::to_string(kernels::protocol::kMaxNodes));
  }
  if (local_size < 1 || local_size > kernels::protocol::kMaxLocalRanks) {
    fail(Errc::invalid_argument, std::to_string(local_size) + " ranks per node: ferry supports 1.." +
                                     std::to_string(kernels::protocol::kMaxLocalRanks));
  }
  // A buffer_bytes below what the rings need fails here, before any memory is registered.
  registered_bytes(*this, kernels::protocol::make_buffer_layout(layout_params(*this, num_nodes, local_size)));
}

Config Config::from_json(const std::string& text) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    fail(Errc::invalid_argument, std::string("Config JSON does not parse: ") + error.what());
  }
  if (!json.is_object()) fail(Errc::invalid_argument, "Config JSON must be an object of field: value");
  Config config;
  for (auto item = json.begin(); item != json.end(); ++item) {
    // Named references, not a structured binding: clang before 16 cannot capture one in the lambda below.
    const std::string& key = item.key();
    const nlohmann::json& value = item.value();
    bool known = false;
    for_each_field(config, [&](const char* name, auto& field) {
      if (key != name) return;
      known = true;
      using Field = std::remove_reference_t<decltype(field)>;
      if (!fits<Field>(value)) {
        fail(Errc::invalid_argument, "Config JSON: \"" + key + "\" must be " +
                                         (std::is_same_v<Field, bool> ? "true or false" : "an integer") +
                                         ", not " + value.dump());
      }
      field = value.get<Field>();
    });
    if (key == "timeout_s") {
      known = true;
      if (!value.is_number() || !(value.get<double>() > 0) || value.get<double>() > 1e9) {
        fail(Errc::invalid_argument,
             "Config JSON: \"timeout_s\" must be a positive number of seconds, not " + value.dump());
      }
      // Rounded, not truncated: a timeout written by to_json() reads back as the same nanoseconds.
      config.timeout = std::chrono::round<Duration>(std::chrono::duration<double>(value.get<double>()));
    }
    if (!known) fail(Errc::invalid_argument, "Config JSON: unknown key \"" + key + "\"");
  }
  return config;
}

Config Config::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(Errc::invalid_argument, "cannot read the Config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  try {
    return from_json(text.str());
  } catch (const Error& error) {
    fail(Errc::invalid_argument, path + ": " + error.what());
  }
}

std::string Config::to_json() const {
  nlohmann::ordered_json json;
  Config copy = *this;
  for_each_field(copy, [&](const char* name, auto& field) { json[name] = field; });
  json["timeout_s"] = std::chrono::duration<double>(timeout).count();
  return json.dump(2);
}

void Config::save(const std::string& path) const {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << to_json() << "\n";
    if (!out) fail(Errc::system, "cannot write the Config file " + temporary);
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0)
    fail_errno("rename " + temporary + " to " + path, errno);
}

kernels::protocol::LayoutParams layout_params(const Config& config, int num_nodes, int local_size) {
  kernels::protocol::LayoutParams params;
  params.topo = {num_nodes, local_size, config.num_channels()};
  params.max_hidden = config.max_hidden;
  params.max_topk = config.max_topk;
  params.rdma_slots = static_cast<std::uint64_t>(config.rdma_ring_slots);
  params.nvl_slots = static_cast<std::uint64_t>(config.nvl_ring_slots);
  return params;
}

std::size_t registered_bytes(const Config& config, const kernels::protocol::BufferLayout& layout) {
  if (config.buffer_bytes == 0) return layout.total_bytes;
  if (config.buffer_bytes < layout.total_bytes) {
    fail(Errc::invalid_argument,
         "Config::buffer_bytes = " + std::to_string(config.buffer_bytes) +
             " is too small for this config: it needs " + std::to_string(layout.total_bytes) +
             " bytes (max_hidden " + std::to_string(config.max_hidden) + ", max_topk " +
             std::to_string(config.max_topk) + ", " + std::to_string(config.num_channels()) +
             " channels, rdma_ring_slots " + std::to_string(config.rdma_ring_slots) + ", nvl_ring_slots " +
             std::to_string(config.nvl_ring_slots) + "; see buffer_size_hint())");
  }
  return config.buffer_bytes;
}

std::size_t buffer_size_hint(const Config& config, int num_nodes, int local_size) {
  // The hint is what the rings need, whatever buffer_bytes the config asks for.
  Config rings_only = config;
  rings_only.buffer_bytes = 0;
  rings_only.validate(num_nodes, local_size);
  return kernels::protocol::make_buffer_layout(layout_params(config, num_nodes, local_size)).total_bytes;
}

}  // namespace ferry
