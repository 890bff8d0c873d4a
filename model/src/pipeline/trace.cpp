// TraceRecorder and the Chrome trace event format (reading and writing).
#include "ferry/model/pipeline/trace.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "ferry/core/error.hpp"
#include "ferry/core/file_read.hpp"

namespace ferry::model::pipeline {

std::string_view lane_name(Lane lane) {
  switch (lane) {
    case Lane::compute:
      return "compute";
    case Lane::comm:
      return "comm";
    case Lane::ops:
      return "ops";
  }
  return "?";
}

// ---- TraceRecorder --------------------------------------------------------------------------------------

TraceRecorder::TraceRecorder(int rank, bool enabled, std::chrono::steady_clock::time_point epoch)
    : rank_(rank), enabled_(enabled), epoch_(epoch) {}

TraceRecorder::TraceRecorder(TraceRecorder&& other) noexcept
    : rank_(other.rank_), enabled_(other.enabled_), epoch_(other.epoch_) {
  std::lock_guard lock(other.mutex_);
  events_ = std::move(other.events_);
}

TraceRecorder& TraceRecorder::operator=(TraceRecorder&& other) noexcept {
  if (this == &other) return *this;
  std::scoped_lock lock(mutex_, other.mutex_);
  rank_ = other.rank_;
  enabled_ = other.enabled_;
  epoch_ = other.epoch_;
  events_ = std::move(other.events_);
  return *this;
}

double TraceRecorder::us(std::chrono::steady_clock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - epoch_).count();
}

void TraceRecorder::add(TraceEvent event) {
  if (!enabled_) return;
  event.rank = rank_;
  std::lock_guard lock(mutex_);
  events_.push_back(std::move(event));
}

std::vector<TraceEvent> TraceRecorder::events() const {
  std::vector<TraceEvent> copy;
  {
    std::lock_guard lock(mutex_);
    copy = events_;
  }
  // Threads add their events when they end, so the list is only roughly in time order.
  std::stable_sort(copy.begin(), copy.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.start_us < b.start_us; });
  return copy;
}

void TraceRecorder::clear() {
  std::lock_guard lock(mutex_);
  events_.clear();
}

// ---- Writing --------------------------------------------------------------------------------------------

namespace {

constexpr Lane kLanes[] = {Lane::compute, Lane::comm, Lane::ops};

nlohmann::json metadata(const char* name, int pid, int tid, nlohmann::json args) {
  nlohmann::json m{{"name", name}, {"ph", "M"}, {"pid", pid}, {"args", std::move(args)}};
  if (tid >= 0) m["tid"] = tid;
  return m;
}

std::string describe(const TraceEvent& e) {
  return "event \"" + e.name + "\" (rank " + std::to_string(e.rank) + ", " + std::string(lane_name(e.lane)) +
         ")";
}

}  // namespace

void write_chrome_trace(std::ostream& out, const std::vector<TraceEvent>& events) {
  // Metadata first: viewers take the names from wherever they are, but a reader of the file sees the
  // ranks up front. Every lane of every rank is named so that each rank shows the same three rows.
  std::set<int> ranks;
  for (const TraceEvent& e : events) ranks.insert(e.rank);
  std::vector<nlohmann::json> lines;
  for (int rank : ranks) {
    lines.push_back(metadata("process_name", rank, -1, {{"name", "rank " + std::to_string(rank)}}));
    lines.push_back(metadata("process_sort_index", rank, -1, {{"sort_index", rank}}));
    for (Lane lane : kLanes) {
      const int tid = static_cast<int>(lane);
      lines.push_back(metadata("thread_name", rank, tid, {{"name", lane_name(lane)}}));
      lines.push_back(metadata("thread_sort_index", rank, tid, {{"sort_index", tid}}));
    }
  }
  for (const TraceEvent& e : events) {
    // JSON has no NaN or infinity (nlohmann would write null), and a negative dur is dropped by the
    // viewers: both are bugs of whoever recorded the event, better named here than lost silently.
    if (!std::isfinite(e.start_us) || !std::isfinite(e.end_us))
      fail(Errc::invalid_argument, "write_chrome_trace: " + describe(e) + " has a non-finite time");
    if (e.end_us < e.start_us)
      fail(Errc::invalid_argument, "write_chrome_trace: " + describe(e) + " ends before it starts");
    nlohmann::json x{{"name", e.name},
                     {"cat", e.category},
                     {"ph", "X"},
                     {"ts", e.start_us},
                     {"dur", e.end_us - e.start_us},
                     {"pid", e.rank},
                     {"tid", static_cast<int>(e.lane)}};
    nlohmann::json args = nlohmann::json::object();
    if (e.step >= 0) args["step"] = e.step;
    if (e.micro_batch >= 0) args["micro_batch"] = e.micro_batch;
    if (e.chunk >= 0) args["chunk"] = e.chunk;
    if (!args.empty()) x["args"] = std::move(args);
    lines.push_back(std::move(x));
  }
  // One event per line: still one JSON document, but diffable and greppable.
  out << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  for (std::size_t i = 0; i < lines.size(); ++i)
    out << lines[i].dump() << (i + 1 < lines.size() ? ",\n" : "\n");
  out << "]}\n";
}

void write_chrome_trace(const std::string& path, const std::vector<TraceEvent>& events) {
  std::ofstream out(path);
  if (!out) fail(Errc::system, "write_chrome_trace: cannot open " + path + " for writing");
  write_chrome_trace(out, events);
  out.flush();
  if (!out) fail(Errc::system, "write_chrome_trace: cannot write " + path);
}

// ---- Reading --------------------------------------------------------------------------------------------

namespace {

constexpr double kMaxTraceMicros = 1e15;

// At most `limit` characters of `text`, cut at a character boundary, "..." marking the cut: what a message
// quotes of a value it refuses (which may be megabytes long).
constexpr std::size_t kExcerpt = 80;

std::string excerpt(std::string text, std::size_t limit = kExcerpt) {
  if (text.size() <= limit) return text;
  std::size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // inside a UTF-8 char
  text.resize(cut);
  return text + "...";
}

// A JSON value as a message quotes it. Values are at most kMaxTraceDepth deep (parse() refuses deeper
// documents), so dump() recurses only that far.
std::string excerpt(const nlohmann::json& value) {
  return excerpt(value.dump());
}

// `source` names the file (or "chrome trace") in every message.
class EventReader {
 public:
  EventReader(const std::string& source, std::size_t index, const nlohmann::json& event)
      : source_(source), index_(index), event_(event) {}

  [[noreturn]] void malformed(const std::string& what) const {
    std::string where = source_ + ": traceEvents[" + std::to_string(index_) + "]";
    if (event_.is_object() && event_.contains("name") && event_["name"].is_string())
      where += " (\"" + excerpt(event_["name"].get<std::string>()) + "\")";
    fail(Errc::invalid_argument, where + ": " + what);
  }

  double number(const char* key) const {
    auto it = event_.find(key);
    if (it == event_.end()) malformed(std::string("no \"") + key + "\"");
    if (!it->is_number()) malformed(std::string("\"") + key + "\" is not a number: " + excerpt(*it));
    const double value = it->get<double>();
    if (!std::isfinite(value)) malformed(std::string("\"") + key + "\" is not finite");
    // Beyond 2^53 us a microsecond is no longer a double step apart, and times lose their order: refused
    // (1e15 us is 31 years, far past any trace).
    if (std::fabs(value) >= kMaxTraceMicros)
      malformed(std::string("\"") + key + "\" = " + excerpt(*it) + " us is beyond 1e15 us (31 years)");
    return value;
  }

  int integer(const nlohmann::json& object, const char* key, bool required, int fallback) const {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) malformed(std::string("no \"") + key + "\"");
      return fallback;
    }
    if (!it->is_number_integer())
      malformed(std::string("\"") + key + "\" is not an integer: " + excerpt(*it));
    const auto value = it->get<std::int64_t>();
    if (value < INT32_MIN || value > INT32_MAX) malformed(std::string("\"") + key + "\" is out of range");
    return static_cast<int>(value);
  }

  // An optional step, micro-batch or chunk number: absent is -1 (not applicable), present must be >= 0 (the
  // writer drops negative ones, so a negative one read would not survive a round trip).
  int index(const nlohmann::json& args, const char* key) const {
    const int value = integer(args, key, false, -1);
    if (args.contains(key) && value < 0)
      malformed(std::string("\"") + key + "\" = " + std::to_string(value) + " is negative");
    return value;
  }

  std::string string(const char* key, bool required) const {
    auto it = event_.find(key);
    if (it == event_.end()) {
      if (required) malformed(std::string("no \"") + key + "\"");
      return {};
    }
    if (!it->is_string()) malformed(std::string("\"") + key + "\" is not a string: " + excerpt(*it));
    return it->get<std::string>();
  }

  // Returns false for events to skip.
  bool read(TraceEvent& out) const {
    if (!event_.is_object()) malformed("not an object: " + excerpt(event_));
    const std::string ph = string("ph", true);
    if (ph == "M") return false;
    if (ph != "X")
      malformed("phase \"" + excerpt(ph) +
                "\" is not supported (ferry traces hold complete \"X\" and metadata \"M\" events)");
    out.name = string("name", true);
    out.category = string("cat", false);
    out.rank = integer(event_, "pid", true, 0);
    const int tid = integer(event_, "tid", true, 0);
    if (tid < 0 || tid > 2)
      malformed("tid " + std::to_string(tid) + " is not a lane (0 compute, 1 comm, 2 ops)");
    out.lane = static_cast<Lane>(tid);
    out.start_us = number("ts");
    const double dur = number("dur");
    if (dur < 0) malformed("negative \"dur\"");
    out.end_us = out.start_us + dur;
    if (std::fabs(out.end_us) >= kMaxTraceMicros) malformed("\"ts\" + \"dur\" is beyond 1e15 us (31 years)");
    auto args = event_.find("args");
    if (args != event_.end()) {
      if (!args->is_object()) malformed("\"args\" is not an object");
      out.step = index(*args, "step");
      out.micro_batch = index(*args, "micro_batch");
      out.chunk = index(*args, "chunk");
    }
    return true;
  }

 private:
  const std::string& source_;
  std::size_t index_;
  const nlohmann::json& event_;
};

std::vector<TraceEvent> parse(std::string_view text, const std::string& source) {
  nlohmann::json doc;
  // Nesting is bounded while parsing, which stops at the first container too deep: the parser itself does
  // not recurse, but a message quoting a deep value (dump()), and any code walking it, would.
  const auto bound_depth = [&source](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    if (depth >= kMaxTraceDepth && (event == nlohmann::json::parse_event_t::object_start ||
                                    event == nlohmann::json::parse_event_t::array_start))
      fail(Errc::invalid_argument, source + ": JSON nested deeper than " + std::to_string(kMaxTraceDepth) +
                                       " levels (a ferry trace nests 4)");
    return true;
  };
  try {
    doc = nlohmann::json::parse(text.begin(), text.end(), bound_depth);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    fail(Errc::invalid_argument, source + ": not JSON: " + excerpt(e.what(), 3 * kExcerpt));
  }
  const nlohmann::json* list = &doc;
  if (doc.is_object()) {
    auto it = doc.find("traceEvents");
    if (it == doc.end()) fail(Errc::invalid_argument, source + ": no \"traceEvents\" array");
    list = &*it;
  }
  if (!list->is_array())
    fail(Errc::invalid_argument, source + ": \"traceEvents\" is not an array (neither is the document)");
  std::vector<TraceEvent> events;
  events.reserve(list->size());
  for (std::size_t i = 0; i < list->size(); ++i) {
    TraceEvent e;
    if (EventReader(source, i, (*list)[i]).read(e)) events.push_back(std::move(e));
  }
  return events;
}

}  // namespace

std::vector<TraceEvent> parse_chrome_trace(std::string_view json_text) {
  return parse(json_text, "chrome trace");
}

std::vector<TraceEvent> read_chrome_trace(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(Errc::invalid_argument, path + ": no such trace file");
  if (std::filesystem::is_directory(path, ec))
    fail(Errc::invalid_argument, path + ": is a directory, not a trace file");
  const std::vector<std::uint8_t> bytes = read_file_bounded(path, kMaxTraceBytes, "trace file");
  return parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path);
}

}  // namespace ferry::model::pipeline
