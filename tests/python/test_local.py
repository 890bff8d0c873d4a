"""ferry's Python package in one process: DLPack both ways (torch 1.13 / 2.x, numpy; bf16; fp8 bytes; empty
tensors; memory that outlives the Buffer), the exception classes, DeepEP's Config and its checks, docstrings
and the type stub, a one-rank Buffer (its own job: group=None) through dispatch, cached dispatch and
combine, synchronous and asynchronous, and a one-rank low-latency Buffer (the README's example too)."""

import ast
import os
import gc
import pydoc
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

import ferry
from ferry import _ferry

DEVICE = "cpu"


def test_import_ferry_does_not_import_torch():
    code = "import sys, ferry; assert 'torch' not in sys.modules; print(ferry.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ferry.__version__


@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "bf16"), (torch.float32, "fp32"), (torch.int64, "int64"),
                                        (torch.int32, "int32"), (torch.bool, "uint8"), (torch.uint8, "uint8")])
def test_torch_tensors_enter_ferry_without_a_copy(dtype, name):
    t = torch.zeros(3, 5, dtype=dtype)
    imported = ferry._tensors.take(ferry._tensors.TorchFrame, t, "t")
    assert imported.dtype == name and imported.shape == (3, 5) and imported.device == (1, 0)


def test_numpy_arrays_and_capsules_enter_ferry():
    a = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
    assert _ferry.import_tensor(a, "a").shape == (3, 4)
    assert _ferry.import_tensor(torch.zeros(2, 2).__dlpack__(), "capsule").dtype == "fp32"
    assert _ferry.import_tensor(numpy.zeros((4, 6), numpy.uint8), "fp8", as_fp8=True).dtype == "fp8_e4m3"


def test_tensors_ferry_refuses_are_named():
    with pytest.raises(ValueError, match="xt .* is not contiguous"):
        _ferry.import_tensor(torch.zeros(4, 3).t(), "xt")
    with pytest.raises(ValueError, match="counts has DLPack type code 0 with 16 bits"):
        _ferry.import_tensor(torch.zeros(3, dtype=torch.int16), "counts")
    with pytest.raises(ValueError, match="hypercube .* has 4 dimensions"):
        _ferry.import_tensor(torch.zeros(2, 2, 2, 2), "hypercube")
    assert _ferry.import_tensor(torch.zeros(2, 3, 4), "cube").shape == (2, 3, 4)
    with pytest.raises(ValueError, match="w is a list, not a tensor"):
        _ferry.import_tensor([1.0], "w")


def test_error_classes_are_the_python_ones_a_user_catches():
    assert issubclass(ferry.InvalidArgument, ValueError) and issubclass(ferry.InvalidArgument, ferry.FerryError)
    assert issubclass(ferry.Timeout, TimeoutError)
    assert issubclass(ferry.Unsupported, NotImplementedError)
    assert issubclass(ferry.PeerFailure, ferry.FerryError) and not issubclass(ferry.PeerFailure, ValueError)
    assert _ferry.peer_rank_in("rank 0: operation not run because an earlier one failed: rank 3 (pid 9 on h, "
                               "this node) is gone") == 3
    assert _ferry.peer_rank_in("ucx: put rank 5 (node 2) failed on rank 0: Connection reset") == 5
    assert _ferry.peer_rank_in("lost connection to store at 10.0.0.1:29500") is None
    with pytest.raises(ferry.InvalidArgument) as caught:
        _ferry.import_tensor(torch.zeros(3, dtype=torch.int16), "x")
    assert caught.value.code == "invalid argument"


def test_deepep_config_checks_and_size_hints():
    config = ferry.Config()
    assert (config.num_sms, config.num_max_nvl_chunked_send_tokens, config.num_max_rdma_chunked_recv_tokens) == \
        (20, 6, 258)  # DeepEP rounds the RDMA receive size up to a multiple of the send chunk
    with pytest.raises(ValueError, match="num_max_nvl_chunked_send_tokens must be <"):
        ferry.Config(20, 8, 8)
    with pytest.raises(ValueError, match="at most half"):
        ferry.Config(20, 6, 256, 300, 256)  # the receive size rounds up to 300: no room for two chunks
    assert ferry.Config(24, 6, 256, 6, 100).num_max_rdma_chunked_recv_tokens == 102  # rounded up, as DeepEP
    hint = config.get_nvl_buffer_size_hint(7168 * 2, 8)
    assert hint == ferry.buffer_size_hint(ferry.FerryConfig(), 1, 8)
    assert config.get_nvl_buffer_size_hint(7168 * 2, 16) > 0
    assert config.get_rdma_buffer_size_hint(7168 * 2, 16) == 0
    recommended = ferry.Buffer.get_dispatch_config(8)
    assert isinstance(recommended, ferry.Config) and recommended.num_sms == ferry.Buffer.num_sms


def test_ferry_config_from_dict_file_and_object(tmp_path):
    from ferry.config import engine_config
    assert engine_config(None, 12).num_sms == 12
    assert engine_config({"max_hidden": 1024}, 12).max_hidden == 1024
    saved = ferry.FerryConfig()
    saved.nvl_chunk = 4
    saved.save(str(tmp_path / "tuned.json"))
    assert engine_config(tmp_path / "tuned.json", 20).nvl_chunk == 4
    with pytest.raises(ValueError, match="max_hiden"):
        engine_config({"max_hiden": 1}, 20)


def test_help_and_type_stub_are_readable():
    text = pydoc.render_doc(ferry.Buffer.dispatch, renderer=pydoc.plaintext)
    for word in ("Arguments:", "Returns:", "recv_topk_idx", "num_worst_tokens", "ValueError", "PeerFailure"):
        assert word in text
    assert "Where ferry differs from DeepEP" in pydoc.render_doc(ferry.Buffer, renderer=pydoc.plaintext)
    text = pydoc.render_doc(ferry.Buffer.low_latency_dispatch, renderer=pydoc.plaintext)
    for word in ("Arguments:", "Returns:", "recv_count", "return_recv_hook", "column-major", "nanoseconds"):
        assert word in text
    text = pydoc.render_doc(ferry.Buffer.low_latency_combine, renderer=pydoc.plaintext)
    for word in ("zero_copy", "use_logfmt", "out:"):
        assert word in text
    assert "Where ferry differs from DeepEP" in pydoc.render_doc(ferry.low_latency, renderer=pydoc.plaintext)
    stub = Path(_ferry.__file__).with_name("_ferry.pyi")
    names = {node.name for node in ast.parse(stub.read_text()).body if isinstance(node, (ast.ClassDef,
                                                                                          ast.FunctionDef))}
    public = {name for name in dir(_ferry) if not name.startswith("_")}
    assert public <= names, f"missing from the stub: {public - names}"


def test_low_latency_buffer_needs_its_size_and_tensors_on_its_device():
    hint = ferry.Buffer.get_low_latency_rdma_size_hint(128, 7168, 8, 256)
    assert hint == _ferry.low_latency_rdma_size_hint(128, 7168, 8, 256) and hint > 128 * 7168 * 2
    with pytest.raises(ValueError, match="num_experts must be a positive multiple"):
        ferry.Buffer.get_low_latency_rdma_size_hint(128, 7168, 8, 60)
    with pytest.raises(ValueError, match="needs num_rdma_bytes = Buffer.get_low_latency_rdma_size_hint"):
        ferry.Buffer(None, low_latency_mode=True)
    if not torch.cuda.is_available():  # a CUDA low-latency Buffer needs the GPU (tests/python on CUDA runs one)
        with pytest.raises(NotImplementedError, match="device='cuda' needs torch with CUDA and a GPU"):
            ferry.Buffer(None, num_rdma_bytes=hint, low_latency_mode=True, device="cuda")
    normal = ferry.Buffer(None)
    with pytest.raises(ValueError, match="needs a Buffer built with low_latency_mode=True"):
        normal.low_latency_dispatch(torch.zeros(2, 128, dtype=torch.bfloat16), torch.zeros(2, 1, dtype=torch.int64),
                                    8, 4)
    normal._close()


def test_one_rank_low_latency_round_trip(monkeypatch):
    torch.manual_seed(5)
    tokens, hidden, experts = 6, 256, 4
    b = ferry.Buffer(None, num_rdma_bytes=ferry.Buffer.get_low_latency_rdma_size_hint(8, hidden, 1, experts),
                     low_latency_mode=True)
    x = torch.randint(-4, 5, (tokens, hidden)).to(torch.bfloat16)
    topk = torch.tensor([[0, 1], [2, -1], [3, 0], [-1, -1], [1, 2], [0, 3]])
    weights = torch.full((tokens, 2), 0.5)
    recv_x, recv_count, handle, event, hook = b.low_latency_dispatch(x, topk, 8, experts, use_fp8=False)
    assert event.event is None and hook is None and recv_x.shape == (experts, 8, hidden)
    assert recv_count.tolist() == [3, 2, 2, 2] and isinstance(handle, tuple) and len(handle) == 5
    src_info, layout_range = handle[0], handle[1]
    assert src_info[0, :3].tolist() == [0, 2, 5] and int(layout_range[0, 0]) == 3  # begin 0, count 3
    assert torch.equal(recv_x[0, :3], x[[0, 2, 5]])
    combined, _, _ = b.low_latency_combine(recv_x, topk, weights, handle)
    assert torch.equal(combined.float(), x.float() * (weights * (topk >= 0)).sum(dim=1, keepdim=True))
    # A CUDA tensor is refused by name before anything is sent (no GPU here: pretend x is one).
    monkeypatch.setattr(ferry._tensors.TorchFrame, "is_cuda", staticmethod(lambda t: True))
    with pytest.raises(ValueError, match="x is .* but this Buffer runs on the host"):
        b.low_latency_dispatch(x, topk, 8, experts)
    monkeypatch.undo()
    b._close()


@pytest.fixture(scope="module")
def buffer():
    b = ferry.Buffer(None, explicitly_destroy=True)  # one rank, ferry's own job
    yield b
    if b.runtime is not None:
        b.destroy()


def layout_args(buffer, topk, weights, experts):
    per_rank, per_node, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk, experts)
    assert per_node is None
    return dict(num_tokens_per_rank=per_rank, is_token_in_rank=in_rank, num_tokens_per_expert=per_expert,
                topk_idx=topk, topk_weights=weights)


def test_one_rank_round_trip_sync_async_and_cached(buffer):
    torch.manual_seed(3)
    tokens, hidden, experts = 20, 256, 8
    topk = torch.stack([torch.randperm(experts)[:3] for _ in range(tokens)])
    topk[4] = -1  # a token that goes nowhere
    weights = torch.rand(tokens, 3)
    args = layout_args(buffer, topk, weights, experts)
    x = torch.randn(tokens, hidden).to(torch.bfloat16)
    recv_x, recv_idx, recv_w, counts, handle, event = buffer.dispatch(x, **args)
    assert event.event is None and isinstance(counts, list) and sum(counts) == int((topk >= 0).sum())
    assert torch.equal(recv_x, x[topk[:, 0] >= 0])  # rows in token order; token 4 went nowhere
    assert handle.num_recv_tokens == tokens - 1
    combined, combined_w, _ = buffer.combine(recv_x, handle, topk_weights=recv_w)
    expected = x.clone()
    expected[4] = 0
    assert torch.equal(combined, expected)
    assert torch.equal(combined_w, torch.where(topk >= 0, weights, torch.zeros_like(weights)))

    recv2, _, _, counts2, handle2, event2 = buffer.dispatch(x, **args, async_finish=True)
    assert isinstance(counts2, ferry.ExpertCounts)
    with event2:
        pass
    assert counts2 == counts and list(counts2) == counts and len(counts2) == len(counts)
    assert torch.equal(recv2, recv_x)
    got = buffer.dispatch(x.float(), handle=handle2, async_finish=True)
    got[5].current_stream_wait()
    assert torch.equal(got[0], recv_x.float())


def test_results_outlive_the_buffer_and_share_ferry_memory():
    b = ferry.Buffer(None)
    topk = torch.tensor([[0, 1], [1, -1]])
    x = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128)
    recv_x, *_ = b.dispatch(x, **layout_args(b, topk, torch.ones(2, 2), 2))
    again = torch.utils.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(recv_x))
    assert again.data_ptr() == recv_x.data_ptr()
    b._close()
    del b
    gc.collect()
    assert torch.equal(recv_x, x)  # ferry's memory stays until the last consumer lets go


def test_empty_dispatch_and_fp8_bytes(buffer):
    topk = torch.full((3, 2), -1, dtype=torch.int64)  # nothing goes anywhere
    args = layout_args(buffer, topk, torch.zeros(3, 2), 4)
    data = torch.randint(0, 0x7F, (3, 128), dtype=torch.uint8)
    (recv, scales), recv_idx, _, counts, handle, _ = buffer.dispatch((data, torch.ones(3, 1)), **args)
    assert recv.shape == (0, 128) and recv.dtype == data.dtype and scales.shape == (0, 1)
    assert recv_idx.shape == (0, 2) and counts == [0, 0, 0, 0]
    combined, _, _ = buffer.combine(torch.zeros(0, 128), handle)
    assert combined.shape == (3, 128) and not combined.any()


def test_numpy_only_round_trip(buffer):
    topk = numpy.array([[0, 2], [1, 3]], dtype=numpy.int64)
    x = numpy.arange(2 * 128, dtype=numpy.float32).reshape(2, 128)
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk, 4)
    assert in_rank.dtype == numpy.bool_ and per_rank.dtype == numpy.int32
    recv_x, recv_idx, _, counts, handle, _ = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank, num_tokens_per_expert=per_expert, topk_idx=topk,
        topk_weights=numpy.ones((2, 2), numpy.float32))
    assert isinstance(recv_x, numpy.ndarray) and (recv_x == x).all() and counts == [1, 1, 1, 1]
    combined, _, _ = buffer.combine(recv_x * 2, handle)
    assert (combined == 2 * x).all()


def test_the_netns_test_reports_a_skip_where_namespaces_are_unavailable():
    """Where `ferry launch --netns` cannot run, its test is skipped (exit 77 for ctest), never passed."""
    env = dict(os.environ, FERRY_TEST_NETNS_UNAVAILABLE="pretend", FERRY_TEST_DEVICE="cpu", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "test_deepep.py::test_deepep_checks_under_ferry_launch_netns_2x2"],
                          cwd=Path(__file__).parent, env=env, capture_output=True, text=True)
    assert done.returncode == 77, done.stdout + done.stderr
    assert "ferry launch --netns cannot run here: simulated: pretend" in done.stdout


@pytest.mark.parametrize("example,words", [("deepep_moe.py", ("rank 0: 128 rows received", "combine ok")),
                                           ("deepep_low_latency.py", ("rank 0: rows per local expert", "combine ok"))])
def test_the_readme_examples_run_as_one_rank(example, words):
    """python/examples (README's snippets: normal and low-latency mode) as a job of one, with torchrun's
    variables."""
    path = Path(__file__).resolve().parents[2] / "python" / "examples" / example
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(word in done.stdout for word in words), done.stdout


def _free_port():
    from conftest import free_port

    return free_port()
