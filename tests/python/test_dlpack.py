"""The DLPack exchange as torch 2.x and numpy 2.x speak it, proven with any torch: a producer written here in
ctypes (FakeProducer) hands ferry versioned and unversioned capsules with the dtype, device, version and
flags a test chooses, and records how ferry asked (max_version, the CUDA stream handshake); ferry's own
results are asked for both kinds. Where the machine's torch has the real thing (torch 2.x, CUDA), the same is
checked on real tensors."""

import ctypes
import gc
import inspect

import numpy
import pytest
import torch

import ferry
from ferry import _ferry
from ferry._tensors import TorchFrame, take

# ---- the DLPack ABI, for the fake producer ----


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


CAPSULE_NAMES = {False: b"dltensor", True: b"dltensor_versioned"}  # live as long as the module: capsules keep them
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]

CPU, CUDA = (1, 0), (2, 0)
INT, UINT, FLOAT, FLOAT8_E4M3FN, FLOAT8_E5M2 = 0, 1, 2, 10, 12


class FakeProducer:
    """An object with __dlpack__ / __dlpack_device__ over a numpy array's memory, as a DLPack 1.x producer
    (versioned: answers max_version >= (1, 0) with a "dltensor_versioned" capsule of `version` and `flags`) or
    an older one (knows_max_version=False: a TypeError for the keyword, as torch 1.13 and numpy 1.x give).
    The device is only declared: ferry does not touch the memory when it imports. Records every call's
    keywords in .calls and counts the deleter's calls in .deleted."""

    def __init__(self, array, code, bits, device=CPU, versioned=True, version=(1, 1), flags=0,
                 knows_max_version=True):
        self.array = numpy.ascontiguousarray(array)
        self.code, self.bits, self.device = code, bits, device
        self.versioned, self.version, self.flags = versioned, version, flags
        self.knows_max_version = knows_max_version
        self.calls = []
        self.deleted = 0
        self._alive = []  # the structures and the deleter callback of every capsule handed out
        self._deleter = DELETER(self._delete)

    def _delete(self, _):
        self.deleted += 1

    def __dlpack__(self, **kwargs):
        self.calls.append(kwargs)
        if "max_version" in kwargs and not self.knows_max_version:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        asked = kwargs.get("max_version")
        versioned = self.versioned and asked is not None and asked[0] >= 1
        shape = (ctypes.c_int64 * self.array.ndim)(*self.array.shape)
        tensor = DLTensor(self.array.ctypes.data, DLDevice(*self.device), self.array.ndim,
                          DLDataType(self.code, self.bits, 1), shape, None, 0)
        if versioned:
            managed = DLManagedTensorVersioned(DLPackVersion(*self.version), None, self._deleter, self.flags, tensor)
        else:
            managed = DLManagedTensor(tensor, None, self._deleter)
        self._alive.append((shape, managed))
        # No capsule destructor: a capsule ferry leaves unconsumed is simply never released (the test's memory).
        return _new_capsule(ctypes.addressof(managed), CAPSULE_NAMES[versioned], None)

    def __dlpack_device__(self):
        return self.device


def released(producer):
    """The deleter's calls once ferry's ImportedTensor objects are gone."""
    gc.collect()
    return producer.deleted


# ---- in: what ferry asks for and what it reads ----


def test_ferry_asks_for_a_versioned_capsule_and_reads_it():
    producer = FakeProducer(numpy.zeros((3, 4), numpy.float32), FLOAT, 32)
    imported = _ferry.import_tensor(producer, "x")
    assert producer.calls == [{"max_version": (1, 1)}]  # a CPU tensor: no stream
    assert imported.dlpack_version == (1, 1) and imported.shape == (3, 4) and imported.dtype == "fp32"
    assert released(producer) == 0
    del imported
    assert released(producer) == 1


def test_a_producer_that_predates_max_version_is_asked_again_without_it():
    producer = FakeProducer(numpy.zeros(5, numpy.int64), INT, 64, knows_max_version=False)
    imported = _ferry.import_tensor(producer, "topk_idx")
    assert producer.calls == [{"max_version": (1, 1)}, {}]
    assert imported.dlpack_version is None and imported.dtype == "int64"
    del imported
    assert released(producer) == 1


def test_any_dlpack_1_minor_version_is_read_and_another_major_refused_by_name():
    newer = FakeProducer(numpy.zeros((2, 2), numpy.int32), INT, 32, version=(1, 3))
    assert _ferry.import_tensor(newer, "counts").dlpack_version == (1, 3)
    future = FakeProducer(numpy.zeros((2, 2), numpy.int32), INT, 32, version=(2, 0))
    with pytest.raises(ValueError, match=r"counts comes in a DLPack 2\.0 capsule: ferry reads DLPack 1\.x"):
        _ferry.import_tensor(future, "counts")
    assert released(future) == 0  # not consumed: the producer's to release


def test_float8_e4m3fn_travels_as_its_dlpack_type_and_other_float8s_are_refused():
    e4m3 = FakeProducer(numpy.zeros((2, 128), numpy.uint8), FLOAT8_E4M3FN, 8)
    assert _ferry.import_tensor(e4m3, "x").dtype == "fp8_e4m3"
    e5m2 = FakeProducer(numpy.zeros((2, 128), numpy.uint8), FLOAT8_E5M2, 8)
    with pytest.raises(ValueError, match="x has DLPack type code 12 with 8 bits, which ferry does not take"):
        _ferry.import_tensor(e5m2, "x")
    assert released(e5m2) == 1  # consumed, refused, released


def test_cuda_tensors_are_asked_for_with_the_stream_ferry_reads_them_on():
    producer = FakeProducer(numpy.zeros((4, 8), numpy.float32), FLOAT, 32, device=CUDA)
    imported = _ferry.import_tensor(producer, "x", cuda=True, stream=0xABC0)
    assert imported.device == CUDA
    assert producer.calls[-1] == {"stream": 0xABC0, "max_version": (1, 1)}
    _ferry.import_tensor(producer, "x", cuda=True, stream=0)  # torch's legacy default stream is DLPack's 1
    assert producer.calls[-1]["stream"] == 1
    _ferry.import_tensor(producer, "x", cuda=True)  # no stream: no synchronisation asked
    assert producer.calls[-1]["stream"] == -1
    old = FakeProducer(numpy.zeros(3, numpy.float32), FLOAT, 32, device=CUDA, knows_max_version=False)
    _ferry.import_tensor(old, "x", cuda=True, stream=7)
    assert old.calls == [{"stream": 7, "max_version": (1, 1)}, {"stream": 7}]


def test_the_buffer_names_its_stream_unless_previous_event_orders_the_inputs():
    assert ferry.Buffer._handshake(None, 0xABC0) == 0xABC0
    assert ferry.Buffer._handshake(ferry.EventOverlap(None), 0xABC0) == 0xABC0
    # previous_event: the operation waits for that event only (DeepEP's comm stream), so no synchronisation.
    assert ferry.Buffer._handshake(ferry.EventOverlap(ferry.EventHandle()), 0xABC0) is None


def test_a_read_only_tensor_is_refused_where_ferry_writes():
    producer = FakeProducer(numpy.zeros(4, numpy.int32), INT, 32, flags=1)
    assert _ferry.import_tensor(producer, "mask_status").dtype == "int32"  # read: fine
    with pytest.raises(ValueError, match="mask_status is read-only .* but ferry writes into it"):
        _ferry.import_tensor(producer, "mask_status", writable=True)
    assert released(producer) == 2


# ---- out: ferry's results as either capsule ----


def exported_result():
    """One of ferry's results as it hands it out (an Exported): a one-rank layout's is_token_in_rank."""
    b = ferry.Buffer(None)
    topk = torch.tensor([[0, 1], [1, -1]])
    layout = b.runtime.layout(take(TorchFrame, topk, "topk_idx"), 2)
    return b, layout.is_token_in_rank()


def test_ferry_hands_out_the_capsule_the_consumer_asks_for():
    b, exported = exported_result()
    versioned = exported.__dlpack__(max_version=(1, 0), stream=None)
    assert _capsule_valid(versioned, b"dltensor_versioned")
    back = _ferry.import_tensor(versioned, "back")
    assert back.dlpack_version == (1, 1) and back.shape == (2, 1) and back.dtype == "uint8"
    legacy = exported.__dlpack__()
    assert _capsule_valid(legacy, b"dltensor")
    assert _ferry.import_tensor(legacy, "back").dlpack_version is None
    assert _capsule_valid(exported.__dlpack__(max_version=(0, 8)), b"dltensor")  # asked for pre-1.0: unversioned
    assert torch.utils.dlpack.from_dlpack(exported).tolist() == [[1], [1]]  # torch takes the object itself
    with pytest.raises(BufferError, match="copy=True is not supported"):
        exported.__dlpack__(max_version=(1, 0), copy=True)
    with pytest.raises(BufferError, match=r"lives on DLPack device \(1, 0\)"):
        exported.__dlpack__(max_version=(1, 0), dl_device=CUDA)
    unconsumed = exported.__dlpack__(max_version=(1, 0))
    del unconsumed  # its destructor releases ferry's reference
    b._close()


# ---- the real thing, where this torch has it ----


def torch_knows_max_version():
    return "max_version" in inspect.signature(torch.Tensor.__dlpack__).parameters


def test_this_torch_hands_ferry_the_capsule_it_knows():
    imported = take(TorchFrame, torch.zeros(2, 3), "x")
    assert imported.shape == (2, 3)
    if torch_knows_max_version():
        assert imported.dlpack_version is not None and imported.dlpack_version[0] == 1
    else:
        assert imported.dlpack_version is None  # torch 1.13: the unversioned capsule


@pytest.mark.skipif(getattr(torch, "float8_e4m3fn", None) is None, reason="this torch has no float8_e4m3fn")
def test_torch_float8_e4m3fn_rows_round_trip_through_a_one_rank_buffer():
    b = ferry.Buffer(None)
    topk = torch.tensor([[0, 1], [1, -1]])
    per_rank, _, per_expert, in_rank, _ = b.get_dispatch_layout(topk, 2)
    data = torch.randint(0, 0x7F, (2, 128), dtype=torch.uint8).view(torch.float8_e4m3fn)
    (recv, scales), *_ = b.dispatch((data, torch.ones(2, 1)), num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
                                    num_tokens_per_expert=per_expert, topk_idx=topk, topk_weights=torch.ones(2, 2))
    assert recv.dtype == torch.float8_e4m3fn
    assert torch.equal(recv.view(torch.uint8), data.view(torch.uint8))
    b._close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU for torch here")
def test_cuda_tensors_of_this_torch_enter_ferry_on_a_stream():
    side = torch.cuda.Stream()
    t = torch.arange(12, device="cuda", dtype=torch.float32).reshape(3, 4)
    imported = take(TorchFrame, t, "x", cuda=True, stream=side.cuda_stream)
    assert imported.device == (2, torch.cuda.current_device()) and imported.shape == (3, 4)
    default = take(TorchFrame, t, "x", cuda=True, stream=torch.cuda.current_stream().cuda_stream)
    assert default.dtype == "fp32"
    if torch_knows_max_version():
        assert imported.dlpack_version is not None
