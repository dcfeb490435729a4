"""ALDS: grouped low-rank decomposition with min–max error allocation.

Automatic Layer-wise Decomposition Selector (Liebenwein et al., NeurIPS 2021):
a layer's input channels are split into k groups, and each group's slice of
the weight gets its own rank-r factorization. The realized layer is a grouped
convolution in→k·r (groups=k) followed by a 1×1 convolution k·r→out (a
block-diagonal Linear then a Linear for Linear layers). Every (k, r) has an
exact error from singular values (Eckart–Young–Mirsky). Under a global budget
the scheme declares ``allocation = "minmax"``: the core then chooses (k, r)
per layer to minimise the *largest* relative error across layers, by bisection
on the error level. k = 1 is plain low rank, so ALDS is never worse than a
uniform-rank SVD at the same budget.

Used with ``schedule.steps: 0`` it is ALDS one-shot; with LC steps, its
allocation is the direct-compression step and every later C step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import lcpress
from lcpress import Candidates, CStepContext, Dense, Form, LayerSpec, Options, Scheme, State, option
from lcpress.linalg import Spectrum, spectra
from lcpress.nn import GroupedLinear, PointwiseConv2d, two_stage


@dataclass(frozen=True)
class GroupedLowRank(Form):
    """k input-channel groups, each factorized at rank r."""

    groups: int
    rank: int
    kind: ClassVar[str] = "grouped_low_rank"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        k, r = self.groups, self.rank
        first = spec.with_(out_channels=k * r, groups=k, bias=False)
        second = spec.with_(in_channels=k * r, input_shape=first.output_shape, groups=1)
        if spec.kind == "conv2d":
            second = second.with_(kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1))
        return (first, second)

    def describe(self) -> str:
        return f"{self.groups} groups × rank {self.rank}"


@dataclass
class AldsOptions(Options):
    groups: list[int] = option(default_factory=lambda: [1, 2, 4, 8],
                               help="candidate numbers of input-channel groups (only divisors of in_channels are used)",
                               ge=1, nonempty=True)
    rank_multiple: int = option(8, help="per-group ranks are multiples of this", ge=1)


def group_matrices(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(k, out, in/k·kh·kw): the slice of the weight each input-channel group owns."""
    out, cin = w.shape[:2]
    return w.reshape(out, groups, cin // groups, -1).permute(1, 0, 2, 3).reshape(groups, out, -1)


def ungroup(mats: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`group_matrices`."""
    groups, out = mats.shape[:2]
    cin = shape[1]
    return mats.reshape(groups, out, cin // groups, -1).permute(1, 0, 2, 3).reshape(shape)


class AldsScheme(Scheme):
    """Grouped low rank; (k, r) per layer by min–max relative error under a budget."""

    name = "alds"
    Options = AldsOptions
    allocation = "minmax"
    options: AldsOptions

    def selecting(self) -> bool:
        return True

    def check_shared(self) -> str | None:
        return "ALDS factorizes one layer's weight matrix, and a shared vector joins several"

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        if spec is not None and spec.kind == "conv2d" and spec.groups != 1:
            return "alds decomposes convolutions with groups=1 only"
        if spec is not None and not any(spec.in_channels % k == 0 for k in self.options.groups):
            return (f"none of the groups {sorted(set(self.options.groups))} divides its {spec.in_channels} input "
                    f"channels; add a divisor to options.groups (1 always fits)")
        return None

    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Candidates:
        forms: list[Form] = [Dense()]
        errors = [torch.zeros((), dtype=torch.float64, device=w.device)]
        found: dict[int, list[Spectrum]] = {}
        step = self.options.rank_multiple
        for k in sorted(set(self.options.groups)):
            if w.shape[1] % k:
                continue
            found[k] = spectra(list(group_matrices(w.detach(), k)))
            tails = torch.stack([s.tail_errors() for s in found[k]]).sum(0)
            for r in range(step, found[k][0].full_rank, step):
                forms.append(GroupedLowRank(k, r))
                errors.append(tails[r])
        return Candidates(forms, torch.stack(errors), found)

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        form = ctx.chosen_form()
        if form is None:
            raise ValueError("alds chooses its form through the C step's selection (give 'alpha' or 'target')")
        pairs = [spec.factors(form.rank) for spec in ctx.candidates.data[form.groups]]
        a = torch.stack([p[0] for p in pairs])  # (k, out, r)
        b = torch.stack([p[1] for p in pairs])  # (k, r, in/k·kh·kw)
        meta = {"form": "grouped_low_rank", "groups": form.groups, "rank": form.rank, "weight_shape": list(w.shape)}
        return State({"a": a.contiguous(), "b": b.contiguous()}, meta)

    def decompress(self, state: State) -> torch.Tensor:
        return ungroup(state.tensors["a"] @ state.tensors["b"], tuple(state.meta["weight_shape"]))

    def form(self, state: State) -> Form:
        return GroupedLowRank(int(state.meta["groups"]), int(state.meta["rank"]))

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        a, b = state.tensors["a"], state.tensors["b"]
        k, out, r = a.shape
        kw = {"device": module.weight.device, "dtype": module.weight.dtype}
        mixing = a.permute(1, 0, 2).reshape(out, k * r)  # [A_1 … A_k]
        if isinstance(module, nn.Linear):
            first = GroupedLinear(module.in_features, k * r, k, **kw)
            second = nn.Linear(k * r, out, bias=module.bias is not None, **kw)
            first_w, second_w = b.reshape(k * r, -1), mixing
        else:
            cin, kh, kwid = module.weight.shape[1:]
            first = nn.Conv2d(cin, k * r, (kh, kwid), module.stride, module.padding, module.dilation, groups=k,
                              bias=False, padding_mode=module.padding_mode, **kw)
            second = PointwiseConv2d(k * r, out, bias=module.bias is not None, **kw)
            first_w, second_w = b.reshape(k * r, cin // k, kh, kwid), mixing.reshape(out, k * r, 1, 1)
        return two_stage(first, second, first_w, second_w, module.bias)


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(AldsScheme)
