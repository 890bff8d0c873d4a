"""What every rank program of the Python tests shares: joining the job, one seed for all ranks, and the
`rank R: ... ok` / `rank R: FAILED: ...` lines the tests look for.

The job comes from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), which the tests set themselves or `ferry launch` sets. FERRY_TEST_DEVICE=cuda runs the same
checks on CUDA tensors: over an NCCL group where every local rank has a GPU of its own, else (ranks sharing a
GPU, which NCCL refuses) over gloo, with the Buffer told device="cuda". The default is CPU tensors over gloo.
"""

import os
import random
import time
import sys
import traceback

import torch
import torch.distributed as dist

DEVICE = os.environ.get("FERRY_TEST_DEVICE", "cpu")


def join():
    """Initialises torch.distributed from torchrun's variables; returns (rank, world size, local rank)."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if DEVICE == "cuda":
        gpus = torch.cuda.device_count()
        torch.cuda.set_device(local_rank % gpus)
        if int(os.environ["LOCAL_WORLD_SIZE"]) <= gpus:
            backend = "nccl"
    dist.init_process_group(backend, rank=rank, world_size=world)
    return rank, world, local_rank


def buffer_options():
    """ferry.Buffer's keyword arguments for FERRY_TEST_DEVICE (a gloo group defaults to CPU tensors)."""
    return {"device": "cuda"} if DEVICE == "cuda" else {}


def agreed_seed(rank):
    """FERRY_TEST_SEED, or one rank 0 draws; printed (and flushed) before any check runs."""
    seed = [int(os.environ["FERRY_TEST_SEED"]) if "FERRY_TEST_SEED" in os.environ else random.randrange(2**31)]
    dist.broadcast_object_list(seed, src=0)
    if rank == 0:
        print(f"seed {seed[0]} (set FERRY_TEST_SEED to repeat)", flush=True)
    return seed[0]


class Report:
    """Runs named checks, prints one line per check, and the summary line the test looks for."""

    def __init__(self, rank):
        self.rank = rank
        self.passed = 0

    def run(self, name, check, *args):
        start = time.monotonic()
        try:
            check(*args)
        except Exception:
            print(f"rank {self.rank}: FAILED: {name}:\n{traceback.format_exc()}", flush=True)
            sys.stdout.flush()
            os._exit(1)  # the others then fail on a dead peer, not wait for a collective that never comes
        self.passed += 1
        print(f"rank {self.rank}: {name} ok ({time.monotonic() - start:.2f} s)", flush=True)

    def done(self):
        print(f"rank {self.rank}: all {self.passed} checks ok", flush=True)


def expect_error(kind, words, call):
    """`call()` must raise `kind` whose message contains every one of `words`."""
    try:
        call()
    except kind as error:
        message = str(error)
        missing = [w for w in words if w not in message]
        assert not missing, f"{kind.__name__} message {message!r} lacks {missing}"
        return error
    raise AssertionError(f"expected {kind.__name__} naming {words}, got no error")
