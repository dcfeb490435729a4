"""Second moments of layer inputs: the metric of C steps that measure error on a layer's outputs.

Weight-space error ``‖W − Δ‖²`` treats every input direction alike. What a
layer's consumers see is its output, and over real inputs ``X`` the output
error is ``‖(W − Δ)X‖² = N·tr((W − Δ) Σ (W − Δ)ᵀ)`` with ``Σ = E[x xᵀ]`` the
second moment of the layer's input vectors (for a convolution: the unfolded
kh×kw patches, in the order of ``weight.reshape(out, -1)``). A scheme that
declares :class:`OutputError` gets ``Σ`` in its C-step context
(``ctx.input_metric``), and the engine measures the L-step penalty
``μ/2·tr((w − Δ) Σ (w − Δ)ᵀ)`` in the same metric, so the C step and the
penalty minimise the same distance and LC stays consistent.

``Σ`` is scaled to a largest eigenvalue of 1 (so the penalty is nowhere
stiffer than in weight space and a learning rate stable there stays stable;
an isotropic input gives exactly the weight-space metric), then damped,
``Σ + δ·I``, so it is positive definite however few or correlated the inputs
are. The inputs come from forward pre-hooks: one
calibration pass over training data before the direct compression, then the
forward passes of each L step (never the evaluation data).

A scheme over many layers (channel pruning) asks for each input channel's
mean square alone (:attr:`OutputError.per_channel`) and builds a *diagonal*
metric, one weight per entry of its parameter vector
(:meth:`lcpress.Scheme.output_metric`); the penalty then is
``μ/2·Σ_e m_e (w_e − Δ_e)²``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Hashable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class OutputError:
    """What a scheme returns from :meth:`lcpress.Scheme.output_error` to be handed its layer's input metric.

    :ivar damping: δ added to the diagonal of the scaled second moment
        (largest eigenvalue 1): 0 is the exact output error; larger values move
        the metric towards weight space and keep it well conditioned.
    """

    damping: float = 0.01
    #: True: only each input *channel*'s mean square ``E[x_c²]`` (the diagonal, over every position), for a
    #: scheme whose metric is diagonal — channel pruning over many layers, where a full Σ per layer would cost
    #: more than the layers themselves.
    per_channel: bool = False


def input_vectors(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``x`` a layer multiplies by its weight matrix: (N, in) for a Linear, (N, in·kh·kw) for a conv."""
    if isinstance(module, nn.Conv2d):
        return _patches(module, x)
    return x.reshape(-1, x.shape[-1])


def channel_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as (positions, channels): every value of one input channel in one column (a conv's at every pixel)."""
    axis = 1 if isinstance(module, nn.Conv2d) else -1
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded input patches of ``conv``, padded exactly as the convolution pads (any padding mode)."""
    kh, kw = conv.kernel_size
    (dh, dw), (sh, sw) = conv.dilation, conv.stride
    if isinstance(conv.padding, str):  # 'valid' or 'same' (stride 1): torch puts the odd pixel at the end
        total = (0, 0) if conv.padding == "valid" else (dh * (kh - 1), dw * (kw - 1))
        pads = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    else:
        ph, pw = conv.padding
        pads = (pw, pw, ph, ph)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    if any(pads):
        x = F.pad(x, pads, mode=mode)
    cols = F.unfold(x, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # (B, in·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class MomentCollector:
    """Accumulates ``Σ x xᵀ`` of the inputs of some layers while the model runs forward.

    A forward call with more than ``max_rows`` input vectors (a convolution's
    patches: batch × output pixels) contributes an evenly strided subset of
    them: the Gram matrix costs ``rows·n²``, which would otherwise exceed the
    layer's own cost ``rows·n·out`` several times over for a conv whose patch
    length n = in·kh·kw is larger than its output channels.
    """

    def __init__(self, modules: dict[Hashable, nn.Module], max_rows: int = 2048,
                 per_channel: set[Hashable] | None = None) -> None:
        self.modules = modules
        self.max_rows = max_rows
        self.per_channel = per_channel or set()  # keys that keep E[x_c²] per input channel only
        self.sums: dict[Hashable, torch.Tensor] = {}
        self.counts: dict[Hashable, int] = {}

    @contextlib.contextmanager
    def collecting(self) -> Iterator["MomentCollector"]:
        """Hooks on every watched layer for the duration of the block."""
        handles = [module.register_forward_pre_hook(self._hook(key)) for key, module in self.modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, key: Hashable):
        def hook(module: nn.Module, args: tuple) -> None:
            with torch.no_grad():
                if key in self.per_channel:  # Σ_positions x_c², one number per channel
                    rows = channel_rows(module, args[0].detach())
                    total = rows.double().pow(2).sum(0)
                else:  # the Gram matrix Σ x xᵀ
                    rows = input_vectors(module, args[0].detach())
                    rows = rows[:: -(-rows.shape[0] // self.max_rows)]  # at most max_rows, evenly strided
                    if rows.dtype not in (torch.float32, torch.float64):  # a 16-bit Σ x xᵀ overflows past 65,504
                        rows = rows.double()
                    total = (rows.T @ rows).to(torch.float64)
            self.sums[key] = total if key not in self.sums else self.sums[key] + total
            self.counts[key] = self.counts.get(key, 0) + rows.shape[0]

        return hook

    def take(self) -> dict[Hashable, torch.Tensor]:
        """``E[x xᵀ]`` (per-channel keys: ``E[x_c²]``) of every layer that saw input since the last call (float64);
        then starts afresh."""
        moments = {key: total / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return moments


def input_metric(moment: torch.Tensor, damping: float) -> torch.Tensor:
    """``Σ / λ_max(Σ) + δ·I``: the metric of the C step and of the penalty (float64, positive definite for δ > 0).

    Scaled to a largest eigenvalue of 1, the penalty is never stiffer than the weight-space one in any
    direction, so an L step whose learning rate is stable for ``μ/2‖w − Δ‖²`` stays stable. Inputs after a
    ReLU have one dominant direction, their mean: on the 1568-wide layer of an MNIST CNN the largest
    eigenvalue was 673 times the mean one, and with Σ scaled by its mean an SGD L step (lr 0.01, μ up to
    1.3) ended at chance accuracy.
    """
    n = moment.shape[0]
    largest = float(torch.linalg.eigvalsh(moment)[-1]) if n else 0.0
    metric = moment / largest if largest > 0 else torch.zeros_like(moment)
    return metric + damping * torch.eye(n, dtype=moment.dtype, device=moment.device)


def squared_distance(diff: torch.Tensor, metric: torch.Tensor | None) -> torch.Tensor:
    """``tr(D Σ Dᵀ)`` for ``D = diff`` as an (out, in·kh·kw) matrix; ``‖diff‖²`` without a metric (differentiable).

    A one-dimensional metric is a diagonal one, a weight per entry of ``diff``: ``Σ_e m_e·diff_e²``.
    """
    if metric is None:
        return torch.sum(diff**2)
    if metric.dim() == 1:
        return torch.sum(metric * diff.reshape(-1) ** 2)
    d = diff.reshape(diff.shape[0], -1)
    return torch.sum((d @ metric.to(d.dtype)) * d)
