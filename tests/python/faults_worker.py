"""One rank of a fault job (2 ranks under `ferry launch`, numpy arrays, no torch: ferry bootstraps from the
launcher's environment with group=None). `faults_worker.py SCENARIO`; rank 0 meets:

  timeout   a peer that never issues its dispatch: TimeoutError (ferry.Timeout) after the Buffer's 1 s
            timeout, and the Buffer is unusable afterwards (ValueError naming why);
  ctrl-c    a Ctrl-C (SIGINT, sent by another process) while it waits for such a peer: KeyboardInterrupt
            within a fraction of a second, and another Python thread kept running all through the wait (the
            wait released the GIL: one that held it would silence that thread until the interrupt);
  dead-peer a peer whose process is gone: ferry.PeerFailure whose .rank is 1.

Each scenario is a job of its own: a timeout or a dead peer fails the whole job (the store records it, and
every later collective call of any rank, a new Buffer included, is refused naming the failure), as
docs/reliability.md says. Rank 1 plays the peer. Rank 0 prints `rank 0: <scenario> ok` and ends with
os._exit (its Buffer's peer is gone or the job has failed: nothing to tear down with).
"""

import os
import subprocess
import sys
import threading
import time

import numpy

import ferry

TOKENS, HIDDEN, EXPERTS = 8, 128, 4


def dispatch(buffer):
    rng = numpy.random.default_rng(buffer.rank)
    topk = numpy.stack([rng.permutation(EXPERTS)[:2] for _ in range(TOKENS)]).astype(numpy.int64)
    weights = numpy.ones((TOKENS, 2), numpy.float32)
    per_rank, per_node, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk, EXPERTS)
    return buffer.dispatch(numpy.ones((TOKENS, HIDDEN), numpy.float32), num_tokens_per_rank=per_rank,
                           is_token_in_rank=in_rank, num_tokens_per_expert=per_expert, topk_idx=topk,
                           topk_weights=weights)


def say(rank, text):
    print(f"rank {rank}: {text}", flush=True)


def timeout(rank):
    buffer = ferry.Buffer(None, ferry_config={"timeout_s": 1.0})
    if rank != 0:
        buffer._abandon()  # never issues the dispatch
        time.sleep(3)  # alive, so rank 0 meets a stalled peer (its 1 s timeout), not a dead one
        return
    start = time.monotonic()
    try:
        dispatch(buffer)
        raise AssertionError("a dispatch without its peer finished")
    except TimeoutError as error:
        assert isinstance(error, ferry.Timeout) and error.code == "timeout", repr(error)
        elapsed = time.monotonic() - start
        assert elapsed < 30, f"the timeout took {elapsed:.1f} s"
        say(rank, f"timeout ok after {elapsed:.1f} s: {error}")
    try:
        dispatch(buffer)
        raise AssertionError("the Buffer was usable after a timeout")
    except ValueError as error:
        assert "destroyed" in str(error), str(error)


def ctrl_c(rank):
    buffer = ferry.Buffer(None)
    if rank != 0:
        time.sleep(1.5)
        buffer._abandon()
        return
    beats = []  # when a second Python thread ran: it can only while the main thread lets go of the GIL
    stop = threading.Event()

    def heartbeat():
        while not stop.is_set():
            beats.append(time.monotonic())
            sum(range(100))  # some bytecode between beats

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    # The SIGINT comes from another process: a Python timer thread would need the GIL to send it.
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.6; kill -INT {os.getpid()}"])
    start = time.monotonic()
    try:
        dispatch(buffer)
        raise AssertionError("a dispatch without its peer finished")
    except KeyboardInterrupt:
        end = time.monotonic()
    stop.set()
    beating.join()
    killer.wait()
    elapsed = end - start
    assert elapsed < 3, f"Ctrl-C took {elapsed:.1f} s to interrupt the wait"
    assert buffer.runtime is None
    during = [start] + [t for t in beats if start < t < end] + [end]
    silence = max(b - a for a, b in zip(during, during[1:]))
    assert silence < min(0.3, elapsed / 2), (
        f"the other Python thread stood still for {silence:.2f} s of the {elapsed:.2f} s wait "
        f"({len(during) - 2} beats): ferry held the GIL while it waited")
    say(rank, f"ctrl-c ok: interrupted the wait after {elapsed:.2f} s; another thread ran all through it "
              f"({len(during) - 2} beats, longest pause {silence * 1000:.0f} ms: the GIL was free)")


def dead_peer(rank):
    buffer = ferry.Buffer(None)
    if rank == 1:
        os._exit(0)
    time.sleep(0.3)
    try:
        dispatch(buffer)
        raise AssertionError("a dispatch with a dead peer finished")
    except ferry.PeerFailure as error:
        assert error.rank == 1, f"PeerFailure.rank is {error.rank}: {error}"
        assert "rank 1" in str(error), str(error)
        say(rank, f"dead-peer ok: {error}")


SCENARIOS = {"timeout": timeout, "ctrl-c": ctrl_c, "dead-peer": dead_peer}


def main():
    rank = int(os.environ["FERRY_RANK"])
    assert "torch" not in sys.modules, "import ferry must not import torch"
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: faults_worker.py {{{'|'.join(SCENARIOS)}}}")
    SCENARIOS[sys.argv[1]](rank)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
