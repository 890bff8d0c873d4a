// The GEMM bound: a cuBLAS bf16 GEMM on the whole GPU, on the SMs communication leaves it, and there while a
// communication function runs on the other SMs.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu/bench_kernels.hpp"
#include "bench/gpu/cublas_library.hpp"
#include "bench/gpu/gpu_bench.hpp"
#include "bench/gpu/gpu_support.hpp"
#include "ferry/core/error.hpp"

namespace ferry::gpu_bench {

namespace {

constexpr int kWarmups = 2;
constexpr int kCommSamples = 5;
constexpr int kCoverAttempts = 3;
constexpr double kMinCommWindowMs = 20;

struct Operands {
  explicit Operands(const GemmOptions& options)
      : m(options.m),
        n(options.n),
        k(options.k),
        a(bf16_bytes(m, k), "GEMM operand A"),
        b(bf16_bytes(k, n), "GEMM operand B"),
        c(bf16_bytes(m, n), "GEMM result C") {
    detail::Stream stream;
    detail::fill_random_bf16(a.get(), static_cast<std::size_t>(m) * k, 0xa11ce, stream.get());
    detail::fill_random_bf16(b.get(), static_cast<std::size_t>(k) * n, 0xb0b, stream.get());
    detail::wait_stream(stream.get(), "filling the GEMM operands");
  }
  static std::size_t bf16_bytes(int rows, int columns) {
    return static_cast<std::size_t>(rows) * static_cast<std::size_t>(columns) * sizeof(__nv_bfloat16);
  }
  int m, n, k;
  detail::DeviceMemory a, b, c;
};

double tflops(const Operands& ops, double ms) {
  return 2.0 * ops.m * ops.n * static_cast<double>(ops.k) / (ms * 1e-3) / 1e12;
}

// C = A B, column-major, bf16 in and out, fp32 accumulation.
void enqueue_gemm(const detail::CublasHandle& handle, const Operands& ops) {
  const auto& cublas = detail::CublasLibrary::get();
  const float alpha = 1.0f, beta = 0.0f;
  cublas.check(cublas.gemm_ex(handle.get(), CUBLAS_OP_N, CUBLAS_OP_N, ops.m, ops.n, ops.k, &alpha,
                              ops.a.get(), CUDA_R_16BF, ops.m, ops.b.get(), CUDA_R_16BF, ops.k, &beta,
                              ops.c.get(), CUDA_R_16BF, ops.m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (bf16, fp32 accumulation)");
}

// `count` GEMMs enqueued back to back on one stream, each between two events of the current context.
class GemmBatch {
 public:
  GemmBatch(const detail::CublasHandle& handle, const Operands& ops, cudaStream_t stream, int count)
      : starts_(static_cast<std::size_t>(count)), stops_(static_cast<std::size_t>(count)) {
    for (int i = 0; i < count; ++i) {
      detail::check_cuda(cudaEventRecord(starts_[i].get(), stream), "cudaEventRecord");
      enqueue_gemm(handle, ops);
      detail::check_cuda(cudaEventRecord(stops_[i].get(), stream), "cudaEventRecord");
    }
  }
  cudaEvent_t last() const { return stops_.back().get(); }
  double median_ms() const {
    std::vector<double> times;
    for (std::size_t i = 0; i < starts_.size(); ++i)
      times.push_back(detail::elapsed_ms(starts_[i].get(), stops_[i].get()));
    return detail::median(times);
  }

 private:
  std::vector<detail::Event> starts_, stops_;
};

double bf16_to_double(std::uint16_t bits) {
  const std::uint32_t widened = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

// Checks a few elements of C against a double-precision dot product of the bf16 inputs.
void check_gemm(const Operands& ops, cudaStream_t stream) {
  detail::wait_stream(stream, "the GEMMs");
  std::mt19937 draw(7);
  std::vector<std::uint16_t> row(static_cast<std::size_t>(ops.k)), column(static_cast<std::size_t>(ops.k));
  for (int sample = 0; sample < 8; ++sample) {
    const int i = static_cast<int>(draw() % ops.m), j = static_cast<int>(draw() % ops.n);
    const auto* a = static_cast<const std::uint16_t*>(ops.a.get());
    const auto* b = static_cast<const std::uint16_t*>(ops.b.get());
    const auto* c = static_cast<const std::uint16_t*>(ops.c.get());
    detail::check_cuda(cudaMemcpy2D(row.data(), 2, a + i, 2 * static_cast<std::size_t>(ops.m), 2,
                                    static_cast<std::size_t>(ops.k), cudaMemcpyDeviceToHost),
                       "cudaMemcpy2D of a row of A");
    detail::check_cuda(cudaMemcpy(column.data(), b + static_cast<std::size_t>(j) * ops.k, 2 * column.size(),
                                  cudaMemcpyDeviceToHost),
                       "cudaMemcpy of a column of B");
    std::uint16_t got_bits = 0;
    detail::check_cuda(
        cudaMemcpy(&got_bits, c + i + static_cast<std::size_t>(j) * ops.m, 2, cudaMemcpyDeviceToHost),
        "cudaMemcpy of an element of C");
    double expected = 0, scale = 0;
    for (int kk = 0; kk < ops.k; ++kk) {
      const double term = bf16_to_double(row[kk]) * bf16_to_double(column[kk]);
      expected += term;
      scale += term * term;
    }
    const double got = bf16_to_double(got_bits);
    // bf16 output rounding (2^-8 relative) plus a sliver of the spread of the sum; a wrong element is off by
    // about the spread.
    const double tolerance = std::abs(expected) * 0x1p-7 + 1e-2 * std::sqrt(scale) + 1e-6;
    if (!std::isfinite(got) || std::abs(got - expected) > tolerance) {
      fail(Errc::internal, "cuBLAS GEMM check: C(" + std::to_string(i) + ", " + std::to_string(j) + ") is " +
                               std::to_string(got) + ", expected " + std::to_string(expected) + " within " +
                               std::to_string(tolerance));
    }
  }
}

// The GEMM alone on `stream` (current context): median ms of `iters`, after warm-ups; output checked.
double time_gemm_alone(const Operands& ops, cudaStream_t stream, int iters) {
  detail::CublasHandle handle(stream);
  GemmBatch warmup(handle, ops, stream, kWarmups);
  detail::check_cuda(cudaMemsetAsync(ops.c.get(), 0xff, ops.c.bytes(), stream), "cudaMemsetAsync (poison C)");
  GemmBatch batch(handle, ops, stream, iters);
  detail::wait_event(batch.last(), "the GEMMs");
  check_gemm(ops, stream);
  return batch.median_ms();
}

struct Loaded {
  double gemm_ms = 0;
  bool covered = false;
};

// GEMMs on the compute side (with `handle`, made there) while `reps` comm calls run on the other; covered
// says whether comm was still running when the last GEMM ended. Comm is enqueued first, so it is running when
// the GEMMs start.
Loaded time_gemm_loaded(const SmPartition& partition, const detail::CublasHandle& handle, const Operands& ops,
                        const std::function<void(void*)>& comm, int reps, int iters) {
  std::optional<detail::Event> comm_done;
  {
    SmPartition::Enter side(partition, true);
    comm_done.emplace();
    for (int i = 0; i < reps; ++i) comm(partition.comm_stream());
    detail::check_cuda(cudaEventRecord(comm_done->get(), static_cast<cudaStream_t>(partition.comm_stream())),
                       "cudaEventRecord");
  }
  Loaded out;
  {
    SmPartition::Enter side(partition, false);
    auto stream = static_cast<cudaStream_t>(partition.compute_stream());
    detail::check_cuda(cudaMemsetAsync(ops.c.get(), 0xff, ops.c.bytes(), stream),
                       "cudaMemsetAsync (poison C)");
    GemmBatch batch(handle, ops, stream, iters);
    detail::wait_event(batch.last(), "the GEMMs beside communication");
    {
      SmPartition::Enter comm_side(partition, true);
      const cudaError_t status = cudaEventQuery(comm_done->get());
      if (status != cudaErrorNotReady) detail::check_cuda(status, "cudaEventQuery (communication)");
      out.covered = status == cudaErrorNotReady;
    }
    out.gemm_ms = batch.median_ms();
    check_gemm(ops, stream);
  }
  {
    SmPartition::Enter side(partition, true);
    detail::wait_event(comm_done->get(), "the communication beside the GEMMs");
    comm_done.reset();  // destroyed in its own context
  }
  return out;
}

double time_comm_alone(const SmPartition& partition, const std::function<void(void*)>& comm) {
  SmPartition::Enter side(partition, true);
  auto stream = static_cast<cudaStream_t>(partition.comm_stream());
  for (int i = 0; i < kWarmups; ++i) comm(stream);
  std::vector<double> times;
  detail::Event start, stop;
  for (int i = 0; i < kCommSamples; ++i) {
    detail::check_cuda(cudaEventRecord(start.get(), stream), "cudaEventRecord");
    comm(stream);
    detail::check_cuda(cudaEventRecord(stop.get(), stream), "cudaEventRecord");
    detail::wait_event(stop.get(), "one communication call");
    times.push_back(detail::elapsed_ms(start.get(), stop.get()));
  }
  return detail::median(times);
}

void run_partitioned(const SmPartition& partition, const Operands& ops,
                     const std::function<void(void*)>& comm, const GemmOptions& options, GemmResult& result) {
  result.mode = partition.mode();
  result.compute_sms = partition.compute_sms();
  result.comm_sms = partition.comm_sms();
  double alone_ms = 0;
  {
    SmPartition::Enter side(partition, false);
    alone_ms = time_gemm_alone(ops, static_cast<cudaStream_t>(partition.compute_stream()), options.iters);
  }
  result.tflops_alone = tflops(ops, alone_ms);
  result.comm_ms_alone = time_comm_alone(partition, comm);
  // Enough comm calls to outlast the GEMMs by half again (and at least kMinCommWindowMs, so that enqueuing
  // the GEMMs cannot outlast it); more if that was not enough.
  const double window_ms = std::max(1.5 * options.iters * alone_ms, kMinCommWindowMs);
  int reps =
      static_cast<int>(std::clamp(std::ceil(window_ms / std::max(result.comm_ms_alone, 1e-3)) + 2, 3.0, 1e5));
  std::optional<detail::CublasHandle> handle;
  {
    SmPartition::Enter side(partition, false);
    handle.emplace(static_cast<cudaStream_t>(partition.compute_stream()));
  }
  Loaded loaded;
  for (int attempt = 0; attempt < kCoverAttempts; ++attempt, reps *= 2) {
    loaded = time_gemm_loaded(partition, *handle, ops, comm, reps, options.iters);
    if (loaded.covered) break;
  }
  {
    SmPartition::Enter side(partition, false);
    handle.reset();  // destroyed in the context it was made in
  }
  result.tflops_loaded = tflops(ops, loaded.gemm_ms);
  result.slowdown = loaded.gemm_ms / alone_ms - 1.0;
  result.comm_covered = loaded.covered;
}

}  // namespace

GemmResult measure_gemm_overlap(int device, int comm_sms, const std::function<void(void* stream)>& comm,
                                const GemmOptions& options) {
  if (options.m < 1 || options.n < 1 || options.k < 1 || options.iters < 1) {
    fail(Errc::invalid_argument, "measure_gemm_overlap: m, n, k and iters must be positive (got " +
                                     std::to_string(options.m) + ", " + std::to_string(options.n) + ", " +
                                     std::to_string(options.k) + ", " + std::to_string(options.iters) + ")");
  }
  if (!comm) fail(Errc::invalid_argument, "measure_gemm_overlap: no communication function");
  detail::UseDevice use(device);
  detail::CublasLibrary::get();  // says early (Errc::unsupported) when cuBLAS cannot be loaded
  Operands ops(options);
  GemmResult result;
  {
    detail::Stream stream;
    result.tflops_full = tflops(ops, time_gemm_alone(ops, stream.get(), options.iters));
  }
  SmPartition partition(device, comm_sms, options.allow_green);
  if (!partition.green()) {
    run_partitioned(partition, ops, comm, options, result);
    return result;
  }
  try {
    run_partitioned(partition, ops, comm, options, result);
  } catch (const Error& e) {
    // Green contexts passed their probe but a later step refused them (cuBLAS, the caller's comm): measure
    // with plain streams rather than not at all, and say so.
    SmPartition plain(device, comm_sms, false);
    run_partitioned(plain, ops, comm, options, result);
    result.mode =
        "plain streams (all SMs shared): green contexts failed during the run: " + std::string(e.what());
  }
  return result;
}

}  // namespace ferry::gpu_bench
