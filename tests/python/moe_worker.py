"""One rank of the MoE training job: ferry.nn.MoE, experts split over the ranks, trained for a few SGD steps;
every rank also trains the single-process torch reference (ferry.nn.reference_moe, every expert, the global
batch) from the same initial parameters and data, and requires at every step the same loss, the same gradient
of the input, the gate and its own experts, and the same updated parameters (fp32; only the order of the
sums differs, so within 1e-5 relative).

Started on every rank by tests/python/test_moe.py under `ferry launch`.
"""

import torch
import torch.distributed as dist

import ferry
import ferry.nn
from worker_common import DEVICE, Report, agreed_seed, buffer_options, join

TOKENS, HIDDEN, FFN, EXPERTS_PER_RANK, TOPK, STEPS, LR = 32, 128, 64, 2, 3, 4, 2.0


def close(a, b, what, rtol=1e-5, atol=1e-6):
    a, b = a.detach().cpu(), b.detach().cpu()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{what}: max difference {(a - b).abs().max().item():.3g}"


def check_training(rank, world, seed):
    experts = EXPERTS_PER_RANK * world
    g = torch.Generator().manual_seed(seed)
    gate = torch.randn(experts, HIDDEN, generator=g) * HIDDEN ** -0.5
    w1 = torch.randn(experts, HIDDEN, FFN, generator=g) * HIDDEN ** -0.5
    w2 = torch.randn(experts, FFN, HIDDEN, generator=g) * FFN ** -0.5
    # One batch, seen every step: gradient descent on it must lower its loss (fresh batches each step made the
    # first and last losses those of different data, and the comparison a coin toss for some seeds).
    data = [torch.randn(world * TOKENS, HIDDEN, generator=g)] * STEPS
    targets = [0.5 * x for x in data]  # learnable: the loss must go down

    buffer = ferry.Buffer(dist.group.WORLD, **buffer_options())
    moe = ferry.nn.MoE(buffer, HIDDEN, FFN, experts, TOPK).to(DEVICE)
    mine = slice(rank * EXPERTS_PER_RANK, (rank + 1) * EXPERTS_PER_RANK)
    with torch.no_grad():
        moe.gate.weight.copy_(gate)
        moe.w1.copy_(w1[mine])
        moe.w2.copy_(w2[mine])
    ref = [p.clone().requires_grad_() for p in (gate, w1, w2)]
    tokens = slice(rank * TOKENS, (rank + 1) * TOKENS)

    losses = []
    for step in range(STEPS):
        # ferry: this rank's tokens; the loss is the global mean, so the gate's gradients add up over ranks.
        x = data[step][tokens].clone().to(DEVICE).requires_grad_()
        out = moe(x)
        loss = (out - targets[step][tokens].to(DEVICE)).square().sum() / (world * TOKENS * HIDDEN)
        moe.zero_grad()
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        dist.all_reduce(moe.gate.weight.grad)

        x_ref = data[step].clone().requires_grad_()
        out_ref = ferry.nn.reference_moe(x_ref, *ref, TOPK, route_rows=TOKENS)
        loss_ref = (out_ref - targets[step]).square().sum() / (world * TOKENS * HIDDEN)
        for p in ref:
            p.grad = None
        loss_ref.backward()

        close(total, loss_ref, f"step {step}: loss")
        losses.append(total.item())
        close(out, out_ref[tokens], f"step {step}: output")
        close(x.grad, x_ref.grad[tokens], f"step {step}: input gradient")
        close(moe.gate.weight.grad, ref[0].grad, f"step {step}: gate gradient")
        close(moe.w1.grad, ref[1].grad[mine], f"step {step}: w1 gradient")
        close(moe.w2.grad, ref[2].grad[mine], f"step {step}: w2 gradient")
        if rank == 0:
            print(f"step {step}: loss {total.item():.6f} (reference {loss_ref.item():.6f})", flush=True)
        with torch.no_grad():
            for p in moe.parameters():
                p -= LR * p.grad
            for p in ref:
                p -= LR * p.grad
    assert losses[-1] < losses[0], f"the loss did not go down: {losses}"
    close(moe.w1, ref[1][mine], "trained w1")
    close(moe.gate.weight, ref[0], "trained gate")
    buffer._close()


def main():
    rank, world, _ = join()
    seed = agreed_seed(rank)
    report = Report(rank)
    report.run(f"MoE trains {STEPS} steps like the single-process reference", check_training, rank, world, seed)
    report.done()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
