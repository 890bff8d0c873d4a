#include "probe/link_matrix.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "ferry/core/error.hpp"
#include "plot/svg.hpp"

namespace ferry::tools::probe {
namespace {

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

std::string fixed(double value, int decimals) {
  return plot::format_number(value, decimals);
}

// [from][to] of one field, NaN on the diagonal and where nothing was measured.
std::vector<std::vector<double>> grid(const LinkMatrix& matrix, double Link::*field) {
  const std::size_t n = matrix.endpoints.size();
  std::vector<std::vector<double>> out(n, std::vector<double>(n, std::numeric_limits<double>::quiet_NaN()));
  for (const auto& link : matrix.links) {
    out[static_cast<std::size_t>(link.from)][static_cast<std::size_t>(link.to)] = link.*field;
  }
  return out;
}

nlohmann::json grid_json(const std::vector<std::vector<double>>& values) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& row : values) {
    nlohmann::json cells = nlohmann::json::array();
    for (double v : row) cells.push_back(std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v));
    rows.push_back(cells);
  }
  return rows;
}

std::string grid_text(const LinkMatrix& matrix, const std::vector<std::vector<double>>& values,
                      int decimals) {
  const std::string short_name = matrix.level == "node" ? "n" : "r";
  std::string out = "  from\\to";
  for (std::size_t j = 0; j < values.size(); ++j) {
    char cell[48];
    std::snprintf(cell, sizeof cell, "%9s", (short_name + std::to_string(j)).c_str());
    out += cell;
  }
  out += "\n";
  for (std::size_t i = 0; i < values.size(); ++i) {
    char head[48];
    std::snprintf(head, sizeof head, "  %-7s", (short_name + std::to_string(i)).c_str());
    out += head;
    for (double v : values[i]) {
      char cell[32];
      std::snprintf(cell, sizeof cell, "%9s", std::isnan(v) ? "-" : fixed(v, decimals).c_str());
      out += cell;
    }
    out += "\n";
  }
  return out;
}

}  // namespace

nlohmann::json to_json(const Link& l) {
  return {{"from", l.from},
          {"to", l.to},
          {"round", l.round},
          {"bytes", l.bytes},
          {"puts", l.puts},
          {"warmup_puts", l.warmup_puts},
          {"seconds", l.seconds},
          {"gbps", l.gbps},
          {"latency_iters", l.latency_iters},
          {"latency_us", l.latency_us}};
}

Link link_from_json(const nlohmann::json& j) {
  Link l;
  l.from = j.at("from");
  l.to = j.at("to");
  l.round = j.at("round");
  l.bytes = j.at("bytes");
  l.puts = j.at("puts");
  l.warmup_puts = j.at("warmup_puts");
  l.seconds = j.at("seconds");
  l.gbps = j.at("gbps");
  l.latency_iters = j.at("latency_iters");
  l.latency_us = j.at("latency_us");
  return l;
}

Findings analyze(const LinkMatrix& matrix, double fraction) {
  if (!(fraction > 0 && fraction <= 1)) {
    fail(Errc::invalid_argument, "the slow-link fraction must be in (0, 1], not " + std::to_string(fraction));
  }
  const int n = static_cast<int>(matrix.endpoints.size());
  Findings findings;
  findings.fraction = fraction;
  findings.best_gbps.assign(static_cast<std::size_t>(n), 0.0);
  std::vector<double> all;
  for (const auto& link : matrix.links) {
    if (link.from < 0 || link.from >= n || link.to < 0 || link.to >= n || link.from == link.to) {
      fail(Errc::invalid_argument, "link " + std::to_string(link.from) + " -> " + std::to_string(link.to) +
                                       " names no pair of the " + std::to_string(n) + " endpoints");
    }
    for (int end : {link.from, link.to}) {
      auto& best = findings.best_gbps[static_cast<std::size_t>(end)];
      best = std::max(best, link.gbps);
    }
    all.push_back(link.gbps);
  }
  findings.reference_gbps = median(findings.best_gbps);
  findings.median_link_gbps = median(all);
  const double threshold = fraction * findings.reference_gbps;
  for (std::size_t i = 0; i < matrix.links.size(); ++i) {
    if (matrix.links[i].gbps < threshold) findings.slow_links.push_back(static_cast<int>(i));
  }
  std::stable_sort(findings.slow_links.begin(), findings.slow_links.end(), [&](int a, int b) {
    return matrix.links[static_cast<std::size_t>(a)].gbps < matrix.links[static_cast<std::size_t>(b)].gbps;
  });
  for (int e = 0; e < n; ++e) {
    if (findings.best_gbps[static_cast<std::size_t>(e)] < threshold) findings.slow_endpoints.push_back(e);
  }
  return findings;
}

std::string endpoint_name(const LinkMatrix& matrix, int endpoint) {
  const auto& e = matrix.endpoints.at(static_cast<std::size_t>(endpoint));
  return matrix.level + " " + std::to_string(endpoint) + " (" + e.hostname + ", " + e.address + ")";
}

nlohmann::json to_json(const LinkMatrix& matrix, const Findings& findings) {
  nlohmann::json endpoints = nlohmann::json::array();
  for (std::size_t i = 0; i < matrix.endpoints.size(); ++i) {
    const auto& e = matrix.endpoints[i];
    endpoints.push_back({{"endpoint", i},
                         {"rank", e.rank},
                         {"node", e.node},
                         {"hostname", e.hostname},
                         {"address", e.address},
                         {"best_gbps", findings.best_gbps[i]}});
  }
  nlohmann::json links = nlohmann::json::array();
  for (const auto& l : matrix.links) links.push_back(to_json(l));
  nlohmann::json slow_links = nlohmann::json::array();
  for (int index : findings.slow_links) {
    const auto& l = matrix.links[static_cast<std::size_t>(index)];
    slow_links.push_back(
        {{"from", l.from},
         {"to", l.to},
         {"from_name", endpoint_name(matrix, l.from)},
         {"to_name", endpoint_name(matrix, l.to)},
         {"gbps", l.gbps},
         {"of_reference", findings.reference_gbps > 0 ? l.gbps / findings.reference_gbps : 0.0}});
  }
  nlohmann::json slow_endpoints = nlohmann::json::array();
  for (int e : findings.slow_endpoints) {
    slow_endpoints.push_back({{"endpoint", e},
                              {"name", endpoint_name(matrix, e)},
                              {"best_gbps", findings.best_gbps[static_cast<std::size_t>(e)]}});
  }
  return {{"level", matrix.level},
          {"message_bytes", matrix.message_bytes},
          {"rounds", matrix.rounds},
          {"endpoints", endpoints},
          {"links", links},
          {"gbps", grid_json(grid(matrix, &Link::gbps))},
          {"latency_us", grid_json(grid(matrix, &Link::latency_us))},
          {"fraction", findings.fraction},
          {"reference_gbps", findings.reference_gbps},
          {"median_link_gbps", findings.median_link_gbps},
          {"slow_links", slow_links},
          {"slow_endpoints", slow_endpoints}};
}

std::string format_text(const LinkMatrix& matrix, const Findings& findings) {
  std::string out;
  for (std::size_t i = 0; i < matrix.endpoints.size(); ++i) {
    out += "  " + std::string(matrix.level == "node" ? "n" : "r") + std::to_string(i) + " = " +
           endpoint_name(matrix, static_cast<int>(i)) + ", measured by rank " +
           std::to_string(matrix.endpoints[i].rank) + "\n";
  }
  out += "put bandwidth, GB/s (1e9 B/s), row = sender:\n" + grid_text(matrix, grid(matrix, &Link::gbps), 3);
  out += "put_signal latency, us (half round trip), row = initiator:\n" +
         grid_text(matrix, grid(matrix, &Link::latency_us), 1);
  out += "reference: median of each " + matrix.level + "'s best link = " + fixed(findings.reference_gbps, 3) +
         " GB/s (median of all links " + fixed(findings.median_link_gbps, 3) + "); slow below " +
         fixed(findings.fraction, 2) +
         " x reference = " + fixed(findings.fraction * findings.reference_gbps, 3) + " GB/s\n";
  if (findings.slow_links.empty()) {
    out += "no slow link\n";
    return out;
  }
  for (int index : findings.slow_links) {
    const auto& l = matrix.links[static_cast<std::size_t>(index)];
    out += "SLOW LINK " + endpoint_name(matrix, l.from) + " -> " + endpoint_name(matrix, l.to) + ": " +
           fixed(l.gbps, 3) + " GB/s = " + fixed(100 * l.gbps / findings.reference_gbps, 0) +
           "% of the reference\n";
  }
  for (int e : findings.slow_endpoints) {
    out += "SLOW " + std::string(matrix.level == "node" ? "NODE " : "RANK ") + endpoint_name(matrix, e) +
           ": its best link reaches " + fixed(findings.best_gbps[static_cast<std::size_t>(e)], 3) +
           " GB/s; look at its NIC, port and cable\n";
  }
  return out;
}

std::string heatmap_svg(const LinkMatrix& matrix, const Findings& findings, const std::string& title) {
  const auto values = grid(matrix, &Link::gbps);
  const std::size_t n = values.size();
  const double cell = n <= 8 ? 64 : n <= 32 ? 28 : 14, left = 110, top = 70;
  const double width = left + cell * static_cast<double>(n) + 40,
               height = top + cell * static_cast<double>(n) + 90;
  // Wide enough for the title and the legend lines at about 7 px a character.
  plot::SvgDocument svg(std::max({width, 7.5 * static_cast<double>(title.size()) + 40, 600.0}), height);
  svg.title(title);
  const std::string prefix = matrix.level == "node" ? "n" : "r";
  svg.text(left + cell * static_cast<double>(n) / 2, top - 28, "to " + matrix.level,
           {{"text-anchor", "middle"}});
  svg.text(16, top + cell * static_cast<double>(n) / 2, "from", {{"text-anchor", "start"}});
  std::vector<bool> slow(matrix.links.size(), false);
  for (int index : findings.slow_links) slow[static_cast<std::size_t>(index)] = true;
  for (std::size_t k = 0; k < n; ++k) {
    const double offset = static_cast<double>(k) * cell + cell / 2;
    svg.text(left + offset, top - 8, prefix + std::to_string(k), {{"text-anchor", "middle"}});
    svg.text(left - 8, top + offset + 4, prefix + std::to_string(k), {{"text-anchor", "end"}});
  }
  for (std::size_t i = 0; i < matrix.links.size(); ++i) {
    const auto& l = matrix.links[i];
    const double x = left + l.to * cell, y = top + l.from * cell;
    const double share = findings.reference_gbps > 0 ? l.gbps / findings.reference_gbps : 0;
    plot::Attributes attributes{{"class", slow[i] ? "cell slow" : "cell"},
                                {"data-from", std::to_string(l.from)},
                                {"data-to", std::to_string(l.to)},
                                {"data-gbps", fixed(l.gbps, 4)},
                                {"fill", plot::heat_color(share)}};
    if (slow[i]) {
      attributes.emplace_back("stroke", "black");
      attributes.emplace_back("stroke-width", "3");
    } else {
      attributes.emplace_back("stroke", "white");
    }
    svg.rect(x, y, cell, cell, attributes);
    if (cell >= 28) {
      svg.text(x + cell / 2, y + cell / 2 + 4, fixed(l.gbps, cell >= 64 ? 2 : 1),
               {{"text-anchor", "middle"}});
    }
  }
  for (std::size_t k = 0; k < n; ++k) {
    const double at = static_cast<double>(k) * cell;
    svg.rect(left + at, top + at, cell, cell, {{"class", "diagonal"}, {"fill", "#dddddd"}});
  }
  const double legend_y = top + cell * static_cast<double>(n) + 28;
  svg.text(left, legend_y,
           "GB/s; colour = share of the reference " + fixed(findings.reference_gbps, 3) +
               " GB/s (green 100%, red 0%)",
           {});
  svg.text(left, legend_y + 18,
           findings.slow_links.empty()
               ? std::string("no link below ") + fixed(findings.fraction, 2) + " x reference"
               : std::to_string(findings.slow_links.size()) + " link(s) below " +
                     fixed(findings.fraction, 2) + " x reference, outlined",
           {{"class", "verdict"}});
  return svg.str();
}

}  // namespace ferry::tools::probe
