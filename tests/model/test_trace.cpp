// Pipeline traces: the recorder, the Chrome trace format both ways, overlap metrics on hand-built timelines
// with known answers, the SVG timeline, and `ferry trace` on a written file.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../peer/launch_run.hpp"
#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/trace.hpp"

using namespace ferry::model::pipeline;

namespace {

TraceEvent ev(std::string name, std::string category, int rank, Lane lane, double start, double end,
              int step = -1, int micro_batch = -1, int chunk = -1) {
  TraceEvent e;
  e.name = std::move(name);
  e.category = std::move(category);
  e.rank = rank;
  e.lane = lane;
  e.start_us = start;
  e.end_us = end;
  e.step = step;
  e.micro_batch = micro_batch;
  e.chunk = chunk;
  return e;
}

TraceEvent step_event(int rank, int step, double start, double end) {
  return ev("step", "step", rank, Lane::ops, start, end, step);
}

// The worked example: window [0, 100] µs; compute [0,30] (with [10,20] inside it, counted once) and [50,80];
// a2a [20,60] and [65,90]; pp [85,95]. compute 60, a2a 65, a2a ∩ compute = [20,30] + [50,60] + [65,80] = 35,
// exposed 30, compute ∪ a2a = [0,90], so a bubble of 10 (the pp send alone does not count as busy).
std::vector<TraceEvent> worked_example(int rank = 0, int step = 0, double offset = 0) {
  return {step_event(rank, step, offset + 0, offset + 100),
          ev("attn(F)", "compute", rank, Lane::compute, offset + 0, offset + 30, step, 0),
          ev("mlp(F)", "compute", rank, Lane::compute, offset + 10, offset + 20, step, 0),
          ev("mlp(B)", "compute", rank, Lane::compute, offset + 50, offset + 80, step, 1),
          ev("dispatch(F)", "a2a", rank, Lane::comm, offset + 20, offset + 60, step, 0),
          ev("combine(B)", "a2a", rank, Lane::comm, offset + 65, offset + 90, step, 1),
          ev("pp-send", "pp", rank, Lane::comm, offset + 85, offset + 95, step, 1)};
}

const double kUs = 1e-6;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

std::string temp_file(const std::string& stem, const std::string& ext) {
  return ferry::test::temp_path(stem) + ext;
}

// Runs f, which must throw ferry::Error with invalid_argument, and returns the message.
template <typename F>
std::string invalid_argument_message(F&& f) {
  try {
    f();
  } catch (const ferry::Error& e) {
    CHECK(e.code() == ferry::Errc::invalid_argument);
    return e.what();
  }
  FAIL("no ferry::Error thrown");
  return {};
}

}  // namespace

TEST_CASE("overlap metrics of the worked example", "[trace]") {
  auto events = worked_example();
  // A comm event that is neither expert all-to-all nor pipeline traffic counts in no comm column.
  events.push_back(ev("barrier", "sync", 0, Lane::comm, 60, 70));
  const auto metrics = overlap_metrics(events);
  REQUIRE(metrics.size() == 1);
  const OverlapMetrics& m = metrics[0];
  CHECK(m.rank == 0);
  CHECK(m.step == 0);
  CHECK(m.wall_s == Approx(100 * kUs).epsilon(1e-12));
  CHECK(m.compute_s == Approx(60 * kUs).epsilon(1e-12));
  CHECK(m.comm_s == Approx(65 * kUs).epsilon(1e-12));
  CHECK(m.pp_comm_s == Approx(10 * kUs).epsilon(1e-12));
  CHECK(m.overlapped_s == Approx(35 * kUs).epsilon(1e-12));
  CHECK(m.exposed_comm_s == Approx(30 * kUs).epsilon(1e-12));
  CHECK(m.overlap_ratio == Approx(7.0 / 13.0).epsilon(1e-12));
  CHECK(m.bubble_s == Approx(10 * kUs).epsilon(1e-12));
  CHECK(m.bubble_ratio == Approx(0.1).epsilon(1e-12));
}

TEST_CASE("overlap metrics clip every interval to the step window", "[trace]") {
  const std::vector<TraceEvent> events{
      step_event(0, 4, 100, 200),
      ev("attn(B)", "compute", 0, Lane::compute, 50, 150),  // 50 inside
      ev("mlp(B)", "compute", 0, Lane::compute, 300, 400),  // outside
      ev("combine(B)", "a2a", 0, Lane::comm, 180, 300),     // 20 inside, none under compute
      ev("dispatch(B)", "a2a", 0, Lane::comm, 0, 90),       // outside
      ev("F", "op", 0, Lane::ops, 90, 110, 4, 0),           // 10 inside
      ev("F", "op", 0, Lane::ops, 10, 20, 3, 0),            // outside: not counted
      ev("B", "op", 0, Lane::ops, 150, 150, 4, 0)};         // an instant inside: counted with 0 s
  const auto metrics = overlap_metrics(events);
  REQUIRE(metrics.size() == 1);
  const OverlapMetrics& m = metrics[0];
  CHECK(m.step == 4);
  CHECK(m.wall_s == Approx(100 * kUs));
  CHECK(m.compute_s == Approx(50 * kUs));
  CHECK(m.comm_s == Approx(20 * kUs));
  CHECK(m.overlapped_s == 0);
  CHECK(m.exposed_comm_s == Approx(20 * kUs));
  CHECK(m.overlap_ratio == 0);
  CHECK(m.bubble_s == Approx(30 * kUs));
  CHECK(m.f_count == 1);
  CHECK(m.f_s == Approx(10 * kUs));
  CHECK(m.b_count == 1);
  CHECK(m.b_s == 0);
}

TEST_CASE("overlap metrics: compute ending an ulp into the all-to-all it issued is not overlap", "[trace]") {
  // What a Chrome trace gives back for a compute segment that ended the instant its all-to-all was issued:
  // ts + dur one rounding past the end. Below the clock's 1 ns it counts as touching; 2 ns count.
  const double issued = 5000.123;
  const std::vector<TraceEvent> touching{step_event(0, 0, 0, 10000),
                                         ev("attn(F)", "compute", 0, Lane::compute, 10, issued + 1e-9),
                                         ev("dispatch(F)", "a2a", 0, Lane::comm, issued, issued + 100)};
  CHECK(overlap_metrics(touching)[0].overlapped_s == 0);
  CHECK(overlap_metrics(touching)[0].overlap_ratio == 0);
  const std::vector<TraceEvent> overlapping{step_event(0, 0, 0, 10000),
                                            ev("attn(F)", "compute", 0, Lane::compute, 10, issued + 2e-3),
                                            ev("dispatch(F)", "a2a", 0, Lane::comm, issued, issued + 100)};
  CHECK(overlap_metrics(overlapping)[0].overlapped_s == Approx(2e-3 * kUs));
}

TEST_CASE("overlap metrics keep ranks and steps apart", "[trace]") {
  // Rank 0: the worked example in steps 0 and 1. Rank 1: all compute in step 0, all a2a in step 1 (whose
  // window is longer), recorded with the same times as rank 0's events.
  std::vector<TraceEvent> events = worked_example(0, 0, 0);
  for (const TraceEvent& e : worked_example(0, 1, 100)) events.push_back(e);
  events.push_back(step_event(1, 1, 100, 300));
  events.push_back(step_event(1, 0, 0, 100));
  events.push_back(ev("attn(F)", "compute", 1, Lane::compute, 0, 100));
  events.push_back(ev("dispatch(F)", "a2a", 1, Lane::comm, 100, 250));
  std::reverse(events.begin(), events.end());  // the input order must not matter
  const auto metrics = overlap_metrics(events);
  REQUIRE(metrics.size() == 4);
  CHECK(metrics[0].step == 0);
  CHECK(metrics[0].rank == 0);
  CHECK(metrics[1].step == 0);
  CHECK(metrics[1].rank == 1);
  CHECK(metrics[2].step == 1);
  CHECK(metrics[2].rank == 0);
  CHECK(metrics[3].step == 1);
  CHECK(metrics[3].rank == 1);
  for (int i : {0, 2}) {
    INFO("rank 0, step " << metrics[i].step);
    CHECK(metrics[i].compute_s == Approx(60 * kUs));
    CHECK(metrics[i].comm_s == Approx(65 * kUs));
    CHECK(metrics[i].overlapped_s == Approx(35 * kUs));
    CHECK(metrics[i].bubble_s == Approx(10 * kUs));
  }
  CHECK(metrics[1].compute_s == Approx(100 * kUs));
  CHECK(metrics[1].comm_s == 0);
  CHECK(metrics[1].bubble_s == 0);
  CHECK(metrics[3].wall_s == Approx(200 * kUs));
  CHECK(metrics[3].compute_s == 0);
  CHECK(metrics[3].comm_s == Approx(150 * kUs));
  CHECK(metrics[3].exposed_comm_s == Approx(150 * kUs));
  CHECK(metrics[3].bubble_s == Approx(50 * kUs));
  CHECK(metrics[3].bubble_ratio == Approx(0.25));

  // A rank without a step event has nothing to measure; two windows for one step is an error.
  events.push_back(ev("attn(F)", "compute", 7, Lane::compute, 0, 10));
  CHECK(overlap_metrics(events).size() == 4);
  events.push_back(step_event(1, 0, 400, 500));
  const std::string message = invalid_argument_message([&] { overlap_metrics(events); });
  CHECK_THAT(message, Catch::Contains("rank 1") && Catch::Contains("step 0"));
}

TEST_CASE("overlap metrics: mean durations and counts of the schedule ops", "[trace]") {
  const std::vector<TraceEvent> events{
      step_event(2, 0, 0, 100), ev("F", "op", 2, Lane::ops, 0, 10, 0, 0),
      ev("F", "op", 2, Lane::ops, 10, 30, 0, 1), ev("B", "op", 2, Lane::ops, 30, 60, 0, 0),
      ev("F&B", "op", 2, Lane::ops, 60, 80, 0, 1), ev("BW", "op", 2, Lane::ops, 80, 90, 0, 1),
      ev("grad-reduce", "op", 2, Lane::ops, 90, 95),
      // A compute event named like an op is not an op.
      ev("W", "compute", 2, Lane::compute, 0, 5)};
  const auto metrics = overlap_metrics(events);
  REQUIRE(metrics.size() == 1);
  const OverlapMetrics& m = metrics[0];
  CHECK(m.rank == 2);
  CHECK(m.f_count == 2);
  CHECK(m.f_s == Approx(15 * kUs));
  CHECK(m.b_count == 1);
  CHECK(m.b_s == Approx(30 * kUs));
  CHECK(m.w_count == 0);
  CHECK(m.w_s == 0);
  CHECK(m.fb_count == 1);
  CHECK(m.fb_s == Approx(20 * kUs));
  CHECK(m.bw_count == 1);
  CHECK(m.bw_s == Approx(10 * kUs));
  CHECK(m.compute_s == Approx(5 * kUs));
}

TEST_CASE("sum_metrics adds seconds and recomputes ratios", "[trace]") {
  OverlapMetrics a, b;
  a.rank = b.rank = 3;
  a.step = 0;
  b.step = 1;
  a.wall_s = 1;
  a.comm_s = 1;
  a.overlapped_s = 1;
  a.overlap_ratio = 1;
  a.bubble_s = 0.5;
  a.f_s = 1;
  a.f_count = 1;
  b.wall_s = 3;
  b.comm_s = 3;
  b.overlapped_s = 0;
  b.exposed_comm_s = 3;
  b.bubble_s = 0.5;
  b.f_s = 2;
  b.f_count = 3;
  const OverlapMetrics t = sum_metrics({a, b});
  CHECK(t.rank == 3);
  CHECK(t.step == -1);
  CHECK(t.wall_s == 4);
  CHECK(t.comm_s == 4);
  CHECK(t.exposed_comm_s == 3);
  CHECK(t.overlap_ratio == Approx(0.25));  // not the mean of 1 and 0
  CHECK(t.bubble_ratio == Approx(0.25));
  CHECK(t.f_count == 4);
  CHECK(t.f_s == Approx(7.0 / 4));  // weighted by the counts
  CHECK(sum_metrics({}).wall_s == 0);
}

TEST_CASE("format_overlap_summary has a line per rank and a total", "[trace]") {
  std::vector<TraceEvent> events = worked_example(0, 0);
  for (const TraceEvent& e : worked_example(1, 0)) events.push_back(e);
  events.push_back(ev("F", "op", 1, Lane::ops, 0, 50, 0, 0));
  const std::string summary = format_overlap_summary(overlap_metrics(events));
  INFO(summary);
  CHECK_THAT(summary, Catch::Contains("rank") && Catch::Contains("overlap") && Catch::Contains("bubble"));
  CHECK(summary.find("\n0 ") != std::string::npos);
  CHECK(summary.find("\n1 ") != std::string::npos);
  CHECK(summary.find("\ntotal ") != std::string::npos);
  CHECK_THAT(summary, Catch::Contains("53.8%") && Catch::Contains("10.0%"));  // 35/65 hidden, 10/100 idle
  CHECK_THAT(summary, Catch::Contains("F 0.050 ms x1"));
  CHECK_THAT(format_overlap_summary({}), Catch::Contains("no \"step\" events"));
}

TEST_CASE("TraceRecorder records from two threads, stamps the rank and sorts", "[trace]") {
  const auto epoch = std::chrono::steady_clock::now();
  TraceRecorder recorder(5, true, epoch);
  CHECK(recorder.enabled());
  CHECK(recorder.rank() == 5);
  CHECK(recorder.us(epoch + std::chrono::milliseconds(3)) == Approx(3000));
  CHECK(recorder.now_us() >= 0);
  auto record = [&](Lane lane, int first) {
    for (int i = 0; i < 1000; ++i)
      recorder.add(ev("x", "compute", /*rank=*/0, lane, first + 2.0 * i, first + 2.0 * i + 1));
  };
  std::thread a(record, Lane::compute, 1), b(record, Lane::comm, 0);
  a.join();
  b.join();
  const auto events = recorder.events();
  REQUIRE(events.size() == 2000);
  CHECK(std::is_sorted(events.begin(), events.end(),
                       [](const TraceEvent& x, const TraceEvent& y) { return x.start_us < y.start_us; }));
  CHECK(std::all_of(events.begin(), events.end(), [](const TraceEvent& e) { return e.rank == 5; }));
  TraceRecorder moved = std::move(recorder);
  CHECK(moved.events().size() == 2000);
  moved.clear();
  CHECK(moved.events().empty());

  TraceRecorder disabled(1, false);
  disabled.add(ev("x", "compute", 1, Lane::compute, 0, 1));
  CHECK_FALSE(disabled.enabled());
  CHECK(disabled.events().empty());
}

TEST_CASE("Chrome trace: write then read gives the events back", "[trace]") {
  std::vector<TraceEvent> events = worked_example(0, 2);
  for (const TraceEvent& e : worked_example(1, 2, 0.125)) events.push_back(e);
  events.push_back(ev("mlp(W)", "compute", 1, Lane::compute, 1234.567891, 2345.678912, 2, 3, 1));
  events.push_back(ev("quote \" and \\ and <&>", "op", 0, Lane::ops, 5, 5));  // needs JSON escaping; 0 long
  const std::string path = temp_file("trace-roundtrip", ".json");
  write_chrome_trace(path, events);
  const auto back = read_chrome_trace(path);
  REQUIRE(back.size() == events.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    INFO("event " << i << " " << events[i].name);
    CHECK(back[i].name == events[i].name);
    CHECK(back[i].category == events[i].category);
    CHECK(back[i].rank == events[i].rank);
    CHECK(back[i].lane == events[i].lane);
    CHECK(back[i].start_us == events[i].start_us);
    CHECK(back[i].end_us == Approx(events[i].end_us).epsilon(1e-14));
    CHECK(back[i].step == events[i].step);
    CHECK(back[i].micro_batch == events[i].micro_batch);
    CHECK(back[i].chunk == events[i].chunk);
  }
  std::ostringstream text;
  write_chrome_trace(text, events);
  CHECK(parse_chrome_trace(text.str()).size() == events.size());

  // What Perfetto and chrome://tracing read: complete events in µs, and names for every pid and tid.
  const nlohmann::json doc = nlohmann::json::parse(slurp(path));
  CHECK(doc.at("displayTimeUnit") == "ms");
  const auto& list = doc.at("traceEvents");
  REQUIRE(list.is_array());
  std::set<std::pair<int, int>> x_tids, named_tids;
  std::set<int> named_pids;
  std::size_t complete = 0;
  for (const auto& e : list) {
    if (e.at("ph") == "X") {
      ++complete;
      CHECK(e.at("dur").get<double>() >= 0);
      CHECK(e.at("ts").is_number());
      x_tids.insert({e.at("pid").get<int>(), e.at("tid").get<int>()});
    } else if (e.at("ph") == "M" && e.at("name") == "process_name") {
      CHECK(e.at("args").at("name") == "rank " + std::to_string(e.at("pid").get<int>()));
      named_pids.insert(e.at("pid").get<int>());
    } else if (e.at("ph") == "M" && e.at("name") == "thread_name") {
      const int tid = e.at("tid").get<int>();
      const char* expected[] = {"compute", "comm", "ops"};
      REQUIRE(tid >= 0);
      REQUIRE(tid <= 2);
      CHECK(e.at("args").at("name") == expected[tid]);
      named_tids.insert({e.at("pid").get<int>(), tid});
    }
  }
  CHECK(complete == events.size());
  CHECK(named_pids == std::set<int>{0, 1});
  for (int pid : {0, 1})
    for (int tid : {0, 1, 2}) CHECK(named_tids.count({pid, tid}) == 1);
  for (int pid : {0, 1}) {
    CHECK(x_tids.count({pid, 0}) == 1);
    CHECK(x_tids.count({pid, 1}) == 1);
  }
  // The args carry only what applies.
  for (const auto& e : list) {
    if (e.at("ph") == "X" && e.at("name") == "mlp(W)") {
      CHECK(e.at("args") == nlohmann::json{{"step", 2}, {"micro_batch", 3}, {"chunk", 1}});
    } else if (e.at("ph") == "X" && e.at("name") == "pp-send") {
      CHECK(e.at("args") == nlohmann::json{{"step", 2}, {"micro_batch", 1}});
    }
  }
  std::filesystem::remove(path);

  // Times a viewer could not show are refused when writing.
  std::ostringstream sink;
  CHECK_THROWS_WITH(write_chrome_trace(sink, {ev("bad", "compute", 0, Lane::compute, 10, 5)}),
                    Catch::Contains("bad") && Catch::Contains("ends before it starts"));
  CHECK_THROWS_WITH(write_chrome_trace("/nonexistent-dir/trace.json", events),
                    Catch::Contains("/nonexistent-dir/trace.json"));
}

TEST_CASE("Chrome trace: malformed input is named", "[trace]") {
  auto parse_error = [](const std::string& text) {
    return invalid_argument_message([&] { parse_chrome_trace(text); });
  };
  CHECK_THAT(parse_error("this is not json"), Catch::Contains("not JSON"));
  CHECK_THAT(parse_error("{\"events\": []}"), Catch::Contains("no \"traceEvents\""));
  CHECK_THAT(parse_error("{\"traceEvents\": 3}"), Catch::Contains("not an array"));
  const std::string no_dur =
      R"J({"traceEvents":[{"name":"process_name","ph":"M","pid":0,"args":{"name":"rank 0"}},)J"
      R"J({"name":"attn(F)","ph":"X","ts":1,"pid":0,"tid":0}]})J";
  const std::string message = parse_error(no_dur);
  CHECK_THAT(message, Catch::Contains("traceEvents[1]") && Catch::Contains("attn(F)") &&
                          Catch::Contains("no \"dur\""));
  CHECK_THAT(parse_error(R"J({"traceEvents":[{"name":"a","ph":"X","ts":"1","dur":1,"pid":0,"tid":0}]})J"),
             Catch::Contains("\"ts\" is not a number"));
  CHECK_THAT(parse_error(R"J({"traceEvents":[{"name":"a","ph":"X","ts":1,"dur":1,"pid":0,"tid":7}]})J"),
             Catch::Contains("tid 7 is not a lane"));
  CHECK_THAT(parse_error(R"J({"traceEvents":[{"name":"a","ph":"B","ts":1,"pid":0,"tid":0}]})J"),
             Catch::Contains("phase \"B\""));
  CHECK_THAT(parse_error(R"J({"traceEvents":[{"name":"a","ph":"X","ts":1,"dur":-2,"pid":0,"tid":0}]})J"),
             Catch::Contains("negative"));
  CHECK_THAT(parse_error(R"J({"traceEvents":[{"name":"a","ph":"X","ts":1,"dur":2,"pid":0.5,"tid":0}]})J"),
             Catch::Contains("\"pid\" is not an integer"));
  // Both forms of the format; metadata only is an empty trace.
  CHECK(parse_chrome_trace(R"J([{"name":"a","ph":"X","ts":1,"dur":2,"pid":0,"tid":1}])J").size() == 1);
  CHECK(parse_chrome_trace(R"J({"traceEvents":[{"name":"process_name","ph":"M","pid":0}]})J").empty());

  // Files: the message names the path.
  const std::string path = temp_file("trace-malformed", ".json");
  {
    std::ofstream out(path);
    out << "{\"traceEvents\": [";
  }
  CHECK_THAT(invalid_argument_message([&] { read_chrome_trace(path); }),
             Catch::Contains(path) && Catch::Contains("not JSON"));
  std::filesystem::remove(path);
  CHECK_THAT(invalid_argument_message([&] { read_chrome_trace(path); }),
             Catch::Contains(path) && Catch::Contains("no such"));
}

TEST_CASE("Chrome trace: deep nesting is refused while parsing, and messages quote short excerpts",
          "[trace]") {
  auto parse_error = [](const std::string& text) {
    return invalid_argument_message([&] { parse_chrome_trace(text); });
  };
  // 100000 nested arrays: the error message used to dump them recursively and overflow the stack.
  CHECK_THAT(parse_error(std::string(100000, '[') + std::string(100000, ']')),
             Catch::Contains("JSON nested deeper than 32 levels"));
  CHECK_THAT(parse_error("{\"traceEvents\":[" + std::string(40, '[') + std::string(40, ']') + "]}"),
             Catch::Contains("nested deeper"));
  // The deepest a reader needs, and a few levels more, still parse to a message about the event.
  CHECK_THAT(parse_error("{\"traceEvents\":[" + std::string(20, '[') + std::string(20, ']') + "]}"),
             Catch::Contains("traceEvents[0]: not an object: [[[["));
  // A megabyte where a number belongs, a megabyte-long name and phase: quoted in at most 80 characters each.
  const std::string huge(1 << 20, 'x');
  const std::string message = parse_error(R"J({"traceEvents":[{"name":")J" + huge + R"J(","ph":"X","ts":")J" +
                                          huge + R"J(","dur":1,"pid":0,"tid":0}]})J");
  CHECK_THAT(message, Catch::Contains("\"ts\" is not a number: \"xxxx") && Catch::Contains("..."));
  CHECK(message.size() < 300);
  CHECK(parse_error(R"J({"traceEvents":[{"name":"a","ph":")J" + huge + R"J(","ts":1,"pid":0,"tid":0}]})J")
            .size() < 400);
  CHECK(parse_error("[" + huge).size() < 400);  // nlohmann's "last read" of an unterminated token
  // A multi-byte character is never cut in half.
  std::string accents;
  for (int i = 0; i < 100; ++i) accents += "\xc3\xa9";
  const std::string cut = parse_error(R"J({"traceEvents":[{"name":"a","ph":"X","ts":")J" + accents +
                                      R"J(","dur":1,"pid":0,"tid":0}]})J");
  const std::size_t dots = cut.find("...");
  REQUIRE(dots != std::string::npos);
  CHECK((static_cast<unsigned char>(cut[dots - 1]) & 0xC0) != 0xC0);  // not a lead byte left alone
}

TEST_CASE("SVG timeline: one box per event, escaped names, a step's window", "[trace]") {
  std::vector<TraceEvent> events = worked_example(0, 0);
  for (const TraceEvent& e : worked_example(1, 0)) events.push_back(e);
  for (const TraceEvent& e : worked_example(0, 1, 100)) events.push_back(e);
  events.push_back(ev("a<b>&c \"q\"", "compute", 1, Lane::compute, 30, 40, 0, 2));
  events.push_back(ev("F", "op", 0, Lane::ops, 0, 50, 0, 0));
  events.push_back(ev("mlp(W)", "compute", 0, Lane::compute, 80, 90, 0, 0));

  std::ostringstream out;
  SvgOptions options;
  options.title = "timeline <test> & more";
  write_timeline_svg(out, events, options);
  const std::string svg = out.str();
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.size() > 7);
  CHECK(svg.substr(svg.size() - 7) == "</svg>\n");
  CHECK(count(svg, "<rect") == events.size());
  CHECK(count(svg, "<rect class=\"ev\"") == events.size());
  CHECK(count(svg, "<text") == count(svg, "</text>"));
  CHECK(count(svg, "<title>") == count(svg, "</title>"));
  CHECK(count(svg, "<g") == count(svg, "</g>"));
  // Escaped everywhere: in the tooltip and in the title.
  CHECK(svg.find("a&lt;b&gt;&amp;c &quot;q&quot;") != std::string::npos);
  CHECK(svg.find("a<b>") == std::string::npos);
  CHECK(svg.find("timeline &lt;test&gt; &amp; more") != std::string::npos);
  for (std::size_t at = svg.find('&'); at != std::string::npos; at = svg.find('&', at + 1)) {
    const std::string entity = svg.substr(at, svg.find(';', at) - at + 1);
    CHECK((entity == "&amp;" || entity == "&lt;" || entity == "&gt;" || entity == "&quot;" ||
           entity == "&apos;"));
  }
  // Tooltips carry the details; the rows and the ranks are labelled; the legend names the kinds drawn.
  CHECK_THAT(svg, Catch::Contains("<title>mlp(W) [compute], step 0, micro-batch 0: 0.010 ms"));
  CHECK_THAT(svg, Catch::Contains(">rank 0<") && Catch::Contains(">rank 1<") && Catch::Contains(">comm<"));
  CHECK_THAT(svg, Catch::Contains(">attn<") && Catch::Contains(">dispatch<") && Catch::Contains(">op F<") &&
                      Catch::Contains(">W (weight grad)<"));
  CHECK_THAT(svg, Catch::Contains(">time (ms)<"));
  // F lighter than B: attn(F) and attn-kind B share a hue; here mlp(F) (light) and mlp(B) (full) both occur.
  CHECK_THAT(svg, Catch::Contains("fill=\"#96d096\"") && Catch::Contains("fill=\"#2ca02c\""));

  // Step 1 only: its window is [100, 200] on rank 0; events touching it are drawn.
  std::ostringstream step_out;
  options.step = 1;
  write_timeline_svg(step_out, events, options);
  std::size_t touching = 0;
  for (const TraceEvent& e : events)
    if (e.end_us >= 100 && e.start_us <= 200) ++touching;
  CHECK(count(step_out.str(), "<rect") == touching);
  CHECK(touching < events.size());

  options.step = 9;
  CHECK_THAT(invalid_argument_message([&] { write_timeline_svg(step_out, events, options); }),
             Catch::Contains("step 9"));
  std::ostringstream empty;
  write_timeline_svg(empty, {}, SvgOptions{});
  CHECK(empty.str().rfind("<svg", 0) == 0);
  CHECK(count(empty.str(), "<rect") == 0);
}

TEST_CASE("ferry trace prints the summary and writes the SVG", "[trace][cli]") {
  std::vector<TraceEvent> events = worked_example(0, 0);
  for (const TraceEvent& e : worked_example(1, 0)) events.push_back(e);
  for (const TraceEvent& e : worked_example(0, 1, 100)) events.push_back(e);
  const std::string trace = temp_file("trace-cli", ".json");
  const std::string svg = temp_file("trace-cli", ".svg");
  write_chrome_trace(trace, events);

  auto outcome =
      ferry::test::run(std::string(FERRY_BIN) + " trace " + trace + " --svg " + svg + " --title T1");
  CHECK(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Contains("total") && Catch::Contains("overlap") &&
                                 Catch::Contains("53.8%") && Catch::Contains("wrote " + svg));
  const std::string picture = slurp(svg);
  CHECK(picture.rfind("<svg", 0) == 0);
  CHECK(count(picture, "<rect") == events.size());
  CHECK_THAT(picture, Catch::Contains(">T1<"));

  outcome = ferry::test::run(std::string(FERRY_BIN) + " trace " + trace + " --json --step 1");
  REQUIRE(outcome.exit_code == 0);
  const nlohmann::json doc = nlohmann::json::parse(outcome.output);
  REQUIRE(doc.at("steps").size() == 1);
  CHECK(doc.at("steps")[0].at("step") == 1);
  CHECK(doc.at("steps")[0].at("overlapped_s").get<double>() == Approx(35 * kUs));
  CHECK(doc.at("total").at("overlap_ratio").get<double>() == Approx(7.0 / 13));

  outcome = ferry::test::run(std::string(FERRY_BIN) + " trace " + trace + " --step 5");
  CHECK(outcome.exit_code != 0);
  CHECK_THAT(outcome.output, Catch::Contains("step 5"));

  std::filesystem::remove(trace);
  std::filesystem::remove(svg);
  outcome = ferry::test::run(std::string(FERRY_BIN) + " trace " + trace);
  CHECK(outcome.exit_code != 0);
  CHECK_THAT(outcome.output, Catch::Contains(trace) && Catch::Contains("no such"));

  {
    std::ofstream out(trace);
    out << "{\"traceEvents\": [{\"name\": \"attn(F)\", \"ph\": \"X\", \"ts\": 1, \"pid\": 0, \"tid\": 0}]}";
  }
  outcome = ferry::test::run(std::string(FERRY_BIN) + " trace " + trace);
  CHECK(outcome.exit_code != 0);
  CHECK_THAT(outcome.output, Catch::Contains(trace) && Catch::Contains("no \"dur\""));
  std::filesystem::remove(trace);
}
