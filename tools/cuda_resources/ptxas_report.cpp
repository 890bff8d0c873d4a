#include "cuda_resources/ptxas_report.hpp"

#include <cuda_occupancy.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

namespace ferry::tools::cuda_resources {

namespace {

std::string demangle(const std::string& mangled) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> text(
      abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status), &std::free);
  return status == 0 && text ? std::string(text.get()) : mangled;
}

// The SM limits the occupancy calculator needs, for the GPUs each arch is built for.
cudaOccDeviceProp limits_of(const std::string& arch) {
  cudaOccDeviceProp props;
  props.maxThreadsPerBlock = 1024;
  props.maxThreadsPerMultiprocessor = 2048;
  props.regsPerBlock = 65536;
  props.regsPerMultiprocessor = 65536;
  props.warpSize = 32;
  props.sharedMemPerBlock = 48 << 10;
  props.reservedSharedMemPerBlock = 1 << 10;
  if (arch == "sm_80") {  // A100
    props.computeMajor = 8;
    props.computeMinor = 0;
    props.sharedMemPerMultiprocessor = 164 << 10;
    props.sharedMemPerBlockOptin = 163 << 10;
    props.numSms = 108;
  } else if (arch == "sm_90" || arch == "sm_90a") {  // H100, H200
    props.computeMajor = 9;
    props.computeMinor = 0;
    props.sharedMemPerMultiprocessor = 228 << 10;
    props.sharedMemPerBlockOptin = 227 << 10;
    props.numSms = 132;
  } else {
    throw std::runtime_error("no SM limits known for " + arch + " (known: sm_80, sm_90, sm_90a)");
  }
  return props;
}

std::string number(long value) {
  return std::to_string(value);
}

}  // namespace

std::vector<FunctionUsage> parse_ptxas_log(std::istream& in) {
  static const std::regex entry_line(R"(Compiling entry function '([^']+)' for '([^']+)')");
  static const std::regex properties_line(R"(Function properties for (\S+))");
  static const std::regex frame_line(
      R"((\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads)");
  static const std::regex used_line(R"(Used (\d+) registers)");
  static const std::regex barriers_part(R"(used (\d+) barriers)");
  static const std::regex smem_part(R"((\d+) bytes smem)");

  std::vector<FunctionUsage> out;
  std::string arch, entry;
  long current = -1;  // index in `out` of the function the next frame line belongs to
  auto find_or_add = [&](const std::string& mangled, bool is_entry) {
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (out[i].mangled == mangled && out[i].arch == arch) return static_cast<long>(i);
    }
    FunctionUsage usage;
    usage.mangled = mangled;
    usage.name = demangle(mangled);
    usage.arch = arch;
    usage.entry = is_entry;
    out.push_back(usage);
    return static_cast<long>(out.size() - 1);
  };

  std::smatch match;
  for (std::string line; std::getline(in, line);) {
    if (std::regex_search(line, match, entry_line)) {
      entry = match[1];
      arch = match[2];
      current = find_or_add(entry, true);
    } else if (std::regex_search(line, match, properties_line)) {
      if (arch.empty())
        throw std::runtime_error("ptxas log: '" + line + "' before any 'Compiling entry function'");
      current = find_or_add(match[1], match[1] == entry);
    } else if (std::regex_search(line, match, frame_line)) {
      if (current < 0) throw std::runtime_error("ptxas log: '" + line + "' before any function");
      out[current].stack_bytes = std::stol(match[1]);
      out[current].spill_store_bytes = std::stol(match[2]);
      out[current].spill_load_bytes = std::stol(match[3]);
    } else if (std::regex_search(line, match, used_line)) {
      if (entry.empty()) throw std::runtime_error("ptxas log: '" + line + "' before any kernel");
      FunctionUsage& kernel = out[find_or_add(entry, true)];
      kernel.registers = std::stoi(match[1]);
      if (std::regex_search(line, match, barriers_part)) kernel.barriers = std::stoi(match[1]);
      if (std::regex_search(line, match, smem_part)) kernel.shared_bytes = std::stol(match[1]);
    }
  }
  return out;
}

std::vector<KernelShape> parse_shapes(std::istream& in, const std::string& file_name) {
  std::vector<KernelShape> out;
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::istringstream fields(line);
    KernelShape shape;
    if (!(fields >> shape.name)) continue;  // blank or comment
    std::string extra;
    if (!(fields >> shape.threads >> shape.blocks_per_sm >> shape.dynamic_shared_bytes) ||
        (fields >> extra) || shape.threads < 1 || shape.blocks_per_sm < 1 || shape.dynamic_shared_bytes < 0) {
      throw std::runtime_error(
          file_name + ":" + std::to_string(line_number) +
          ": expected 'name threads blocks_per_sm dynamic_shared_bytes' with threads and "
          "blocks_per_sm >= 1");
    }
    for (const auto& earlier : out) {
      if (earlier.name == shape.name) {
        throw std::runtime_error(file_name + ":" + std::to_string(line_number) + ": " + shape.name +
                                 " is already on line " + std::to_string(earlier.line));
      }
    }
    shape.line = line_number;
    out.push_back(shape);
  }
  return out;
}

std::string base_name(const std::string& demangled) {
  std::string text = demangled;
  for (std::size_t at; (at = text.find("(anonymous namespace)::")) != std::string::npos;) {
    text.erase(at, std::string("(anonymous namespace)::").size());
  }
  // Cut the parameter list: the first '(' outside template arguments.
  int depth = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '<') ++depth;
    if (text[i] == '>') --depth;
    if (text[i] == '(' && depth == 0) {
      text.resize(i);
      break;
    }
  }
  // Drop trailing template arguments.
  if (!text.empty() && text.back() == '>') {
    depth = 0;
    for (std::size_t i = text.size(); i-- > 0;) {
      if (text[i] == '>') ++depth;
      if (text[i] == '<' && --depth == 0) {
        text.resize(i);
        break;
      }
    }
  }
  // Drop the scope and a return type ("void " before templates).
  if (auto colons = text.rfind("::"); colons != std::string::npos) text.erase(0, colons + 2);
  if (auto space = text.rfind(' '); space != std::string::npos) text.erase(0, space + 1);
  return text;
}

int blocks_that_fit(const FunctionUsage& usage, const KernelShape& shape) {
  const cudaOccDeviceProp props = limits_of(usage.arch);
  cudaOccFuncAttributes attributes;
  attributes.maxThreadsPerBlock = props.maxThreadsPerBlock;
  attributes.numRegs = usage.registers;
  attributes.sharedSizeBytes = static_cast<std::size_t>(usage.shared_bytes);
  attributes.partitionedGCConfig = PARTITIONED_GC_OFF;
  attributes.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN;  // kernels raise their dynamic limit at run time
  attributes.maxDynamicSharedSizeBytes = static_cast<std::size_t>(shape.dynamic_shared_bytes);
  attributes.numBlockBarriers = usage.barriers;
  cudaOccDeviceState state;  // default carveout: as much shared memory as the SM has
  cudaOccResult result;
  const cudaOccError status =
      cudaOccMaxActiveBlocksPerMultiprocessor(&result, &props, &attributes, &state, shape.threads,
                                              static_cast<std::size_t>(shape.dynamic_shared_bytes));
  if (status != CUDA_OCC_SUCCESS) return 0;  // the shape cannot launch (too many threads, too much memory)
  return result.activeBlocksPerMultiprocessor;
}

CheckOutcome check_kernels(const std::vector<FunctionUsage>& usage, const std::vector<KernelShape>& shapes,
                           const std::vector<std::string>& archs, const std::string& shapes_file) {
  CheckOutcome outcome;
  auto& failures = outcome.failures;
  if (usage.empty())
    failures.push_back("no ptxas output to check (was the source compiled with -Xptxas=-v?)");

  std::map<std::string, std::set<std::string>> archs_of;  // kernel base name -> archs it was built for
  std::set<std::string> matched;
  std::vector<const FunctionUsage*> kernels;
  for (const auto& function : usage) {
    if (function.spill_store_bytes > 0 || function.spill_load_bytes > 0) {
      failures.push_back(function.name + " on " + function.arch +
                         " spills registers: " + number(function.spill_store_bytes) + " bytes stored, " +
                         number(function.spill_load_bytes) + " bytes loaded");
    }
    if (function.entry) kernels.push_back(&function);
  }
  std::sort(kernels.begin(), kernels.end(), [](const FunctionUsage* a, const FunctionUsage* b) {
    return std::tie(a->name, a->arch) < std::tie(b->name, b->arch);
  });

  std::ostringstream table;
  table << "| kernel | arch | threads | registers | static smem | dynamic smem | stack | spills (st/ld) | "
           "blocks/SM needed | blocks/SM fit |\n"
        << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const FunctionUsage* kernel : kernels) {
    const std::string name = base_name(kernel->name);
    archs_of[name].insert(kernel->arch);
    auto shape =
        std::find_if(shapes.begin(), shapes.end(), [&](const KernelShape& s) { return s.name == name; });
    if (shape == shapes.end()) {
      failures.push_back("kernel " + kernel->name + " (" + kernel->arch + ") has no line in " + shapes_file +
                         " (add: " + name + " <threads> <blocks_per_sm> <dynamic_shared_bytes>)");
      continue;
    }
    matched.insert(name);
    const int fit = blocks_that_fit(*kernel, *shape);
    if (fit < shape->blocks_per_sm) {
      failures.push_back(name + " on " + kernel->arch + ": " + std::to_string(fit) + " blocks of " +
                         std::to_string(shape->threads) + " threads fit on one SM (" +
                         std::to_string(kernel->registers) + " registers, " + number(kernel->shared_bytes) +
                         " static + " + number(shape->dynamic_shared_bytes) + " dynamic shared bytes); " +
                         shapes_file + ":" + std::to_string(shape->line) + " needs " +
                         std::to_string(shape->blocks_per_sm));
    }
    table << "| " << name << " | " << kernel->arch << " | " << shape->threads << " | " << kernel->registers
          << " | " << kernel->shared_bytes << " | " << shape->dynamic_shared_bytes << " | "
          << kernel->stack_bytes << " | " << kernel->spill_store_bytes << "/" << kernel->spill_load_bytes
          << " | " << shape->blocks_per_sm << " | " << fit << " |\n";
  }
  for (const auto& [name, built] : archs_of) {
    for (const auto& arch : archs) {
      if (!built.count(arch))
        failures.push_back("kernel " + name + " has no " + arch + " build in the ptxas output");
    }
  }
  for (const auto& shape : shapes) {
    if (!matched.count(shape.name)) {
      failures.push_back(shapes_file + ":" + std::to_string(shape.line) + ": no kernel " + shape.name +
                         " in the ptxas output (a stale line?)");
    }
  }
  outcome.table = table.str();
  return outcome;
}

}  // namespace ferry::tools::cuda_resources
