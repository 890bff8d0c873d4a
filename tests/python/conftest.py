"""Shared pieces of the Python tests: where ferry's build is, how to start a job of rank programs (with
torchrun's variables set by the test itself, or under `ferry launch`), and the skip convention.

ctest runs these through pytest (tests/python/CMakeLists.txt) with FERRY_BIN (the `ferry` command) and
PYTHONPATH (the built package) set. A pytest run in which every test was skipped exits 77, which ctest reports
as skipped, never as passed.

On a GPU machine the same rank programs run on CUDA tensors (one node: a rank per GPU over NCCL, or on a
one-GPU machine 2 rank processes sharing it, over gloo), with the machine's torch (2.x) and the extension
built there for its Python (scripts/gpu-check does this from a stage):

    FERRY_TEST_DEVICE=cuda PYTHONPATH=build/default/python FERRY_BIN=build/default/tools/ferry \
        python3 -m pytest -q -p no:cacheprovider tests/python/test_deepep.py tests/python/test_moe.py

(test_local.py and test_faults.py are CPU-only by design.)
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
DEVICE = os.environ.get("FERRY_TEST_DEVICE", "cpu")
SKIP_EXIT_CODE = 77


CUDA_TWO_NODES = ("two emulated nodes on one machine move GPU memory through a fabric that registers it (a "
                  "CUDA-enabled UCX, or verbs); Debian's UCX has none")


def cuda_ranks() -> int:
    """Ranks of a CUDA run on one node: FERRY_TEST_CUDA_RANKS, else one per GPU (at most 4), and on a one-GPU
    machine 2 processes sharing it (as the C++ GPU tests' [launch] case does)."""
    import torch

    if os.environ.get("FERRY_TEST_CUDA_RANKS"):
        return int(os.environ["FERRY_TEST_CUDA_RANKS"])
    gpus = torch.cuda.device_count()
    return 2 if gpus == 1 else max(1, min(4, gpus))


def ferry_bin() -> str:
    found = os.environ.get("FERRY_BIN") or shutil.which("ferry")
    if not found:
        pytest.fail("FERRY_BIN is not set and `ferry` is not on PATH (ctest sets FERRY_BIN)")
    return found


def netns_unavailable() -> str:
    """Why `ferry launch --netns` cannot run here ('' when it can): root, iproute2, and `ip netns add`
    working, as tests/common/netns.hpp decides for the C++ tests (FERRY_TEST_NETNS_UNAVAILABLE too)."""
    simulated = os.environ.get("FERRY_TEST_NETNS_UNAVAILABLE")
    if simulated:
        return f"simulated: {simulated}"
    if os.geteuid() != 0:
        return "not root"
    ip = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if ip is None:
        return "iproute2's ip is missing"
    probe = f"ferrypy-{os.getpid()}"
    added = subprocess.run([ip, "netns", "add", probe], capture_output=True)
    subprocess.run([ip, "netns", "del", probe], capture_output=True)
    if added.returncode != 0:
        return "'ip netns add' fails here (no CAP_SYS_ADMIN?)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JobResult:
    def __init__(self, code, out):
        self.code = code
        self.out = out

    def lines(self, prefix):
        return [line for line in self.out.splitlines() if prefix in line]

    def describe(self):
        return f"exit code {self.code}; output:\n{self.out[-20000:]}"


def rank_env(extra):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env["FERRY_TEST_DEVICE"] = DEVICE
    env.update(extra)
    return env


def run_torchrun_env(script, nodes, ranks_per_node, timeout=240, args=(), extra_env=None):
    """Every rank of a nodes x ranks_per_node job on this machine, with torchrun's variables (Debian's torchrun
    1.13 fails on Python 3.11, so the test sets them itself). Output of all ranks, in rank order."""
    world = nodes * ranks_per_node
    port = free_port()
    logs, procs = [], []
    for rank in range(world):
        env = rank_env({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank % ranks_per_node),
                        "LOCAL_WORLD_SIZE": str(ranks_per_node), "GROUP_RANK": str(rank // ranks_per_node),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                        "TORCHELASTIC_RUN_ID": uuid.uuid4().hex[:8]})
        env.update(extra_env or {})
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"ferry-pytest-{os.getpid()}-{port}-{rank}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen([PYTHON, str(HERE / script), *args], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in procs:
                if other.poll() is None:
                    other.kill()
            codes.append(-9)
    out = ""
    for rank, log in enumerate(logs):
        log.seek(0)
        out += "".join(f"[r{rank}] {line}" for line in log.read().splitlines(keepends=True))
        log.close()
        os.unlink(log.name)
    code = next((c for c in codes if c != 0), 0)
    return JobResult(code, out)


def run_ferry_launch(script, nodes, ranks_per_node, netns=False, timeout=240, args=(), extra_env=None):
    """`ferry launch --nodes N --ranks-per-node L [--netns] -- python3 script`."""
    command = [ferry_bin(), "launch", "--nodes", str(nodes), "--ranks-per-node", str(ranks_per_node),
               "--timeout", str(timeout)]
    if netns:
        command.append("--netns")
    command += ["--", PYTHON, str(HERE / script), *args]
    done = subprocess.run(command, env=rank_env(extra_env or {}), capture_output=True, text=True,
                          timeout=timeout + 30)
    return JobResult(done.returncode, done.stdout + done.stderr)


def require_all_ranks(result, world):
    """A job of worker_common.Report ranks passed: exit 0, every rank's summary line, no FAILED line."""
    assert result.code == 0, result.describe()
    for rank in range(world):
        assert result.lines(f"rank {rank}: all "), f"rank {rank} did not finish its checks\n{result.describe()}"
    assert not result.lines("FAILED"), result.describe()


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    skipped = len(reporter.stats.get("skipped", []))
    passed = len(reporter.stats.get("passed", []))
    if skipped and not passed:
        session.exitstatus = SKIP_EXIT_CODE
