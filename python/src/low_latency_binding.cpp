// ferry._ferry.LowLatencyRuntime: ferry::LowLatencyBuffer (DeepEP's low-latency mode) for ferry.Buffer, which
// builds it beside its Runtime, on the Runtime's Group and device (python/ferry/low_latency.py drives it).
// On a CUDA Runtime the buffer is LowLatencyBuffer(group, config, Device::cuda): dispatch and combine take
// the caller's CUDA stream, enqueue their halves after it and make it wait for them; the results are device
// tensors, valid in that stream's order.
//
// Every call that can wait (dispatch, combine, a receive hook, clean, get_next_low_latency_combine_buffer)
// runs on the runtime's CallThread while the Python thread waits with the GIL released and Ctrl-C can end the
// wait. The mask calls only read or write words and run in place on the host; on the GPU they synchronise
// the buffer's stream, so they run on the CallThread too.
//
// get_next_low_latency_combine_buffer hands out a view of the buffer's own memory, which keeps the
// LowLatencyBuffer alive (never freed under a view). close() is collective: every rank learns whether any
// rank still holds such a view, and then all destroy the buffer or all refuse by name (destroying it on some
// ranks only would leave the others waiting in its closing barrier).
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "call_thread.hpp"
#include "dlpack_bridge.hpp"
#include "ferry/core/error.hpp"
#include "ferry/low_latency.hpp"
#include "runtime_binding.hpp"

namespace ferry::python {

namespace py = pybind11;

namespace {

struct LowLatencyHandleObject {
  LowLatencyHandle handle;
};

// A receive hook: calling it runs the operation's receive half on the runtime's CallThread.
struct HookObject {
  LowLatencyHook hook;
  std::shared_ptr<CallThread> calls;

  void call() const {
    calls->run([hook = hook] { hook(); });
  }
};

template <class Value>
std::vector<std::uint8_t> bytes_of(Value value) {
  std::vector<std::uint8_t> bytes(sizeof value);
  std::memcpy(bytes.data(), &value, sizeof value);
  return bytes;
}

template <class Value>
Value value_of(const std::vector<std::uint8_t>& bytes) {
  Value value{};
  if (bytes.size() == sizeof value) std::memcpy(&value, bytes.data(), sizeof value);
  return value;
}

// Kept to the end of the process on purpose (an abandoned runtime, or one whose close was refused).
template <class T>
void leak(std::shared_ptr<T>& owner) {
  if (owner) (void)new std::shared_ptr<T>(std::move(owner));
}

class LowLatencyRuntime {
 public:
  // Collective: every rank of the Runtime's Group builds one with the same num_rdma_bytes.
  LowLatencyRuntime(py::handle runtime, std::size_t num_rdma_bytes, double timeout_s)
      : group_(group_of_runtime(runtime)), device_(device_of_runtime(runtime)) {
    LowLatencyConfig config;
    config.num_rdma_bytes = num_rdma_bytes;
    config.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(timeout_s));
    py::gil_scoped_release release;
    buffer_ = std::make_shared<LowLatencyBuffer>(*group_, config, device_.cuda ? Device::cuda : Device::host);
    calls_ = std::make_shared<CallThread>();
  }

  // Not collective with the GIL held: a runtime dropped without close() (at interpreter exit, say) tears
  // down here, unless a view of its memory is alive or its close was refused (then it is kept, on every rank
  // alike: see the file comment).
  ~LowLatencyRuntime() {
    if (!buffer_) return;
    if (close_refused_ || buffer_.use_count() > 1) {
      leak(buffer_);
      leak(group_);
      return;
    }
    calls_.reset();
    buffer_.reset();
    group_.reset();
  }

  LowLatencyRuntime(const LowLatencyRuntime&) = delete;
  LowLatencyRuntime& operator=(const LowLatencyRuntime&) = delete;

  void close() {
    if (!buffer_) return;
    const std::int64_t views = buffer_.use_count() - 1;
    std::string holders;
    {
      py::gil_scoped_release release;
      const auto all = group_->all_gather("ferry/python/low_latency/close", bytes_of(views));
      for (std::size_t r = 0; r < all.size(); ++r) {
        if (value_of<std::int64_t>(all[r]) > 0) holders += (holders.empty() ? "" : ", ") + std::to_string(r);
      }
    }
    if (!holders.empty()) {
      close_refused_ = true;
      fail(Errc::invalid_argument,
           "the low-latency buffer cannot be destroyed while rank(s) " + holders +
               " still hold the tensor get_next_low_latency_combine_buffer returned (a view of the buffer's "
               "memory): drop it (del) on every rank, then destroy again");
    }
    py::gil_scoped_release release;
    calls_.reset();
    buffer_.reset();  // collective: waits for the other ranks
    group_.reset();
  }

  // After an interrupted wait a call may still be running on the CallThread: everything is left to the end of
  // the process.
  void abandon() {
    if (calls_) calls_->abandon();
    leak(calls_);
    leak(buffer_);
    leak(group_);
  }

  bool alive() const { return buffer_ != nullptr; }
  bool cuda() const { return device_.cuda; }
  int cuda_device() const { return device_.cuda_device; }
  int rank() { return live().rank(); }
  int num_ranks() { return live().num_ranks(); }
  std::size_t num_rdma_bytes() { return live().num_rdma_bytes(); }

  py::tuple dispatch(const ImportedTensor& x, const ImportedTensor& topk_idx, std::int64_t max_tokens,
                     std::int64_t num_experts, const ImportedTensor* cumulative_local_expert_recv_stats,
                     const ImportedTensor* dispatch_wait_recv_cost_stats, bool use_fp8, bool round_scale,
                     bool use_ue8m0, bool async_finish, bool return_recv_hook, std::uintptr_t stream) {
    LowLatencyBuffer* buffer = &live();
    LowLatencyDispatchOptions options;
    options.stream = reinterpret_cast<void*>(stream);
    options.use_fp8 = use_fp8;
    options.round_scale = round_scale;
    options.use_ue8m0 = use_ue8m0;
    options.async_finish = async_finish;
    options.return_recv_hook = return_recv_hook;
    options.cumulative_local_expert_recv_stats = view_or_empty(cumulative_local_expert_recv_stats);
    options.dispatch_wait_recv_cost_stats = view_or_empty(dispatch_wait_recv_cost_stats);
    const TensorView x_view = x.view();
    const TensorView topk_view = topk_idx.view();
    auto result = std::make_shared<LowLatencyDispatchResult>();
    staging_ = {};
    calls_->run(
        [=] { *result = buffer->low_latency_dispatch(x_view, topk_view, max_tokens, num_experts, options); });
    const LowLatencyHandle& handle = result->handle;
    const int gpu = device_.cuda_device;
    return py::make_tuple(export_or_none(result->recv_x, gpu), export_or_none(result->recv_x_scales, gpu),
                          export_or_none(result->recv_count, gpu),
                          export_or_none(handle.packed_recv_src_info(), gpu),
                          export_or_none(handle.packed_recv_layout_range(), gpu), EventObject{result->event},
                          hook_or_none(result->hook), LowLatencyHandleObject{handle});
  }

  py::tuple combine(const ImportedTensor& x, const ImportedTensor& topk_idx,
                    const ImportedTensor& topk_weights, const LowLatencyHandleObject& handle, bool zero_copy,
                    bool async_finish, bool return_recv_hook, const ImportedTensor* out,
                    const ImportedTensor* combine_wait_recv_cost_stats, std::uintptr_t stream) {
    LowLatencyBuffer* buffer = &live();
    TensorView x_view = x.view();
    if (zero_copy) {  // DeepEP's zero copy sends what the staging holds; x's values are not read
      if (staging_.empty()) {
        fail(Errc::invalid_argument,
             "zero_copy=True sends the tensor get_next_low_latency_combine_buffer(handle) returned: fill it "
             "right before this combine (no operation in between)");
      }
      x_view = staging_;
    }
    LowLatencyCombineOptions options;
    options.zero_copy = zero_copy;
    options.async_finish = async_finish;
    options.return_recv_hook = return_recv_hook;
    options.stream = reinterpret_cast<void*>(stream);
    options.out = view_or_empty(out);
    options.combine_wait_recv_cost_stats = view_or_empty(combine_wait_recv_cost_stats);
    const TensorView topk_view = topk_idx.view();
    const TensorView weights_view = topk_weights.view();
    const LowLatencyHandle native = handle.handle;
    auto result = std::make_shared<LowLatencyCombineResult>();
    staging_ = {};
    calls_->run(
        [=] { *result = buffer->low_latency_combine(x_view, topk_view, weights_view, native, options); });
    return py::make_tuple(export_or_none(result->combined_x, device_.cuda_device), EventObject{result->event},
                          hook_or_none(result->hook));
  }

  void clean(std::int64_t max_tokens, std::int64_t hidden, std::int64_t num_experts) {
    LowLatencyBuffer* buffer = &live();
    staging_ = {};
    calls_->run([=] { buffer->clean_low_latency_buffer(max_tokens, hidden, num_experts); });
  }

  // A bf16 [E/R, R*T, H] view of the staging the next combine sends from (zero copy).
  Exported next_combine_buffer(const LowLatencyHandleObject& handle, std::uintptr_t stream) {
    LowLatencyBuffer* buffer = &live();
    const LowLatencyHandle native = handle.handle;
    auto view = std::make_shared<TensorView>();
    calls_->run([=] {
      *view = buffer->get_next_low_latency_combine_buffer(native, reinterpret_cast<void*>(stream));
    });
    staging_ = *view;
    std::vector<std::int64_t> shape;
    for (int d = 0; d < view->dim(); ++d) shape.push_back(view->size(d));
    const dlpack::Device where = view->device() == Device::cuda
                                     ? dlpack::Device{dlpack::kCUDA, device_.cuda_device}
                                     : dlpack::Device{dlpack::kCPU, 0};
    return Exported(std::shared_ptr<const void>(buffer_), view->data(), std::move(shape),
                    dlpack_type_of(view->dtype()), where);
  }

  // On the host the mask calls only read or write words: in place, even while a call waits for a peer on the
  // CallThread (masking it is how that wait is cut short). On the GPU they synchronise the buffer's stream,
  // which may hold kernels waiting for a peer: on the CallThread, with the GIL released.
  void update_mask(int rank_to_mask, bool mask) {
    LowLatencyBuffer* buffer = &live();
    mask_call([=] { buffer->low_latency_update_mask_buffer(rank_to_mask, mask); });
  }
  void query_mask(const ImportedTensor& mask_status) {
    LowLatencyBuffer* buffer = &live();
    const TensorView view = mask_status.view();
    mask_call([=] { buffer->low_latency_query_mask_buffer(view); });
  }
  void clean_mask() {
    LowLatencyBuffer* buffer = &live();
    mask_call([=] { buffer->low_latency_clean_mask_buffer(); });
  }

 private:
  LowLatencyBuffer& live() {
    if (!buffer_) fail(Errc::invalid_argument, "the Buffer was destroyed (destroy() or an interrupted wait)");
    return *buffer_;
  }

  void mask_call(const std::function<void()>& call) {
    if (device_.cuda) {
      calls_->run(call);
    } else {
      call();
    }
  }

  py::object hook_or_none(const LowLatencyHook& hook) const {
    return hook.valid() ? py::cast(HookObject{hook, calls_}) : py::none();
  }

  std::shared_ptr<Group> group_;  // the Runtime's; outlives the buffer
  RuntimeDevice device_;          // the Runtime's: where the buffer's tensors live
  std::shared_ptr<LowLatencyBuffer> buffer_;
  std::shared_ptr<CallThread> calls_;  // shared with the hooks it handed out
  TensorView staging_;                 // what the last get_next_low_latency_combine_buffer returned
  bool close_refused_ = false;
};

}  // namespace

void register_low_latency(py::module_& module) {
  module.def("low_latency_rdma_size_hint", &get_low_latency_rdma_size_hint,
             py::arg("num_max_dispatch_tokens_per_rank"), py::arg("hidden"), py::arg("num_ranks"),
             py::arg("num_experts"),
             "Registered bytes one rank's low-latency buffer needs (ferry::get_low_latency_rdma_size_hint).");

  py::class_<LowLatencyHandleObject>(module, "LowLatencyHandle",
                                     "What a low-latency dispatch leaves for combine.")
      .def_property_readonly("num_tokens",
                             [](const LowLatencyHandleObject& h) { return h.handle.num_tokens(); })
      .def_property_readonly("num_topk", [](const LowLatencyHandleObject& h) { return h.handle.num_topk(); })
      .def_property_readonly("hidden", [](const LowLatencyHandleObject& h) { return h.handle.hidden(); })
      .def_property_readonly("num_experts",
                             [](const LowLatencyHandleObject& h) { return h.handle.num_experts(); })
      .def_property_readonly("num_max_dispatch_tokens_per_rank", [](const LowLatencyHandleObject& h) {
        return h.handle.num_max_dispatch_tokens_per_rank();
      });

  py::class_<HookObject>(module, "LowLatencyHook",
                         "Takes the receives of a low-latency call issued with return_recv_hook.")
      .def(
          "__call__", &HookObject::call,
          "Takes the receives (once): on the host it waits for them (GIL released; Ctrl-C interrupts the "
          "wait); on the GPU it enqueues the receive half after the call's stream, which then waits for it.");

  py::class_<LowLatencyRuntime>(
      module, "LowLatencyRuntime",
      "One rank's ferry::LowLatencyBuffer. ferry.Buffer drives it; see its docstrings.")
      .def(py::init<py::handle, std::size_t, double>(), py::arg("runtime"), py::arg("num_rdma_bytes"),
           py::arg("timeout_s"),
           "Collective: builds the low-latency buffer on the Runtime's Group. GIL released meanwhile.")
      .def("close", &LowLatencyRuntime::close,
           "Collective: destroys the buffer, or refuses on every rank while any rank holds a combine-buffer "
           "view.")
      .def("abandon", &LowLatencyRuntime::abandon, "Leaves everything to the end of the process.")
      .def_property_readonly("alive", &LowLatencyRuntime::alive)
      .def_property_readonly("cuda", &LowLatencyRuntime::cuda, "Whether the buffer runs on the GPU.")
      .def_property_readonly("cuda_device", &LowLatencyRuntime::cuda_device, "Its GPU (CUDA buffers).")
      .def_property_readonly("rank", &LowLatencyRuntime::rank)
      .def_property_readonly("num_ranks", &LowLatencyRuntime::num_ranks)
      .def_property_readonly("num_rdma_bytes", &LowLatencyRuntime::num_rdma_bytes)
      .def("dispatch", &LowLatencyRuntime::dispatch, py::arg("x"), py::arg("topk_idx"),
           py::arg("num_max_dispatch_tokens_per_rank"), py::arg("num_experts"),
           py::arg("cumulative_local_expert_recv_stats").none(true),
           py::arg("dispatch_wait_recv_cost_stats").none(true), py::arg("use_fp8"), py::arg("round_scale"),
           py::arg("use_ue8m0"), py::arg("async_finish"), py::arg("return_recv_hook"), py::arg("stream") = 0,
           "stream: the caller's cudaStream_t as an int (CUDA buffers; 0 the legacy default stream). "
           "(recv_x, recv_x_scales or None, recv_count, src_info, layout_range, Event, "
           "LowLatencyHook or None, LowLatencyHandle)")
      .def("combine", &LowLatencyRuntime::combine, py::arg("x"), py::arg("topk_idx"), py::arg("topk_weights"),
           py::arg("handle"), py::arg("zero_copy"), py::arg("async_finish"), py::arg("return_recv_hook"),
           py::arg("out").none(true), py::arg("combine_wait_recv_cost_stats").none(true),
           py::arg("stream") = 0,
           "(combined_x or None when out was given, Event, LowLatencyHook or None). The Event is the "
           "operation's (with a hook: its send half's), also when async_finish is False")
      .def("clean", &LowLatencyRuntime::clean, py::arg("num_max_dispatch_tokens_per_rank"), py::arg("hidden"),
           py::arg("num_experts"))
      .def("next_combine_buffer", &LowLatencyRuntime::next_combine_buffer, py::arg("handle"),
           py::arg("stream"))
      .def("update_mask", &LowLatencyRuntime::update_mask, py::arg("rank_to_mask"), py::arg("mask"))
      .def("query_mask", &LowLatencyRuntime::query_mask, py::arg("mask_status"))
      .def("clean_mask", &LowLatencyRuntime::clean_mask);
}

}  // namespace ferry::python
