"""The layers the conformance kit compresses: small, seeded, and shaped to catch mistakes.

Each :class:`LayerCase` is one Linear, Conv2d or Embedding layer with the input it is
called on. The default set covers what realized modules get wrong most often:
a Linear on a 3-D input, a missing bias, strides, dilation, non-square
kernels, reflect padding, 1×1 and grouped convolutions, a table with a padding row. A scheme skips the
cases its ``check_layer`` refuses; a plugin author can pass their own cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lcpress.core.forms import LayerSpec
from lcpress.core.graph import spec_of


@dataclass(frozen=True)
class LayerCase:
    """One layer to compress: a factory for the module and the shape of its input (batch included)."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]

    def module(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The layer with seeded random weights (the global RNG is left alone)."""
        generator = torch.Generator().manual_seed(seed)
        module = self._fresh()
        with torch.no_grad():
            for p in module.parameters():
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else max(1, p.numel())
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
        return module.to(dtype).eval()

    def spec(self) -> LayerSpec:
        return spec_of(self._fresh(), self.input_shape)

    def _fresh(self) -> nn.Module:
        """A new module; its default initialization draws from a forked RNG, not the caller's."""
        with torch.random.fork_rng(devices=[]):
            return self.build()

    def input(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A seeded input: random values, or random indices for a table."""
        generator = torch.Generator().manual_seed(seed + 1)
        spec = self.spec()
        if spec.kind == "embedding":
            return torch.randint(spec.in_channels, self.input_shape, generator=generator)
        return torch.randn(self.input_shape, generator=generator).to(dtype)


def default_layers() -> list[LayerCase]:
    """The kit's standard layers (a few hundred to a few thousand weights each, so checks run in seconds)."""
    return [
        LayerCase("linear", lambda: nn.Linear(48, 32), (4, 48)),
        LayerCase("linear_3d_input_no_bias", lambda: nn.Linear(40, 24, bias=False), (2, 3, 40)),
        LayerCase("conv3x3", lambda: nn.Conv2d(16, 24, 3, padding=1), (2, 16, 9, 9)),
        LayerCase("conv_strided_dilated", lambda: nn.Conv2d(8, 16, (3, 5), stride=2, padding=(2, 2),
                                                            dilation=(2, 1), bias=False), (1, 8, 15, 13)),
        LayerCase("conv1x1", lambda: nn.Conv2d(24, 16, 1), (2, 24, 5, 5)),
        LayerCase("conv_reflect_padding", lambda: nn.Conv2d(8, 12, 3, padding=1, padding_mode="reflect"), (1, 8, 7, 7)),
        LayerCase("conv_grouped", lambda: nn.Conv2d(8, 16, 3, groups=2), (1, 8, 7, 7)),
        LayerCase("embedding_with_padding_row", lambda: nn.Embedding(64, 24, padding_idx=0), (3, 7)),
    ]
