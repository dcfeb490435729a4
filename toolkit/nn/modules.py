"""Small inference modules that realized layers are built from.

They hold their parameters exactly as the torch layer they stand for (same
names and shapes), so parameter counts, cost models and state dicts are
unchanged — only the forward pass is faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def two_stage(first: nn.Module, second: nn.Module, first_weight: torch.Tensor, second_weight: torch.Tensor,
              bias: torch.Tensor | None) -> nn.Sequential:
    """``Sequential(first, second)`` holding the given weights (and the original layer's bias).

    Every two-layer realization (low rank, grouped low rank …) ends this way:
    the thin layers receive their factors, the second one the original bias.
    """
    with torch.no_grad():
        first.weight.copy_(first_weight)
        second.weight.copy_(second_weight)
        if bias is not None:
            second.bias.copy_(bias)
    return nn.Sequential(first, second)


def is_plain_pointwise(kernel_size, stride, padding, dilation, groups: int = 1) -> bool:
    """A 1×1, stride-1, unpadded, undilated, ungrouped convolution: what :class:`PointwiseConv2d` computes."""
    return (tuple(kernel_size), tuple(stride), tuple(dilation), groups) == ((1, 1), (1, 1), (1, 1), 1) \
        and padding in ((0, 0), "valid")


class PointwiseConv2d(nn.Module):
    """A 1×1 convolution computed as one batched matrix product in NCHW.

    On CPUs, torch's NCHW 1×1 convolution with few input channels — the
    second half of every channel-shaped low-rank conv — runs far below the
    speed of the equivalent GEMM (2–3× slower in benchmarks/realized_speedup.py).
    ``baddbmm`` over ``(N, r, H·W)`` computes exactly the same function.
    Channels-last inputs already take a GEMM path and go to ``F.conv2d``, and
    so do batches of at most :attr:`CONV_UP_TO` images, where the batched
    product's fixed cost outweighs the convolution's: a residual CNN on MNIST
    with every 1×1 stage as this GEMM ran 12% slower than with torch's 1×1
    convolution at batch 1 and 7% at batch 4, and 7% faster at batch 32 (one
    thread; benchmarks/pointwise_kernel.py). A batch size that is symbolic
    (``torch.export`` with a dynamic batch) takes the GEMM, so an exported
    graph holds no guard on it.
    """

    #: batches up to this size run torch's own 1×1 convolution (see the class docstring)
    CONV_UP_TO = 4
    __constants__ = ["CONV_UP_TO", "in_channels", "out_channels"]  # so torch.jit.script compiles the module

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PointwiseConv2d":
        """The same layer as a 1×1, stride-1, unpadded, ungrouped ``conv``."""
        if not is_plain_pointwise(conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups):
            raise ValueError("PointwiseConv2d replaces only plain 1×1 convolutions")
        new = cls(conv.in_channels, conv.out_channels, conv.bias is not None,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def to_conv(self) -> nn.Conv2d:
        """The ``nn.Conv2d`` this layer computes, holding the same tensors' values (to compress it again)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, 1, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv

    def _few_images(self, x: torch.Tensor) -> bool:
        """At most CONV_UP_TO images; a symbolic batch size (``torch.export``, dynamic) is not few."""
        if torch.jit.is_scripting():  # TorchScript's sizes are always ints (and it cannot compile type())
            return x.shape[0] <= self.CONV_UP_TO
        return type(x.shape[0]) is int and x.shape[0] <= self.CONV_UP_TO

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or self._few_images(x) or (
                x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return F.conv2d(x, self.weight, self.bias)
        n, c, h, w = x.shape
        weight = self.weight.reshape(self.out_channels, c).expand(n, -1, -1)
        flat = x.reshape(n, c, h * w)
        if self.bias is None:
            out = torch.bmm(weight, flat)
        else:
            out = torch.baddbmm(self.bias.reshape(1, -1, 1).expand(n, -1, 1), weight, flat)
        return out.reshape(n, self.out_channels, h, w)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


class GroupedLinear(nn.Module):
    """A block-diagonal Linear: input features in ``groups`` blocks, each mapped on its own.

    The Linear counterpart of a grouped convolution (no bias): block g maps
    input features ``[g·in/k, (g+1)·in/k)`` to outputs ``[g·out/k, (g+1)·out/k)``.
    Stored as ``weight`` of shape ``(out, in/k)``, exactly like a grouped conv's.
    """

    def __init__(self, in_features: int, out_features: int, groups: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"in_features {in_features} and out_features {out_features} must divide by groups {groups}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.groups
        blocks = x.reshape(-1, k, self.in_features // k).transpose(0, 1)  # (k, N, in/k)
        weight = self.weight.reshape(k, self.out_features // k, -1)  # (k, out/k, in/k)
        out = torch.bmm(blocks, weight.transpose(1, 2))  # (k, N, out/k)
        return out.transpose(0, 1).reshape(list(x.shape[:-1]) + [self.out_features])  # a list: TorchScript too

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}"


class ParallelSum(nn.ModuleList):
    """Branches applied to the same input, outputs summed: the realized additive combination.

    ``y = Σ_j branch_j(x)``: for layers linear in their weight this is the layer
    with weight ``Σ_j Δ_j`` (only one branch carries the bias).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x  # a placeholder of the output's type (TorchScript), replaced by the first branch's output
        for i, branch in enumerate(self):
            y = branch(x)
            out = y if i == 0 else out + y
        return out


class ScatterChannels(nn.Module):
    """Put the outputs of a row-pruned layer back into their places among ``channels`` outputs.

    A structurally pruned layer computes only its kept output channels (a
    genuinely smaller Linear or Conv2d). The pruned channels of the layer it
    replaces output just their bias, so they are filled from ``fill`` (the
    bias, zero at kept positions) and the surrounding model sees the original
    shape unchanged.
    """

    def __init__(self, channels: int, kept: int, dim: int = -1) -> None:
        super().__init__()
        self.channels, self.kept, self.dim = channels, kept, dim
        self.register_buffer("index", torch.zeros(kept, dtype=torch.long))
        self.register_buffer("fill", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim % x.dim()
        shape = [1] * x.dim()
        shape[dim] = self.channels
        full = list(x.shape)
        full[dim] = self.channels
        out = self.fill.to(x.dtype).reshape(shape).expand(full).clone()
        return out.index_copy_(dim, self.index, x)

    def extra_repr(self) -> str:
        return f"{self.kept} of {self.channels} channels, dim={self.dim}"


class InterleavedLowRank(nn.Module):
    """A Linear whose weight is a low-rank matrix in the block-interleaved ``(m·p, n/p)`` view.

    With ``M = A B`` (A: m·p×r, B: r×n/p) and ``W[i, c·p + j] = M[i·p + j, c]``,
    ``y_i = Σ_{j,r} A[i·p+j, r] · (Σ_c B[r, c] x[c·p + j])``: the input is read
    as (n/p, p), ``first`` (B) maps its n/p axis to r for each of the p
    columns, and ``second`` (A regrouped as m × p·r) mixes the p·r values.
    FLOPs: r·n + m·p·r per row, against m·n dense.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, factor: int, bias: bool = True) -> None:
        super().__init__()
        if in_features % factor:
            raise ValueError(f"in_features {in_features} is not divisible by the reshape factor {factor}")
        self.in_features, self.out_features, self.rank, self.factor = in_features, out_features, rank, factor
        self.first = nn.Linear(in_features // factor, rank, bias=False)
        self.second = nn.Linear(factor * rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, a: torch.Tensor, b: torch.Tensor, factor: int, bias: torch.Tensor | None) -> "InterleavedLowRank":
        rows, rank = a.shape
        new = cls(b.shape[1] * factor, rows // factor, rank, factor, bias is not None).to(a.device, a.dtype)
        with torch.no_grad():
            new.first.weight.copy_(b)
            new.second.weight.copy_(a.reshape(rows // factor, factor * rank))
            if bias is not None:
                new.second.bias.copy_(bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = list(x.shape[:-1])  # shapes as lists, so torch.jit.script compiles this too
        columns = x.reshape(lead + [self.in_features // self.factor, self.factor]).transpose(-1, -2)
        return self.second(self.first(columns).reshape(lead + [self.factor * self.rank]))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, factor={self.factor}"
