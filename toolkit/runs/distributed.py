"""Data-parallel L steps under ``torch.distributed`` (torchrun, or a process group the caller set up).

Every rank holds the whole model and trains on its shard of the data:

* the built-in trainer's loader is rebuilt with a :class:`DistributedSampler`
  (same dataset, batch size per rank, seeded by the config's ``seed``; its
  epoch is set before every epoch), so the global batch is
  ``world_size × batch_size``;
* the L step runs through :class:`DistributedDataParallel`, which wraps the
  very module the engine's tasks point into: the penalty ``μ/2‖w − Δ(θ)‖²`` is
  computed from the same ``nn.Parameter`` objects, identically on every rank,
  and DDP averages loss and penalty gradients together;
* the C step runs on rank 0 only; θ (and the step's history row) is broadcast,
  so every rank holds identical θ and Δ(θ);
* only rank 0 writes the run directory: checkpoints, history, reports and the
  saved model. Every rank resumes from the same checkpoint.

Objects cross ranks as JSON plus raw tensors (:func:`lcpress.core.tree.split_tensors`),
never pickled. Outside a process group every helper here is a no-op, so the
single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from lcpress.core.engine import LCEngine, LStep, Penalty
from lcpress.errors import ConfigError, LcpressError
from lcpress.core.tree import join_tensors, split_tensors

T = TypeVar("T")


# ------------------------------------------------------------------ ranks
def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


#: How long a rank waits for the others in one collective. Ranks other than 0 wait while rank 0 runs a C step,
#: which can take many minutes when a latency model measures its candidates for the first time (or measured
#: sensitivity evaluates them); torch's default (30 minutes, 10 under NCCL) would end such a run. A rank that
#: fails says so to the others at once, so a long wait does not hide failures.
WAIT = datetime.timedelta(hours=6)


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment; True if this call created it.

    gloo for CPU runs, nccl when ``device`` is CUDA (each rank then uses
    ``cuda:LOCAL_RANK``). Does nothing outside torchrun or when a group exists.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise LcpressError("this torch build has no torch.distributed; run lcpress without torchrun")
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use device: cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=WAIT)
    return True


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[None]:
    """:func:`init_from_env` for the length of a command; the group it created is destroyed after."""
    created = init_from_env(device)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def local_device(device: str) -> torch.device:
    """The device of this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` under a process group."""
    if active() and device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device(device)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. trains and caches a model); the others follow once it is done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# -------------------------------------------------------------- transfers
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_bytes(data: bytes | None) -> bytes:
    device = _comm_device()
    size = torch.tensor([0 if data is None else len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.empty(int(size), dtype=torch.uint8, device=device)
    if data is not None:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy())


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` (tensors, dicts, lists and JSON values) on every rank; tensors come back on the CPU."""
    if not active():
        return obj
    tensors: dict[str, torch.Tensor] = {}
    header = None
    if is_main():
        doc = split_tensors(obj, tensors, "obj")
        specs = {name: [list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in tensors.items()}
        header = json.dumps({"doc": doc, "specs": specs}).encode()
    received = json.loads(_broadcast_bytes(header))
    device = _comm_device()
    for name in sorted(received["specs"]):
        shape, dtype = received["specs"][name]
        buffer = tensors[name].to(device) if is_main() else torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        dist.broadcast(buffer, src=0)
        tensors[name] = buffer.cpu()
    return obj if is_main() else join_tensors(received["doc"], tensors)


def on_main(fn: Callable[[], T], everywhere: bool = False) -> T:
    """``fn()`` on rank 0 (on every rank with ``everywhere``); every rank gets rank 0's result.

    If rank 0 raises, the others raise an :class:`LcpressError` with its
    message instead of waiting for a result that will never come. Outside a
    process group this is just ``fn()``.
    """
    if not active():
        return fn()
    result, failure = None, None
    if is_main() or everywhere:
        try:
            result = fn()
        except Exception as exc:  # carried to the other ranks below, then re-raised
            failure = exc
    outcome = broadcast({"error": None if failure is None else f"{type(failure).__name__}: {failure}",
                         "result": result if is_main() and failure is None else None})
    if failure is not None:
        raise failure
    if outcome["error"] is not None:
        raise LcpressError(f"rank 0 failed: {outcome['error']}")
    return result if is_main() else outcome["result"]


# ------------------------------------------------------------- the L step
def shard_loader(loader: Any, seed: int) -> Any:
    """The train loader of this rank: the same dataset through a seeded :class:`DistributedSampler`."""
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
    from torch.utils.data.distributed import DistributedSampler

    if not active():
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise ConfigError(
            "under torch.distributed the built-in trainer shards a torch DataLoader with a batch_size over a "
            f"map-style dataset, not a {type(loader).__name__}; pass such a loader, or a train_fn that shards "
            "its own data (torch.utils.data.DistributedSampler)"
        )
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ConfigError(
            f"under torch.distributed the train loader's sampler ({type(loader.sampler).__name__}) cannot be "
            "sharded; give a DistributedSampler yourself, or a loader with shuffle=True/False"
        )
    sampler = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory)


class DataParallelTrainFn:
    """A ``train_fn`` run on a DistributedDataParallel wrapper of the model.

    The wrapper shares the module's parameters, so the penalty and the
    engine's tasks keep pointing at the parameters being trained. The loss it
    returns is the mean over ranks. Every other attribute (``state_dict``,
    ``load_state_dict`` of the built-in trainer) is the wrapped function's.
    """

    def __init__(self, train_fn: Callable[[nn.Module, Penalty, LStep], Any], model: nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.train_fn = train_fn
        device = next(model.parameters()).device
        self.ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def __call__(self, model: nn.Module, penalty: Penalty, step: LStep) -> float | None:
        self.ddp.train(model.training)
        loss = self.train_fn(self.ddp, penalty, step)
        if loss is None:
            return None
        total = torch.tensor([float(loss)], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(total)
        return float(total) / world_size()

    def __getattr__(self, name: str) -> Any:
        if name == "train_fn":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.train_fn, name)


def data_parallel(train_fn: Any, model: nn.Module) -> Any:
    """``train_fn`` made data-parallel inside a process group; unchanged otherwise (or when None)."""
    return DataParallelTrainFn(train_fn, model) if active() and train_fn is not None else train_fn


# ------------------------------------------------------------- the engine
class DistributedLCEngine(LCEngine):
    """The LC engine with the C step on rank 0 and θ broadcast to every rank.

    Ranks other than 0 write nothing (no checkpointer, no history file, no
    progress) and price nothing: each step's history row is rank 0's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not is_main():
            self.checkpointer, self.history_csv, self.progress, self.report_costs = None, None, False, {}

    def c_step(self, k: int, mu: float) -> None:
        def compress() -> list[Any]:
            super(DistributedLCEngine, self).c_step(k, mu)
            return [None if s is None else {"tensors": s.tensors, "meta": s.meta} for s in self.states]

        states = on_main(compress)
        if not is_main():
            from lcpress.core.scheme import State

            device = next(self.model.parameters()).device
            self.states = [None if s is None else State(s["tensors"], s["meta"]).to(device) for s in states]

    def _finish_step(self, k: int, mu: float, loss: float | None, seconds: float) -> dict[str, Any]:
        row = on_main(lambda: super(DistributedLCEngine, self)._finish_step(k, mu, loss, seconds), everywhere=True)
        self.history[-1] = row
        return row
