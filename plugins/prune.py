"""Magnitude pruning as an LC C step: constraints, penalties, and structured rows.

Every mode is the exact solution of its C step ``min_θ μ/2‖w − θ‖² (+ penalty)``:

* ``l0_constraint`` — ``‖θ‖₀ ≤ κ``: keep the κ largest magnitudes (``keep``
  weights, or ``keep_fraction`` of them). With neither given the scheme
  *selects*: its candidates are the sparsity levels of ``fractions`` with
  their exact errors, and the core picks per layer by α or a global budget.
* ``l1_constraint`` — ``‖θ‖₁ ≤ radius``: the Euclidean projection onto the
  L1 ball (soft thresholding at the level that meets the radius).
* ``l0_penalty`` — ``+ α‖θ‖₀``: keep ``w_i`` where ``μ/2·w_i² > α``.
* ``l1_penalty`` — ``+ α‖θ‖₁``: soft thresholding at ``α/μ``.
* ``structured: true`` (with ``l0_constraint``) removes whole output rows /
  channels, by row norm; ``keep`` counts rows, and with no ``keep`` the
  candidates are row counts in multiples of ``multiple``. It is realized as a
  genuinely smaller layer whose outputs are put back in place
  (:class:`lcpress.nn.modules.ScatterChannels`), so it is faster, not only smaller.

Unstructured masks are stored as the non-zero values plus a packed mask or
index list, whichever is smaller (:class:`lcpress.nn.codecs.SparseWeight`), and
run as dense.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn

import lcpress
from lcpress import Candidates, CStepContext, Dense, Form, LayerSpec, Options, Scheme, State, option
from lcpress.nn import ScatterChannels, SparseWeight, decoded, sparse_index_bits

log = logging.getLogger("lcpress.prune")


@dataclass(frozen=True)
class Sparse(Form):
    """``nonzeros`` weights kept anywhere in the layer; runs as the dense layer."""

    nonzeros: int
    kind: ClassVar[str] = "sparse"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return (spec,)

    def param_count(self, spec: LayerSpec) -> int:
        return self.nonzeros + (spec.out_channels if spec.bias else 0)

    def storage_bits(self, spec: LayerSpec, dtype_bits: int = 32) -> int:
        numel = math.prod(spec.weight_shape)
        return self.param_count(spec) * dtype_bits + sparse_index_bits(numel, self.nonzeros)

    def describe(self) -> str:
        return f"{self.nonzeros:,} nonzeros"


@dataclass(frozen=True)
class PrunedRows(Form):
    """Only ``rows`` output rows / channels kept: a smaller layer (pruned outputs keep their bias)."""

    rows: int
    kind: ClassVar[str] = "pruned_rows"
    fills_outputs: ClassVar[bool] = True

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return (spec.with_(out_channels=self.rows),)

    def param_count(self, spec: LayerSpec) -> int:
        """The kept rows, and the values the pruned outputs are filled with (their bias; one per output)."""
        return self.primitives(spec)[0].params + spec.out_channels

    def storage_bits(self, spec: LayerSpec, dtype_bits: int = 32) -> int:
        """What the realized module stores (:class:`lcpress.nn.ScatterChannels`): the kept rows, the fill values
        and the kept rows' positions as 64-bit indices."""
        return self.param_count(spec) * dtype_bits + 64 * self.rows

    def describe(self) -> str:
        return f"{self.rows} rows"


Mode = Literal["l0_constraint", "l1_constraint", "l0_penalty", "l1_penalty"]


@dataclass
class PruneOptions(Options):
    mode: Mode = option("l0_constraint", help="l0_constraint (keep κ), l1_constraint (‖θ‖₁ ≤ radius), "
                                              "l0_penalty or l1_penalty (α·‖θ‖)")
    keep: int | None = option(None, help="l0_constraint: weights (rows, when structured) to keep", ge=1)
    keep_fraction: float | None = option(None, help="l0_constraint: fraction of weights (or rows) to keep", gt=0, le=1)
    radius: float | None = option(None, help="l1_constraint: radius κ of the L1 ball", gt=0)
    alpha: float | None = option(None, help="l0_penalty / l1_penalty: weight α of the penalty", gt=0)
    structured: bool = option(False, help="remove whole output rows / channels (l0_constraint only)")
    multiple: int = option(8, help="structured selection: candidate row counts are multiples of this", ge=1)
    fractions: list[float] = option(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75],
                                    help="unstructured selection: candidate fractions of weights to keep",
                                    gt=0, le=1, nonempty=True)

    @classmethod
    def hint(cls, key: str, value: Any) -> str | None:
        if key in ("sparsity", "amount", "prune_ratio") and isinstance(value, float) and 0 < value < 1:
            return f"prune counts what it keeps: a sparsity of {value} is keep_fraction: {round(1 - value, 6)}"
        return super().hint(key, value)

    def validate(self) -> None:
        if self.keep is not None and self.keep_fraction is not None:
            self.fail("keep", "give 'keep' or 'keep_fraction', not both")
        needs = {"l1_constraint": "radius", "l0_penalty": "alpha", "l1_penalty": "alpha"}.get(self.mode)
        if needs is not None:
            if getattr(self, needs) is None:
                self.fail(needs, f"mode {self.mode!r} needs a positive {needs!r}")
            if self.keep is not None or self.keep_fraction is not None:
                self.fail("keep", f"'keep' and 'keep_fraction' belong to mode 'l0_constraint', not {self.mode!r}")
            if self.structured:
                self.fail("structured", "structured pruning uses mode 'l0_constraint'")


class PruneScheme(Scheme):
    """Magnitude pruning (see the module docstring for the modes)."""

    name = "prune"
    choosing_hint = "leave keep and keep_fraction out (mode l0_constraint)"
    kinds = frozenset({"linear", "conv2d", "embedding"})  # a table too (unstructured): a DecodedEmbedding
    Options = PruneOptions
    options: PruneOptions

    def selecting(self) -> bool:
        o = self.options
        return o.mode == "l0_constraint" and o.keep is None and o.keep_fraction is None

    def check_shared(self) -> str | None:
        return "structured pruning removes one layer's rows, and a shared vector joins several" \
            if self.options.structured else None

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        if self.options.structured and spec is not None and spec.groups != 1:
            return "structured pruning removes rows of ungrouped layers only (groups=1)"
        if self.options.structured and spec is not None and spec.kind == "embedding":
            return "structured pruning would remove whole tokens from an embedding's table; prune it unstructured"
        o = self.options
        if o.structured and spec is not None and o.keep is not None and o.keep >= spec.out_channels:
            return (f"keeping {o.keep} rows of its {spec.out_channels} prunes none; ask for fewer (keep, or "
                    f"keep_fraction), or leave the layer out")
        return None

    # ---------------------------------------------------------------- C step
    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Candidates | None:
        if not self.selecting():
            return None
        forms: list[Form] = [Dense()]
        errors = [0.0]
        if self.options.structured:
            norms = torch.sort(_rows(w).double().pow(2).sum(1))[0]  # ascending: the first ones go first
            dropped = torch.cumsum(norms, 0)
            for rows in range(self.options.multiple, norms.numel(), self.options.multiple):
                forms.append(PrunedRows(rows))
                errors.append(float(dropped[norms.numel() - rows - 1]))
        else:
            squares = torch.sort(w.detach().reshape(-1).double().pow(2))[0]
            dropped = torch.cat([squares.new_zeros(1), torch.cumsum(squares, 0)])
            for count in sorted({max(1, round(f * squares.numel())) for f in self.options.fractions}):
                if count < squares.numel():
                    forms.append(Sparse(count))
                    errors.append(float(dropped[squares.numel() - count]))
        return Candidates(forms, torch.tensor(errors, dtype=torch.float64))

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        o, w = self.options, w.detach()
        chosen = ctx.chosen_form()
        if o.structured:
            if w.dim() < 2:
                raise ValueError("structured pruning needs one layer's weight; it cannot prune a shared vector")
            rows = chosen.rows if chosen is not None else _count(o, w.shape[0])
            return _pruned_rows(w, rows)
        if chosen is not None:
            theta = keep_largest(w, chosen.nonzeros)
        elif o.mode == "l0_constraint":
            self._warn_if_keeping_all(w.numel())
            theta = keep_largest(w, _count(o, w.numel()))
        elif o.mode == "l1_constraint":
            theta = project_l1_ball(w, o.radius)
        elif o.mode == "l0_penalty":
            theta = torch.where(w.double().pow(2) * (ctx.mu / 2) > o.alpha, w, torch.zeros_like(w))
        else:
            theta = soft_threshold(w, o.alpha / ctx.mu if ctx.mu > 0 else math.inf)  # μ = 0: nothing pulls w back
        return State({"weight": theta}, {"form": "sparse", "nonzeros": int(torch.count_nonzero(theta))})

    def _warn_if_keeping_all(self, total: int) -> None:
        """Say once that an unstructured ``keep`` of at least the weights it prunes from prunes nothing.

        Not refused when planned: with ``shared: true`` the count is over all the task's layers, which one
        layer's check cannot see. The C step sees the whole vector, so the warning is right in both cases.
        """
        keep = self.options.keep
        if keep is None or keep < total or getattr(self, "_warned_keeping_all", False):
            return
        self._warned_keeping_all = True
        log.warning("prune: keep=%d is at least the %d weights it prunes from, so nothing is pruned; ask for "
                    "fewer (keep, or keep_fraction), or leave the layer out", keep, total)

    def decompress(self, state: State) -> torch.Tensor:
        return state.tensors["weight"]

    # ------------------------------------------------------ forms, realization
    def form(self, state: State) -> Form:
        if state.meta["form"] == "pruned_rows":
            return PrunedRows(int(state.meta["rows"]))
        return Sparse(int(state.meta["nonzeros"]))

    def layer_forms(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[Form]:
        sizes = [math.prod(s) for s in shapes]
        parts = torch.split(state.tensors["weight"].reshape(-1), sizes)
        return [Sparse(int(torch.count_nonzero(p))) for p in parts]

    def split(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[State] | None:
        if state.meta["form"] != "sparse":
            return None
        parts = torch.split(state.tensors["weight"].reshape(-1), [math.prod(s) for s in shapes])
        return [State({"weight": p.reshape(s).clone()}, {"form": "sparse", "nonzeros": int(torch.count_nonzero(p))})
                for p, s in zip(parts, shapes)]

    def encode(self, state: State) -> nn.Module | None:
        if state.meta["form"] != "sparse":
            return None
        return SparseWeight.of(state.tensors["weight"])

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        if state.meta["form"] == "pruned_rows":
            return smaller_layer(module, state.tensors["weight"], state.tensors["kept"])
        return decoded(module, [self.encode(state)])


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1)


def _count(options: PruneOptions, total: int) -> int:
    if options.keep is not None:
        return min(options.keep, total)
    return max(1, min(total, round(options.keep_fraction * total)))


def keep_largest(w: torch.Tensor, count: int) -> torch.Tensor:
    """``w`` with all but its ``count`` largest magnitudes set to zero (the L0-constraint projection)."""
    flat = w.reshape(-1)
    kept = torch.topk(flat.abs(), min(count, flat.numel()), sorted=False).indices
    out = torch.zeros_like(flat)
    out[kept] = flat[kept]
    return out.reshape(w.shape)


def soft_threshold(w: torch.Tensor, level: float) -> torch.Tensor:
    """``sign(w)·max(|w| − level, 0)``: the L1-penalty C step."""
    return torch.sign(w) * (w.abs() - level).clamp_min(0)


def project_l1_ball(w: torch.Tensor, radius: float) -> torch.Tensor:
    """The closest point to ``w`` with ``‖θ‖₁ ≤ radius`` (sort-based, exact)."""
    magnitudes = w.abs().reshape(-1).double()
    if float(magnitudes.sum()) <= radius:
        return w.clone()
    ordered = torch.sort(magnitudes, descending=True)[0]
    excess = torch.cumsum(ordered, 0) - radius
    index = torch.arange(1, ordered.numel() + 1, dtype=torch.float64)
    positive = torch.nonzero(ordered - excess / index > 0)
    rho = int(positive.max()) if positive.numel() else 0  # a radius below rounding: only the largest survives
    level = float(excess[rho] / (rho + 1))
    return soft_threshold(w, level)


def _pruned_rows(w: torch.Tensor, rows: int) -> State:
    norms = _rows(w).double().pow(2).sum(1)
    kept = torch.sort(torch.topk(norms, rows, sorted=False).indices)[0]
    theta = torch.zeros_like(w)
    theta[kept] = w[kept]
    return State({"weight": theta, "kept": kept}, {"form": "pruned_rows", "rows": rows})


def smaller_layer(module: nn.Module, weight: torch.Tensor, kept: torch.Tensor) -> nn.Sequential:
    """The layer computing only the ``kept`` outputs, followed by their scatter back into place."""
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    rows = kept.numel()
    if isinstance(module, nn.Linear):
        small: nn.Module = nn.Linear(module.in_features, rows, bias=module.bias is not None, **kw)
        dim = -1
    elif isinstance(module, nn.Conv2d):
        small = nn.Conv2d(module.in_channels, rows, module.kernel_size, module.stride, module.padding,
                          module.dilation, 1, module.bias is not None, module.padding_mode, **kw)
        dim = 1
    else:
        raise TypeError(f"prune cannot realize a {type(module).__name__}")
    scatter = ScatterChannels(weight.shape[0], rows, dim).to(module.weight.device, module.weight.dtype)
    with torch.no_grad():
        small.weight.copy_(weight[kept])
        scatter.index.copy_(kept)
        if module.bias is not None:
            small.bias.copy_(module.bias[kept])
            fill = module.bias.detach().clone()
            fill[kept] = 0
            scatter.fill.copy_(fill)
    return nn.Sequential(small, scatter)


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(PruneScheme)
