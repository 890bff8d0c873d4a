"""One rank of the DeepEP-style low-latency job (``import ferry as deep_ep``): every result is compared with a
reference built from all ranks' inputs (each rank regenerates the others' from the shared seed), as DeepEP's
tests/test_low_latency.py does: received rows against their source through the handle's src info and layout
range, recv_count, combine against the weighted sum. Values are small integers and quarter weights, so bf16
rows, power-of-two-scaled fp8 rows and their sums are exact; fp8 with free scales is checked within e4m3's
precision.

Started on every rank by tests/python/test_low_latency.py (with torchrun's variables, or under `ferry launch`).
With FERRY_TEST_DEVICE=cuda the Buffer is a CUDA Buffer and the inputs CUDA tensors (the reference stays on the
CPU, and every result is read back before it is compared; the statistics tensors are CUDA tensors), what the
GPU does differently (expert ids checked by the kernels, a hook that only enqueues) is checked the GPU's way,
and a dispatch and its combine are captured with torch.cuda.graph and replayed.
"""

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

import ferry as deep_ep
from worker_common import DEVICE, Report, agreed_seed, buffer_options, expect_error, join

CUDA = DEVICE == "cuda"

MAX_TOKENS, HIDDEN, TOPK, EXPERTS_PER_RANK = 16, 384, 4, 3
STATS_BASE, WAIT_BASE = 7, 1000  # where the statistics tensors start: the calls add into them
BLOCKS = HIDDEN // 128


def inputs_of(seed, rank, experts):
    """Rank `rank`'s inputs: a pure function of (seed, rank), so every rank can make every rank's."""
    g = torch.Generator().manual_seed(seed * 1013 + rank)
    tokens = MAX_TOKENS - 1 - rank % 3  # fewer than the slots, and not the same on every rank
    topk_idx = torch.rand(tokens, experts, generator=g).topk(TOPK, dim=1).indices
    topk_idx[torch.rand(tokens, TOPK, generator=g) < 0.15] = -1  # empty slots
    topk_idx[3] = -1  # a token that goes nowhere
    weights = torch.randint(1, 5, (tokens, TOPK), generator=g).float() * 0.25
    x = torch.randint(-4, 5, (tokens, HIDDEN), generator=g).to(torch.bfloat16)
    return dict(topk_idx=topk_idx, weights=weights, x=x)


def e4m3_values():
    """The value of every e4m3 byte (torch 1.13 has no float8 dtype to decode them)."""
    values = []
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent, mantissa = (byte >> 3) & 0xF, byte & 0x7
        if exponent == 0xF and mantissa == 0x7:
            values.append(float("nan"))
        elif exponent == 0:
            values.append(sign * mantissa / 8 * 2.0 ** -6)
        else:
            values.append(sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    return torch.tensor(values, dtype=torch.float32)


E4M3 = e4m3_values()


def dequantised(recv_x, use_ue8m0):
    """fp32 rows from DeepEP's (e4m3 data, column-major scales) pair."""
    data, scales = recv_x
    assert data.shape[-1] == HIDDEN
    values = E4M3[data.view(torch.uint8).long()]
    if use_ue8m0:
        # Byte j of word p (little-endian) holds block 4p + j.
        exponents = torch.stack([(scales >> (8 * j)) & 0xFF for j in range(4)], dim=-1)
        exponents = exponents.reshape(*scales.shape[:2], -1)[..., :BLOCKS]
        factors = torch.pow(2.0, exponents.float() - 127)
    else:
        factors = scales
    return values * factors.repeat_interleave(128, dim=-1)


class Job:
    def __init__(self, rank, world, seed):
        self.rank, self.world, self.seed = rank, world, seed
        self.experts = EXPERTS_PER_RANK * world
        self.all = [inputs_of(seed, r, self.experts) for r in range(world)]
        self.mine = self.all[rank]
        self.on_device = {name: t.to(DEVICE) for name, t in self.mine.items()}  # what the calls take
        self.rdma_bytes = deep_ep.Buffer.get_low_latency_rdma_size_hint(MAX_TOKENS, HIDDEN, world, self.experts)
        # On the GPU a peer that stopped is found by the kernels within ferry's timeout: shorter than the job's.
        options = dict(buffer_options(), ferry_config={"timeout_s": 20.0}) if CUDA else {}
        self.buffer = deep_ep.Buffer(dist.group.WORLD, num_rdma_bytes=self.rdma_bytes, low_latency_mode=True,
                                     num_qps_per_rank=EXPERTS_PER_RANK, explicitly_destroy=True, **options)
        nodes = world // int(os.environ["LOCAL_WORLD_SIZE"])
        assert self.buffer.runtime.num_nodes == nodes, f"the Buffer sees {self.buffer.runtime.num_nodes} nodes"

    def sources_of(self, local, masked=()):
        """(source rank, [tokens]) whose rows local expert `local` receives, in rank order."""
        expert = self.rank * EXPERTS_PER_RANK + local
        return [(src, (self.all[src]["topk_idx"] == expert).any(dim=1).nonzero().flatten().tolist())
                for src in range(self.world) if src not in masked]

    def dispatch(self, **flags):
        mine = self.on_device
        return self.buffer.low_latency_dispatch(mine["x"], mine["topk_idx"], MAX_TOKENS, self.experts, **flags)

    def combine(self, x, handle, **flags):
        mine = self.on_device
        return self.buffer.low_latency_combine(x, mine["topk_idx"], mine["weights"], handle, **flags)

    def expected_combined(self, masked=()):
        topk, weights = self.mine["topk_idx"], self.mine["weights"]
        live = (topk >= 0) & ~torch.isin(topk // EXPERTS_PER_RANK, torch.tensor(list(masked), dtype=torch.int64))
        return self.mine["x"].float() * (weights * live).sum(dim=1, keepdim=True)


def check_received(job, recv_x, recv_count, handle, use_fp8=False, round_scale=False, use_ue8m0=False,
                   masked=(), stats=None):
    """DeepEP's checks: shapes and layout, counts, each source's block through layout_range, every row equal
    to its source token (by src info), rows past the count marked -1."""
    rows = job.world * MAX_TOKENS
    src_info, layout_range, max_tokens, hidden, num_experts = handle
    assert src_info.device.type == DEVICE and recv_count.device.type == DEVICE, "results on the wrong device"
    scale_strides = recv_x[1].stride() if use_fp8 else None  # as ferry laid them out, before any copy
    src_info, layout_range, recv_count = src_info.cpu(), layout_range.cpu(), recv_count.cpu()
    # fp8 read back as its bytes (a float8 tensor's copy needs torch >= 2.1)
    recv_x = (recv_x[0].view(torch.uint8).cpu(), recv_x[1].cpu()) if use_fp8 else recv_x.cpu()
    assert (max_tokens, hidden, num_experts) == (MAX_TOKENS, HIDDEN, job.experts), handle[2:]
    assert src_info.shape == (EXPERTS_PER_RANK, rows) and src_info.dtype == torch.int32
    assert layout_range.shape == (EXPERTS_PER_RANK, job.world) and layout_range.dtype == torch.int64
    assert recv_count.shape == (EXPERTS_PER_RANK,) and recv_count.dtype == torch.int32
    if use_fp8:
        data, scales = recv_x
        assert data.shape == (EXPERTS_PER_RANK, rows, HIDDEN) and data.element_size() == 1
        columns = -(-BLOCKS // 4) if use_ue8m0 else BLOCKS
        assert scales.shape == (EXPERTS_PER_RANK, rows, columns), scales.shape
        assert scales.dtype == (torch.int32 if use_ue8m0 else torch.float32)
        assert scale_strides == (columns * rows, 1, rows), f"scales are not column-major: {scale_strides}"
        values = dequantised(recv_x, use_ue8m0)
    else:
        assert recv_x.shape == (EXPERTS_PER_RANK, rows, HIDDEN) and recv_x.dtype == torch.bfloat16
        values = recv_x.float()
    for local in range(EXPERTS_PER_RANK):
        count = int(recv_count[local])
        sources = job.sources_of(local, masked)
        assert count == sum(len(tokens) for _, tokens in sources), f"expert {local}: recv_count {count}"
        assert int((layout_range[local] & 0xFFFFFFFF).sum()) == count
        if stats is not None:
            assert int(stats[local]) == STATS_BASE + count, \
                f"cumulative stats {stats.tolist()} != {STATS_BASE} + recv_count"
        assert bool((src_info[local, count:] == -1).all()), "rows past recv_count must have src info -1"
        for src, tokens in sources:
            begin, n = int(layout_range[local, src]) >> 32, int(layout_range[local, src]) & 0xFFFFFFFF
            assert n == len(tokens), f"expert {local} from rank {src}: {n} rows, expected {len(tokens)}"
            got_tokens = src_info[local, begin:begin + n].tolist()
            assert got_tokens == tokens, f"expert {local} from rank {src}: tokens {got_tokens} != {tokens}"
            expected = job.all[src]["x"][tokens].float()
            got = values[local, begin:begin + n]
            if use_fp8 and not round_scale:
                scale = expected.abs().reshape(n, BLOCKS, 128).amax(dim=2).repeat_interleave(128, dim=1) / 448
                assert bool(((got - expected).abs() <= expected.abs() / 16 + scale / 2 ** 9 + 1e-6).all()), \
                    f"expert {local} from rank {src}: fp8 rows beyond e4m3's precision"
            else:
                assert torch.equal(got, expected), f"expert {local} from rank {src}: rows differ from the source"


def expert_outputs(recv_x, use_fp8, use_ue8m0):
    """DeepEP's simulated GEMM: the experts return what they received, in bf16 (on the Buffer's device)."""
    if not use_fp8:
        return recv_x.clone()
    data, scales = recv_x
    return dequantised((data.view(torch.uint8).cpu(), scales.cpu()), use_ue8m0).to(torch.bfloat16).to(DEVICE)


def check_combined(job, combined, exact, masked=()):
    expected = job.expected_combined(masked)
    assert combined.shape == (len(expected), HIDDEN) and combined.dtype == torch.bfloat16
    assert combined.device.type == DEVICE, f"combined_x is on {combined.device}"
    combined = combined.cpu()
    if exact:
        assert torch.equal(combined.float(), expected), "combined_x is not the weighted sum"
    else:
        assert bool(((combined.float() - expected).abs() <= expected.abs() * (1 / 16 + 1 / 128) + 1e-3).all()), \
            "combined_x is not the weighted sum within fp8's precision"


def finish(job, event, hook, mode):
    if mode == "hook":
        assert event.event is None
        hook()
    elif mode == "async":
        assert hook is None
        event.current_stream_wait()
    else:
        assert hook is None and event.event is None


def clean_then_a_round(job):
    """A collective clean, then a plain bf16 dispatch and combine that must match the reference again."""
    job.buffer.clean_low_latency_buffer(MAX_TOKENS, HIDDEN, job.experts)
    recv_x, recv_count, handle, _, _ = job.dispatch(use_fp8=False)
    check_received(job, recv_x, recv_count, handle)
    combined, _, _ = job.combine(recv_x, handle)
    check_combined(job, combined, exact=True)


def check_formats_and_modes(job):
    """bf16, fp8, fp8 with round_scale, and with UE8M0 scales; each plain, async_finish and hook; combine in
    the same mode, with out=, zero copy (x itself not read) and the statistics tensors."""
    formats = [dict(use_fp8=False), dict(use_fp8=True), dict(use_fp8=True, round_scale=True),
               dict(use_fp8=True, round_scale=True, use_ue8m0=True)]
    if CUDA:
        check_refused_on_the_gpu(job)
    step = 0
    for flags in formats:
        # On the GPU the fp8 rounds run on a stream of their own (the calls follow torch's current stream).
        with on_side_stream(CUDA and flags == dict(use_fp8=True)):
            step = check_one_format(job, flags, step)


class on_side_stream:
    """Makes a new CUDA stream current inside the block (when `enabled`), waiting for the default stream."""

    def __init__(self, enabled):
        self.stream = torch.cuda.Stream() if enabled else None

    def __enter__(self):
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream())
            self.context = torch.cuda.stream(self.stream)
            self.context.__enter__()

    def __exit__(self, *error):
        if self.stream is not None:
            self.context.__exit__(*error)
            torch.cuda.current_stream().wait_stream(self.stream)


def check_one_format(job, flags, step):
    """check_formats_and_modes' rounds of one format: plain, async and hook; returns the step count."""
    for mode in ("plain", "async", "hook"):
        step += 1
        # The statistics start from non-zero values: each call adds into them.
        stats = torch.full((EXPERTS_PER_RANK,), STATS_BASE, dtype=torch.int32, device=DEVICE)
        waits = torch.full((job.world,), WAIT_BASE, dtype=torch.int64, device=DEVICE)
        recv_x, recv_count, handle, event, hook = job.dispatch(
            cumulative_local_expert_recv_stats=stats, dispatch_wait_recv_cost_stats=waits,
            async_finish=mode == "async", return_recv_hook=mode == "hook", **flags)
        finish(job, event, hook, mode)
        check_received(job, recv_x, recv_count, handle, stats=stats, **flags)
        assert bool((waits >= WAIT_BASE).all()), f"a dispatch wait statistic went below its start: {waits}"

        y = expert_outputs(recv_x, flags["use_fp8"], flags.get("use_ue8m0", False))
        zero_copy = step % 2 == 0
        if zero_copy:
            staging = job.buffer.get_next_low_latency_combine_buffer(handle)
            assert staging.shape == y.shape and staging.dtype == torch.bfloat16
            staging[:, :, :] = y
            del staging
            x = torch.zeros_like(y)  # DeepEP's zero copy sends the staging; x's values are not read
        else:
            x = y
        out = None
        if step % 3 == 0:
            out = torch.empty(len(job.mine["x"]), HIDDEN, dtype=torch.bfloat16, device=DEVICE)
        combine_waits = torch.full((job.world,), WAIT_BASE, dtype=torch.int64, device=DEVICE)
        combined, event, hook = job.combine(x, handle, zero_copy=zero_copy, async_finish=mode == "async",
                                            return_recv_hook=mode == "hook", out=out,
                                            combine_wait_recv_cost_stats=combine_waits)
        finish(job, event, hook, mode)
        if out is not None:
            assert combined is out
        exact = not flags["use_fp8"] or flags.get("round_scale", False)
        check_combined(job, combined, exact)
        assert bool((combine_waits >= WAIT_BASE).all()), \
            f"a combine wait statistic went below its start: {combine_waits}"
    return step


def check_refused_on_the_gpu(job):
    """On a CUDA Buffer a CPU tensor (an input or a statistics tensor) is refused naming the argument, before
    anything is sent."""
    ll = job.buffer.low_latency_dispatch
    x, topk = job.on_device["x"], job.on_device["topk_idx"]
    expect_error(ValueError, ["cumulative_local_expert_recv_stats", "cpu"],
                 lambda: ll(x, topk, MAX_TOKENS, job.experts,
                            cumulative_local_expert_recv_stats=torch.zeros(EXPERTS_PER_RANK, dtype=torch.int32)))
    expect_error(ValueError, ["x is", "cpu", "runs on the GPU"],
                 lambda: ll(job.mine["x"], topk, MAX_TOKENS, job.experts))
    recv_x, _, handle, _, _ = job.dispatch(use_fp8=False)
    expect_error(ValueError, ["combine_wait_recv_cost_stats", "cpu"],
                 lambda: job.combine(recv_x, handle,
                                     combine_wait_recv_cost_stats=torch.zeros(job.world, dtype=torch.int64)))
    combined, _, _ = job.combine(recv_x, handle)  # still usable
    check_combined(job, combined, exact=True)


def check_hooks(job):
    """The hook takes the receives: nothing is there before it; two results held at once, a third operation
    refused by name; a hook runs once; a hook waiting for a late peer releases the GIL. (On the GPU a hook
    only enqueues the receive half: the counts before it and the wait are the host's matter alone.)"""
    first = job.dispatch(use_fp8=False, return_recv_hook=True)
    second = job.dispatch(use_fp8=True, round_scale=True, return_recv_hook=True)
    if not CUDA:
        assert int(first[1].sum()) == 0 and int(second[1].sum()) == 0, "rows were counted before the hooks ran"
    expect_error(ValueError, ["two low-latency results are held", "receive hook"], lambda: job.dispatch())
    second[4]()
    first[4]()
    expect_error(ValueError, ["already been called"], first[4])
    check_received(job, first[0], first[1], first[2])
    check_received(job, second[0], second[1], second[2], use_fp8=True, round_scale=True)
    back = job.combine(expert_outputs(second[0], True, False), second[2], return_recv_hook=True)
    back[2]()
    check_combined(job, back[0], exact=True)
    if CUDA:
        return

    # The last rank issues its dispatch 1 s late; rank 0's hook waits for it with the GIL released, so a Python
    # thread that counts for 0.2 s meanwhile runs through its 0.2 s (a hook holding the GIL would stop it after
    # one switch interval, 5 ms).
    dist.barrier()
    if job.rank == job.world - 1:
        time.sleep(1.0)
    recv_x, recv_count, handle, _, hook = job.dispatch(use_fp8=False, return_recv_hook=True)
    window = [0.0, 0.0]  # when the counter started, and its last moment inside its 0.2 s

    def count():
        window[0] = now = time.monotonic()
        while now < window[0] + 0.2:
            window[1] = now
            now = time.monotonic()

    counter = threading.Thread(target=count)
    start = time.monotonic()
    counter.start()
    hook()
    waited = time.monotonic() - start
    counter.join()
    if job.rank == 0:
        assert waited > 0.3, f"the hook returned after {waited:.2f} s, before the late rank sent"
        ran = window[1] - window[0]
        assert ran > 0.1, f"a Python thread ran only {ran:.3f} s of its 0.2 s while the hook waited {waited:.2f} s"
    check_received(job, recv_x, recv_count, handle)
    combined, _, _ = job.combine(recv_x, handle)
    check_combined(job, combined, exact=True)


def check_masks(job):
    """Every rank but the last masks the last, which sits out one round: its rows and sums are left out and
    the mask says so; after the mask is cleaned and the buffer cleaned, everyone takes part again."""
    status = torch.full((job.world,), 7, dtype=torch.int32, device=DEVICE)
    job.buffer.low_latency_query_mask_buffer(status)
    assert status.tolist() == [0] * job.world
    victim = job.world - 1
    if job.rank != victim:
        job.buffer.low_latency_update_mask_buffer(victim, True)
        job.buffer.low_latency_query_mask_buffer(status)
        assert status.tolist() == [int(r == victim) for r in range(job.world)], status.tolist()
        recv_x, recv_count, handle, _, _ = job.dispatch(use_fp8=False)
        check_received(job, recv_x, recv_count, handle, masked=(victim,))
        combined, _, _ = job.combine(recv_x, handle)
        check_combined(job, combined, exact=True, masked=(victim,))
    else:
        expect_error(ValueError, ["cannot mask itself"],
                     lambda: job.buffer.low_latency_update_mask_buffer(victim, True))
    expect_error(ValueError, ["rank_to_mask", "not in [0"],
                 lambda: job.buffer.low_latency_update_mask_buffer(job.world, True))
    expect_error(ValueError, ["mask_status must be", "int32"],
                 lambda: job.buffer.low_latency_query_mask_buffer(torch.zeros(job.world, dtype=torch.int64,
                                                                              device=DEVICE)))
    job.buffer.low_latency_clean_mask_buffer()
    job.buffer.low_latency_query_mask_buffer(status)
    assert status.tolist() == [0] * job.world
    clean_then_a_round(job)


def check_bad_inputs(job):
    """Bad input is refused by name before anything is sent; the buffer stays usable. (On the GPU the kernels
    check the expert ids: check_bad_expert_on_the_gpu.)"""
    b, mine = job.buffer, job.on_device
    x, topk, weights = mine["x"], mine["topk_idx"], mine["weights"]
    ll = b.low_latency_dispatch
    expect_error(ValueError, ["x must be bfloat16", "float32"], lambda: ll(x.float(), topk, MAX_TOKENS, job.experts))
    if not CUDA:
        bad = topk.clone()
        bad[5, 1] = job.experts + 2
        expect_error(ValueError, ["topk_idx[5][1]", "neither -1 nor an expert"],
                     lambda: ll(x, bad, MAX_TOKENS, job.experts))
        twice = topk.clone()
        twice[6, :2] = 0
        expect_error(ValueError, ["topk_idx[6]", "twice"], lambda: ll(x, twice, MAX_TOKENS, job.experts))
    expect_error(ValueError, ["more than num_max_dispatch_tokens_per_rank"],
                 lambda: ll(x, topk, len(x) - 1, job.experts))
    expect_error(ValueError, ["num_experts must be a multiple"], lambda: ll(x, topk, MAX_TOKENS, job.experts + 1))
    expect_error(ValueError, ["use_ue8m0 needs round_scale"],
                 lambda: ll(x, topk, MAX_TOKENS, job.experts, use_ue8m0=True))
    expect_error(ValueError, ["exclude each other"],
                 lambda: ll(x, topk, MAX_TOKENS, job.experts, async_finish=True, return_recv_hook=True))
    expect_error(ValueError, ["cumulative_local_expert_recv_stats must be", "int32"],
                 lambda: ll(x, topk, MAX_TOKENS, job.experts,
                            cumulative_local_expert_recv_stats=torch.zeros(EXPERTS_PER_RANK, dtype=torch.int64,
                                                                           device=DEVICE)))
    expect_error(ValueError, ["dispatch_wait_recv_cost_stats", "DeepEP's docstring"],
                 lambda: ll(x, topk, MAX_TOKENS, job.experts,
                            dispatch_wait_recv_cost_stats=torch.zeros(job.world, job.world, dtype=torch.int64,
                                                                      device=DEVICE)))
    expect_error(ValueError, ["differs from the buffer's", "clean_low_latency_buffer"],
                 lambda: ll(x, topk, MAX_TOKENS - 1, job.experts))
    narrow = torch.zeros(len(x), 136, dtype=torch.bfloat16, device=DEVICE)
    expect_error(ValueError, ["not a multiple of 128"], lambda: ll(narrow, topk, MAX_TOKENS, job.experts))

    recv_x, _, handle, _, _ = b.low_latency_dispatch(x, topk, MAX_TOKENS, job.experts, use_fp8=False)
    lc = b.low_latency_combine
    expect_error(NotImplementedError, ["use_logfmt", "not implemented"],
                 lambda: lc(recv_x, topk, weights, handle, use_logfmt=True))
    expect_error(ValueError, ["plain tuple"], lambda: lc(recv_x, topk, weights, tuple(handle)))
    expect_error(ValueError, ["x must be", "bfloat16"], lambda: lc(recv_x[:, 1:].contiguous(), topk, weights, handle))
    changed = topk.clone()
    changed[0, 0] = (int(changed[0, 0]) + 1) % job.experts if int(changed[0, 0]) >= 0 else 0
    if not CUDA and not bool((changed[0, 1:] == changed[0, 0]).any()):  # the GPU's combine uses the dispatch's
        expect_error(ValueError, ["topk_idx[0][0]", "the handle's dispatch sent it to"],
                     lambda: lc(recv_x, changed, weights, handle))
    expect_error(ValueError, ["out must be", "bfloat16"],
                 lambda: lc(recv_x, topk, weights, handle, out=torch.empty(len(x), HIDDEN, device=DEVICE)))
    expect_error(ValueError, ["zero_copy=True", "get_next_low_latency_combine_buffer"],
                 lambda: lc(recv_x, topk, weights, handle, zero_copy=True))
    expect_error(ValueError, ["handle must be the handle"], lambda: b.get_next_low_latency_combine_buffer(None))
    expect_error(ValueError, ["no normal-mode buffer", "num_nvl_bytes"],
                 lambda: b.get_dispatch_layout(topk, job.experts))
    combined, _, _ = lc(recv_x, topk, weights, handle)  # still usable
    check_combined(job, combined, exact=True)


def check_bad_expert_on_the_gpu(job):
    """On the GPU the kernels check the expert ids: rank 0's bad id leaves that row out and is raised by name
    by the call's event (synchronize) and by every call after, until a clean; the others go on; after the
    collective clean a round matches again."""
    bad = job.on_device["topk_idx"].clone()
    if job.rank == 0:
        bad[5, 1] = job.experts + 2
    _, _, _, event, _ = job.buffer.low_latency_dispatch(job.on_device["x"], bad, MAX_TOKENS, job.experts,
                                                        use_fp8=False, async_finish=True)
    if job.rank == 0:
        expect_error(ValueError, ["names expert", str(job.experts + 2)], event.event.synchronize)
        expect_error(ValueError, ["names expert", str(job.experts + 2)], lambda: job.dispatch(use_fp8=False))
        expect_error(ValueError, ["names expert"], lambda: job.dispatch(use_fp8=False))
    else:
        event.event.synchronize()
    dist.barrier()
    clean_then_a_round(job)


def check_graph_on_the_gpu(job):
    """A dispatch and its combine captured with torch.cuda.graph (global capture mode, torch's default) and
    replayed twice, the results zeroed before each replay: each replay writes them again, equal to the
    reference. Calls that would synchronise ferry's stream are refused while the capture is open."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        recv_x, recv_count, handle, _, _ = job.dispatch(use_fp8=False)
        combined, _, _ = job.combine(recv_x, handle)
        refused = None
        try:
            job.buffer.low_latency_update_mask_buffer((job.rank + 1) % job.world, False)
        except ValueError as error:
            refused = str(error)
    assert refused is not None and "capture" in refused, f"a mask call in a capture was refused with: {refused}"
    for replay in range(2):
        recv_x.zero_()
        recv_count.zero_()
        combined.zero_()
        graph.replay()
        torch.cuda.current_stream().synchronize()
        check_received(job, recv_x, recv_count, handle)
        check_combined(job, combined, exact=True)
        dist.barrier()
    # Zero copy after a capture waits for a clean (a replay numbers operations on the GPU alone).
    recv_x, _, handle, _, _ = job.dispatch(use_fp8=False)
    expect_error(ValueError, ["zero copy after", "clean_low_latency_buffer"],
                 lambda: job.buffer.get_next_low_latency_combine_buffer(handle))
    job.combine(recv_x, handle)
    job.buffer.clean_low_latency_buffer(MAX_TOKENS, HIDDEN, job.experts)


def check_normal_mode_beside(job):
    """num_nvl_bytes > 0 with low_latency_mode builds the normal-mode buffer too (as in DeepEP): both work."""
    b = deep_ep.Buffer(dist.group.WORLD, int(1e8), job.rdma_bytes, low_latency_mode=True, num_qps_per_rank=3,
                       **buffer_options())
    topk, weights = job.on_device["topk_idx"], job.on_device["weights"]
    per_rank, per_node, per_expert, in_rank, _ = b.get_dispatch_layout(topk, job.experts)
    recv_x, _, recv_w, _, handle, _ = b.dispatch(job.on_device["x"], topk_idx=topk, topk_weights=weights,
                                                 num_tokens_per_rank=per_rank, num_tokens_per_rdma_rank=per_node,
                                                 is_token_in_rank=in_rank, num_tokens_per_expert=per_expert)
    combined, _, _ = b.combine((recv_x.float() * recv_w.sum(dim=1, keepdim=True)).to(torch.bfloat16), handle)
    check_combined(job, combined, exact=True)
    recv_x, recv_count, handle, _, _ = b.low_latency_dispatch(job.on_device["x"], topk, MAX_TOKENS, job.experts,
                                                              use_fp8=False)
    check_received(job, recv_x, recv_count, handle)
    b._close()


def check_destroy_waits_for_views(job):
    """destroy() is refused on every rank while one rank holds the zero-copy view; then it goes through."""
    recv_x, _, handle, _, _ = job.dispatch(use_fp8=False)
    view = job.buffer.get_next_low_latency_combine_buffer(handle) if job.rank == 0 else None
    expect_error(ValueError, ["rank(s) 0 still hold", "get_next_low_latency_combine_buffer"], job.buffer.destroy)
    del view
    job.buffer.destroy()
    expect_error(ValueError, ["destroyed"], lambda: job.dispatch())


def check_ctrl_c_in_a_hook(job):
    """A Ctrl-C while a hook waits for peers that never send: KeyboardInterrupt within a fraction of a second;
    that Buffer is then unusable (the others leave theirs to the end of the process, as the peer that never
    came)."""
    b = deep_ep.Buffer(dist.group.WORLD, num_rdma_bytes=job.rdma_bytes, low_latency_mode=True,
                       ferry_config={"timeout_s": 30.0})
    if job.rank == 0:
        _, _, _, _, hook = b.low_latency_dispatch(job.mine["x"], job.mine["topk_idx"], MAX_TOKENS, job.experts,
                                                  return_recv_hook=True)
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            hook()
            raise AssertionError("the hook finished without its peers")
        except KeyboardInterrupt:
            elapsed = time.monotonic() - start
        assert elapsed < 3, f"Ctrl-C took {elapsed:.1f} s to interrupt the hook"
        assert b.runtime is None
        expect_error(ValueError, ["destroyed"], hook)
    dist.barrier()
    if job.rank != 0:
        b._abandon()


def main():
    rank, world, _ = join()
    seed = agreed_seed(rank)
    job = Job(rank, world, seed)
    report = Report(rank)
    report.run("bf16 / fp8 / round_scale / ue8m0, plain / async / hook, zero copy, out, stats",
               check_formats_and_modes, job)
    report.run("hooks: receives taken by the hook, two held and a third refused, GIL released", check_hooks, job)
    report.run("mask update / query / clean, a masked rank left out", check_masks, job)
    report.run("bad inputs refused by name", check_bad_inputs, job)
    if CUDA:
        report.run("a bad expert id found by the kernels, raised by name, then a clean", check_bad_expert_on_the_gpu,
                   job)
        report.run("dispatch and combine captured in a CUDA graph, replayed", check_graph_on_the_gpu, job)
    report.run("normal mode beside the low-latency mode", check_normal_mode_beside, job)
    if CUDA:  # a hook there does not wait (and the destroy-while-viewed check is the host's)
        report.run("destroy", job.buffer.destroy)
    else:
        report.run("destroy refused while a view is held", check_destroy_waits_for_views, job)
        report.run("Ctrl-C interrupts a hook", check_ctrl_c_in_a_hook, job)
    report.done()
    dist.barrier()
    dist.destroy_process_group()
    # Rank 0's interrupted hook still runs on ferry's call thread: leave without tearing the process down.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
