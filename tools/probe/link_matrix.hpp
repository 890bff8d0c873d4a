// What `ferry probe fabric` measured, and what it concludes: a matrix of directed links between endpoints
// (nodes, or ranks on one node), the links that fall short, and the endpoints behind them.
//
// Which links are slow. The median of all links is no reference: with one slow node among three, four of the
// six directed links touch it and the median is the slow rate. Instead each endpoint's capacity is taken as
// its best link (in either direction: a NIC and its cable can do at least that), and the reference is the
// median of those capacities. A link below `fraction` x reference is named with both ends; an endpoint whose
// best link is itself below `fraction` x reference is named as a slow endpoint (its NIC, cable or port),
// since no link through it reaches the others. A bad cable between two healthy nodes names that one link
// only.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ferry::tools::probe {

struct Endpoint {
  int rank = 0;  // the rank that measured for this endpoint
  int node = 0;
  std::string hostname;
  std::string address;
};

struct Link {
  int from = 0;  // endpoint indices
  int to = 0;
  int round = 0;            // the round of the schedule it was measured in
  std::uint64_t bytes = 0;  // timed bytes put from -> to
  int puts = 0;             // timed puts (bytes / message size)
  int warmup_puts = 0;      // untimed puts before them
  double seconds = 0;       // first timed put to the flush that completed the last
  double gbps = 0;          // bytes / seconds / 1e9
  int latency_iters = 0;    // put_signal ping-pongs started by `from`
  double latency_us = 0;    // half their mean round trip
};

struct LinkMatrix {
  std::string level;  // "node" or "rank"
  std::vector<Endpoint> endpoints;
  std::vector<Link> links;  // every ordered pair once
  std::size_t message_bytes = 0;
  int rounds = 0;
};

struct Findings {
  double fraction = 0.8;
  std::vector<double> best_gbps;    // per endpoint: its best link, either direction
  double reference_gbps = 0;        // median of best_gbps
  double median_link_gbps = 0;      // median of every link, for the record
  std::vector<int> slow_links;      // indices into LinkMatrix::links, slowest first
  std::vector<int> slow_endpoints;  // ascending
};

// One link as JSON ({"from", "to", "round", "bytes", "puts", "warmup_puts", "seconds", "gbps",
// "latency_iters", "latency_us"}) and back; link_from_json throws nlohmann's exceptions on a missing field.
nlohmann::json to_json(const Link& link);
Link link_from_json(const nlohmann::json& json);

// Throws Errc::invalid_argument when fraction is not in (0, 1] or a link names an endpoint out of range.
Findings analyze(const LinkMatrix& matrix, double fraction);

// "node 2 (node2, 10.200.3.3)" or "rank 1 (host, 127.0.0.1)".
std::string endpoint_name(const LinkMatrix& matrix, int endpoint);

// {"level", "message_bytes", "rounds", "endpoints": [...], "links": [...], "gbps": [[...]], "latency_us":
// [[...]], "fraction", "reference_gbps", "median_link_gbps", "best_gbps", "slow_links": [{"from", "to",
// "from_name", "to_name", "gbps", "of_reference"}], "slow_endpoints": [{"endpoint", "name", "best_gbps"}]}.
// Matrices are [from][to], null on the diagonal.
nlohmann::json to_json(const LinkMatrix& matrix, const Findings& findings);

// The GB/s and latency matrices, the reference and the verdict, as printed on stdout.
std::string format_text(const LinkMatrix& matrix, const Findings& findings);

// The GB/s matrix as an SVG heatmap: one <rect class="cell"> per link (class "cell slow" and a dark outline
// for slow ones) with data-from, data-to and data-gbps, coloured by the fraction of the reference.
std::string heatmap_svg(const LinkMatrix& matrix, const Findings& findings, const std::string& title);

}  // namespace ferry::tools::probe
