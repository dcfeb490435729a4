"""Additive combinations: a weight written as a sum of differently compressed parts.

``Δ(θ) = Σ_j Δ_j(θ_j)``, each part any registered scheme — built-in or
third-party — with its own options and view. Low-rank + sparse, quantized +
sparse, or a sum of low-rank matrices in differently reshaped views are
configs of this one scheme::

    scheme: additive
    options:
      reps: 4
      parts:
        - {scheme: low_rank, options: {rank: 16}}
        - {scheme: prune, options: {keep_fraction: 0.02}}

The C step alternates over the parts: part j compresses
``w − Σ_{i≠j} Δ_i(θ_i)`` for ``reps`` rounds, starting from the previous C
step's parts (warm start). Each part's own C step is an exact minimiser for
its fixed form, so ``‖w − Δ(θ)‖²`` never increases across rounds; the values
after every part update are kept in the state (``meta["objective"]``).

``reshape: p`` gives a part the block-interleaved ``(m·p, n/p)`` view of the
weight matrix (:func:`lcpress.linalg.reshape_matrix`), the reshaped low-rank
matrices of the additive-combination papers.

Realized as parallel branches whose outputs are summed
(:class:`lcpress.nn.modules.ParallelSum`): every structural part (low rank, row
pruning, a reshaped low-rank part of a Linear) is its own branch, realized by
its own scheme; every store-small part (quantized, sparse) is fused into one
dense-running branch, so quantized + sparse runs as one matrix product.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

import lcpress
from lcpress import CStepContext, Dense, Form, LayerSpec, LowRank, Options, PartOptions, Parts, Scheme, State, option
from lcpress.linalg import reshape_matrix, to_matrix, unreshape_matrix
from lcpress.nn import DenseWeight, InterleavedLowRank, ParallelSum, decoded


@dataclass
class AdditiveOptions(Options):
    parts: list[PartOptions] = option(help="the parts: [{scheme, options, reshape}, …]", nonempty=True)
    reps: int = option(4, help="rounds of alternation over the parts per C step", ge=1)


@dataclass(frozen=True)
class Additive(Form):
    """A sum of part forms; ``factors[j]`` is the reshape of part j (1 = none)."""

    parts: tuple[Form, ...]
    factors: tuple[int, ...]
    kind: ClassVar[str] = "additive"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return tuple(p for branch in self.branches(spec) for p in branch)

    def branches(self, spec: LayerSpec) -> tuple[tuple[LayerSpec, ...], ...]:
        out: list[tuple[LayerSpec, ...]] = []
        runs_dense = False
        for form, factor in zip(self.parts, self.factors):
            branch = _branch_primitives(spec, form, factor)
            if branch is None:
                runs_dense = True  # fused with the other store-small parts into one dense product
            else:
                out.append(branch)
        if runs_dense:
            out.append((spec.with_(bias=False),))
        return tuple(out)

    def param_count(self, spec: LayerSpec) -> int:
        bias = spec.out_channels if spec.bias else 0
        return bias + sum(form.param_count(part) for form, part in self._stored(spec))

    def storage_bits(self, spec: LayerSpec, dtype_bits: int = 32) -> int:
        bias = (spec.out_channels if spec.bias else 0) * dtype_bits
        return bias + sum(form.storage_bits(part, dtype_bits) for form, part in self._stored(spec))

    def _stored(self, spec: LayerSpec) -> list[tuple[Form, LayerSpec]]:
        """Each part as the file stores it (see :func:`_stored_part`)."""
        return [_stored_part(spec, form, factor) for form, factor in zip(self.parts, self.factors)]

    def describe(self) -> str:
        return " + ".join(f.describe() + (f" (reshape {p})" if p > 1 else "") for f, p in zip(self.parts, self.factors))

    def report_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for j, form in enumerate(self.parts, 1):
            fields[f"part{j}"] = form.kind
            fields.update({f"part{j}_{k}": v for k, v in form.report_fields().items()})
        return fields


def _realized_reshaped(spec: LayerSpec, form: Form) -> bool:
    """A reshaped part has a module of its own only as a Linear's low rank (:class:`InterleavedLowRank`)."""
    return isinstance(form, LowRank) and spec.kind == "linear"


def _stored_part(spec: LayerSpec, form: Form, factor: int) -> tuple[Form, LayerSpec]:
    """What the saved file holds for a part, and the layer it is priced as: its form over its (reshaped) view, or
    a dense weight for a reshaped part without a module of its own (a reshaped sparse or quantized part, a conv's
    reshaped low rank), which is stored and run dense."""
    if factor > 1 and not _realized_reshaped(spec, form):
        return Dense(), spec.with_(bias=False)
    return form, _part_spec(spec, factor)


def _part_spec(spec: LayerSpec, factor: int) -> LayerSpec:
    """The layer a part compresses: no bias (the layer's bias is counted once), reshaped when asked."""
    if factor == 1:
        return spec.with_(bias=False)
    rows, cols = spec.out_channels, math.prod(spec.weight_shape[1:])
    lead = spec.input_shape[:-1] if spec.kind == "linear" else (spec.positions,)  # positions: per call
    return LayerSpec("linear", cols // factor, rows * factor, (*lead, cols // factor), bias=False, calls=spec.calls)


def _branch_primitives(spec: LayerSpec, form: Form, factor: int) -> tuple[LayerSpec, ...] | None:
    """The layers a part's branch runs, or None when the part is stored small and runs dense."""
    if factor == 1:
        inner = spec.with_(bias=False)
        prims = form.primitives(inner)
        return None if prims == (inner,) else prims
    if not _realized_reshaped(spec, form):
        return None
    rows, cols, r = spec.out_channels, spec.in_channels, form.rank
    lead = spec.input_shape[:-1]
    first = spec.with_(in_channels=cols // factor, out_channels=r, bias=False,
                       input_shape=(*lead, factor, cols // factor))
    second = spec.with_(in_channels=factor * r, out_channels=rows, bias=False, input_shape=(*lead, factor * r))
    return (first, second)


class AdditiveScheme(Scheme):
    """Σ_j Δ_j(θ_j) over parts of any registered schemes (see the module docstring)."""

    name = "additive"
    Options = AdditiveOptions
    options: AdditiveOptions
    kinds = frozenset({"linear", "conv2d", "embedding"})  # as far as every part compresses the layer's kind

    def __init__(self, options: AdditiveOptions | None = None) -> None:
        super().__init__(options)
        self.parts = Parts(self.options.parts)
        self.factors = [p.reshape for p in self.options.parts]

    def check_shared(self) -> str | None:
        for j, (part, factor) in enumerate(zip(self.parts, self.factors)):
            problem = part.check_shared() or (f"reshape {factor} views one layer's weight matrix, and a shared "
                                              f"vector joins several" if factor > 1 else None)
            if problem:
                return f"additive part {j} ({part.name}): {problem}"
        return None

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        for j, (part, factor) in enumerate(zip(self.parts, self.factors)):
            label = f"additive part {j} ({part.name})"
            if part.selecting():
                return f"{label} {Parts.FIXED_FORM_HINT}"
            if factor > 1 and spec is not None and spec.kind == "embedding":
                return f"{label}: a reshaped part realizes as interleaved Linear layers, not as a table lookup"
            if factor > 1 and spec is not None:
                cols = math.prod(spec.weight_shape[1:])
                if cols % factor:
                    return f"{label}: reshape {factor} does not divide the {cols} columns of the weight matrix"
            problem = part.refuses(None if spec is None or factor > 1 else spec, module)
            if problem:
                return f"{label}: {problem}"
        return None

    # ---------------------------------------------------------------- views
    def _to_part(self, x: torch.Tensor, j: int) -> torch.Tensor:
        factor = self.factors[j]
        if factor == 1:
            return x
        if x.dim() not in (2, 4):
            raise ValueError(f"part {j}: reshape {factor} needs one layer's weight matrix, not a shared vector")
        return reshape_matrix(to_matrix(x, "channel"), factor)

    def _from_part(self, x: torch.Tensor, j: int, shape: Sequence[int]) -> torch.Tensor:
        factor = self.factors[j]
        return x if factor == 1 else unreshape_matrix(x, factor).reshape(shape)

    # ---------------------------------------------------------------- C step
    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        w = w.detach()
        previous = self.parts.states(ctx.previous) if _is_additive(ctx.previous) else [None] * len(self.parts)
        deltas = [torch.zeros_like(w) if s is None else self._part_delta(j, s, w.shape) for j, s in enumerate(previous)]
        states: list[State | None] = list(previous)
        objective: list[float] = []
        for _ in range(self.options.reps):
            for j, part in enumerate(self.parts):
                residual = w - (sum(deltas) - deltas[j])
                sub = Parts.context(ctx, j, states[j], spec=None)
                if part.candidates(self._to_part(residual, j), sub) is not None:
                    raise ValueError(f"part {j} ({part.name}) offered a choice of forms; give it fixed options")
                states[j] = self.parts.compress(j, self._to_part(residual, j), sub)
                deltas[j] = self._part_delta(j, states[j], w.shape)
                objective.append(float(torch.sum((w - sum(deltas)) ** 2)))
        return self._pack(states, objective, w.shape)

    def _part_delta(self, j: int, state: State, shape: Sequence[int]) -> torch.Tensor:
        return self._from_part(self.parts[j].decompress(state), j, shape)

    def _pack(self, states: list[State], objective: list[float], shape: Sequence[int]) -> State:
        tensors, metas = Parts.join(states)
        return State(tensors, {"form": "additive", "parts": metas, "objective": objective, "shape": list(shape)})

    def decompress(self, state: State) -> torch.Tensor:
        shape = state.meta["shape"]
        return sum(self._part_delta(j, s, shape) for j, s in enumerate(self.parts.states(state)))

    # ------------------------------------------------------ forms, realization
    def form(self, state: State) -> Form:
        forms = tuple(p.form(s) for p, s in zip(self.parts, self.parts.states(state)))
        return Additive(forms, tuple(self.factors))

    def layer_forms(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[Form]:
        per_part = [p.layer_forms(s, shapes) for p, s in zip(self.parts, self.parts.states(state))]
        return [Additive(tuple(forms), tuple(self.factors)) for forms in zip(*per_part)]

    def split(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[State] | None:
        per_part = [p.split(s, shapes) for p, s in zip(self.parts, self.parts.states(state))]
        if any(states is None for states in per_part):
            return None
        return [self._pack(list(states), [], shape) for states, shape in zip(zip(*per_part), shapes)]

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        bare = copy.deepcopy(module)
        bare.bias = None  # the layer's bias is added once, by the last branch
        structural, codecs = [], []
        for j, (part, s) in enumerate(zip(self.parts, self.parts.states(state))):
            codec = self._codec(j, part, s, module)
            if codec is None:
                structural.append((j, part, s))
            else:
                codecs.append(codec)
        last = len(structural) - 1
        branches = [self._branch(j, part, s, bare if codecs or i < last else module)
                    for i, (j, part, s) in enumerate(structural)]
        if codecs:
            branches.append(decoded(module, codecs))
        return branches[0] if len(branches) == 1 else ParallelSum(branches)

    def _codec(self, j: int, part: Scheme, state: State, module: nn.Module) -> nn.Module | None:
        """How the part is stored when it is stored small and runs dense; None when it has its own fast module."""
        form = part.form(state)
        if self.factors[j] > 1:
            if isinstance(module, nn.Linear) and isinstance(form, LowRank):
                return None
        elif not isinstance(form, Dense):
            return part.encode(state)  # None: a structural part (low rank, row pruning)
        return DenseWeight.of(self._part_delta(j, state, module.weight.shape))

    def _branch(self, j: int, part: Scheme, state: State, module: nn.Module) -> nn.Module:
        """The part's realized module computing ``module`` with weight Δ_j (and ``module``'s bias, if any)."""
        factor = self.factors[j]
        if factor == 1:
            return part.realize(state, module)
        rows, cols = module.out_features * factor, module.in_features // factor
        virtual = nn.Linear(cols, rows, bias=False, device=module.weight.device, dtype=module.weight.dtype)
        realized = part.realize(state, virtual)
        if not (isinstance(realized, nn.Sequential) and len(realized) == 2
                and all(type(m) is nn.Linear and m.bias is None for m in realized)):
            raise TypeError(f"part {j} ({part.name}): expected two thin Linear layers for its low-rank form")
        first, second = realized
        return InterleavedLowRank.from_factors(second.weight.detach(), first.weight.detach(), factor, module.bias)


def _is_additive(state: State | None) -> bool:
    return state is not None and state.meta.get("form") == "additive"


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(AdditiveScheme)
