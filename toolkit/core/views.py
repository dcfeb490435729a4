"""Task views: the parameters a task covers, as the one tensor its scheme compresses.

``identity`` is one layer's weight as it is; ``flatten`` concatenates several
layers' weights into one vector, so one budget or one codebook serves them
all. Both are differentiable (reshapes and concatenations), so the L-step
penalty is computed through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

TaskViewName = Literal["identity", "flatten"]


@dataclass(frozen=True)
class TaskView:
    """Maps a task's parameter tensors to one tensor and back."""

    kind: TaskViewName
    shapes: tuple[tuple[int, ...], ...]

    def gather(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.kind == "identity":
            return tensors[0]
        return torch.cat([t.reshape(-1) for t in tensors])

    def scatter(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "identity":
            return [x.reshape(self.shapes[0])]
        sizes = [math.prod(s) for s in self.shapes]
        return [part.reshape(shape) for part, shape in zip(torch.split(x, sizes), self.shapes)]
