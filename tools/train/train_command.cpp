// `ferry train`: trains the bundled MoE transformer on the CPU, alone or expert-parallel under `ferry
// launch`.
//
//   ferry train --steps 200                                             # one process, every expert local
//   ferry launch --nodes 2 --ranks-per-node 2 -- ferry train --batch 2 --json log.json
//
// Under a launcher every rank holds E / R experts and the MoE layers move tokens with ferry dispatch/combine
// (FerryExpertExchange); each rank trains on its own --batch rows, so R ranks with --batch B take the same
// steps as one process with --batch R·B. Rank 0 prints every step and writes the JSON log.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/bounds.hpp"
#include "cli/memory_plan.hpp"
#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "commands.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/checked_math.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/model/data.hpp"
#include "ferry/model/distributed.hpp"
#include "ferry/model/ferry_expert_exchange.hpp"
#include "ferry/model/footprint.hpp"
#include "ferry/model/json.hpp"
#include "ferry/model/pipeline/executor.hpp"
#include "ferry/model/pipeline/trace.hpp"
#include "ferry/model/trainer.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::tools {
namespace {

struct TrainArgs {
  model::ModelConfig model;
  model::TrainConfig train;
  model::DataConfig data;
  bool no_mtp = false;
  std::string exchange = "auto";
  std::string checkpoint_dir;
  bool resume = false;
  std::int64_t save_every = 0;
  std::int64_t stop_after = 0;
  std::string json;
  double timeout_s = 100;
  // Pipeline parallelism: empty schedule = plain expert parallelism over every rank.
  std::string schedule;
  int pipeline_ranks = 2;
  int micro_batches = 0;  // 0: 2 · PP (DualPipe needs at least that)
  bool no_overlap = false;
  std::string trace;
  bool recompute = false;
};

namespace pipe = model::pipeline;

// The overlap summary of a pipelined run, from the gathered trace: per rank, summed over the steps after the
// first (which pays for first-touch allocations); plus the bubble the schedule's formula predicts with the
// op durations measured in the same steps. The metrics in the form `ferry trace --json` writes them
// (pipeline/trace.hpp), "ranks" with each rank's "steps" and "bubble_formula_s_per_step" added.
nlohmann::json report_overlap(pipe::PipelineExecutor& executor, const std::vector<pipe::TraceEvent>& events,
                              bool print) {
  std::vector<pipe::OverlapMetrics> all = pipe::overlap_metrics(events);
  const int last_step = all.empty() ? 0 : all.back().step;
  std::vector<pipe::OverlapMetrics> kept;
  for (const auto& m : all)
    if (m.step > 0 || last_step == 0) kept.push_back(m);
  std::map<int, std::vector<pipe::OverlapMetrics>> by_rank;
  for (const auto& m : kept) by_rank[m.rank].push_back(m);
  nlohmann::json ranks = nlohmann::json::array();
  if (print) std::printf("\n%s", pipe::format_overlap_summary(kept).c_str());
  for (const auto& [rank, metrics] : by_rank) {
    const pipe::OverlapMetrics total = pipe::sum_metrics(metrics);
    const double steps = static_cast<double>(metrics.size());
    const double formula = executor.published_bubble_s(total);
    if (print)
      std::printf(
          "rank %d: bubble %.1f ms/step measured, %.1f ms by the %s formula (F %.1f B %.1f W %.1f F&B %.1f "
          "ms)\n",
          rank, 1e3 * total.bubble_s / steps, 1e3 * formula, pipe::to_string(executor.shape().kind),
          1e3 * total.f_s, 1e3 * (total.b_count ? total.b_s : total.bw_s), 1e3 * total.w_s, 1e3 * total.fb_s);
    nlohmann::json entry = total;
    entry["steps"] = metrics.size();
    entry["bubble_formula_s_per_step"] = formula;
    ranks.push_back(std::move(entry));
  }
  return {{"ranks", ranks}, {"total", pipe::sum_metrics(kept)}};
}

nlohmann::json traffic_json(const TrafficCounters& t) {
  return {{"fabric_messages", t.fabric.messages}, {"fabric_bytes", t.fabric.bytes},
          {"node_messages", t.node.messages},     {"node_bytes", t.node.bytes},
          {"self_messages", t.self.messages},     {"self_bytes", t.self.bytes}};
}

// The job's traffic: every rank's counters summed (each rank only sees what it sent or forwarded); a lone
// rank's own (collective null).
nlohmann::json job_traffic(model::Collective* collective, const BufferTraffic& mine) {
  const TrafficCounters* parts[] = {&mine.dispatch, &mine.combine};
  std::vector<double> values;
  for (const TrafficCounters* t : parts)
    for (const PathTraffic* p : {&t->fabric, &t->node, &t->self}) {
      values.push_back(static_cast<double>(p->messages));
      values.push_back(static_cast<double>(p->bytes));
    }
  if (collective) collective->sum(values);
  BufferTraffic total;
  std::size_t at = 0;
  for (TrafficCounters* t : {&total.dispatch, &total.combine})
    for (PathTraffic* p : {&t->fabric, &t->node, &t->self}) {
      p->messages = static_cast<std::uint64_t>(values[at++]);
      p->bytes = static_cast<std::uint64_t>(values[at++]);
    }
  return {{"dispatch", traffic_json(total.dispatch)}, {"combine", traffic_json(total.combine)}};
}

// A whole-number flag of the trainer: its range, and the config field whose name the model's own checks
// use (ModelConfig::validate says "ModelConfig.topk: ...", the command line says "--topk: ...").
struct CountFlag {
  const char* flag;
  std::variant<int*, std::int64_t*> value;
  std::int64_t min;
  std::int64_t max;
  const char* help;
  const char* field;  // "" when no config check names it
};

// Every whole-number flag of `ferry train`, in --help order. The ranges are generous for a CPU trainer; what
// they need together is checked before any work (check_train).
std::vector<CountFlag> count_flags(TrainArgs& a) {
  model::ModelConfig& m = a.model;
  model::TrainConfig& t = a.train;
  constexpr std::int64_t kWide = 1 << 16, kHidden = 1 << 20, kSteps = 1'000'000'000;
  return {
      {"--layers", &m.layers, 1, 1024, "Transformer blocks", "ModelConfig.layers"},
      {"--dense", &m.n_dense, 0, 1024, "Leading blocks with a dense FFN (the rest are MoE)",
       "ModelConfig.n_dense"},
      {"--dim", &m.dim, 1, kWide, "Model width", "ModelConfig.dim"},
      {"--heads", &m.heads, 1, kWide, "Attention heads", "ModelConfig.heads"},
      {"--ffn-hidden", &m.ffn_hidden, 1, kHidden, "Hidden width of the dense FFN", "ModelConfig.ffn_hidden"},
      {"--expert-hidden", &m.expert_hidden, 1, kHidden, "Hidden width of each expert",
       "ModelConfig.expert_hidden"},
      {"--experts", &m.experts, 1, kWide, "Routed experts per MoE layer", "ModelConfig.experts"},
      {"--topk", &m.topk, 1, 255, "Routed experts per token", "ModelConfig.topk"},
      {"--groups", &m.groups, 1, kWide, "Expert groups (a multiple of the job's nodes)",
       "ModelConfig.groups"},
      {"--max-nodes", &m.max_groups, 1, kWide, "Groups (so nodes) one token may reach",
       "ModelConfig.max_groups"},
      {"--seq", &m.seq, 1, kWide, "Positions per sequence", "ModelConfig.seq"},
      {"--batch", &t.batch, 1, kWide, "Sequences per step on each rank", "TrainConfig.batch"},
      {"--steps", &t.steps, 1, kSteps, "Steps of the run", "TrainConfig.steps"},
      {"--warmup", &t.warmup_steps, 0, kSteps, "Warm-up steps", "TrainConfig.warmup_steps"},
      {"--save-every", &a.save_every, 0, kSteps, "Also save every N steps (0: only at the end)", ""},
      {"--stop-after", &a.stop_after, 0, kSteps,
       "Run at most N steps now (0: to --steps), e.g. to resume later", ""},
      {"--pp", &a.pipeline_ranks, 1, 1024, "Pipeline ranks (with --schedule)", ""},
      {"--micro-batches", &a.micro_batches, 0, 1'000'000, "Micro-batches per step and replica (0: 2 x PP)",
       ""},
  };
}

// The flag that sets a config field ("ModelConfig.seq" -> "--seq"; "rows", a step's sequences, -> "--batch").
std::string flag_of(TrainArgs& args, const std::string& field) {
  if (field == "rows") return "--batch";
  for (const CountFlag& f : count_flags(args))
    if (field == f.field) return f.flag;
  return field;
}

// Runs a config's validate(), naming the flag instead of the field in what it throws.
template <typename Check>
void validate_as_flags(TrainArgs& args, Check check) {
  try {
    check();
  } catch (const Error& e) {
    std::string message = cli::plain_message(e);
    if (const auto colon = message.find(": "); colon != std::string::npos)
      message = flag_of(args, message.substr(0, colon)) + message.substr(colon);
    fail(e.code(), message);
  }
}

// What `ferry train` was asked to do, checked before any work.
struct TrainRequest {
  JobEnv job;
  bool use_ferry = false;
  std::shared_ptr<const model::DataSource> data;
  pipe::PipelineOptions pipeline;  // pipeline.schedule is meaningful only with --schedule
};

// The memory one rank needs: the parameters and their five companions, the activations of a step (as if
// every rank's rows came to this rank's experts), the global batch, the data, ferry's buffer. Also the
// largest tensor against the CPU kernels' int indexing.
void check_train_memory(TrainArgs& args, const TrainRequest& request) {
  const auto ranks = static_cast<std::uint64_t>(request.job.world_size);
  const auto rows = ranks * static_cast<std::uint64_t>(args.train.batch);
  const model::Footprint footprint = model::estimate_footprint(args.model, rows);
  const std::string shape_flags = "--dim, --layers, --experts, --expert-hidden, --ffn-hidden";
  const std::string step_flags = "--batch, --seq, --dim, --heads, --layers";
  if (const model::TensorSize& largest = footprint.largest; largest.elements > model::kMaxTensorElements) {
    std::string flags, rows;
    for (const char* field : largest.fields) {
      flags += (flags.empty() ? "" : ", ") + flag_of(args, field);
      if (std::string(field) == "rows") rows = " (" + std::to_string(ranks) + " rank(s) x --batch rows)";
    }
    fail(Errc::invalid_argument, flags + ": the " + largest.what + " would hold " +
                                     std::to_string(largest.elements) + " elements" + rows +
                                     ", more than the " + std::to_string(model::kMaxTensorElements) +
                                     " (2^31 - 1) the CPU trainer can index");
  }
  cli::MemoryPlan plan;
  plan.add_bytes("parameters, gradients, Adam m and v, EMA and a checkpoint's copy",
                 mul_saturated(footprint.parameters, 6 * sizeof(float)), shape_flags);
  plan.add_bytes("activations of a step", footprint.activation_bytes, step_flags);
  plan.add("the global batch", {{"rank(s)", ranks},
                                {"--batch", static_cast<std::uint64_t>(args.train.batch)},
                                {"--seq", static_cast<std::uint64_t>(args.model.seq) + 2},
                                {"B", 1}});
  plan.add_bytes("the data", request.data->bytes().size(), "--data");
  if (request.use_ferry && args.schedule.empty()) {
    const Config config = model::expert_exchange_config(args.model, request.job.num_nodes());
    plan.add_bytes("ferry's buffer",
                   buffer_size_hint(config, request.job.num_nodes(), request.job.local_size),
                   "--dim, --topk");
  }
  plan.check(cli::usable_memory_bytes(), static_cast<std::uint64_t>(request.job.local_size));
}

TrainRequest check_train(TrainArgs& args) {
  args.model.mtp = !args.no_mtp;
  args.train.recompute_norms = args.recompute;
  validate_as_flags(args, [&] { args.model.validate(); });
  validate_as_flags(args, [&] { args.train.validate(); });
  args.data.validate();

  TrainRequest request;
  request.job = resolve_job_env();
  const JobEnv& job = request.job;
  const int ranks = job.world_size;
  request.use_ferry = args.exchange == "ferry" || (args.exchange == "auto" && ranks > 1);
  if (!request.use_ferry && ranks > 1)
    fail(Errc::invalid_argument,
         "--exchange local runs one process, but this job has " + std::to_string(ranks) + " ranks");
  if (request.use_ferry && args.model.groups % job.num_nodes() != 0)
    fail(Errc::invalid_argument, "--groups " + std::to_string(args.model.groups) +
                                     " must be a multiple of the job's " + std::to_string(job.num_nodes()) +
                                     " nodes, so that no expert group spans two nodes");
  if (!args.schedule.empty()) {
    pipe::PipelineOptions& p = request.pipeline;
    p.schedule = pipe::parse_schedule_kind(args.schedule);
    p.pipeline_ranks = p.schedule == pipe::ScheduleKind::none ? 1 : args.pipeline_ranks;
    p.micro_batches = args.micro_batches > 0 ? args.micro_batches : 2 * p.pipeline_ranks;
    p.overlap = !args.no_overlap;
    p.trace = !args.trace.empty();
    pipe::validate({p.schedule, p.pipeline_ranks, p.micro_batches});
    if (ranks % p.pipeline_ranks != 0)
      fail(Errc::invalid_argument, "--pp " + std::to_string(p.pipeline_ranks) +
                                       " does not divide the job's " + std::to_string(ranks) + " ranks");
    const int replicas = ranks / p.pipeline_ranks;
    if ((ranks * args.train.batch) % (replicas * p.micro_batches) != 0)
      fail(Errc::invalid_argument, "--batch " + std::to_string(args.train.batch) + " x " +
                                       std::to_string(ranks) + " ranks does not split into " +
                                       std::to_string(replicas) + " replica(s) x " +
                                       std::to_string(p.micro_batches) + " micro-batches (--micro-batches)");
  } else if (request.use_ferry && args.model.experts % ranks != 0) {
    fail(Errc::invalid_argument, "--experts " + std::to_string(args.model.experts) +
                                     " must be a multiple of the job's " + std::to_string(ranks) + " ranks");
  }
  if (job.rank == 0) {
    cli::check_output_file("--json", args.json);
    cli::check_output_file("--trace", args.trace);
  }
  cli::check_output_dir("--checkpoint", args.checkpoint_dir);
  request.data = std::make_shared<const model::DataSource>(model::DataSource::from_config(args.data));
  request.data->check_window(args.model.seq);
  check_train_memory(args, request);
  return request;
}

void run_train(TrainArgs args) {
  const TrainRequest request = cli::before_work([&] { return check_train(args); });
  GroupOptions group_options;
  group_options.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(args.timeout_s));
  Group group = Group::from_job(request.job, group_options);
  const int rank = group.rank(), ranks = group.world_size();
  const bool use_ferry = request.use_ferry;

  // Declared after the group: the buffer's and the collective's destruction are collective and need the group
  // alive. Every per-step sum goes over the collective's peer channel, not the bootstrap store.
  std::shared_ptr<Buffer> buffer;
  std::shared_ptr<model::ChannelCollective> collective;
  if (ranks > 1)
    collective = std::make_shared<model::ChannelCollective>(
        group, model::ChannelCollective::default_config(group_options.timeout));
  model::RunOptions options;
  options.model = args.model;
  options.train = args.train;
  options.data = args.data;
  options.save_every = args.save_every;
  options.stop_after = args.stop_after;
  options.data_source = request.data;
  const bool pipelined = !args.schedule.empty();
  std::unique_ptr<pipe::PipelineExecutor> pipeline;
  pipe::PipelineOptions pipeline_options = request.pipeline;
  if (pipelined) {
    pipeline_options.timeout = group_options.timeout;
    options.parallel.collective = collective;
    options.parallel.pipeline_ranks = pipeline_options.pipeline_ranks;
    // Built at the first step, from the trainer's model (collective: every rank takes its first step).
    options.parallel.step_gradients = [&](model::Model<float>& m, const std::uint8_t* batch, int rows) {
      if (!pipeline) pipeline = std::make_unique<pipe::PipelineExecutor>(group, m, pipeline_options);
      return pipeline->run_step(m, batch, rows);
    };
  } else if (use_ferry) {
    ferry::Config config = model::expert_exchange_config(args.model, group.num_nodes());
    config.timeout = group_options.timeout;
    buffer = std::make_shared<Buffer>(group, config);
    options.parallel.exchange_factory = [buffer](int, int experts) {
      return std::make_unique<model::FerryExpertExchange>(buffer, experts);
    };
    options.parallel.collective = collective;
  }
  if (!args.checkpoint_dir.empty()) {
    std::filesystem::create_directories(args.checkpoint_dir);
    // Each rank keeps its own file: it holds this rank's experts (and the shared dense parameters).
    const std::string file = args.checkpoint_dir + "/rank" + std::to_string(rank) + ".ckpt";
    options.save_to = file;
    if (args.resume) options.resume_from = file;
  }

  if (rank == 0 && !pipelined)
    std::printf(
        "ferry train: %d rank(s) on %d node(s), %s exchange, %d experts (%d per rank), batch %d x %d\n",
        ranks, group.num_nodes(), use_ferry ? "ferry" : "local", args.model.experts,
        args.model.experts / ranks, ranks, args.train.batch);
  if (rank == 0 && pipelined) {
    const int pp = pipeline_options.pipeline_ranks, replicas = ranks / pp;
    std::printf(
        "ferry train: %d rank(s) on %d node(s), schedule %s, %d pipeline rank(s) x %d expert-parallel "
        "replica(s), "
        "%d micro-batches of %d rows per replica, overlap %s, %d experts (%d per rank), batch %d x %d\n",
        ranks, group.num_nodes(), args.schedule.c_str(), pp, replicas, pipeline_options.micro_batches,
        ranks * args.train.batch / (replicas * pipeline_options.micro_batches),
        pipeline_options.overlap ? "on" : "off", args.model.experts, args.model.experts / replicas, ranks,
        args.train.batch);
  }
  if (rank == 0 && args.recompute)
    std::printf(
        "ferry train: RMSNorm outputs recomputed in backward (act = activation peak per micro-batch)\n");
  nlohmann::json steps = nlohmann::json::array();
  model::run_training(options, [&](const model::StepStats& stats) {
    if (rank != 0) return;
    std::printf("%s\n", model::format_step(stats).c_str());
    std::fflush(stdout);
    steps.push_back(stats);
  });

  nlohmann::json log{
      {"model", args.model}, {"train", args.train},        {"data", args.data},
      {"ranks", ranks},      {"nodes", group.num_nodes()}, {"exchange", use_ferry ? "ferry" : "local"},
      {"steps", steps}};
  if (buffer) log["traffic"] = job_traffic(collective.get(), buffer->traffic());
  if (pipeline) {
    log["schedule"] = args.schedule;
    log["pipeline_ranks"] = pipeline_options.pipeline_ranks;
    log["micro_batches"] = pipeline_options.micro_batches;
    log["overlap"] = pipeline_options.overlap;
    if (pipeline_options.trace) {
      const auto events = pipeline->gather_trace();  // collective
      log["overlap_metrics"] = report_overlap(*pipeline, events, rank == 0);
      if (rank == 0) {
        pipe::write_chrome_trace(args.trace, events);
        std::printf("wrote %s (open it in Perfetto, or draw it: ferry trace %s --svg timeline.svg)\n",
                    args.trace.c_str(), args.trace.c_str());
      }
    }
  }
  if (rank == 0 && !args.json.empty()) {
    std::ofstream out(args.json);
    out << log.dump(2) << "\n";
    if (!out) fail(Errc::system, "ferry train: cannot write " + args.json);
    std::printf("wrote %s\n", args.json.c_str());
  }
  options.parallel = {};
  pipeline.reset();    // collective, like the buffer
  buffer.reset();      // collective: every rank is here
  collective.reset();  // collective too
}

}  // namespace

void register_train(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<TrainArgs>();
  auto* train =
      app.add_subcommand("train", "Train the bundled MoE transformer (expert parallel under ferry launch)");
  for (const CountFlag& f : count_flags(*args))
    std::visit([&](auto* value) { cli::add_count(*train, f.flag, *value, f.min, f.max, f.help); }, f.value);
  train->add_flag("--no-mtp", args->no_mtp, "Without the multi-token-prediction module");
  train->add_flag("--recompute", args->recompute,
                  "Recompute RMSNorm outputs in backward instead of keeping them (fewer activation bytes, "
                  "the same gradients)");
  train->add_option("--seed", args->model.init_seed, "Seed of the parameter init")->capture_default_str();
  train->add_option("--lr", args->train.lr, "Peak learning rate")
      ->check(cli::number_in(0, 1000, true))
      ->capture_default_str();
  train->add_option("--data-seed", args->train.data_seed, "Seed of the batch order")->capture_default_str();
  train->add_option("--data", args->data.path,
                    "Train on this file's bytes (at most 256 MiB; default: synthetic corpus)");
  train
      ->add_option("--exchange", args->exchange,
                   "Expert exchange: auto (ferry under a launcher), local, ferry")
      ->check(CLI::IsMember({"auto", "local", "ferry"}))
      ->capture_default_str();
  auto* checkpoint = train->add_option("--checkpoint", args->checkpoint_dir,
                                       "Save a checkpoint per rank into this directory");
  train->add_flag("--resume", args->resume, "Resume from the --checkpoint directory first")
      ->needs(checkpoint);
  train->get_option("--save-every")->needs(checkpoint);
  train->add_option("--schedule", args->schedule,
                    "Pipeline schedule: none, 1f1b, dualpipe, dualpipev (unset: expert parallelism only)");
  train->add_flag("--no-overlap", args->no_overlap,
                  "Run F&B pairs one chunk after the other, waiting on every all-to-all at once");
  train->add_option("--trace", args->trace,
                    "Write a Chrome trace of the pipelined run (rank 0) and print the overlap summary");
  train->add_option("--json", args->json, "Write the run's log (configs, steps, traffic) as JSON (rank 0)");
  train->add_option("--timeout", args->timeout_s, "Deadline of every wait, in seconds")
      ->check(cli::seconds_up_to())
      ->capture_default_str();
  train->callback([args, &exit_code] {
    run_train(*args);
    exit_code = 0;
  });
}

}  // namespace ferry::tools
