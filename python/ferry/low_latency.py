"""DeepEP's low-latency mode (decode): the one place its methods live on ferry.Buffer.

ferry's low-latency engine (C++: ferry/low_latency.hpp) is not bound to Python yet. Until it is, every
low-latency method, and ``Buffer(low_latency_mode=True)``, raises ferry.Unsupported (a NotImplementedError)
that says so; normal mode (dispatch / combine) is unaffected. Binding it means filling in this mixin only.
"""

from typing import Any, NoReturn

from . import _ferry


def unavailable(what: str) -> NoReturn:
    raise _ferry.Unsupported(
        f"ferry.Buffer: {what} belongs to DeepEP's low-latency mode, which ferry's Python package does not "
        f"provide yet; use normal mode (get_dispatch_layout / dispatch / combine)")


class LowLatencyMethods:
    """DeepEP's low-latency methods, each raising ferry.Unsupported for now (see the module docstring)."""

    @staticmethod
    def get_low_latency_rdma_size_hint(num_max_dispatch_tokens_per_rank: int, hidden: int, num_ranks: int,
                                       num_experts: int) -> int:
        unavailable("get_low_latency_rdma_size_hint")

    def clean_low_latency_buffer(self, num_max_dispatch_tokens_per_rank: int, hidden: int, num_experts: int) -> None:
        unavailable("clean_low_latency_buffer")

    def low_latency_dispatch(self, x: Any, topk_idx: Any, num_max_dispatch_tokens_per_rank: int, num_experts: int,
                             *args: Any, **kwargs: Any) -> Any:
        unavailable("low_latency_dispatch")

    def low_latency_combine(self, x: Any, topk_idx: Any, topk_weights: Any, handle: Any, *args: Any,
                            **kwargs: Any) -> Any:
        unavailable("low_latency_combine")

    def low_latency_update_mask_buffer(self, rank_to_mask: int, mask: bool = False) -> None:
        unavailable("low_latency_update_mask_buffer")

    def low_latency_query_mask_buffer(self, mask_status: Any) -> None:
        unavailable("low_latency_query_mask_buffer")

    def low_latency_clean_mask_buffer(self) -> None:
        unavailable("low_latency_clean_mask_buffer")

    def get_next_low_latency_combine_buffer(self, handle: Any) -> Any:
        unavailable("get_next_low_latency_combine_buffer")
