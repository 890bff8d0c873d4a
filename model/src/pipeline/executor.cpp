#include "ferry/model/pipeline/executor.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>

#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"
#include "ferry/model/exchange_observer.hpp"
#include "ferry/model/ferry_expert_exchange.hpp"
#include "ferry/model/pipeline/stage.hpp"
#include "ferry/model/pipeline/weight_grad.hpp"
#include "ferry/peer_channel.hpp"

namespace ferry::model::pipeline {

// Named rather than anonymous: PipelineExecutor::Impl, a class with external linkage, holds these types, and
// GCC warns (-Wsubobject-linkage) about such fields when the unity build includes this file into another.
// The using-directive below gives the same visibility an anonymous namespace would.
namespace executor_detail {

using Clock = std::chrono::steady_clock;

// Hands the CPU back and forth between the two chunks of an F&B pair: exactly one of them computes at any
// time, and it gives the CPU away only right after issuing an all-to-all. Both EP peers of a stage run the
// same pair with the same hand-offs, so they issue their Buffer operations in the same order, which ferry's
// collectives require.
class Baton {
 public:
  explicit Baton(int first) : holder_(first) {}

  void acquire(int me) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return holder_ == me; });
  }
  // Gives the CPU to the other side, unless it has finished, and waits until it comes back.
  void pass(int me) {
    std::unique_lock lock(mutex_);
    if (done_[1 - me]) return;
    holder_ = 1 - me;
    changed_.notify_all();
    changed_.wait(lock, [&] { return holder_ == me; });
  }
  void finish(int me) {
    {
      std::lock_guard lock(mutex_);
      done_[me] = true;
      holder_ = 1 - me;
    }
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int holder_;
  bool done_[2] = {false, false};
};

// Records one chunk's compute segments and all-to-alls, and yields the baton at every all-to-all it issues.
// Compute segments are named after the all-to-all that ends them: attn(F) ends at dispatch(F) (attention,
// norms, the router, the shared expert, dense layers, embedding), mlp(F) at combine(F) (the routed experts),
// attn(B) at combine(B), mlp(B) at dispatch(B). W work deferred by the B half of a pair runs right after an
// all-to-all is issued, before the baton passes: mlp(W) while dispatch(B) is in flight, attn(W) otherwise.
class ChunkObserver final : public ExchangeObserver {
 public:
  ChunkObserver(TraceRecorder& trace, bool forward, Baton* baton, int me, WeightGradQueue* flush, int step,
                Work work)
      : trace_(trace), forward_(forward), baton_(baton), me_(me), flush_(flush), step_(step), work_(work) {}

  void begin() { segment_start_ = Clock::now(); }

  void issued(ExchangeOp op) override {
    issued_at_ = Clock::now();
    close_segment(op == ExchangeOp::dispatch           ? "attn(F)"
                  : op == ExchangeOp::combine          ? "mlp(F)"
                  : op == ExchangeOp::combine_backward ? "attn(B)"
                                                       : "mlp(B)");
    run_deferred(op == ExchangeOp::dispatch_backward ? "mlp(W)" : "attn(W)");
    if (baton_) baton_->pass(me_);
  }

  void finished(ExchangeOp op, const ferry::Event& event) override {
    // In flight from the moment this chunk stopped computing to issue it (the issuing call's own host work
    // counts as compute, so a run without overlap shows none) until the Buffer finished it.
    const ferry::Event::Times times = event.times();
    record(to_string(op), "a2a", Lane::comm, std::max(times.issued, issued_at_),
           std::max(times.finished, issued_at_));
    segment_start_ = Clock::now();
  }

  void end() {
    issued_at_ = Clock::now();
    close_segment(forward_ ? "attn(F)" : "attn(B)");
    run_deferred("attn(W)");
  }

 private:
  void close_segment(const char* name) { record(name, "compute", Lane::compute, segment_start_, issued_at_); }

  void run_deferred(const char* name) {
    if (!flush_ || flush_->empty()) return;
    const auto start = Clock::now();
    flush_->run();
    record(name, "compute", Lane::compute, start, Clock::now());
  }

  void record(const char* name, const char* category, Lane lane, Clock::time_point start,
              Clock::time_point end) {
    if (!trace_.enabled()) return;
    trace_.add(TraceEvent{name, category, trace_.rank(), lane, trace_.us(start), trace_.us(end), step_,
                          work_.micro_batch, work_.chunk});
  }

  TraceRecorder& trace_;
  bool forward_;
  Baton* baton_;
  int me_;
  WeightGradQueue* flush_;
  int step_;
  Work work_;
  Clock::time_point segment_start_ = Clock::now();
  Clock::time_point issued_at_ = segment_start_;
};

// What travels between pipeline ranks: an activation (forward) or its gradient (backward) of one
// micro-batch, addressed to the stage that consumes it.
enum class Payload : std::int32_t { activation = 0, gradient = 1 };
struct MessageHeader {
  std::int32_t payload;
  std::int32_t micro_batch;
  std::int32_t stage;  // the consuming stage
  std::int32_t reserved;
};
using MessageKey = std::tuple<int, int, int>;  // payload, micro_batch, stage

const char* payload_name(int payload) {
  return payload == 0 ? "activation" : "gradient";
}

// Pipeline transfers of one rank. The channel delivers each peer's messages in send order, but a rank's
// consumption order differs from its neighbour's production order (two directions share a pair of ranks in
// DualPipe), so every receive of the step is posted at its start and messages are matched by header.
class Mailbox {
 public:
  Mailbox(ferry::PeerChannel* channel, int rank, std::size_t payload_floats, TraceRecorder& trace)
      : channel_(channel), rank_(rank), floats_(payload_floats), trace_(trace) {}

  std::size_t message_bytes() const { return sizeof(MessageHeader) + floats_ * sizeof(float); }

  void begin_step(int step, const std::map<int, int>& expected) {
    step_ = step;
    for (const auto& [peer, count] : expected) {
      auto& posted = posted_[peer];
      for (int i = 0; i < count; ++i) {
        auto message = std::make_unique<Message>();
        message->bytes.resize(message_bytes());
        message->event = channel_->recv(peer, message->bytes);
        posted.push_back(std::move(message));
      }
    }
  }

  // Thread-safe (both halves of an F&B pair send). A message to this rank itself skips the channel.
  void send(int peer, Payload payload, int micro_batch, int stage, const float* data) {
    const MessageHeader header{static_cast<std::int32_t>(payload), micro_batch, stage, 0};
    std::lock_guard lock(mutex_);
    if (peer == rank_) {
      local_[MessageKey{header.payload, micro_batch, stage}].assign(data, data + floats_);
      return;
    }
    auto message = std::make_unique<Message>();
    message->bytes.resize(message_bytes());
    std::memcpy(message->bytes.data(), &header, sizeof header);
    std::memcpy(message->bytes.data() + sizeof header, data, floats_ * sizeof(float));
    message->event = channel_->send(peer, message->bytes);
    message->micro_batch = micro_batch;
    sent_.push_back(std::move(message));
  }

  std::vector<float> take(int peer, Payload payload, int micro_batch, int stage) {
    const MessageKey key{static_cast<int>(payload), micro_batch, stage};
    std::lock_guard lock(mutex_);
    auto& arrived = peer == rank_ ? local_ : arrived_[peer];
    if (auto it = arrived.find(key); it != arrived.end()) {
      std::vector<float> data = std::move(it->second);
      arrived.erase(it);
      return data;
    }
    if (peer != rank_) {
      auto& posted = posted_[peer];
      std::size_t& next = next_[peer];
      while (next < posted.size()) {
        Message& message = *posted[next++];
        const auto start = Clock::now();
        message.event.wait();
        record("pp-recv", start, Clock::now(), micro_batch);
        MessageHeader header;
        std::memcpy(&header, message.bytes.data(), sizeof header);
        std::vector<float> data(floats_);
        std::memcpy(data.data(), message.bytes.data() + sizeof header, floats_ * sizeof(float));
        const MessageKey got{header.payload, header.micro_batch, header.stage};
        if (got == key) return data;
        arrived[got] = std::move(data);
      }
    }
    fail(Errc::protocol, "pipeline rank " + std::to_string(rank_) + " waited for the " +
                             payload_name(static_cast<int>(payload)) + " of micro-batch " +
                             std::to_string(micro_batch) + " for stage " + std::to_string(stage) +
                             " from rank " + std::to_string(peer) + ", which sends nothing more this step");
  }

  // Waits for this step's sends and checks every posted receive was consumed.
  void end_step() {
    std::lock_guard lock(mutex_);
    for (auto& message : sent_) {
      message->event.wait();
      if (trace_.enabled()) {
        const auto times = message->event.times();
        record("pp-send", times.issued, times.finished, message->micro_batch);
      }
    }
    sent_.clear();
    for (auto& [peer, posted] : posted_) {
      if (next_[peer] != posted.size() || !arrived_[peer].empty())
        fail(Errc::internal, "pipeline rank " + std::to_string(rank_) + " left messages from rank " +
                                 std::to_string(peer) + " unread at the end of a step");
      posted.clear();
      next_[peer] = 0;
    }
    if (!local_.empty())
      fail(Errc::internal, "pipeline rank " + std::to_string(rank_) + " left a local hand-off");
  }

 private:
  struct Message {
    std::vector<std::byte> bytes;
    ferry::Event event;
    int micro_batch = -1;
  };

  void record(const char* name, Clock::time_point start, Clock::time_point end, int micro_batch) {
    if (!trace_.enabled()) return;
    trace_.add(
        TraceEvent{name, "pp", rank_, Lane::comm, trace_.us(start), trace_.us(end), step_, micro_batch, -1});
  }

  ferry::PeerChannel* channel_;
  int rank_;
  std::size_t floats_;
  TraceRecorder& trace_;
  int step_ = 0;
  std::mutex mutex_;
  std::map<int, std::vector<std::unique_ptr<Message>>> posted_;
  std::map<int, std::size_t> next_;
  std::map<int, std::map<MessageKey, std::vector<float>>> arrived_;
  std::map<MessageKey, std::vector<float>> local_;
  std::vector<std::unique_ptr<Message>> sent_;
};

// Where a step's gradients live: dense parameters on every rank that ran their stage, so they are summed over
// the job; the routed experts of replica d only on replica d's pipeline ranks (its expert-parallel rank owns
// them in every stage), so they are summed over that pipeline group alone. The other replicas' experts stay
// zero here and are never used here, as in plain expert parallelism.
struct GradientSplit {
  std::vector<std::pair<std::size_t, std::size_t>> dense,
      own_experts;  // (offset, size) runs of the flat array

  GradientSplit(const ParamStore<float>& params, int experts, int replica, int replicas) {
    const int per_replica = experts / replicas;
    for (const ParamInfo& info : params.info()) {
      if (!is_expert_param(info)) {
        dense.emplace_back(info.offset, info.size);
        continue;
      }
      const std::size_t slice = info.size / experts;
      own_experts.emplace_back(info.offset + slice * replica * per_replica, slice * per_replica);
    }
  }
  static std::vector<float> gather(std::span<const float> flat,
                                   const std::vector<std::pair<std::size_t, std::size_t>>& runs) {
    std::vector<float> packed;
    for (const auto& [offset, size] : runs)
      packed.insert(packed.end(), flat.begin() + offset, flat.begin() + offset + size);
    return packed;
  }
  static void scatter(std::span<float> flat, const std::vector<std::pair<std::size_t, std::size_t>>& runs,
                      const std::vector<float>& packed) {
    std::size_t at = 0;
    for (const auto& [offset, size] : runs) {
      std::copy_n(packed.begin() + at, size, flat.begin() + offset);
      at += size;
    }
  }
};

std::int64_t steady_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace executor_detail

using namespace executor_detail;

struct PipelineExecutor::Impl {
  Group& group;
  PipelineOptions options;
  ScheduleShape shape;
  int pp_rank = 0, replica = 0, replicas = 1;
  int seq = 0, dim = 0;
  std::vector<Op> ops;
  TraceRecorder trace;
  int step = 0;

  // Declared in teardown order, last first: slots (their exchanges hold the Buffer), then the Buffer, its
  // sub-group, and the pipeline channel.
  std::unique_ptr<ferry::PeerChannel> channel;
  std::unique_ptr<Group> expert_group;
  std::shared_ptr<ferry::Buffer> buffer;
  std::map<std::pair<int, int>, std::unique_ptr<StageSlot>> slots;  // (micro_batch, chunk)
  std::map<std::pair<int, int>, WeightGradQueue> deferred;          // B's weight gradients awaiting their W
  std::unique_ptr<Mailbox> mailbox;
  int micro_rows = 0;
  std::size_t channel_floats = 0;

  // Per step
  const std::uint8_t* batch = nullptr;
  double main_sum = 0, mtp_sum = 0, balance_sum = 0;
  std::vector<std::vector<std::int64_t>> loads;  // per MoE layer of the whole model

  Impl(Group& g, const PipelineOptions& o, TraceRecorder recorder)
      : group(g), options(o), trace(std::move(recorder)) {}

  StageSlot& slot(const Work& work) { return *slots.at({work.micro_batch, work.chunk}); }
  int stage_of_work(const Work& work) const { return stage_of(shape, pp_rank, work.chunk); }
  int last_stage() const { return num_stages(shape) - 1; }
  // Pipeline rank p of this replica is job rank replica · PP + p.
  int job_rank(int p) const { return replica * shape.ranks + p; }

  const std::uint8_t* micro_batch_tokens(int micro_batch) const {
    const std::size_t row = static_cast<std::size_t>(replica) * shape.micro_batches * micro_rows +
                            static_cast<std::size_t>(micro_batch) * micro_rows;
    return batch + row * (seq + 2);
  }

  std::map<int, int> expected_messages() const {
    std::map<int, int> expected;
    const int me = job_rank(pp_rank);
    auto count = [&](const Work& work, bool forward) {
      const int stage = stage_of_work(work);
      if (forward ? stage == 0 : stage == last_stage()) return;
      const int from = job_rank(place_of(shape, forward ? stage - 1 : stage + 1, work.micro_batch).rank);
      if (from != me) ++expected[from];
    };
    for (const Op& op : ops) {
      if (op.kind == OpKind::F || op.kind == OpKind::FB) count(op.f, true);
      if (op.kind == OpKind::B || op.kind == OpKind::BW || op.kind == OpKind::FB) count(op.b, false);
    }
    return expected;
  }

  std::vector<float> fetch_input(const Work& work) {
    const int stage = stage_of_work(work);
    if (stage == 0) return {};
    const int from = job_rank(place_of(shape, stage - 1, work.micro_batch).rank);
    return mailbox->take(from, Payload::activation, work.micro_batch, stage);
  }

  std::vector<float> fetch_gradient(const Work& work) {
    const int stage = stage_of_work(work);
    if (stage == last_stage()) return {};
    const int from = job_rank(place_of(shape, stage + 1, work.micro_batch).rank);
    return mailbox->take(from, Payload::gradient, work.micro_batch, stage);
  }

  void record_span(const char* name, const char* category, Lane lane, Clock::time_point start,
                   int micro_batch = -1, int chunk = -1) {
    if (!trace.enabled()) return;
    trace.add(TraceEvent{name, category, trace.rank(), lane, trace.us(start), trace.now_us(), step,
                         micro_batch, chunk});
  }

  // The forward of one chunk; `input` came from fetch_input() on the calling thread's owner.
  void forward(Model<float>& model, const Work& work, const std::vector<float>& input, Baton* baton, int me) {
    StageSlot& s = slot(work);
    const int stage = stage_of_work(work);
    ChunkObserver observer(trace, true, baton, me, nullptr, step, work);
    ScopedExchangeObserver scope(&observer);
    if (baton) baton->acquire(me);
    observer.begin();
    const float* out = s.forward(model, micro_batch_tokens(work.micro_batch), micro_rows,
                                 input.empty() ? nullptr : input.data());
    observer.end();
    if (out) {
      const int to = job_rank(place_of(shape, stage + 1, work.micro_batch).rank);
      mailbox->send(to, Payload::activation, work.micro_batch, stage + 1, out);
    }
  }

  // The backward of one chunk. defer: B only (weight gradients queued for the W op); pair_queue: the B half
  // of an overlapped pair, whose weight gradients run inside the pair while an all-to-all is in flight.
  void backward(Model<float>& model, const Work& work, const std::vector<float>& dout, bool defer,
                Baton* baton, int me) {
    StageSlot& s = slot(work);
    const int stage = stage_of_work(work);
    WeightGradQueue pair_queue;
    WeightGradQueue* queue = defer   ? &deferred[{work.micro_batch, work.chunk}]
                             : baton ? &pair_queue
                                     : nullptr;
    std::optional<DeferWeightGrads> deferring;
    if (queue) deferring.emplace(*queue);
    ChunkObserver observer(trace, false, baton, me, baton ? &pair_queue : nullptr, step, work);
    ScopedExchangeObserver scope(&observer);
    if (baton) baton->acquire(me);
    observer.begin();
    const float* din = s.backward(model, dout.empty() ? nullptr : dout.data());
    deferring.reset();
    observer.end();
    if (din) {
      const int to = job_rank(place_of(shape, stage - 1, work.micro_batch).rank);
      mailbox->send(to, Payload::gradient, work.micro_batch, stage - 1, din);
    }
  }

  void account_forward(const Work& work) {
    StageSlot& s = slot(work);
    main_sum += s.losses().main;
    mtp_sum += s.losses().mtp;
    balance_sum += s.losses().balance;
    const auto layers = s.moe_layers();
    const auto indices = s.moe_indices();
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto& counts = layers[i]->load().counts;
      auto& total = loads[indices[i]];
      for (std::size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
    }
  }

  void run_pair(Model<float>& model, const Op& op) {
    std::vector<float> input = fetch_input(op.f);
    std::vector<float> dout = fetch_gradient(op.b);
    if (!options.overlap) {
      forward(model, op.f, input, nullptr, 0);
      backward(model, op.b, dout, false, nullptr, 0);
      return;
    }
    // DualPipe issues the backward chunk's combine(B) first: its half starts with the CPU.
    constexpr int kForward = 0, kBackward = 1;
    Baton baton(kBackward);
    std::exception_ptr forward_error;
    std::thread forward_half([&] {
      try {
        forward(model, op.f, input, &baton, kForward);
      } catch (...) {
        forward_error = std::current_exception();
      }
      baton.finish(kForward);
    });
    std::exception_ptr backward_error;
    try {
      backward(model, op.b, dout, false, &baton, kBackward);
    } catch (...) {
      backward_error = std::current_exception();
    }
    baton.finish(kBackward);
    forward_half.join();
    if (backward_error) std::rethrow_exception(backward_error);
    if (forward_error) std::rethrow_exception(forward_error);
  }

  void run_op(Model<float>& model, const Op& op) {
    const auto start = Clock::now();
    switch (op.kind) {
      case OpKind::F:
        forward(model, op.f, fetch_input(op.f), nullptr, 0);
        account_forward(op.f);
        break;
      case OpKind::B:
      case OpKind::BW:
        backward(model, op.b, fetch_gradient(op.b), op.kind == OpKind::B, nullptr, 0);
        break;
      case OpKind::W: {
        auto it = deferred.find({op.b.micro_batch, op.b.chunk});
        if (it == deferred.end())
          fail(Errc::internal, "W of micro-batch " + std::to_string(op.b.micro_batch) + " before its B");
        it->second.run();
        deferred.erase(it);
        record_span("W", "compute", Lane::compute, start, op.b.micro_batch, op.b.chunk);
        break;
      }
      case OpKind::FB:
        run_pair(model, op);
        account_forward(op.f);
        break;
    }
    const Work& work = op.kind == OpKind::F || op.kind == OpKind::FB ? op.f : op.b;
    record_span(to_string(op.kind), "op", Lane::ops, start, work.micro_batch, work.chunk);
  }
};

PipelineExecutor::PipelineExecutor(Group& group, const Model<float>& model, const PipelineOptions& options) {
  ScheduleShape shape{options.schedule, options.pipeline_ranks, options.micro_batches};
  validate(shape);
  const int world = group.world_size();
  if (world % shape.ranks != 0)
    fail(Errc::invalid_argument, "a pipeline of " + std::to_string(shape.ranks) +
                                     " ranks does not divide the " + std::to_string(world) +
                                     " ranks of the job");
  // Every rank starts its timeline at rank 0's clock reading: the ranks of an emulated cluster share a
  // machine, so their steady clocks agree.
  const std::int64_t mine = steady_ns(Clock::now());
  std::vector<std::uint8_t> bytes(sizeof mine);
  std::memcpy(bytes.data(), &mine, sizeof mine);
  const auto all = group.all_gather("ferry.pipeline.epoch", bytes);
  std::int64_t epoch_ns = 0;
  std::memcpy(&epoch_ns, all.at(0).data(), sizeof epoch_ns);
  const Clock::time_point epoch{
      std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(epoch_ns))};

  impl_ = std::make_unique<Impl>(group, options, TraceRecorder(group.rank(), options.trace, epoch));
  Impl& impl = *impl_;
  impl.shape = shape;
  impl.replicas = world / shape.ranks;
  impl.pp_rank = group.rank() % shape.ranks;
  impl.replica = group.rank() / shape.ranks;
  impl.seq = model.config().seq;
  impl.dim = model.config().dim;
  impl.ops = rank_schedule(shape, impl.pp_rank);

  // The expert-parallel group of this pipeline rank: the same pipeline rank of every replica.
  const ModelConfig& config = model.config();
  if (config.layers > config.n_dense) {
    Group* expert_group = &group;  // no pipeline: the whole job is the expert-parallel group
    if (impl.replicas != world) {
      std::vector<int> members;
      for (int d = 0; d < impl.replicas; ++d) members.push_back(d * shape.ranks + impl.pp_rank);
      impl.expert_group = std::make_unique<Group>(group.split("ep" + std::to_string(impl.pp_rank), members));
      expert_group = impl.expert_group.get();
    }
    ferry::Config buffer_config = expert_exchange_config(config, expert_group->num_nodes());
    buffer_config.timeout = options.timeout;
    impl.buffer = std::make_shared<ferry::Buffer>(*expert_group, buffer_config);
  }

  auto buffer = impl.buffer;
  const ExchangeFactory<float> exchange_for =
      [buffer](int, int experts) -> std::unique_ptr<ExpertExchange<float>> {
    return std::make_unique<FerryExpertExchange>(buffer, experts);
  };
  for (int m = 0; m < shape.micro_batches; ++m) {
    for (int c = 0; c < chunks_per_rank(shape); ++c) {
      const StageRange range = stage_range(config, stage_of(shape, impl.pp_rank, c), num_stages(shape));
      impl.slots[{m, c}] = std::make_unique<StageSlot>(model, range, exchange_for);
    }
  }
}

PipelineExecutor::~PipelineExecutor() = default;

const ScheduleShape& PipelineExecutor::shape() const {
  return impl_->shape;
}
int PipelineExecutor::replicas() const {
  return impl_->replicas;
}

ReducedStep PipelineExecutor::run_step(Model<float>& model, const std::uint8_t* global_batch,
                                       int global_rows) {
  Impl& impl = *impl_;
  const int per_step = impl.replicas * impl.shape.micro_batches;
  if (global_rows % per_step != 0)
    fail(Errc::invalid_argument, "a global batch of " + std::to_string(global_rows) +
                                     " rows does not split into " + std::to_string(impl.replicas) +
                                     " replicas x " + std::to_string(impl.shape.micro_batches) +
                                     " micro-batches");
  const int micro_rows = global_rows / per_step;
  const std::size_t floats = static_cast<std::size_t>(micro_rows) * impl.seq * impl.dim;
  if (!impl.channel) {
    // Built at the first step, when the message size is known (collective: every rank takes that step).
    ferry::PeerChannelConfig config;
    config.timeout = impl.options.timeout;
    config.max_message_bytes =
        std::max<std::size_t>(config.max_message_bytes, sizeof(MessageHeader) + floats * 4);
    impl.channel = std::make_unique<ferry::PeerChannel>(impl.group, config);
    impl.channel_floats = floats;
  }
  if (floats > impl.channel_floats)
    fail(Errc::invalid_argument,
         "micro-batches grew after the first step: the pipeline channel is sized for " +
             std::to_string(impl.channel_floats) + " values per activation");
  if (impl.micro_rows != micro_rows || !impl.mailbox) {
    impl.micro_rows = micro_rows;
    impl.mailbox = std::make_unique<Mailbox>(impl.channel.get(), impl.group.rank(), floats, impl.trace);
  }
  impl.batch = global_batch;
  impl.main_sum = impl.mtp_sum = impl.balance_sum = 0;
  const auto master_layers = model.moe_layers();
  impl.loads.assign(master_layers.size(), std::vector<std::int64_t>(model.config().experts, 0));
  // Every replica of a layer routes with the master's selection bias of this step.
  for (auto& [key, s] : impl.slots) {
    const auto layers = s->moe_layers();
    const auto indices = s->moe_indices();
    for (std::size_t i = 0; i < layers.size(); ++i) layers[i]->bias() = master_layers[indices[i]]->bias();
  }
  model.zero_grad();

  const auto step_start = Clock::now();
  impl.mailbox->begin_step(impl.step, impl.expected_messages());
  for (const Op& op : impl.ops) impl.run_op(model, op);
  impl.mailbox->end_step();
  if (!impl.deferred.empty()) fail(Errc::internal, "a B op's weight gradients never ran (no W followed it)");
  impl.record_span("step", "step", Lane::ops, step_start);

  // Each parameter's gradient lives on the ranks that ran its stage (both DualPipe directions, every
  // replica), each expert's on its owner: one sum over the whole job gives everyone the step's gradients.
  // They go through the fabric, and so do the losses, loads and activation peaks (a few numbers, in double).
  const auto reduce_start = Clock::now();
  const double scale = 1.0 / per_step;
  auto grads = model.params().grads();
  const GradientSplit split(model.params(), model.config().experts, impl.replica, impl.replicas);
  std::vector<int> everyone(impl.group.world_size()), pipeline_group;
  for (int r = 0; r < impl.group.world_size(); ++r) everyone[r] = r;
  for (int p = 0; p < impl.shape.ranks; ++p) pipeline_group.push_back(impl.job_rank(p));
  std::vector<float> dense = GradientSplit::gather(grads, split.dense);
  sum_over_ranks<float>(*impl.channel, everyone, dense, scale);
  GradientSplit::scatter(grads, split.dense, dense);
  std::vector<float> experts = GradientSplit::gather(grads, split.own_experts);
  sum_over_ranks<float>(*impl.channel, pipeline_group, experts, scale);
  GradientSplit::scatter(grads, split.own_experts, experts);
  double dense_sq = 0, expert_sq = 0;
  for (const float g : dense) dense_sq += static_cast<double>(g) * g;
  for (const float g : experts) expert_sq += static_cast<double>(g) * g;
  // Every pipeline rank of a replica holds that replica's experts: each adds its share of their squares.
  std::vector<double> packed{impl.main_sum, impl.mtp_sum, impl.balance_sum, expert_sq / impl.shape.ranks};
  for (const auto& load : impl.loads) packed.insert(packed.end(), load.begin(), load.end());
  const std::size_t peaks_at = packed.size();
  std::size_t peak = 0;
  for (const auto& [key, s] : impl.slots) peak = std::max(peak, s->peak_activation_bytes());
  append_rank_slots(packed, impl.group.rank(), impl.group.world_size(), static_cast<double>(peak));
  sum_over_ranks<double>(*impl.channel, everyone, packed);

  ReducedStep reduced;
  reduced.losses.main = packed[0] * scale;
  reduced.losses.mtp = packed[1] * scale;
  reduced.losses.balance = packed[2] * scale;
  reduced.losses.total =
      reduced.losses.main + model.config().mtp_lambda * reduced.losses.mtp + reduced.losses.balance;
  std::size_t at = 4;
  for (const auto& load : impl.loads) {
    ExpertLoad total;
    for (std::size_t e = 0; e < load.size(); ++e)
      total.counts.push_back(static_cast<std::int64_t>(packed[at++]));
    reduced.loads.push_back(std::move(total));
  }
  reduced.activation_peak_bytes =
      static_cast<std::size_t>(max_of_rank_slots(packed, peaks_at, impl.group.world_size()));
  reduced.grad_norm = std::sqrt(dense_sq + packed[3]);
  impl.record_span("grad-reduce", "op", Lane::ops, reduce_start);
  ++impl.step;
  return reduced;
}

std::vector<TraceEvent> PipelineExecutor::gather_trace() {
  std::ostringstream out;
  write_chrome_trace(out, impl_->trace.events());
  const std::string text = out.str();
  const auto all = impl_->group.all_gather(
      "ferry.pipeline.trace", std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  std::vector<TraceEvent> events;
  for (const auto& blob : all) {
    auto theirs =
        parse_chrome_trace(std::string_view(reinterpret_cast<const char*>(blob.data()), blob.size()));
    events.insert(events.end(), theirs.begin(), theirs.end());
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.start_us < b.start_us; });
  return events;
}

double PipelineExecutor::published_bubble_s(const OverlapMetrics& m) const {
  OpCosts costs;
  costs.F = m.f_s;
  costs.W = m.w_s;
  costs.B = m.b_count > 0 ? m.b_s : m.bw_s;  // 1F1B's backward is whole (BW)
  costs.FB = m.fb_count > 0 ? m.fb_s : costs.F + costs.B;
  return published_bubble(impl_->shape, costs);
}

}  // namespace ferry::model::pipeline
