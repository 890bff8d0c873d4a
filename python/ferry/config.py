"""DeepEP's per-call performance ``Config`` on ferry, and ferry's own Buffer settings (``FerryConfig``).

DeepEP's Config names an SM budget and chunk sizes. On ferry it maps onto the per-call part of ferry's Config:

    num_sms                            -> num_sms (even, at most the Buffer's; channels = num_sms / 2)
    num_max_nvl_chunked_send_tokens    -> nvl_chunk   (capped at the Buffer's nvl_ring_slots)
    num_max_rdma_chunked_send_tokens   -> rdma_chunk  (capped at the Buffer's rdma_ring_slots)
    num_max_*_chunked_recv_tokens      -> not per call: ferry's ring sizes are fixed when the Buffer is built
                                          (FerryConfig.nvl_ring_slots / rdma_ring_slots)

Chunks change speed only: ferry's results are the same, bit for bit, whatever the config.
"""

from typing import Dict, Optional, Tuple, Union
import json
import os

from ._ferry import FerryConfig, buffer_size_hint

#: DeepEP's nodes hold this many ranks (NVLink peers); its size hints count nodes this way.
DEEPEP_RANKS_PER_NODE = 8


class Config:
    """DeepEP's ``Config(num_sms, num_max_nvl_chunked_send_tokens, num_max_nvl_chunked_recv_tokens,
    num_max_rdma_chunked_send_tokens, num_max_rdma_chunked_recv_tokens)``, with DeepEP's defaults and checks
    (ValueError where DeepEP asserts). See the module docstring for what each field means on ferry."""

    def __init__(self, num_sms: int = 20, num_max_nvl_chunked_send_tokens: int = 6,
                 num_max_nvl_chunked_recv_tokens: int = 256, num_max_rdma_chunked_send_tokens: int = 6,
                 num_max_rdma_chunked_recv_tokens: int = 256) -> None:
        if num_sms < 0:
            raise ValueError(f"Config: num_sms must be >= 0, not {num_sms}")
        if num_max_nvl_chunked_send_tokens <= 0 or num_max_nvl_chunked_recv_tokens <= 0:
            raise ValueError("Config: the NVLink chunk sizes must be > 0")
        if num_max_nvl_chunked_send_tokens >= num_max_nvl_chunked_recv_tokens:
            raise ValueError("Config: num_max_nvl_chunked_send_tokens must be < num_max_nvl_chunked_recv_tokens")
        if num_max_rdma_chunked_send_tokens <= 0 or num_max_rdma_chunked_recv_tokens <= 0:
            raise ValueError("Config: the RDMA chunk sizes must be > 0")
        # As DeepEP: the RDMA receive size is rounded up to a multiple of the send chunk.
        send = num_max_rdma_chunked_send_tokens
        recv = -(-num_max_rdma_chunked_recv_tokens // send) * send
        if send >= recv or send > recv // 2:
            raise ValueError("Config: num_max_rdma_chunked_send_tokens must be at most half of "
                             "num_max_rdma_chunked_recv_tokens")
        self.num_sms = num_sms
        self.num_max_nvl_chunked_send_tokens = num_max_nvl_chunked_send_tokens
        self.num_max_nvl_chunked_recv_tokens = num_max_nvl_chunked_recv_tokens
        self.num_max_rdma_chunked_send_tokens = send
        self.num_max_rdma_chunked_recv_tokens = recv
        # Set by Buffer.get_dispatch_config / get_combine_config: "the Buffer's own settings".
        self._buffer_defaults = False

    def _key(self) -> Tuple[int, int, int]:
        return (self.num_sms, self.num_max_nvl_chunked_send_tokens, self.num_max_rdma_chunked_send_tokens)

    def get_nvl_buffer_size_hint(self, hidden_bytes: int, num_ranks: int) -> int:
        """Bytes ferry registers per rank for rows of `hidden_bytes` (bf16: 2 x hidden) on `num_ranks` ranks,
        counted as DeepEP counts nodes (8 ranks each beyond 8). ferry registers one buffer per rank for both
        paths, so this is the whole of it and get_rdma_buffer_size_hint is 0. ferry.Buffer sizes its buffer
        from its FerryConfig, not from these numbers."""
        num_nodes, local_size = deepep_shape(num_ranks)
        config = FerryConfig()
        config.num_sms = max(2, self.num_sms - self.num_sms % 2)
        config.max_hidden = max(1, -(-hidden_bytes // 2))
        return buffer_size_hint(config, num_nodes, local_size)

    def get_rdma_buffer_size_hint(self, hidden_bytes: int, num_ranks: int) -> int:
        """0: ferry's one registered buffer is counted by get_nvl_buffer_size_hint."""
        return 0

    def __repr__(self) -> str:
        return (f"Config({self.num_sms}, {self.num_max_nvl_chunked_send_tokens}, "
                f"{self.num_max_nvl_chunked_recv_tokens}, {self.num_max_rdma_chunked_send_tokens}, "
                f"{self.num_max_rdma_chunked_recv_tokens})")


def deepep_shape(num_ranks: int) -> Tuple[int, int]:
    """(nodes, ranks per node) as DeepEP reads a rank count."""
    if num_ranks <= DEEPEP_RANKS_PER_NODE:
        return 1, num_ranks
    if num_ranks % DEEPEP_RANKS_PER_NODE:
        raise ValueError(f"{num_ranks} ranks: DeepEP's size hints need a multiple of {DEEPEP_RANKS_PER_NODE} "
                         f"beyond {DEEPEP_RANKS_PER_NODE}")
    return num_ranks // DEEPEP_RANKS_PER_NODE, DEEPEP_RANKS_PER_NODE


FerryConfigLike = Union[None, FerryConfig, Dict, str, "os.PathLike"]


def engine_config(given: FerryConfigLike, num_sms: int) -> FerryConfig:
    """The FerryConfig a Buffer is built with: `given` (a FerryConfig, a dict of its fields, or the path of a
    JSON file such as `ferry bench dispatch --sweep --save-config` writes), else ferry's defaults with
    Buffer.num_sms."""
    if isinstance(given, FerryConfig):
        return FerryConfig.from_json(given.to_json())
    if given is None:
        config = FerryConfig()
        config.num_sms = num_sms
        return config
    if isinstance(given, dict):
        fields = dict(given)
        fields.setdefault("num_sms", num_sms)
        return FerryConfig.from_json(json.dumps(fields))
    if isinstance(given, (str, os.PathLike)):
        return FerryConfig.load(os.fspath(given))
    raise ValueError(f"ferry_config must be a FerryConfig, a dict or a JSON file path, not {type(given).__name__}")


def call_config(config: Optional[Config], buffer: FerryConfig, cache: Dict) -> Optional[FerryConfig]:
    """The per-call FerryConfig for DeepEP's `config` argument (None: the Buffer's own settings)."""
    if config is None:
        return None
    if not isinstance(config, Config):
        raise ValueError(f"config must be a ferry.Config (DeepEP's Config), not {type(config).__name__}")
    if config._buffer_defaults and config.num_sms == buffer.num_sms:
        return None
    key = config._key()
    found = cache.get(key)
    if found is not None:
        return found
    if config.num_sms < 2 or config.num_sms % 2 or config.num_sms > buffer.num_sms:
        raise ValueError(f"Config.num_sms = {config.num_sms}: ferry needs an even count from 2 to the Buffer's "
                         f"{buffer.num_sms} (the buffer is sized when it is built: Buffer.set_num_sms before "
                         f"building it, or ferry_config={{'num_sms': ...}})")
    call = FerryConfig.from_json(buffer.to_json())
    call.num_sms = config.num_sms
    call.nvl_chunk = min(config.num_max_nvl_chunked_send_tokens, buffer.nvl_ring_slots)
    call.rdma_chunk = min(config.num_max_rdma_chunked_send_tokens, buffer.rdma_ring_slots)
    cache[key] = call
    return call


def buffer_default_config(num_sms: int) -> Config:
    """What Buffer.get_dispatch_config / get_combine_config return: ferry's default chunks in DeepEP's terms,
    marked to mean "the Buffer's own settings" (a Buffer built from a tuned FerryConfig keeps its chunks)."""
    defaults = FerryConfig()
    config = Config(num_sms, defaults.nvl_chunk, defaults.nvl_ring_slots, defaults.rdma_chunk,
                    defaults.rdma_ring_slots)
    config._buffer_defaults = True
    return config
