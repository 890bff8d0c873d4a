// Pipeline schedules: names and shapes, the DualPipe / DualPipeV op lists against the DeepSeek reference
// (github.com/deepseek-ai/DualPipe, dualpipe/dualpipe.py and dualpipev.py), completeness of every schedule,
// and the simulator: deadlock and misuse detection, and the bubble against the README's published formulas.
//
// The literal op lists and per-phase counts below were recorded by running the reference's step() itself
// (with torch stubbed out and every compute, send and receive call replaced by a recorder), not derived from
// our generator.
#include <algorithm>
#include <catch2/catch.hpp>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/schedule.hpp"

using namespace ferry::model::pipeline;

namespace {

// The message of the ferry::Error that fn throws; fails the test if it throws nothing, something else, or an
// error that is not invalid_argument.
std::string invalid_argument_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ferry::Error& e) {
    REQUIRE(e.code() == ferry::Errc::invalid_argument);
    return e.what();
  }
  FAIL("expected ferry::Error(invalid_argument)");
  return "";
}

std::string work_text(const Work& w) {
  return std::to_string(w.micro_batch) + "." + std::to_string(w.chunk);
}

// "F<m>.<chunk>@<phase>", "F&B<f>/<b>@<phase>", "B|W|BW<m>.<chunk>@<phase>", space separated.
std::string render(const std::vector<Op>& ops) {
  std::string text;
  for (const Op& op : ops) {
    if (!text.empty()) text += ' ';
    text += to_string(op.kind);
    if (op.kind == OpKind::F)
      text += work_text(op.f);
    else if (op.kind == OpKind::FB)
      text += work_text(op.f) + "/" + work_text(op.b);
    else
      text += work_text(op.b);
    text += "@" + std::to_string(op.phase);
  }
  return text;
}

// Per phase, the count of each kind in the order F B W BW F&B, e.g. "3F3B3W" ("-" for an empty phase).
std::string phase_counts(const std::vector<Op>& ops) {
  int counts[8][5] = {};
  for (const Op& op : ops) {
    REQUIRE(op.phase >= 0);
    REQUIRE(op.phase < 8);
    ++counts[op.phase][static_cast<int>(op.kind)];
  }
  std::string text;
  for (int p = 0; p < 8; ++p) {
    if (p > 0) text += ' ';
    std::string group;
    for (OpKind k : {OpKind::F, OpKind::B, OpKind::W, OpKind::BW, OpKind::FB})
      if (counts[p][static_cast<int>(k)] > 0)
        group += std::to_string(counts[p][static_cast<int>(k)]) + to_string(k);
    text += group.empty() ? "-" : group;
  }
  return text;
}

ScheduleShape shape(ScheduleKind kind, int ranks, int micro_batches) {
  return {kind, ranks, micro_batches};
}

bool legal(const ScheduleShape& s) {
  try {
    validate(s);
    return true;
  } catch (const ferry::Error&) {
    return false;
  }
}

// Every legal shape with 1..8 ranks and a spread of micro-batch counts, for all four kinds.
std::vector<ScheduleShape> shape_grid() {
  std::vector<ScheduleShape> shapes;
  for (ScheduleKind kind :
       {ScheduleKind::none, ScheduleKind::one_f_one_b, ScheduleKind::dualpipe, ScheduleKind::dualpipev})
    for (int ranks = 1; ranks <= 8; ++ranks)
      for (int m : {1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 16, 17, 20, 24, 32, 33})
        if (legal(shape(kind, ranks, m))) shapes.push_back(shape(kind, ranks, m));
  return shapes;
}

// The cost of a rank's op list: BW is a B and a W, F&B the overlapped pair.
double work_of(const std::vector<Op>& ops, const OpCosts& costs) {
  double work = 0;
  for (const Op& op : ops) {
    switch (op.kind) {
      case OpKind::F:
        work += costs.F;
        break;
      case OpKind::B:
        work += costs.B;
        break;
      case OpKind::W:
        work += costs.W;
        break;
      case OpKind::BW:
        work += costs.B + costs.W;
        break;
      case OpKind::FB:
        work += costs.FB;
        break;
    }
  }
  return work;
}

double max_of(const std::vector<double>& v) {
  return *std::max_element(v.begin(), v.end());
}

}  // namespace

TEST_CASE("pipeline schedule: schedule names round-trip and bad names are refused", "[model][schedule]") {
  for (ScheduleKind kind :
       {ScheduleKind::none, ScheduleKind::one_f_one_b, ScheduleKind::dualpipe, ScheduleKind::dualpipev})
    REQUIRE(parse_schedule_kind(to_string(kind)) == kind);
  REQUIRE(std::string(to_string(ScheduleKind::one_f_one_b)) == "1f1b");
  REQUIRE(parse_schedule_kind("dualpipev") == ScheduleKind::dualpipev);
  for (const char* name : {"", "1F1B", "dual", "dualpipe ", "gpipe"}) {
    const std::string msg = invalid_argument_message([&] { parse_schedule_kind(name); });
    REQUIRE_THAT(msg, Catch::Contains("'" + std::string(name) + "'"));
    REQUIRE_THAT(msg, Catch::Contains("none, 1f1b, dualpipe, dualpipev"));
  }
  REQUIRE(std::string(to_string(OpKind::F)) == "F");
  REQUIRE(std::string(to_string(OpKind::B)) == "B");
  REQUIRE(std::string(to_string(OpKind::W)) == "W");
  REQUIRE(std::string(to_string(OpKind::BW)) == "BW");
  REQUIRE(std::string(to_string(OpKind::FB)) == "F&B");
}

TEST_CASE("pipeline schedule: validate names the field and the requirement", "[model][schedule]") {
  auto msg = [](ScheduleKind kind, int ranks, int m) {
    return invalid_argument_message([&] { validate(shape(kind, ranks, m)); });
  };
  REQUIRE_THAT(msg(ScheduleKind::one_f_one_b, 0, 4), Catch::Contains("ranks must be >= 1"));
  REQUIRE_THAT(msg(ScheduleKind::dualpipev, 2, 0), Catch::Contains("micro_batches must be >= 1"));
  REQUIRE_THAT(msg(ScheduleKind::none, 2, 4), Catch::Contains("ranks must be 1"));
  REQUIRE_THAT(msg(ScheduleKind::dualpipe, 3, 12), Catch::Contains("ranks must be even"));
  REQUIRE_THAT(msg(ScheduleKind::dualpipe, 4, 9), Catch::Contains("micro_batches must be even"));
  REQUIRE_THAT(msg(ScheduleKind::dualpipe, 4, 6), Catch::Contains("micro_batches must be >= 2 * ranks = 8"));
  REQUIRE_THAT(msg(ScheduleKind::dualpipev, 4, 7), Catch::Contains("micro_batches must be >= 2 * ranks = 8"));
  // The message says which schedule and shape it judged.
  REQUIRE_THAT(msg(ScheduleKind::dualpipe, 4, 6), Catch::Contains("dualpipe (ranks 4, micro_batches 6)"));

  REQUIRE_NOTHROW(validate(shape(ScheduleKind::none, 1, 1)));
  REQUIRE_NOTHROW(validate(shape(ScheduleKind::one_f_one_b, 8, 3)));  // M < PP: legal, just never fills
  REQUIRE_NOTHROW(validate(shape(ScheduleKind::dualpipe, 2, 4)));
  REQUIRE_NOTHROW(validate(shape(ScheduleKind::dualpipe, 8, 16)));
  REQUIRE_NOTHROW(validate(shape(ScheduleKind::dualpipev, 1, 2)));
  REQUIRE_NOTHROW(validate(shape(ScheduleKind::dualpipev, 4, 9)));  // odd M is fine for the V
}

TEST_CASE("pipeline schedule: stages, chunks and places agree", "[model][schedule]") {
  REQUIRE(num_stages(shape(ScheduleKind::none, 1, 3)) == 1);
  REQUIRE(num_stages(shape(ScheduleKind::one_f_one_b, 4, 3)) == 4);
  REQUIRE(num_stages(shape(ScheduleKind::dualpipe, 4, 8)) == 4);
  REQUIRE(num_stages(shape(ScheduleKind::dualpipev, 4, 8)) == 8);
  REQUIRE(chunks_per_rank(shape(ScheduleKind::none, 1, 3)) == 1);
  REQUIRE(chunks_per_rank(shape(ScheduleKind::one_f_one_b, 4, 3)) == 1);
  REQUIRE(chunks_per_rank(shape(ScheduleKind::dualpipe, 4, 8)) == 2);
  REQUIRE(chunks_per_rank(shape(ScheduleKind::dualpipev, 4, 8)) == 2);

  const ScheduleShape dp = shape(ScheduleKind::dualpipe, 4, 8);
  REQUIRE(stage_of(dp, 1, 0) == 1);
  REQUIRE(stage_of(dp, 1, 1) == 2);
  REQUIRE(stage_of(dp, 3, 1) == 0);
  REQUIRE(place_of(dp, 0, 3).rank == 0);  // micro-batches [0, 4) enter at rank 0
  REQUIRE(place_of(dp, 0, 3).chunk == 0);
  REQUIRE(place_of(dp, 0, 4).rank == 3);  // micro-batches [4, 8) enter at rank 3
  REQUIRE(place_of(dp, 0, 4).chunk == 1);
  REQUIRE(place_of(dp, 3, 7).rank == 0);

  const ScheduleShape v = shape(ScheduleKind::dualpipev, 4, 8);
  REQUIRE(stage_of(v, 0, 1) == 7);  // the loss is on rank 0
  REQUIRE(stage_of(v, 3, 0) == 3);
  REQUIRE(stage_of(v, 3, 1) == 4);  // the turn of the V stays on the last rank
  REQUIRE(place_of(v, 5, 0).rank == 2);
  REQUIRE(place_of(v, 5, 0).chunk == 1);

  // place_of inverts stage_of for every micro-batch on the grid.
  for (const ScheduleShape& s : shape_grid())
    for (int r = 0; r < s.ranks; ++r)
      for (int c = 0; c < chunks_per_rank(s); ++c) {
        const int stage = stage_of(s, r, c);
        REQUIRE(stage >= 0);
        REQUIRE(stage < num_stages(s));
        for (int m = 0; m < s.micro_batches; ++m) {
          const Place p = place_of(s, stage, m);
          // dualpipe: each stage exists twice (once per direction), only one of them for this micro-batch.
          const bool mine = s.kind != ScheduleKind::dualpipe || (m < s.micro_batches / 2) == (c == 0);
          REQUIRE((p.rank == r && p.chunk == c) == mine);
        }
      }

  REQUIRE_THAT(invalid_argument_message([&] { stage_of(dp, 4, 0); }), Catch::Contains("rank 4"));
  REQUIRE_THAT(invalid_argument_message([&] { stage_of(dp, 0, 2); }), Catch::Contains("chunk 2"));
  REQUIRE_THAT(invalid_argument_message([&] { place_of(v, 8, 0); }), Catch::Contains("stage 8"));
  REQUIRE_THAT(invalid_argument_message([&] { place_of(v, 0, 8); }), Catch::Contains("micro_batch 8"));
  REQUIRE_THAT(invalid_argument_message([&] { rank_schedule(v, -1); }), Catch::Contains("rank -1"));
}

TEST_CASE("pipeline schedule: none and 1F1B lists", "[model][schedule]") {
  REQUIRE(render(rank_schedule(shape(ScheduleKind::none, 1, 3), 0)) ==
          "F0.0@0 BW0.0@0 F1.0@0 BW1.0@0 F2.0@0 BW2.0@0");
  const ScheduleShape s = shape(ScheduleKind::one_f_one_b, 4, 6);
  // PP-1-rank warm-up forwards, then alternate, then drain.
  REQUIRE(render(rank_schedule(s, 0)) ==
          "F0.0@0 F1.0@0 F2.0@0 F3.0@0 BW0.0@0 F4.0@0 BW1.0@0 F5.0@0 BW2.0@0 BW3.0@0 BW4.0@0 BW5.0@0");
  REQUIRE(render(rank_schedule(s, 2)) ==
          "F0.0@0 F1.0@0 BW0.0@0 F2.0@0 BW1.0@0 F3.0@0 BW2.0@0 F4.0@0 BW3.0@0 F5.0@0 BW4.0@0 BW5.0@0");
  REQUIRE(render(rank_schedule(s, 3)) ==
          "F0.0@0 BW0.0@0 F1.0@0 BW1.0@0 F2.0@0 BW2.0@0 F3.0@0 BW3.0@0 F4.0@0 BW4.0@0 F5.0@0 BW5.0@0");
  // Fewer micro-batches than ranks: every forward is a warm-up forward.
  REQUIRE(render(rank_schedule(shape(ScheduleKind::one_f_one_b, 4, 2), 0)) ==
          "F0.0@0 F1.0@0 BW0.0@0 BW1.0@0");
}

TEST_CASE("pipeline schedule: DualPipe and DualPipeV op lists match the reference op for op",
          "[model][schedule]") {
  const std::map<std::pair<int, int>, std::vector<std::string>> dualpipe = {
      {{2, 4},
       {"F0.0@1 F2.1@1 F1.0@3 BW2.1@3 F&B3.1/0.0@3 BW3.1@5 B1.0@5 W1.0@7",
        "F2.1@1 F0.0@1 F3.1@3 BW0.0@3 F&B1.0/2.1@3 BW1.0@5 B3.1@5 W3.1@7"}},
      {{4, 8},
       {"F0.0@0 F1.0@0 F2.0@1 F4.1@1 B4.1@2 W4.1@2 F5.1@2 F&B3.0/5.1@3 F&B6.1/0.0@3 BW6.1@4 F&B7.1/1.0@4 "
        "BW7.1@5 B2.0@5 W2.0@6 B3.0@6 W3.0@7",
        "F0.0@1 F4.1@1 F1.0@1 F5.1@1 F2.0@3 BW4.1@3 F&B6.1/0.0@3 F&B3.0/5.1@3 F&B7.1/1.0@3 BW6.1@5 BW2.0@5 "
        "B7.1@5 B3.0@5 W7.1@7 W3.0@7",
        "F4.1@1 F0.0@1 F5.1@1 F1.0@1 F6.1@3 BW0.0@3 F&B2.0/4.1@3 F&B7.1/1.0@3 F&B3.0/5.1@3 BW2.0@5 BW6.1@5 "
        "B3.0@5 B7.1@5 W3.0@7 W7.1@7",
        "F4.1@0 F5.1@0 F6.1@1 F0.0@1 B0.0@2 W0.0@2 F1.0@2 F&B7.1/1.0@3 F&B2.0/4.1@3 BW2.0@4 F&B3.0/5.1@4 "
        "BW3.0@5 B6.1@5 W6.1@6 B7.1@6 W7.1@7"}},
  };
  const std::map<std::pair<int, int>, std::vector<std::string>> dualpipev = {
      {{1, 2}, {"F0.0@1 F0.1@1 F1.0@3 BW0.1@3 F&B1.1/0.0@3 BW1.1@5 B1.0@5 W1.0@7"}},
      {{2, 4},
       {"F0.0@0 F1.0@0 F2.0@1 F0.1@1 B0.1@2 W0.1@2 F1.1@2 F&B3.0/1.1@3 F&B2.1/0.0@3 BW2.1@4 F&B3.1/1.0@4 "
        "BW3.1@5 B2.0@5 W2.0@6 B3.0@6 W3.0@7",
        "F0.0@1 F0.1@1 F1.0@1 F1.1@1 F2.0@3 BW0.1@3 F&B2.1/0.0@3 F&B3.0/1.1@3 F&B3.1/1.0@3 BW2.1@5 BW2.0@5 "
        "B3.1@5 B3.0@5 W3.1@7 W3.0@7"}},
      {{4, 10},
       {"F0.0@0 F1.0@0 F2.0@0 F3.0@0 F4.0@0 F5.0@0 F6.0@1 F0.1@1 B0.1@2 W0.1@2 F1.1@2 B1.1@2 W1.1@2 F2.1@2 "
        "B2.1@2 W2.1@2 F3.1@2 F&B7.0/3.1@3 F&B4.1/0.0@3 F&B8.0/4.1@3 F&B5.1/1.0@3 F&B9.0/5.1@3 F&B6.1/2.0@3 "
        "BW6.1@4 F&B7.1/3.0@4 BW7.1@4 F&B8.1/4.0@4 BW8.1@4 F&B9.1/5.0@4 BW9.1@5 B6.0@5 W6.0@6 B7.0@6 W7.0@6 "
        "B8.0@6 W8.0@6 B9.0@6 W9.0@7",
        "F0.0@0 F1.0@0 F2.0@0 F3.0@0 F4.0@1 F0.1@1 F5.0@1 F1.1@1 B0.1@2 W0.1@2 F2.1@2 B1.1@2 W1.1@2 F3.1@2 "
        "F&B6.0/2.1@3 F&B4.1/0.0@3 F&B7.0/3.1@3 F&B5.1/1.0@3 F&B8.0/4.1@3 F&B6.1/2.0@3 F&B9.0/5.1@3 "
        "F&B7.1/3.0@3 BW6.1@4 F&B8.1/4.0@4 BW7.1@4 F&B9.1/5.0@4 BW8.1@5 BW6.0@5 B9.1@5 B7.0@5 W9.1@6 B8.0@6 "
        "W7.0@6 B9.0@6 W8.0@7 W9.0@7",
        "F0.0@0 F1.0@0 F2.0@1 F0.1@1 F3.0@1 F1.1@1 F4.0@1 F2.1@1 B0.1@2 W0.1@2 F3.1@2 F&B5.0/1.1@3 "
        "F&B4.1/0.0@3 F&B6.0/2.1@3 F&B5.1/1.0@3 F&B7.0/3.1@3 F&B6.1/2.0@3 F&B8.0/4.1@3 F&B7.1/3.0@3 "
        "F&B9.0/5.1@3 F&B8.1/4.0@3 BW6.1@4 F&B9.1/5.0@4 BW7.1@5 BW6.0@5 BW8.1@5 B7.0@5 B9.1@5 B8.0@5 W7.0@6 "
        "B9.0@6 W9.1@7 W8.0@7 W9.0@7",
        "F0.0@1 F0.1@1 F1.0@1 F1.1@1 F2.0@1 F2.1@1 F3.0@1 F3.1@1 F4.0@3 BW0.1@3 F&B4.1/0.0@3 F&B5.0/1.1@3 "
        "F&B5.1/1.0@3 F&B6.0/2.1@3 F&B6.1/2.0@3 F&B7.0/3.1@3 F&B7.1/3.0@3 F&B8.0/4.1@3 F&B8.1/4.0@3 "
        "F&B9.0/5.1@3 F&B9.1/5.0@3 BW6.1@5 BW6.0@5 BW7.1@5 BW7.0@5 B8.1@5 B8.0@5 B9.1@5 B9.0@5 W8.1@7 "
        "W8.0@7 W9.1@7 W9.0@7"}},
  };
  for (const auto& [key, ranks] : dualpipe) {
    const ScheduleShape s = shape(ScheduleKind::dualpipe, key.first, key.second);
    for (int r = 0; r < s.ranks; ++r) {
      INFO("dualpipe ranks " << s.ranks << " M " << s.micro_batches << " rank " << r);
      REQUIRE(render(rank_schedule(s, r)) == ranks[r]);
    }
  }
  for (const auto& [key, ranks] : dualpipev) {
    const ScheduleShape s = shape(ScheduleKind::dualpipev, key.first, key.second);
    for (int r = 0; r < s.ranks; ++r) {
      INFO("dualpipev ranks " << s.ranks << " M " << s.micro_batches << " rank " << r);
      REQUIRE(render(rank_schedule(s, r)) == ranks[r]);
    }
  }
  // A middle rank of the 8-rank DualPipe in the README's figure (PP=8, M=20), op for op.
  REQUIRE(
      render(rank_schedule(shape(ScheduleKind::dualpipe, 8, 20), 3)) ==
      "F0.0@1 F10.1@1 F1.0@1 F11.1@1 F2.0@1 F12.1@1 F3.0@1 F13.1@1 F4.0@3 BW10.1@3 F&B14.1/0.0@3 "
      "F&B5.0/11.1@3 F&B15.1/1.0@3 F&B6.0/12.1@3 F&B16.1/2.0@3 F&B7.0/13.1@3 F&B17.1/3.0@3 F&B8.0/14.1@3 "
      "F&B18.1/4.0@3 F&B9.0/15.1@3 F&B19.1/5.0@3 BW16.1@5 BW6.0@5 BW17.1@5 BW7.0@5 B18.1@5 B8.0@5 B19.1@5 "
      "B9.0@5 W18.1@7 W8.0@7 W19.1@7 W9.0@7");
}

TEST_CASE("pipeline schedule: DualPipe and DualPipeV op counts per phase match the reference",
          "[model][schedule]") {
  // Per rank, per phase (step 1..8 of the reference's step()): counts of F, B, W, BW and F&B.
  const std::vector<std::pair<ScheduleShape, std::vector<std::string>>> cases = {
      {shape(ScheduleKind::dualpipe, 2, 4),
       {"- 2F - 1F1BW1F&B - 1B1BW - 1W", "- 2F - 1F1BW1F&B - 1B1BW - 1W"}},
      {shape(ScheduleKind::dualpipev, 2, 4),
       {"2F 2F 1F1B1W 2F&B 1BW1F&B 1B1BW 1B1W 1W", "- 4F - 1F1BW3F&B - 2B2BW - 2W"}},
      {shape(ScheduleKind::dualpipe, 4, 10),
       {"2F 2F 1F1B1W 4F&B 1BW1F&B 1B1BW 1B1W 1W", "- 4F - 1F1BW5F&B - 2B2BW - 2W",
        "- 4F - 1F1BW5F&B - 2B2BW - 2W", "2F 2F 1F1B1W 4F&B 1BW1F&B 1B1BW 1B1W 1W"}},
      {shape(ScheduleKind::dualpipev, 4, 10),
       {"6F 2F 3F3B3W 6F&B 3BW3F&B 1B1BW 3B3W 1W", "4F 4F 2F2B2W 8F&B 2BW2F&B 2B2BW 2B2W 2W",
        "2F 6F 1F1B1W 10F&B 1BW1F&B 3B3BW 1B1W 3W", "- 8F - 1F1BW11F&B - 4B4BW - 4W"}},
      {shape(ScheduleKind::dualpipe, 8, 20),
       {"6F 2F 3F3B3W 6F&B 3BW3F&B 1B1BW 3B3W 1W", "4F 4F 2F2B2W 8F&B 2BW2F&B 2B2BW 2B2W 2W",
        "2F 6F 1F1B1W 10F&B 1BW1F&B 3B3BW 1B1W 3W", "- 8F - 1F1BW11F&B - 4B4BW - 4W",
        "- 8F - 1F1BW11F&B - 4B4BW - 4W", "2F 6F 1F1B1W 10F&B 1BW1F&B 3B3BW 1B1W 3W",
        "4F 4F 2F2B2W 8F&B 2BW2F&B 2B2BW 2B2W 2W", "6F 2F 3F3B3W 6F&B 3BW3F&B 1B1BW 3B3W 1W"}},
      {shape(ScheduleKind::dualpipev, 8, 20),
       {"14F 2F 7F7B7W 10F&B 7BW7F&B 1B1BW 7B7W 1W", "12F 4F 6F6B6W 12F&B 6BW6F&B 2B2BW 6B6W 2W",
        "10F 6F 5F5B5W 14F&B 5BW5F&B 3B3BW 5B5W 3W", "8F 8F 4F4B4W 16F&B 4BW4F&B 4B4BW 4B4W 4W",
        "6F 10F 3F3B3W 18F&B 3BW3F&B 5B5BW 3B3W 5W", "4F 12F 2F2B2W 20F&B 2BW2F&B 6B6BW 2B2W 6W",
        "2F 14F 1F1B1W 22F&B 1BW1F&B 7B7BW 1B1W 7W", "- 16F - 1F1BW23F&B - 8B8BW - 8W"}},
  };
  for (const auto& [s, expected] : cases) {
    for (int r = 0; r < s.ranks; ++r) {
      INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches << " rank " << r);
      REQUIRE(phase_counts(rank_schedule(s, r)) == expected[r]);
    }
  }

  // The same counts in closed form, transcribed from the loop bounds of the reference's step(), over the
  // grid.
  for (const ScheduleShape& s : shape_grid()) {
    if (s.kind != ScheduleKind::dualpipe && s.kind != ScheduleKind::dualpipev) continue;
    const bool v = s.kind == ScheduleKind::dualpipev;
    const int n = v ? s.ranks : s.ranks / 2;
    const int count = v ? s.micro_batches : s.micro_batches / 2;
    for (int rank = 0; rank < s.ranks; ++rank) {
      const int r = v ? rank : std::min(rank, s.ranks - 1 - rank);
      const int t = r == n - 1 ? 1 : 0;  // the turning rank runs its first main-step pair as F then BW
      const int far = n - r - 1, near = r + 1, main = count - 2 * n + r + 1;
      auto group = [](int f, int b, int w, int bw, int fb) {
        std::string g;
        if (f) g += std::to_string(f) + "F";
        if (b) g += std::to_string(b) + "B";
        if (w) g += std::to_string(w) + "W";
        if (bw) g += std::to_string(bw) + "BW";
        if (fb) g += std::to_string(fb) + "F&B";
        return g.empty() ? std::string("-") : g;
      };
      const std::string expected = group(2 * far, 0, 0, 0, 0) + " " + group(2 * near, 0, 0, 0, 0) + " " +
                                   group(far, far, far, 0, 0) + " " + group(t, 0, 0, t, 2 * main - t) + " " +
                                   group(0, 0, 0, far, far) + " " + group(0, near, 0, near, 0) + " " +
                                   group(0, far, far, 0, 0) + " " + group(0, 0, near, 0, 0);
      INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches << " rank " << rank);
      REQUIRE(phase_counts(rank_schedule(s, rank)) == expected);
    }
  }
}

TEST_CASE(
    "pipeline schedule: every schedule runs each forward and backward exactly once, where place_of says",
    "[model][schedule]") {
  for (const ScheduleShape& s : shape_grid()) {
    INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches);
    const int stages = num_stages(s);
    std::vector<int> forwards(static_cast<std::size_t>(s.micro_batches) * stages, 0);
    std::vector<int> backwards(forwards.size(), 0);
    const bool dual = s.kind == ScheduleKind::dualpipe || s.kind == ScheduleKind::dualpipev;
    for (int r = 0; r < s.ranks; ++r) {
      const std::vector<Op> ops = rank_schedule(s, r);
      std::vector<std::size_t> pending_w;  // split backwards of this rank still owed a W
      int last_phase = 0;
      int last_f[2] = {-1, -1}, last_b[2] = {-1, -1};
      auto on_place = [&](const Work& w) {
        REQUIRE(w.chunk >= 0);
        REQUIRE(w.chunk < chunks_per_rank(s));
        REQUIRE(w.micro_batch >= 0);
        REQUIRE(w.micro_batch < s.micro_batches);
        const int stage = stage_of(s, r, w.chunk);
        const Place p = place_of(s, stage, w.micro_batch);
        REQUIRE(p.rank == r);
        REQUIRE(p.chunk == w.chunk);
        return static_cast<std::size_t>(w.micro_batch) * stages + stage;
      };
      auto forward = [&](const Work& w) {
        ++forwards[on_place(w)];
        REQUIRE(w.micro_batch > last_f[w.chunk]);  // each chunk takes its micro-batches in order
        last_f[w.chunk] = w.micro_batch;
      };
      auto backward = [&](const Work& w) {
        ++backwards[on_place(w)];
        REQUIRE(w.micro_batch > last_b[w.chunk]);
        last_b[w.chunk] = w.micro_batch;
      };
      for (const Op& op : ops) {
        // Phases are the reference's steps, in order; other schedules leave them 0.
        if (dual)
          REQUIRE(op.phase >= last_phase);
        else
          REQUIRE(op.phase == 0);
        last_phase = op.phase;
        switch (op.kind) {
          case OpKind::F:
            forward(op.f);
            break;
          case OpKind::FB:
            forward(op.f);
            backward(op.b);
            break;
          case OpKind::BW:
            backward(op.b);
            break;
          case OpKind::B:
            backward(op.b);
            pending_w.push_back(on_place(op.b));
            break;
          case OpKind::W: {
            // A W retires the oldest split backward of this rank (first in, first out, like the reference).
            REQUIRE(!pending_w.empty());
            REQUIRE(pending_w.front() == on_place(op.b));
            pending_w.erase(pending_w.begin());
            break;
          }
        }
      }
      REQUIRE(pending_w.empty());
    }
    REQUIRE(std::all_of(forwards.begin(), forwards.end(), [](int c) { return c == 1; }));
    REQUIRE(std::all_of(backwards.begin(), backwards.end(), [](int c) { return c == 1; }));
  }
}

TEST_CASE("pipeline schedule: simulate runs every schedule on the grid", "[model][schedule][sim]") {
  for (const OpCosts& costs :
       {OpCosts{}, OpCosts{1, 2, 1, 3}, OpCosts{2, 1, 0.5, 2.5}, OpCosts{1, 1, 0, 1}}) {
    for (const ScheduleShape& s : shape_grid()) {
      INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches);
      Simulation sim;
      REQUIRE_NOTHROW(sim = simulate(s, costs));
      REQUIRE(sim.busy.size() == static_cast<std::size_t>(s.ranks));
      REQUIRE(sim.bubble.size() == static_cast<std::size_t>(s.ranks));
      // Busy time from the op lists themselves, not from the simulator; the makespan is at least the busiest
      // rank's work and at most all work done one op at a time.
      double all_work = 0;
      for (int r = 0; r < s.ranks; ++r) {
        const double work = work_of(rank_schedule(s, r), costs);
        all_work += work;
        REQUIRE(sim.busy[r] == Approx(work));
        REQUIRE(sim.makespan >= work - 1e-9);
        REQUIRE(sim.bubble[r] == Approx(sim.makespan - work).margin(1e-9));
      }
      REQUIRE(sim.makespan <= all_work + 1e-9);
    }
  }
  // One rank: no bubble, the makespan is the work.
  const Simulation one = simulate(shape(ScheduleKind::none, 1, 5), OpCosts{1, 2, 3, 4});
  REQUIRE(one.makespan == Approx(5 * (1 + 2 + 3)));
  REQUIRE(one.bubble[0] == Approx(0));
}

TEST_CASE("pipeline schedule: 1F1B's simulated bubble is the published (PP-1)(F+B+W)",
          "[model][schedule][sim]") {
  // The README writes (PP-1)(F+B) with B a full backward: B + W here. It holds for any costs and any M >= 1.
  for (const OpCosts& costs : {OpCosts{}, OpCosts{1, 2, 1, 3}, OpCosts{3, 1, 2, 1}, OpCosts{1, 1, 0, 2}}) {
    for (const ScheduleShape& s : shape_grid()) {
      if (s.kind != ScheduleKind::one_f_one_b && s.kind != ScheduleKind::none) continue;
      INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches);
      const Simulation sim = simulate(s, costs);
      for (double b : sim.bubble) REQUIRE(b == Approx(published_bubble(s, costs)));
    }
  }
  REQUIRE(published_bubble(shape(ScheduleKind::one_f_one_b, 4, 8), OpCosts{}) == Approx(9));
  REQUIRE(published_bubble(shape(ScheduleKind::none, 1, 8), OpCosts{}) == 0);
}

// DualPipe's published bubble (PP/2-1)(F&B + B - 3W), B a full backward, is what the simulation gives when
//   - F equals the input-gradient B (the README's figure draws them the same width) and W <= F, and
//   - F + W <= F&B <= F + B + W.
// Then the worst rank's bubble equals it, for every PP and M; with F&B = F + B + W (the pair costs what its
// parts cost back to back) every rank's does. DualPipeV is the same formula with PP counting its 2·ranks
// stages. Outside that region the formula is only an approximation; see the last section.
TEST_CASE("pipeline schedule: DualPipe and DualPipeV bubbles against the published formula",
          "[model][schedule][sim]") {
  std::vector<ScheduleShape> dual;
  for (const ScheduleShape& s : shape_grid())
    if (s.kind == ScheduleKind::dualpipe || s.kind == ScheduleKind::dualpipev) dual.push_back(s);

  SECTION("the published numbers") {
    REQUIRE(published_bubble(shape(ScheduleKind::dualpipe, 8, 20), OpCosts{}) == Approx(3));   // 3·(2+2-3)
    REQUIRE(published_bubble(shape(ScheduleKind::dualpipev, 4, 10), OpCosts{}) == Approx(3));  // 8 stages
    REQUIRE(published_bubble(shape(ScheduleKind::dualpipe, 2, 4), OpCosts{}) == Approx(0));
  }

  SECTION("every rank matches when F = B >= W and F&B = F + B + W") {
    for (const OpCosts& costs :
         {OpCosts{1, 1, 1, 3}, OpCosts{2, 2, 1, 5}, OpCosts{3, 3, 0, 6}, OpCosts{2, 2, 2, 6}}) {
      for (const ScheduleShape& s : dual) {
        INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches << " F&B " << costs.FB);
        const Simulation sim = simulate(s, costs);
        for (double b : sim.bubble) REQUIRE(b == Approx(published_bubble(s, costs)));
      }
    }
  }

  SECTION("the worst rank matches when F = B >= W and F + W <= F&B <= F + B + W") {
    for (const OpCosts& costs : {OpCosts{1, 1, 1, 2}, OpCosts{2, 2, 1, 3}, OpCosts{2, 2, 1, 4},
                                 OpCosts{4, 4, 3, 7}, OpCosts{2, 2, 0, 2}, OpCosts{2, 2, 2, 4.5}}) {
      for (const ScheduleShape& s : dual) {
        INFO(to_string(s.kind) << " ranks " << s.ranks << " M " << s.micro_batches << " F&B " << costs.FB);
        REQUIRE(max_of(simulate(s, costs).bubble) == Approx(published_bubble(s, costs)));
      }
    }
    // With the default costs (F = B = W = 1, F&B = 2) the outer ranks idle less than the middle ones.
    const Simulation sim = simulate(shape(ScheduleKind::dualpipe, 8, 20), OpCosts{});
    REQUIRE(sim.bubble == std::vector<double>{1, 2, 3, 3, 3, 3, 2, 1});
    REQUIRE(sim.makespan == Approx(52));
  }

  SECTION("outside that region the formula is off") {
    // An overlap better than F + W: the pair finishes before its neighbours can feed the next one.
    const ScheduleShape s = shape(ScheduleKind::dualpipe, 8, 20);
    REQUIRE(max_of(simulate(s, OpCosts{1, 1, 1, 1.5}).bubble) == Approx(4.5));
    REQUIRE(published_bubble(s, OpCosts{1, 1, 1, 1.5}) == Approx(1.5));
    // F != B: a slower forward costs more than the formula says, a slower backward less.
    REQUIRE(max_of(simulate(s, OpCosts{2, 1, 1, 4}).bubble) == Approx(12));
    REQUIRE(published_bubble(s, OpCosts{2, 1, 1, 4}) == Approx(9));
    REQUIRE(max_of(simulate(s, OpCosts{1, 2, 1, 4}).bubble) == Approx(11));
    REQUIRE(published_bubble(s, OpCosts{1, 2, 1, 4}) == Approx(12));
  }

  SECTION("DualPipeV on R ranks is DualPipe on 2R ranks cut in half") {
    // Same makespan, and rank r < R idles as long as DualPipe's rank r (and, by symmetry, rank 2R-1-r).
    for (const OpCosts& costs :
         {OpCosts{}, OpCosts{1, 2, 1, 3}, OpCosts{2, 1, 0.5, 3.5}, OpCosts{1, 1, 1, 1.5}}) {
      for (const ScheduleShape& v : dual) {
        if (v.kind != ScheduleKind::dualpipev) continue;
        INFO("ranks " << v.ranks << " M " << v.micro_batches << " F&B " << costs.FB);
        const Simulation half = simulate(v, costs);
        const Simulation full =
            simulate(shape(ScheduleKind::dualpipe, 2 * v.ranks, 2 * v.micro_batches), costs);
        REQUIRE(half.makespan == Approx(full.makespan));
        for (int r = 0; r < v.ranks; ++r) {
          REQUIRE(half.bubble[r] == Approx(full.bubble[r]));
          REQUIRE(half.bubble[r] == Approx(full.bubble[2 * v.ranks - 1 - r]));
        }
      }
    }
  }

  SECTION("DualPipe idles less than 1F1B at the same ranks and M") {
    for (const OpCosts& costs :
         {OpCosts{}, OpCosts{1, 1, 1, 3}, OpCosts{1, 2, 1, 3}, OpCosts{2, 1, 0.5, 3.5}}) {
      for (const ScheduleShape& s : dual) {
        if (s.kind != ScheduleKind::dualpipe) continue;
        INFO("ranks " << s.ranks << " M " << s.micro_batches << " costs " << costs.F << " " << costs.B << " "
                      << costs.W << " " << costs.FB);
        const Simulation ours = simulate(s, costs);
        const Simulation base = simulate(shape(ScheduleKind::one_f_one_b, s.ranks, s.micro_batches), costs);
        REQUIRE(max_of(ours.bubble) < max_of(base.bubble));
      }
    }
  }

  SECTION("DualPipeV idles less than 1F1B at the same ranks and M unless the forward dominates") {
    // Its V has twice the stages of a 1F1B on the same ranks, so the comparison is closer.
    for (const OpCosts& costs : {OpCosts{}, OpCosts{1, 1, 1, 3}, OpCosts{1, 2, 1, 3}, OpCosts{1, 2, 2, 4}}) {
      for (const ScheduleShape& s : dual) {
        if (s.kind != ScheduleKind::dualpipev || s.ranks < 2) continue;  // one rank: neither idles
        INFO("ranks " << s.ranks << " M " << s.micro_batches << " costs " << costs.F << " " << costs.B << " "
                      << costs.W << " " << costs.FB);
        const Simulation ours = simulate(s, costs);
        const Simulation base = simulate(shape(ScheduleKind::one_f_one_b, s.ranks, s.micro_batches), costs);
        REQUIRE(max_of(ours.bubble) < max_of(base.bubble));
      }
    }
    // A forward twice the input backward: 12 against 10.5 on 4 ranks.
    const OpCosts slow_forward{2, 1, 0.5, 3};
    REQUIRE(max_of(simulate(shape(ScheduleKind::dualpipev, 4, 8), slow_forward).bubble) == Approx(12));
    REQUIRE(max_of(simulate(shape(ScheduleKind::one_f_one_b, 4, 8), slow_forward).bubble) == Approx(10.5));
  }
}

TEST_CASE("pipeline schedule: simulate refuses broken op lists, naming the rank and op",
          "[model][schedule][sim]") {
  const ScheduleShape s = shape(ScheduleKind::one_f_one_b, 2, 2);
  const OpCosts costs;
  auto f = [](int m, int chunk = 0) { return Op{OpKind::F, Work{m, chunk}, Work{}, 0}; };
  auto b = [](OpKind kind, int m, int chunk = 0) { return Op{kind, Work{}, Work{m, chunk}, 0}; };

  // The hand-made lists are fine as they stand.
  const std::vector<Op> rank1 = {f(0), b(OpKind::BW, 0), f(1), b(OpKind::BW, 1)};
  REQUIRE_NOTHROW(simulate(s, {{f(0), f(1), b(OpKind::BW, 0), b(OpKind::BW, 1)}, rank1}, costs));
  REQUIRE_NOTHROW(simulate(
      s, {{f(0), f(1), b(OpKind::B, 0), b(OpKind::B, 1), b(OpKind::W, 0), b(OpKind::W, 1)}, rank1}, costs));

  // Rank 0 wants micro-batch 1's input gradient before it has sent micro-batch 1 forward.
  std::string msg = invalid_argument_message([&] {
    simulate(s, {{f(0), b(OpKind::BW, 1), f(1), b(OpKind::BW, 0)}, rank1}, costs);
  });
  REQUIRE_THAT(msg, Catch::Contains("deadlock"));
  REQUIRE_THAT(msg, Catch::Contains("rank 0 op 1 BW(micro_batch 1, chunk 0)"));
  REQUIRE_THAT(
      msg, Catch::Contains("rank 1 op 2 F(micro_batch 1, chunk 0) waits for F of (micro_batch 1, stage 0)"));

  // A W before its own B on the same rank never becomes ready.
  msg = invalid_argument_message([&] {
    simulate(s, {{f(0), f(1), b(OpKind::W, 0), b(OpKind::B, 0), b(OpKind::BW, 1)}, rank1}, costs);
  });
  REQUIRE_THAT(
      msg, Catch::Contains("rank 0 op 2 W(micro_batch 0, chunk 0) waits for B of (micro_batch 0, stage 0)"));

  msg = invalid_argument_message([&] {
    simulate(s, {{f(0), f(0), f(1), b(OpKind::BW, 0), b(OpKind::BW, 1)}, rank1}, costs);
  });
  REQUIRE_THAT(msg, Catch::Contains("rank 0 op 1 F(micro_batch 0, chunk 0): this forward runs twice"));

  msg = invalid_argument_message([&] { simulate(s, {{f(0), f(1), b(OpKind::BW, 0)}, rank1}, costs); });
  REQUIRE_THAT(msg, Catch::Contains("rank 0 never runs the backward of (micro_batch 1, stage 0"));

  msg = invalid_argument_message([&] {
    simulate(s, {{f(0), f(1), b(OpKind::BW, 0), b(OpKind::B, 1)}, rank1}, costs);
  });
  REQUIRE_THAT(msg, Catch::Contains("rank 0 never runs the W"));

  msg = invalid_argument_message([&] {
    simulate(s, {{f(0), f(1), b(OpKind::BW, 0), b(OpKind::BW, 1), b(OpKind::W, 1)}, rank1}, costs);
  });
  REQUIRE_THAT(msg,
               Catch::Contains("rank 0 op 4 W(micro_batch 1, chunk 0): its backward already ran in full"));

  msg = invalid_argument_message([&] { simulate(s, {{f(0), f(2)}, rank1}, costs); });
  REQUIRE_THAT(msg, Catch::Contains("rank 0 op 1 F(micro_batch 2, chunk 0): micro_batch is out of range"));

  msg = invalid_argument_message([&] { simulate(s, {{f(0)}}, costs); });
  REQUIRE_THAT(msg, Catch::Contains("1 op lists for 2 ranks"));

  msg = invalid_argument_message([&] { simulate(s, {{f(0)}, rank1}, OpCosts{1, -1, 1, 2}); });
  REQUIRE_THAT(msg, Catch::Contains("OpCosts.B"));

  // DualPipe: micro-batch 0 enters at rank 0, so chunk 1 of rank 1 (stage 0 of the other direction) must not
  // run it.
  const ScheduleShape dp = shape(ScheduleKind::dualpipe, 2, 4);
  std::vector<std::vector<Op>> lists = {rank_schedule(dp, 0), rank_schedule(dp, 1)};
  REQUIRE_NOTHROW(simulate(dp, lists, costs));
  lists[1].insert(lists[1].begin(), f(0, 1));
  msg = invalid_argument_message([&] { simulate(dp, lists, costs); });
  REQUIRE_THAT(
      msg, Catch::Contains("rank 1 op 0 F(micro_batch 0, chunk 1): stage 0 of that micro-batch belongs to "
                           "rank 0 chunk 0"));
}
