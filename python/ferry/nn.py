"""Autograd through ferry's dispatch and combine, and a Mixture-of-Experts layer built on them.

The backward of a dispatch is a combine: dispatch copies a token to every rank that holds one of its experts,
so the token's gradient is the sum of the gradients of its copies (and a top-k weight's gradient comes back
from the one rank that owns that expert). The backward of a combine is a cached dispatch: combine sums the
rows the ranks returned for a token, so each of those rows receives the token's output gradient. Both
backward passes are collective, like the forward passes: every rank runs backward over the same layers.

    buffer = ferry.Buffer(group)
    moe = ferry.nn.MoE(buffer, hidden=256, ffn_hidden=512, num_experts=16, topk=4)
    out = moe(x)                 # x: this rank's tokens [T, hidden]
    loss = out.square().sum()
    loss.backward()              # moe.gate's gradient is this rank's share: all-reduce it (it is replicated)

Needs torch.
"""

from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from .buffer import Buffer, Handle


class Dispatch(torch.autograd.Function):
    """(recv_x, recv_topk_idx, recv_topk_weights) = Dispatch.apply(x, topk_weights, topk_idx, buffer,
    num_experts, state); `state` (a dict) receives the handle and the per-expert counts."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, topk_weights: torch.Tensor, topk_idx: torch.Tensor, buffer: Buffer,
                num_experts: int, state: dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        per_rank, per_node, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, num_experts)
        recv_x, recv_idx, recv_w, counts, handle, _ = buffer.dispatch(
            x.contiguous(), topk_idx=topk_idx, topk_weights=topk_weights.contiguous(), num_tokens_per_rank=per_rank,
            num_tokens_per_rdma_rank=per_node, is_token_in_rank=in_rank, num_tokens_per_expert=per_expert)
        ctx.buffer, ctx.handle = buffer, handle
        ctx.save_for_backward(recv_idx)
        ctx.mark_non_differentiable(recv_idx)
        state["handle"], state["counts"] = handle, list(counts)
        return recv_x, recv_idx, recv_w

    @staticmethod
    def backward(ctx: Any, grad_recv_x: Optional[torch.Tensor], grad_recv_idx: Any,
                 grad_recv_w: Optional[torch.Tensor]) -> Tuple[Any, ...]:
        (recv_idx,) = ctx.saved_tensors
        if grad_recv_x is None:
            raise ValueError("ferry.nn.Dispatch: recv_x took no part in the loss (every rank must run the combine)")
        # A weight's gradient counts only on the rank that owns its expert (elsewhere the received weight is 0).
        grad_w = None
        if grad_recv_w is not None:
            grad_w = torch.where(recv_idx >= 0, grad_recv_w, torch.zeros_like(grad_recv_w)).float().contiguous()
        grad_x, grad_topk_w, _ = ctx.buffer.combine(grad_recv_x.contiguous(), ctx.handle, topk_weights=grad_w)
        return grad_x, grad_topk_w, None, None, None, None


class Combine(torch.autograd.Function):
    """combined = Combine.apply(y, buffer, handle): the sum over ranks of the rows returned for each token."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, buffer: Buffer, handle: Handle) -> torch.Tensor:
        combined, _, _ = buffer.combine(y.contiguous(), handle)
        ctx.buffer, ctx.handle = buffer, handle
        return combined

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Any, ...]:
        grad_y = ctx.buffer.dispatch(grad_out.contiguous(), handle=ctx.handle)[0]
        return grad_y, None, None


class MoE(nn.Module):
    """A top-k Mixture-of-Experts FFN whose experts are split evenly over the Buffer's ranks: rank r holds
    experts [r * E / R, (r + 1) * E / R). The gate (softmax over experts, top-k, weights not renormalised) is
    replicated on every rank; its gradient is this rank's share, so sum it over ranks before an update (the
    experts' gradients are complete on their owner).

    Each expert is ``relu(x @ w1) @ w2``; a token's output is the sum over its experts of weight x output.
    """

    def __init__(self, buffer: Buffer, hidden: int, ffn_hidden: int, num_experts: int, topk: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        ranks = buffer.group_size
        if num_experts % ranks:
            raise ValueError(f"num_experts {num_experts} is not a multiple of the {ranks} ranks")
        self.buffer = buffer
        self.num_experts, self.topk = num_experts, topk
        self.local_experts = num_experts // ranks
        self.first_expert = buffer.rank * self.local_experts
        self.gate = nn.Linear(hidden, num_experts, bias=False, dtype=dtype)
        self.w1 = nn.Parameter(torch.empty(self.local_experts, hidden, ffn_hidden, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(self.local_experts, ffn_hidden, hidden, dtype=dtype))
        nn.init.normal_(self.w1, std=hidden ** -0.5)
        nn.init.normal_(self.w2, std=ffn_hidden ** -0.5)
        self.last_counts: List[int] = []

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(topk_weights [T, k] fp32, topk_idx [T, k] int64)."""
        return route(x, self.gate.weight, self.topk)

    def experts(self, recv_x: torch.Tensor, recv_idx: torch.Tensor, recv_w: torch.Tensor) -> torch.Tensor:
        """Each received row through this rank's experts it chose, weighted and summed."""
        y = torch.zeros_like(recv_x)
        for e in range(self.local_experts):
            chose = recv_idx == e
            rows = chose.any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            weight = (recv_w * chose).sum(dim=1)[rows].unsqueeze(1).to(recv_x.dtype)
            out = torch.relu(recv_x[rows] @ self.w1[e]) @ self.w2[e]
            y = y.index_add(0, rows, weight * out)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, idx = self.route(x)
        state: dict = {}
        recv_x, recv_idx, recv_w = Dispatch.apply(x, weights, idx, self.buffer, self.num_experts, state)
        self.last_counts = state["counts"]
        return Combine.apply(self.experts(recv_x, recv_idx, recv_w), self.buffer, state["handle"])


def route(x: torch.Tensor, gate: torch.Tensor, topk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The gate: softmax over experts of ``x @ gate.T``, its top-k (weights fp32, not renormalised; ids)."""
    scores = torch.softmax(nn.functional.linear(x, gate).float(), dim=-1)
    return scores.topk(topk, dim=-1)


def reference_moe(x: torch.Tensor, gate: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk: int,
                  route_rows: Optional[int] = None) -> torch.Tensor:
    """The same layer in one process with every expert (w1 [E, hidden, ffn], w2 [E, ffn, hidden]): what MoE
    computes for the tokens of all ranks together, for tests. route_rows: route the tokens in batches of this
    many rows, as the ranks do (a product of another shape may round differently and turn a near-tie of two
    experts the other way)."""
    chunks = x.split(route_rows) if route_rows else (x,)
    routed = [route(chunk, gate, topk) for chunk in chunks]
    weights = torch.cat([w for w, _ in routed])
    idx = torch.cat([i for _, i in routed])
    out = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        chose = idx == e
        rows = chose.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        weight = (weights * chose).sum(dim=1)[rows].unsqueeze(1).to(x.dtype)
        out = out.index_add(0, rows, weight * (torch.relu(x[rows] @ w1[e]) @ w2[e]))
    return out
