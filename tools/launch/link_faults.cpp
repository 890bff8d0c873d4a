#include "launch/link_faults.hpp"

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "ferry/core/error.hpp"
#include "launch/subprocess.hpp"

namespace ferry::tools::launch {
namespace {

using namespace std::chrono_literals;

constexpr const char* kTable = "ferry_faults";
// numgen draws from [0, kScale): rates are honoured to one part in a million.
constexpr long long kScale = 1000000;

}  // namespace

std::string drop_rule_commands(const std::string& interface, double rate) {
  if (!(rate > 0 && rate < 1)) {
    fail(Errc::invalid_argument, "--drop-rate must be in (0, 1), not " + std::to_string(rate));
  }
  const long long threshold = std::max(1LL, std::llround(rate * kScale));
  const std::string table = std::string("inet ") + kTable;
  // The first counter sees every packet on the link, the second only those dropped.
  return "add table " + table + "; add chain " + table +
         " egress { type filter hook output priority 0; policy accept; }; add rule " + table +
         " egress oifname \"" + interface + "\" counter numgen random mod " + std::to_string(kScale) + " < " +
         std::to_string(threshold) + " counter drop";
}

DropCounts parse_drop_counts(const std::string& nft_json) {
  std::vector<std::uint64_t> counters;
  try {
    const auto doc = nlohmann::json::parse(nft_json);
    for (const auto& item : doc.at("nftables")) {
      if (!item.contains("rule")) continue;
      for (const auto& expr : item["rule"].at("expr")) {
        if (expr.contains("counter")) counters.push_back(expr["counter"].at("packets").get<std::uint64_t>());
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::system, std::string("ferry launch: unexpected output of nft -j list table: ") + e.what());
  }
  if (counters.size() != 2) {
    fail(Errc::system, "ferry launch: the drop rule has " + std::to_string(counters.size()) +
                           " counters, expected 2 (nft -j list table inet " + kTable + ")");
  }
  return {counters[0], counters[1]};
}

void install_drops(const std::string& ip_path, const std::string& nft_path, const std::string& netns,
                   const std::string& interface, double rate) {
  run_checked({ip_path, "netns", "exec", netns, nft_path, drop_rule_commands(interface, rate)},
              kAdminCommandTimeout);
}

DropCounts read_drops(const std::string& ip_path, const std::string& nft_path, const std::string& netns) {
  auto result =
      run_command({ip_path, "netns", "exec", netns, nft_path, "-j", "list", "table", "inet", kTable},
                  kAdminCommandTimeout);
  if (!result.succeeded()) {
    fail(Errc::system, "ferry launch: cannot read the drop counters of " + netns + ": " + result.output);
  }
  return parse_drop_counts(result.output);
}

}  // namespace ferry::tools::launch
