"""The L step's penalty ``μ/2 Σ‖w − t‖²``, built once per L step and evaluated as one autograd node.

Written out as a plain expression, the penalty records for every task on
every batch a gather through the task's view (a concatenation of the layers'
weights for a shared task), a subtraction, a square, a sum, a product and an
addition, and autograd runs each of them backwards: a dozen small operations
per task and per batch beside the model's own. Its gradient is known in
closed form, ``μ (w − t)``, so :class:`QuadraticPenalty` splits each task's
target into the shapes of the task's parameters once, when the L step begins,
and computes the value and the gradient of all parameters together with
``torch._foreach`` operations (one fused kernel per operation on a GPU):
per batch, one subtraction and one norm forwards, one product backwards.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.autograd.function import once_differentiable


class QuadraticPenalty:
    """``penalty()`` = ``μ/2 Σ_j ‖p_j − t_j‖²`` over parameters ``p_j`` with fixed targets ``t_j``.

    Equal, value and gradient, to the plain expression over the same
    parameters; the targets are detached (the L step does not move them).
    """

    def __init__(self, params: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], mu: float) -> None:
        if len(params) != len(targets):
            raise ValueError(f"{len(params)} parameters but {len(targets)} targets")
        for p, t in zip(params, targets):
            if p.shape != t.shape:
                raise ValueError(f"a target of shape {tuple(t.shape)} for a parameter of shape {tuple(p.shape)}")
        self.params = list(params)
        self.targets = [t.detach().to(device=p.device, dtype=p.dtype) for p, t in zip(params, targets)]
        self.mu = float(mu)
        #: how many times a gradient flowed back through the penalty (0 after an L step that trained the
        #: weights: the penalty was detached, or added to a loss that was never backpropagated)
        self.backwards = [0]

    def __call__(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(())
        return _Quadratic.apply(self.mu, self.targets, self.backwards, *self.params)


class _Quadratic(torch.autograd.Function):
    """Forward: ``μ/2 Σ‖p − t‖²``; backward: ``μ (p − t)`` per parameter, from the differences kept."""

    @staticmethod
    def forward(ctx: Any, mu: float, targets: list[torch.Tensor], backwards: list[int],
                *params: torch.Tensor) -> torch.Tensor:
        diffs = torch._foreach_sub([p.detach() for p in params], targets)
        ctx.mu = mu
        ctx.backwards = backwards
        ctx.diffs = diffs  # plain tensors, not saved for backward: no version counters to check, none needed
        norms = torch.stack(torch._foreach_norm(diffs))
        return 0.5 * mu * torch.sum(norms * norms)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = ctx.diffs  # scaled in place: the differences are not needed again, and a copy is a model's size
        torch._foreach_mul_(grads, grad * ctx.mu)
        ctx.diffs = None
        ctx.backwards[0] += 1
        return (None, None, None, *(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[3:])))
