"""Codebook quantization: every weight takes one of K values.

The C step is ``min ‖w − Δ(θ)‖²`` over codebooks and assignments:

* ``adaptive`` — a learned codebook of K entries: k-means of the weights.
  In 1-D it is solved *exactly* (:func:`lcpress.linalg.kmeans.optimal_kmeans`), and
  one solve gives the optimal error of every size up to K, so with
  ``k: null`` the core chooses the codebook size per layer from ``k_choices``
  by α or a budget (priced by any cost model, e.g. ``storage``). The default
  ``solver: auto`` is exact up to :data:`EXACT_UP_TO` values; a larger tensor
  (a big conv or a transformer's feed-forward layer) takes
  :func:`lcpress.linalg.kmeans.binned_kmeans`: the same programme over runs
  of the sorted values, refined by Lloyd's iterations — within 3·10⁻⁷ of
  the optimum, 16–65× faster.
  ``solver: lloyd`` uses Lloyd's iterations warm-started from the previous
  C step's codebook instead (a local optimum, cheaper for large K).
* ``binary`` — ``{−a, a}``: the optimal ``a`` is ``mean |w|``.
* ``ternary`` — ``{−a, 0, a}``: for the t largest magnitudes kept, the optimal
  ``a`` is their mean and the error ``‖w‖² − (Σ_top-t |w|)²/t``; the best t is
  found exactly from one sort.

Stored as indices at ⌈log2 K⌉ bits plus the codebook; the realized layer
(:class:`lcpress.nn.codecs.DecodedLinear`/``DecodedConv2d``) holds exactly that
and decodes the dense weight once — stored small, run as dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn

import lcpress
from lcpress import Candidates, CStepContext, Dense, Form, LayerSpec, Options, Scheme, State, option
from lcpress.linalg import KMeans1D, binned_kmeans, lloyd, optimal_kmeans
from lcpress.nn import CodebookWeight, SparseCodebookWeight, bits_for, decoded, sparse_index_bits


@dataclass(frozen=True)
class Quantized(Form):
    """Each weight is one of ``k`` codebook values: ⌈log2 k⌉ bits per weight plus k real numbers.

    With ``nonzeros`` set, only that many weights are coded (the others are
    exact zeros, whose positions are stored as a sparse layer's are).
    """

    k: int
    nonzeros: int | None = None
    kind: ClassVar[str] = "quantized"

    @property
    def bits(self) -> int:
        return bits_for(self.k)

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return (spec,)  # decoded once, then runs as the dense layer

    def param_count(self, spec: LayerSpec) -> int:
        bias = spec.out_channels if spec.bias else 0
        coded = spec.params - bias if self.nonzeros is None else self.nonzeros
        return coded + self.k + bias  # an index is a stored number too, if a narrow one

    def storage_bits(self, spec: LayerSpec, dtype_bits: int = 32) -> int:
        bias = spec.out_channels if spec.bias else 0
        weights = spec.params - bias
        if self.nonzeros is None:
            return weights * self.bits + (self.k + bias) * dtype_bits
        positions = sparse_index_bits(weights, self.nonzeros)
        return self.nonzeros * self.bits + positions + (self.k + bias) * dtype_bits

    def describe(self) -> str:
        text = f"codebook {self.k} ({self.bits} bit{'s' if self.bits > 1 else ''})"
        return text if self.nonzeros is None else f"{self.nonzeros:,} nonzeros, {text}"

    def report_fields(self) -> dict:
        fields = {"k": self.k, "bits": self.bits}
        return fields if self.nonzeros is None else {**fields, "nonzeros": self.nonzeros}


#: ``solver: auto`` solves 1-D k-means exactly up to this many values (a few seconds), binned above it.
EXACT_UP_TO = 1 << 19


@dataclass
class QuantizeOptions(Options):
    codebook: Literal["adaptive", "binary", "ternary"] = option(
        "adaptive", help="adaptive: a learned K-entry codebook (k-means); binary: {-a, a}; ternary: {-a, 0, a}")
    k: int | None = option(2, help="codebook size (adaptive); empty = choose per layer among k_choices", ge=2)
    k_choices: list[int] = option(default_factory=lambda: [2, 4, 8, 16],
                                  help="codebook sizes the C step chooses from when k is empty", ge=2, nonempty=True)
    solver: Literal["auto", "exact", "lloyd"] = option(
        "auto", help="adaptive codebooks: exact (optimal 1-D k-means), lloyd (warm-started from the last C step), or "
                     "auto: exact up to 524,288 values, above that the optimum over runs of the sorted values refined by "
                     "Lloyd (within 3e-7 of exact, 16-65x faster)")
    iterations: int = option(30, help="Lloyd iterations per C step (solver: lloyd)", ge=1)
    zeros: Literal["quantize", "keep"] = option(
        "quantize", help="keep: exact zeros stay zero and uncoded (quantize what pruning left); quantize: code every weight")

    @classmethod
    def hint(cls, key: str, value: Any) -> str | None:
        if key in ("bits", "nbits", "num_bits") and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return f"k counts codebook entries: {value} bits is k: {2**value}"
        return super().hint(key, value)

    def validate(self) -> None:
        if self.k is None and self.zeros == "keep":
            self.fail("zeros", "'keep' quantizes the non-zero weights with a fixed k; give k")
        if self.k is None and self.codebook != "adaptive":
            self.fail("k", f"a {self.codebook} codebook has a fixed size; leave k at its default")
        size = {"binary": 2, "ternary": 3}.get(self.codebook)
        if size is not None and self.k not in (2, size):  # 2 is the default, which a fixed codebook ignores
            self.fail("k", f"a {self.codebook} codebook has {size} entries, so k: {self.k} would be ignored; leave k "
                           f"out, or use codebook: adaptive for k entries")


class QuantizeScheme(Scheme):
    """Adaptive (k-means), binary or ternary codebook quantization of a weight (or several as one vector)."""

    name = "quantize"
    choosing_hint = "set k: null (k_choices lists the codebook sizes it picks from)"
    Options = QuantizeOptions
    kinds = frozenset({"linear", "conv2d", "embedding"})  # a table too: stored as a DecodedEmbedding
    options: QuantizeOptions

    def selecting(self) -> bool:
        return self.options.codebook == "adaptive" and self.options.k is None

    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Candidates | None:
        if not self.selecting():
            return None
        sizes = sorted(set(self.options.k_choices))
        solution = self._kmeans(w, max(sizes))
        forms: list[Form] = [Dense(), *(Quantized(k) for k in sizes)]
        errors = torch.cat([torch.zeros(1, dtype=torch.float64), solution.errors[[k - 1 for k in sizes]]])
        return Candidates(forms, errors, solution)

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        chosen = ctx.chosen_form()
        flat = w.detach().reshape(-1)
        coded = torch.nonzero(flat, as_tuple=True)[0] if self.options.zeros == "keep" else None
        values = flat if coded is None else flat[coded]
        if values.numel() == 0:  # nothing left to code: every weight is zero
            codebook, codes = torch.zeros(1, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        elif self.options.codebook == "binary":
            codebook, codes = binary(values)
        elif self.options.codebook == "ternary":
            codebook, codes = ternary(values)
        elif chosen is not None:
            codebook, codes = ctx.candidates.data.codebook(chosen.k)
        else:
            codebook, codes = self._adaptive(values, self.options.k, ctx.previous)
        if coded is not None:  # −1 marks an uncoded zero
            full = torch.full((flat.numel(),), -1, dtype=torch.long)
            full[coded.cpu()] = codes.cpu()
            codes = full
        meta = {"form": "quantized", "codebook": self.options.codebook, "k": int(codebook.numel()),
                "shape": list(w.shape)}
        if coded is not None:
            meta["nonzeros"] = int(coded.numel())
        tensors = {"codebook": codebook.to(w.device, w.dtype), "codes": codes.to(w.device, torch.int32).reshape(w.shape)}
        return State(tensors, meta)

    def _adaptive(self, values: torch.Tensor, k: int, previous: State | None) -> tuple[torch.Tensor, torch.Tensor]:
        warm = previous is not None and previous.meta.get("form") == "quantized" and previous.meta["k"] == k
        if self.options.solver == "lloyd":
            if warm:
                init = previous.tensors["codebook"]
            else:  # first C step: evenly spaced quantiles (no more entries than there are weights)
                k = min(k, values.numel())
                init = torch.quantile(values.double().cpu(), (torch.arange(k, dtype=torch.float64) + 0.5) / k)
            return lloyd(values, init, self.options.iterations)
        return self._kmeans(values, k).codebook(k)  # the (near-)global optimum: nothing to warm-start

    def _kmeans(self, values: torch.Tensor, max_k: int) -> KMeans1D:
        """Every codebook size's solution up to ``max_k``: exact, or binned and refined for large tensors."""
        if self.options.solver == "auto" and values.numel() > EXACT_UP_TO:
            return binned_kmeans(values, max_k)
        return optimal_kmeans(values, max_k)

    def decompress(self, state: State) -> torch.Tensor:
        codes = state.tensors["codes"].long()
        values = state.tensors["codebook"][codes.clamp_min(0)]
        return values if "nonzeros" not in state.meta else torch.where(codes >= 0, values, torch.zeros_like(values))

    def form(self, state: State) -> Form:
        return Quantized(int(state.meta["k"]), state.meta.get("nonzeros"))

    def layer_forms(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[Form]:
        form = self.form(state)  # one shared codebook: counted with every layer it serves
        if "nonzeros" not in state.meta:
            return [form for _ in shapes]
        coded = torch.split(state.tensors["codes"].reshape(-1) >= 0, [math.prod(s) for s in shapes])
        return [Quantized(form.k, int(c.sum())) for c in coded]

    def split(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[State] | None:
        codes = torch.split(state.tensors["codes"].reshape(-1), [math.prod(s) for s in shapes])
        out = []
        for part, shape in zip(codes, shapes):
            meta = dict(state.meta, shape=list(shape))
            if "nonzeros" in meta:
                meta["nonzeros"] = int((part >= 0).sum())
            out.append(State({"codebook": state.tensors["codebook"].clone(), "codes": part.reshape(shape).clone()},
                             meta))
        return out

    def encode(self, state: State) -> nn.Module | None:
        if "nonzeros" in state.meta:
            return SparseCodebookWeight.of_codes(state.tensors["codebook"], state.tensors["codes"])
        return CodebookWeight.of(state.tensors["codebook"], state.tensors["codes"], state.meta["shape"])

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        return decoded(module, [self.encode(state)])


def binary(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``{−a, a}`` with the optimal ``a = mean |w|``; codes 0 (−a) and 1 (+a)."""
    a = values.abs().double().mean()
    return torch.stack([-a, a]), (values >= 0).to(torch.long)


def ternary(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``{−a, 0, a}`` minimising ``‖w − Δ‖²`` exactly; codes 0 (−a), 1 (0), 2 (+a)."""
    magnitudes = values.abs().double()
    ordered = torch.sort(magnitudes, descending=True)[0]
    sums = torch.cumsum(ordered, 0)
    counts = torch.arange(1, ordered.numel() + 1, dtype=torch.float64)
    t = int(torch.argmax(sums * sums / counts)) + 1  # error(t) = ‖w‖² − S_t²/t
    a = sums[t - 1] / t
    threshold = ordered[t - 1]
    kept = magnitudes >= threshold
    if int(kept.sum()) > t:  # ties at the threshold: any t of them are optimal; keep exactly t
        tied = torch.nonzero(magnitudes == threshold, as_tuple=True)[0]
        kept[tied[t - int((magnitudes > threshold).sum()):]] = False
    codes = torch.where(kept, torch.where(values >= 0, 2, 0), 1).to(torch.long)
    return torch.stack([-a, a.new_zeros(()), a]), codes


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(QuantizeScheme)
