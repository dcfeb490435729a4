"""The ``tucker2`` scheme: a conv layer as 1×1 → k×k core → 1×1 (Kim et al., ICLR 2016).

With ``in_rank``/``out_rank`` unset, the scheme *selects*: every rank pair
(multiples of ``rank_multiple``) is a candidate with its exact error after
HOSVD + HOOI, the dense layer is a candidate too, and lcpress's core picks by
α or a global budget under any cost model — the scheme never sees a cost.
With both ranks set, every C step decomposes at those ranks.

Everything a plugin needs is here: options, a :class:`Tucker2` form (so every
cost model can price it), candidates, the C step, Δ(θ), and a realization
built from standard layers (so saved models load without this package).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from lcpress import Candidates, CStepContext, Dense, Form, LayerSpec, Options, Scheme, State, option
from lcpress.nn import PointwiseConv2d

from .module import Tucker2Conv2d

from .decomposition import compose, core_of, refine_many

_POINTWISE = {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)}


@dataclass(frozen=True)
class Tucker2(Form):
    """A conv as 1×1 in→in_rank, k×k in_rank→out_rank (the layer's stride, padding, dilation), 1×1 out_rank→out."""

    in_rank: int
    out_rank: int
    kind: ClassVar[str] = "tucker2"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        first = spec.with_(out_channels=self.in_rank, bias=False, **_POINTWISE)
        core = spec.with_(in_channels=self.in_rank, out_channels=self.out_rank, input_shape=first.output_shape,
                          bias=False)
        last = spec.with_(in_channels=self.out_rank, input_shape=core.output_shape, **_POINTWISE)
        return (first, core, last)

    def describe(self) -> str:
        return f"tucker2 {self.in_rank}→{self.out_rank}"


@dataclass
class Tucker2Options(Options):
    in_rank: int | None = option(None, help="fixed rank of the input factor; unset (with out_rank) = rank selection",
                                 ge=1)
    out_rank: int | None = option(None, help="fixed rank of the output factor; unset (with in_rank) = rank selection",
                                  ge=1)
    rank_multiple: int = option(8, help="candidate ranks are multiples of this (rank selection)", ge=1)
    iterations: int = option(2, help="HOOI sweeps after the HOSVD start (0 = truncated HOSVD)", ge=0)
    module: Literal["sequential", "tucker2"] = option(
        "sequential", help="realize as three standard convolutions (saved models load anywhere), or as one "
                           "Tucker2Conv2d (named ranks; loads where lcpress-tucker is installed)")

    def validate(self) -> None:  # a rule across two fields; each field's own range is declared above
        if (self.in_rank is None) != (self.out_rank is None):
            self.fail("in_rank", "set both in_rank and out_rank, or neither (rank selection)")


class Tucker2Scheme(Scheme):
    """Tucker-2 decomposition of Conv2d weights, with rank-pair selection by the core."""

    name = "tucker2"
    Options = Tucker2Options
    options: Tucker2Options
    kinds = frozenset({"conv2d"})  # the layer kinds it takes: lcpress never hands it a Linear layer or a table

    def selecting(self) -> bool:
        return self.options.in_rank is None

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        if spec is not None and spec.groups != 1:
            return "tucker2 decomposes convolutions with groups=1 only"
        return None

    def check_shared(self) -> str | None:
        # shared: true joins a task group's weights into one vector; Tucker-2 needs one conv's 4-D kernel
        return "tucker2 decomposes one convolution's 4-D kernel, and a shared vector joins several"

    def rank_pairs(self, w: torch.Tensor) -> list[tuple[int, int]]:
        """Candidate (out_rank, in_rank) pairs, minus those another pair beats at no extra cost.

        A rank above the other mode's rank × kernel area adds columns that
        carry nothing (the unfolding has no more rank), so such pairs are left out.
        """
        n_out, n_in, area = w.shape[0], w.shape[1], w[0, 0].numel()
        step = self.options.rank_multiple
        return [(a, b) for a in range(step, n_out, step) for b in range(step, n_in, step)
                if a <= b * area and b <= a * area]

    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Candidates | None:
        if self.options.in_rank is not None:
            return None
        _check_weight(w)
        pairs = self.rank_pairs(w)
        factors, errors = refine_many(w, [a for a, _ in pairs], [b for _, b in pairs], self.options.iterations)
        forms: list[Form] = [Dense(), *(Tucker2(b, a) for a, b in pairs)]
        all_errors = torch.cat([torch.zeros(1, dtype=torch.float64), errors])
        return Candidates(forms, all_errors, [None, *factors])

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        _check_weight(w)
        form = ctx.chosen_form()
        if form is None:  # fixed ranks
            a, b = min(self.options.out_rank, w.shape[0]), min(self.options.in_rank, w.shape[1])
            (factors,), _ = refine_many(w, [a], [b], self.options.iterations)
        else:
            factors = ctx.candidates.data[ctx.choice]
        u_out, u_in = factors
        core = core_of(w, u_out, u_in)
        tensors = {"first": u_in.T.contiguous(), "core": core.contiguous(), "last": u_out.contiguous()}
        meta = {"form": "tucker2", "in_rank": u_in.shape[1], "out_rank": u_out.shape[1]}
        return State({k: v.to(w.dtype) for k, v in tensors.items()}, meta)

    def decompress(self, state: State) -> torch.Tensor:
        t = state.tensors
        return compose(t["last"], t["core"], t["first"].T)

    def form(self, state: State) -> Form:
        return Tucker2(int(state.meta["in_rank"]), int(state.meta["out_rank"]))

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"tucker2 realizes Conv2d layers, got a {type(module).__name__}")
        if self.options.module == "tucker2":
            return tucker2_module(module, state.tensors["first"], state.tensors["core"], state.tensors["last"])
        return tucker2_conv(module, state.tensors["first"], state.tensors["core"], state.tensors["last"])


def _check_weight(w: torch.Tensor) -> None:
    if w.dim() != 4:
        raise ValueError(f"tucker2 decomposes 4-D conv weights, got shape {tuple(w.shape)} "
                         f"(a shared task flattens its layers; use shared: false)")


def tucker2_conv(module: nn.Conv2d, first: torch.Tensor, core: torch.Tensor, last: torch.Tensor) -> nn.Sequential:
    """Three convolutions computing ``module`` with its weight replaced by the Tucker-2 product.

    The 1×1 convolutions commute with any padding mode (they mix channels
    position by position), so only the core pads, exactly as the layer did.
    """
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    in_rank, out_rank = first.shape[0], last.shape[1]
    reduce = PointwiseConv2d(module.in_channels, in_rank, bias=False, **kw)
    spatial = nn.Conv2d(in_rank, out_rank, module.kernel_size, module.stride, module.padding, module.dilation,
                        bias=False, padding_mode=module.padding_mode, **kw)
    expand = PointwiseConv2d(out_rank, module.out_channels, bias=module.bias is not None, **kw)
    with torch.no_grad():
        reduce.weight.copy_(first.reshape(in_rank, -1, 1, 1))
        spatial.weight.copy_(core)
        expand.weight.copy_(last.reshape(module.out_channels, out_rank, 1, 1))
        if module.bias is not None:
            expand.bias.copy_(module.bias)
    return nn.Sequential(reduce, spatial, expand)


def tucker2_module(module: nn.Conv2d, first: torch.Tensor, core: torch.Tensor, last: torch.Tensor) -> Tucker2Conv2d:
    """The same three convolutions as :func:`tucker2_conv`, as one :class:`Tucker2Conv2d`."""
    stages = tucker2_conv(module, first, core, last)
    fused = Tucker2Conv2d(module.in_channels, module.out_channels, first.shape[0], last.shape[1], module.kernel_size,
                          module.stride, module.padding, module.dilation, module.padding_mode, module.bias is not None)
    fused.reduce, fused.core, fused.expand = stages[0], stages[1], stages[2]
    return fused.to(device=module.weight.device, dtype=module.weight.dtype)
