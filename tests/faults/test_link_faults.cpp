// The --drop-rate rule the launcher installs in every node's namespace, and how it reads back its counters.
#include <catch2/catch.hpp>
#include <string>

#include "ferry/core/error.hpp"
#include "launch/link_faults.hpp"

using ferry::tools::launch::drop_rule_commands;
using ferry::tools::launch::parse_drop_counts;

TEST_CASE("wire faults: the drop rule and its counters", "[faults]") {
  const std::string rule = drop_rule_commands("eth0", 0.01);
  CHECK_THAT(rule,
             Catch::Contains("oifname \"eth0\" counter numgen random mod 1000000 < 10000 counter drop"));
  CHECK_THAT(drop_rule_commands("eth0", 1e-9), Catch::Contains("< 1 counter"));  // never rounded to nothing
  CHECK_THROWS_AS(drop_rule_commands("eth0", 0), ferry::Error);
  CHECK_THROWS_AS(drop_rule_commands("eth0", 1), ferry::Error);

  const std::string listed =
      R"({"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "ferry_faults"}},)"
      R"( {"rule": {"family": "inet", "expr": [{"match": {}}, {"counter": {"packets": 1234, "bytes": 99}},)"
      R"( {"match": {}}, {"counter": {"packets": 12, "bytes": 9}}, {"drop": null}]}}]})";
  auto counts = parse_drop_counts(listed);
  CHECK(counts.sent == 1234);
  CHECK(counts.dropped == 12);
  CHECK_THROWS_AS(parse_drop_counts("not json"), ferry::Error);
  CHECK_THROWS_AS(parse_drop_counts(R"({"nftables": []})"), ferry::Error);
}
