"""The built-in L step: supervised training with the LC penalty.

Covers the common case — a model, a DataLoader of ``(input, target)`` pairs, a
loss — so most users need no training code. Inputs may be tensors, or dicts of
tensors (tokenized text for Hugging Face models), which are passed as keyword
arguments; targets are class labels (cross-entropy, accuracy) or vectors
(MSE / cosine loss and cosine-similarity metric, for distilling embeddings). It keeps its optimizer across L
steps and exposes ``state_dict()`` / ``load_state_dict()``, which the engine
checkpoints, so a resumed run continues exactly where it stopped. Any callable
``train_fn(model, penalty, step)`` can replace it.
"""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from lcpress.config import TrainConfig
from lcpress.errors import LcpressError
from lcpress.core.engine import LStep, Penalty
from lcpress.core.schedule import FALLBACK_MU0
from lcpress.core.surgery import call_model, in_mode
from lcpress.progress import progress_bar
from lcpress.runs.batches import batches

log = logging.getLogger("lcpress")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _same_shape(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` in ``output``'s shape: a regression's (N,) targets against (N, 1) outputs lose the trailing 1;
    any other mismatch is refused, as torch would broadcast it (to (N, N)) and train on the wrong error."""
    if target.shape == output.shape:
        return target
    if output.dim() == target.dim() + 1 and output.shape[-1] == 1 and output.shape[:-1] == target.shape:
        return target.unsqueeze(-1)
    raise LcpressError(f"train.loss {loss}: the model outputs {tuple(output.shape)} but the targets are "
                       f"{tuple(target.shape)}; give targets of the output's shape (or pass your own train_fn)")


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, refusing targets of another shape (which torch would broadcast)."""
    return F.mse_loss(output, _same_shape("mse", output, target.to(output.dtype)))


def cosine_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − cos(output, target), averaged over the batch (scale-free, for embeddings)."""
    return (1 - F.cosine_similarity(output, _same_shape("cosine", output, target), dim=-1)).mean()


def class_scores(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, target)`` with the classes in dimension 1, as torch's cross-entropy takes them.

    A language model's logits put the classes last, ``(batch, tokens, vocabulary)`` against targets of shape
    ``(batch, tokens)``: those are flattened to one row per token. Other shapes (``(batch, classes)``, a
    segmentation's ``(batch, classes, h, w)``) are torch's layout already.
    """
    if output.dim() > 2 and tuple(output.shape[:-1]) == tuple(target.shape):
        return output.flatten(0, -2), target.flatten()
    return output, target


def class_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over classes in either layout (:func:`class_scores`); targets of -100 are ignored."""
    return F.cross_entropy(*class_scores(output, target))


#: The losses ``train.loss`` names.
LOSSES: dict[str, Loss] = {"cross_entropy": class_cross_entropy, "mse": mse_loss, "cosine": cosine_loss}


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors of a dict/tuple/list, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):  # a dict, or a tokenizer's BatchEncoding (a UserDict)
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def fixed_batches(loader: Any) -> Iterable:
    """A fixed, representative sample of what the loader yields, without drawing from its shuffling generator.

    BatchNorm re-estimation, ``error: output`` moments and ``mu0: auto`` read a few batches. They must be
    the same at every LC step (and after a resume), must not advance the loader's generator (which would change
    the L steps' data order), and must be a fair sample: a dataset stored sorted by class (an ``ImageFolder``)
    read from its start holds only the first classes. So a DataLoader is read through a twin over the same
    dataset that visits the indices its sampler would yield (a ``SubsetRandomSampler``'s subset, never a
    held-out split) in one fixed random order, with its batch size, collate function and ``drop_last``.
    """
    if not isinstance(loader, DataLoader) or loader.batch_size is None or isinstance(loader.dataset, IterableDataset):
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=_fixed_order(loader),
                      collate_fn=loader.collate_fn, drop_last=loader.drop_last, num_workers=0)


def _fixed_order(loader: DataLoader) -> list[int]:
    """The indices the loader's sampler draws from, in an order fixed by a seed of its own."""
    sampler = loader.sampler
    if isinstance(sampler, SequentialSampler) or (isinstance(sampler, RandomSampler) and not sampler.replacement
                                                  and sampler.num_samples == len(loader.dataset)):
        population = list(range(len(loader.dataset)))
    elif isinstance(getattr(sampler, "indices", None), Sequence):  # SubsetRandomSampler, SubsetSequentialSampler
        population = sorted(int(i) for i in sampler.indices)
    else:  # any other sampler (weighted, distributed, a user's): what a copy of it draws, the loader's own untouched
        with torch.random.fork_rng(devices=[]):
            population = sorted(int(i) for i in copy.deepcopy(sampler))
    order = torch.randperm(len(population), generator=torch.Generator().manual_seed(0))
    return [population[i] for i in order.tolist()]


def gradient_norm(model: nn.Module, params: list[nn.Parameter], loader: Iterable, loss_fn: Loss,
                  batches: int = 8, device: str | torch.device = "cpu") -> float:
    """‖∇‖ over ``params`` of the mean training loss on the first ``batches`` batches (in a fixed order).

    What ``mu0: auto`` measures at the directly compressed weights: the pull
    the loss exerts against the penalty. The model's gradients and the global
    RNG are left as they were.
    """
    grads = [torch.zeros_like(p) for p in params]
    count = 0
    with in_mode(model, training=True), torch.random.fork_rng(devices=[]):
        for batch in itertools.islice(fixed_batches(loader), batches):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor)):
                log.warning("schedule.mu0 is 'auto' but the training batches it is measured on hold no targets (a "
                            "%s, not an (inputs, targets) pair): starting at μ0 = %g; give calibration= pairs, or "
                            "set schedule.mu0", type(batch).__name__, FALLBACK_MU0)
                break
            inputs, targets = batch
            loss = loss_fn(forward(model, to_device(inputs, device)), targets.to(device))
            for g, piece in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                if piece is not None:
                    g += piece.detach()
            count += 1
    if count == 0:
        return float("nan")  # μ0 falls back to FALLBACK_MU0
    return float(torch.sqrt(sum(torch.sum((g / count).double() ** 2) for g in grads)))


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)`` as the tensor the built-in losses and metrics compare with the targets.

    A dict of inputs is passed as keyword arguments (Hugging Face style). A
    Hugging Face output object gives its ``logits``; a tuple its first element
    (the main output, by the convention of ``return_dict=False`` and of
    auxiliary-head classifiers). Anything else is named rather than guessed.
    """
    out = call_model(model, inputs)
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    fields = f" (fields: {', '.join(map(str, list(out.keys())[:6]))})" if hasattr(out, "keys") else ""
    raise LcpressError(
        f"the model returned a {type(out).__name__}{fields}, and the built-in trainer and metrics compare one tensor "
        f"with the targets (logits, or embeddings for the mse and cosine losses); wrap the model so that it returns "
        f"that tensor, or pass your own train_fn= and eval_fn=")


class SupervisedTrainer:
    """``train_fn`` for the LC engine: epochs of SGD/Adam on ``loss + penalty``."""

    def __init__(
        self,
        loader: Iterable,
        config: TrainConfig | None = None,
        loss_fn: Loss | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
        description: str = "L step",
    ) -> None:
        self.loader = loader
        self.config = config or TrainConfig()
        self.loss_fn = loss_fn if loss_fn is not None else LOSSES[self.config.loss]
        self.device = torch.device(device)
        self.progress = progress
        self.description = description
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        self.epochs_done = 0  # sets a DistributedSampler's epoch, so every epoch has its own shuffle

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

    def __call__(self, model: nn.Module, penalty: Penalty, step: LStep) -> float | None:
        c = self.config
        optimizer = self._optimizer(model)
        for group in optimizer.param_groups:
            group["lr"] = c.lr * c.lr_decay**step.index
        epochs = c.first_epochs if (step.index == 0 and c.first_epochs is not None) else c.epochs
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        per_epoch = _len(self.loader)  # None for an iterable without a length: the bar counts without a total
        total_batches = None if per_epoch is None else epochs * per_epoch
        with progress_bar(total=total_batches, desc=f"{self.description} {step.index + 1}", enabled=self.progress) as bar:
            for _ in range(epochs):
                set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
                if callable(set_epoch):
                    set_epoch(self.epochs_done)
                self.epochs_done += 1
                for inputs, targets in batches(self.loader):
                    inputs, targets = to_device(inputs, self.device), targets.to(self.device)
                    loss = self.loss_fn(forward(model, inputs), targets)
                    objective = loss + penalty()
                    optimizer.zero_grad(set_to_none=True)
                    objective.backward()
                    optimizer.step()
                    total.add_(loss.detach(), alpha=len(targets))  # summed on the device: no wait for it per batch
                    count += len(targets)
                    bar.update(1)
        return float(total) / count if count else None  # no batches (first_epochs: 0): no loss, not a loss of 0

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epochs_done": self.epochs_done}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        generator = getattr(self.loader, "generator", None)
        if isinstance(generator, torch.Generator):
            state["loader_generator"] = generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state.get("epochs_done", 0))
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


def accuracy(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (an ``eval_fn`` for classifiers; per token for a language
    model's ``(batch, tokens, vocabulary)`` logits, targets of -100 left out)."""
    return _mean_score(model, loader, device, _correct)


def _correct(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """How many predictions are right, and of how many."""
    output, target = class_scores(output, target)
    counted = target != -100
    return (output.argmax(dim=1)[counted] == target[counted]).sum(), int(counted.sum())


def mean_cosine(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> float:
    """Mean cosine similarity of ``model``'s outputs to the targets (an ``eval_fn`` for embedding models)."""
    return _mean_score(model, loader, device, lambda out, targets: F.cosine_similarity(out, targets, dim=-1).sum())


@torch.no_grad()
def _mean_score(model: nn.Module, loader: Iterable, device: str | torch.device,
                score: Callable[[torch.Tensor, torch.Tensor], Any]) -> float:
    """The per-sample mean of ``score(outputs, targets)`` (summed per batch) in eval mode, the mode restored after."""
    total, count = 0.0, 0
    with in_mode(model, training=False):
        for inputs, targets in batches(loader):
            scored = score(forward(model, to_device(inputs, device)), targets.to(device))
            value, n = scored if isinstance(scored, tuple) else (scored, len(targets))  # a score may say of how many
            total += float(value)
            count += n
    return total / max(count, 1)


#: The metrics the config's ``metric`` names (higher is better for each).
METRICS: dict[str, Callable[[nn.Module, Iterable, Any], float]] = {"accuracy": accuracy, "cosine": mean_cosine}
