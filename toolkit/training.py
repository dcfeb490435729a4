"""The built-in L step: supervised training with the LC penalty.

Covers the common case — a model, a DataLoader of ``(input, target)`` pairs, a
loss — so most users need no training code. It keeps its optimizer across L
steps and exposes ``state_dict()`` / ``load_state_dict()``, which the engine
checkpoints, so a resumed run continues exactly where it stopped. Any callable
``train_fn(model, penalty, step)`` can replace it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .engine import LStep, Penalty
from .progress import progress_bar

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SupervisedTrainer:
    """``train_fn`` for the LC engine: epochs of SGD/Adam on ``loss + penalty``."""

    def __init__(
        self,
        loader: Iterable,
        config: TrainConfig | None = None,
        loss_fn: Loss = F.cross_entropy,
        device: str | torch.device = "cpu",
        progress: bool = True,
        description: str = "L step",
    ) -> None:
        self.loader = loader
        self.config = config or TrainConfig()
        self.loss_fn = loss_fn
        self.device = torch.device(device)
        self.progress = progress
        self.description = description
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.optimizer is None:
            c = self.config
            params = [p for p in model.parameters() if p.requires_grad]
            if c.optimizer == "adam":
                self.optimizer = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
            else:
                self.optimizer = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                                 nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay)
            if self._pending_state is not None:
                self.optimizer.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.optimizer

    def __call__(self, model: nn.Module, penalty: Penalty, step: LStep) -> float:
        c = self.config
        optimizer = self._optimizer(model)
        for group in optimizer.param_groups:
            group["lr"] = c.lr * c.lr_decay**step.index
        epochs = c.first_epochs if (step.index == 0 and c.first_epochs is not None) else c.epochs
        total, count = 0.0, 0
        with progress_bar(total=epochs * _len(self.loader), desc=f"{self.description} {step.index + 1}", enabled=self.progress) as bar:
            for _ in range(epochs):
                for inputs, targets in self.loader:
                    inputs, targets = inputs.to(self.device), targets.to(self.device)
                    loss = self.loss_fn(model(inputs), targets)
                    objective = loss + penalty()
                    optimizer.zero_grad(set_to_none=True)
                    objective.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(targets)
                    count += len(targets)
                    bar.update(1)
        return total / max(count, 1)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        generator = getattr(self.loader, "generator", None)
        if isinstance(generator, torch.Generator):
            state["loader_generator"] = generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            else:
                self._pending_state = state["optimizer"]
        generator = getattr(self.loader, "generator", None)
        if "loader_generator" in state and isinstance(generator, torch.Generator):
            generator.set_state(state["loader_generator"])


def _len(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (an ``eval_fn`` for classifiers)."""
    was_training = model.training
    model.eval()
    correct, count = 0, 0
    for inputs, targets in loader:
        logits = model(inputs.to(device))
        correct += int((logits.argmax(dim=1) == targets.to(device)).sum())
        count += len(targets)
    model.train(was_training)
    return correct / max(count, 1)
