"""One rank of the DeepEP-style correctness job: a program written for DeepEP (``import ferry as deep_ep``)
whose every result is compared with a reference computed from all ranks' inputs (each rank regenerates the
others' from the shared seed). Values are small integers and quarter weights, so every sum is exact in bf16
and fp32 and the comparisons are exact; random fp32 rows are compared with a tolerance.

Started on every rank by tests/python/test_deepep.py (under `ferry launch` or with torchrun's variables).
"""

import os
import time

import numpy
import torch
import torch.distributed as dist

import ferry as deep_ep
from worker_common import DEVICE, Report, agreed_seed, buffer_options, expect_error, join

TOKENS, HIDDEN, TOPK, EXPERTS_PER_RANK = 48, 384, 4, 4
SCALE_BLOCKS = (HIDDEN + 127) // 128


def inputs_of(seed, rank, experts):
    """Rank `rank`'s inputs: a pure function of (seed, rank), so every rank can make every rank's."""
    g = torch.Generator().manual_seed(seed * 1009 + rank)
    topk_idx = torch.rand(TOKENS, experts, generator=g).topk(TOPK, dim=1).indices
    topk_idx[torch.rand(TOKENS, TOPK, generator=g) < 0.15] = -1  # empty slots
    topk_idx[::11] = -1  # tokens that go nowhere
    weights = torch.randint(1, 5, (TOKENS, TOPK), generator=g).float() * 0.25
    x = torch.randint(-4, 5, (TOKENS, HIDDEN), generator=g).float()
    x_other = torch.randint(-4, 5, (TOKENS, HIDDEN), generator=g).float()
    x_rand = torch.randn(TOKENS, HIDDEN, generator=g)
    bias = torch.randint(-2, 3, (TOKENS, HIDDEN), generator=g).float()
    fp8 = torch.randint(0, 0x7F, (TOKENS, HIDDEN), generator=g, dtype=torch.uint8)  # no NaN pattern
    fp8 |= torch.randint(0, 2, (TOKENS, HIDDEN), generator=g, dtype=torch.uint8) << 7
    scales = torch.rand(TOKENS, SCALE_BLOCKS, generator=g) + 0.5
    return dict(topk_idx=topk_idx, weights=weights, x=x, x_other=x_other, x_rand=x_rand, bias=bias, fp8=fp8,
                scales=scales)


class Job:
    def __init__(self, rank, world, seed):
        self.rank, self.world, self.seed = rank, world, seed
        self.experts = EXPERTS_PER_RANK * world
        self.all = [inputs_of(seed, r, self.experts) for r in range(world)]
        self.mine = self.all[rank]
        self.local_size = int(os.environ["LOCAL_WORLD_SIZE"])
        self.buffer = deep_ep.Buffer(dist.group.WORLD, int(1e8), int(1e8), **buffer_options())
        # Which (source rank, token) rows this rank receives, in DeepEP's order.
        self.sources = []
        for src in range(world):
            for t in range(TOKENS):
                if self.in_rank(src)[t, rank]:
                    self.sources.append((src, t))

    def dev(self, t):
        return t.to(DEVICE)

    def rank_of(self, expert):
        return expert // EXPERTS_PER_RANK

    def in_rank(self, src):
        topk = self.all[src]["topk_idx"]
        table = torch.zeros(TOKENS, self.world, dtype=torch.bool)
        for t in range(TOKENS):
            for e in topk[t].tolist():
                if e >= 0:
                    table[t, self.rank_of(e)] = True
        return table

    def layout(self):
        return self.buffer.get_dispatch_layout(self.dev(self.mine["topk_idx"]), self.experts)

    def dispatch_args(self, x, **more):
        per_rank, per_node, per_expert, in_rank, _ = self.layout()
        args = dict(x=x, num_tokens_per_rank=per_rank, num_tokens_per_rdma_rank=per_node, is_token_in_rank=in_rank,
                    num_tokens_per_expert=per_expert, topk_idx=self.dev(self.mine["topk_idx"]),
                    topk_weights=self.dev(self.mine["weights"]))
        args.update(more)
        return args

    # ---- the reference ----

    def expected_rows(self, key):
        if not self.sources:
            return self.all[0][key][:0]
        return torch.stack([self.all[src][key][t] for src, t in self.sources])

    def expected_topk(self):
        lo = self.rank * EXPERTS_PER_RANK
        idx = torch.full((len(self.sources), TOPK), -1, dtype=torch.int64)
        weights = torch.zeros(len(self.sources), TOPK)
        for m, (src, t) in enumerate(self.sources):
            for k, e in enumerate(self.all[src]["topk_idx"][t].tolist()):
                if e >= 0 and self.rank_of(e) == self.rank:
                    idx[m, k] = e - lo
                    weights[m, k] = self.all[src]["weights"][t, k]
        return idx, weights

    def expected_counts(self, alignment=1):
        idx, _ = self.expected_topk()
        counts = [int((idx == e).sum()) for e in range(EXPERTS_PER_RANK)]
        return [-(-c // alignment) * alignment for c in counts]

    def weighted(self, rows, recv_topk_weights):
        """An expert's output as the tests define it: the row times the sum of its local weights."""
        return rows.float() * recv_topk_weights.float().sum(dim=1, keepdim=True)

    def expected_combined(self, key, bias=None):
        topk = self.mine["topk_idx"]
        total = (self.mine["weights"] * (topk >= 0)).sum(dim=1, keepdim=True)
        out = self.mine[key] * total
        return out + bias if bias is not None else out


def same(a, b, what):
    a, b = a.cpu(), b.cpu()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if not torch.equal(a, b):
        row = (a != b).reshape(a.shape[0], -1).any(1).nonzero()[0].item()
        raise AssertionError(f"{what}: first differing row {row}: {a[row].tolist()[:8]} != {b[row].tolist()[:8]}")


def check_layout(job):
    per_rank, per_node, per_expert, in_rank, event = job.layout()
    ref_in_rank = job.in_rank(job.rank)
    same(in_rank, ref_in_rank, "is_token_in_rank")
    same(per_rank, ref_in_rank.sum(dim=0).to(torch.int32), "num_tokens_per_rank")
    topk = job.mine["topk_idx"]
    same(per_expert, torch.bincount(topk[topk >= 0], minlength=job.experts).to(torch.int32), "num_tokens_per_expert")
    nodes = job.world // job.local_size
    if nodes == 1:
        assert per_node is None, "num_tokens_per_rdma_rank must be None on one node"
    else:
        ref_node = ref_in_rank.reshape(TOKENS, nodes, job.local_size).any(dim=2).sum(dim=0).to(torch.int32)
        same(per_node, ref_node, "num_tokens_per_rdma_rank")
    assert event.event is None
    assert per_rank.dtype == torch.int32 and in_rank.dtype == torch.bool
    _, _, _, _, event = job.buffer.get_dispatch_layout(job.dev(topk), job.experts, async_finish=True)
    event.current_stream_wait()


def x_of(job, kind, key="x"):
    if kind == "fp8":
        data = job.mine["fp8"] if key == "x" else job.mine["fp8"].flip(0).contiguous()
        if getattr(torch, "float8_e4m3fn", None) is not None:
            data = data.view(torch.float8_e4m3fn)
        return job.dev(data), job.dev(job.mine["scales"])
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    return job.dev(job.mine[key].to(dtype))


def check_received(job, kind, recv_x, key="x"):
    if kind == "fp8":
        data, scales = recv_x
        assert isinstance(recv_x, tuple)
        rows = data.view(torch.uint8) if data.dtype != torch.uint8 else data
        if key == "x":
            expected = job.expected_rows("fp8")
        else:
            expected = torch.stack([job.all[s]["fp8"].flip(0)[t] for s, t in job.sources]) if job.sources \
                else job.mine["fp8"][:0]
        same(rows, expected, "fp8 rows")
        same(scales, job.expected_rows("scales"), "fp8 scales")
    else:
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        assert recv_x.dtype == dtype, f"recv_x dtype {recv_x.dtype}"
        same(recv_x, job.expected_rows(key).to(dtype), f"{kind} rows")


def check_dispatch_kinds(job):
    """bf16 / fp32 / fp8 x sync / async x with and without previous_event: rows, expert ids and weights,
    per-expert counts, worst-case sizing, cached dispatch, combine (weighted sum, combined weights, bias)."""
    ref_idx, ref_weights = job.expected_topk()
    for kind in ("bf16", "fp32", "fp8"):
        for async_mode, previous in ((False, False), (True, False), (True, True), (False, True)):
            what = f"{kind} async={async_mode} previous={previous}"
            more = dict(async_finish=async_mode)
            if previous:
                more["previous_event"] = job.buffer.capture()
            recv_x, recv_idx, recv_w, counts, handle, event = job.buffer.dispatch(**job.dispatch_args(x_of(job, kind),
                                                                                                    **more))
            if async_mode:
                assert event.event is not None, what
                event.current_stream_wait()
            else:
                assert event.event is None, what
            check_received(job, kind, recv_x)
            same(recv_idx, ref_idx, f"{what}: recv_topk_idx")
            same(recv_w, ref_weights, f"{what}: recv_topk_weights")
            assert list(counts) == job.expected_counts(), f"{what}: counts {list(counts)}"
            assert counts == job.expected_counts(), f"{what}: counts compare as a list"
            assert handle.num_recv_tokens == len(job.sources)
            if DEVICE == "cpu":
                src_rank = torch.tensor([s for s, _ in job.sources], dtype=torch.int32)
                same(handle.recv_src_rank, src_rank, "handle.recv_src_rank")
                same(handle.recv_src_idx, torch.tensor([t for _, t in job.sources], dtype=torch.int32),
                     "handle.recv_src_idx")
                prefix = torch.bincount(src_rank.long(), minlength=job.world).cumsum(0).to(torch.int32)
                same(handle.recv_rank_prefix_sum, prefix, "handle.recv_rank_prefix_sum")

            if not async_mode and not previous:  # worst-case sizing, once per kind
                worst = TOKENS * job.world
                w_x, w_idx, w_w, w_counts, _, _ = job.buffer.dispatch(
                    **job.dispatch_args(x_of(job, kind), num_worst_tokens=worst))
                assert w_counts == [], f"{what}: worst-case counts {w_counts}"
                w_rows = w_x[0] if kind == "fp8" else w_x
                assert w_rows.shape[0] == worst and w_idx.shape[0] == worst and w_w.shape[0] == worst
                n = len(job.sources)
                check_received(job, kind, (w_x[0][:n], w_x[1][:n]) if kind == "fp8" else w_x[:n])
                same(w_idx[:n], ref_idx, "worst-case recv_topk_idx")
                assert bool((w_idx[n:] == -1).all()), "worst-case rows past the received have ids -1"
                assert not bool(w_rows[n:].view(torch.uint8).any()), "worst-case rows past the received are 0"

            # A cached dispatch of other rows along the same routing.
            cached_more = dict(async_finish=async_mode)
            if previous:
                cached_more["previous_event"] = job.buffer.capture()
            got = job.buffer.dispatch(x_of(job, kind, "x_other"), handle=handle, **cached_more)
            assert got[1:5] == (None, None, None, None), f"{what}: cached dispatch returns Nones"
            if async_mode:
                got[5].current_stream_wait()
            check_received(job, kind, got[0], "x_other")

            if kind == "fp8":
                continue
            dtype = recv_x.dtype
            y = job.weighted(recv_x, recv_w).to(dtype)
            combine_more = dict(async_finish=async_mode)
            if previous:
                combine_more["previous_event"] = job.buffer.capture()
            combined, combined_w, event = job.buffer.combine(y, handle, topk_weights=recv_w, **combine_more)
            if async_mode:
                event.current_stream_wait()
            same(combined, job.expected_combined("x").to(dtype), f"{what}: combined_x")
            topk = job.mine["topk_idx"]
            same(combined_w, job.mine["weights"] * (topk >= 0), f"{what}: combined_topk_weights")
            combined, none, _ = job.buffer.combine(y, handle, bias=job.dev(job.mine["bias"].to(dtype)))
            assert none is None
            same(combined, job.expected_combined("x", job.mine["bias"]).to(dtype), f"{what}: combined_x + bias")


def check_random_rows(job):
    """Random fp32 rows: combine of the dispatched rows is their count-weighted sum, within rounding."""
    recv_x, _, recv_w, _, handle, _ = job.buffer.dispatch(**job.dispatch_args(job.dev(job.mine["x_rand"])))
    same(recv_x, job.expected_rows("x_rand"), "random rows")
    combined, _, _ = job.buffer.combine(recv_x, handle)
    times = job.in_rank(job.rank).sum(dim=1, keepdim=True).float()
    assert torch.allclose(combined.cpu(), job.mine["x_rand"] * times, rtol=1e-6, atol=1e-6)


def check_alignment_and_config(job):
    _, _, _, counts, _, _ = job.buffer.dispatch(**job.dispatch_args(x_of(job, "bf16"), expert_alignment=4))
    assert list(counts) == job.expected_counts(4), f"aligned counts {list(counts)}"
    config = deep_ep.Config(8, 4, 16, 4, 32)
    recv_x, recv_idx, _, counts, handle, _ = job.buffer.dispatch(**job.dispatch_args(x_of(job, "bf16"), config=config))
    check_received(job, "bf16", recv_x)
    combined, _, _ = job.buffer.combine(job.weighted(recv_x, job.expected_topk()[1]).to(torch.bfloat16), handle,
                                        config=config)
    same(combined, job.expected_combined("x").to(torch.bfloat16), "combine with a per-call config")
    for get in (deep_ep.Buffer.get_dispatch_config, deep_ep.Buffer.get_combine_config):
        recv_x, *_ = job.buffer.dispatch(**job.dispatch_args(x_of(job, "fp32"), config=get(job.world)))
        check_received(job, "fp32", recv_x)


def check_async_overlap(job):
    """async_finish returns before the peers have even issued: a cached dispatch and a combine on rank 0
    return at once while the last rank is still asleep, and their events complete after it joins."""
    recv_x, _, recv_w, _, handle, _ = job.buffer.dispatch(**job.dispatch_args(x_of(job, "fp32")))
    last = job.world - 1
    dist.barrier()
    for step in ("cached dispatch", "combine"):
        if job.rank == last:
            time.sleep(1.0)
        start = time.monotonic()
        if step == "cached dispatch":
            out = job.buffer.dispatch(x_of(job, "fp32", "x_other"), handle=handle, async_finish=True)
            event = out[5]
        else:
            out = job.buffer.combine(job.weighted(recv_x, recv_w), handle, async_finish=True)
            event = out[2]
        returned = time.monotonic() - start
        if job.rank == 0:
            assert returned < 0.5, f"{step}: async_finish returned after {returned:.3f} s"
            assert not event.event.query(), f"{step}: finished before the last rank issued it"
        with event:
            pass  # leaving the block waits (the host, for a CPU Buffer; the current stream, for a CUDA one)
        if DEVICE == "cuda":
            torch.cuda.current_stream().synchronize()
        assert event.event.query()
        if step == "cached dispatch":
            check_received(job, "fp32", out[0], "x_other")
        else:
            same(out[0], job.expected_combined("x"), "async combine")
        dist.barrier()
    # Operations chained by previous_event = the previous operation's own event, waited for at the end only.
    first = job.buffer.dispatch(**job.dispatch_args(x_of(job, "bf16"), async_finish=True))
    second = job.buffer.dispatch(x_of(job, "bf16", "x_other"), handle=first[4], previous_event=first[5],
                                 async_finish=True)
    second[5].current_stream_wait()
    first[5].current_stream_wait()
    check_received(job, "bf16", first[0])
    check_received(job, "bf16", second[0], "x_other")
    third = job.buffer.combine(job.weighted(first[0], first[2]).to(torch.bfloat16), first[4],
                               previous_event=second[5], async_finish=True)
    third[2].current_stream_wait()
    same(third[0], job.expected_combined("x").to(torch.bfloat16), "combine after previous_event")


def check_numpy(job):
    """numpy arrays in, numpy arrays out (fp32; fp8 as uint8 bytes)."""
    per_rank, per_node, per_expert, in_rank, _ = job.buffer.get_dispatch_layout(job.mine["topk_idx"].numpy(),
                                                                                job.experts)
    assert isinstance(in_rank, numpy.ndarray) and in_rank.dtype == numpy.bool_
    args = dict(num_tokens_per_rank=per_rank, num_tokens_per_rdma_rank=per_node, is_token_in_rank=in_rank,
                num_tokens_per_expert=per_expert, topk_idx=job.mine["topk_idx"].numpy(),
                topk_weights=job.mine["weights"].numpy())
    recv_x, recv_idx, recv_w, counts, handle, _ = job.buffer.dispatch(job.mine["x"].numpy(), **args)
    assert isinstance(recv_x, numpy.ndarray)
    same(torch.from_numpy(recv_x), job.expected_rows("x"), "numpy rows")
    combined, _, _ = job.buffer.combine(job.weighted(torch.from_numpy(recv_x), torch.from_numpy(recv_w)).numpy(),
                                        handle)
    same(torch.from_numpy(combined), job.expected_combined("x"), "numpy combine")
    (data, scales), *_ = job.buffer.dispatch((job.mine["fp8"].numpy(), job.mine["scales"].numpy()), **args)
    assert data.dtype == numpy.uint8
    same(torch.from_numpy(data), job.expected_rows("fp8"), "numpy fp8 rows")


def check_bad_inputs(job):
    """Bad input is refused by name before any communication; the Buffer stays usable."""
    b = job.buffer
    good = job.dispatch_args(x_of(job, "bf16"))
    expect_error(ValueError, ["x must be bfloat16 or float32", "float16"],
                 lambda: b.dispatch(**dict(good, x=good["x"].to(torch.float16))))
    bad_topk = good["topk_idx"].clone()
    bad_topk[5, 1] = job.experts + 3
    expect_error(ValueError, ["topk_idx[5][1]", "out of range"], lambda: b.get_dispatch_layout(bad_topk, job.experts))
    expect_error(ValueError, ["topk_idx[5][1]", "out of range"], lambda: b.dispatch(**dict(good, topk_idx=bad_topk)))
    expect_error(ValueError, ["topk_weights", "columns"],
                 lambda: b.dispatch(**dict(good, topk_weights=good["topk_weights"][:, :2].contiguous())))
    flipped = good["is_token_in_rank"].clone()
    flipped[7, 0] = ~flipped[7, 0]
    expect_error(ValueError, ["is_token_in_rank[7]"], lambda: b.dispatch(**dict(good, is_token_in_rank=flipped)))
    changed = job.dispatch_args(x_of(job, "bf16"))  # get_dispatch_layout's own tensors, then changed in place
    changed["is_token_in_rank"][3, 0] = ~changed["is_token_in_rank"][3, 0]
    expect_error(ValueError, ["is_token_in_rank[3]"], lambda: b.dispatch(**changed))
    expect_error(ValueError, ["num_tokens_per_expert"],
                 lambda: b.dispatch(**dict(good, num_tokens_per_expert=good["num_tokens_per_expert"] + 1)))
    expect_error(ValueError, ["is_token_in_rank is required"], lambda: b.dispatch(**dict(good, is_token_in_rank=None)))
    expect_error(NotImplementedError, ["routes by topk_idx"], lambda: b.dispatch(**dict(good, topk_idx=None)))
    wide = job.dev(torch.zeros(TOKENS, 8192, dtype=torch.bfloat16))
    expect_error(ValueError, ["hidden size 8192", "max_hidden"], lambda: b.dispatch(**dict(good, x=wide)))
    expect_error(ValueError, ["Config.num_sms = 7"], lambda: b.dispatch(**dict(good, config=deep_ep.Config(7))))
    expect_error(ValueError, ["allocate_on_comm_stream"],
                 lambda: b.dispatch(**dict(good, allocate_on_comm_stream=True)))
    expect_error(ValueError, ["not contiguous"], lambda: b.dispatch(**dict(good, x=good["x"].t().contiguous().t())))
    expect_error(ValueError, ["expert_alignment"], lambda: b.dispatch(**dict(good, expert_alignment=0)))
    recv_x, _, _, _, handle, _ = b.dispatch(**good)  # still usable
    check_received(job, "bf16", recv_x)
    expect_error(ValueError, ["takes no topk_idx"],
                 lambda: b.dispatch(good["x"], handle=handle, topk_idx=good["topk_idx"]))
    expect_error(ValueError, ["x must have", "rows"], lambda: b.combine(recv_x[: max(0, len(recv_x) - 1)], handle))
    expect_error(ValueError, ["tuple", "ferry.Handle"], lambda: b.combine(recv_x, (1, 2, 3)))
    expect_error(NotImplementedError, ["one bias"],
                 lambda: b.combine(recv_x, handle, bias=(good["x"], good["x"])))
    expect_error(TypeError, ["not DeepEP's tuple"], lambda: handle[0])
    expect_error(ValueError, ["low_latency_mode=True needs num_rdma_bytes"],
                 lambda: deep_ep.Buffer(dist.group.WORLD, low_latency_mode=True))
    expect_error(ValueError, ["low_latency_dispatch needs a Buffer built with low_latency_mode=True"],
                 lambda: b.low_latency_dispatch(good["x"], good["topk_idx"], 128, job.experts))
    combined, _, _ = b.combine(recv_x, handle)  # and still usable
    assert combined.shape == (TOKENS, HIDDEN)


def main():
    rank, world, _ = join()
    seed = agreed_seed(rank)
    job = Job(rank, world, seed)
    report = Report(rank)
    report.run("layout", check_layout, job)
    report.run("dispatch, cached dispatch and combine (bf16, fp32, fp8; sync, async, previous_event)",
               check_dispatch_kinds, job)
    report.run("random fp32 rows", check_random_rows, job)
    report.run("expert_alignment and per-call Config", check_alignment_and_config, job)
    report.run("async_finish overlaps", check_async_overlap, job)
    if DEVICE == "cpu":
        report.run("numpy arrays", check_numpy, job)
    report.run("bad inputs refused by name", check_bad_inputs, job)
    job.buffer.destroy() if job.buffer.explicitly_destroy else job.buffer._close()
    report.done()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
