"""``Tucker2Conv2d``: a Tucker-2 convolution as one module of its own.

With ``module: tucker2`` the scheme realizes a layer as this class instead of
an ``nn.Sequential`` of three convolutions: the saved model and ``print(model)``
then say what the layer is (its two ranks), not just "three convs". Because
it is a class of this package, ``lcpress.load`` can rebuild it only while the
package is installed — the plugin allow-lists it through the
``lcpress_register_modules`` hook (:mod:`lcpress_tucker.plugin`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lcpress.nn import PointwiseConv2d


class Tucker2Conv2d(nn.Module):
    """1×1 in→in_rank, k×k in_rank→out_rank core, 1×1 out_rank→out (the core keeps the layer's geometry)."""

    def __init__(self, in_channels: int, out_channels: int, in_rank: int, out_rank: int,
                 kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] | str = (0, 0), dilation: tuple[int, int] = (1, 1),
                 padding_mode: str = "zeros", bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_rank, self.out_rank = in_rank, out_rank
        self.reduce = PointwiseConv2d(in_channels, in_rank, bias=False)
        self.core = nn.Conv2d(in_rank, out_rank, tuple(kernel_size), tuple(stride),
                              padding if isinstance(padding, str) else tuple(padding), tuple(dilation),
                              bias=False, padding_mode=padding_mode)
        self.expand = PointwiseConv2d(out_rank, out_channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.core(self.reduce(x)))

    @staticmethod
    def arguments(module: "Tucker2Conv2d") -> dict[str, Any]:
        """The constructor arguments that rebuild ``module`` (what lcpress.save records, JSON only)."""
        core = module.core
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "in_rank": module.in_rank, "out_rank": module.out_rank, "kernel_size": list(core.kernel_size),
                "stride": list(core.stride), "padding": core.padding if isinstance(core.padding, str) else
                list(core.padding), "dilation": list(core.dilation), "padding_mode": core.padding_mode,
                "bias": module.expand.bias is not None}

    def extra_repr(self) -> str:
        return f"{self.in_channels}→{self.out_channels}, ranks {self.in_rank}→{self.out_rank}"
