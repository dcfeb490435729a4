"""BatchNorm statistics for the compressed weights.

A BatchNorm layer normalises with the running mean and variance it collected
while the *dense* model trained. Once the weights before it become Δ(θ),
their outputs have another mean and variance, and the stale statistics can
cost a compressed model anything from a few points of accuracy to all of it.
:func:`recalibrate` re-estimates them from forward passes in training mode,
as training computes them, but without gradients and exactly: each layer's
running mean and (unbiased) variance become those of all its inputs over a
fixed set of training batches, whatever their order, sizes, or BatchNorm's
momentum. lcpress runs it before every evaluation of Δ(θ) and before a
compressed model is saved (``batchnorm.recalibrate``).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from torch import nn

from lcpress.core.surgery import call_model, module_modes, restore_modes
from lcpress.errors import LcpressError
from lcpress.runs.training import fixed_batches, to_device

log = logging.getLogger("lcpress.batchnorm")

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, NORMS) and m.track_running_stats]


class _Moments:
    """Per-channel sums of a BatchNorm layer's inputs, in float64."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        total, squares = x.sum(dims), (x * x).sum(dims)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.numel() // x.shape[1]

    def write(self, module: nn.Module, batches: int) -> None:
        if self.count < 2 or self.total is None:
            return
        mean = self.total / self.count
        variance = (self.squares / self.count - mean * mean).clamp_min(0) * self.count / (self.count - 1)
        module.running_mean.copy_(mean.to(module.running_mean.dtype))
        module.running_var.copy_(variance.to(module.running_var.dtype))
        module.num_batches_tracked.fill_(batches)


@torch.no_grad()
def recalibrate(model: nn.Module, loader: Any, batches: int, device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm layer's running statistics on ``batches`` batches; returns how many were used."""
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    modes = module_modes(model)
    moments = [_Moments() for _ in norms]
    handles = [m.register_forward_pre_hook(hook) for m, hook in zip(norms, moments)]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    model.eval()
    for m in norms:
        m.train()  # normalise with batch statistics, as in training, so later layers see what training showed them
    used = 0
    try:
        for batch in itertools.islice(fixed_batches(loader), batches):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            try:
                call_model(model, to_device(inputs, device))
            except ValueError as exc:
                if "more than 1 value per channel" not in str(exc):
                    raise
                raise LcpressError("BatchNorm statistics are re-estimated from training batches, and a batch of one "
                                   "sample has no spread to normalise with: give batches of at least 2 samples "
                                   "(calibration=, or the training loader), or set batchnorm.recalibrate: false") \
                    from None
            used += 1
    finally:
        for handle in handles:
            handle.remove()
        restore_modes(model, modes)
    for m, moment, (mean, var) in zip(norms, moments, saved):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        moment.write(m, used)
    return used
