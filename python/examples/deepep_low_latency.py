"""A decode step's MoE communication in DeepEP's low-latency mode; the only ferry-specific line is the import.

    ferry launch --nodes 2 --ranks-per-node 2 -- python3 python/examples/deepep_low_latency.py
    torchrun --nproc_per_node 4 python/examples/deepep_low_latency.py   (torch 2.x; see README for Debian's 1.13)

CPU tensors over a gloo group (on CUDA tensors, build the Buffer with device="cuda"; the calls then follow the
current stream). The dispatch only issues its sends and returns a hook; work placed before the hook overlaps
the transfer. Each rank checks that every token comes back as the weighted sum of its experts' outputs.
"""

import torch
import torch.distributed as dist

import ferry as deep_ep  # was: import deep_ep

dist.init_process_group("gloo")  # torchrun's variables: set by torchrun, srun wrappers, or `ferry launch`
rank, num_ranks = dist.get_rank(), dist.get_world_size()
num_max_tokens, hidden, num_topk, num_experts = 128, 1024, 4, 8 * num_ranks
num_local_experts = num_experts // num_ranks

num_rdma_bytes = deep_ep.Buffer.get_low_latency_rdma_size_hint(num_max_tokens, hidden, num_ranks, num_experts)
buffer = deep_ep.Buffer(dist.group.WORLD, num_rdma_bytes=num_rdma_bytes, low_latency_mode=True,
                        num_qps_per_rank=num_local_experts)

torch.manual_seed(rank)
x = torch.randn(num_max_tokens, hidden).to(torch.bfloat16)
topk_weights, topk_idx = torch.randn(num_max_tokens, num_experts).softmax(dim=-1).topk(num_topk, dim=-1)
topk_idx = topk_idx.to(deep_ep.topk_idx_t)

recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
    x, topk_idx, num_max_tokens, num_experts, use_fp8=False, return_recv_hook=True)  # use_fp8=True: (e4m3, scales)
hook()  # work placed before this line overlaps the transfer; the hook takes the receives
# recv_x: [local experts, ranks * max tokens, hidden]; expert e's rows [0, recv_count[e]) are valid.

# The "experts": local expert e returns its rows times (e + 1), written straight into the buffer the
# combine sends from (zero copy).
expert_out = buffer.get_next_low_latency_combine_buffer(handle)
expert_out[:] = recv_x * torch.arange(1, num_local_experts + 1).view(-1, 1, 1).to(torch.bfloat16)
combined_x, event, hook = buffer.low_latency_combine(expert_out, topk_idx, topk_weights, handle, zero_copy=True)
del expert_out  # a view of ferry's memory: drop it before the Buffer goes

local = (topk_idx % num_local_experts + 1).float()
expected = x.float() * (topk_weights * local).sum(dim=1, keepdim=True)
assert torch.allclose(combined_x.float(), expected, rtol=2e-2, atol=2e-2)
print(f"rank {rank}: rows per local expert {recv_count.tolist()}, combine ok", flush=True)
dist.destroy_process_group()
