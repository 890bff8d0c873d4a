"""DeepEP's low-latency mode on ferry.Buffer across processes: the same rank program (lowlat_worker.py, every
check batched into one job per topology) with torchrun's variables on 1 node x 4, and under
`ferry launch --nodes 2 --ranks-per-node 2` (2 emulated nodes on this host: the fabric and the proxy carry the
rows between nodes). Each rank compares every result with a reference built from all ranks' inputs and prints
one line per check; the test requires every rank's summary line. With FERRY_TEST_DEVICE=cuda the same program
runs on CUDA tensors, one node (a rank per GPU, or 2 processes sharing a one-GPU machine)."""

import pytest

from conftest import CUDA_TWO_NODES, DEVICE, cuda_ranks, require_all_ranks, run_ferry_launch, run_torchrun_env


def test_low_latency_with_torchrun_environment_1x4():
    ranks = cuda_ranks() if DEVICE == "cuda" else 4
    require_all_ranks(run_torchrun_env("lowlat_worker.py", 1, ranks, timeout=120), ranks)


def test_low_latency_under_ferry_launch_2x2():
    if DEVICE == "cuda":
        pytest.skip(CUDA_TWO_NODES)
    require_all_ranks(run_ferry_launch("lowlat_worker.py", nodes=2, ranks_per_node=2, timeout=120), 4)
