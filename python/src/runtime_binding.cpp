#include "runtime_binding.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "dlpack_bridge.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "waits.hpp"

namespace ferry::python {

namespace py = pybind11;

namespace {

// ---- Layout ----

struct LayoutObject {
  std::shared_ptr<const Layout> layout;
  int cuda_device = 0;

  py::object is_token_in_rank() const {
    const Layout& l = *layout;
    if (l.on_device()) return py::cast(Exported::of(l.is_token_in_rank_device, cuda_device));
    return py::cast(Exported(layout, const_cast<std::uint8_t*>(l.is_token_in_rank.data()),
                             {l.num_tokens, l.num_ranks}, {dlpack::kUInt, 8, 1}, {dlpack::kCPU, 0}));
  }
};

// ---- Handle ----

struct HandleObject {
  Handle handle;
  int cuda_device = 0;

  py::object source_column(std::span<const std::int32_t> (Handle::*column)() const, const char* what) const {
    if (!handle.valid()) fail(Errc::invalid_argument, "the handle is empty");
    const std::span<const std::int32_t> values = (handle.*column)();
    if (values.empty() && handle.num_recv_tokens() > 0) {
      fail(Errc::unsupported, std::string(what) + " of a CUDA Buffer's handle stays on the GPU");
    }
    auto owner = std::make_shared<const Handle>(handle);
    return py::cast(Exported(owner, const_cast<std::int32_t*>(values.data()),
                             {static_cast<std::int64_t>(values.size())}, {dlpack::kInt, 32, 1},
                             {dlpack::kCPU, 0}));
  }
};

// ---- operations in flight ----

// What on_allocated saw: the output tensors (and, for a CUDA Buffer, a handle usable at once).
struct DispatchNotice {
  std::mutex mutex;
  std::condition_variable changed;
  bool ready = false;
  DispatchResult seen;
};

py::tuple dispatch_tensors(const DispatchResult& r, int cuda_device) {
  return py::make_tuple(export_or_none(r.recv_x, cuda_device), export_or_none(r.recv_x_scales, cuda_device),
                        export_or_none(r.recv_topk_idx, cuda_device),
                        export_or_none(r.recv_topk_weights, cuda_device));
}

struct DispatchOp {
  std::optional<Pending<DispatchResult>> pending;
  std::shared_ptr<DispatchNotice> notice;
  int cuda_device = 0;

  // True once the output tensors exist; false when the operation finished without them (it failed: wait on
  // the event to raise its error).
  bool wait_allocated() {
    const Event& event = pending->event();
    bool allocated = false;
    wait_until([&](Duration timeout) {
      std::unique_lock lock(notice->mutex);
      if (notice->changed.wait_for(lock, timeout, [&] { return notice->ready; })) {
        allocated = true;
        return true;
      }
      return event.test();
    });
    return allocated;
  }

  py::tuple allocated() {
    std::lock_guard lock(notice->mutex);
    if (!notice->ready) fail(Errc::internal, "dispatch outputs read before they were allocated");
    return dispatch_tensors(notice->seen, cuda_device);
  }

  const DispatchResult& finished() {
    wait_interruptibly(pending->event());
    return pending->wait();  // finished: returns at once
  }

  py::tuple result() {
    const DispatchResult& r = finished();
    return py::make_tuple(dispatch_tensors(r, cuda_device), r.num_recv_tokens, r.tokens_per_local_expert,
                          HandleObject{r.handle, cuda_device});
  }

  // The handle for a later operation: a CUDA Buffer's is usable once dispatch() returned; a host Buffer's
  // once the dispatch finished.
  HandleObject handle() {
    if (!pending->test()) {
      std::lock_guard lock(notice->mutex);
      if (notice->ready && notice->seen.handle.valid()) return {notice->seen.handle, cuda_device};
    }
    return {finished().handle, cuda_device};
  }
};

struct CombineOp {
  std::optional<Pending<CombineResult>> pending;
  Tensor out;
  Tensor topk_weights;
  int cuda_device = 0;

  py::tuple outputs() const {
    return py::make_tuple(export_or_none(out, cuda_device), export_or_none(topk_weights, cuda_device));
  }
  void wait() { wait_interruptibly(pending->event()); }
};

// ---- Runtime ----

JobEnv job_of(const py::dict& d) {
  JobEnv job;
  job.launcher = Launcher::torchrun;
  job.rank = d["rank"].cast<int>();
  job.world_size = d["world_size"].cast<int>();
  job.local_rank = d["local_rank"].cast<int>();
  job.local_size = d["local_size"].cast<int>();
  job.store_host = d["store_host"].cast<std::string>();
  job.store_port = d["store_port"].cast<std::uint16_t>();
  job.store_fd = d.contains("store_fd") ? d["store_fd"].cast<int>() : -1;
  job.secret = d["secret"].cast<std::string>();
  job.secret_source = SecretSource::environment;
  job.job_id = d["job_id"].cast<std::string>();
  if (d.contains("node_address")) job.node_address = d["node_address"].cast<std::string>();
  if (d.contains("launcher")) {
    const std::string name = d["launcher"].cast<std::string>();
    for (Launcher l :
         {Launcher::single, Launcher::ferry, Launcher::torchrun, Launcher::openmpi, Launcher::slurm}) {
      if (name == to_string(l)) job.launcher = l;
    }
  }
  return job;
}

// The job ferry's launcher environment describes (FERRY_*, torchrun, ...), joined once per process: its store
// is the launcher's (one port, one listening socket handed to rank 0), so every Buffer built without a
// process group gets a sub-group of it (Group::split) with a store prefix and job id of its own. Kept to the
// end of the process.
struct EnvironmentJob {
  std::mutex mutex;
  std::shared_ptr<Group> root;
  int buffers = 0;  // sub-groups made so far: the same sequence on every rank
};

EnvironmentJob& environment_job() {
  static auto* job = new EnvironmentJob;  // never destroyed: Buffers may be abandoned with their sub-groups
  return *job;
}

class Runtime {
 public:
  // normal: build the Buffer (normal mode). A Buffer(low_latency_mode=True) without num_nvl_bytes has none,
  // as DeepEP allocates no NVLink buffer then; its low-latency buffer shares this Runtime's Group.
  Runtime(const py::object& job, const Config& config, bool cuda, int cuda_device, bool normal)
      : cuda_device_(cuda_device), cuda_(cuda), config_(config) {
    const std::optional<JobEnv> explicit_job =
        job.is_none() ? std::nullopt : std::optional<JobEnv>(job_of(job.cast<py::dict>()));
    py::gil_scoped_release release;
    GroupOptions options;  // joining waits for ranks that start late: never shorter than ferry's default
    options.timeout = std::max<Duration>(config.timeout, kDefaultTimeout);
    if (explicit_job) {
      group_ = std::make_shared<Group>(Group::from_job(*explicit_job, options));
    } else {
      EnvironmentJob& env = environment_job();
      std::lock_guard lock(env.mutex);
      if (!env.root) env.root = std::make_shared<Group>(Group::from_env(options));
      root_ = env.root;
      std::vector<int> everyone(static_cast<std::size_t>(root_->world_size()));
      for (int r = 0; r < root_->world_size(); ++r) everyone[static_cast<std::size_t>(r)] = r;
      group_ =
          std::make_shared<Group>(root_->split("python_buffer_" + std::to_string(env.buffers++), everyone));
    }
    if (normal) {
      buffer_ = std::make_unique<Buffer>(*group_, config, cuda ? Device::cuda : Device::host);
      config_ = buffer_->config();
    }
  }

  // Not collective with the GIL held: close() is the orderly way out; a Runtime dropped without it (e.g. at
  // interpreter exit) tears down here, holding the GIL (ferry's threads never need it).
  ~Runtime() = default;

  Buffer& buffer() {
    if (!group_) fail(Errc::invalid_argument, "the Buffer was destroyed (destroy() or an interrupted wait)");
    if (!buffer_) {
      fail(Errc::invalid_argument,
           "this Buffer was built with low_latency_mode=True and num_nvl_bytes=0, so it has no normal-mode "
           "buffer (as in DeepEP): build it with num_nvl_bytes > 0 to use get_dispatch_layout / dispatch / "
           "combine too");
    }
    return *buffer_;
  }

  std::shared_ptr<Group> group() const {
    if (!group_) fail(Errc::invalid_argument, "the Buffer was destroyed (destroy() or an interrupted wait)");
    return group_;
  }

  void close() {
    py::gil_scoped_release release;
    buffer_.reset();  // collective: waits for the other ranks
    group_.reset();
    root_.reset();
  }

  // After an interrupted wait an operation may still be running and can neither be cancelled nor waited for:
  // the Buffer and its Group are left to the end of the process instead of being torn down (which would wait
  // for that operation and for the peers).
  void abandon() {
    (void)buffer_.release();
    if (group_) (void)new std::shared_ptr<Group>(std::move(group_));  // never freed, on purpose
  }

  // stream (CUDA Buffers): the caller's stream, where topk_idx was written; the layout kernel runs after it.
  LayoutObject layout(const ImportedTensor& topk_idx, std::int64_t num_experts, std::uintptr_t stream) {
    Buffer& b = buffer();
    py::gil_scoped_release release;
    return {std::make_shared<const Layout>(
                b.get_layout(topk_idx.view(), num_experts, reinterpret_cast<void*>(stream))),
            cuda_device_};
  }

  std::unique_ptr<DispatchOp> dispatch(const ImportedTensor& x, const ImportedTensor* x_scales,
                                       const ImportedTensor& topk_idx, const ImportedTensor& topk_weights,
                                       const LayoutObject& layout, std::int64_t num_worst_tokens,
                                       int expert_alignment, std::optional<Config> call,
                                       std::uintptr_t stream) {
    Buffer& b = buffer();
    auto op = start_dispatch();
    DispatchOptions options = dispatch_options(*op, std::move(call), stream);
    options.num_worst_tokens = num_worst_tokens;
    options.expert_alignment = expert_alignment;
    DispatchInputs inputs{x.view(), view_or_empty(x_scales), topk_idx.view(), topk_weights.view()};
    py::gil_scoped_release release;
    op->pending.emplace(b.dispatch(inputs, *layout.layout, options));
    return op;
  }

  std::unique_ptr<DispatchOp> dispatch_cached(const ImportedTensor& x, const ImportedTensor* x_scales,
                                              const HandleObject& handle, std::optional<Config> call,
                                              std::uintptr_t stream) {
    Buffer& b = buffer();
    auto op = start_dispatch();
    DispatchOptions options = dispatch_options(*op, std::move(call), stream);
    py::gil_scoped_release release;
    op->pending.emplace(b.dispatch(x.view(), view_or_empty(x_scales), handle.handle, options));
    return op;
  }

  std::unique_ptr<CombineOp> combine(const ImportedTensor& y, const HandleObject& handle,
                                     const ImportedTensor* topk_weights, const ImportedTensor* bias,
                                     std::optional<Config> call, std::uintptr_t stream) {
    Buffer& b = buffer();
    auto op = std::make_unique<CombineOp>();
    op->cuda_device = cuda_device_;
    CombineOptions options;
    options.topk_weights = view_or_empty(topk_weights);
    options.bias = view_or_empty(bias);
    options.config = std::move(call);
    options.stream = reinterpret_cast<void*>(stream);
    CombineOp* target = op.get();
    options.on_allocated = [target](const CombineResult& r) {  // before combine() returns, on this thread
      target->out = r.out;
      target->topk_weights = r.topk_weights;
    };
    py::gil_scoped_release release;
    op->pending.emplace(b.combine(y.view(), handle.handle, options));
    return op;
  }

  int rank() const { return group()->rank(); }
  int num_ranks() const { return group()->world_size(); }
  int num_nodes() const { return group()->num_nodes(); }
  int local_size() const { return group()->local_size(); }
  Config config() const { return config_; }
  bool cuda() const { return cuda_; }
  int cuda_device() const { return cuda_device_; }
  bool alive() const { return group_ != nullptr; }
  bool has_normal_buffer() const { return buffer_ != nullptr; }

 private:
  std::unique_ptr<DispatchOp> start_dispatch() const {
    auto op = std::make_unique<DispatchOp>();
    op->notice = std::make_shared<DispatchNotice>();
    op->cuda_device = cuda_device_;
    return op;
  }

  static DispatchOptions dispatch_options(DispatchOp& op, std::optional<Config> call, std::uintptr_t stream) {
    DispatchOptions options;
    options.config = std::move(call);
    options.stream = reinterpret_cast<void*>(stream);
    options.on_allocated = [notice = op.notice](const DispatchResult& r) {
      {
        std::lock_guard lock(notice->mutex);
        notice->seen.recv_x = r.recv_x;
        notice->seen.recv_x_scales = r.recv_x_scales;
        notice->seen.recv_topk_idx = r.recv_topk_idx;
        notice->seen.recv_topk_weights = r.recv_topk_weights;
        notice->seen.handle = r.handle;
        notice->ready = true;
      }
      notice->changed.notify_all();
    };
    return options;
  }

  int cuda_device_ = 0;
  bool cuda_ = false;
  Config config_;                 // the Buffer's (or, without one, the one given)
  std::shared_ptr<Group> root_;   // the launcher's job, when this Buffer's group is a sub-group of it
  std::shared_ptr<Group> group_;  // shared with the low-latency buffer built beside it
  std::unique_ptr<Buffer> buffer_;
};

}  // namespace

std::shared_ptr<Group> group_of_runtime(py::handle runtime) {
  return runtime.cast<Runtime&>().group();
}

RuntimeDevice device_of_runtime(py::handle runtime) {
  const Runtime& r = runtime.cast<Runtime&>();
  return {r.cuda(), r.cuda_device()};
}

void register_runtime(py::module_& module) {
  py::class_<EventObject>(module, "Event",
                          "Completion of one ferry operation. wait() releases the GIL and can be interrupted "
                          "(Ctrl-C); it raises the operation's error.")
      .def(
          "test", [](const EventObject& e) { return e.event.test(); },
          "True once the operation has finished.")
      .def(
          "wait", [](const EventObject& e) { wait_interruptibly(e.event); },
          "Blocks (GIL released) until the operation finished; raises its error. Ctrl-C interrupts it.")
      .def(
          "wait_for",
          [](const EventObject& e, double seconds) {
            py::gil_scoped_release release;
            return e.event.wait_for(
                std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds)));
          },
          py::arg("seconds"),
          "Waits at most `seconds`; True when the operation has finished (no error raised).")
      .def(
          "stream_wait",
          [](const EventObject& e, std::uintptr_t stream) {
            py::gil_scoped_release release;
            e.event.stream_wait(reinterpret_cast<void*>(stream));
          },
          py::arg("stream"),
          "Makes a CUDA stream (cudaStream_t as an int) wait for the operation without blocking the host; "
          "for "
          "a host Buffer's operation the host waits instead.");

  py::class_<LayoutObject>(module, "Layout", "Where each token goes (Buffer.get_dispatch_layout's result).")
      .def_property_readonly("num_tokens", [](const LayoutObject& l) { return l.layout->num_tokens; })
      .def_property_readonly("num_experts", [](const LayoutObject& l) { return l.layout->num_experts; })
      .def_property_readonly("on_device", [](const LayoutObject& l) { return l.layout->on_device(); })
      .def("tokens_per_rank", [](const LayoutObject& l) { return l.layout->tokens_per_rank; })
      .def("tokens_per_node", [](const LayoutObject& l) { return l.layout->tokens_per_node; })
      .def("tokens_per_expert", [](const LayoutObject& l) { return l.layout->tokens_per_expert; })
      .def("is_token_in_rank", &LayoutObject::is_token_in_rank,
           "[tokens, ranks] uint8 (1: the token goes there).");

  py::class_<HandleObject>(module, "Handle",
                           "A finished dispatch's routing, for combine and cached dispatch.")
      .def_property_readonly("valid", [](const HandleObject& h) { return h.handle.valid(); })
      .def_property_readonly("num_tokens", [](const HandleObject& h) { return h.handle.num_tokens(); })
      .def_property_readonly("num_recv_tokens",
                             [](const HandleObject& h) { return h.handle.num_recv_tokens(); })
      .def_property_readonly("recv_rows", [](const HandleObject& h) { return h.handle.recv_rows(); })
      .def(
          "recv_src_rank",
          [](const HandleObject& h) { return h.source_column(&Handle::recv_src_rank, "recv_src_rank"); },
          "[received] int32: the source rank of every received row (host Buffers).")
      .def(
          "recv_src_token",
          [](const HandleObject& h) { return h.source_column(&Handle::recv_src_token, "recv_src_token"); },
          "[received] int32: the source rank's token index of every received row (host Buffers).");

  py::class_<DispatchOp>(module, "DispatchOp", "A dispatch in flight.")
      .def("event", [](const DispatchOp& op) { return EventObject{op.pending->event()}; })
      .def(
          "wait_allocated", &DispatchOp::wait_allocated,
          "Until the receive tensors exist (True) or the dispatch ended without them (False: it failed). GIL "
          "released; Ctrl-C interrupts it.")
      .def("allocated", &DispatchOp::allocated,
           "(recv_x, recv_x_scales, recv_topk_idx, recv_topk_weights), "
           "each an Exported or None, once wait_allocated() returned True.")
      .def("result", &DispatchOp::result,
           "Waits; then ((recv_x, recv_x_scales, recv_topk_idx, recv_topk_weights), num_recv_tokens, "
           "tokens_per_local_expert, Handle).")
      .def("handle", &DispatchOp::handle, "The Handle for later operations (waits on a host Buffer).");

  py::class_<CombineOp>(module, "CombineOp", "A combine in flight.")
      .def("event", [](const CombineOp& op) { return EventObject{op.pending->event()}; })
      .def("outputs", &CombineOp::outputs,
           "(combined_x, combined_topk_weights or None); final once the event is.")
      .def("wait", &CombineOp::wait,
           "Waits (GIL released, Ctrl-C interrupts) and raises the combine's error.");

  py::class_<Runtime>(module, "Runtime",
                      "One rank's ferry Group and Buffer. ferry.Buffer drives it; see its docstrings.")
      .def(
          py::init<const py::object&, const Config&, bool, int, bool>(), py::arg("job"), py::arg("config"),
          py::arg("cuda") = false, py::arg("cuda_device") = 0, py::arg("normal") = true,
          "Collective: joins the job (job: a dict with rank, world_size, local_rank, local_size, store_host, "
          "store_port, store_fd, secret, job_id[, node_address, launcher]; None: ferry's own launcher "
          "environment) and, with normal, builds the Buffer. GIL released meanwhile.")
      .def("close", &Runtime::close, "Collective: finishes what was issued, then frees the Buffer and Group.")
      .def("abandon", &Runtime::abandon,
           "Leaves the Buffer and Group to the end of the process (see waits.hpp).")
      .def_property_readonly("alive", &Runtime::alive)
      .def_property_readonly("has_normal_buffer", &Runtime::has_normal_buffer)
      .def_property_readonly("rank", &Runtime::rank)
      .def_property_readonly("num_ranks", &Runtime::num_ranks)
      .def_property_readonly("num_nodes", &Runtime::num_nodes)
      .def_property_readonly("local_size", &Runtime::local_size)
      .def_property_readonly("config", &Runtime::config)
      .def_property_readonly("cuda", &Runtime::cuda)
      .def("layout", &Runtime::layout, py::arg("topk_idx"), py::arg("num_experts"), py::arg("stream") = 0)
      .def("dispatch", &Runtime::dispatch, py::arg("x"), py::arg("x_scales").none(true), py::arg("topk_idx"),
           py::arg("topk_weights"), py::arg("layout"), py::arg("num_worst_tokens"),
           py::arg("expert_alignment"), py::arg("config").none(true), py::arg("stream"))
      .def("dispatch_cached", &Runtime::dispatch_cached, py::arg("x"), py::arg("x_scales").none(true),
           py::arg("handle"), py::arg("config").none(true), py::arg("stream"))
      .def("combine", &Runtime::combine, py::arg("y"), py::arg("handle"), py::arg("topk_weights").none(true),
           py::arg("bias").none(true), py::arg("config").none(true), py::arg("stream"));
}

}  // namespace ferry::python
