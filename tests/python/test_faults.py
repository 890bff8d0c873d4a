"""A timeout, a Ctrl-C inside a wait and a dead peer, as a Python user meets them: TimeoutError, a prompt
KeyboardInterrupt and ferry.PeerFailure naming the rank (faults_worker.py, 2 ranks under `ferry launch`,
numpy arrays, no torch imported)."""

from conftest import run_ferry_launch


def test_timeout_ctrl_c_and_dead_peer_surface_as_python_exceptions():
    result = run_ferry_launch("faults_worker.py", nodes=1, ranks_per_node=2, timeout=120)
    assert result.code == 0, result.describe()
    for step in ("timeout ok", "Ctrl-C ok", "peer failure ok", "all 3 checks ok"):
        assert result.lines(f"rank 0: {step}"), f"missing 'rank 0: {step}'\n{result.describe()}"
    assert "rank 1 (pid" in result.lines("peer failure ok")[0]
