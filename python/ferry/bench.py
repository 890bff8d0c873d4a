"""``python3 -m ferry.bench``: time DeepEP-style dispatch (or combine) through ferry's Python package on every
rank of a job, as ``ferry bench dispatch|combine`` times the C++ API, so the two can be compared in one run::

    ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --json cpp.json
    ferry launch --nodes 2 --ranks-per-node 2 -- python3 -m ferry.bench dispatch --json py.json

Same defaults as ``ferry bench`` (4096 tokens, hidden 7168, bf16, top-8 of 64 experts, num_sms 20, 10 timed
iterations after 2 untimed). What is timed matches too: dispatch includes the count exchange but not
get_dispatch_layout (which runs once before); combine runs after one untimed dispatch. The Python path's own
costs are all inside: argument checks, the layout check inside dispatch (get_dispatch_layout's own, unchanged
tensors are recognised), DLPack in and out. Each rank's routing is uniform over the experts (every token picks
top-k distinct ones). Every iteration also runs the operation through the binding alone (ferry._ferry, as
`ferry bench` drives the C++ Buffer), right after the Python path, and reports both: the difference is the
Python layer's cost under the same machine load; so is the difference in the calling thread's CPU time
(time.thread_time: ferry's own threads move the rows, so this is the Python layer's and the binding's work,
which hardly depends on the machine's load). The job comes from torchrun's variables (`ferry launch` and
torchrun set them); gloo carries the bootstrap. Rank 0 prints the summary and writes it as JSON: time per
operation, mean / min / max over the ranks' averages.
"""

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m ferry.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=("dispatch", "combine"), nargs="?", default="dispatch")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=7168, help="values per token row")
    parser.add_argument("--topk", type=int, default=8, help="experts per token")
    parser.add_argument("--experts", type=int, default=64, help="experts in total (a multiple of the ranks)")
    parser.add_argument("--num-sms", type=int, default=20, help="SM budget (channels = num_sms / 2)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--seed", type=int, default=1, help="routing seed")
    parser.add_argument("--json", help="write rank 0's summary to this file")
    args = parser.parse_args()
    for name in ("tokens", "hidden", "topk", "experts", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    import torch
    import torch.distributed as dist

    import ferry

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.experts % world:
        parser.error(f"--experts {args.experts} is not a multiple of the {world} ranks")
    ferry.Buffer.set_num_sms(args.num_sms)
    buffer = ferry.Buffer(dist.group.WORLD, ferry_config={"max_hidden": args.hidden, "max_topk": args.topk})
    g = torch.Generator().manual_seed(args.seed * 7919 + rank)
    topk_idx = torch.rand(args.tokens, args.experts, generator=g).topk(args.topk, dim=1).indices
    topk_weights = torch.rand(args.tokens, args.topk, generator=g)
    x = torch.randn(args.tokens, args.hidden, generator=g).to(torch.bfloat16)
    per_rank, per_node, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, args.experts)
    layout = dict(num_tokens_per_rank=per_rank, num_tokens_per_rdma_rank=per_node, is_token_in_rank=in_rank,
                  num_tokens_per_expert=per_expert, topk_idx=topk_idx, topk_weights=topk_weights)

    def dispatch_once():
        return buffer.dispatch(x, **layout)

    received = dispatch_once() if args.op == "combine" else None

    def combine_once():
        return buffer.combine(received[0], received[4])

    # The same operation through the binding alone (ferry._ferry: inputs taken once, the layout computed once,
    # no argument checks), as `ferry bench` drives the C++ Buffer: run in turn with the Python path, so that
    # the difference is the Python layer's cost under the same machine load.
    runtime = buffer.runtime
    x_in, topk_in, weights_in = (ferry._tensors.take(ferry._tensors.TorchFrame, t, n)
                                 for t, n in ((x, "x"), (topk_idx, "topk_idx"), (topk_weights, "topk_weights")))
    native_layout = runtime.layout(topk_in, args.experts)

    def binding_once():
        if args.op == "dispatch":
            op = runtime.dispatch(x_in, None, topk_in, weights_in, native_layout, 0, 1, None, 0)
            return op.result()
        op = runtime.combine(y_in, received[4]._resolve(), None, None, None, 0)
        op.wait()
        return op.outputs()

    y_in = ferry._tensors.take(ferry._tensors.TorchFrame, received[0], "x") if received else None
    once = dispatch_once if args.op == "dispatch" else combine_once
    result = None
    for _ in range(args.warmup):
        result = None  # as ferry bench: the previous results are freed before the next operation
        result = once()
        result = None
        result = binding_once()
    dist.barrier()
    seconds, binding_seconds = [], []
    cpu, binding_cpu = [], []  # CPU time of this (the calling) thread: the Python layer's own work shows here
    for _ in range(args.iters):
        result = None
        begin, begin_cpu = time.perf_counter(), time.thread_time()
        result = once()
        seconds.append(time.perf_counter() - begin)
        cpu.append(time.thread_time() - begin_cpu)
        rows = int((result if args.op == "dispatch" else received)[0].shape[0])
        result = None
        begin, begin_cpu = time.perf_counter(), time.thread_time()
        result = binding_once()
        binding_seconds.append(time.perf_counter() - begin)
        binding_cpu.append(time.thread_time() - begin_cpu)
    per_iter = sum(seconds) / args.iters
    result = received = x_in = topk_in = weights_in = y_in = native_layout = None
    buffer._close()

    mine = {"rank": rank, "seconds_per_iter": per_iter, "iteration_seconds": seconds,
            "binding_seconds_per_iter": sum(binding_seconds) / args.iters, "binding_iteration_seconds": binding_seconds,
            "caller_cpu_seconds_per_iter": sum(cpu) / args.iters,
            "binding_caller_cpu_seconds_per_iter": sum(binding_cpu) / args.iters, "recv_rows": rows}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        times = [r["seconds_per_iter"] for r in everyone]
        summary = {
            "tool": "ferry python",
            "op": args.op,
            "ranks": world,
            "options": vars(args),
            "time_us": {"mean": sum(times) / len(times) * 1e6, "min": min(times) * 1e6, "max": max(times) * 1e6},
            "binding_time_us": {"mean": sum(r["binding_seconds_per_iter"] for r in everyone) / world * 1e6},
            "caller_cpu_us": {
                "python": sum(r["caller_cpu_seconds_per_iter"] for r in everyone) / world * 1e6,
                "binding": sum(r["binding_caller_cpu_seconds_per_iter"] for r in everyone) / world * 1e6},
            "per_rank": everyone,
        }
        print(f"ferry python {args.op}: {world} ranks, {args.tokens} tokens x {args.hidden} bf16, top-{args.topk} "
              f"of {args.experts}, num_sms {args.num_sms}")
        t = summary["time_us"]
        print(f"  time per {args.op}: mean {t['mean'] / 1e3:.3f} ms, min {t['min'] / 1e3:.3f}, "
              f"max {t['max'] / 1e3:.3f} (per-rank averages)")
        b = summary["binding_time_us"]["mean"]
        print(f"  the same through the binding alone, in turn: mean {b / 1e3:.3f} ms; Python layer "
              f"{(t['mean'] - b) / 1e3:+.3f} ms ({(t['mean'] / b - 1) * 100:+.1f}%)")
        c = summary["caller_cpu_us"]
        own = (c["python"] - c["binding"]) / 1e3
        print(f"  CPU time of the calling thread per {args.op}: Python path {c['python'] / 1e3:.3f} ms, binding "
              f"alone {c['binding'] / 1e3:.3f} ms (the Python layer's own work: {own:+.3f} ms)", flush=True)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(summary, out, indent=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
