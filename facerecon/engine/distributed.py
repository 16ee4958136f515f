"""Process groups for ``facerecon train``: one process, ``--gpus N`` on one machine
(:func:`spawn`), several CPU processes (gloo), or several machines through ``torchrun``; and what
the processes of a group share (:func:`run_on_main`: computed by rank 0, handed to every rank).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
when they are present the process joins that group and ignores ``--gpus``' spawning.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar, cast

import torch
import torch.distributed as dist

from facerecon.errors import FaceReconError, InputError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (or another launcher) describes a process group."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def is_main_launch() -> bool:
    """Whether this process is (or, before its group forms, will be) rank 0 of its job."""
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0


def free_port() -> int:
    """A free TCP port on the loopback interface, for a single-machine rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_gpus(gpus: int) -> None:
    """Fail clearly when more GPUs are requested than this machine has."""
    if gpus < 0:
        raise InputError(f"--gpus {gpus}: must be 0 (CPU) or a positive number of GPUs")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > available:
        where = "no CUDA device is available" if available == 0 else f"only {available} CUDA device(s) are available"
        raise InputError(f"--gpus {gpus}: {where} (use --gpus 0 to train on the CPU)")


@contextlib.contextmanager
def process_group(rank: int, world_size: int, use_cuda: bool, local_rank: int | None = None) -> Iterator[DistInfo]:
    """Join (and on exit leave) the default process group; a no-op for a single process.

    NCCL on CUDA, gloo on the CPU. The rendezvous comes from ``MASTER_ADDR``/``MASTER_PORT``.
    """
    local_rank = rank if local_rank is None else local_rank
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size <= 1:
        yield DistInfo(0, 1, 0, device)
        return
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    try:
        yield DistInfo(rank, world_size, local_rank, device)
        # on a normal exit, every rank done before any tears its gloo or NCCL threads down: a
        # rank leaving while another is still in a collective aborts that one
        with contextlib.suppress(Exception):
            dist.barrier()
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank (picklable; the other ranks' ``obj`` is ignored)."""
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])  # rank 0's object, filled in by the broadcast


def run_on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` on rank 0, its result on every rank. A ``FaceReconError`` it raises is raised on
    every rank (so none waits for a result that will not come)."""
    result: Any = None
    if info.is_main:
        try:
            result = fn()
        except FaceReconError as exc:
            if not info.distributed:
                raise
            result = exc
    result = broadcast_object(result, info)
    if isinstance(result, FaceReconError):
        raise result
    return result


def spawn(fn: Callable[..., T], world: int, args: tuple) -> T:
    """``fn(rank, world, *args)`` in ``world`` new processes on this machine (rendezvous on a free
    loopback port); rank 0's result, or the ``FaceReconError`` rank 0 raised."""
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    ctx = mp.get_context("spawn")
    result_queue = ctx.SimpleQueue()
    mp.start_processes(_spawned, args=(fn, world, args, result_queue), nprocs=world, start_method="spawn")
    result = result_queue.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _spawned(rank: int, fn: Callable[..., Any], world: int, args: tuple, queue: Any) -> None:
    try:
        result = fn(rank, world, *args)
    except FaceReconError as exc:
        if rank == 0:
            queue.put(exc)
        raise
    if rank == 0:
        queue.put(result)  # a SimpleQueue: written to the pipe before put returns
    # The work is done and its files closed: leave without the interpreter's shutdown, in which a
    # native thread pool still running (gloo's, or a library's) aborts the process now and then
    # ("terminate called without an active exception"), and the parent would report a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
