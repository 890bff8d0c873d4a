"""DeepEP's low-latency mode (decode) on ferry.Buffer: the one place its methods live.

``Buffer(group, num_rdma_bytes=Buffer.get_low_latency_rdma_size_hint(...), low_latency_mode=True)`` builds
ferry's low-latency buffer (C++: ferry/low_latency.hpp) beside the Buffer's Group; with ``num_nvl_bytes > 0``
the normal-mode buffer is built too, as in DeepEP. The methods keep DeepEP's names, argument order, defaults
and result tuples::

    recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
        x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts, use_fp8=True, return_recv_hook=True)
    hook()                                          # the call only issued the sends; the hook takes the receives
    (data, scales) = recv_x                         # [E/R, R*T, H] fp8, [E/R, R*T, H/128] fp32 (column-major)
    combined_x, event, hook = buffer.low_latency_combine(expert_out, topk_idx, topk_weights, handle)

On a CPU Buffer (a gloo group, or ``device="cpu"``) the tensors are CPU tensors and ferry's host executor runs
the calls; on a CUDA Buffer (an NCCL group, or ``device="cuda"``) they are CUDA tensors and the calls enqueue
ferry's low-latency kernels after the work of the current CUDA stream, which then waits for them (as DeepEP's
do): nothing on the host waits for the GPU.

Where ferry differs from DeepEP:
  * on a CUDA Buffer (the C++ ``LowLatencyBuffer(group, config, Device::cuda)``):
      - the statistics tensors are CUDA tensors of the Buffer's GPU, added into by a kernel after the receive
        half; ``get_next_low_latency_combine_buffer`` enqueues its wait, and the current stream waits for it;
      - under ``torch.cuda.graph`` a dispatch and its combine are captured (not with async_finish; a hook is
        called in the same capture), and every replay writes the tensors they returned (replay only until the
        next ``clean_low_latency_buffer``); a captured call's memory goes with its graph (and once its
        results are dropped); the mask calls and clean are refused while the capture is open, and so is zero
        copy (in the capture, and after it until ``clean_low_latency_buffer``);
      - the receive hook enqueues the receive half after the stream that was current at the call (DeepEP's
        launches it on the stream current at the hook), and that stream waits for it: read the results in
        that stream's order;
      - a bad expert id, or a peer that stopped sending, is found by the kernels, after the call returned:
        ``event.event.synchronize()`` raises it, and so does the first call made once ferry's stream has
        run dry (a call issued while earlier ones still run cannot see it yet; ``event.current_stream_wait()``
        only orders the stream); from then on every dispatch and combine raises until
        ``clean_low_latency_buffer``;
      - the results live in ferry's stream-ordered memory: read them on the stream of the call (or after its
        event); once dropped, their memory serves ferry's next call;
      - the mask calls synchronise ferry's stream first: a mask takes effect for the calls after it, and
        cannot cut short kernels already waiting for a peer (they give up after FerryConfig.timeout_s);
  * ``use_logfmt=True`` raises ferry.Unsupported (combine sends bf16 rows).
  * the wait statistics (``dispatch_wait_recv_cost_stats``, ``combine_wait_recv_cost_stats``: int64
    ``[num_ranks]``, as DeepEP's C++ checks them) add nanoseconds, not GPU clock cycles.
  * fp8 needs hidden % 128 == 0 (DeepEP: % 512); bf16 any multiple of 8.
  * the mask calls work without ``enable_shrink`` (ferry keeps a mask always), and ferry also masks a rank
    that stays silent for FerryConfig.timeout_s.
  * a third operation while the oldest of two held results still waits for its hook is refused (ValueError)
    instead of overwriting the oldest's rows.
  * ``zero_copy=True`` sends what the tensor of ``get_next_low_latency_combine_buffer`` holds (as DeepEP; x's
    values are not read), and that call must come right before the combine.
"""

import operator
from typing import Any, Callable, Optional, Tuple, Union

from . import _ferry
from . import _tensors as T
from .event import EventHandle, EventOverlap


class LowLatencyHandle(tuple):
    """DeepEP's low-latency handle: the tuple ``(packed_recv_src_info, packed_recv_layout_range,
    num_max_dispatch_tokens_per_rank, hidden, num_experts)``, which also carries the dispatch's routing for
    low_latency_combine (pass it back as it is; a rebuilt tuple is refused).

    packed_recv_src_info: ``[num_local_experts, num_ranks * num_max_dispatch_tokens_per_rank]`` int32, the
        source token of every received row (rows past recv_count[e] are -1).
    packed_recv_layout_range: ``[num_local_experts, num_ranks]`` int64, ``(begin << 32) | count`` of each
        source rank's rows at each local expert (sources in rank order, tokens ascending within a source).
    Both are filled once the dispatch's receives were taken (its hook, its event, or the call's return).
    """

    def __new__(cls, buffer: Any, native: Any, frame: Any, src_info: Any, layout_range: Any,
                num_max_dispatch_tokens_per_rank: int, hidden: int, num_experts: int) -> "LowLatencyHandle":
        handle = super().__new__(cls, (src_info, layout_range, num_max_dispatch_tokens_per_rank, hidden,
                                       num_experts))
        handle._buffer = buffer
        handle._native = native
        handle._frame = frame
        return handle


class LowLatencyHook:
    """DeepEP's receive hook: returned by a call made with return_recv_hook=True, which only issued the sends.
    Calling it takes the receives (once); until then nothing of ferry's runs for the operation's receive half.
    On a CPU Buffer it waits for them, with the GIL released, and Ctrl-C interrupts the wait (the Buffer cannot
    be used after that); on a CUDA Buffer it enqueues the receive half after the call's stream, which then
    waits for it."""

    __slots__ = ("_buffer", "_native", "_keep")

    def __init__(self, buffer: Any, native: Any, keep: Tuple[Any, ...]) -> None:
        self._buffer = buffer
        self._native = native
        self._keep = keep  # what the receive half reads or writes (stats, out), until it ran

    def __call__(self) -> None:
        if self._buffer.runtime is None:
            raise ValueError("this receive hook's Buffer was destroyed (destroy(), or a failed or interrupted "
                             "wait) before the hook ran")
        self._buffer._ll_call(self._native, self._keep)
        self._keep = ()


def _check(frame: Any, t: Any, name: str, dtype: str, ndim: int, ll: Any, rows: Optional[int] = None) -> None:
    """T.check on the Buffer's device; a CUDA Buffer's tensors must be on its own GPU too (the kernels would
    fault on another's memory)."""
    T.check(frame, t, name, (dtype,), ndim, rows=rows, cuda=ll.cuda)
    if ll.cuda and frame.device(t) != f"cuda:{ll.cuda_device}":
        raise ValueError(f"{name} is {T.describe(frame, t)} but this Buffer runs on cuda:{ll.cuda_device}")


def _check_shape(frame: Any, t: Any, name: str, dtype: str, shape: Tuple[int, ...], ll: Any) -> None:
    """ValueError naming `name` unless `t` is a contiguous `dtype` tensor of `shape` on the Buffer's device."""
    _check(frame, t, name, dtype, len(shape), ll)
    if tuple(frame.shape(t)) != tuple(shape):
        raise ValueError(f"{name} must be {list(shape)} {dtype}, not {T.describe(frame, t)}")


def _stream_of(ll: Any) -> int:
    """The stream a call of `ll` follows: torch's current stream on the Buffer's GPU (0 on the host)."""
    if not ll.cuda:
        return 0
    import torch

    return torch.cuda.current_stream(ll.cuda_device).cuda_stream


def _int(value: Any, name: str) -> int:
    """An int, a numpy integer or anything else with __index__ (not a bool), as an int."""
    try:
        if not isinstance(value, bool):
            return operator.index(value)
    except TypeError:
        pass
    raise ValueError(f"{name} must be an int, not {value!r}")


def _positive_int(value: Any, name: str) -> int:
    number = _int(value, name)
    if number <= 0:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return number


def _take_optional(frame: Any, t: Any, name: str, dtype: str, shape: Tuple[int, ...], ll: Any,
                   stream: int) -> Any:
    """An optional tensor ferry writes into (statistics, out): a read-only one is refused."""
    if t is None:
        return None
    _check_shape(frame, t, name, dtype, shape, ll)
    return T.take(frame, t, name, cuda=ll.cuda, stream=stream, writable=True)


def _take_wait_stats(frame: Any, t: Any, name: str, num_ranks: int, ll: Any, stream: int) -> Any:
    if t is not None and frame.owns(t) and len(frame.shape(t)) == 2:
        raise ValueError(f"{name} must be [num_ranks] = [{num_ranks}] int64, not {T.describe(frame, t)} (DeepEP's "
                         f"docstring says [num_ranks, num_ranks]; its C++ takes [num_ranks], as ferry does)")
    return _take_optional(frame, t, name, "int64", (num_ranks,), ll, stream)


class LowLatencyMethods:
    """DeepEP's low-latency methods of ferry.Buffer (see the module docstring for where ferry differs)."""

    _low_latency: Any = None

    # ---- lifetime (Buffer calls these) ----

    def _start_low_latency(self, num_rdma_bytes: int, timeout_s: float) -> None:
        self._low_latency = _ferry.LowLatencyRuntime(self.runtime, num_rdma_bytes, timeout_s)

    def _close_low_latency(self) -> None:
        """Collective; raises (on every rank alike) while a rank holds a combine-buffer view."""
        if self._low_latency is not None:
            if self._low_latency.alive:
                self._low_latency.close()
            self._low_latency = None

    def _ll(self, what: str) -> Any:
        if self.runtime is None:
            raise ValueError("this Buffer was destroyed (destroy(), or a failed or interrupted wait)")
        if self._low_latency is None:
            raise ValueError(f"Buffer.{what} needs a Buffer built with low_latency_mode=True and num_rdma_bytes "
                             f"from Buffer.get_low_latency_rdma_size_hint (as in DeepEP)")
        return self._low_latency

    def _ll_call(self, call: Callable[[], Any], keep: Tuple[Any, ...] = ()) -> Any:
        """A low-latency call (it runs on ferry's call thread while this one waits, GIL released). Ctrl-C
        leaves the Buffer unusable (the call goes on); ferry's errors leave it usable, as ferry masks dead ranks
        (clean_low_latency_buffer starts again after a failed operation)."""
        try:
            return call()
        except KeyboardInterrupt:
            self._abandon(keep)
            raise

    def _ll_handle(self, handle: Any, name: str) -> Any:
        if not isinstance(handle, LowLatencyHandle):
            if isinstance(handle, tuple):
                raise ValueError(f"{name} is a plain tuple: pass the handle this Buffer's low_latency_dispatch "
                                 f"returned as it is (ferry's is a tuple with DeepEP's five fields that also "
                                 f"carries the dispatch's routing)")
            raise ValueError(f"{name} must be the handle low_latency_dispatch returned, not "
                             f"{type(handle).__name__}")
        if handle._buffer is not self:
            raise ValueError(f"{name} belongs to another Buffer")
        return handle._native

    def _ll_event(self, native_event: Any) -> EventHandle:
        return EventHandle(native_event, owner=self.runtime, on_interrupt=self._abandon,
                           abandon_on=(KeyboardInterrupt,))

    # ---- DeepEP's methods ----

    @staticmethod
    def get_low_latency_rdma_size_hint(num_max_dispatch_tokens_per_rank: int, hidden: int, num_ranks: int,
                                       num_experts: int) -> int:
        """Registered bytes each rank's low-latency buffer needs (DeepEP's size, for bf16 rows): pass it as
        Buffer's num_rdma_bytes.

        Arguments:
            num_max_dispatch_tokens_per_rank: the most tokens a rank dispatches at once (the same on every rank).
            hidden: values per token.
            num_ranks: ranks of the group.
            num_experts: experts in all (a multiple of num_ranks).
        """
        return _ferry.low_latency_rdma_size_hint(
            _positive_int(num_max_dispatch_tokens_per_rank, "num_max_dispatch_tokens_per_rank"),
            _positive_int(hidden, "hidden"), _positive_int(num_ranks, "num_ranks"),
            _positive_int(num_experts, "num_experts"))

    def clean_low_latency_buffer(self, num_max_dispatch_tokens_per_rank: int, hidden: int, num_experts: int) -> None:
        """Collective: brings the buffer's signal words up to date between two barriers (masked ranks skipped)
        and starts counting operations again. Needed before another shape is used, after a rank is unmasked,
        and after a failed operation; refused while a result waits for its hook."""
        ll = self._ll("clean_low_latency_buffer")
        shape = (_positive_int(num_max_dispatch_tokens_per_rank, "num_max_dispatch_tokens_per_rank"),
                 _positive_int(hidden, "hidden"), _positive_int(num_experts, "num_experts"))
        self._ll_call(lambda: ll.clean(*shape))

    def low_latency_dispatch(self, x: Any, topk_idx: Any, num_max_dispatch_tokens_per_rank: int, num_experts: int,
                             cumulative_local_expert_recv_stats: Optional[Any] = None,
                             dispatch_wait_recv_cost_stats: Optional[Any] = None, use_fp8: bool = True,
                             round_scale: bool = False, use_ue8m0: bool = False, async_finish: bool = False,
                             return_recv_hook: bool = False) \
            -> Tuple[Union[Any, Tuple[Any, Any]], Any, LowLatencyHandle, EventOverlap, Optional[LowLatencyHook]]:
        """Sends every (token, expert) row straight to the expert's rank, received expert-major. Collective:
        every rank calls it with the same num_max_dispatch_tokens_per_rank, num_experts and flags.

        Arguments:
            x: ``[num_tokens, hidden]`` bf16 on the Buffer's device, num_tokens <= num_max_dispatch_tokens_per_rank.
            topk_idx: ``[num_tokens, num_topk]`` int64 (``ferry.topk_idx_t``); -1 selects no expert; a token
                names an expert at most once. Rank r owns experts ``[r * E / R, (r + 1) * E / R)``.
            num_max_dispatch_tokens_per_rank: the slots per (expert, source rank), the same on every rank.
            num_experts: experts in all (a multiple of the ranks).
            cumulative_local_expert_recv_stats: ``[num_local_experts]`` int32: each call adds the rows received
                per local expert.
            dispatch_wait_recv_cost_stats: ``[num_ranks]`` int64: each call adds the nanoseconds this rank
                waited for each source rank's rows (DeepEP: GPU clock cycles).
            use_fp8: send e4m3 rows with one fp32 scale per 128 channels (hidden % 128 == 0), else bf16.
            round_scale: power-of-two scales. use_ue8m0: scales as UE8M0 bytes packed in int32 (needs
                round_scale).
            async_finish: return at once; ``event`` completes when the results are there (not with
                return_recv_hook).
            return_recv_hook: only issue the sends; ``hook()`` takes the receives.

        Returns:
            recv_x: ``[num_local_experts, num_ranks * num_max_dispatch_tokens_per_rank, hidden]`` bf16, or with
                use_fp8 a pair: that shape in torch.float8_e4m3fn (uint8 bytes where torch has no float8) and
                its scales ``[num_local_experts, num_ranks * num_max_dispatch_tokens_per_rank, hidden // 128]``
                fp32 (with use_ue8m0: ``ceil(hidden / 512)`` int32), column-major in the last two dimensions
                (strides ``(hidden // 128 * rows, 1, rows)``), as DeepEP lays them out. Expert e's rows
                ``[0, recv_count[e])`` are valid, ordered by (source rank, source token).
            recv_count: ``[num_local_experts]`` int32.
            handle: a LowLatencyHandle (DeepEP's five-tuple) for low_latency_combine.
            event: an EventOverlap; its event is None unless async_finish.
            hook: the receive hook with return_recv_hook, else None.

        Raises ValueError naming the argument before anything is sent (a tensor on the other device, a token
        on a duplicate or unknown expert, too many tokens, a shape the buffer cannot hold, a third outstanding
        result); on a CUDA Buffer the expert ids are checked by the kernels, and a bad one is raised later (see
        the module docstring).
        """
        ll = self._ll("low_latency_dispatch")
        cuda = ll.cuda
        frame = T.frame_of(x, "x")
        _check(frame, x, "x", "bfloat16", 2, ll)
        rows, hidden = frame.shape(x)
        _check(frame, topk_idx, "topk_idx", "int64", 2, ll, rows=rows)
        num_max_dispatch_tokens_per_rank = _positive_int(num_max_dispatch_tokens_per_rank,
                                                         "num_max_dispatch_tokens_per_rank")
        num_experts = _positive_int(num_experts, "num_experts")
        if num_experts % self.group_size != 0:
            raise ValueError(f"num_experts must be a multiple of the {self.group_size} ranks, not {num_experts}")
        if rows > num_max_dispatch_tokens_per_rank:
            raise ValueError(f"x has {rows} tokens, more than num_max_dispatch_tokens_per_rank = "
                             f"{num_max_dispatch_tokens_per_rank}")
        if async_finish and return_recv_hook:
            raise ValueError("async_finish and return_recv_hook exclude each other (as in DeepEP)")
        local_experts = num_experts // self.group_size
        stream = _stream_of(ll)
        stats_in = _take_optional(frame, cumulative_local_expert_recv_stats, "cumulative_local_expert_recv_stats",
                                  "int32", (local_experts,), ll, stream)
        wait_in = _take_wait_stats(frame, dispatch_wait_recv_cost_stats, "dispatch_wait_recv_cost_stats",
                                   self.group_size, ll, stream)
        x_in = T.take(frame, x, "x", cuda=cuda, stream=stream)
        topk_in = T.take(frame, topk_idx, "topk_idx", cuda=cuda, stream=stream)
        keep = (x_in, topk_in, stats_in, wait_in)
        recv_x, scales, recv_count, src_info, layout_range, native_event, native_hook, native = self._ll_call(
            lambda: ll.dispatch(x_in, topk_in, num_max_dispatch_tokens_per_rank, num_experts, stats_in, wait_in,
                                use_fp8, round_scale, use_ue8m0, async_finish, return_recv_hook, stream), keep)

        recv_x = frame.wrap(recv_x)
        if use_fp8:
            recv_x = (frame.as_fp8(recv_x), frame.swap_last_two(frame.wrap(scales)))
        recv_count = frame.wrap(recv_count)
        handle = LowLatencyHandle(self, native, frame, frame.wrap(src_info), frame.wrap(layout_range),
                                  num_max_dispatch_tokens_per_rank, hidden, num_experts)
        self._track(native_event, keep)  # the GPU reads the inputs until the event (CPU: done by now unless async)
        if async_finish:
            event = EventOverlap(self._ll_event(native_event),
                                 (x, topk_idx, recv_x, recv_count, cumulative_local_expert_recv_stats))
        else:
            event = EventOverlap(None)
        hook = LowLatencyHook(self, native_hook, keep) if native_hook is not None else None
        return recv_x, recv_count, handle, event, hook

    def low_latency_combine(self, x: Any, topk_idx: Any, topk_weights: Any, handle: LowLatencyHandle,
                            use_logfmt: bool = False, zero_copy: bool = False, async_finish: bool = False,
                            return_recv_hook: bool = False, out: Optional[Any] = None,
                            combine_wait_recv_cost_stats: Optional[Any] = None) \
            -> Tuple[Any, EventOverlap, Optional[LowLatencyHook]]:
        """Returns every expert row to its source token, where each token sums its rows weighted by its topk
        weights (in topk order, fp32, then bf16). Collective.

        Arguments:
            x: ``[num_local_experts, num_ranks * num_max_dispatch_tokens_per_rank, hidden]`` bf16: the expert
                outputs for the dispatch's received rows (rows past recv_count are not read). With zero_copy,
                its values are not read either (see get_next_low_latency_combine_buffer).
            topk_idx: the dispatch's ``[num_tokens, num_topk]`` int64 (refused by position if it differs).
            topk_weights: ``[num_tokens, num_topk]`` fp32.
            handle: the dispatch's LowLatencyHandle.
            use_logfmt: not provided by ferry (True raises ferry.Unsupported).
            zero_copy: send what the tensor of get_next_low_latency_combine_buffer(handle), called right
                before, holds.
            async_finish, return_recv_hook: as for low_latency_dispatch.
            out: ``[num_tokens, hidden]`` bf16, written and returned instead of a new tensor.
            combine_wait_recv_cost_stats: ``[num_ranks]`` int64: each call adds the nanoseconds this rank
                waited for each expert rank's rows.

        Returns:
            combined_x: ``[num_tokens, hidden]`` bf16 (out, when given); a token whose experts were all masked
                or -1 gets zeros.
            event: an EventOverlap; its event is None unless async_finish.
            hook: the receive hook with return_recv_hook, else None.
        """
        ll = self._ll("low_latency_combine")
        if use_logfmt:
            raise _ferry.Unsupported("use_logfmt=True: ferry's low-latency combine sends bf16 rows; DeepEP's "
                                     "LogFMT (10-bit, per-64-channel) combine is not implemented (use "
                                     "use_logfmt=False)")
        native = self._ll_handle(handle, "handle")
        _, _, max_tokens, hidden, num_experts = handle
        frame = handle._frame
        if not frame.owns(x):
            raise ValueError(f"x must be a {frame.name} tensor like the dispatch's x, not {type(x).__name__}")
        cuda = ll.cuda
        _check_shape(frame, x, "x", "bfloat16",
                     (num_experts // self.group_size, self.group_size * max_tokens, hidden), ll)
        tokens, topk = native.num_tokens, native.num_topk
        _check_shape(frame, topk_idx, "topk_idx", "int64", (tokens, topk), ll)
        _check_shape(frame, topk_weights, "topk_weights", "float32", (tokens, topk), ll)
        stream = _stream_of(ll)
        out_in = _take_optional(frame, out, "out", "bfloat16", (tokens, hidden), ll, stream)
        wait_in = _take_wait_stats(frame, combine_wait_recv_cost_stats, "combine_wait_recv_cost_stats",
                                   self.group_size, ll, stream)
        if async_finish and return_recv_hook:
            raise ValueError("async_finish and return_recv_hook exclude each other (as in DeepEP)")
        x_in = T.take(frame, x, "x", cuda=cuda, stream=stream)
        topk_in = T.take(frame, topk_idx, "topk_idx", cuda=cuda, stream=stream)
        weights_in = T.take(frame, topk_weights, "topk_weights", cuda=cuda, stream=stream)
        keep = (x_in, topk_in, weights_in, out_in, wait_in)
        combined, native_event, native_hook = self._ll_call(
            lambda: ll.combine(x_in, topk_in, weights_in, native, zero_copy, async_finish, return_recv_hook, out_in,
                               wait_in, stream), keep)
        combined_x = out if out is not None else frame.wrap(combined)
        self._track(native_event, keep)
        if async_finish:
            event = EventOverlap(self._ll_event(native_event), (x, topk_idx, topk_weights, combined_x))
        else:
            event = EventOverlap(None)
        hook = LowLatencyHook(self, native_hook, keep) if native_hook is not None else None
        return combined_x, event, hook

    def get_next_low_latency_combine_buffer(self, handle: LowLatencyHandle) -> Any:
        """The bf16 ``[num_local_experts, num_ranks * num_max_dispatch_tokens_per_rank, hidden]`` staging the
        next low_latency_combine sends from: a view of the buffer's own memory (no copy). Write the expert
        outputs into it and combine with zero_copy=True right after. Waits until every peer has released that
        staging's previous use (on a CUDA Buffer the wait is enqueued and the current stream waits for it:
        write the staging on that stream). The Buffer cannot be destroyed while any rank holds the view."""
        ll = self._ll("get_next_low_latency_combine_buffer")
        native = self._ll_handle(handle, "handle")
        stream = _stream_of(ll)
        return handle._frame.wrap(self._ll_call(lambda: ll.next_combine_buffer(native, stream)))

    def low_latency_update_mask_buffer(self, rank_to_mask: int, mask: bool = False) -> None:
        """Masks (mask=True) or unmasks a rank: this rank stops sending to it and waiting for it (on a CUDA
        Buffer from its next call on). A rank cannot mask itself; an unmasked rank takes part again after
        clean_low_latency_buffer."""
        ll = self._ll("low_latency_update_mask_buffer")
        rank = _int(rank_to_mask, "rank_to_mask")
        self._ll_call(lambda: ll.update_mask(rank, bool(mask)))

    def low_latency_query_mask_buffer(self, mask_status: Any) -> None:
        """Writes into mask_status (``[num_ranks]`` int32) 1 for every rank this rank masks (by the caller or
        after a timeout), else 0."""
        ll = self._ll("low_latency_query_mask_buffer")
        frame = T.frame_of(mask_status, "mask_status")
        _check_shape(frame, mask_status, "mask_status", "int32", (self.group_size,), ll)
        if not ll.cuda:
            ll.query_mask(T.take(frame, mask_status, "mask_status", writable=True))
            return
        import torch  # a CUDA Buffer's tensors are torch's: the words are read on the host, then copied over

        words = torch.empty(self.group_size, dtype=torch.int32)
        words_in = T.take(T.TorchFrame, words, "mask_status", writable=True)
        self._ll_call(lambda: ll.query_mask(words_in), (words_in,))
        mask_status.copy_(words)

    def low_latency_clean_mask_buffer(self) -> None:
        """Unmasks every rank (locally; clean_low_latency_buffer brings them back into the operations)."""
        ll = self._ll("low_latency_clean_mask_buffer")
        self._ll_call(ll.clean_mask)
