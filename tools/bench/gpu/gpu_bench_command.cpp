// `ferry bench gpu-copy` and `ferry bench gpu-gemm` (one process, one GPU; no `ferry launch` needed).
//
//   ferry bench gpu-copy --sms 4,8,12,20,24,all --bytes 512M --json copy.json
//   ferry bench gpu-gemm --comm-sms 20 --json gemm.json
#include "bench/gpu/gpu_bench_command.hpp"

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench/dispatch_options.hpp"
#include "bench/gpu/gpu_bench.hpp"
#include "bench/gpu/gpu_dispatch_bench.hpp"
#include "bench/gpu/gpu_low_latency_bench.hpp"
#include "bench/machine_info.hpp"
#include "bench/sizes.hpp"
#include "cli/bounds.hpp"
#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "ferry/core/error.hpp"

namespace ferry::tools {
namespace {

constexpr int kAllSms = -1;

struct CopyArgs {
  int device = 0;
  std::string sms = "4,8,12,20,24,all";
  std::string bytes = "512M";
  int iters = 20;
  std::string json;
};

struct GemmArgs {
  int device = 0;
  int comm_sms = 20;
  int size = 8192;
  int iters = 20;
  std::string load_bytes = "256M";
  bool no_green = false;
  std::string json;
};

// "4,8,all" -> {4, 8, kAllSms}. Throws invalid_argument naming the bad item.
std::vector<int> parse_sm_list(const std::string& text);

// gpu-dispatch's --sms: even numbers only (a channel is 2 SMs).
std::vector<int> parse_even_sm_list(const std::string& text) {
  std::vector<int> out;
  for (int sms : parse_sm_list(text)) {
    if (sms == kAllSms || sms % 2 != 0) {
      fail(Errc::invalid_argument, "--sms: num_sms must be even (a channel is 2 SMs), not " +
                                       (sms == kAllSms ? std::string("all") : std::to_string(sms)));
    }
    out.push_back(sms);
  }
  return out;
}

// The virtual cluster and the tokens of gpu-dispatch and gpu-low-latency.
template <class Args>
void add_virtual_shape(CLI::App& command, Args& args) {
  cli::add_count(command, "--nodes", args.nodes, 1, bench::kMaxNodes, "Virtual nodes");
  cli::add_count(command, "--ranks-per-node", args.ranks_per_node, 1, 32, "Virtual ranks per node");
  cli::add_count(command, "--tokens", args.tokens, 1, bench::kMaxTokens, "Tokens per rank");
  cli::add_count(command, "--hidden", args.hidden, 1, bench::kMaxHidden, "Hidden size");
  cli::add_count(command, "--topk", args.topk, 1, bench::kMaxTopk, "Experts per token");
  cli::add_count(command, "--experts", args.experts, 1, bench::kMaxExperts, "Experts");
}

CLI::Validator sm_list_check() {
  return cli::parses_with("SMS", [](const std::string& text) { parse_sm_list(text); });
}

// The most bytes a GPU copy moves per run (--bytes, --load-bytes): more than any GPU's memory.
constexpr std::size_t kMaxGpuBytes = std::size_t{256} << 30;

std::size_t gpu_bytes(const std::string& flag, const std::string& text) {
  const std::size_t bytes = parse_size(text);
  if (bytes > kMaxGpuBytes)
    fail(Errc::invalid_argument, flag + ": " + text + " is above " + format_size(kMaxGpuBytes));
  return bytes;
}

CLI::Validator size_check(const std::string& flag) {
  return cli::parses_with("SIZE", [flag](const std::string& text) { gpu_bytes(flag, text); });
}

std::vector<int> parse_sm_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    if (item == "all") {
      out.push_back(kAllSms);
      continue;
    }
    std::size_t used = 0;
    int value = 0;
    try {
      value = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || value < 1) {
      fail(Errc::invalid_argument, "--sms: '" + item + "' is neither a positive number of SMs nor 'all'");
    }
    out.push_back(value);
  }
  if (out.empty()) fail(Errc::invalid_argument, "--sms: empty list");
  return out;
}

nlohmann::json gpu_json(const gpu_bench::GpuDescription& gpu) {
  return {{"name", gpu.name},
          {"sms", gpu.sms},
          {"l2_bytes", gpu.l2_bytes},
          {"memory_bytes", gpu.memory_bytes},
          {"compute_capability", gpu.compute_capability}};
}

void print_header(const char* command, const gpu_bench::GpuDescription& gpu, const nlohmann::json& machine) {
  std::printf("ferry bench %s: GPU %s, %d SMs, L2 %s, %s; host %s\n", command, gpu.name.c_str(), gpu.sms,
              format_size(gpu.l2_bytes).c_str(), format_size(gpu.memory_bytes).c_str(),
              machine["hostname"].get<std::string>().c_str());
}

void write_json(const std::string& path, const nlohmann::json& report, const char* command) {
  if (path.empty()) return;
  std::ofstream out(path);
  out << report.dump(2) << "\n";
  if (!out) fail(Errc::system, std::string("bench ") + command + ": cannot write " + path);
  std::printf("wrote %s\n", path.c_str());
}

void run_copy(const CopyArgs& args) {
  const auto requested = parse_sm_list(args.sms);  // before touching the GPU: bad input first
  const std::size_t bytes = gpu_bytes("--bytes", args.bytes);
  const auto gpu = gpu_bench::describe_gpu(args.device);
  const auto machine = machine_info();
  print_header("gpu-copy", gpu, machine);
  std::printf("buffers %s each (random data, %.1fx L2), median of %d runs, GB/s = (read + written) / time\n",
              format_size(bytes).c_str(), gpu.l2_bytes > 0 ? double(bytes) / double(gpu.l2_bytes) : 0.0,
              args.iters);
  std::printf("%-26s %10s %10s\n", "copy", "GB/s", "ms");
  nlohmann::json rows = nlohmann::json::array();
  for (int sms : requested) {
    if (sms == kAllSms) sms = gpu.sms;
    const auto result = gpu_bench::measure_copy_kernel(args.device, sms, bytes, args.iters);
    const std::string label = "copy kernel, " + std::to_string(result.sms) + " SMs";
    std::printf("%-26s %10.1f %10.3f\n", label.c_str(), result.gbps, result.ms);
    std::fflush(stdout);
    rows.push_back({{"kind", "copy_kernel"}, {"sms", result.sms}, {"gbps", result.gbps}, {"ms", result.ms}});
  }
  const double device_copy = gpu_bench::measure_device_copy(args.device, bytes, args.iters);
  std::printf("%-26s %10.1f\n", "cudaMemcpy D2D (whole GPU)", device_copy);
  rows.push_back({{"kind", "device_copy"}, {"sms", gpu.sms}, {"gbps", device_copy}});
  nlohmann::json report = {{"command", "gpu-copy"}, {"date", now_iso8601()}, {"machine", machine},
                           {"gpu", gpu_json(gpu)},  {"bytes", bytes},        {"iters", args.iters},
                           {"rows", rows}};
  write_json(args.json, report, "gpu-copy");
}

void run_gemm(const GemmArgs& args) {
  const std::size_t load_bytes = gpu_bytes("--load-bytes", args.load_bytes);
  const auto gpu = gpu_bench::describe_gpu(args.device);
  const auto machine = machine_info();
  print_header("gpu-gemm", gpu, machine);
  gpu_bench::GemmOptions options;
  options.m = options.n = options.k = args.size;
  options.iters = args.iters;
  options.allow_green = !args.no_green;
  // The communication stand-in: the plain copy kernel on comm_sms SMs, moving load_bytes per call.
  gpu_bench::CopyKernelLoad load(args.device, args.comm_sms, load_bytes);
  const auto result = gpu_bench::measure_gemm_overlap(
      args.device, args.comm_sms, [&](void* stream) { load(stream); }, options);
  std::printf(
      "GEMM bf16 %d^3 (fp32 accumulation), cuBLAS, median of %d; load: copy kernel on %d SMs, %s per "
      "call\n",
      args.size, args.iters, args.comm_sms, format_size(load_bytes).c_str());
  std::printf("mode: %s\n", result.mode.c_str());
  std::printf("%-44s %10s\n", "GEMM", "TFLOP/s");
  std::printf("%-44s %10.1f\n", "whole GPU", result.tflops_full);
  const std::string alone = "alone on the compute side (" + std::to_string(result.compute_sms) + " SMs)";
  std::printf("%-44s %10.1f\n", alone.c_str(), result.tflops_alone);
  std::printf("%-44s %10.1f\n", "beside the copy load", result.tflops_loaded);
  std::printf("slowdown beside the load: %.1f%%%s; one load call alone: %.3f ms\n", 100.0 * result.slowdown,
              result.comm_covered ? "" : " (WARNING: the load ended before the last GEMM)",
              result.comm_ms_alone);
  nlohmann::json report = {{"command", "gpu-gemm"},
                           {"date", now_iso8601()},
                           {"machine", machine},
                           {"gpu", gpu_json(gpu)},
                           {"size", args.size},
                           {"iters", args.iters},
                           {"comm_sms_requested", args.comm_sms},
                           {"load_bytes", load_bytes},
                           {"mode", result.mode},
                           {"compute_sms", result.compute_sms},
                           {"comm_sms", result.comm_sms},
                           {"tflops_full", result.tflops_full},
                           {"tflops_alone", result.tflops_alone},
                           {"tflops_loaded", result.tflops_loaded},
                           {"slowdown", result.slowdown},
                           {"comm_ms_alone", result.comm_ms_alone},
                           {"comm_covered", result.comm_covered}};
  write_json(args.json, report, "gpu-gemm");
}

// Runs `body`, naming the command in any ferry::Error ("ferry: unsupported: bench gpu-copy: no usable GPU
// ...").
template <typename Body>
void with_command_name(const char* command, Body body) {
  try {
    body();
  } catch (const Error& e) {
    std::string message = e.what();
    const std::string prefix = "ferry: " + std::string(to_string(e.code())) + ": ";
    if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
    throw Error(e.code(), std::string("bench ") + command + ": " + message);
  }
}

}  // namespace

void register_gpu_bench(CLI::App& bench, int& exit_code) {
  auto copy_args = std::make_shared<CopyArgs>();
  auto* copy = bench.add_subcommand(
      "gpu-copy", "Copy bandwidth of a plain copy kernel held to N SMs, and of a whole-GPU device copy");
  cli::add_count(*copy, "--device", copy_args->device, 0, 1023, "GPU index");
  copy->add_option("--sms", copy_args->sms, "SM counts, a comma list; 'all' = every SM")
      ->check(sm_list_check())
      ->capture_default_str();
  copy->add_option("--bytes", copy_args->bytes,
                   "Bytes copied per run (K/M/G units); keep it several times L2")
      ->check(size_check("--bytes"))
      ->capture_default_str();
  cli::add_count(*copy, "--iters", copy_args->iters, 1, 1000000, "Timed runs per figure (median)");
  copy->add_option("--json", copy_args->json, "Also write the report as JSON to this file");
  cli::set_examples(*copy, {"ferry bench gpu-copy --sms 4,8,12,20,24,all --bytes 512M --json copy.json"});
  copy->callback([copy_args, &exit_code] {
    cli::before_work([&] { cli::check_output_file("--json", copy_args->json); });
    with_command_name("gpu-copy", [&] { run_copy(*copy_args); });
    exit_code = 0;
  });

  auto gemm_args = std::make_shared<GemmArgs>();
  auto* gemm =
      bench.add_subcommand("gpu-gemm",
                           "cuBLAS bf16 GEMM on the SMs communication leaves, alone and beside a copy "
                           "kernel on the communication SMs");
  cli::add_count(*gemm, "--device", gemm_args->device, 0, 1023, "GPU index");
  cli::add_count(*gemm, "--comm-sms", gemm_args->comm_sms, 1, 1024, "SMs taken by communication");
  cli::add_count(*gemm, "--size", gemm_args->size, 1, 65536, "GEMM size: m = n = k");
  cli::add_count(*gemm, "--iters", gemm_args->iters, 1, 1000000, "Timed GEMMs per figure (median)");
  gemm->add_option("--load-bytes", gemm_args->load_bytes, "Bytes the copy load moves per call")
      ->check(size_check("--load-bytes"))
      ->capture_default_str();
  gemm->add_flag("--no-green", gemm_args->no_green, "Plain streams instead of green-context SM partitions");
  gemm->add_option("--json", gemm_args->json, "Also write the report as JSON to this file");
  cli::set_examples(*gemm, {"ferry bench gpu-gemm --comm-sms 20 --json gemm.json"});
  gemm->callback([gemm_args, &exit_code] {
    cli::before_work([&] { cli::check_output_file("--json", gemm_args->json); });
    with_command_name("gpu-gemm", [&] { run_gemm(*gemm_args); });
    exit_code = 0;
  });

  auto dispatch_args = std::make_shared<GpuDispatchArgs>();
  auto sms_text = std::make_shared<std::string>("4,8,12,20,24");
  auto* dispatch =
      bench.add_subcommand("gpu-dispatch",
                           "The CUDA executor's fp8 dispatch and bf16 combine on virtual ranks of one GPU, "
                           "per num_sms, next to the "
                           "copy-kernel bound on as many SMs (and a GEMM's slowdown with --gemm)");
  add_virtual_shape(*dispatch, *dispatch_args);
  cli::add_count(*dispatch, "--max-nodes", dispatch_args->max_nodes, 1, bench::kMaxNodes,
                 "Nodes a token may touch");
  dispatch->add_option("--sms", *sms_text, "num_sms values, a comma list (even numbers)")
      ->check(cli::parses_with("SMS", [](const std::string& text) { parse_even_sm_list(text); }))
      ->capture_default_str();
  cli::add_count(*dispatch, "--iters", dispatch_args->iters, 1, bench::kMaxIters,
                 "Timed operations per figure (median)");
  dispatch->add_option("--seed", dispatch_args->seed, "Routing and data seed")->capture_default_str();
  dispatch->add_flag("--gemm", dispatch_args->gemm,
                     "Also measure a GEMM's slowdown while dispatch and combine run");
  cli::add_count(*dispatch, "--gemm-sms", dispatch_args->gemm_sms, 2, bench::kMaxSms,
                 "num_sms of the GEMM measurement");
  dispatch->add_option("--json", dispatch_args->json, "Also write the report as JSON to this file");
  cli::set_examples(*dispatch, {"ferry bench gpu-dispatch --nodes 2 --ranks-per-node 4 --sms 8,20 --gemm"});
  dispatch->callback([dispatch_args, sms_text, &exit_code] {
    dispatch_args->sms = parse_even_sm_list(*sms_text);
    cli::before_work([&] { cli::check_output_file("--json", dispatch_args->json); });
    with_command_name("gpu-dispatch", [&] { exit_code = run_gpu_dispatch_bench(*dispatch_args); });
  });

  auto low_latency_args = std::make_shared<GpuLowLatencyArgs>();
  auto* low_latency = bench.add_subcommand(
      "gpu-low-latency",
      "The low-latency mode's CUDA executor (dispatch, fp8 unless --bf16, and bf16 combine) on virtual ranks "
      "of one GPU (their kernels one after another, replayed from CUDA graphs), next to the copy-kernel "
      "bound; "
      "the normal mode on the same shape is gpu-dispatch");
  add_virtual_shape(*low_latency, *low_latency_args);
  cli::add_count(*low_latency, "--blocks-per-rank", low_latency_args->blocks_per_rank, 1, 64,
                 "Blocks of the bulk phases per virtual rank");
  cli::add_count(*low_latency, "--iters", low_latency_args->iters, 1, bench::kMaxIters,
                 "Timed operations (p50 and p99)");
  low_latency->add_flag("--bf16", low_latency_args->bf16, "Dispatch bf16 rows instead of fp8");
  low_latency->add_option("--seed", low_latency_args->seed, "Routing and data seed")->capture_default_str();
  low_latency->add_option("--json", low_latency_args->json, "Also write the report as JSON to this file");
  cli::set_examples(*low_latency, {"ferry bench gpu-low-latency --nodes 2 --ranks-per-node 4 --tokens 128"});
  low_latency->callback([low_latency_args, &exit_code] {
    cli::before_work([&] { cli::check_output_file("--json", low_latency_args->json); });
    with_command_name("gpu-low-latency", [&] { exit_code = run_gpu_low_latency_bench(*low_latency_args); });
  });
}

}  // namespace ferry::tools
