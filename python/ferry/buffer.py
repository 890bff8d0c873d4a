"""ferry.Buffer: DeepEP's ``deep_ep.Buffer`` on ferry's engine (normal mode here; low-latency mode in
low_latency.py).

A program written for DeepEP runs with ``import ferry as deep_ep``: the same names, argument order, defaults
and result tuples. On CPU tensors the Buffer runs ferry's host backend (any machine, CI); on CUDA tensors the
CUDA executor. Where ferry differs from DeepEP it raises an error that names the difference rather than return
something else; the differences are listed in Buffer's docstring.
"""

import warnings
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from . import _ferry
from . import _tensors as T
from ._bootstrap import job_for_group
from .config import Config, FerryConfigLike, buffer_default_config, call_config, engine_config
from .event import EventHandle, EventOverlap, current_stream
from .low_latency import LowLatencyMethods

# Runtimes left to the end of the process after an interrupted or failed wait, with what their operations
# still read (an operation in flight can be neither cancelled nor waited for: see Buffer._abandon).
_abandoned: List[Any] = []


class Handle:
    """What a dispatch leaves for ``combine`` and for a cached ``dispatch(x, handle=...)`` (DeepEP's handle).

    DeepEP's handle is a tuple of prefix matrices of its own kernels; ferry's is this object, and indexing or
    unpacking it raises TypeError saying so. What it tells about the received rows:

    Attributes:
        num_tokens: tokens of this rank's dispatch.
        num_recv_tokens: rows this rank received.
        is_token_in_rank: the dispatch's ``[num_tokens, num_ranks]`` bool tensor, as DeepEP's handle holds it.
        recv_src_rank: ``[num_recv_tokens]`` int32, the source rank of each received row (CPU Buffers).
        recv_src_idx: ``[num_recv_tokens]`` int32, the token index on its source rank (DeepEP's recv_src_idx).
        recv_rank_prefix_sum: ``[num_ranks]`` int32, rows received from ranks ``0..i`` (DeepEP's
            recv_gbl_rank_prefix_sum). Rows are ordered by (source rank, source token), as DeepEP orders them.
    """

    __slots__ = ("_buffer", "_op", "_native", "_frame", "is_token_in_rank", "num_tokens", "_like")

    def __init__(self, buffer: "Buffer", op: Any, frame: Any, is_token_in_rank: Any, num_tokens: int,
                 like: Any, native: Any = None) -> None:
        self._buffer = buffer
        self._op = op
        self._native = native
        self._frame = frame
        self._like = like
        self.is_token_in_rank = is_token_in_rank
        self.num_tokens = num_tokens

    def _resolve(self) -> Any:
        """ferry's handle; on a CPU Buffer it exists once the dispatch has finished (this waits)."""
        if self._native is None:
            native = self._buffer._wait(self._op.handle)
            if not native.valid:
                raise ValueError("the dispatch of this handle has not produced a handle")
            if self._buffer.runtime.cuda and not self._op.event().test():
                return native  # usable at once on the GPU; the final one (counts filled in) comes later
            self._native = native
            self._op = None
        return self._native

    @property
    def num_recv_tokens(self) -> int:
        return self._resolve().num_recv_tokens

    @property
    def recv_src_rank(self) -> Any:
        return self._frame.wrap(self._resolve().recv_src_rank())

    @property
    def recv_src_idx(self) -> Any:
        return self._frame.wrap(self._resolve().recv_src_token())

    @property
    def recv_rank_prefix_sum(self) -> Any:
        sources = self._frame.int_list(self.recv_src_rank)
        counts = [0] * self._buffer.group_size
        for source in sources:
            counts[source] += 1
        for i in range(1, len(counts)):
            counts[i] += counts[i - 1]
        return self._frame.int32(counts, self._like)

    def _not_a_tuple(self, *args: Any) -> Any:
        raise TypeError("ferry's dispatch handle is not DeepEP's tuple of prefix matrices (those belong to "
                        "DeepEP's kernels): pass it back to combine / dispatch as it is, and read num_tokens, "
                        "num_recv_tokens, is_token_in_rank, recv_src_rank, recv_src_idx or recv_rank_prefix_sum")

    __getitem__ = _not_a_tuple
    __iter__ = _not_a_tuple
    __len__ = _not_a_tuple


class ExpertCounts(Sequence):
    """``num_recv_tokens_per_expert_list`` of an asynchronous (or CUDA) dispatch: ferry counts the rows per
    expert from the received expert ids, so the values exist once the dispatch has finished. Reading them
    waits for it; compare, index, iterate or ``list()`` it like DeepEP's list."""

    def __init__(self, fetch: Callable[[], List[int]]) -> None:
        self._fetch = fetch
        self._values: Optional[List[int]] = None

    def _list(self) -> List[int]:
        if self._values is None:
            self._values = list(self._fetch())
            self._fetch = None
        return self._values

    def __getitem__(self, index: Any) -> Any:
        return self._list()[index]

    def __len__(self) -> int:
        return len(self._list())

    def __eq__(self, other: Any) -> bool:
        return self._list() == (list(other) if isinstance(other, (list, tuple, ExpertCounts)) else other)

    def __repr__(self) -> str:
        return repr(self._list())


class _RecentLayout:
    """A layout get_dispatch_layout returned, with the tensors it was computed from and returned, as torch
    tensors (weakly held) at their version then. dispatch reuses it only when it is handed exactly those tensors,
    unchanged (torch counts in-place writes in Tensor._version); anything else is recomputed and compared."""

    __slots__ = ("layout", "refs", "versions")

    def __init__(self, layout: Any, tensors: Tuple[Any, ...]) -> None:
        self.layout = layout
        self.refs = tuple(weakref.ref(t) if t is not None else None for t in tensors)
        self.versions = tuple(t._version if t is not None else None for t in tensors)

    @staticmethod
    def of(frame: Any, layout: Any, tensors: Tuple[Any, ...]) -> Optional["_RecentLayout"]:
        return _RecentLayout(layout, tensors) if frame is T.TorchFrame else None

    def matches(self, tensors: Tuple[Any, ...]) -> bool:
        for ref, version, tensor in zip(self.refs, self.versions, tensors):
            if ref is None:
                if tensor is not None:
                    return False
            elif tensor is None or ref() is not tensor or tensor._version != version:
                return False
        return True


class _Flight:
    """An operation in flight and what it reads: kept until its event has finished."""

    __slots__ = ("event", "keep")

    def __init__(self, event: Any, keep: Tuple[Any, ...]) -> None:
        self.event = event
        self.keep = keep


def _split_x(x: Any) -> Tuple[Any, Any]:
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"x must be a tensor or an (fp8 data, scales) pair, not a tuple of {len(x)}")
        return x
    return x, None


class Buffer(LowLatencyMethods):
    """DeepEP's expert-parallel communication buffer on ferry: dispatch sends each token to the ranks of its
    top-k experts, combine brings the expert outputs back and sums them. With low_latency_mode=True it has
    DeepEP's low-latency (decode) calls too: low_latency_dispatch, low_latency_combine and their helpers (see
    ferry.low_latency for where they differ from DeepEP's).

    Works on CPU tensors (ferry's host backend: ranks are processes, nodes are hosts or ``ferry launch``
    namespaces) and on CUDA tensors (ferry's CUDA executor). Rows arrive ordered by (source rank, source
    token), as in DeepEP, and ferry's combine sums in a fixed order, so results are the same on every run.

    Where ferry differs from DeepEP:
      * num_nvl_bytes / num_rdma_bytes are accepted and not used: ferry sizes its one registered buffer from
        its FerryConfig (``ferry_config``; the default holds hidden sizes up to 7168, top-k up to 8).
      * dispatch routes by ``topk_idx``: it is required (DeepEP allows routing by is_token_in_rank alone), and
        the layout tensors passed must agree with it (ValueError naming the first difference).
      * the handle is a ferry.Handle, not a tuple; combine adds one bias, not two.
      * with async_finish=True (and on CUDA), num_recv_tokens_per_expert_list is an ExpertCounts whose values
        exist once the dispatch has finished (reading it waits).
      * x may also be fp32; combine takes bf16 or fp32. fp8 rows are ``(data, scales)`` with fp32 scales, one
        per 128 values; a CPU Buffer takes fp8 data as torch.float8_e4m3fn or as uint8 bytes.
      * low-latency mode: its combine has no LogFMT; ferry.low_latency lists the rest.
      * after ferry.PeerFailure, ferry.Timeout or a Ctrl-C inside a wait the Buffer cannot be used again; its
        memory and threads are left to the end of the process.

    Attributes:
        num_sms: the SM budget new Buffers are built with (class attribute; set_num_sms changes it).
        rank: this rank in the group.
        group_size: ranks in the group.
        group: the group it was built on.
        runtime: ferry's C++ side (ferry._ferry.Runtime).
    """

    num_sms: int = 20

    def __init__(self, group: Any, num_nvl_bytes: int = 0, num_rdma_bytes: int = 0, low_latency_mode: bool = False,
                 num_qps_per_rank: int = 24, allow_nvlink_for_low_latency_mode: bool = True,
                 allow_mnnvl: bool = False, use_fabric: bool = False, explicitly_destroy: bool = False,
                 enable_shrink: bool = False, comm: Any = None, *, ferry_config: FerryConfigLike = None,
                 device: Optional[str] = None) -> None:
        """Builds the buffer; collective over the group (every rank builds its Buffer with the same settings).

        Arguments:
            group: the torch.distributed group (gloo for CPU tensors, NCCL for CUDA tensors). ferry's bootstrap
                store address and secret travel through it, so nothing else is needed. None (with comm None):
                ferry reads its launcher's environment instead (ferry launch, torchrun, Open MPI, Slurm).
            num_nvl_bytes: accepted for DeepEP's sake and not used by normal mode (see the class docstring);
                with low_latency_mode, > 0 also builds the normal-mode buffer (as in DeepEP).
            num_rdma_bytes: with low_latency_mode, the low-latency buffer's size per rank
                (Buffer.get_low_latency_rdma_size_hint); else accepted and not used.
            low_latency_mode: build ferry's low-latency buffer, on the Buffer's device.
            num_qps_per_rank: must be > 0 with low_latency_mode (as in DeepEP); not used otherwise.
            allow_nvlink_for_low_latency_mode, allow_mnnvl, use_fabric, enable_shrink: DeepEP tuning flags with
                no ferry counterpart; accepted and not used (ferry's low-latency mask needs no enable_shrink).
            explicitly_destroy: when True, destroy() must be called (as in DeepEP).
            comm: an mpi4py communicator, used when group is None.
            ferry_config: ferry's Buffer settings: a FerryConfig, a dict of its fields, or a JSON file (e.g.
                from ``ferry bench dispatch --sweep --save-config``). Default: ferry's, with Buffer.num_sms.
            device: "cpu" or "cuda"; default "cuda" when the group's backend is NCCL, else "cpu".
        """
        for name, value in (("num_nvl_bytes", num_nvl_bytes), ("num_rdma_bytes", num_rdma_bytes)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")
        if low_latency_mode and num_rdma_bytes <= 0:
            raise ValueError("low_latency_mode=True needs num_rdma_bytes = Buffer.get_low_latency_rdma_size_hint("
                             "num_max_dispatch_tokens_per_rank, hidden, num_ranks, num_experts), as in DeepEP")
        if low_latency_mode and num_qps_per_rank <= 0:
            raise ValueError(f"num_qps_per_rank must be > 0 with low_latency_mode (as in DeepEP), not "
                             f"{num_qps_per_rank}")
        self.num_nvl_bytes = num_nvl_bytes
        self.num_rdma_bytes = num_rdma_bytes
        self.low_latency_mode = bool(low_latency_mode)
        self.explicitly_destroy = explicitly_destroy
        self.enable_shrink = enable_shrink
        self.group = group if group is not None else comm
        self.runtime = None
        self._inflight: List[_Flight] = []
        self._call_configs: dict = {}
        self._recent_layouts: List[_RecentLayout] = []
        self._side_stream = None
        config = engine_config(ferry_config, Buffer.num_sms)
        if group is None and comm is None:
            job, backend = None, None
        else:
            job, backend = job_for_group(group, comm)
        if device is None:
            device = "cuda" if backend == "nccl" else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        cuda_device = 0
        if device == "cuda":
            try:
                import torch
            except ImportError:
                torch = None
            if torch is None or not torch.cuda.is_available():
                raise _ferry.Unsupported("device='cuda' needs torch with CUDA and a GPU")
            cuda_device = torch.cuda.current_device()
            # ferry's CUDA Buffer uses GPU (local rank % GPUs), as DeepEP expects torch.cuda.set_device(local_rank).
            if job is not None:
                expected = job["local_rank"] % torch.cuda.device_count()
                if expected != cuda_device:
                    raise ValueError(f"the current CUDA device is {cuda_device} but ferry's Buffer of local rank "
                                     f"{job['local_rank']} uses GPU {expected}: call "
                                     f"torch.cuda.set_device({expected}) first")
        # Normal mode unless the Buffer is for the low-latency mode alone (DeepEP allocates no NVLink buffer
        # then, so its normal mode cannot run either).
        normal = not low_latency_mode or num_nvl_bytes > 0
        self.runtime = _ferry.Runtime(job, config, device == "cuda", cuda_device, normal)
        self.rank = self.runtime.rank
        self.group_size = self.runtime.num_ranks
        self.device = device
        self._config = self.runtime.config
        if low_latency_mode:
            self._start_low_latency(num_rdma_bytes, config.timeout_s)

    # ---- lifetime ----

    def destroy(self) -> None:
        """Releases the buffer (collective: every rank calls it); needs explicitly_destroy=True, as in DeepEP."""
        if not self.explicitly_destroy:
            raise ValueError("destroy() needs Buffer(..., explicitly_destroy=True), as in DeepEP")
        self._close()

    def _close(self) -> None:
        if self.runtime is None:
            return
        self._close_low_latency()  # first: it may refuse (on every rank alike), leaving the Buffer usable
        runtime, self.runtime = self.runtime, None
        if runtime.alive:
            runtime.close()  # waits for what was issued, then for the other ranks
        self._inflight.clear()

    def _abandon(self, keep: Tuple[Any, ...] = ()) -> None:
        """After an interrupted or failed wait: an operation may still be running and read the inputs it was
        given (`keep`, and those of operations in flight), so the runtime and those inputs are kept until the
        process ends, and never torn down."""
        runtime, self.runtime = self.runtime, None
        low_latency, self._low_latency = self._low_latency, None
        if low_latency is not None:
            low_latency.abandon()
        if runtime is not None:
            runtime.abandon()
        if runtime is not None or low_latency is not None:
            _abandoned.append((runtime, low_latency, self._inflight, keep))
        self._inflight = []

    def __del__(self) -> None:
        if getattr(self, "runtime", None) is None:
            return
        if self.explicitly_destroy:
            warnings.warn("ferry.Buffer built with explicitly_destroy=True was not destroyed; releasing it now",
                          ResourceWarning)
        try:
            self._close()
        except Exception:  # a destructor cannot report; the operations that failed already have
            pass

    def _live(self) -> Any:
        if self.runtime is None:
            raise ValueError("this Buffer was destroyed (destroy(), or a failed or interrupted wait)")
        return self.runtime

    def _wait(self, wait: Callable[[], Any]) -> Any:
        """Runs a blocking call of the runtime; a Ctrl-C, a dead peer or a timeout leave the Buffer unusable."""
        try:
            return wait()
        except (KeyboardInterrupt, _ferry.PeerFailure, _ferry.Timeout):
            self._abandon()
            raise

    def _track(self, event: Any, keep: Tuple[Any, ...]) -> None:
        self._inflight = [flight for flight in self._inflight if not flight.event.test()]
        self._inflight.append(_Flight(event, keep))

    def _event(self, ferry_event: Any) -> EventHandle:
        return EventHandle(ferry_event, owner=self.runtime, on_interrupt=self._abandon)

    # ---- DeepEP's static helpers ----

    @staticmethod
    def is_sm90_compiled() -> bool:
        """Whether ferry was built with its CUDA backend (which includes sm_90a)."""
        return _ferry.built_with_cuda()

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """Sets the SM budget of Buffers built from now on (even; channels = num_sms / 2)."""
        if new_num_sms % 2 != 0 or new_num_sms < 2:
            raise ValueError(f"the SM count must be even and >= 2, not {new_num_sms}")
        Buffer.num_sms = new_num_sms

    @staticmethod
    def capture() -> EventOverlap:
        """An event on the current CUDA stream (complete at once where torch's CUDA is not in use)."""
        return EventOverlap(EventHandle())

    @staticmethod
    def get_dispatch_config(num_ranks: int) -> Config:
        """The recommended dispatch Config: the Buffer's own settings (ferry's defaults, or its ferry_config)."""
        return buffer_default_config(Buffer.num_sms)

    @staticmethod
    def get_combine_config(num_ranks: int) -> Config:
        """The recommended combine Config: the Buffer's own settings, as get_dispatch_config."""
        return buffer_default_config(Buffer.num_sms)

    def get_comm_stream(self) -> Any:
        raise _ferry.Unsupported("ferry.Buffer.get_comm_stream: ferry's communication stream is not exposed; "
                                 "order work with the returned events (EventOverlap) instead")

    def get_local_buffer_tensor(self, dtype: Any, size: Any = None, offset: int = 0,
                                use_rdma_buffer: bool = False) -> Any:
        raise _ferry.Unsupported("ferry.Buffer.get_local_buffer_tensor: ferry's registered buffer holds its "
                                 "rings and is not handed out as a tensor")

    # ---- layout ----

    def get_dispatch_layout(self, topk_idx: Any, num_experts: int, previous_event: Optional[EventOverlap] = None,
                            async_finish: bool = False, allocate_on_comm_stream: bool = False) \
            -> Tuple[Any, Optional[Any], Any, Any, EventOverlap]:
        """Computes where each token goes (local: no communication).

        Arguments:
            topk_idx: ``[num_tokens, num_topk]`` int64 (``ferry.topk_idx_t``), the experts of each token; -1 is
                an empty slot. Experts are split evenly: rank r owns ``[r * E / R, (r + 1) * E / R)``.
            num_experts: experts in total (a positive multiple of the ranks).
            previous_event: waited for first.
            async_finish: return an event (already complete) instead of None.
            allocate_on_comm_stream: accepted as DeepEP does (needs previous_event and async_finish).

        Returns:
            num_tokens_per_rank: ``[num_ranks]`` int32, tokens sent to each rank.
            num_tokens_per_rdma_rank: ``[num_nodes]`` int32, tokens sent to each node; None on one node.
            num_tokens_per_expert: ``[num_experts]`` int32, top-k slots naming each expert.
            is_token_in_rank: ``[num_tokens, num_ranks]`` bool.
            event: an EventOverlap (its event is None unless async_finish).

        Raises ValueError naming the token, slot and id for an expert id out of range, an expert named twice
        by one token, or a token on more than FerryConfig.max_nodes nodes.
        """
        runtime = self._live()
        self._check_stream_flags(previous_event, async_finish, allocate_on_comm_stream)
        frame = T.frame_of(topk_idx, "topk_idx")
        T.check(frame, topk_idx, "topk_idx", ("int64",), 2, cuda=runtime.cuda)
        if not isinstance(num_experts, int) or num_experts <= 0:
            raise ValueError(f"num_experts must be a positive int, not {num_experts!r}")
        self._before(previous_event)
        layout = self._layout(frame, topk_idx, num_experts)
        per_rank = frame.int32(layout.tokens_per_rank(), topk_idx)
        per_node = frame.int32(layout.tokens_per_node(), topk_idx) if runtime.num_nodes > 1 else None
        per_expert = frame.int32(layout.tokens_per_expert(), topk_idx)
        in_rank = frame.as_bool(frame.wrap(layout.is_token_in_rank()))
        recent = _RecentLayout.of(frame, layout, (topk_idx, per_rank, per_node, in_rank, per_expert))
        if recent is not None:
            self._recent_layouts = self._recent_layouts[-3:] + [recent]
        event = EventOverlap(EventHandle(owner=runtime)) if async_finish else EventOverlap(None)
        return per_rank, per_node, per_expert, in_rank, event

    def _layout(self, frame: Any, topk_idx: Any, num_experts: int) -> Any:
        """ferry's layout; on a CUDA Buffer its kernel runs after the work on the current stream (where topk_idx
        was written), and the call returns once the counts are on the host."""
        runtime = self.runtime
        stream = current_stream() if runtime.cuda else 0
        return runtime.layout(T.take(frame, topk_idx, "topk_idx", cuda=runtime.cuda, stream=stream), num_experts,
                              stream)

    # ---- dispatch ----

    def dispatch(self, x: Union[Any, Tuple[Any, Any]], handle: Optional[Handle] = None,
                 num_tokens_per_rank: Optional[Any] = None, num_tokens_per_rdma_rank: Optional[Any] = None,
                 is_token_in_rank: Optional[Any] = None, num_tokens_per_expert: Optional[Any] = None,
                 topk_idx: Optional[Any] = None, topk_weights: Optional[Any] = None, expert_alignment: int = 1,
                 num_worst_tokens: int = 0, config: Optional[Config] = None,
                 previous_event: Optional[EventOverlap] = None, async_finish: bool = False,
                 allocate_on_comm_stream: bool = False) \
            -> Tuple[Union[Tuple[Any, Any], Any], Optional[Any], Optional[Any], Optional[Sequence[int]],
                     Optional[Handle], EventOverlap]:
        """Sends each token to the ranks that own its top-k experts (collective: every rank calls it).

        Arguments:
            x: ``[num_tokens, hidden]`` bf16 or fp32, or an fp8 pair ``(data, scales)``: data
                ``[num_tokens, hidden]`` float8_e4m3fn (or uint8 bytes), scales ``[num_tokens, ceil(hidden /
                128)]`` fp32.
            handle: a Handle from an earlier dispatch: repeat its routing with new rows (cached dispatch; no
                counts are exchanged, and topk_idx / topk_weights must be None).
            num_tokens_per_rank, num_tokens_per_rdma_rank, is_token_in_rank, num_tokens_per_expert: the layout
                (get_dispatch_layout's results); required unless handle is given; must agree with topk_idx.
            topk_idx: ``[num_tokens, num_topk]`` int64, the experts of each token (-1: none).
            topk_weights: ``[num_tokens, num_topk]`` fp32.
            expert_alignment: each per-expert count is rounded up to a multiple of this.
            num_worst_tokens: > 0 sizes every output for this many rows at the call (rows past the received
                ones are zero, with recv_topk_idx -1); the per-expert list is then empty.
            config: a ferry.Config for this call (None: the Buffer's settings).
            previous_event: the operation starts after it (CPU: the host waits for another Buffer's event).
            async_finish: return at once with an event to wait on; the tensors are filled when it completes.
            allocate_on_comm_stream: accepted (needs previous_event and async_finish, as in DeepEP).

        Returns:
            recv_x: the received rows (a pair for fp8), ordered by (source rank, source token).
            recv_topk_idx: ``[rows, num_topk]`` int64 expert ids local to this rank, -1 for other ranks' experts.
            recv_topk_weights: ``[rows, num_topk]`` fp32, 0 where recv_topk_idx is -1.
            num_recv_tokens_per_expert_list: rows per local expert, aligned (see ExpertCounts; [] with
                num_worst_tokens).
            handle: for combine and cached dispatch.
            event: an EventOverlap; its event is None unless async_finish.
            A cached dispatch returns ``(recv_x, None, None, None, None, event)``.

        Raises ValueError (naming the argument) before any communication for bad input; ferry.PeerFailure
        (naming the rank) when a peer died; TimeoutError when a peer stopped making progress.
        """
        runtime = self._live()
        self._check_stream_flags(previous_event, async_finish, allocate_on_comm_stream)
        data, scales = _split_x(x)
        frame = T.frame_of(data, "x")
        cuda = runtime.cuda
        fp8 = scales is not None
        rows = self._check_rows(frame, data, scales, "x", fp8)
        if expert_alignment < 1:
            raise ValueError(f"expert_alignment must be >= 1, not {expert_alignment}")
        if num_worst_tokens < 0:
            raise ValueError(f"num_worst_tokens must be >= 0, not {num_worst_tokens}")
        call = call_config(config, self._config, self._call_configs)
        if handle is not None:
            return self._cached_dispatch(frame, data, scales, handle, topk_idx, topk_weights, rows, fp8, call,
                                         previous_event, async_finish)

        for name, value in (("num_tokens_per_rank", num_tokens_per_rank), ("is_token_in_rank", is_token_in_rank),
                            ("num_tokens_per_expert", num_tokens_per_expert)):
            if value is None:
                raise ValueError(f"{name} is required (get_dispatch_layout computes it) unless handle is given")
        if topk_idx is None:
            raise _ferry.Unsupported("ferry's dispatch routes by topk_idx: pass topk_idx and topk_weights (DeepEP "
                                     "can also route by is_token_in_rank alone; ferry cannot)")
        if topk_weights is None:
            raise ValueError("topk_weights is required with topk_idx (as in DeepEP)")
        T.check(frame, topk_idx, "topk_idx", ("int64",), 2, rows=rows, cuda=cuda)
        T.check(frame, topk_weights, "topk_weights", ("float32",), 2, rows=rows, cols=frame.shape(topk_idx)[1],
                cuda=cuda)
        T.check(frame, num_tokens_per_expert, "num_tokens_per_expert", ("int32", "int64"), 1, cuda=cuda)
        T.check(frame, is_token_in_rank, "is_token_in_rank", ("bool",), 2, rows=rows, cols=self.group_size,
                cuda=cuda)
        num_experts = frame.shape(num_tokens_per_expert)[0]
        self._before(previous_event)
        stream = self._stream(previous_event)
        handshake = self._handshake(previous_event, stream)
        x_in = T.take(frame, data, "x", fp8=fp8, cuda=cuda, stream=handshake)
        scales_in = T.take(frame, scales, "x_scales", cuda=cuda, stream=handshake) if fp8 else None
        given = (topk_idx, num_tokens_per_rank, num_tokens_per_rdma_rank, is_token_in_rank, num_tokens_per_expert)
        layout = next((r.layout for r in self._recent_layouts if r.matches(given)), None)
        if layout is None:  # not get_dispatch_layout's own, untouched, results: recompute and compare
            layout = self._layout(frame, topk_idx, num_experts)
            self._check_layout(frame, layout, num_tokens_per_rank, num_tokens_per_rdma_rank, is_token_in_rank,
                               num_tokens_per_expert)
        topk_in = T.take(frame, topk_idx, "topk_idx", cuda=cuda, stream=handshake)
        weights_in = T.take(frame, topk_weights, "topk_weights", cuda=cuda, stream=handshake)
        op = runtime.dispatch(x_in, scales_in, topk_in, weights_in, layout, num_worst_tokens, expert_alignment, call,
                              stream)
        self._track(op.event(), (x_in, scales_in, topk_in, weights_in, layout))

        if async_finish or cuda:
            if not self._wait(op.wait_allocated):
                self._wait(op.event().wait)  # it failed before allocating: raises why
            tensors = op.allocated()
            counts = [] if num_worst_tokens > 0 else ExpertCounts(lambda: self._wait(op.result)[2])
            native = None
        else:
            tensors, _, counts, native = self._wait(op.result)
            if num_worst_tokens > 0:
                counts = []
        recv_x, recv_x_scales, recv_topk_idx, recv_topk_weights = self._outputs(frame, tensors, data, fp8)
        new_handle = Handle(self, op, frame, is_token_in_rank, rows, data, native=native)
        event = self._finish(op.event(), async_finish)
        recv = (recv_x, recv_x_scales) if fp8 else recv_x
        return recv, recv_topk_idx, recv_topk_weights, counts, new_handle, event

    def _cached_dispatch(self, frame: Any, data: Any, scales: Any, handle: Any, topk_idx: Any, topk_weights: Any,
                         rows: int, fp8: bool, call: Any, previous_event: Any,
                         async_finish: bool) -> Tuple[Any, None, None, None, None, EventOverlap]:
        if topk_idx is not None or topk_weights is not None:
            raise ValueError("a cached dispatch (handle given) takes no topk_idx / topk_weights: the handle's "
                             "routing is used, as in DeepEP")
        native = self._native_handle(handle, "handle")
        if rows != handle.num_tokens:
            raise ValueError(f"x has {rows} rows but the handle's dispatch had {handle.num_tokens} tokens")
        self._before(previous_event)
        cuda = self.runtime.cuda
        stream = self._stream(previous_event)
        handshake = self._handshake(previous_event, stream)
        x_in = T.take(frame, data, "x", fp8=fp8, cuda=cuda, stream=handshake)
        scales_in = T.take(frame, scales, "x_scales", cuda=cuda, stream=handshake) if fp8 else None
        op = self.runtime.dispatch_cached(x_in, scales_in, native, call, stream)
        self._track(op.event(), (x_in, scales_in, native))
        recv_x, recv_x_scales, _, _ = self._outputs(frame, op.allocated(), data, fp8)
        event = self._finish(op.event(), async_finish)
        return (recv_x, recv_x_scales) if fp8 else recv_x, None, None, None, None, event

    # ---- combine ----

    def combine(self, x: Any, handle: Handle, topk_weights: Optional[Any] = None,
                bias: Union[None, Any, Tuple[Any, Any]] = None, config: Optional[Config] = None,
                previous_event: Optional[EventOverlap] = None, async_finish: bool = False,
                allocate_on_comm_stream: bool = False) -> Tuple[Any, Optional[Any], EventOverlap]:
        """Sends every received row back to its source rank, where the rows of each token are summed (no
        weights applied, as in DeepEP: weight the expert outputs first). Collective.

        Arguments:
            x: ``[rows, hidden]`` bf16 or fp32, row i the result for received row i of the handle's dispatch.
            handle: the dispatch's Handle.
            topk_weights: ``[rows, num_topk]`` fp32 (e.g. recv_topk_weights): summed back into
                combined_topk_weights.
            bias: one ``[num_tokens, hidden]`` tensor of x's dtype added to every output row (a pair with one
                None also works; ferry adds one bias).
            config, previous_event, async_finish, allocate_on_comm_stream: as for dispatch.

        Returns:
            combined_x: ``[num_tokens, hidden]``, the sum over ranks of the rows returned for each token (fp32
                accumulation in a fixed order), plus the bias.
            combined_topk_weights: ``[num_tokens, num_topk]`` fp32, or None without topk_weights.
            event: an EventOverlap; its event is None unless async_finish.
        """
        runtime = self._live()
        self._check_stream_flags(previous_event, async_finish, allocate_on_comm_stream)
        frame = T.frame_of(x, "x")
        cuda = runtime.cuda
        native = self._native_handle(handle, "handle")
        T.check(frame, x, "x", ("bfloat16", "float32"), 2, rows=native.recv_rows, cuda=cuda)
        hidden = frame.shape(x)[1]
        if topk_weights is not None:
            T.check(frame, topk_weights, "topk_weights", ("float32",), 2, rows=native.recv_rows, cuda=cuda)
        if isinstance(bias, tuple):
            given = [b for b in bias if b is not None]
            if len(bias) != 2 or len(given) > 1:
                raise _ferry.Unsupported("ferry's combine adds one bias: pass bias_0 + bias_1 (DeepEP adds the two "
                                         "in fp32 before rounding; adding them first rounds once more)")
            bias = given[0] if given else None
        if bias is not None:
            T.check(frame, bias, "bias", (frame.dtype_name(x),), 2, rows=handle.num_tokens, cols=hidden, cuda=cuda)
        call = call_config(config, self._config, self._call_configs)
        self._before(previous_event)
        stream = self._stream(previous_event)
        handshake = self._handshake(previous_event, stream)
        y_in = T.take(frame, x, "x", cuda=cuda, stream=handshake)
        weights_in = (T.take(frame, topk_weights, "topk_weights", cuda=cuda, stream=handshake)
                      if topk_weights is not None else None)
        bias_in = T.take(frame, bias, "bias", cuda=cuda, stream=handshake) if bias is not None else None
        op = runtime.combine(y_in, native, weights_in, bias_in, call, stream)
        self._track(op.event(), (y_in, weights_in, bias_in, native))
        out, out_weights = op.outputs()
        event = self._finish(op.event(), async_finish)
        return frame.wrap(out), frame.wrap(out_weights) if out_weights is not None else None, event

    # ---- shared steps ----

    @staticmethod
    def _check_stream_flags(previous_event: Any, async_finish: bool, allocate_on_comm_stream: bool) -> None:
        if previous_event is not None and not isinstance(previous_event, EventOverlap):
            raise ValueError(f"previous_event must be an EventOverlap, not {type(previous_event).__name__}")
        if allocate_on_comm_stream and (previous_event is None or not async_finish):
            raise ValueError("allocate_on_comm_stream needs previous_event and async_finish (as in DeepEP)")

    def _check_rows(self, frame: Any, data: Any, scales: Any, name: str, fp8: bool) -> int:
        cuda = self.runtime.cuda
        if fp8:
            fp8_names = ("float8_e4m3fn", "uint8")
            T.check(frame, data, name, fp8_names, 2, cuda=cuda)
            rows, hidden = frame.shape(data)
            if frame.dtype_name(scales) in ("int32", "int"):
                raise _ferry.Unsupported("x's scales are packed UE8M0 (int32): ferry takes fp32 scales")
            T.check(frame, scales, "x_scales", ("float32",), 2, rows=rows, cols=-(-hidden // 128), cuda=cuda)
        else:
            T.check(frame, data, name, ("bfloat16", "float32"), 2, cuda=cuda)
            rows, hidden = frame.shape(data)
        if hidden > self._config.max_hidden:
            raise ValueError(f"{name} has hidden size {hidden} but this Buffer holds rows up to "
                             f"{self._config.max_hidden} values (build it with ferry_config={{'max_hidden': "
                             f"{hidden}}})")
        return rows

    def _check_layout(self, frame: Any, layout: Any, per_rank: Any, per_node: Any, in_rank: Any,
                      per_expert: Any) -> None:
        """The caller's layout tensors must be what topk_idx implies: ferry routes by topk_idx."""
        for name, given, ours in (("num_tokens_per_rank", per_rank, layout.tokens_per_rank()),
                                  ("num_tokens_per_rdma_rank", per_node, layout.tokens_per_node()),
                                  ("num_tokens_per_expert", per_expert, layout.tokens_per_expert())):
            if given is None:
                continue
            values = frame.int_list(given)
            if values != ours:
                raise ValueError(f"{name} is {values} but topk_idx gives {ours} (ferry routes by topk_idx)")
        computed = frame.as_bool(frame.wrap(layout.is_token_in_rank()))
        if not frame.equal(in_rank, computed):
            token = frame.first_difference(in_rank, computed)
            raise ValueError(f"is_token_in_rank[{token}] disagrees with topk_idx[{token}] (ferry routes every "
                             f"token by topk_idx; get_dispatch_layout computes a matching layout)")

    def _native_handle(self, handle: Any, name: str) -> Any:
        if isinstance(handle, tuple):
            raise ValueError(f"{name} is a tuple (DeepEP's own handle?): pass the ferry.Handle that this Buffer's "
                             f"dispatch returned")
        if not isinstance(handle, Handle):
            raise ValueError(f"{name} must be the Handle a dispatch returned, not {type(handle).__name__}")
        if handle._buffer is not self:
            raise ValueError(f"{name} belongs to another Buffer")
        return handle._resolve()

    def _before(self, previous_event: Optional[EventOverlap]) -> None:
        """A CPU Buffer honours previous_event by waiting for it on the host, unless the event is this Buffer's
        own (its operations already run in issue order)."""
        if previous_event is None or previous_event.event is None or self.runtime.cuda:
            return
        event = previous_event.event
        if event._owner is not self.runtime:
            self._wait(event.synchronize)

    def _stream(self, previous_event: Optional[EventOverlap]) -> int:
        """The CUDA stream ferry's operation follows: the current one, or one that waits for previous_event
        only (as DeepEP's communication stream does)."""
        if not self.runtime.cuda:
            return 0
        if previous_event is None or previous_event.event is None:
            return current_stream()
        if self._side_stream is None:
            import torch

            self._side_stream = torch.cuda.Stream()
        previous_event.event.stream_wait(self._side_stream.cuda_stream)
        return self._side_stream.cuda_stream

    @staticmethod
    def _handshake(previous_event: Optional[EventOverlap], stream: int) -> Optional[int]:
        """The stream a CUDA tensor's producer is told ferry reads it on (DLPack's __dlpack__(stream=...)): the
        operation's, so that the producer orders its pending work before it. None (no synchronisation) with
        previous_event: the operation then waits for that event only, as DeepEP's communication stream does;
        the caller ordered its inputs before the event."""
        if previous_event is not None and previous_event.event is not None:
            return None
        return stream

    def _finish(self, ferry_event: Any, async_finish: bool) -> EventOverlap:
        """async_finish: the caller waits on the returned event. Otherwise the operation is complete for the
        caller on return: the host waited (CPU) or the current stream waits (CUDA)."""
        if async_finish:
            return EventOverlap(self._event(ferry_event))
        if self.runtime.cuda:
            ferry_event.stream_wait(current_stream())
        else:
            self._wait(ferry_event.wait)
        return EventOverlap(None)

    @staticmethod
    def _outputs(frame: Any, tensors: Tuple[Any, Any, Any, Any], x: Any, fp8: bool) -> Tuple[Any, Any, Any, Any]:
        """The exported outputs in the caller's framework; fp8 rows in x's dtype (float8_e4m3fn or uint8)."""
        recv_x, recv_x_scales, recv_topk_idx, recv_topk_weights = (frame.wrap(t) if t is not None else None
                                                                   for t in tensors)
        if fp8 and frame.dtype_name(x) != "uint8":
            recv_x = frame.as_fp8(recv_x)
        return recv_x, recv_x_scales, recv_topk_idx, recv_topk_weights
