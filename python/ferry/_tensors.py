"""Tensors in and out of ferry through DLPack, for the two frameworks ferry's Buffer accepts.

A call's tensors all come from one framework, the one of its ``x``: torch tensors (Debian's torch 1.13 on the
CPU, torch 2.x on CPU or CUDA) or numpy arrays (CPU). Results come back in that framework, sharing ferry's
memory (no copies). fp8 rows travel as ``torch.float8_e4m3fn`` where torch has that dtype and as ``uint8``
bytes elsewhere (torch 1.13, numpy); bf16 needs torch (numpy has no bfloat16).
"""

import sys
from typing import Any, List, Optional, Sequence

from . import _ferry


def _torch() -> Any:
    """torch, once the caller has imported it (a program that never did has no torch tensors to pass), so
    that ``import ferry`` does not import torch."""
    return sys.modules.get("torch")


def _numpy() -> Any:
    return sys.modules.get("numpy")


def torch_fp8() -> Any:
    """torch's fp8 e4m3 dtype, or None where torch has none (1.13)."""
    return getattr(_torch(), "float8_e4m3fn", None)


class TorchFrame:
    """torch tensors."""

    name = "torch"

    @staticmethod
    def owns(obj: Any) -> bool:
        torch = _torch()
        return torch is not None and isinstance(obj, torch.Tensor)

    @staticmethod
    def dtype_name(t: Any) -> str:
        return str(t.dtype).replace("torch.", "")

    @staticmethod
    def device(t: Any) -> str:
        return str(t.device)

    @staticmethod
    def is_cuda(t: Any) -> bool:
        return t.is_cuda

    @staticmethod
    def shape(t: Any) -> tuple:
        return tuple(t.shape)

    @staticmethod
    def is_contiguous(t: Any) -> bool:
        return t.is_contiguous()

    @staticmethod
    def contiguous(t: Any) -> Any:
        return t.contiguous()

    @staticmethod
    def data_ptr(t: Any) -> int:
        return t.data_ptr()

    @staticmethod
    def importable(t: Any, fp8: bool) -> Any:
        """What _ferry.import_tensor takes: the data without autograd (torch's __dlpack__ refuses a tensor that
        requires grad; ferry only reads or writes the memory), fp8 and bool tensors as their uint8 bytes (DLPack
        in torch 2.x before float8 support refuses float8, and torch 1.13 exports bool as uint8 anyway)."""
        torch = _torch()
        t = t.detach()
        if t.dtype is torch.bool or (fp8 and t.dtype is torch_fp8()):
            return t.view(torch.uint8)
        return t

    @staticmethod
    def wrap(exported: Any) -> Any:
        # The object, not a capsule: torch asks for what it reads (DLPack 1.x's versioned capsule in torch 2.x,
        # the unversioned one in 1.13) and, for a CUDA result, names its current stream.
        return _torch().utils.dlpack.from_dlpack(exported)

    @staticmethod
    def as_fp8(t: Any) -> Any:
        fp8 = torch_fp8()
        return t.view(fp8) if fp8 is not None else t

    @staticmethod
    def as_bool(t: Any) -> Any:
        return t.view(_torch().bool)

    @staticmethod
    def swap_last_two(t: Any) -> Any:
        """A view with the last two of three dimensions exchanged (DeepEP's column-major scales)."""
        return t.transpose(1, 2)

    @staticmethod
    def int32(values: Sequence[int], like: Any) -> Any:
        torch = _torch()
        return torch.tensor(values, dtype=torch.int32, device=like.device)

    @staticmethod
    def int_list(t: Any) -> List[int]:
        return [int(v) for v in t.tolist()]

    @staticmethod
    def equal(a: Any, b: Any) -> bool:
        return bool(_torch().equal(a, b))

    @staticmethod
    def first_difference(a: Any, b: Any) -> int:
        """The first row where two equally shaped tensors differ."""
        rows = (a != b).reshape(a.shape[0], -1).any(dim=1).nonzero()
        return int(rows[0].item()) if rows.numel() else -1


class NumpyFrame:
    """numpy arrays (CPU)."""

    name = "numpy"

    @staticmethod
    def owns(obj: Any) -> bool:
        numpy = _numpy()
        return numpy is not None and isinstance(obj, numpy.ndarray)

    @staticmethod
    def dtype_name(t: Any) -> str:
        return str(t.dtype)

    @staticmethod
    def device(t: Any) -> str:
        return "cpu"

    @staticmethod
    def is_cuda(t: Any) -> bool:
        return False

    @staticmethod
    def shape(t: Any) -> tuple:
        return tuple(t.shape)

    @staticmethod
    def is_contiguous(t: Any) -> bool:
        return bool(t.flags["C_CONTIGUOUS"])

    @staticmethod
    def contiguous(t: Any) -> Any:
        return _numpy().ascontiguousarray(t)

    @staticmethod
    def data_ptr(t: Any) -> int:
        return t.ctypes.data

    @staticmethod
    def importable(t: Any, fp8: bool) -> Any:
        numpy = _numpy()
        return t.view(numpy.uint8) if t.dtype == numpy.bool_ else t

    @staticmethod
    def wrap(exported: Any) -> Any:
        return _numpy().from_dlpack(exported)

    @staticmethod
    def as_fp8(t: Any) -> Any:
        return t

    @staticmethod
    def as_bool(t: Any) -> Any:
        return t.view(_numpy().bool_)

    @staticmethod
    def swap_last_two(t: Any) -> Any:
        return t.swapaxes(1, 2)

    @staticmethod
    def int32(values: Sequence[int], like: Any) -> Any:
        numpy = _numpy()
        return numpy.asarray(values, dtype=numpy.int32)

    @staticmethod
    def int_list(t: Any) -> List[int]:
        return [int(v) for v in t.tolist()]

    @staticmethod
    def equal(a: Any, b: Any) -> bool:
        return a.shape == b.shape and bool((a == b).all())

    @staticmethod
    def first_difference(a: Any, b: Any) -> int:
        rows = _numpy().nonzero((a != b).reshape(a.shape[0], -1).any(axis=1))[0]
        return int(rows[0]) if rows.size else -1


FRAMES = (TorchFrame, NumpyFrame)


def frame_of(obj: Any, name: str):
    """The framework of `obj`; ValueError naming `name` when it is neither a torch tensor nor a numpy array."""
    for frame in FRAMES:
        if frame.owns(obj):
            return frame
    raise ValueError(f"{name} must be a torch.Tensor or a numpy.ndarray, not {type(obj).__name__}")


def describe(frame, t: Any) -> str:
    """'[4, 128] bfloat16 on cpu', for error messages."""
    return f"{list(frame.shape(t))} {frame.dtype_name(t)} on {frame.device(t)}"


def check(frame, t: Any, name: str, dtypes: Sequence[str], ndim: int, rows: Optional[int] = None,
          cols: Optional[int] = None, cuda: bool = False) -> None:
    """ValueError naming `name` unless `t` is a tensor of `frame` with one of `dtypes`, `ndim` dimensions,
    the given rows / columns, on the Buffer's device, and contiguous."""
    if not frame.owns(t):
        raise ValueError(f"{name} must be a {frame.name} tensor like x, not {type(t).__name__}")
    if frame.dtype_name(t) not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(dtypes)}, not {describe(frame, t)}")
    shape = frame.shape(t)
    if len(shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimension{'s' if ndim > 1 else ''}, not {describe(frame, t)}")
    if rows is not None and shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, not {describe(frame, t)}")
    if cols is not None and shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, not {describe(frame, t)}")
    if frame.is_cuda(t) != cuda:
        where = "the GPU (a CUDA Buffer)" if cuda else "the host (a CPU Buffer)"
        raise ValueError(f"{name} is {describe(frame, t)} but this Buffer runs on {where}")
    if not frame.is_contiguous(t):
        raise ValueError(f"{name} {describe(frame, t)} is not contiguous: ferry reads its rows in place")


def take(frame, t: Any, name: str, fp8: bool = False, cuda: bool = False, stream: Optional[int] = None,
         writable: bool = False):
    """`t` as a _ferry.ImportedTensor (no copy). cuda: `t` is on the GPU and ferry's operation reads it on CUDA
    stream `stream` (an int; DLPack's stream handshake orders the producer's pending work before it).
    writable: ferry writes into `t` (a read-only tensor is refused)."""
    return _ferry.import_tensor(frame.importable(t, fp8), name, fp8, cuda, stream if cuda else None, writable)
