"""How a Buffer joins its job through the caller's process group.

Rank 0 of the group opens a listening socket for ferry's bootstrap store (so the port is never free between
choosing and serving it) and draws a random secret and job id; one all_gather through the caller's
torch.distributed group (or mpi4py communicator) hands them, with every rank's host and its launcher's idea of
ranks per node, to all ranks. A job started by torchrun, srun, mpirun or `ferry launch` therefore needs
nothing beyond what it already has to call ``init_process_group``.

Ranks per node: the launcher's variables (LOCAL_WORLD_SIZE, FERRY_LOCAL_WORLD_SIZE, OMPI_..., SLURM_...) when
the group is the whole job, else the hosts' names (ranks of one host must be consecutive, as many on each).
"""

import os
import secrets
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _ferry

AllGather = Callable[[Any], List[Any]]


def group_collectives(group: Any, comm: Any) -> Tuple[int, int, AllGather, Optional[str]]:
    """(rank, size, all_gather_object, torch backend name or None) of a torch.distributed group or an mpi4py
    communicator (DeepEP's `group` and `comm` arguments)."""
    if group is not None:
        import torch.distributed as dist

        rank, size = group.rank(), group.size()

        def all_gather(obj: Any) -> List[Any]:
            gathered = [None] * size
            dist.all_gather_object(gathered, obj, group=group)
            return gathered

        try:
            backend = str(dist.get_backend(group))
        except (RuntimeError, ValueError):
            backend = None
        return rank, size, all_gather, backend
    if comm is not None:
        return comm.Get_rank(), comm.Get_size(), comm.allgather, None
    raise ValueError("a Buffer needs a group (torch.distributed) or a comm (mpi4py)")


def _launcher_shape() -> Dict[str, Any]:
    try:
        return _ferry.job_from_environment()
    except ValueError:  # variables of no launcher ferry knows, or incomplete: the hosts decide
        return {}


def _reachable_address(launcher: Dict[str, Any], one_host: bool) -> str:
    """The address rank 0's store listens on: reachable by every rank of the job."""
    if launcher.get("node_address"):  # ferry launch says where each node is (its namespace's address)
        return launcher["node_address"]
    if one_host:
        return "127.0.0.1"
    master = launcher.get("store_host") or os.environ.get("MASTER_ADDR")
    if master:
        # The local address this host uses towards the job's master (no packet is sent for a UDP connect).
        try:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect((master, 9))
                address = probe.getsockname()[0]
            finally:
                probe.close()
            if not address.startswith("127.") or master.startswith("127.") or master == "localhost":
                return address
        except OSError:
            pass
    return socket.gethostbyname(socket.gethostname())


def _ranks_per_node(size: int, views: List[Tuple[str, Optional[int]]]) -> int:
    launcher_sizes = {local for _, local in views}
    if len(launcher_sizes) == 1 and None not in launcher_sizes:
        local = launcher_sizes.pop()
        if size % local == 0:
            return local
    hosts = [host for host, _ in views]
    local = hosts.count(hosts[0])
    for start in range(0, size, local):
        node_hosts = set(hosts[start:start + local])
        if len(node_hosts) != 1 or size % local:
            raise ValueError(f"ranks {start}..{start + local - 1} of the group do not run on one host ({hosts}): "
                             f"ferry needs each node's ranks consecutive and as many on every node")
    return local


def job_for_group(group: Any, comm: Any) -> Tuple[Dict[str, Any], Optional[str]]:
    """The job description ferry's Runtime joins (see module docstring), and the group's torch backend."""
    rank, size, all_gather, backend = group_collectives(group, comm)
    launcher = _launcher_shape()
    whole_job = launcher.get("world_size") == size and launcher.get("rank") == rank
    listener = None
    offer = None
    if rank == 0:
        one_node = whole_job and launcher.get("local_size") == size
        address = _reachable_address(launcher if whole_job else {}, one_host=one_node or size == 1)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((address, 0))
        listener.listen(128)
        offer = {"store_host": address, "store_port": listener.getsockname()[1], "secret": secrets.token_hex(32),
                 "job_id": f"py-{os.getpid()}-{secrets.token_hex(4)}"}
    # One round: every rank's host and launcher view, and rank 0's store.
    views = all_gather((socket.gethostname(), launcher.get("local_size") if whole_job else None, offer))
    store = views[0][2]
    local = _ranks_per_node(size, [(host, local) for host, local, _ in views])
    job = {
        "launcher": launcher.get("launcher", "torchrun") if whole_job else "torchrun",
        "rank": rank,
        "world_size": size,
        "local_rank": rank % local,
        "local_size": local,
        "store_host": store["store_host"],
        "store_port": store["store_port"],
        "store_fd": listener.detach() if listener is not None else -1,
        "secret": store["secret"],
        "job_id": store["job_id"],
        "node_address": launcher.get("node_address", "") if whole_job else "",
    }
    return job, backend
