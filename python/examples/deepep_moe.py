"""An MoE layer's communication written for DeepEP; the only ferry-specific line is the import.

    ferry launch --nodes 2 --ranks-per-node 2 -- python3 python/examples/deepep_moe.py
    torchrun --nproc_per_node 4 python/examples/deepep_moe.py          (torch 2.x; see README for Debian's 1.13)

CPU tensors over a gloo group; with CUDA tensors and an NCCL group the same code runs on ferry's CUDA executor.
Each rank checks that every token comes back as the weighted sum of its experts' outputs.
"""

import torch
import torch.distributed as dist

import ferry as deep_ep  # was: import deep_ep

dist.init_process_group("gloo")  # torchrun's variables: set by torchrun, srun wrappers, or `ferry launch`
rank, num_ranks = dist.get_rank(), dist.get_world_size()
num_tokens, hidden, num_topk, num_experts = 128, 1024, 4, 4 * num_ranks

buffer = deep_ep.Buffer(dist.group.WORLD, num_nvl_bytes=int(1e9), num_rdma_bytes=0)

torch.manual_seed(rank)
x = torch.randn(num_tokens, hidden).to(torch.bfloat16)
scores = torch.randn(num_tokens, num_experts).softmax(dim=-1)
topk_weights, topk_idx = scores.topk(num_topk, dim=-1)
topk_idx = topk_idx.to(deep_ep.topk_idx_t)

num_tokens_per_rank, num_tokens_per_rdma_rank, num_tokens_per_expert, is_token_in_rank, _ = \
    buffer.get_dispatch_layout(topk_idx, num_experts)
recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert_list, handle, event = buffer.dispatch(
    x, topk_idx=topk_idx, topk_weights=topk_weights, num_tokens_per_rank=num_tokens_per_rank,
    num_tokens_per_rdma_rank=num_tokens_per_rdma_rank, is_token_in_rank=is_token_in_rank,
    num_tokens_per_expert=num_tokens_per_expert, async_finish=True)
with event:
    pass  # work here overlaps the dispatch (a shared expert, say); leaving the block waits for it

# The "experts": local expert e scales its rows by (e + 1); each row is weighted by its top-k weights here.
local_expert = (recv_topk_idx + 1).clamp(min=0).float()
expert_out = recv_x.float() * (recv_topk_weights * local_expert).sum(dim=1, keepdim=True)
combined_x, _, _ = buffer.combine(expert_out.to(torch.bfloat16), handle)

first_local = (topk_idx // (num_experts // num_ranks)) * (num_experts // num_ranks)
expected = x.float() * (topk_weights * (topk_idx - first_local + 1).float()).sum(dim=1, keepdim=True)
assert torch.allclose(combined_x.float(), expected, rtol=2e-2, atol=2e-2)
print(f"rank {rank}: {recv_x.shape[0]} rows received, per local expert {list(num_recv_tokens_per_expert_list)}, "
      f"combine ok", flush=True)
dist.destroy_process_group()
