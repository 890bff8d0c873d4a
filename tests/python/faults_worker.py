"""One rank of a fault job (2 ranks under `ferry launch`, numpy arrays, no torch: ferry bootstraps from the
launcher's environment with group=None). `faults_worker.py SCENARIO`; rank 0 meets:

  timeout   a peer that never issues its dispatch: TimeoutError (ferry.Timeout) after the Buffer's 1 s
            timeout, and the Buffer is unusable afterwards (ValueError naming why);
  ctrl-c    a Ctrl-C (SIGINT) while it waits for such a peer: KeyboardInterrupt within a fraction of a second,
            and another Python thread ran meanwhile (the wait released the GIL);
  dead-peer a peer whose process is gone: ferry.PeerFailure whose .rank is 1.

Each scenario is a job of its own: a timeout or a dead peer fails the whole job (the store records it, and
every later collective call of any rank, a new Buffer included, is refused naming the failure), as
docs/reliability.md says. Rank 1 plays the peer. Rank 0 prints `rank 0: <scenario> ok` and ends with
os._exit (its Buffer's peer is gone or the job has failed: nothing to tear down with).
"""

import os
import signal
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
    # Meanwhile another Python thread runs: the wait does not hold the GIL.
    counted = [0]

    def count():
        end = time.monotonic() + 0.25
        while time.monotonic() < end:
            counted[0] += 1

    counter = threading.Thread(target=count)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        counter.start()
        dispatch(buffer)
        raise AssertionError("a dispatch without its peer finished")
    except KeyboardInterrupt:
        elapsed = time.monotonic() - start
        assert elapsed < 3, f"Ctrl-C took {elapsed:.1f} s to interrupt the wait"
        assert buffer.runtime is None
        counter.join()
        assert counted[0] > 1000, f"a Python thread counted only {counted[0]} while the dispatch waited"
        say(rank, f"ctrl-c ok: interrupted the wait after {elapsed:.2f} s; another thread counted to "
                  f"{counted[0]} meanwhile (the GIL was free)")


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
