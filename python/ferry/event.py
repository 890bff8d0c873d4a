"""DeepEP's ``EventHandle`` and ``EventOverlap`` on ferry's events.

An EventHandle is the completion of a ferry operation, a CUDA event captured on the current stream
(``EventHandle()`` with torch's CUDA in use), or nothing left to wait for. ``current_stream_wait()`` makes the
current CUDA stream wait for it without blocking the host; for an operation of a CPU Buffer, where there is no
stream, the host waits instead (GIL released; Ctrl-C interrupts it).
"""

import sys
from typing import Any, Callable, Optional, Tuple

from . import _ferry


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")  # not imported by ferry: a program without torch has no CUDA stream
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


def current_stream() -> int:
    """The current CUDA stream as an int (cudaStream_t), for ferry's stream arguments."""
    import torch

    return torch.cuda.current_stream().cuda_stream


class EventHandle:
    """DeepEP's EventHandle. ``EventHandle()`` captures the current CUDA stream (as DeepEP's does) when torch's
    CUDA is in use, else it is complete at once."""

    __slots__ = ("_ferry", "_cuda", "_owner", "_on_interrupt", "_abandon_on")

    def __init__(self, ferry_event: Optional["_ferry.Event"] = None, owner: Any = None,
                 on_interrupt: Optional[Callable[[], None]] = None,
                 abandon_on: Tuple[type, ...] = (KeyboardInterrupt, _ferry.PeerFailure, _ferry.Timeout)) -> None:
        self._ferry = ferry_event
        self._owner = owner  # the Runtime that issued the operation, if any
        self._on_interrupt = on_interrupt  # called when a wait ends with one of abandon_on
        self._abandon_on = abandon_on
        self._cuda = None
        if ferry_event is None and _cuda_in_use():
            import torch

            self._cuda = torch.cuda.Event()
            self._cuda.record()

    def query(self) -> bool:
        """True once what the event stands for has finished."""
        if self._ferry is not None:
            return self._ferry.test()
        return self._cuda.query() if self._cuda is not None else True

    def synchronize(self) -> None:
        """Blocks the host until it has finished (raising the operation's error)."""
        if self._ferry is not None:
            self._guarded(self._ferry.wait)
        elif self._cuda is not None:
            self._cuda.synchronize()

    def stream_wait(self, stream: int) -> None:
        """Makes CUDA stream `stream` (an int) wait for it; for a CPU Buffer's operation the host waits."""
        if self._ferry is not None:
            self._guarded(lambda: self._ferry.stream_wait(stream))
        elif self._cuda is not None:
            import torch

            torch.cuda.ExternalStream(stream).wait_event(self._cuda)

    def current_stream_wait(self) -> None:
        """The current CUDA stream waits for it (DeepEP's semantics); without a CUDA stream (a CPU Buffer) the
        host waits. Raises the operation's error."""
        if self._ferry is not None and (self._owner is None or not self._owner.cuda):
            self._guarded(self._ferry.wait)
        elif self._ferry is not None:
            self._guarded(lambda: self._ferry.stream_wait(current_stream()))
        elif self._cuda is not None:
            import torch

            torch.cuda.current_stream().wait_event(self._cuda)

    def _guarded(self, wait: Callable[[], None]) -> None:
        try:
            wait()
        except BaseException as error:
            if self._on_interrupt is not None and isinstance(error, self._abandon_on):
                self._on_interrupt()
            raise


class EventOverlap:
    """DeepEP's EventOverlap: an event plus tensors to keep alive, usable as a context manager::

        recv_x, ..., event = buffer.dispatch(x, ..., async_finish=True)
        with event:
            shared_expert_output = shared_expert(x)   # overlaps the dispatch
        # leaving the block, the current stream (CPU Buffer: the host) waits for the dispatch

    Attributes:
        event: the EventHandle (None when the operation was not asynchronous).
        extra_tensors: tensors kept alive until the event is dropped.
    """

    def __init__(self, event: Optional[EventHandle] = None, extra_tensors: Optional[Tuple[Any, ...]] = None) -> None:
        self.event = event
        self.extra_tensors = extra_tensors
        self._release_handle_by_call = False
        self.hook_after_wait: Optional[Callable[[], None]] = None

    def current_stream_wait(self, release_handle: bool = False) -> None:
        """The current stream waits for the event (CPU Buffer: the host waits); raises the operation's error.
        Then runs the hook registered with register_hook_after_wait; release_handle drops the event."""
        if self.event is None:
            raise ValueError("EventOverlap.current_stream_wait: there is no event (the operation was not "
                             "asynchronous, or release_handle dropped it)")
        self.event.current_stream_wait()
        if self.hook_after_wait is not None:
            hook, self.hook_after_wait = self.hook_after_wait, None
            hook()
        if release_handle:
            self.event = None

    def register_hook_after_wait(self, hook_after_wait: Callable[[], None]) -> None:
        """A hook run once, right after the next current_stream_wait()."""
        if self.hook_after_wait is not None:
            raise ValueError("a hook is already registered on this EventOverlap")
        self.hook_after_wait = hook_after_wait

    def __call__(self, release_handle: bool = False) -> "EventOverlap":
        """``with event(release_handle=True):`` drops the event after the wait at the end of the block."""
        self._release_handle_by_call = release_handle
        return self

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if self.event is not None:
            self.current_stream_wait(release_handle=self._release_handle_by_call)
        self._release_handle_by_call = False
