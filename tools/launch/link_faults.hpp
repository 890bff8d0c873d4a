// Faults on the emulated cluster's wire (`ferry launch --netns --drop-rate P`): every packet a node sends on
// its link is dropped with probability P, by an nftables rule (numgen random) in that node's own network
// namespace. This kernel has no netem; nftables needs nothing but the `nft` tool. TCP (the store, UCX over
// tcp) retransmits what was dropped, so a job must give the same results, only later.
#pragma once

#include <cstdint>
#include <string>

namespace ferry::tools::launch {

struct DropCounts {
  std::uint64_t sent = 0;     // packets that reached the rule
  std::uint64_t dropped = 0;  // of those, dropped
};

// The nft commands (one argument, ';'-separated) that make `interface` drop packets with probability `rate`.
std::string drop_rule_commands(const std::string& interface, double rate);

// The two counters in `nft -j list table inet ferry_faults` output (sent first, then dropped); throws
// Errc::system when the text does not hold them.
DropCounts parse_drop_counts(const std::string& nft_json);

// Installs the rule inside network namespace `netns` (by name), through `ip netns exec`.
void install_drops(const std::string& ip_path, const std::string& nft_path, const std::string& netns,
                   const std::string& interface, double rate);
DropCounts read_drops(const std::string& ip_path, const std::string& nft_path, const std::string& netns);

}  // namespace ferry::tools::launch
