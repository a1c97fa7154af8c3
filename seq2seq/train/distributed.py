"""Data-parallel training on PyTorch's own engine: ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node=N experiments/translate.py ...`` starts N copies of an unchanged
script; each finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment and joins
the process group (gloo on CPU, NCCL on GPU). :class:`Dist` is what the rest of the code
sees: who this process is and the few collectives training needs. A plain ``python`` launch
gets the single-process :data:`SINGLE`, whose collectives do nothing.

How the trainer uses it (:mod:`seq2seq.train.trainer`): every rank plans the same epoch and
takes its own batch of each group of ``world`` consecutive batches; the loss terms are
normalised by their global counts, so N ranks make exactly the update one process makes on
the union of their batches; rank 0 decides when to stop and alone writes files and W&B.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from seq2seq.config import ConfigError
from seq2seq.train.faults import CollectiveTimeout

T = TypeVar("T")
SETUP_HOURS = 24  # how long the other ranks wait for rank 0 to prepare the data (main_first)
_setup_group: Any = None  # a gloo group with that timeout, made when the process group is joined


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, results, logs and W&B."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (its gradients are averaged over the ranks)."""
        if not self.active:
            return model
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum over the ranks of a small tensor (on this rank's device)."""
        if self.active:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list[T]) -> list[list[T]]:
        """Every rank's ``items``, in rank order, on every rank."""
        if not self.active:
            return [items]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, items)
        return out

    def shard(self, chunks: Sequence[T]) -> list[T]:
        """This rank's share of ``chunks``: chunk ``i`` goes to rank ``i % world``."""
        return list(chunks[self.rank::self.world])

    def collect(self, mine: list[T], n: int) -> list[T]:
        """Every rank's results for its :meth:`shard` of ``n`` chunks, back in chunk order, on every rank."""
        if not self.active:
            return mine
        per_rank = self.gather(mine)
        return [per_rank[i % self.world][i // self.world] for i in range(n)]

    def shard_map(self, chunks: Sequence[T], fn: Callable[[T], list[Any]]) -> list[Any]:
        """``fn`` over this rank's share of ``chunks``; all chunks' results, concatenated in chunk
        order, on every rank (validation decodes a shard per rank)."""
        results = self.collect([fn(chunk) for chunk in self.shard(chunks)], len(chunks))
        return [x for part in results for x in part]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Dist()


def current() -> Dist:
    """This process's :class:`Dist`: its place in torch's process group, or :data:`SINGLE`."""
    if not dist.is_initialized():
        return SINGLE
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def backend(device: str) -> str:
    """The process group's backends for a run on ``device``: gloo for CPU tensors, and NCCL for
    CUDA tensors on GPUs. Both are needed there: DDP averages gradients on the GPU (NCCL), while
    the trainer's bookkeeping (loss and token counts, stop decisions, validation results) shares
    small CPU tensors and Python objects, which NCCL cannot carry."""
    gpu = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    return "cpu:gloo,cuda:nccl" if gpu else "gloo"


def join(device: str = "auto", timeout_minutes: float = 5.0) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (once; a plain launch
    stays single). On GPUs each rank takes the device ``cuda:LOCAL_RANK`` (``train.device`` is
    ``auto`` or ``cuda`` then: one GPU named for every rank would be shared by all). A collective
    that some rank never reaches fails after ``timeout_minutes`` instead of hanging (the trainer
    then names the rank and the step)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.startswith("cuda:"):
            raise ConfigError(f"train.device={device} under torchrun: each process takes cuda:LOCAL_RANK; "
                             f"use train.device=cuda (or auto)")
        groups = backend(device)
        if "nccl" in groups:
            local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if local >= gpus:
                raise ConfigError(f"process {local} on this node has no GPU of its own: {gpus} GPUs; start at most "
                                  f"{gpus} processes per node (--nproc_per_node), or train on CPUs (train.device=cpu)")
            torch.cuda.set_device(local)
        dist.init_process_group(groups, timeout=timedelta(minutes=timeout_minutes))
        global _setup_group
        _setup_group = dist.new_group(backend="gloo", timeout=timedelta(hours=SETUP_HOURS))
        atexit.register(leave)
    return current()


def collective_failed(err: BaseException) -> bool:
    """Whether ``err`` is a collective that timed out or lost a peer: a DistError, or the plain
    RuntimeError that gloo raises (\"Timed out waiting ... for recv\", \"Connection closed by peer\")."""
    return isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(s in str(err) for s in ("gloo", "Timed out", "Connection closed")))


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (fetching data, training tokenizers into the run folder);
    the other ranks run it after, finding what it made. They wait up to ``SETUP_HOURS``, not
    ``train.collective_timeout``: preparing a big corpus once takes what it takes (a rank 0 that
    fails ends the job through torchrun instead)."""
    d = current()
    if d.active and not d.main:
        _wait_for_setup(d)
    yield
    if d.active and d.main:
        _wait_for_setup(d)


def _wait_for_setup(d: Dist) -> None:
    try:
        dist.barrier(group=_setup_group)
    except RuntimeError as err:
        if not collective_failed(err):
            raise
        raise CollectiveTimeout(f"rank {d.rank} of {d.world}: the ranks did not meet after rank 0 prepared the data "
                                f"(fetching, tokenizers, encoding) within {SETUP_HOURS} hours: {err}") from None


def leave(meet: bool = False) -> None:
    """Leave the process group (a no-op when not distributed). ``meet`` (a run that ended
    normally): first wait at a barrier until every rank is done; after an error the others may
    never come."""
    if not dist.is_initialized():
        return
    if meet:
        try:
            dist.barrier()
        except RuntimeError:  # a peer already gone: nothing left to wait for
            pass
    dist.destroy_process_group()


def end_rank(code: int) -> NoReturn:
    """End a data-parallel rank's process as multiprocessing ends its children: leave the group,
    run the exit handlers (W&B, run locks), flush, then ``os._exit``, which skips the
    interpreter's teardown.

    gloo's worker threads release a collective's tensors after the collective has returned, and
    that needs the GIL. A rank that went on to Python's teardown (a few milliseconds after its
    last collective, test perplexity's sum) killed such a thread mid-release: std::terminate,
    SIGABRT (a core dump showed the frames). Its torchrun agent then failed, and the other
    node's agent waited out its 300 s exit barrier: the two-node test's hang, under load."""
    leave(meet=code == 0)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
