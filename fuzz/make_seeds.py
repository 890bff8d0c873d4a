#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*). Run from anywhere; the seeds
are committed, so this is only needed to change them. Crashes the fuzzer finds are added next to the seeds
(crash-*), by hand, and stay there as regression inputs."""
import hashlib
import hmac as hmac_module
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as out:
        out.write(data if isinstance(data, bytes) else data.encode())


# ---- store_frames: [flags][chunk-1] then frames (store_protocol.hpp: magic, version, opcode, lengths) ----
# flags: bit 0 starts authenticated, bit 1 starts joined as rank 0 of 2. The harness's server nonce is zeros.
def frame(opcode, key=b"", value=b"", version=3):
    return struct.pack("<IHHIQ", 0x59525246, version, opcode, len(key), len(value)) + key + value


HELLO, SET, GET, CHECK, ADD, ERASE, STATS = 1, 2, 3, 4, 5, 6, 7
PROVE, JOIN, LEAVE, MEMBERS, FAIL, WATCH = 8, 9, 10, 11, 12, 13
client_nonce = bytes(range(16))
proof = hmac_module.new(b"fuzz-secret", b"ferry store v3 client proof" + client_nonce + bytes(16),
                        hashlib.sha256).digest()
hello = frame(HELLO, value=client_nonce) + frame(PROVE, value=proof)
session = (hello + frame(SET, b"job/a/0", b"value") + frame(GET, b"job/a/0", struct.pack("<Q", 10)) +
           frame(ADD, b"job/a/count", struct.pack("<q", 3)) + frame(CHECK, b"job/a/0") +
           frame(GET, b"missing", struct.pack("<Q", 0)) + frame(ERASE, b"job/a/") + frame(STATS))
write("store_frames", "session", b"\x00\xff" + session)
write("store_frames", "session-bytewise", b"\x00\x00" + session)
write("store_frames", "authenticated", b"\x01\x10" + frame(SET, b"k", b"v" * 40) + frame(ADD, b"k", b"\0" * 8))
write("store_frames", "wrong-secret", b"\x00\xff" + frame(HELLO, value=client_nonce) + frame(PROVE, value=bytes(32)))
write("store_frames", "secret-in-clear", b"\x00\xff" + frame(HELLO, value=b"fuzz-secret"))
write("store_frames", "old-version", b"\x00\xff" + frame(HELLO, value=b"fuzz-secret", version=2))
write("store_frames", "before-hello", b"\x00\xff" + frame(SET, b"k", b"v"))
write("store_frames", "second-hello", b"\x00\x07" + hello + hello)
write("store_frames", "bad-header", b"\x01\xff" + struct.pack("<IHHIQ", 0x59525246, 1, SET, 1 << 20, 1 << 40))
barrier = b""
for rank in range(2):
    barrier += frame(SET, b"b/0/%d" % rank) + frame(ADD, b"b/0/arrived", struct.pack("<q", 1))
barrier += frame(SET, b"b/0/done") + frame(GET, b"b/0/done", struct.pack("<Q", 5))
barrier += frame(ADD, b"b/0/finished", struct.pack("<q", 2)) + frame(ERASE, b"b/0/")
write("store_frames", "barrier", b"\x00\x40" + hello + barrier)
membership = (frame(JOIN, b"", struct.pack("<II", 1, 2) + b"pid 7 on fuzz") + frame(MEMBERS, b"") +
              frame(WATCH, b"", struct.pack("<Q", 10)) + frame(LEAVE, b"") +
              frame(JOIN, b"sub/", struct.pack("<II", 0, 3)) + frame(FAIL, b"", b"rank 2 timed out") +
              frame(GET, b"never", struct.pack("<Q", 100)) + frame(WATCH, b"", struct.pack("<Q", 10)))
write("store_frames", "membership", b"\x01\x20" + membership)
write("store_frames", "duplicate-rank", b"\x03\xff" + frame(JOIN, b"", struct.pack("<II", 0, 2) + b"again") +
      frame(JOIN, b"", struct.pack("<II", 1, 3)))
write("store_frames", "joined-then-closed", b"\x03\xff" + frame(SET, b"k", b"v"))

# ---- chrome_trace: documents as ferry writes them, and variants ----
def event(name, cat, pid, tid, ts, dur, **args):
    e = {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": dur, "pid": pid, "tid": tid}
    if args:
        e["args"] = args
    return e


meta = {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "rank 0"}}
step = [meta, event("step", "step", 0, 2, 0, 1000, step=0),
        event("attn(F)", "compute", 0, 0, 10, 200, step=0, micro_batch=0, chunk=0),
        event("dispatch(F)", "a2a", 0, 1, 150, 300, step=0, micro_batch=0),
        event("mlp(F)", "compute", 0, 0, 460, 200, step=0, micro_batch=0),
        event("combine(F)", "a2a", 0, 1, 660, 100, step=0),
        event("pp-send", "pp", 0, 1, 800, 50, step=0),
        event("F", "op", 0, 2, 10, 850, step=0, micro_batch=0)]
write("chrome_trace", "one-step.json", json.dumps({"displayTimeUnit": "ms", "traceEvents": step}))
two_ranks = step + [dict(e, pid=1) for e in step[1:]]
write("chrome_trace", "two-ranks.json", json.dumps({"traceEvents": two_ranks}))
write("chrome_trace", "bare-array.json", json.dumps(step[1:4]))
write("chrome_trace", "empty.json", '{"traceEvents":[]}')
write("chrome_trace", "bad-phase.json", json.dumps([{"name": "x", "ph": "B", "pid": 0, "tid": 0, "ts": 0}]))
write("chrome_trace", "two-steps-one-rank.json",
      json.dumps([event("step", "step", 0, 2, 0, 10, step=1), event("step", "step", 0, 2, 5, 10, step=1)]))
# Nesting just past the reader's bound (kMaxTraceDepth = 32), and a long name to quote in a message.
write("chrome_trace", "deep-nesting.json", '{"traceEvents":[' + "[" * 40 + "]" * 40 + "]}")
write("chrome_trace", "long-name.json", json.dumps([{"name": "n" * 2000, "ph": "Q", "pid": 0, "tid": 0}]))

# ---- layout: [flags][ranks][local size][experts u16][max nodes][topk] then ids (int16) ----
def layout(flags, ranks, local, experts, max_nodes, topk, ids):
    return bytes([flags, ranks & 0xff, local & 0xff]) + struct.pack("<h", experts) + \
        bytes([max_nodes & 0xff, topk]) + b"".join(struct.pack("<h", i) for i in ids)


write("layout", "two-nodes", layout(0, 4, 2, 8, 2, 2, [0, 5, 1, 2, -1, 7, 3, 3]))
write("layout", "modulo-ids", layout(1, 8, 4, 32, 1, 4, list(range(64))))
write("layout", "out-of-range", layout(0, 2, 1, 4, 2, 1, [4]))
write("layout", "too-many-nodes", layout(0, 4, 1, 4, 1, 2, [0, 3]))
write("layout", "uneven-experts", layout(0, 3, 1, 4, 3, 1, [0]))
write("layout", "wrong-dtype", layout(2, 2, 2, 2, 1, 1, [0]))
write("layout", "flat", layout(4, 2, 2, 2, 1, 1, [0, 1]))
