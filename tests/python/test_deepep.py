"""DeepEP-style correctness of ferry.Buffer across processes: the same rank program (deepep_worker.py, every
check batched into one job) under `ferry launch --netns` on 2 emulated nodes x 2, and with torchrun's
variables on 1 node x 4 and 2 nodes x 2 (emulated on this host). Each rank compares every result with a
reference built from all ranks' inputs and prints one line per check; the test requires every rank's
summary line."""

import pytest

from conftest import (CUDA_TWO_NODES, DEVICE, cuda_ranks, netns_unavailable, require_all_ranks, run_ferry_launch,
                      run_torchrun_env)


def test_deepep_checks_under_ferry_launch_netns_2x2():
    if DEVICE == "cuda":
        pytest.skip(CUDA_TWO_NODES)
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"ferry launch --netns cannot run here: {reason}")
    require_all_ranks(run_ferry_launch("deepep_worker.py", nodes=2, ranks_per_node=2, netns=True), 4)


@pytest.mark.parametrize("nodes,ranks_per_node", [(1, 4), (2, 2)])
def test_deepep_checks_with_torchrun_environment(nodes, ranks_per_node):
    if DEVICE == "cuda":
        if nodes > 1:
            pytest.skip(CUDA_TWO_NODES)
        ranks_per_node = cuda_ranks()
    require_all_ranks(run_torchrun_env("deepep_worker.py", nodes, ranks_per_node), nodes * ranks_per_node)
