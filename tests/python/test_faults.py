"""A timeout, a Ctrl-C inside a wait and a dead peer, as a Python user meets them: TimeoutError, a prompt
KeyboardInterrupt and ferry.PeerFailure naming the rank (faults_worker.py, 2 ranks under `ferry launch`,
numpy arrays, no torch imported). Each is a job of its own: a timeout or a dead peer fails the job."""

import pytest

from conftest import run_ferry_launch


@pytest.mark.parametrize("scenario", ["timeout", "ctrl-c", "dead-peer"])
def test_fault_surfaces_as_a_python_exception(scenario):
    result = run_ferry_launch("faults_worker.py", nodes=1, ranks_per_node=2, timeout=120, args=(scenario,))
    assert result.code == 0, result.describe()
    assert result.lines(f"rank 0: {scenario} ok"), f"missing 'rank 0: {scenario} ok'\n{result.describe()}"
    if scenario == "dead-peer":
        assert "rank 1 (pid" in result.lines("dead-peer ok")[0], result.describe()
