"""ferry: Mixture-of-Experts dispatch and combine (DeepEP's Buffer API) on ferry's engine.

A program written for DeepEP runs with one changed line::

    import ferry as deep_ep

    buffer = deep_ep.Buffer(group, num_nvl_bytes, num_rdma_bytes)
    num_tokens_per_rank, num_tokens_per_rdma_rank, num_tokens_per_expert, is_token_in_rank, _ = \\
        buffer.get_dispatch_layout(topk_idx, num_experts)
    recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert_list, handle, event = \\
        buffer.dispatch(x, topk_idx=topk_idx, topk_weights=topk_weights,
                        num_tokens_per_rank=num_tokens_per_rank, num_tokens_per_rdma_rank=num_tokens_per_rdma_rank,
                        is_token_in_rank=is_token_in_rank, num_tokens_per_expert=num_tokens_per_expert)
    combined_x, _, event = buffer.combine(expert_outputs, handle)

DeepEP's low-latency (decode) mode, on CPU tensors::

    num_rdma_bytes = deep_ep.Buffer.get_low_latency_rdma_size_hint(128, hidden, num_ranks, num_experts)
    buffer = deep_ep.Buffer(group, num_rdma_bytes=num_rdma_bytes, low_latency_mode=True,
                            num_qps_per_rank=num_experts // num_ranks)
    recv_x, recv_count, handle, event, hook = \
        buffer.low_latency_dispatch(x, topk_idx, 128, num_experts, use_fp8=True, return_recv_hook=True)
    hook()                                          # the call issued the sends; the hook takes the receives
    combined_x, event, hook = buffer.low_latency_combine(expert_out, topk_idx, topk_weights, handle)

CPU tensors run ferry's host backend (gloo group), CUDA tensors its CUDA executor (NCCL group; normal mode
only). See ferry.Buffer and ferry.low_latency for where ferry differs from DeepEP, and ferry.nn for an MoE
layer with autograd.

Errors: ValueError (ferry.InvalidArgument) for bad input, refused before any communication;
ferry.PeerFailure (with .rank) when a peer died; TimeoutError (ferry.Timeout) when a peer stopped making
progress; NotImplementedError (ferry.Unsupported) for what ferry does not do.
"""

from ._ferry import (FerryConfig, FerryError, InvalidArgument, PeerFailure, Timeout, Unsupported, __version__,
                     buffer_size_hint, built_with_cuda)
from .buffer import Buffer, ExpertCounts, Handle
from .config import Config
from .event import EventHandle, EventOverlap
from .low_latency import LowLatencyHandle, LowLatencyHook


def __getattr__(name: str):
    # topk_idx_t (DeepEP's integer type of top-k indices) without importing torch at `import ferry`.
    if name == "topk_idx_t":
        try:
            import torch

            return torch.int64
        except ImportError:
            import numpy

            return numpy.int64
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")


__all__ = [
    "Buffer", "Config", "EventHandle", "EventOverlap", "ExpertCounts", "FerryConfig", "FerryError", "Handle",
    "InvalidArgument", "LowLatencyHandle", "LowLatencyHook", "PeerFailure", "Timeout", "Unsupported",
    "buffer_size_hint", "built_with_cuda",
    "topk_idx_t", "__version__",
]
